"""On real data (../shared/data/cifar10, skipped when absent): a PruningNet warm-started from the
user's trained ResNet-20 (../shared/models) scores its widths as the trained network does before any
training, and a briefly trained cold one already scores far above chance, so the search has a
signal to follow."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import search_spaces as ss
from metaprune.config import load_config
from metaprune.pipeline import Run
from tests.conftest import CIFAR, ROOT

TRAINED = ROOT.parent / "shared" / "models" / "resnet20_cifar10.metaprune.pt"

pytestmark = [
    pytest.mark.skipif(not CIFAR.is_dir(), reason="../shared/data/cifar10 is absent"),
    pytest.mark.timeout(1800),  # real CIFAR-10: the two tests took about 20 minutes on a loaded 2-core machine
]


def test_short_pruningnet_training_gives_informative_scores(tmp_path: Path) -> None:
    sets = [
        f"data.path={CIFAR}",
        "data.train_subset=6000",
        "data.val_size=1000",
        "space.width_mult=0.5",
        "base.weights=''",  # the config's trained network is full width: this checks a PruningNet from scratch
        "pruningnet.epochs=4",
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


@pytest.mark.skipif(not TRAINED.is_file(), reason="../shared/models/resnet20_cifar10.metaprune.pt is absent")
def test_a_warm_pruningnet_scores_the_trained_network_before_training(tmp_path: Path) -> None:
    sets = [f"data.path={CIFAR}", f"base.weights={TRAINED}", "pruningnet.init=trained", "pruningnet.epochs=0", "threads=2"]
    sets += ["progress=false", "score.calib_images=500", "score.val_images=1000"]
    run = Run(load_config(ROOT / "configs" / "cifar10_resnet20.yaml", sets), tmp_path / "run")
    run.train_pruningnet()  # 0 epochs: the warm start as it is (EagleEye's L1-inherited weights)
    scorer = run.scorer()
    rng = np.random.default_rng(0)
    full, small = scorer(run.space.largest), scorer(run.space.smallest)
    middle = [scorer(ss.sample(run.space, rng)) for _ in range(3)]
    print("proxy top-1: full", full, "smallest", small, "random", middle)
    # the shared model saw these validation images in training (its test top-1 is 87.47%)
    assert full > 85.0, f"the full configuration should score as the trained network, got {full:.1f}%"
    assert all(full > m > small + 10.0 for m in middle), (full, small, middle)  # measured 94.0 > 26.6..52.2 > 10.2
