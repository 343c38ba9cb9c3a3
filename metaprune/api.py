"""`metaprune.prune`: the whole pipeline in one call, for notebooks and training scripts.

    pruned = metaprune.prune(model, (train_images, train_labels), (test_images, test_labels), flops=0.5)
    pruned.model      # the fine-tuned pruned network (a plain nn.Module, same input as `model`)
    pruned.summary    # what summary.json says: FLOPs, params, top-1 of every stage

It is the command line's pipeline (`run_search.py --model ...`) on data held in memory: the model is
traced (`search_spaces.from_module`), its weights are the trained network every stage starts from,
and the run directory makes the call resumable: call it again with the same arguments after a crash
and finished stages are not redone.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import torch
from torch import nn

from metaprune.config import load_config
from metaprune.data import ImageData, Splits
from metaprune.errors import UserError
from metaprune.io import atomic_torch_save

Data = Union[tuple[torch.Tensor, torch.Tensor], Iterable[Any]]  # (images, labels), or batches of them (a DataLoader)


@dataclass
class Pruned:
    model: nn.Module  # the chosen subnet (fine-tuned where the pipeline fine-tuned it), on the CPU, in eval mode
    summary: dict[str, Any]
    run_dir: Path


def prune(
    model: nn.Module,
    train: Data,
    test: Data,
    flops: float = 0.5,
    run_dir: str | Path = "metaprune-run",
    mean: list[float] | None = None,
    std: list[float] | None = None,
    classes: list[str] | None = None,
    settings: dict[str, Any] | None = None,
) -> Pruned:
    """Prune `model` (trained; its weights are kept, importance-ordered and inherited) to `flops` of
    its FLOPs (a fraction <= 1, or absolute), searching on `train` (a validation part is held out of
    it) and reporting top-1 on `test`.

    Images are raw pixels, uint8 0..255 or float 0..1, N x C x H x W (square); `mean` and `std` are
    the per-channel normalisation `model` expects of pixels / 255 (fitted on `train` when not given).
    `settings`: any other setting as on the command line, e.g. {"finetune.epochs": 5}.
    """
    from metaprune.pipeline import Run

    train_data = _image_data(train, "train", classes)
    test_data = _image_data(test, "test", train_data.classes)
    if train_data.images.shape[1:] != test_data.images.shape[1:]:
        shapes = tuple(train_data.images.shape[1:]), tuple(test_data.images.shape[1:])
        raise UserError(f"train images are {shapes[0]} but test images {shapes[1]}; give both the same shape")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    weights = run_dir / "model.weights.pt"  # the trained network the stages start from, as base.weights
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if not weights.exists() or not _same(torch.load(weights, map_location="cpu", weights_only=True), state):
        atomic_torch_save(weights, state)
    overrides = ["data.kind=tensors", f"base.weights={weights}", f"search.max_flops={flops}"]
    if mean is not None and std is not None:
        overrides += [f"data.mean={list(mean)}", f"data.std={list(std)}"]
    overrides += [f"{key}={value}" for key, value in (settings or {}).items()]
    cfg = load_config(None, overrides)
    run = Run(cfg, run_dir, model=model, splits=Splits(train_data, test_data))
    try:
        summary = run.pipeline()
        chosen = run.chosen_model()
    finally:
        run.close()
    return Pruned(chosen.model.cpu().eval(), summary, run_dir)


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _image_data(data: Data, name: str, classes: list[str] | None) -> ImageData:
    """Tensors or batches as the pipeline holds them: uint8 images, int64 labels."""
    if isinstance(data, tuple) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        images, labels = data
    else:
        try:
            batches = [(x, y) for x, y in data]
        except (TypeError, ValueError):
            raise UserError(f"{name} must be (images, labels) tensors or a DataLoader of (images, labels) batches") from None
        if not batches:
            raise UserError(f"{name} holds no batches")
        images, labels = torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])
    if images.dim() != 4 or images.shape[2] != images.shape[3] or len(images) != len(labels):
        raise UserError(f"{name} images must be N x C x H x W with H == W and one label each; got {tuple(images.shape)}")
    if images.is_floating_point():
        if images.min() < 0 or images.max() > 1:
            raise UserError(f"{name} images are floats outside 0..1; pass raw pixels (uint8 0..255 or float 0..1) and mean/std")
        images = (images * 255).round()
    labels = labels.long()
    count = int(labels.max()) + 1 if classes is None else len(classes)
    return ImageData(images.to(torch.uint8), labels, classes or [str(c) for c in range(count)])
