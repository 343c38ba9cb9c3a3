"""Searchers behind one ask/tell interface: the paper's evolution, Optuna TPE and NSGA-II, random.

Calling order: the driver calls `ask(record)` for the next round of trials, scores what needs
scoring, then calls `tell(results)` with the round's candidates in ask order (None where a trial
was infeasible); an empty round ends the search.

Every searcher is a pure function of its seed and the scores it is told, so a resumed search
retraces the same path:
- evolution and random keep their own RNG and replay from the start; a configuration this study
  already holds is answered from the record, a stale RUNNING one is scored now, once;
- the Optuna samplers read their state from the study itself; a fresh sampler seeded with
  (seed, trial number) proposes each trial, and rounds have a fixed size, so each proposal sees the
  same history whether or not the driver was killed in between.
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial

import search_spaces as ss
from nas.evolution import EvolutionConfig, Proposer, next_generation, uniform_candidate
from nas.study import Candidate, Pending, StudyRecord, distributions
from search_spaces import Config, GeneSpace

SEARCHERS = ("evolution", "tpe", "nsga2", "random")
Feasible = Callable[[Config], bool]


class Searcher(ABC):
    """Proposes rounds of trials and learns from their results."""

    directions: list[StudyDirection] = [StudyDirection.MAXIMIZE]  # proxy top-1 (and FLOPs minimised, for NSGA-II)

    @abstractmethod
    def ask(self, record: StudyRecord) -> list[Pending]:
        """The next round of trials (created in the study); empty when the search is over."""

    def tell(self, results: list[Candidate | None]) -> None:  # noqa: B027  (Optuna searchers learn from the study)
        """The round's candidates in ask order; None for an infeasible trial."""


def derived_seed(seed: int, number: int) -> int:
    return (seed * 1_000_003 + number * 7_919 + 1) % 2**32


class _Replayed(Searcher):
    """Searchers with their own RNG: asks go through `record.ask_config`, which answers replays."""

    def __init__(
        self, space: GeneSpace, cfg: EvolutionConfig, window: tuple[float, float], feasible: Feasible | None = None
    ) -> None:
        self.space, self.cfg, self.window = space, cfg, window
        self.rng = np.random.default_rng(cfg.seed)
        self.proposer = Proposer(space, self.rng, *window, feasible)
        self.round = 0

    def random_config(self) -> Config:
        return ss.sample_within(self.space, self.rng, *self.window)

    def asked(self, record: StudyRecord, configs: list[Config]) -> list[Pending]:
        if self.round == 0 and not configs:
            low, high = self.window
            raise ValueError(
                f"no configuration found with FLOPs in [{low:,.0f}, {high:,.0f}]"
                f"{' within the latency budget' if self.proposer.feasible else ''} after bounded random draws; "
                "widen the window (search.min_flops, search.max_flops) or raise search.max_latency_ms"
            )
        self.round += 1
        return [record.ask_config(config) for config in configs]


class Evolution(_Replayed):
    """The paper's search: keep the best `population`, breed from the top `parents` each generation."""

    def __init__(
        self, space: GeneSpace, cfg: EvolutionConfig, window: tuple[float, float], feasible: Feasible | None = None
    ) -> None:
        super().__init__(space, cfg, window, feasible)
        self.top: list[Candidate] = []

    def ask(self, record: StudyRecord) -> list[Pending]:
        if self.round >= self.cfg.generations:
            return []
        if self.round == 0:
            configs = []
            if self.cfg.include_uniform:  # the baseline is a candidate: the search cannot end below it
                configs = self.proposer.propose(1, lambda: uniform_candidate(self.space, self.rng, *self.window))
            configs += self.proposer.propose(self.cfg.population - len(configs), self.random_config)
        else:
            parents = [c.config for c in self.top[: self.cfg.parents]]
            configs = next_generation(self.space, self.proposer, parents, self.cfg, self.random_config)
        return self.asked(record, configs)

    def tell(self, results: list[Candidate | None]) -> None:
        scored = [c for c in results if c is not None]
        self.top = sorted(self.top + scored, key=lambda c: (-c.proxy_top1, c.trial))[: self.cfg.population]


class RandomSearch(_Replayed):
    """Uniform random configurations inside the FLOPs window, `batch` per round."""

    def __init__(
        self, space: GeneSpace, cfg: EvolutionConfig, window: tuple[float, float], total: int, batch: int,
        feasible: Feasible | None = None,
    ) -> None:  # fmt: skip
        super().__init__(space, cfg, window, feasible)
        self.total, self.batch, self.asked_count = total, batch, 0

    def ask(self, record: StudyRecord) -> list[Pending]:
        count = min(self.batch, self.total - self.asked_count)
        if count <= 0:
            return []
        configs = self.proposer.propose(count, self.random_config)
        self.asked_count += count
        return self.asked(record, configs)


class _StaticSpace:
    """A search space that never changes: Optuna's samplers recompute the intersection of every
    trial's parameters at each ask (a third of TPE's ask time at 1,000 trials, since each trial
    gets a fresh sampler); every trial here has every gene, so the space is simply the genes."""

    genes: dict[str, BaseDistribution]

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        # single-choice genes go to independent sampling, as Optuna's own inference does
        return {name: d for name, d in self.genes.items() if not d.single()}


class _TPE(_StaticSpace, optuna.samplers.TPESampler):
    pass


class NSGAIISampler(_StaticSpace, optuna.samplers.NSGAIISampler):
    """Optuna's NSGA-II over the static gene space. Named as Optuna's class on purpose: NSGA-II keys
    its generation records in the study by class name, so the study stays Optuna's own format."""


class OptunaSearch(Searcher):
    """TPE (maximise proxy top-1) or NSGA-II (maximise proxy top-1, minimise FLOPs), the FLOPs
    window expressed as Optuna constraints, so that infeasible trials are ranked by violation."""

    def __init__(self, kind: str, space: GeneSpace, seed: int, total: int, batch: int, population: int) -> None:
        self.kind, self.seed, self.total, self.batch, self.population = kind, seed, total, batch, population
        self.genes = distributions(space)
        self.directions = [StudyDirection.MAXIMIZE] + ([StudyDirection.MINIMIZE] if kind == "nsga2" else [])

    def sampler(self, number: int) -> optuna.samplers.BaseSampler:
        seed = derived_seed(self.seed, number)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            sampler: _TPE | NSGAIISampler
            if self.kind == "nsga2":
                sampler = NSGAIISampler(population_size=self.population, seed=seed)
            else:
                sampler = _TPE(seed=seed, multivariate=True, constant_liar=True)
        sampler.genes = self.genes
        return sampler

    def ask(self, record: StudyRecord) -> list[Pending]:
        resumed = [record.resume(trial) for trial in record.stale()]  # only after a crash
        asked = len(record.trials())
        # complete a round cut short, else start a new one: rounds always begin at multiples of batch
        fill = (-asked) % self.batch if resumed else self.batch - asked % self.batch
        fill = max(0, min(fill, self.total - asked))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            fresh = [record.ask_sampled(self.sampler(asked + i)) for i in range(fill)]
        return resumed + fresh


def make_searcher(
    name: str, space: GeneSpace, cfg: EvolutionConfig, window: tuple[float, float], batch: int,
    feasible: Feasible | None = None,
) -> Searcher:  # fmt: skip
    """The searcher `name`; all propose population x generations trials in total.

    `feasible` is a further constraint besides the FLOPs window (a latency budget): evolution and
    random never propose a configuration that fails it; TPE and NSGA-II see it as an Optuna
    constraint set by the study record.
    """
    total = cfg.population * cfg.generations
    if name == "evolution":
        return Evolution(space, cfg, window, feasible)
    if name == "random":
        return RandomSearch(space, cfg, window, total, batch, feasible)
    if name == "tpe":
        return OptunaSearch("tpe", space, cfg.seed, total, batch, cfg.population)
    if name == "nsga2":
        return OptunaSearch("nsga2", space, cfg.seed, total, cfg.population, max(2, cfg.population))
    raise ValueError(f"unknown searcher {name!r}; choose one of {', '.join(SEARCHERS)}")
