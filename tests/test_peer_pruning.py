"""benchmarks/peer_pruning.py: Torch-Pruning's group-L1 pruning of a ResNet-20 into a FLOPs window."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import search_spaces as ss

pytest.importorskip("torch_pruning")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import peer_pruning  # noqa: E402

# Uniform ratios move a full-width ResNet-20's FLOPs in steps of up to ~4% of the full network, so the
# windows here are wider than the benchmark's 2% (reachable: 48.6% for the 50% target, 22.1% for 25%).
TARGETS = [(0.5, 0.05), (0.25, 0.15)]


@pytest.fixture(scope="module")
def network() -> tuple[nn.Module, int]:
    """A full-width CIFAR ResNet-20 with random weights and random BatchNorm scales, and its FLOPs."""
    torch.manual_seed(0)
    space = ss.create_space("resnet20", 10, 3, 32, 1.0)
    model = ss.build_subnet(space, space.largest)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            nn.init.uniform_(module.weight, 0.2, 1.5)
    return model.eval(), ss.count(space, space.largest).flops


@pytest.fixture(scope="module", params=TARGETS, ids=["50%", "25%"])
def pruned(request: pytest.FixtureRequest, network: tuple[nn.Module, int]) -> dict[str, Any]:
    model, full = network
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fraction, tolerance = request.param
    result, ratio = peer_pruning.group_l1_prune(model, torch.zeros(1, 3, 32, 32), fraction * full, tolerance)
    return {"model": result, "ratio": ratio, "target": fraction * full, "tolerance": tolerance, "before": before}


def test_flops_equal_the_analytic_count(network: tuple[nn.Module, int]) -> None:
    model, full = network
    keys = list(model.state_dict())
    assert peer_pruning.flops_of(model, torch.zeros(4, 3, 32, 32)) == full
    assert list(model.state_dict()) == keys  # thop's total_ops / total_params buffers stay off the model


def test_lands_in_the_window_and_runs(pruned: dict[str, Any]) -> None:
    model, target = pruned["model"], pruned["target"]
    assert (1 - pruned["tolerance"]) * target <= peer_pruning.flops_of(model, torch.zeros(1, 3, 32, 32)) <= target
    assert not model.training
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_every_layer_keeps_the_same_share(pruned: dict[str, Any], network: tuple[nn.Module, int]) -> None:
    original, _ = network
    convs = zip(
        (m for m in original.modules() if isinstance(m, nn.Conv2d)),
        (m for m in pruned["model"].modules() if isinstance(m, nn.Conv2d)),
    )
    for before, after in convs:
        assert after.out_channels == int(before.out_channels * (1 - pruned["ratio"]))
    assert pruned["model"].classifier.out_features == 10


def test_input_model_is_unchanged(pruned: dict[str, Any], network: tuple[nn.Module, int]) -> None:
    after = network[0].state_dict()
    assert list(after) == list(pruned["before"])
    assert all(torch.equal(after[k], v) for k, v in pruned["before"].items())


def test_keeps_the_highest_group_l1_channels(pruned: dict[str, Any], network: tuple[nn.Module, int]) -> None:
    """A block's first convolution forms a group with its BatchNorm and the next convolution's inputs."""
    weight = network[0].get_parameter
    first, bn, second = (weight(f"layers.s1b0.body.{name}.weight") for name in ("0.conv", "0.bn", "1.conv"))
    score = (first.abs().flatten(1).sum(1) + bn.abs() + second.abs().transpose(0, 1).flatten(1).sum(1)) / 3
    # The convolution also loses input channels (the stage's residual group), so identify the survivors by
    # their BatchNorm scales, which are distinct random numbers.
    kept_scales = pruned["model"].get_parameter("layers.s1b0.body.0.bn.weight").tolist()
    kept = [bn.tolist().index(scale) for scale in kept_scales]
    assert sorted(kept) == sorted(score.topk(len(kept)).indices.tolist())
    assert len(kept) < len(first)


def test_unreachable_window_raises(network: tuple[nn.Module, int]) -> None:
    model, full = network
    with pytest.raises(ValueError, match="widen the tolerance"):
        peer_pruning.group_l1_prune(model, torch.zeros(1, 3, 32, 32), 0.25 * full, 0.02)
