"""Registry of network families: a name maps to a function that returns a `SearchSpace`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from search_spaces._space import SearchSpace, with_channel_multiple

SpaceFactory = Callable[..., SearchSpace]


@dataclass(frozen=True)
class Family:
    name: str
    factory: SpaceFactory  # (num_classes, in_channels, resolution, width_mult) -> SearchSpace
    resolutions: tuple[int, ...]  # input sizes it is designed for (its stems); tests build each
    doc: str


_FAMILIES: dict[str, Family] = {}


def register_space(name: str, resolutions: tuple[int, ...] = (32,)) -> Callable[[SpaceFactory], SpaceFactory]:
    """Decorator: register a family so the CLI and every generic test can find it by name."""

    def wrap(factory: SpaceFactory) -> SpaceFactory:
        if name in _FAMILIES:
            raise ValueError(f"search space {name!r} is registered twice")
        _FAMILIES[name] = Family(name, factory, resolutions, (factory.__doc__ or "").strip().split("\n")[0])
        return factory

    return wrap


def list_spaces() -> list[str]:
    return sorted(_FAMILIES)


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
) -> SearchSpace:
    """Instantiate a registered family for the data at hand (classes, channels, image size), every
    gene's widths rounded to multiples of `channel_multiple` (1: the paper's grid)."""
    family = get_family(name)
    if width_mult <= 0:
        raise ValueError(f"width_mult must be > 0, got {width_mult}")
    size = family.resolutions[0] if resolution is None else resolution
    space = family.factory(num_classes=num_classes, in_channels=in_channels, resolution=size, width_mult=width_mult)
    return with_channel_multiple(space, channel_multiple)
