"""The paper's evolutionary search: its settings and moves (the searcher is `nas.searchers.Evolution`).

Each generation: keep the best `population` candidates seen so far, take the top `parents`,
make `mutations` mutants (each gene resampled with probability `mutation_prob`) and `crossovers`
uniform crossovers, and fill up to `population` with random candidates. Duplicates and candidates
outside the FLOPs window are rejected before they are scored; every loop is bounded.

The search is a pure function of its seed and the scores it receives. Resuming replays it from the
start with scores read from the study, so it retraces the same path and rescores nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

import search_spaces as ss
from search_spaces import Config, GeneSpace


@dataclass
class EvolutionConfig:
    population: int = 50  # candidates scored per generation, and the size of the kept top set
    parents: int = 10  # best candidates that mutations and crossovers start from
    mutations: int = 25  # mutants of the parents per generation
    crossovers: int = 25  # uniform crossovers of two parents per generation
    generations: int = 20  # about population x generations candidates are scored
    mutation_prob: float = 0.1  # chance that a mutation resamples each gene
    seed: int = 0  # seeds the search's own random choices
    include_uniform: bool = True  # evolution: the first generation holds the uniformly scaled network under the budget


class Proposer:
    """Draws new candidates: unseen, inside the FLOPs window and passing `feasible` (e.g. a latency
    budget), with a bounded number of tries."""

    def __init__(
        self, space: GeneSpace, rng: np.random.Generator, min_flops: float, max_flops: float,
        feasible: Callable[[Config], bool] | None = None,
    ) -> None:  # fmt: skip
        self.space, self.rng = space, rng
        self.min_flops, self.max_flops = min_flops, max_flops
        self.feasible = feasible
        self.seen: set[Config] = set()

    def accept(self, config: Config) -> bool:
        if config in self.seen or not self.min_flops <= ss.flops(self.space, config) <= self.max_flops:
            return False
        if self.feasible is not None and not self.feasible(config):
            return False
        self.seen.add(config)
        return True

    def propose(self, count: int, make: Callable[[], Config]) -> list[Config]:
        found: list[Config] = []
        for _ in range(count * 10):  # the official code's bound: give up rather than loop forever
            if len(found) == count:
                break
            config = make()
            if self.accept(config):
                found.append(config)
        return found


def uniform_candidate(space: GeneSpace, rng: np.random.Generator, min_flops: float, max_flops: float) -> Config:
    """The widest uniformly scaled network under `max_flops`, grown into the window if below it.

    Random layer-wise configurations of a pruned trained network score far below its uniform
    scaling (CIFAR-10 ResNet-20 at 50% FLOPs, adaptive BN: 58% against 20-24%), so a first
    generation of random draws alone can end a short search below the baseline it must beat.
    """
    try:
        config = ss.uniform_within(space, max_flops)
    except ValueError:  # the narrowest uniform network is over the budget
        return ss.sample_within(space, rng, min_flops, max_flops)
    return ss.repair(space, config, rng, min_flops, max_flops)


def next_generation(
    space: GeneSpace, proposer: Proposer, parents: list[Config], cfg: EvolutionConfig, random_config: Callable[[], Config]
) -> list[Config]:
    """Mutants and crossovers of the parents, topped up with random candidates."""
    rng = proposer.rng

    def pick() -> Config:
        return parents[int(rng.integers(len(parents)))]

    mutants = proposer.propose(cfg.mutations, lambda: ss.mutate(space, pick(), rng, cfg.mutation_prob))
    children = proposer.propose(cfg.crossovers, lambda: ss.crossover(space, pick(), pick(), rng))
    fill = proposer.propose(cfg.population - len(mutants) - len(children), random_config)
    return mutants + children + fill
