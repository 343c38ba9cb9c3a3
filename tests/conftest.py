"""Shared fixtures: tiny settings that run every stage in seconds on synthetic data."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
CIFAR = ROOT.parent / "shared" / "data" / "cifar10"

# Synthetic 16x16 images, a half-width ResNet-20, a few epochs and a small evolutionary search.
FAST = [
    "data.kind=synthetic",
    "data.val_size=64",
    "space.width_mult=0.5",
    "space.channel_multiple=4",  # the default 8 leaves a half-width ResNet-20 no configuration under 48% FLOPs
    "threads=1",
    "device=cpu",  # never the GPU a machine may have: bit-identical resumes need the CPU's deterministic kernels
    "progress=false",
    "pruningnet.epochs=2",
    "pruningnet.batch_size=32",
    "pruningnet.checkpoint_every=4",
    "score.calib_images=64",
    "score.calib_batch_size=32",
    "search.population=8",
    "search.parents=3",
    "search.mutations=3",
    "search.crossovers=3",
    "search.generations=3",
    "finetune.epochs=1",
    "finetune.batch_size=32",
    "base.epochs=1",
    "base.batch_size=32",
]

torch.set_num_threads(1)


def cli(
    *args: str,
    run_dir: Path | None = None,
    sets: list[str] | None = None,
    background: bool = False,
    inprocess: bool = False,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess | subprocess.Popen:
    """Run run_search.py in a fresh process, as a user would (or `inprocess`: its `main`, for quick error
    cases); `env` replaces this process's environment (the project stays on PYTHONPATH)."""
    command = [sys.executable, str(ROOT / "run_search.py"), *args]
    if run_dir is not None:
        command += ["--run-dir", str(run_dir)]
    for item in FAST + (sets or []):
        command += ["--set", item]
    if inprocess:
        return _main_in_this_process(command[2:])
    env = {**(os.environ if env is None else env), "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    if background:
        return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)


def hold_at(point: str, count: int, release: Path, env: dict[str, str] | None = None) -> dict[str, str]:
    """`env` (default: this process's) plus the setting that makes a CLI process wait at `point` the
    count-th time (`nas.stops`) until the test creates `release`; pass it to `cli(env=...)`."""
    return {**(os.environ if env is None else env), "METAPRUNE_STOP": f"{point}@{count}:hold={release}"}


def wait_held(process: subprocess.Popen, release: Path, timeout: float = 300.0) -> None:
    """Block until `process` waits at its stop point (fail if it exits first)."""
    import time

    reached = release.with_name(f"{release.name}.reached.{process.pid}")
    deadline = time.time() + timeout
    while not reached.exists():
        if process.poll() is not None:
            output = process.stderr.read() if process.stderr else ""
            raise AssertionError(f"exited ({process.returncode}) before its stop point: {output}")
        assert time.time() < deadline, f"no stop point reached in {timeout:.0f} s"
        time.sleep(0.05)


def study_trials(run_dir: Path) -> list:
    """The trials of the run's last search, read with Optuna's own journal reader (as optuna-dashboard does)."""
    import json

    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    name = json.loads((run_dir / "summary.json").read_text())["search"]["study"]
    storage = JournalStorage(JournalFileBackend(str(run_dir / "study.journal")))
    return optuna.load_study(study_name=name, storage=storage).trials


def scored_configs(run_dir: Path) -> list[tuple[int, ...]]:
    """Configurations scored (not reused) in any study of the run, in the order they were written."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    path = run_dir / "study.journal"
    if not path.exists():
        return []
    storage = JournalStorage(JournalFileBackend(str(path)))
    found = []
    for summary in storage.get_all_studies():
        for trial in optuna.load_study(study_name=summary.study_name, storage=storage).trials:
            if trial.user_attrs.get("status") == "scored":
                found.append(tuple(trial.params.values()))
    return found


def counted_top1(model: torch.nn.Module, mean: list[float], std: list[float]) -> float:
    """Top-1 (%) of `model` on the test split of FAST's synthetic data, counted here: every test image
    (128, one batch, as the pipeline's batches of 500 take them), normalised with `mean` and `std`
    (a run records them in export/architecture.json). An independent figure to compare a summary's with."""
    from metaprune.data import synthetic

    test = synthetic().test
    x = (test.images.float().div(255) - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)
    with torch.no_grad():
        correct = int((model.eval()(x).argmax(1) == test.labels).sum())
    return 100.0 * correct / len(test.labels)


def onnx_counted_top1(path: Path) -> float:
    """Top-1 (%) of an exported ONNX file (it takes pixels / 255) on FAST's synthetic test split, counted here."""
    import numpy as np
    import onnxruntime as ort

    from metaprune.data import synthetic

    test = synthetic().test
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits = session.run(None, {session.get_inputs()[0].name: (test.images.float() / 255).numpy()})[0]
    return 100.0 * int((np.argmax(logits, 1) == test.labels.numpy()).sum()) / len(test.labels)


def finetuned_top1(run_dir: Path) -> float:
    """`counted_top1` of the run's fine-tuned winner, rebuilt from its checkpoint (summary.json
    finetune.checkpoint) and the normaliser its export recorded."""
    import json

    import search_spaces as ss

    summary = json.loads((run_dir / "summary.json").read_text())
    arch = json.loads((run_dir / "export" / "architecture.json").read_text())
    model = ss.subnet_from_architecture(arch)
    model.load_state_dict(torch.load(run_dir / summary["finetune"]["checkpoint"], weights_only=True)["model"])
    return counted_top1(model, arch["input"]["mean"], arch["input"]["std"])


def _main_in_this_process(argv: list[str]) -> subprocess.CompletedProcess:
    """`run_search.main(argv)` with its output captured: the CLI's own entry point, without a
    fresh interpreter (2-3 s of imports per call). A traceback would surface as the test's error."""
    import contextlib
    import gc
    import io

    import run_search

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = run_search.main(argv)
    gc.collect()  # drop any Run object, and with it a run-directory lock it may hold
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory holding a finished PruningNet (shared by the search tests; copy before use)."""
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    result = cli("train-pruningnet", run_dir=run_dir)
    assert result.returncode == 0, result.stderr
    return run_dir


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under pytest-xdist, Ray's tests run on one worker, one after another: the README's `ray stop`,
    which tests/ray_cluster.py runs as a user would, stops every Ray process on the machine (a
    Ray test on another worker lost its Ray to it mid-test, and the worker with it)."""
    for item in items:
        if item.get_closest_marker("ray") is not None:
            item.add_marker(pytest.mark.xdist_group("ray"))


def pytest_configure(config: pytest.Config) -> None:
    """Refuse at once, with the fix, where pytest-xdist is known to ignore the `ray` group."""
    from importlib.metadata import version

    grouping = config.getoption("dist", default="no") == "loadgroup" and not hasattr(config, "workerinput")
    xdist = tuple(int(part) for part in version("pytest-xdist").split(".")[:2]) if grouping else ()
    if grouping and pytest.version_tuple[:2] >= (9, 2) and xdist <= (3, 8):
        pytest.exit(
            f"pytest {pytest.__version__} with pytest-xdist {version('pytest-xdist')} ignores --dist=loadgroup "
            "(pytest-xdist#1386): install the pinned versions (pip install -c constraints.txt -e '.[test]') "
            "or run with -n 0",
            returncode=4,
        )


def pytest_collection_finish(session: pytest.Session) -> None:
    """On a worker, stop if xdist ignored the `ray` group anyway (a version pytest_configure does not
    know): Ray tests spread over workers stop each other's Ray, and a worker dies with its test."""
    if not hasattr(session.config, "workerinput") or not session.config.getoption("loadgroup", default=False):
        return
    ungrouped = [item.nodeid for item in session.items if item.get_closest_marker("ray") and not item.nodeid.endswith("@ray")]
    if ungrouped:
        raise pytest.UsageError(
            f"pytest-xdist ignored the `ray` group ({ungrouped[0]}); install the pinned versions "
            "(pip install -c constraints.txt -e '.[test]') or run with -n 0"
        )
