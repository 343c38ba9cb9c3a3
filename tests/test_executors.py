"""nas's executors with a scorer of nas's own tests (no PruningNet, no metaprune): the protocol is all
an executor needs, and every executor gives each task its score exactly once."""

from __future__ import annotations

import pickle
from dataclasses import dataclass

import numpy as np
import pytest

import search_spaces as ss
from nas.executors import InProcessExecutor, LazyExecutor, ScorerFactory, Task
from search_spaces import Config


@dataclass(frozen=True)
class WidthScorer:
    """A cheap, picklable ScorerFactory: the 'proxy' of a configuration is a function of its choices."""

    offset: float

    def build(self, device: str) -> WidthScorer:
        assert device.startswith("cpu"), device
        return self

    def __call__(self, config: Config) -> float:
        return self.offset + sum((i + 1) * choice for i, choice in enumerate(config))


def tasks(count: int) -> list[Task]:
    space = ss.create_space("resnet20", 10, 3, 32)
    rng = np.random.default_rng(0)
    return [Task(slot, ss.sample(space, rng)) for slot in range(count)]


def expected(factory: WidthScorer, round_: list[Task]) -> dict[int, float]:
    return {task.slot: factory(task.config) for task in round_}


def test_in_process_and_lazy_executors_score_each_task_once_with_the_factorys_scorer() -> None:
    factory: ScorerFactory = WidthScorer(3.0)
    round_ = tasks(12)
    results = list(InProcessExecutor(factory).score(round_))
    assert sorted(r.task.slot for r in results) == list(range(12))
    assert {r.task.slot: r.proxy_top1 for r in results} == expected(WidthScorer(3.0), round_)
    lazy = LazyExecutor(lambda: InProcessExecutor(factory))
    assert list(lazy.score([])) == [] and lazy.inner is None  # nothing to score: nothing built
    assert {r.task.slot: r.proxy_top1 for r in lazy.score(round_)} == expected(WidthScorer(3.0), round_)
    assert lazy.report()["nodes"] == [results[0].node]
    lazy.close()
    assert lazy.inner is None and lazy.report()["nodes"] == [results[0].node]  # the report outlives the pool


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_ray_actors_score_with_a_factory_shipped_once() -> None:
    from nas.ray_executor import RayExecutor

    factory = WidthScorer(1.5)
    pickle.dumps(factory)  # what Ray ships
    round_ = tasks(20)
    with RayExecutor(factory, workers=2, chunk=3, threads=1) as executor:
        results = list(executor.score(round_))
        report = executor.report()
    assert sorted(r.task.slot for r in results) == list(range(20))
    assert {r.task.slot: r.proxy_top1 for r in results} == expected(factory, round_)
    assert sum(report["chunks_scored"]) == 7 and report["chunks_lost"] == 0  # ceil(20 / 3) chunks, none lost
