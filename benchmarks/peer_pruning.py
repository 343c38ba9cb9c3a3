"""Torch-Pruning (pip package `torch-pruning`, written against 1.6.1) as a peer baseline for the benchmarks.

`group_l1_prune` is the library's plain recipe: group-L1 importance (`GroupMagnitudeImportance(p=1)`),
the same channel pruning ratio for every group of coupled layers (local, not global, ranking), the
classifier's outputs kept. The ratio is found by bisection so that the pruned network lands in a FLOPs
window, with FLOPs counted the way the repository counts them (thop's MACs for one image, which
`search_spaces.count(...).flops` equals), so the numbers compare with the searched subnets'.

Torch-Pruning is only needed here: `available()` says whether it imports, and why not.
"""

from __future__ import annotations

import copy
from types import ModuleType

import thop
import torch
from torch import nn

INSTALL_HINT = "pip install torch-pruning==1.6.1"


def available() -> str | None:
    """None when torch_pruning imports, else a one-line reason (e.g. 'torch-pruning is not installed; pip install ...')."""
    try:
        _torch_pruning()
    except ModuleNotFoundError as error:
        if error.name == "torch_pruning":
            return f"torch-pruning is not installed; {INSTALL_HINT}"
        return f"torch-pruning does not import (no module {error.name!r}); {INSTALL_HINT}"
    except Exception as error:  # a broken or incompatible install: say what failed, on one line
        reason = " ".join(str(error).split())
        return f"torch-pruning does not import ({type(error).__name__}: {reason}); {INSTALL_HINT}"
    return None


def flops_of(model: nn.Module, example: torch.Tensor) -> int:
    """thop's count (thop.profile MACs, as an int) for one image: `example[:1]`, i.e. what `search_spaces.count` gives.

    A deep copy is profiled: thop leaves `total_ops` / `total_params` buffers on modules it has no rule
    for (containers, custom blocks), so profiling `model` itself would change its state dict.
    """
    macs, _ = thop.profile(copy.deepcopy(model), (example[:1],), verbose=False)
    return int(macs)


def group_l1_prune(
    model: nn.Module, example: torch.Tensor, target_flops: float, tolerance: float = 0.02
) -> tuple[nn.Module, float]:
    """Torch-Pruning's group-L1 structured pruning of a deep copy of `model` (left untouched), into a FLOPs window.

    Importance is `GroupMagnitudeImportance(p=1, group_reduction="mean", normalizer=None)`: a channel's
    score is the mean L1 norm of its slices over the whole coupled group (the convolutions producing it,
    their BatchNorms, the convolutions and Linear reading it). Every group keeps `int(channels * (1 - ratio))`
    of its highest-scoring channels (`global_pruning=False`); the last `nn.Linear` (the classifier) keeps
    its outputs. The ratio is found by bisection: the smallest ratio whose pruned model's FLOPs (`flops_of`)
    are at most `target_flops`, i.e. the most FLOPs under the target, which must be at least
    `(1 - tolerance) * target_flops`.

    Returns (pruned model in eval mode, the ratio). Raises ValueError when no ratio reaches the window:
    channel counts are integers, so FLOPs move in steps, and a narrow window can fall between two steps;
    the message gives the nearest FLOPs on either side.
    """
    if target_flops <= 0:
        raise ValueError(f"target_flops must be positive, got {target_flops}")
    if not 0.0 <= tolerance < 1.0:
        raise ValueError(f"tolerance must be in [0, 1), got {tolerance}")
    floor = (1.0 - tolerance) * target_flops
    window = f"[{floor:,.0f}, {target_flops:,.0f}]"

    widths = _prunable_widths(model)
    # Torch-Pruning skips a group that would lose every channel, so stop where the narrowest layer keeps one.
    lo, hi = 0.0, max(0.0, 1.0 - 1.5 / min(widths))
    best = _prune(model, example, lo)
    lo_flops = flops_of(best, example)
    if lo_flops <= target_flops:
        if lo_flops < floor:
            raise ValueError(f"the unpruned model's {lo_flops:,} FLOPs are already below the window {window}")
        return best, lo
    best = _prune(model, example, hi)
    hi_flops = flops_of(best, example)
    if hi_flops > target_flops:
        raise ValueError(f"even ratio {hi:.4f} leaves {hi_flops:,} FLOPs, above the window {window}")

    # Invariant: flops(lo) > target >= flops(hi). Channel counts change only at ratios 1 - k / width, which
    # are at least 1 / max(widths)**2 apart, so an interval that short holds a single step: `hi` then gives
    # the largest reachable FLOPs not above the target.
    resolution = 1.0 / max(widths) ** 2
    while hi - lo > resolution:
        mid = (lo + hi) / 2
        candidate = _prune(model, example, mid)
        flops = flops_of(candidate, example)
        if flops > target_flops:
            lo, lo_flops = mid, flops
        else:
            hi, hi_flops, best = mid, flops, candidate
    if hi_flops < floor:
        raise ValueError(
            f"no uniform pruning ratio gives FLOPs in {window}: the nearest are {lo_flops:,} (ratio {lo:.4f}) "
            f"and {hi_flops:,} (ratio {hi:.4f}); widen the tolerance"
        )
    return best, hi


def _torch_pruning() -> ModuleType:
    import torch_pruning

    return torch_pruning


def _classifier(model: nn.Module) -> nn.Linear:
    linears = [module for module in model.modules() if isinstance(module, nn.Linear)]
    if not linears:
        raise ValueError("the model has no nn.Linear classifier")
    return linears[-1]


def _prunable_widths(model: nn.Module) -> list[int]:
    """Output channels of every layer that heads a pruning group: convolutions and Linears but the classifier."""
    classifier = _classifier(model)
    widths = [module.out_channels for module in model.modules() if isinstance(module, nn.Conv2d)]
    widths += [module.out_features for module in model.modules() if isinstance(module, nn.Linear) and module is not classifier]
    if not widths:
        raise ValueError("the model has no convolution or hidden Linear layer to prune")
    return widths


def _prune(model: nn.Module, example: torch.Tensor, ratio: float) -> nn.Module:
    """A deep copy of `model` with Torch-Pruning's group-L1 pruning at `ratio` applied, in eval mode."""
    tp = _torch_pruning()
    pruned = copy.deepcopy(model).eval()
    pruned.requires_grad_(True)  # Torch-Pruning traces the graph through autograd
    with torch.enable_grad():
        pruner = tp.pruner.BasePruner(
            pruned,
            example[:1],
            importance=tp.importance.GroupMagnitudeImportance(p=1, group_reduction="mean", normalizer=None),
            global_pruning=False,
            pruning_ratio=ratio,
            ignored_layers=[_classifier(pruned)],
        )
        pruner.step()
    return pruned.eval()
