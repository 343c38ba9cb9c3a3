"""One fine-tuning experiment per directory: what it was started with, and whether Tune can resume it.

Calling `metaprune.tune.tune_finetune` again in the same directory resumes the experiment there;
the fingerprint written at its start makes a second call with other candidates, data or settings
a UserError instead of a silent mix of two experiments.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from ray import tune

from metaprune.errors import UserError
from metaprune.io import atomic_write_json
from metaprune.tune_trial import TrialStart, TuneSpec

GUARD_FILE = "metaprune_tune.json"  # what the experiment in a storage directory was started with


def fingerprint(candidates: list[TrialStart], spec: TuneSpec, grace_epochs: int, reduction_factor: int) -> dict[str, Any]:
    """What the outcomes depend on: the candidates, their initial weights, data and settings."""
    return {
        "candidates": [
            {"name": c.name, "config": list(c.config), "initial": None if c.initial is None else _digest(c.initial)}
            for c in candidates
        ],
        "space": _digest(spec.space),
        "data": _digest(
            {"train": [spec.train.images, spec.train.labels], "val": [spec.validation.images, spec.validation.labels]}
        ),
        "normalizer": asdict(spec.normalizer),
        "optim": asdict(spec.optim),
        "flip": spec.flip,
        "seed": spec.seed,
        "teachers": [hashlib.sha1(data).hexdigest() for data in spec.teachers],
        "teacher_weights": spec.teacher_weights,
        "distill": None if spec.distill is None else asdict(spec.distill),
        "amp": spec.amp,
        "grace_epochs": grace_epochs,
        "reduction_factor": reduction_factor,
    }


def _digest(value: Any) -> str:
    sha = hashlib.sha1()

    def feed(item: Any) -> None:
        if isinstance(item, torch.Tensor):
            sha.update(f"{item.dtype}{tuple(item.shape)}".encode())
            sha.update(item.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(item, dict):
            for key in sorted(item):
                sha.update(str(key).encode())
                feed(item[key])
        elif isinstance(item, list | tuple):
            for element in item:
                feed(element)
        else:
            sha.update(json.dumps(item).encode())

    feed(value)
    return sha.hexdigest()[:16]


def guard_storage(storage_dir: Path, started_with: dict[str, Any]) -> None:
    """Record what the experiment is started with (its `fingerprint`); refuse to resume it with anything else."""
    path = storage_dir / GUARD_FILE
    if path.exists():
        stored = json.loads(path.read_text())
        if stored != started_with:
            changed = sorted(key for key in started_with.keys() | stored.keys() if stored.get(key) != started_with.get(key))
            raise UserError(
                f"{storage_dir} holds a fine-tuning experiment started with other {', '.join(changed)}; "
                "use the original settings or another directory"
            )
        return
    if storage_dir.exists() and any(storage_dir.iterdir()):
        raise UserError(f"{storage_dir} is not empty and holds no metaprune fine-tuning experiment; choose another directory")
    atomic_write_json(path, started_with)


def restorable(storage_dir: Path) -> bool:
    """Whether Tune saved an experiment there (a kill before its first state file leaves none)."""
    states = list(storage_dir.glob("experiment_state-*.json"))  # trial statuses, last results, checkpoints
    if not tune.Tuner.can_restore(storage_dir) or not states:
        return False
    for path in states:  # Tune rewrites it in place: after a kill mid-write, Tune would log the
        try:  # error and go on to start trials without a config
            json.loads(path.read_text())
        except ValueError:
            raise UserError(
                f"Tune's saved state {path} is torn (the driver was killed while Tune wrote it), so the experiment "
                f"cannot be resumed; delete {storage_dir} to fine-tune again"
            ) from None
    return True
