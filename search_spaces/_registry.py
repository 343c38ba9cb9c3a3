"""Registry of network families: a name maps to a function that returns a `SearchSpace` (a chain
description), or to a plain `nn.Module` builder. Either way `create_space` gives the traced graph
(`from_module`): a described family is its full-width `Network`, traced, its genes keeping the
description's names and order, so its configurations, FLOPs and outputs are the description's."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from search_spaces._build import build_subnet, gene_paths
from search_spaces._graph_space import GraphSpace
from search_spaces._space import SearchSpace, with_channel_multiple

SpaceFactory = Callable[..., SearchSpace]


@dataclass(frozen=True)
class Family:
    name: str
    factory: SpaceFactory | None  # None for a graph family; (num_classes, in_channels, resolution, width_mult) -> SearchSpace
    resolutions: tuple[int, ...]  # input sizes it is designed for (its stems); tests build each
    doc: str
    module: str = ""  # a graph family: "package.module:builder" of its nn.Module, traced per data shape


_FAMILIES: dict[str, Family] = {}


def register_space(name: str, resolutions: tuple[int, ...] = (32,)) -> Callable[[SpaceFactory], SpaceFactory]:
    """Decorator: register a family so the CLI and every generic test can find it by name."""

    def wrap(factory: SpaceFactory) -> SpaceFactory:
        if name in _FAMILIES:
            raise ValueError(f"search space {name!r} is registered twice")
        _FAMILIES[name] = Family(name, factory, resolutions, (factory.__doc__ or "").strip().split("\n")[0])
        return factory

    return wrap


def register_module(name: str, builder: Callable[..., object], resolutions: tuple[int, ...] = (32, 224)) -> None:
    """Register a graph family: `builder(num_classes, in_channels, resolution, width_mult)` returns
    a plain `nn.Module`, traced by `from_module` (importable by name: Ray workers rebuild it)."""
    if name in _FAMILIES:
        raise ValueError(f"search space {name!r} is registered twice")
    doc = (builder.__doc__ or "").strip().split("\n")[0]
    spec = f"{builder.__module__}:{getattr(builder, '__name__', '')}"
    _FAMILIES[name] = Family(name, None, resolutions, doc, module=spec)


def list_spaces(kind: str = "all") -> list[str]:
    """The registered families' names: all, or only those described as a chain (`SearchSpace`,
    "described") or those built as a plain module ("module"). Every one is a graph once created."""
    if kind not in ("all", "described", "module"):
        raise ValueError(f"kind must be all, described or module, got {kind!r}")
    if kind == "all":
        return sorted(_FAMILIES)
    return sorted(name for name, family in _FAMILIES.items() if bool(family.module) == (kind == "module"))


def get_family(name: str) -> Family:
    if name not in _FAMILIES:
        raise ValueError(f"unknown search space {name!r}; choose one of: {', '.join(list_spaces())}")
    return _FAMILIES[name]


def create_space(
    name: str,
    num_classes: int = 10,
    in_channels: int = 3,
    resolution: int | None = None,
    width_mult: float = 1.0,
    channel_multiple: int = 1,
) -> GraphSpace:
    """Instantiate a registered family for the data at hand (classes, channels, image size), every
    gene's widths rounded to multiples of `channel_multiple` (1: the paper's grid). Traced here; the
    recipe it keeps rebuilds the same space anywhere (Ray workers, an exported subnet)."""
    from search_spaces.user import graph_space

    family = get_family(name)
    if width_mult <= 0:
        raise ValueError(f"width_mult must be > 0, got {width_mult}")
    size = family.resolutions[0] if resolution is None else resolution
    kwargs = {"in_channels": in_channels, "resolution": size, "width_mult": width_mult}
    if family.factory is None:
        recipe = {"model": family.module, "name": name, "kwargs": kwargs}
    else:
        described = create_description(name, num_classes, in_channels, size, width_mult)
        recipe = {"model": f"{__name__}:described_network", "name": name, "kwargs": {"family": name, **kwargs}}
        recipe["genes"] = gene_paths(described)
    return graph_space(recipe, num_classes, (in_channels, size, size), channel_multiple)


def create_description(
    name: str, num_classes: int, in_channels: int, resolution: int, width_mult: float, channel_multiple: int = 1
) -> SearchSpace:
    """A described family's chain description (`SearchSpace`), from which its network is built."""
    factory = get_family(name).factory
    if factory is None:
        raise ValueError(f"search space {name!r} is a module builder, not a description")
    space = factory(num_classes=num_classes, in_channels=in_channels, resolution=resolution, width_mult=width_mult)
    return with_channel_multiple(space, channel_multiple)


def described_network(family: str, num_classes: int, in_channels: int, resolution: int, width_mult: float) -> nn.Module:
    """The full-width network of a described family: what `create_space` traces."""
    described = create_description(family, num_classes, in_channels, resolution, width_mult)
    return build_subnet(described, described.largest)
