"""train-pruningnet: one random configuration of the FLOPs window per mini-batch; warm-started from
the importance-ordered trained network and distilled from it (`pruningnet.init=trained`)."""

from __future__ import annotations

import numpy as np
import torch

import search_spaces as ss
from metaprune import trained
from metaprune.context import Context
from metaprune.distill import DistillLoss
from metaprune.graph_pruningnet import GraphPruningNet
from metaprune.identity import meta, pruningnet_config, pruningnet_optim
from metaprune.results import PruningNetResult
from metaprune.run_dir import PRUNINGNET
from metaprune.train import Loss, step_seed, train


def run(ctx: Context) -> PruningNetResult:
    warm = trained.pruningnet_init(ctx) == "trained"
    if warm:
        trained.require(ctx, "pruningnet.init=trained")
    ctx.begin()
    cfg, data = pruningnet_optim(ctx), ctx.prepared
    torch.manual_seed(ctx.cfg.seed)  # the initial weights are part of what the seed fixes
    net = GraphPruningNet(ctx.space, pruningnet_config(ctx)).to(ctx.device)
    loss_fn = _warm_start(ctx, net) if warm else None
    low, high = ctx.pn_window

    def forward(x: torch.Tensor, step: int) -> torch.Tensor:
        rng = np.random.default_rng(step_seed(ctx.cfg.seed, step))
        return net(x, ss.sample_within(ctx.space, rng, low, high))

    result = train(
        net, forward, data.train, data.normalizer, cfg, seed=ctx.cfg.seed, checkpoint=ctx.dir / PRUNINGNET,
        flip=ctx.cfg.data.flip, device=ctx.device, desc="pruningnet", progress=ctx.cfg.progress, amp=ctx.amp,
        meta=meta(ctx, PRUNINGNET), loss_fn=loss_fn,
    )  # fmt: skip
    tail = result.losses[-max(1, len(result.losses) // 10) :]
    final = float(np.mean(tail)) if tail else None  # none with 0 epochs: the warm start as it is
    summary = PruningNetResult(steps=result.steps, final_loss=final, checkpoint=PRUNINGNET, init="trained" if warm else "scratch")
    ctx.store.report("pruningnet", summary)
    return summary


def _warm_start(ctx: Context, net: GraphPruningNet) -> Loss | None:
    """Generators start at the trained weights (the space holds their importance order); the trained
    network teaches every width (if distilling)."""
    teacher = trained.model(ctx)
    net.warm_from(teacher)
    if not ctx.cfg.distill.enabled:
        return None
    return DistillLoss([teacher], ctx.cfg.distill, None, ctx.cfg.pruningnet.label_smoothing)
