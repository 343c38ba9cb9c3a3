"""Build a network from a space description, with pluggable conv, BN and linear layers.

The plain subnet of a configuration and the PruningNet are both built here, from the same
description and the same block modules; only the leaf layers differ (plain `nn.Conv2d` versus
weight-generating convs). So how blocks are wired (residual adds, activations) exists once.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any, Protocol, overload

import torch
from torch import fx, nn

from search_spaces._space import Classifier, Config, ConvLayer, GeneSpace, Layer, MaxPool, ResidualBlock, SearchSpace
from search_spaces.graph import GraphSpace, build_graph_subnet


class LayerFactory(Protocol):
    """Makes the leaf layers of a network; the block structure is fixed by the space."""

    def conv(self, spec: ConvLayer) -> nn.Module: ...

    def bn(self, spec: ConvLayer) -> nn.Module: ...

    def linear(self, spec: Classifier) -> nn.Module: ...


def activation(name: str | None) -> nn.Module:
    return {"relu": nn.ReLU(inplace=True), "relu6": nn.ReLU6(inplace=True), None: nn.Identity()}[name]


class ConvBNAct(nn.Module):
    def __init__(self, spec: ConvLayer, factory: LayerFactory) -> None:
        super().__init__()
        self.conv = factory.conv(spec)
        self.bn = factory.bn(spec)
        self.act = activation(spec.act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class Residual(nn.Module):
    def __init__(self, spec: ResidualBlock, factory: LayerFactory) -> None:
        super().__init__()
        self.body = nn.Sequential(*(ConvBNAct(c, factory) for c in spec.body))
        self.shortcut = nn.Identity() if spec.shortcut is None else ConvBNAct(spec.shortcut, factory)
        self.act = activation(spec.act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.shortcut(x))


class Network(nn.Module):
    """Layers in order, then global average pooling and the classifier."""

    def __init__(self, space: SearchSpace, factory: LayerFactory) -> None:
        super().__init__()
        self.layers = nn.Sequential(OrderedDict((layer.name, _block(layer, factory)) for layer in space.layers))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.classifier = factory.linear(space.head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.pool(self.layers(x))))


def _block(layer: Layer, factory: LayerFactory) -> nn.Module:
    if isinstance(layer, ConvLayer):
        return ConvBNAct(layer, factory)
    if isinstance(layer, ResidualBlock):
        return Residual(layer, factory)
    if isinstance(layer, MaxPool):
        return nn.MaxPool2d(layer.kernel, layer.stride, layer.kernel // 2)
    raise TypeError(f"unknown layer {layer!r}")


def gene_paths(space: SearchSpace) -> dict[str, str]:
    """Per gene, in gene order, the paths in `Network` of the convs writing it: what names the genes
    of the traced network after the description's and ties what it ties (`GraphSpace.with_gene_names`)."""
    convs: list[tuple[str, ConvLayer]] = []
    for layer in space.layers:
        if isinstance(layer, ConvLayer):
            convs.append((f"layers.{layer.name}.conv", layer))
        elif isinstance(layer, ResidualBlock):
            convs += [(f"layers.{layer.name}.body.{i}.conv", conv) for i, conv in enumerate(layer.body)]
            if layer.shortcut is not None:
                convs.append((f"layers.{layer.name}.shortcut.conv", layer.shortcut))
    return {path: gene.name for gene in space.genes for path, conv in convs if conv.out_ch == gene.name}


class PlainFactory:
    """Ordinary layers sized for one configuration: the deployable subnet."""

    def __init__(self, space: SearchSpace, config: Config) -> None:
        self.space, self.config = space, space.validate(config)

    def conv(self, spec: ConvLayer) -> nn.Module:
        cin, cout = self.space.channels(spec.in_ch, self.config), self.space.channels(spec.out_ch, self.config)
        groups = cin if spec.depthwise else 1
        return nn.Conv2d(cin, cout, spec.kernel, spec.stride, spec.kernel // 2, groups=groups, bias=False)

    def bn(self, spec: ConvLayer) -> nn.Module:
        return nn.BatchNorm2d(self.space.channels(spec.out_ch, self.config))

    def linear(self, spec: Classifier) -> nn.Module:
        return nn.Linear(self.space.channels(spec.in_ch, self.config), spec.num_classes)


@overload
def build_subnet(space: SearchSpace, config: Config) -> Network: ...
@overload
def build_subnet(space: GraphSpace, config: Config) -> fx.GraphModule: ...
@overload
def build_subnet(space: GeneSpace, config: Config) -> nn.Module: ...
def build_subnet(space: GeneSpace, config: Config) -> nn.Module:
    """The plain `nn.Module` of `config`: standard layers only, nothing of the PruningNet. For a
    registered family its weights are freshly initialised; for a traced module they are the module's
    own, sliced (`build_graph_subnet`)."""
    if isinstance(space, GraphSpace):
        return build_graph_subnet(space, config)
    assert isinstance(space, SearchSpace), type(space)
    return Network(space, PlainFactory(space, config))


def fresh_subnet(space: GeneSpace, config: Config) -> nn.Module:
    """`build_subnet` with freshly initialised weights (a traced module's own are re-drawn too)."""
    subnet = build_subnet(space, config)
    if isinstance(space, GraphSpace):
        for module in subnet.modules():
            reset = getattr(module, "reset_parameters", None)
            if callable(reset) and module is not subnet:
                reset()
    return subnet


def architecture(space: GeneSpace, config: Config, **extra: Any) -> dict[str, Any]:
    """A JSON-able description that rebuilds the subnet with `subnet_from_architecture` (a traced
    module's names the module: `--model` must be importable where it is rebuilt)."""
    if isinstance(space, GraphSpace):
        recipe = dict(space.recipe)
        if not isinstance(recipe.get("model"), str):
            raise ValueError("this space was made from a module object; rebuild it with --model file.py:function to export it")
        order = [gene.tolist() for gene in space.order]  # which channels each gene keeps first
        return {"format": GRAPH_FORMAT, "recipe": recipe, "order": order, "config": space.describe(config), **extra}
    assert isinstance(space, SearchSpace), type(space)
    return {"format": "metaprune-subnet/1", "space": space.to_dict(), "config": space.describe(config), **extra}


GRAPH_FORMAT = "metaprune-graph-subnet/1"


def subnet_from_architecture(arch: dict[str, Any]) -> nn.Module:
    if arch.get("format") == GRAPH_FORMAT:
        from search_spaces.user import from_recipe

        graph = from_recipe(arch["recipe"], arch.get("order"))
        return build_graph_subnet(graph, graph.from_channels(arch["config"]))
    if arch.get("format") != "metaprune-subnet/1":
        raise ValueError(f"unknown architecture format {arch.get('format')!r}; expected 'metaprune-subnet/1'")
    space = SearchSpace.from_dict(arch["space"])
    return build_subnet(space, space.from_channels(arch["config"]))


def space_payload(space: GraphSpace) -> dict[str, Any]:
    """What rebuilds `space` in another process (`space_from_payload`): its recipe and its order (fx
    graph modules do not pickle on this torch)."""
    return {"graph": space.recipe, "order": [gene.tolist() for gene in space.order]}


def space_from_payload(payload: dict[str, Any]) -> GraphSpace:
    from search_spaces.user import from_recipe

    return from_recipe(payload["graph"], payload.get("order"))


def load_subnet(directory: str | Path) -> nn.Module:
    """Rebuild an exported subnet from `architecture.json` and `weights.pt` alone."""
    import json

    directory = Path(directory)
    model = subnet_from_architecture(json.loads((directory / "architecture.json").read_text()))
    model.load_state_dict(torch.load(directory / "weights.pt", map_location="cpu", weights_only=True))
    return model.eval()
