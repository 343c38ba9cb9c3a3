"""finetune: train the chosen point from its start weights (finetune.init), distilled from the
teachers, and measure its test top-1. With `finetune.top_k` > 1 (and no --trial / --max-flops) the
k best candidates are fine-tuned as Ray Tune trials under ASHA instead (`finetune_top_k`), and the
survivor is the winner."""

from __future__ import annotations

from pathlib import Path

import search_spaces as ss
from metaprune import teachers, trained
from metaprune.choice import chosen_point, require_pruningnet, start_model
from metaprune.context import Context
from metaprune.identity import finetune_path, meta
from metaprune.results import FinetuneResult, TuneReport
from metaprune.run_dir import FINETUNE
from metaprune.train import train


def run(ctx: Context) -> FinetuneResult:
    if ctx.cfg.finetune.top_k > 1 and not ctx.pick.picked:
        from metaprune.stages import finetune_top_k  # imports Ray: only for this path

        survivor = finetune_top_k.run(ctx)
        summary = result(ctx, survivor.config, ctx.test_top1(survivor.model), survivor.checkpoint, tune=survivor.tune)
        report(ctx, summary, survivor.teachers)
        return summary
    config, data = chosen_point(ctx).config, ctx.prepared
    check_start(ctx)
    ctx.begin()
    found = teachers.teachers(ctx)  # the base network must be trained; an assistant is trained here
    model = start_model(ctx, config)
    path = finetune_path(ctx, config)
    outcome = train(
        model, lambda x, step: model(x), data.train, data.normalizer, ctx.cfg.finetune, seed=ctx.cfg.seed,
        checkpoint=path, flip=ctx.cfg.data.flip, device=ctx.device, desc="finetune", progress=ctx.cfg.progress,
        meta=meta(ctx, FINETUNE, config), loss_fn=teachers.loss_for(ctx, found), amp=ctx.amp,
    )  # fmt: skip
    summary = result(ctx, config, ctx.test_top1(model), path, steps=outcome.steps)
    report(ctx, summary, found)
    return summary


def check_start(ctx: Context) -> None:
    """What finetune.init starts from must exist (before anything is written)."""
    if ctx.cfg.finetune.init == "inherit":
        require_pruningnet(ctx)
    if ctx.cfg.finetune.init == "filter":
        trained.require(ctx, "finetune.init=filter")


def result(
    ctx: Context, config: ss.Config, top1: float, path: Path, steps: int | None = None, tune: TuneReport | None = None
) -> FinetuneResult:
    """The fine-tuned model's report: one fine-tune's steps, or the top-k fine-tune's trials."""
    cost = ss.count(ctx.space, config)
    return FinetuneResult(
        top1=top1,
        flops=cost.flops,
        params=cost.params,
        config=list(config),
        steps=steps,
        init=ctx.cfg.finetune.init,
        checkpoint=str(path.relative_to(ctx.dir)),
        tune=tune,
    )


def report(ctx: Context, summary: FinetuneResult, found: teachers.Teachers | None) -> None:
    """The fine-tune's result, and beside it the distillation's (student and teachers' test top-1)."""
    ctx.store.report("finetune", summary)
    if found is not None:
        ctx.store.report("distill", teachers.report(ctx, found, summary.top1, summary.config))
