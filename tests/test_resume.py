"""kill -9 mid-run, run the same command again: the result equals an uninterrupted run.

Each run kills itself at a moment the test names (`METAPRUNE_STOP`, `nas.stops`): between two
checkpoints of a training, or right after a recorded search result; never a kill timed by a clock."""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import pytest
import torch

from tests.conftest import cli, scored_configs, study_trials

LONGER = ["pruningnet.epochs=6", "pruningnet.checkpoint_every=3"]


def killed_at(point: str) -> dict[str, str]:
    return {**os.environ, "METAPRUNE_STOP": f"{point}:kill"}


def losses(run_dir: Path) -> list[float]:
    return torch.load(run_dir / "pruningnet.pt", weights_only=True)["losses"]


def test_killed_pruningnet_training_resumes_with_identical_losses(tmp_path: Path) -> None:
    reference = tmp_path / "reference"
    assert cli("train-pruningnet", run_dir=reference, sets=LONGER, inprocess=True).returncode == 0
    killed = tmp_path / "killed"
    # after step 5: checkpoints come every 3 steps and at each epoch's end, so the kill loses at least one step
    assert cli("train-pruningnet", run_dir=killed, sets=LONGER, env=killed_at("step@5")).returncode == -signal.SIGKILL
    step_at_kill = torch.load(killed / "pruningnet.pt", weights_only=True)["step"]
    expected = losses(reference)
    assert 0 < step_at_kill < 5 and len(expected) > 6
    result = cli("train-pruningnet", run_dir=killed, sets=LONGER)
    assert result.returncode == 0, result.stderr
    assert losses(killed) == expected  # bit-for-bit: same batches, augmentations, configs, RNG
    assert torch.equal(
        torch.load(killed / "pruningnet.pt", weights_only=True)["model"]["net.classifier.bias"],
        torch.load(reference / "pruningnet.pt", weights_only=True)["model"]["net.classifier.bias"],
    )


@pytest.mark.parametrize("searcher", ["evolution", "tpe"])
def test_killed_search_rescores_nothing_and_finds_the_same_winner(trained_run: Path, tmp_path: Path, searcher: str) -> None:
    sets = ["search.generations=6", f"search.searcher={searcher}", "search.batch=8"]
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    shutil.copytree(trained_run, reference)
    shutil.copytree(trained_run, killed)
    assert cli("search", run_dir=reference, sets=sets, inprocess=True).returncode == 0
    assert cli("search", run_dir=killed, sets=sets, env=killed_at("recorded@12")).returncode == -signal.SIGKILL
    scored_before = len(scored_configs(killed))
    assert scored_before == 12
    result = cli("search", "--resume", run_dir=killed, sets=sets)
    assert result.returncode == 0, result.stderr

    configs = scored_configs(killed)
    assert len(configs) == len(set(configs)), "a candidate was scored twice"
    trials = study_trials(killed)
    assert [t.number for t in trials] == list(range(len(trials))) and all(t.state.name == "COMPLETE" for t in trials)
    summary = json.loads((killed / "summary.json").read_text())["search"]
    reference_summary = json.loads((reference / "summary.json").read_text())["search"]
    assert summary["scored_this_run"] == len(configs) - scored_before
    assert summary["best"] == reference_summary["best"] and summary["pareto"] == reference_summary["pareto"]
    assert [t.params for t in trials] == [t.params for t in study_trials(reference)]
    assert [t.values for t in trials] == [t.values for t in study_trials(reference)]
