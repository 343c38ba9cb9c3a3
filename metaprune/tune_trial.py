"""One fine-tuning trial, as it runs in a Ray worker: what it starts from, and its trial function.

A trial trains its candidate one epoch at a time with `metaprune.train.train` (the same
deterministic, resumable loop as every other stage), measures validation top-1 and reports it to
Tune with a checkpoint: the metrics ASHA compares and the weights a restored trial resumes from.
`metaprune.tune` drives the experiment these trials make up.

This module imports Ray: import it where the stage runs, not at package import time.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune

from metaprune.data import ImageData, Normalizer
from metaprune.distill import DistillConfig, DistillLoss, from_program
from metaprune.io import atomic_write_json
from metaprune.score import fixed_batches, top1
from metaprune.train import OptimConfig, train
from nas.stops import stop_point
from search_spaces import Config, GeneSpace, fresh_subnet, space_from_payload

METRIC = "val_top1"  # validation top-1 (%) after the reported epoch
TIME_ATTR = "epoch"  # epochs trained so far: ASHA's clock
HISTORY = "val_top1_history"  # val top-1 after every epoch so far (replayed into ASHA on restore)
WEIGHTS_FILE = "train.pt"  # the training checkpoint inside each Tune checkpoint directory


@dataclass
class TrialStart:
    """What one fine-tuning trial starts from (not a scored search candidate: that is `nas.study.Candidate`)."""

    name: str  # unique, filesystem-safe: names the Tune trial and its directory
    config: Config  # one choice index per gene of the space
    initial: dict[str, torch.Tensor] | None = None  # starting weights (inherit); None: fresh seeded init (scratch)


@dataclass
class TuneSpec:
    """Everything a trial needs, as plain data: it travels through Ray's object store once."""

    space: dict[str, Any]  # search_spaces.space_payload(space)
    train: ImageData  # uint8 training split (augmented as in every other stage)
    validation: ImageData  # uint8 split scored after every epoch: ASHA's metric
    normalizer: Normalizer
    optim: OptimConfig  # epochs = ASHA's max_t; the schedule spans all of them
    flip: bool = False  # horizontal flips in augmentation
    seed: int = 0  # batch order, augmentation and scratch init: a trial is reproducible
    device: str = "auto"  # auto: one GPU per trial where the cluster has GPUs | cpu
    eval_batch_size: int = 500  # images per validation batch
    teachers: list[bytes] = field(default_factory=list)  # distillation: torch.export programs (metaprune.distill.to_program)
    teacher_weights: list[float] | None = None  # of the teachers' soft targets (None: equal)
    distill: DistillConfig | None = None  # alpha and temperature of distillation (None: plain cross-entropy)
    amp: bool = False  # bf16 mixed precision when a trial trains on a GPU


def trial_device(run_device: str) -> str:
    """`TuneSpec.device` for a run whose device setting is `run_device` (auto | cpu | cuda).

    Trials run on the cluster's nodes, not on the driver: a driver without a GPU says nothing about
    them, so only a run pinned to the CPU keeps its trials there; otherwise trials ask for a GPU
    wherever the cluster has one.
    """
    return "cpu" if run_device == "cpu" else "auto"


def _distill_loss(spec: TuneSpec, device: str) -> DistillLoss | None:
    if spec.distill is None or not spec.teachers:
        return None
    models = [from_program(data, device) for data in spec.teachers]  # .to() misses devices traced into a program
    return DistillLoss(models, spec.distill, spec.teacher_weights, spec.optim.label_smoothing)


def run_trial(
    config: dict[str, Any], spec: TuneSpec, candidates: dict[str, TrialStart], initial: dict[str, Any], threads: int
) -> None:
    """Train one candidate epoch by epoch, reporting val top-1 with a checkpoint after each.

    `candidates` come without their weights: `initial` maps each name to an object-store reference
    to them (or None), so that a trial fetches only its own, and only when it has no checkpoint to resume.
    """
    torch.set_num_threads(threads)
    candidate = candidates[config["candidate"]]
    stop_point("trial", at=list(candidates).index(candidate.name) + 1)  # a test holds one candidate here
    device = "cuda" if spec.device != "cpu" and torch.cuda.is_available() else "cpu"
    validation = fixed_batches(spec.validation, spec.normalizer, spec.eval_batch_size, device)
    steps_per_epoch = len(spec.train) // spec.optim.batch_size
    with tempfile.TemporaryDirectory(prefix="metaprune-tune-") as work:
        history = _resume_into(Path(work))  # the weights then come from the checkpoint
        weights = None if history or initial[candidate.name] is None else ray.get(initial[candidate.name])
        model = _initial_model(space_from_payload(spec.space), candidate.config, weights, spec.seed).to(device)
        loss_fn = _distill_loss(spec, device)
        for epoch in range(len(history) + 1, spec.optim.epochs + 1):
            train(
                model, lambda x, step: model(x), spec.train, spec.normalizer, spec.optim, seed=spec.seed,
                checkpoint=Path(work) / WEIGHTS_FILE, flip=spec.flip, device=device, progress=False,
                meta={"candidate": candidate.name, "config": list(candidate.config)}, until_step=epoch * steps_per_epoch,
                loss_fn=loss_fn, amp=spec.amp,
            )  # fmt: skip
            history.append(top1(model, validation))
            atomic_write_json(Path(work) / "history.json", history)
            metrics = {TIME_ATTR: epoch, METRIC: history[-1], HISTORY: list(history)}
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(work))


def _initial_model(space: GeneSpace, config: Config, weights: dict[str, torch.Tensor] | None, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)  # scratch init as the pipeline's winner_model does it
    model = fresh_subnet(space, config)
    if weights is not None:
        model.load_state_dict(weights)
    return model


def _resume_into(work: Path) -> list[float]:
    """Copy the trial's last Tune checkpoint (if restored) into `work`; the val top-1 history so far."""
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return []
    with checkpoint.as_directory() as saved:
        for name in (WEIGHTS_FILE, "history.json"):
            shutil.copyfile(Path(saved) / name, work / name)
    history: list[float] = json.loads((work / "history.json").read_text())
    return history
