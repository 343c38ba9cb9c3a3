"""Scoring a candidate: generate its weights, extract the subnet, re-estimate BN, measure top-1.

BN re-estimation resets every BatchNorm and sets momentum to None, so the running statistics
become the exact cumulative average over the calibration batches (fixed, not augmented). Without
it the PruningNet's stored statistics (a mix of many random paths) make every score near chance.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from metaprune.accuracy import top1_percent
from metaprune.data import ImageData, Normalizer
from metaprune.graph_pruningnet import GraphPruningNet
from metaprune.pruningnet import PruningNetConfig
from metaprune.settings import runtime
from search_spaces import Config, space_from_payload

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass
class ScoreConfig:
    calib_images: int = 1000  # training images for BN re-estimation (fixed, no augmentation)
    calib_batch_size: int = 100  # images per re-estimation batch
    # 3072 (with ~1,000 BN images): the cheapest budget at which the proxy's rank agreement with
    # fine-tuned accuracy stopped improving (CIFAR-10 ResNet-20, Kendall tau 0.20 / 0.47 / 0.78 / 0.78
    # at 256 / 1k / 4k / 6k images: benchmarks/bench_cifar.py)
    val_images: int = 3072  # validation images a candidate is scored on (0, or more than the split: the whole split)
    eval_batch_size: int = runtime(500)  # images per validation batch


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: list[torch.Tensor]) -> None:
    """Reset BN statistics and replace them with the exact average over `batches`."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average instead of an exponential one
    model.train()
    for x in batches:
        model(x)
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum
    model.eval()


@torch.no_grad()
def top1(model: nn.Module, batches: list[Batch]) -> float:
    """Top-1 accuracy in percent; leaves `model` in eval mode."""
    model.eval()
    return top1_percent(batches, model)


def fixed_batches(data: ImageData, normalizer: Normalizer, batch_size: int, device: torch.device | str) -> list[Batch]:
    """Normalised batches in a fixed order, prepared once and kept in memory."""
    return [
        (normalizer(data.images[i : i + batch_size]).to(device), data.labels[i : i + batch_size].to(device))
        for i in range(0, len(data), batch_size)
    ]


def calibration_images(data: ImageData, count: int, seed: int) -> ImageData:
    """A fixed random subset of the training split for BN re-estimation."""
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    return data.subset(order[: min(count, len(data))])


class Scorer:
    """Scores configurations of one trained PruningNet on fixed calibration and validation data."""

    def __init__(self, pruningnet: GraphPruningNet, calibration: list[torch.Tensor], validation: list[Batch]) -> None:
        self.pruningnet = pruningnet.eval()
        self.calibration = calibration
        self.validation = validation

    def subnet(self, config: Config) -> nn.Module:
        """The candidate with generated weights and re-estimated BN statistics."""
        subnet = self.pruningnet.extract(config)
        recalibrate_bn(subnet, self.calibration)
        return subnet

    def __call__(self, config: Config) -> float:
        return top1(self.subnet(config), self.validation)


@dataclass
class ScorerSpec:
    """Everything needed to rebuild a `Scorer` in another process or on another node.

    Plain data only (a space description, tensors, numbers), so it pickles into Ray's object store
    and the worker needs no access to the run directory or the dataset files. Images stay uint8
    (a quarter of the float size) and are normalised where they are scored.
    """

    space: dict[str, Any]  # search_spaces.space_payload(space)
    pruningnet: PruningNetConfig
    weights: dict[str, torch.Tensor]  # the trained PruningNet's state dict (on the CPU)
    calibration: torch.Tensor  # uint8 N x C x H x W, already cut to whole calibration batches
    validation_images: torch.Tensor  # uint8
    validation_labels: torch.Tensor  # int64
    normalizer: Normalizer
    score: ScoreConfig

    def build(self, device: str) -> Scorer:
        """`nas.executors.ScorerFactory`: what each executor worker builds once."""
        return build_scorer(self, device)


def build_scorer(spec: ScorerSpec, device: torch.device | str = "cpu") -> Scorer:
    """The scorer a spec describes, on `device`: the same scores wherever it is built."""
    net = GraphPruningNet(space_from_payload(spec.space), spec.pruningnet)
    net.load_state_dict(spec.weights)
    net.to(device)
    size = spec.score.calib_batch_size
    calibration = [spec.normalizer(spec.calibration[i : i + size]).to(device) for i in range(0, len(spec.calibration), size)]
    validation = fixed_batches(
        ImageData(spec.validation_images, spec.validation_labels, []), spec.normalizer, spec.score.eval_batch_size, device
    )
    return Scorer(net, calibration, validation)
