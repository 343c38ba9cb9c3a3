"""On real data (../shared/data/cifar10, skipped when absent): a briefly trained PruningNet already
ranks widths sensibly, scoring far above chance, so the search has a signal to follow."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import search_spaces as ss
from metaprune.config import load_config
from metaprune.pipeline import Run
from tests.conftest import CIFAR, ROOT

pytestmark = pytest.mark.skipif(not CIFAR.is_dir(), reason="../shared/data/cifar10 is absent")


def test_short_pruningnet_training_gives_informative_scores(tmp_path: Path) -> None:
    sets = [
        f"data.path={CIFAR}",
        "data.train_subset=6000",
        "data.val_size=1000",
        "space.width_mult=0.5",
        "base.weights=''",  # the config's trained network is full width: this checks a PruningNet from scratch
        "pruningnet.epochs=6",
        "progress=false",
        "threads=2",
        "score.calib_images=500",
    ]
    run = Run(load_config(ROOT / "configs" / "cifar10_resnet20.yaml", sets), tmp_path / "run")
    run.train_pruningnet()
    scorer = run.scorer()
    rng = np.random.default_rng(0)
    full, small = scorer(run.space.largest), scorer(run.space.smallest)
    middle = [scorer(ss.sample(run.space, rng)) for _ in range(3)]
    assert full > 20.0, f"full-width proxy top-1 {full:.1f}% is near chance (10%)"
    assert full > small, (full, small)
    assert min(middle) > 15.0, middle
