"""Configuration operators for searchers: sample, mutate, cross over, all under a FLOPs window.

Every loop is bounded: a window that random draws rarely hit is reached by shrinking or growing
genes one step at a time, which always terminates because the window is checked to be reachable.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from search_spaces._count import flops
from search_spaces._space import Config, GeneSpace

_RANDOM_TRIES = 64


def check_window(space: GeneSpace, min_flops: float, max_flops: float) -> None:
    """Raise ValueError when no configuration can have FLOPs in [min_flops, max_flops]."""
    low, high = flops(space, space.smallest), flops(space, space.largest)
    if max_flops < low:
        raise ValueError(
            f"FLOPs budget {max_flops:,.0f} is below the smallest configuration of {space.name!r} "
            f"({low:,.0f} FLOPs, {low / high:.3f} of the full model); raise the budget"
        )
    if min_flops > high or min_flops > max_flops:
        raise ValueError(
            f"FLOPs window [{min_flops:,.0f}, {max_flops:,.0f}] is empty for {space.name!r} (full model {high:,.0f})"
        )


def sample(space: GeneSpace, rng: np.random.Generator) -> Config:
    """A uniformly random configuration: each gene's choice drawn independently."""
    return tuple(int(rng.integers(len(g.choices))) for g in space.genes)


def repair(space: GeneSpace, config: Config, rng: np.random.Generator, min_flops: float, max_flops: float) -> Config:
    """Move random genes one step at a time until FLOPs lie in the window.

    Shrinks while over `max_flops`, then grows only genes whose next step stays under it. It ends
    in the window unless the window is narrower than every single step, where it ends just below.
    """
    current = list(config)
    while flops(space, tuple(current)) > max_flops:
        shrinkable = [i for i, c in enumerate(current) if c > 0]
        current[shrinkable[int(rng.integers(len(shrinkable)))]] -= 1
    while flops(space, tuple(current)) < min_flops:
        steps = []
        for i, choice in enumerate(current):
            grown = current[:i] + [choice + 1] + current[i + 1 :]
            if choice + 1 < len(space.genes[i].choices) and flops(space, tuple(grown)) <= max_flops:
                steps.append(grown)
        if not steps:
            break
        current = steps[int(rng.integers(len(steps)))]
    return tuple(current)


def sample_within(space: GeneSpace, rng: np.random.Generator, min_flops: float = 0.0, max_flops: float = float("inf")) -> Config:
    """A random configuration with FLOPs in [min_flops, max_flops]: rejection, then repair."""
    config = sample(space, rng)
    for _ in range(_RANDOM_TRIES):
        if min_flops <= flops(space, config) <= max_flops:
            return config
        config = sample(space, rng)
    return repair(space, config, rng, min_flops, max_flops)


def mutate(space: GeneSpace, config: Config, rng: np.random.Generator, prob: float = 0.1) -> Config:
    """Resample each gene with probability `prob` (the paper's mutation)."""
    out = list(space.validate(config))
    for i, gene in enumerate(space.genes):
        if rng.random() < prob:
            out[i] = int(rng.integers(len(gene.choices)))
    return tuple(out)


def crossover(space: GeneSpace, a: Config, b: Config, rng: np.random.Generator) -> Config:
    """Uniform crossover: each gene from either parent with equal probability."""
    a, b = space.validate(a), space.validate(b)
    return tuple(x if rng.random() < 0.5 else y for x, y in zip(a, b))


Rounding = Literal["down", "nearest"]


def uniform(space: GeneSpace, scale: float, rounding: Rounding = "down") -> Config:
    """Uniform width scaling: every gene at the choice nearest `scale` x its base width.

    "down" (the width-multiplier baseline): the widest choice at most that wide (the smallest choice
    at least), so that a larger scale never gives fewer FLOPs and a bisection on it finds a budget.
    "nearest" (the distillation assistant): the choice closest to it, the narrower one on a tie.
    """
    if rounding not in ("down", "nearest"):
        raise ValueError(f"rounding must be 'down' or 'nearest', but got {rounding!r}")
    return tuple(_scaled_choice(gene.choices, gene.base * scale, rounding) for gene in space.genes)


def _scaled_choice(choices: tuple[int, ...], wanted: float, rounding: Rounding) -> int:
    if rounding == "nearest":
        return min(range(len(choices)), key=lambda i: abs(choices[i] - wanted))
    # the tolerance: a scale meant to land on a choice (0.5 of 64) must not miss it by a rounding error
    return max([i for i, c in enumerate(choices) if c <= wanted + 1e-9], default=0)


def uniform_within(space: GeneSpace, max_flops: float) -> Config:
    """The uniformly scaled network with the most FLOPs within `max_flops` (the classic width
    multiplier baseline at a FLOPs budget). FLOPs grow with the scale, so a bisection finds it;
    then genes, in order, take one more step while the budget allows, so that the FLOPs match a
    target closely (rounding to whole channels leaves gaps of several percent otherwise)."""
    low, high = 0.0, 1.0
    if flops(space, uniform(space, low)) > max_flops:
        raise ValueError(f"FLOPs budget {max_flops:,.0f} is below the narrowest uniform network of {space.name!r}")
    for _ in range(40):
        middle = (low + high) / 2
        low, high = (middle, high) if flops(space, uniform(space, middle)) <= max_flops else (low, middle)
    config = list(uniform(space, low))
    for i, gene in enumerate(space.genes):
        grown = config[:i] + [config[i] + 1] + config[i + 1 :]
        if config[i] + 1 < len(gene.choices) and flops(space, tuple(grown)) <= max_flops:
            config = grown
    return tuple(config)
