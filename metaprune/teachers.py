"""The original network and the teachers of distillation: the `train-base` stage and the chain
full (or the user's teachers) -> optional assistant -> winner.

The base network is the space's largest configuration trained from scratch with the `base`
settings (`base.pt`); it is the teacher by default and the reference the compressed model is
compared with. An assistant (distill.assistant_width > 0) is the full network with every width
scaled, distilled from the teachers with the fine-tune settings (`distill/assistant-<id>.pt`), and
then the winner's only teacher: a smaller gap between teacher and student (Mirzadeh et al., 2020).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

import search_spaces as ss
from metaprune import trained
from metaprune.distill import DistillLoss, freeze, load_teacher, parse_weights, teacher_paths
from metaprune.errors import UserError
from metaprune.score import fixed_batches
from metaprune.train import Loss, train

if TYPE_CHECKING:
    from metaprune.pipeline import Run

BASE = trained.BASE
ASSISTANTS = "distill"
FINETUNE_SETTINGS = "finetune-settings"  # Run.meta: what any fine-tune depends on, but for the winner


@dataclass
class Teachers:
    models: list[nn.Module]  # eval mode, frozen, on the run's device
    names: list[str]  # base, assistant, or the user's paths
    weights: list[float] | None  # of their soft targets (None: equal)


def train_base(run: Run) -> dict[str, Any]:
    """Train the full network from scratch and measure its test top-1 (resumes from `base.pt`);
    with `base.weights`, measure the user's trained network instead."""
    if trained.weights_file(run) is not None:
        model = trained.model(run)
        run._begin()
        summary = {**run.summary().get("base", {}), "top1": run.test_top1(model), "weights": str(trained.weights_file(run))}
        run._update_summary("base", summary)
        return summary
    run._begin()
    torch.manual_seed(run.cfg.seed)  # the initial weights are part of what the seed fixes
    model = ss.build_subnet(run.space, run.space.largest).to(run.device)
    data = run.prepared
    result = train(
        model, lambda x, step: model(x), data.train, data.normalizer, run.cfg.base, seed=run.cfg.seed,
        checkpoint=run.dir / BASE, flip=run.cfg.data.flip, device=run.device, desc="base", progress=run.cfg.progress,
        amp=run.amp,
        meta=base_meta(run),
    )  # fmt: skip
    summary = {**run.summary().get("base", {}), "top1": run.test_top1(model), "steps": result.steps, "checkpoint": BASE}
    run._update_summary("base", summary)
    return summary


def base_meta(run: Run) -> dict[str, Any]:
    full = run.cfg.to_dict()
    del full["base"]["checkpoint_every"], full["base"]["weights"]  # base.pt exists only without base.weights
    return {**run.meta(BASE), "base": full["base"]}


def base_model(run: Run) -> nn.Module:
    """The trained full network, refused if it is unfinished or was trained under other settings."""
    if not trained.available(run):
        raise UserError(
            f"no trained base network in {run.dir}; run `run_search.py train-base --run-dir {run.dir}` first "
            "(or set base.weights to your trained network, or distill.teacher to your own model, or none)"
        )
    return freeze(trained.model(run))


def _file_digest(path: Path) -> str:
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha1()
    for file in files:
        digest.update(file.read_bytes())
    return digest.hexdigest()[:16]


def _digest(data: Any) -> str:
    return hashlib.sha1(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]


def _direct_identity(run: Run) -> dict[str, Any]:
    cfg = run.cfg.distill
    paths = teacher_paths(cfg)
    if not paths:
        if trained.weights_file(run) is not None:
            return {"base_weights": trained.identity(run)}
        return {"base": _digest(base_meta(run))}
    return {"files": [_file_digest(path) for path in paths], "weights": parse_weights(cfg.teacher_weights, len(paths))}


def _assistant_identity(run: Run) -> dict[str, Any]:
    cfg = run.cfg.distill
    config = assistant_config(run.space, cfg.assistant_width)
    return {**run.meta(FINETUNE_SETTINGS), "teachers": _direct_identity(run), **_distill(run), "assistant": list(config)}


def _distill(run: Run) -> dict[str, float]:
    return {"alpha": run.cfg.distill.alpha, "temperature": run.cfg.distill.temperature}


def identity(run: Run) -> dict[str, Any] | None:
    """What a student's training depends on (None without distillation): cheap, nothing is loaded."""
    if not run.cfg.distill.enabled:
        return None
    if run.cfg.distill.assistant_width == 0:
        return {**_direct_identity(run), **_distill(run)}
    return {"assistant": _digest(_assistant_identity(run)), **_distill(run)}


def direct_teachers(run: Run) -> Teachers:
    """The teachers named by `distill.teacher`: the base network or the user's models."""
    paths = teacher_paths(run.cfg.distill)
    if not paths:
        return Teachers([base_model(run)], ["base"], None)
    models = [load_teacher(path).to(run.device) for path in paths]
    for model, path in zip(models, paths):
        check_teacher_fits(run, model, str(path))
    return Teachers(models, [str(path) for path in paths], parse_weights(run.cfg.distill.teacher_weights, len(paths)))


def assistant_config(space: ss.SearchSpace, width: float) -> ss.Config:
    """Every gene at the choice nearest to `width` x its full width."""
    return tuple(min(range(len(g.choices)), key=lambda i, g=g: abs(g.choices[i] - width * g.base)) for g in space.genes)  # type: ignore[misc]


def teachers(run: Run) -> Teachers | None:
    """The winner's teachers: the direct ones, or the assistant they taught (trained here if needed)."""
    cfg = run.cfg.distill
    if not cfg.enabled:
        return None
    direct = direct_teachers(run)
    if cfg.assistant_width == 0:
        return direct
    found = _assistant_identity(run)
    config = assistant_config(run.space, cfg.assistant_width)
    torch.manual_seed(run.cfg.seed)
    model = ss.build_subnet(run.space, config).to(run.device)
    data = run.prepared
    train(
        model, lambda x, step: model(x), data.train, data.normalizer, run.cfg.finetune, seed=run.cfg.seed,
        checkpoint=run.dir / ASSISTANTS / f"assistant-{_digest(found)}.pt", flip=run.cfg.data.flip, device=run.device,
        desc="assistant", progress=run.cfg.progress, meta=found, amp=run.amp,
        loss_fn=DistillLoss(direct.models, cfg, direct.weights, run.cfg.finetune.label_smoothing),
    )  # fmt: skip
    return Teachers([freeze(model)], ["assistant"], None)


def loss_for(run: Run, found: Teachers | None) -> Loss | None:
    if found is None:
        return None
    return DistillLoss(found.models, run.cfg.distill, found.weights, run.cfg.finetune.label_smoothing)


def report(run: Run, found: Teachers, student_top1: float) -> dict[str, Any]:
    """summary.json `distill`: the student's and each teacher's test top-1."""
    cfg = run.cfg.distill
    teacher_top1 = [run.test_top1(model) for model in found.models]
    summary: dict[str, Any] = {
        "top1": student_top1,
        "teacher_top1": teacher_top1[0] if len(teacher_top1) == 1 else teacher_top1,
        "teachers": found.names,
        "alpha": cfg.alpha,
        "temperature": cfg.temperature,
    }
    if cfg.assistant_width:
        config = assistant_config(run.space, cfg.assistant_width)
        summary["assistant"] = {"width": cfg.assistant_width, "flops": ss.count(run.space, config).flops, "config": list(config)}
    return summary


def check_teacher_fits(run: Run, model: nn.Module, name: str) -> None:
    """A user's teacher must map the run's images to as many classes as the run has."""
    classes = len(run.splits.train.classes)
    x = fixed_batches(run.prepared.val, run.prepared.normalizer, run.cfg.finetune.batch_size, run.device)[0][0]
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as exc:
        raise UserError(
            f"teacher {name} fails on this run's images of shape {tuple(x.shape)} ({str(exc).splitlines()[0][:100]}); "
            "export it with a dynamic batch dimension for this input size"
        ) from None
    if out.shape != (len(x), classes):
        raise UserError(f"teacher {name} gives outputs of shape {tuple(out.shape)}, expected ({len(x)}, {classes}) logits")
