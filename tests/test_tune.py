"""Fine-tuning the best candidates as Ray Tune trials under ASHA: early stopping, the survivor, kill -9.

Real Ray Tune on a local two-CPU Ray: tiny synthetic images, a quarter-width ResNet-20, four
candidates of different widths, 4 epochs, grace 1, reduction factor 2.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray
import torch
from ray.tune import ExperimentAnalysis
from ray.tune.experiment import Trial

import search_spaces as ss
from metaprune.data import Normalizer, synthetic
from metaprune.errors import UserError
from metaprune.score import fixed_batches, top1
from metaprune.train import OptimConfig, train
from metaprune.tune import HISTORY, Candidate, TrialStart, TuneSpec, _DurableASHA, trial_device, trial_resources, tune_finetune

pytestmark = pytest.mark.ray

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 4
# Widths as fractions of each gene's choices. With two trials at a time, the first two listed
# always reach epoch 1 before the last two start, and from the fixed seed the last two score
# lowest at epoch 1 (about 19% against 41% and 30%), so ASHA stops them there.
FRACTIONS = (0.2, 0.4, 0.6, 0.8)
KILLED_IMAGES = 1024  # longer epochs in the restore test, so the kill lands mid-experiment


def space() -> ss.GraphSpace:
    return ss.create_space("resnet20", num_classes=4, in_channels=3, resolution=16, width_mult=0.25)


def candidates(inherit: bool = False) -> list[TrialStart]:
    """With `inherit`, the last candidate starts from given weights (seed 1), the others from scratch."""
    genes = space().genes
    found = [TrialStart(f"w{round(100 * f):03d}", tuple(round(f * (len(g.choices) - 1)) for g in genes)) for f in FRACTIONS]
    if inherit:
        torch.manual_seed(1)
        found[-1].initial = ss.fresh_subnet(space(), found[-1].config).state_dict()
    return found


def make_spec(images: int = 256) -> TuneSpec:
    splits = synthetic(n=images, classes=4, size=16)
    return TuneSpec(
        space=ss.space_payload(space()),
        train=splits.train,
        validation=splits.test,
        normalizer=Normalizer.fit(splits.train.images),
        optim=OptimConfig(epochs=EPOCHS, batch_size=32),
        seed=0,
    )


def run_experiment(storage: str, images: int) -> None:
    """The driver killed in the restore test (run with `python -c`)."""
    tune_finetune(candidates(inherit=True), make_spec(images), Path(storage))


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    """One quiet two-CPU Ray for the in-process calls (two trials at a time on any machine)."""
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    yield
    ray.shutdown()


def result_lines(storage: Path) -> dict[str, str]:
    return {path.parent.name: path.read_text() for path in sorted(storage.glob("*/result.json"))}


def trained_weights(candidate: TrialStart, spec: TuneSpec, stops: list[int | None], checkpoint: Path) -> dict[str, torch.Tensor]:
    """The candidate trained in this process as a trial trains it, stopping at each of `stops` in turn."""
    torch.manual_seed(spec.seed)
    model = ss.fresh_subnet(space(), candidate.config)
    if candidate.initial is not None:
        model.load_state_dict(candidate.initial)
    for stop in stops:
        result = train(
            model, lambda x, step: model(x), spec.train, spec.normalizer, spec.optim, seed=spec.seed,
            checkpoint=checkpoint, progress=False, until_step=stop,
        )  # fmt: skip
        assert result.steps == stop or stop is None
    return model.state_dict()


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


def test_training_epoch_by_epoch_equals_one_run(tmp_path: Path) -> None:
    spec, candidate = make_spec(), candidates()[0]
    steps = len(spec.train) // spec.optim.batch_size
    whole = trained_weights(candidate, spec, [None], tmp_path / "whole.pt")
    by_epoch = trained_weights(candidate, spec, [epoch * steps for epoch in range(1, EPOCHS + 1)], tmp_path / "epochs.pt")
    assert same_weights(whole, by_epoch)


def test_asha_stops_the_weaker_trials_and_the_survivor_loads(local_ray: None, tmp_path: Path) -> None:
    spec, storage = make_spec(), tmp_path / "tune"
    outcomes = tune_finetune(candidates(), spec, storage)

    assert [o.name for o in outcomes] == [c.name for c in candidates()]
    assert all(len(o.history) == o.epochs and o.val_top1 == o.history[-1] for o in outcomes)
    assert all(o.stopped_early == (o.epochs < EPOCHS) for o in outcomes)
    stopped = [o.name for o in outcomes if o.stopped_early]
    finished = [o for o in outcomes if o.epochs == EPOCHS]
    assert stopped and finished, [(o.name, o.history) for o in outcomes]
    assert {o.name for o in outcomes[2:]} <= set(stopped), "the two weakest trials met a full rung at epoch 1"
    survivor = max(finished, key=lambda o: o.val_top1)
    assert [o.name for o in outcomes if o.survivor] == [survivor.name]

    model = ss.build_subnet(space(), survivor.config)
    model.load_state_dict(torch.load(survivor.checkpoint, weights_only=True)["model"])
    assert top1(model, fixed_batches(spec.validation, spec.normalizer, 500, "cpu")) == survivor.val_top1
    candidate = next(c for c in candidates() if c.name == survivor.name)
    assert same_weights(survivor.state_dict(), trained_weights(candidate, spec, [None], tmp_path / "expected.pt"))

    results = result_lines(storage)
    again = tune_finetune(candidates(), spec, storage)  # a finished experiment: read back, nothing trained
    assert again == outcomes
    assert result_lines(storage) == results
    with pytest.raises(UserError, match="other candidates"):
        tune_finetune(candidates()[:2], spec, storage)
    state = next(storage.glob("experiment_state-*.json"))
    state.write_text(state.read_text()[:1000])  # as a kill while Tune rewrites it would leave it
    with pytest.raises(UserError, match="torn"):
        tune_finetune(candidates(), spec, storage)


def test_restored_trials_rebuild_the_asha_rungs() -> None:
    """Tune saves no scheduler state: a trial restored with two epochs reported must still count."""

    def scheduler() -> _DurableASHA:
        return _DurableASHA(time_attr="epoch", metric="val_top1", mode="max", max_t=4, grace_period=1, reduction_factor=2)

    restored, fresh = Trial("t", stub=True, trial_id="restored"), Trial("t", stub=True, trial_id="fresh")
    restored.update_last_result({"epoch": 2, "val_top1": 60.0, HISTORY: [50.0, 60.0]})
    weak = {"epoch": 1, "val_top1": 40.0, HISTORY: [40.0]}
    controller: Any = None  # ASHA does not use it
    after_restore = scheduler()
    for trial in (restored, fresh):
        after_restore.on_trial_add(controller, trial)
    assert after_restore.on_trial_result(controller, fresh, weak) == "STOP"  # below the restored trial's epoch 1
    alone = scheduler()
    alone.on_trial_add(controller, fresh)
    assert alone.on_trial_result(controller, fresh, weak) == "CONTINUE"  # the first at a rung always goes on


def children_of(pid: int) -> list[int]:
    """Every descendant process of `pid` (Ray's head processes and workers started by a driver)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            parents.setdefault(parent, []).append(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        return "Z" not in (Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0])
    except OSError:
        return False


def ray_agent(pid: int) -> bool:
    """Ray's per-node agents outlive a killed driver for up to a minute, but write no results."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].endswith(b"Agent")
    except OSError:
        return False


def terminated_trials(storage: Path) -> dict[str, dict]:
    """{candidate: last result} of the trials Tune's saved experiment state marks finished."""
    logging.getLogger("ray.tune").setLevel(logging.ERROR)  # trials without results yet are no news
    try:
        trials = ExperimentAnalysis(str(storage)).trials
    except Exception:  # no state saved yet
        return {}
    return {t.config["candidate"]: t.last_result for t in trials if t.status == "TERMINATED"}


def kill_after_first_finished_trial(storage: Path) -> dict[str, dict]:
    """Start the experiment in a driver process; kill -9 it, and every Ray process it started, once
    Tune's saved state shows the first candidate finished while every later candidate is held as it
    starts: at the kill nothing is training, whatever the machine's load, and the experiment cannot
    have ended. Returns that state's finished trials."""
    script = f"from tests.test_tune import run_experiment; run_experiment({str(storage)!r}, {KILLED_IMAGES})"
    command = [sys.executable, "-c", script]
    release = storage.parent / "release"  # never created: held trials wait until they are killed
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "METAPRUNE_STOP": f"trial@2+:hold={release}"}
    log = storage.parent / "driver.log"
    with open(log, "w") as output:  # a file, not a pipe that could fill up and block the driver
        driver = subprocess.Popen(command, env=env, cwd=ROOT, stdout=output, stderr=subprocess.STDOUT)
    deadline, finished = time.time() + 600, dict[str, dict]()
    while not (finished and list(storage.parent.glob("release.reached.*"))) and driver.poll() is None:
        assert time.time() < deadline, f"no finished trial beside a held one in 600 s: {log.read_text()[-3000:]}"
        time.sleep(0.2)
        finished = terminated_trials(storage)
    assert driver.poll() is None, f"the experiment ended before it could be killed: {log.read_text()[-3000:]}"
    processes = children_of(driver.pid)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    # Ray's processes share the driver's fate, but a trial worker may finish its epoch first; a
    # rerun must not race it, so wait for the workers, then end whatever is left.
    deadline = time.time() + 30
    while any(alive(pid) and not ray_agent(pid) for pid in processes) and time.time() < deadline:
        time.sleep(0.2)
    for pid in filter(alive, processes):
        os.kill(pid, signal.SIGKILL)
    return finished


def reported(results: str) -> dict[int, list[float]]:
    """{epoch: every val top-1 reported for it} from one trial's result.json."""
    by_epoch: dict[int, list[float]] = {}
    for line in results.splitlines():
        row = json.loads(line)
        by_epoch.setdefault(row["epoch"], []).append(row["val_top1"])
    return by_epoch


@pytest.mark.timeout(900)  # its driver alone may take 300 s to finish a trial on a loaded machine, then the resume
def test_killed_driver_resumes_and_retrains_no_finished_trial(local_ray: None, tmp_path: Path) -> None:
    storage = tmp_path / "tune"
    finished = kill_after_first_finished_trial(storage)
    before = result_lines(storage)
    assert finished and len(finished) < len(candidates()), f"killed too late to test a resume: {sorted(finished)}"

    spec = make_spec(KILLED_IMAGES)
    outcomes = tune_finetune(candidates(inherit=True), spec, storage)

    assert [o.name for o in outcomes] == [c.name for c in candidates()]
    assert any(o.epochs == EPOCHS for o in outcomes) and sum(o.survivor for o in outcomes) == 1
    after = result_lines(storage)
    for name, last in finished.items():  # finished before the kill: not trained again
        assert after[name] == before[name]
        assert next(o for o in outcomes if o.name == name).epochs == last["epoch"]
    assert after != before, "the rerun trained nothing"
    for outcome in outcomes:  # every epoch reported, and one reported twice (a lost report) got the same score
        by_epoch = reported(after[outcome.name])
        assert sorted(by_epoch) == list(range(1, outcome.epochs + 1))
        assert all(len(set(values)) == 1 for values in by_epoch.values())
        assert outcome.history == [values[0] for _, values in sorted(by_epoch.items())]
    inherited = candidates(inherit=True)[-1]  # resumed or not, its weights are those of one uninterrupted run
    steps = next(o.epochs for o in outcomes if o.name == inherited.name) * (len(spec.train) // spec.optim.batch_size)
    expected = trained_weights(inherited, spec, [steps], tmp_path / "expected.pt")
    assert same_weights(next(o for o in outcomes if o.name == inherited.name).state_dict(), expected)


def test_a_directory_holding_something_else_is_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not an experiment")
    with pytest.raises(UserError, match="not empty"):
        tune_finetune(candidates(), make_spec(), tmp_path)


def test_trials_ask_for_the_clusters_gpus_whatever_the_driver_has() -> None:
    # a driver without a GPU (device auto resolved to cpu there) still sends its trials to GPU nodes
    assert [trial_device(d) for d in ("auto", "cuda", "cpu")] == ["auto", "auto", "cpu"]
    gpu_cluster = {"CPU": 16.0, "GPU": 2.0}
    assert trial_resources(gpu_cluster, trial_device("auto"), trials=4) == (2, 8, 1)  # one GPU each, two at a time
    assert trial_resources(gpu_cluster, trial_device("cpu"), trials=4) == (4, 4, 0)  # pinned to the CPU
    assert trial_resources({"CPU": 2.0}, "auto", trials=4) == (2, 1, 0)  # no GPUs anywhere


def test_the_old_name_of_a_trial_start_still_works() -> None:
    assert Candidate is TrialStart  # metaprune.pipeline still says tune.Candidate
