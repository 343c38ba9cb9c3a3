"""The teachers of distillation: the chain full (or the user's teachers) -> optional assistant -> winner.

The base network (the user's trained network, or `train-base`'s) is the teacher by default and the
reference the compressed model is compared with. An assistant (distill.assistant_width > 0) is the full network with every width
scaled, distilled from the teachers with the fine-tune settings (`distill/assistant-<id>.pt`), and
then the winner's only teacher: a smaller gap between teacher and student (Mirzadeh et al., 2020).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

import search_spaces as ss
from metaprune import trained
from metaprune.context import Context
from metaprune.distill import DistillLoss, freeze, load_teacher, parse_weights, teacher_paths
from metaprune.errors import UserError
from metaprune.identity import assistant_config, assistant_identity, digest
from metaprune.results import Assistant, DistillResult
from metaprune.run_dir import ASSISTANTS
from metaprune.score import fixed_batches
from metaprune.train import Loss, train


@dataclass
class Teachers:
    models: list[nn.Module]  # eval mode, frozen, on the run's device
    names: list[str]  # base, assistant, or the user's paths
    weights: list[float] | None  # of their soft targets (None: equal)


def base_model(run: Context) -> nn.Module:
    """The trained full network, refused if it is unfinished or was trained under other settings."""
    if not trained.available(run):
        raise UserError(
            f"no trained base network in {run.dir}; run `run_search.py train-base --run-dir {run.dir}` first "
            "(or set base.weights to your trained network, or distill.teacher to your own model, or none)"
        )
    return freeze(trained.model(run))


def direct_teachers(run: Context) -> Teachers:
    """The teachers named by `distill.teacher`: the base network or the user's models."""
    paths = teacher_paths(run.cfg.distill)
    if not paths:
        return Teachers([base_model(run)], ["base"], None)
    models = [load_teacher(path, run.device) for path in paths]  # a .pt2 program moves by torch's pass, not .to()
    for model, path in zip(models, paths):
        check_teacher_fits(run, model, str(path))
    return Teachers(models, [str(path) for path in paths], parse_weights(run.cfg.distill.teacher_weights, len(paths)))


def teachers(run: Context) -> Teachers | None:
    """The winner's teachers: the direct ones, or the assistant they taught (trained here if needed)."""
    cfg = run.cfg.distill
    if not cfg.enabled:
        return None
    direct = direct_teachers(run)
    if cfg.assistant_width == 0:
        return direct
    found = assistant_identity(run)
    config = assistant_config(run.space, cfg.assistant_width)
    torch.manual_seed(run.cfg.seed)
    model = ss.fresh_subnet(run.space, config).to(run.device)
    data = run.prepared
    train(
        model, lambda x, step: model(x), data.train, data.normalizer, run.cfg.finetune, seed=run.cfg.seed,
        checkpoint=run.dir / ASSISTANTS / f"assistant-{digest(found)}.pt", flip=run.cfg.data.flip, device=run.device,
        desc="assistant", progress=run.cfg.progress, meta=found, amp=run.amp,
        loss_fn=DistillLoss(direct.models, cfg, direct.weights, run.cfg.finetune.label_smoothing),
    )  # fmt: skip
    return Teachers([freeze(model)], ["assistant"], None)


def loss_for(run: Context, found: Teachers | None) -> Loss | None:
    if found is None:
        return None
    return DistillLoss(found.models, run.cfg.distill, found.weights, run.cfg.finetune.label_smoothing)


def report(run: Context, found: Teachers, student_top1: float, student: list[int]) -> DistillResult:
    """summary.json `distill`: the student's (its config given) and each teacher's test top-1."""
    cfg = run.cfg.distill
    teacher_top1 = [run.test_top1(model) for model in found.models]
    assistant = None
    if cfg.assistant_width:
        config = assistant_config(run.space, cfg.assistant_width)
        assistant = Assistant(width=cfg.assistant_width, flops=ss.count(run.space, config).flops, config=list(config))
    return DistillResult(
        top1=student_top1,
        teacher_top1=teacher_top1[0] if len(teacher_top1) == 1 else teacher_top1,
        teachers=found.names,
        alpha=cfg.alpha,
        temperature=cfg.temperature,
        assistant=assistant,
        config=student,
    )


def check_teacher_fits(run: Context, model: nn.Module, name: str) -> None:
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
