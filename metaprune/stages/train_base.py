"""train-base: the original full network, trained from scratch (`base.pt`, resumable), or the
user's trained network (`base.weights`) measured; the teacher and the reference of every comparison."""

from __future__ import annotations

from dataclasses import replace

import torch

import search_spaces as ss
from metaprune import trained
from metaprune.context import Context
from metaprune.identity import base_meta
from metaprune.results import BaseResult
from metaprune.run_dir import BASE
from metaprune.train import train


def run(ctx: Context) -> BaseResult:
    if trained.weights_file(ctx) is not None:
        model = trained.model(ctx)
        base = ctx.begin()
        summary = replace(base, top1=ctx.test_top1(model), weights=str(trained.weights_file(ctx)))
        ctx.store.report("base", summary)
        return summary
    base = ctx.begin()
    torch.manual_seed(ctx.cfg.seed)  # the initial weights are part of what the seed fixes
    model = ss.fresh_subnet(ctx.space, ctx.space.largest).to(ctx.device)
    data = ctx.prepared
    result = train(
        model, lambda x, step: model(x), data.train, data.normalizer, ctx.cfg.base, seed=ctx.cfg.seed,
        checkpoint=ctx.dir / BASE, flip=ctx.cfg.data.flip, device=ctx.device, desc="base", progress=ctx.cfg.progress,
        amp=ctx.amp, meta=base_meta(ctx),
    )  # fmt: skip
    summary = replace(base, top1=ctx.test_top1(model), steps=result.steps, checkpoint=BASE)
    ctx.store.report("base", summary)
    return summary
