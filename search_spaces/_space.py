"""A search space as plain data: genes, layers, and the arithmetic that follows from them.

A configuration is a tuple of choice indices, one per gene. Everything else (channel counts,
FLOPs, params, the plain subnet) is derived from the space description and that tuple.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, TypeVar, Union

Width = Union[str, int]
"""A channel count: the name of a gene (searchable) or a fixed integer."""

Config = tuple[int, ...]
"""One choice index per gene, in the order of `SearchSpace.genes`."""

ACTIVATIONS = ("relu", "relu6", None)


def default_scales() -> tuple[float, ...]:
    """The paper's 31 width scales: 0.10, 0.13, ..., 1.00."""
    return tuple(round(0.10 + 0.03 * k, 2) for k in range(31))


@dataclass(frozen=True)
class Gene:
    """Channel counts that must agree share one gene (a stage's outputs across residual adds)."""

    name: str
    base: int  # the full width: generators produce weights of this size
    choices: tuple[int, ...]  # distinct channel counts, ascending

    @staticmethod
    def from_scales(name: str, base: int, scales: tuple[float, ...] | None = None) -> Gene:
        """Scales of the base width, rounded to whole channels; duplicates after rounding merge."""
        scales = default_scales() if scales is None else scales
        counts = sorted({max(1, int(base * s + 0.5)) for s in scales})
        return Gene(name, base, tuple(counts))

    def __post_init__(self) -> None:
        if not self.choices or list(self.choices) != sorted(set(self.choices)):
            raise ValueError(f"gene {self.name!r}: choices must be distinct and ascending, got {self.choices}")
        if self.choices[0] < 1 or self.choices[-1] > self.base:
            raise ValueError(f"gene {self.name!r}: choices must lie in 1..base={self.base}, got {self.choices}")


@dataclass(frozen=True)
class ConvLayer:
    """Conv (no bias) -> BatchNorm -> activation. Padding is kernel // 2."""

    name: str
    in_ch: Width
    out_ch: Width
    kernel: int = 3
    stride: int = 1
    depthwise: bool = False  # groups = channels; in_ch and out_ch must be the same width
    act: str | None = "relu"
    kind: str = field(default="conv", init=False)


@dataclass(frozen=True)
class ResidualBlock:
    """y = act(body(x) + shortcut(x)); an identity shortcut needs equal input and output widths."""

    name: str
    body: tuple[ConvLayer, ...]
    shortcut: ConvLayer | None = None
    act: str | None = None
    kind: str = field(default="residual", init=False)

    @property
    def in_ch(self) -> Width:
        return self.body[0].in_ch

    @property
    def out_ch(self) -> Width:
        return self.body[-1].out_ch


@dataclass(frozen=True)
class MaxPool:
    """Max pooling (ResNet-50's 224x224 stem). Padding is kernel // 2."""

    name: str
    kernel: int = 3
    stride: int = 2
    kind: str = field(default="maxpool", init=False)


@dataclass(frozen=True)
class Classifier:
    """Global average pool -> flatten -> Linear(in_ch, num_classes)."""

    name: str
    in_ch: Width
    num_classes: int


Layer = Union[ConvLayer, ResidualBlock, MaxPool]


def conv_out_size(size: int, kernel: int, stride: int) -> int:
    """Spatial output size of a conv or pool with padding kernel // 2."""
    return (size + 2 * (kernel // 2) - kernel) // stride + 1


class GeneSpace:
    """What searchers see of a space: its name and genes. A configuration picks one choice per gene;
    `SearchSpace` (a chain of layers) and `GraphSpace` (a traced module) both derive from this."""

    name: str
    genes: tuple[Gene, ...]

    @cached_property  # looked up for every layer at every step: build it once
    def gene_index(self) -> dict[str, int]:
        return {g.name: i for i, g in enumerate(self.genes)}

    @property
    def largest(self) -> Config:
        return tuple(len(g.choices) - 1 for g in self.genes)

    @property
    def smallest(self) -> Config:
        return tuple(0 for _ in self.genes)

    def validate(self, config: Config) -> Config:
        """Return `config` as a tuple of ints, or raise ValueError naming what is wrong."""
        config = tuple(int(c) for c in config)
        if len(config) != len(self.genes):
            raise ValueError(f"config has {len(config)} genes, space {self.name!r} has {len(self.genes)}")
        for gene, choice in zip(self.genes, config):
            if not 0 <= choice < len(gene.choices):
                raise ValueError(f"gene {gene.name!r}: choice {choice} outside 0..{len(gene.choices) - 1}")
        return config

    def describe(self, config: Config) -> dict[str, int]:
        """Human-readable form: gene name -> channel count."""
        return {g.name: g.choices[c] for g, c in zip(self.genes, self.validate(config))}

    def from_channels(self, channels: dict[str, int]) -> Config:
        """Inverse of `describe`."""
        config = []
        for gene in self.genes:
            if channels.get(gene.name) not in gene.choices:
                raise ValueError(f"gene {gene.name!r}: {channels.get(gene.name)} is not one of {gene.choices}")
            config.append(gene.choices.index(channels[gene.name]))
        return tuple(config)

    def encode(self, config: Config) -> list[float]:
        """Normalised widths in [0, 1] per gene, for searchers and plots."""
        return [g.choices[c] / g.base for g, c in zip(self.genes, self.validate(config))]


@dataclass(frozen=True)
class SearchSpace(GeneSpace):
    """A network family as data. Build, count and sample from this description alone."""

    name: str
    in_channels: int
    resolution: int
    genes: tuple[Gene, ...]
    layers: tuple[Layer, ...]
    head: Classifier

    def __post_init__(self) -> None:
        _validate_space(self)

    # -- widths -------------------------------------------------------------------------------
    def channels(self, width: Width, config: Config) -> int:
        """The channel count of `width` under `config`."""
        if isinstance(width, int):
            return width
        gene = self.gene_index[width]
        return self.genes[gene].choices[config[gene]]

    def base_channels(self, width: Width) -> int:
        """The full width of `width`, the size its generator produces."""
        return width if isinstance(width, int) else self.genes[self.gene_index[width]].base

    def scale(self, width: Width, config: Config) -> float:
        """Channels over full width: the generators' input."""
        return self.channels(width, config) / self.base_channels(width)

    # -- serialisation ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @staticmethod
    def from_dict(data: dict[str, Any]) -> SearchSpace:
        return SearchSpace(
            name=data["name"],
            in_channels=data["in_channels"],
            resolution=data["resolution"],
            genes=tuple(Gene(g["name"], g["base"], tuple(g["choices"])) for g in data["genes"]),
            layers=tuple(_layer_from_dict(layer) for layer in data["layers"]),
            head=Classifier(**data["head"]),
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict())


SpaceT = TypeVar("SpaceT", bound=GeneSpace)


def with_channel_multiple(space: SpaceT, multiple: int) -> SpaceT:
    """The space with every gene's choices rounded to multiples of `multiple` (duplicates merge).

    Convolution kernels block channels (ONNX Runtime's NCHWc by 8 on AVX2 and 16 on AVX-512,
    tensor cores by 8): a width off the block runs about as slow as the next multiple. Each gene
    keeps at least one multiple, and its full width even when that is not one, so the largest
    configuration stays the full network.
    """
    if multiple < 1:
        raise ValueError(f"channel multiple must be >= 1, got {multiple}")
    if multiple == 1:
        return space
    genes = []
    for gene in space.genes:
        rounded = {min(gene.base, multiple * max(1, int(c / multiple + 0.5))) for c in gene.choices}
        genes.append(Gene(gene.name, gene.base, tuple(sorted(rounded | {gene.base}))))
    return dataclasses.replace(space, genes=tuple(genes))  # type: ignore[type-var]


def _conv_from_dict(data: dict[str, Any]) -> ConvLayer:
    return ConvLayer(**{k: v for k, v in data.items() if k != "kind"})


def _layer_from_dict(data: dict[str, Any]) -> Layer:
    if data["kind"] == "conv":
        return _conv_from_dict(data)
    if data["kind"] == "maxpool":
        return MaxPool(data["name"], data["kernel"], data["stride"])
    if data["kind"] == "residual":
        shortcut = None if data["shortcut"] is None else _conv_from_dict(data["shortcut"])
        body = tuple(_conv_from_dict(c) for c in data["body"])
        return ResidualBlock(data["name"], body, shortcut, data["act"])
    raise ValueError(f"unknown layer kind {data['kind']!r}")


def _validate_space(space: SearchSpace) -> None:
    """Check that every width names a gene and that coupled channels really agree."""
    genes = {g.name for g in space.genes}
    if len(genes) != len(space.genes):
        raise ValueError(f"space {space.name!r}: duplicate gene names")

    def check_width(width: Width, where: str) -> None:
        if isinstance(width, str) and width not in genes:
            raise ValueError(f"space {space.name!r}: {where} uses unknown gene {width!r}")
        if isinstance(width, int) and width < 1:
            raise ValueError(f"space {space.name!r}: {where} has width {width} < 1")

    def check_conv(conv: ConvLayer, incoming: Width) -> Width:
        check_width(conv.in_ch, conv.name)
        check_width(conv.out_ch, conv.name)
        if conv.in_ch != incoming:
            raise ValueError(f"space {space.name!r}: {conv.name} takes {conv.in_ch!r}, previous layer gives {incoming!r}")
        if conv.depthwise and conv.in_ch != conv.out_ch:
            raise ValueError(f"space {space.name!r}: depthwise {conv.name} needs in_ch == out_ch")
        if conv.act not in ACTIVATIONS:
            raise ValueError(f"space {space.name!r}: {conv.name} has activation {conv.act!r}, not one of {ACTIVATIONS}")
        return conv.out_ch

    names: set[str] = set()
    width: Width = space.in_channels
    for layer in space.layers:
        if layer.name in names or "." in layer.name:
            raise ValueError(f"space {space.name!r}: layer name {layer.name!r} is duplicate or has a dot")
        names.add(layer.name)
        if isinstance(layer, ConvLayer):
            width = check_conv(layer, width)
        elif isinstance(layer, ResidualBlock):
            incoming = out = width
            for conv in layer.body:
                out = check_conv(conv, out)
            if layer.shortcut is None and incoming != out:
                raise ValueError(f"space {space.name!r}: {layer.name} identity shortcut joins {incoming!r} and {out!r}")
            if layer.shortcut is not None and check_conv(layer.shortcut, incoming) != out:
                raise ValueError(f"space {space.name!r}: {layer.name} shortcut does not give {out!r}")
            width = out
    if space.head.in_ch != width:
        raise ValueError(f"space {space.name!r}: classifier takes {space.head.in_ch!r}, last layer gives {width!r}")
