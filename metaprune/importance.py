"""Channel importance of a trained full network, and the permutation that puts it in order.

Every gene's channels are ranked once (coupled channels, a stage's outputs joined by residual
adds, are ranked together). `order_channels` then permutes the trained network, gene by gene, so
that channel `i` of every gene is its `i`-th most important: each prefix `W[:c]` of the permuted
network holds the `c` channels structured pruning keeps, and the crop a PruningNet takes of a
generated weight (`W[:out, :in]`) is the L1-pruned trained weight. The permutation is exact: the
permuted network computes what the original computes (every conv writing a gene is permuted on
dim 0 with its BN, every conv reading it on dim 1, depthwise convs by their groups, and the
classifier's columns).

Rankings (measured on the CIFAR-10 ResNet-20 in `benchmarks/bench_ranking.py`):
  l1     the sum, over every conv writing the gene, of each filter's L1 norm (Li et al., 2017)
  l1_mean  the same with each conv's norms divided by its fan-in: a 1x1 shortcut counts as much
         as a 3x3 body conv (raw L1 sums let the 3x3 bodies swamp the shortcuts)
  bn     the sum of |gamma| / sqrt(var + eps) x the filter's mean |weight|: the scale the channel
         leaves its BN with, which raw weight norms cannot see (Liu et al., 2017, network slimming)
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

import search_spaces as ss

RANKINGS = ("l1", "l1_mean", "bn")


def conv_paths(space: ss.SearchSpace) -> Iterator[tuple[str, ss.ConvLayer]]:
    """Each conv of the space with the module path `build_subnet` gives its ConvBNAct."""
    for layer in space.layers:
        if isinstance(layer, ss.ConvLayer):
            yield f"layers.{layer.name}", layer
        elif isinstance(layer, ss.ResidualBlock):
            for i, conv in enumerate(layer.body):
                yield f"layers.{layer.name}.body.{i}", conv
            if layer.shortcut is not None:
                yield f"layers.{layer.name}.shortcut", layer.shortcut


def check_full_weights(space: ss.GeneSpace, weights: dict[str, torch.Tensor]) -> None:
    """Raise ValueError naming the first tensor of `weights` that is not the space's full network's
    (a missing or extra name, or another shape), with the shape it should have."""
    with torch.device("meta"):
        expected = ss.build_subnet(space, space.largest).state_dict()
    for name, value in expected.items():
        if name not in weights:
            raise ValueError(f"tensor {name!r} is missing (expected shape {tuple(value.shape)})")
        got = weights[name]
        if not isinstance(got, torch.Tensor) or tuple(got.shape) != tuple(value.shape):
            shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
            raise ValueError(f"tensor {name!r} has shape {shape}, expected {tuple(value.shape)}")
    extra = [name for name in weights if name not in expected]
    if extra:
        raise ValueError(f"tensor {extra[0]!r} is not part of the full {space.name!r} network")


def full_modules(space: ss.SearchSpace, model: nn.Module) -> dict[str, nn.Module]:
    """The model's modules by name, checked to be the full network of `space`."""
    modules = dict(model.named_modules())
    for path, spec in conv_paths(space):
        conv = modules.get(f"{path}.conv")
        want = space.base_channels(spec.out_ch)
        if not isinstance(conv, nn.Conv2d) or conv.out_channels != want:
            raise ValueError(f"the model is not the full network of space {space.name!r}: {path}.conv should have {want} outputs")
    return modules


def tensor(modules: dict[str, nn.Module], path: str, name: str) -> torch.Tensor:
    value = getattr(modules[path], name)
    assert isinstance(value, torch.Tensor), f"{path}.{name}"
    return value


def _filter_scores(modules: dict[str, nn.Module], path: str, method: str) -> torch.Tensor:
    weight = tensor(modules, f"{path}.conv", "weight").detach().double().cpu().flatten(1).abs()
    if method == "l1":
        return weight.sum(1)
    if method == "l1_mean":
        return weight.mean(1)
    bn = modules[f"{path}.bn"]
    assert isinstance(bn, nn.BatchNorm2d) and bn.running_var is not None, path
    gamma = bn.weight.detach().double().cpu().abs() if bn.affine else torch.ones(bn.num_features, dtype=torch.float64)
    return gamma / (bn.running_var.detach().double().cpu() + bn.eps).sqrt() * weight.mean(1)


def channel_ranking(space: ss.SearchSpace, model: nn.Module, method: str = "l1") -> dict[str, torch.Tensor]:
    """Per gene: the full network's channel indices, most important first (ties: lower index first)."""
    if method not in RANKINGS:
        raise ValueError(f"unknown channel ranking {method!r}; choose one of {', '.join(RANKINGS)}")
    modules = full_modules(space, model)
    scores = {gene.name: torch.zeros(gene.base, dtype=torch.float64) for gene in space.genes}
    for path, spec in conv_paths(space):
        if isinstance(spec.out_ch, str):
            scores[spec.out_ch] += _filter_scores(modules, path, method)
    return {name: torch.argsort(score, descending=True, stable=True) for name, score in scores.items()}


@torch.no_grad()
def order_channels(space: ss.SearchSpace, model: nn.Module, ranking: dict[str, torch.Tensor]) -> ss.Network:
    """A copy of the full network with every gene's channels in `ranking` order (same function)."""
    modules = full_modules(space, model)
    device = next(model.parameters()).device
    ordered = ss.build_subnet(space, space.largest).to(device)
    ordered.load_state_dict(model.state_dict())
    targets = dict(ordered.named_modules())

    def order(width: ss.Width) -> torch.Tensor | None:
        return None if isinstance(width, int) else ranking[width].to(device)

    def permute(path: str, name: str, rows: torch.Tensor | None, columns: torch.Tensor | None = None) -> None:
        value = tensor(modules, path, name)
        value = value if rows is None else value[rows]
        value = value if columns is None else value[:, columns]
        tensor(targets, path, name).copy_(value)

    for path, spec in conv_paths(space):
        rows = order(spec.out_ch)
        permute(f"{path}.conv", "weight", rows, None if spec.depthwise else order(spec.in_ch))
        for name in ("weight", "bias", "running_mean", "running_var"):
            permute(f"{path}.bn", name, rows)
    permute("classifier", "weight", None, order(space.head.in_ch))
    return ordered


@torch.no_grad()
def crop(space: ss.GeneSpace, model: nn.Module, config: ss.Config) -> nn.Module:
    """The plain subnet of `config` holding each prefix `W[:out, :in]` of a full network's weights:
    on an `order_channels` network, its most important channels. A traced module's: the channels its
    space's order keeps first (`metaprune.graph_importance`)."""
    if isinstance(space, ss.GraphSpace):
        assert isinstance(model, torch.fx.GraphModule), type(model)
        return ss.build_graph_subnet(space, config, weights=model)
    assert isinstance(space, ss.SearchSpace), type(space)
    full_modules(space, model)  # refuse any other network
    device = next(model.parameters()).device
    sources = model.state_dict()
    with torch.device("meta"):  # skip the random init: every tensor is overwritten below
        subnet = ss.build_subnet(space, config)
    subnet = subnet.to_empty(device=device)
    for name, value in subnet.state_dict().items():
        source = sources[name]
        value.copy_(source[tuple(slice(0, n) for n in value.shape)] if value.dim() else source)
    return subnet
