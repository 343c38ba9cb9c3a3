"""One training loop for every stage (PruningNet, fine-tune), resumable after a kill at any step.

All randomness of step s (batch order, augmentation, the PruningNet's configuration) is derived
from (seed, s), and the checkpoint holds model, optimizer, scheduler, step, losses and the global
torch RNG state. So a run resumed from a checkpoint at step s computes exactly the steps an
uninterrupted run computes after s.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from metaprune.data import ImageData, Normalizer, augment, epoch_batches
from metaprune.errors import UserError
from metaprune.io import atomic_torch_save, safe_torch_load
from metaprune.settings import runtime
from nas.stops import stop_point

SCHEDULES = ("cosine", "linear", "constant")


@dataclass
class OptimConfig:
    epochs: int = 10  # passes over the training split (the last partial batch is dropped)
    batch_size: int = 128  # images per SGD step
    lr: float = 0.1  # peak learning rate of SGD with Nesterov momentum
    momentum: float = 0.9  # SGD momentum
    weight_decay: float = 1e-4  # L2 penalty on every parameter
    schedule: str = "cosine"  # cosine | linear (the paper) | constant, stepped per batch
    label_smoothing: float = 0.1  # cross-entropy label smoothing in [0, 1)
    checkpoint_every: int = runtime(100)  # steps between checkpoints (also one at every epoch end)


def lr_factor(schedule: str, step: int, total: int) -> float:
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * step / total))
    if schedule == "linear":
        return 1.0 - step / total
    if schedule == "constant":
        return 1.0
    raise UserError(f"unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")


def step_seed(seed: int, step: int) -> int:
    """A distinct, reproducible seed for everything random in one step."""
    return (seed * 2_654_435_761 + step * 40_503 + 17) % (2**63)


Forward = Callable[[torch.Tensor, int], torch.Tensor]  # (normalised batch, step) -> logits
Loss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (logits, batch, labels) -> loss, e.g. distillation


@dataclass
class TrainResult:
    losses: list[float]
    steps: int
    seconds: float


def train(
    model: nn.Module,
    forward: Forward,
    data: ImageData,
    normalizer: Normalizer,
    cfg: OptimConfig,
    *,
    seed: int,
    checkpoint: Path,
    flip: bool = False,
    device: torch.device | str = "cpu",
    desc: str = "train",
    progress: bool = True,
    meta: dict[str, Any] | None = None,
    until_step: int | None = None,
    loss_fn: Loss | None = None,
    amp: bool = False,
) -> TrainResult:
    """Train `model` with SGD; resume from `checkpoint` if it exists, save there as it goes.

    `meta` (the settings the result depends on) is stored in every checkpoint; the caller checks
    it with `checkpoint_header` before resuming. `until_step` stops early (with a checkpoint) at
    that step of the full run, whose learning-rate schedule is kept: calling again with a later
    `until_step` continues exactly as one uninterrupted call would. `loss_fn` replaces the
    cross-entropy (with `cfg.label_smoothing`), e.g. by a distillation loss. `amp` on a CUDA device
    runs forward and loss under bf16 autocast (mixed precision; bf16 keeps FP32's exponent range,
    so no loss scaling is needed); it is ignored on a CPU, where emulated bf16 is slower.
    """
    steps_per_epoch = len(data) // cfg.batch_size
    if steps_per_epoch == 0:
        raise UserError(f"batch_size {cfg.batch_size} exceeds the {len(data)} training images; lower batch_size")
    total = cfg.epochs * steps_per_epoch
    optimizer, scheduler = _sgd(model, cfg, total)
    state: dict[str, Any] = {"step": 0, "losses": []}
    if checkpoint.exists():
        state = _restore(checkpoint, model, optimizer, scheduler, total)
    step, losses, start = int(state["step"]), list(state["losses"]), int(state["step"])
    stop = total if until_step is None else min(until_step, total)
    batches = _Batches(data, normalizer, cfg.batch_size, seed, flip, device)
    began = time.perf_counter()
    bar = tqdm(total=total, initial=step, desc=desc, disable=not progress, unit="step", dynamic_ncols=True)
    model.train()
    # bf16 autocast only where the GPU computes in bf16 (Ampere and later); elsewhere FP32, not an error
    autocast = amp and torch.device(device).type == "cuda" and torch.cuda.is_bf16_supported()
    while step < stop:
        x, y = batches.at(step)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            logits = forward(x, step)
            loss = loss_fn(logits, x, y) if loss_fn else F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(float(loss.item()))
        step += 1
        stop_point("step")  # a kill here loses the steps since the last checkpoint
        bar.update(1)
        bar.set_postfix(loss=f"{losses[-1]:.3f}", img_s=f"{(step - start) * cfg.batch_size / (time.perf_counter() - began):.0f}")
        if step % cfg.checkpoint_every == 0 or step % steps_per_epoch == 0 or step == stop:
            _save(checkpoint, model, optimizer, scheduler, step, total, losses, meta or {})
            stop_point("checkpoint")
    if total == 0 and not checkpoint.exists():  # nothing to train (a warm start kept as it is): finished at once
        _save(checkpoint, model, optimizer, scheduler, step, total, losses, meta or {})
    bar.close()
    return TrainResult(losses, step, time.perf_counter() - began)


def _sgd(model: nn.Module, cfg: OptimConfig, total: int) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """SGD with Nesterov momentum and the schedule stepped per batch (an unknown schedule is refused first)."""
    lr_factor(cfg.schedule, 0, max(total, 1))
    optimizer = torch.optim.SGD(
        model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=cfg.momentum > 0
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(cfg.schedule, min(s, total), max(total, 1)))
    return optimizer, scheduler


class _Batches:
    """The batch of any step, a function of (seed, step) alone: a resumed run sees the same batches."""

    def __init__(
        self, data: ImageData, normalizer: Normalizer, size: int, seed: int, flip: bool, device: torch.device | str
    ) -> None:
        self.data, self.normalizer, self.size, self.seed, self.flip, self.device = data, normalizer, size, seed, flip, device
        self.per_epoch = len(data) // size
        self.epoch = -1
        self.order: list[torch.Tensor] = []

    def at(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, index = divmod(step, self.per_epoch)
        if epoch != self.epoch:
            self.order, self.epoch = epoch_batches(len(self.data), self.size, self.seed, epoch), epoch
        generator = torch.Generator().manual_seed(step_seed(self.seed, step))
        images = augment(self.data.images[self.order[index]], generator, self.flip)
        return self.normalizer(images).to(self.device), self.data.labels[self.order[index]].to(self.device)


def _save(
    path: Path, model: nn.Module, optimizer: Any, scheduler: Any, step: int, total: int, losses: list[float], meta: dict[str, Any]
) -> None:
    atomic_torch_save(
        path,
        {
            "meta": meta,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "step": step,
            "total_steps": total,
            "losses": losses,
            "torch_rng": torch.get_rng_state(),
        },
    )


def _restore(path: Path, model: nn.Module, optimizer: Any, scheduler: Any, total: int) -> dict[str, Any]:
    state = safe_torch_load(path)
    if not isinstance(state, dict) or not {"model", "optimizer", "scheduler", "step", "losses"} <= set(state):
        raise UserError(f"checkpoint {path} is not a training checkpoint of this stage; delete it to start over")
    if state.get("total_steps") != total:
        raise UserError(
            f"checkpoint {path} was made for {state.get('total_steps')} steps but this run has {total}; "
            "use the original settings or a new --run-dir"
        )
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise UserError(f"checkpoint {path} does not fit this model ({str(exc).splitlines()[0]}); use a new --run-dir") from exc
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    return state


def checkpoint_header(path: Path) -> dict[str, Any]:
    """{step, total_steps, meta} of a checkpoint, read without loading its tensors (memory-mapped)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        state = safe_torch_load(path)  # raises the UserError for a corrupt file
    if not isinstance(state, dict) or not {"model", "step", "total_steps"} <= set(state):
        raise UserError(f"checkpoint {path} is not a metaprune training checkpoint; delete it to redo that stage")
    return {"step": state["step"], "total_steps": state["total_steps"], "meta": state.get("meta", {})}


def load_trained_weights(path: Path) -> dict[str, torch.Tensor]:
    """The model weights of a finished training checkpoint."""
    state = safe_torch_load(path)
    if not isinstance(state, dict) or "model" not in state:
        raise UserError(f"checkpoint {path} holds no model weights; delete it to redo that stage")
    if state.get("step") != state.get("total_steps"):
        raise UserError(f"training in {path} stopped at step {state.get('step')} of {state.get('total_steps')}; rerun that stage")
    weights: dict[str, torch.Tensor] = state["model"]
    return weights
