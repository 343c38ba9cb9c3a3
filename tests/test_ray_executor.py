"""The Ray executor against the in-process one: same scores, each exactly once, through actor deaths and across nodes.

Real Ray, no mocks: one local Ray instance (2 CPUs) shared by the module, and a two-node cluster of
separate raylet processes on loopback for the multi-node test.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator

import numpy as np
import pytest
import ray
import torch

import search_spaces
from metaprune.data import Normalizer, synthetic
from metaprune.graph_pruningnet import GraphPruningNet
from metaprune.pruningnet import PruningNetConfig
from metaprune.score import ScoreConfig, ScorerSpec
from nas.executors import InProcessExecutor, Scored, Task
from nas.ray_executor import RayExecutor, plan_actors
from tests.conftest import ROOT
from tests.ray_cluster import RayStartCluster, ray_cluster  # noqa: F401  (the fixture, used by test_two_nodes_both_score)

pytestmark = pytest.mark.ray


def tiny_spec() -> ScorerSpec:
    """A half-width ResNet-20 on 16x16 synthetic images; untrained, which changes nothing about scoring."""
    space = search_spaces.create_space("resnet20", num_classes=4, in_channels=3, resolution=16, width_mult=0.5)
    torch.manual_seed(0)
    net = GraphPruningNet(space, PruningNetConfig(hidden=8))
    data = synthetic(n=256, classes=4, size=16, seed=0)
    return ScorerSpec(
        space=search_spaces.space_payload(space),
        pruningnet=PruningNetConfig(hidden=8),
        weights=net.state_dict(),
        calibration=data.train.images[:64],
        validation_images=data.test.images,
        validation_labels=data.test.labels,
        normalizer=Normalizer.fit(data.train.images),
        score=ScoreConfig(calib_images=64, calib_batch_size=32, eval_batch_size=64),
    )


def candidates(count: int, seed: int = 0) -> list[Task]:
    space = search_spaces.space_from_payload(tiny_spec().space)
    rng = np.random.default_rng(seed)
    return [Task(slot, search_spaces.sample(space, rng)) for slot in range(100, 100 + count)]


def by_slot(results: list[Scored]) -> dict[int, float]:
    slots = [r.task.slot for r in results]
    assert len(slots) == len(set(slots)), f"a candidate was yielded twice: {sorted(slots)}"
    return {r.task.slot: r.proxy_top1 for r in results}


@pytest.fixture(scope="module")
def spec() -> ScorerSpec:
    return tiny_spec()


@pytest.fixture(scope="module")
def expected(spec: ScorerSpec) -> dict[int, float]:
    """In-process scores of the 24 candidates, with one torch thread like each Ray actor."""
    torch.set_num_threads(1)
    return by_slot(list(InProcessExecutor(spec).score(candidates(24))))


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    """One Ray instance on this machine for the module; executors find it connected and leave it running."""
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.mark.usefixtures("local_ray")
def test_same_scores_as_in_process(spec: ScorerSpec, expected: dict[int, float]) -> None:
    tasks = candidates(12)
    with RayExecutor(spec, workers=2) as executor:
        assert executor.plan.threads == 1 and executor.plan.device == "cpu"
        results = list(executor.score(tasks))
        assert by_slot(results) == {t.slot: expected[t.slot] for t in tasks}  # exact: same threads, same kernels
        assert all(count > 0 for count in executor.chunks_scored), executor.chunks_scored
        assert {r.node for r in results} == set(executor.nodes)
        assert by_slot(list(executor.score(tasks[:3]))) == {t.slot: expected[t.slot] for t in tasks[:3]}  # a second round


@pytest.mark.usefixtures("local_ray")
def test_killed_actor_loses_no_candidate(spec: ScorerSpec, expected: dict[int, float]) -> None:
    tasks = candidates(24)
    with RayExecutor(spec, workers=2) as executor:
        pid: ray.ObjectRef = executor.actors[0].pid.remote()
        victim: int = ray.get(pid)
        results: list[Scored] = []
        for scored in executor.score(tasks):
            if not results:
                os.kill(victim, signal.SIGKILL)  # mid-round: the victim holds chunks running and queued
            results.append(scored)
        assert by_slot(results) == expected
        assert executor.chunks_lost >= 1  # the victim's chunks really were lost and resubmitted
        assert ray.get(executor.actors[0].pid.options(max_task_retries=-1).remote()) != victim  # Ray restarted it
        before = list(executor.chunks_scored)
        assert by_slot(list(executor.score(tasks))) == expected
        assert executor.chunks_scored[0] > before[0], "the restarted actor got no work"


@pytest.mark.usefixtures("local_ray")
def test_stopping_early_then_losing_every_actor(spec: ScorerSpec, expected: dict[int, float]) -> None:
    tasks = candidates(8)
    with RayExecutor(spec, workers=1) as executor:
        for _ in executor.score(tasks):
            break  # the driver may stop reading a round; the next round must still be complete and exact
        assert by_slot(list(executor.score(tasks[:4]))) == {t.slot: expected[t.slot] for t in tasks[:4]}
        ray.kill(executor.actors[0], no_restart=True)
        with pytest.raises(RuntimeError, match="all 1 Ray actors died"):
            list(executor.score(tasks))


@pytest.mark.usefixtures("local_ray")
def test_too_many_workers_is_a_clear_error(spec: ScorerSpec) -> None:
    with pytest.raises(ValueError, match=r"workers=3 needs 1 CPU\(s\) each, but the Ray cluster has 2 CPUs"):
        RayExecutor(spec, workers=3)


def test_plan_actors() -> None:
    assert plan_actors(2, [8], gpus=0) == plan_actors(2, [4, 4], gpus=0)
    assert plan_actors(2, [8], gpus=0).threads == 4
    assert plan_actors(2, [5, 2], gpus=0).threads == 2  # 3 threads would not fit on the 2-CPU node
    assert plan_actors(1, [8], gpus=0, threads=1).num_cpus == 1
    with pytest.raises(ValueError, match="use at most 3 workers"):
        plan_actors(4, [5, 2], gpus=0, threads=2)
    assert plan_actors(2, [8], gpus=2).device == "cuda"
    assert plan_actors(2, [8], gpus=2, device="cpu").device == "cpu"
    assert plan_actors(2, [8], gpus=1).num_gpus == 0.5  # the default workers=2 on a one-GPU machine: they share it
    assert plan_actors(3, [8], gpus=2).num_gpus == 0.5 and plan_actors(2, [8], gpus=2).num_gpus == 1
    with pytest.raises(ValueError, match="needs GPUs, but the Ray cluster has none"):
        plan_actors(2, [8], gpus=0, device="cuda")
    with pytest.raises(ValueError, match="device must be one of"):
        plan_actors(1, [8], gpus=0, device="tpu")


def test_importing_nas_does_not_import_ray() -> None:
    modules = ["nas", "nas.executors", "nas.search"]
    code = (
        "import importlib.util, sys\n"
        f"for name in {modules!r}:\n"
        "    if importlib.util.find_spec(name) is not None:\n"
        "        __import__(name)\n"
        "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert out.strip() == "[]"


# The driver runs in its own process, joining the cluster by address as a user's search would.
DRIVER = """
import json, sys
import ray
from nas.ray_executor import RayExecutor
from tests.test_ray_executor import candidates, tiny_spec

with RayExecutor(tiny_spec(), workers=2, address=sys.argv[1]) as executor:
    results = list(executor.score(candidates(12)))
    cluster = [node["NodeID"] for node in ray.nodes() if node["Alive"]]
    print(json.dumps({"cluster": cluster, "initialized_ray": executor.initialized_ray,
                      "scores": [[r.task.slot, r.proxy_top1, r.node] for r in results]}))
"""


def test_two_nodes_both_score(ray_cluster: RayStartCluster, expected: dict[int, float]) -> None:  # noqa: F811
    run = subprocess.run(
        [sys.executable, "-c", DRIVER, ray_cluster.address], capture_output=True, text=True, env=ray_cluster.env, timeout=300
    )
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert len(out["cluster"]) == 2 and out["initialized_ray"]
    assert {node.split("/")[-1] for _, _, node in out["scores"]} == set(out["cluster"])  # both nodes scored
    assert {slot: top1 for slot, top1, _ in out["scores"]} == {t.slot: expected[t.slot] for t in candidates(12)}
