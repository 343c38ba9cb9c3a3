"""The paper's evolutionary search, with a durable record and constraints checked before scoring.

Each generation: keep the best `population` candidates seen so far, take the top `parents`,
make `mutations` mutants (each gene resampled with probability `mutation_prob`) and `crossovers`
uniform crossovers, and fill up to `population` with random candidates. Duplicates and candidates
outside the FLOPs window are rejected before they are scored; every loop is bounded.

The search is a pure function of its seed and the scores it receives. Resuming replays it from the
start with scores read from the record, so it retraces the same path and rescores nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

import search_spaces as ss
from nas.record import Candidate
from search_spaces import Config, SearchSpace


@dataclass
class EvolutionConfig:
    population: int = 50  # candidates scored per generation, and the size of the kept top set
    parents: int = 10  # best candidates that mutations and crossovers start from
    mutations: int = 25  # mutants of the parents per generation
    crossovers: int = 25  # uniform crossovers of two parents per generation
    generations: int = 20  # about population x generations candidates are scored
    mutation_prob: float = 0.1  # chance that a mutation resamples each gene
    seed: int = 0  # seeds the search's own random choices


Evaluate = Callable[[Config], Candidate]


class _Proposer:
    """Draws new candidates: unseen and inside the FLOPs window, with a bounded number of tries."""

    def __init__(self, space: SearchSpace, rng: np.random.Generator, min_flops: float, max_flops: float) -> None:
        self.space, self.rng = space, rng
        self.min_flops, self.max_flops = min_flops, max_flops
        self.seen: set[Config] = set()

    def accept(self, config: Config) -> bool:
        if config in self.seen or not self.min_flops <= ss.flops(self.space, config) <= self.max_flops:
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


def _next_generation(
    space: SearchSpace, proposer: _Proposer, parents: list[Config], cfg: EvolutionConfig, random_config: Callable[[], Config]
) -> list[Config]:
    """Mutants and crossovers of the parents, topped up with random candidates."""
    rng = proposer.rng

    def pick() -> Config:
        return parents[int(rng.integers(len(parents)))]

    mutants = proposer.propose(cfg.mutations, lambda: ss.mutate(space, pick(), rng, cfg.mutation_prob))
    children = proposer.propose(cfg.crossovers, lambda: ss.crossover(space, pick(), pick(), rng))
    fill = proposer.propose(cfg.population - len(mutants) - len(children), random_config)
    return mutants + children + fill


def evolve(
    space: SearchSpace, evaluate: Evaluate, cfg: EvolutionConfig, min_flops: float, max_flops: float, progress: bool = True
) -> Candidate:
    """Run the search; `evaluate` scores (or recalls) one configuration. Returns the best."""
    ss.check_window(space, min_flops, max_flops)
    rng = np.random.default_rng(cfg.seed)
    proposer = _Proposer(space, rng, min_flops, max_flops)
    random_config = lambda: ss.sample_within(space, rng, min_flops, max_flops)
    top: list[Candidate] = []
    candidates = proposer.propose(cfg.population, random_config)
    if not candidates:
        raise ValueError(
            f"no configuration found with FLOPs in [{min_flops:,.0f}, {max_flops:,.0f}] after {cfg.population * 10} draws; "
            "widen the window (search.min_flops, search.max_flops)"
        )
    bar = tqdm(total=cfg.generations * cfg.population, desc="search", unit="cand", disable=not progress, dynamic_ncols=True)
    for generation in range(cfg.generations):
        scored = []
        for config in candidates:
            scored.append(evaluate(config))
            bar.update(1)
        top = sorted(top + scored, key=lambda c: (-c.proxy_top1, c.trial))[: cfg.population]
        bar.set_postfix(gen=generation + 1, best=f"{top[0].proxy_top1:.2f}")
        if generation + 1 < cfg.generations:
            candidates = _next_generation(space, proposer, [c.config for c in top[: cfg.parents]], cfg, random_config)
    bar.close()
    return top[0]
