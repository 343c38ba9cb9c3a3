"""finetune with `finetune.top_k` > 1: the k best candidates of the last search as Ray Tune trials
under ASHA; the survivor becomes the winner and its checkpoint sits where any fine-tune's does.
`metaprune.stages.finetune` measures and reports it like any fine-tune."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import search_spaces as ss
from metaprune import teachers, trained, tune
from metaprune.choice import load_weights, start_weights
from metaprune.context import Context
from metaprune.distill import to_program
from metaprune.errors import UserError
from metaprune.identity import digest, finetune_path, meta
from metaprune.io import atomic_write_bytes
from metaprune.results import TuneReport, TuneTrial
from metaprune.run_dir import FINETUNE, TUNE
from metaprune.studies import last_search, rank
from metaprune.train import load_trained_weights
from nas.executors import JoinError
from nas.study import Candidate


@dataclass
class Survivor:
    config: ss.Config
    model: torch.nn.Module  # on the run's device
    checkpoint: Path  # where any fine-tune of this point keeps its weights
    tune: TuneReport  # summary.json finetune.tune: the study, the survivor, every trial
    teachers: teachers.Teachers | None


def run(ctx: Context) -> Survivor:
    name, found = last_search(ctx)
    ranked = sorted(found, key=rank)
    chosen = list({c.config: c for c in reversed(ranked)}.values())[::-1][: ctx.cfg.finetune.top_k]
    if ctx.cfg.finetune.init == "filter":
        trained.require(ctx, "finetune.init=filter")
    ctx.begin()
    found_teachers = teachers.teachers(ctx)
    outcomes = _tune(ctx, name, chosen, found_teachers)
    survivor = next(o for o in outcomes if o.survivor)
    path = finetune_path(ctx, survivor.config)  # export finds the survivor where it finds any fine-tune
    atomic_write_bytes(path, survivor.checkpoint.read_bytes())
    model = ss.build_subnet(ctx.space, survivor.config).to(ctx.device)
    load_weights(model, load_trained_weights(path), path)
    trials = [
        TuneTrial(name=o.name, config=list(o.config), epochs=o.epochs, val_top1=o.val_top1, stopped_early=o.stopped_early)
        for o in outcomes
    ]
    ctx.store.set_winner(name, survivor.config, "tune")
    block = TuneReport(study=name, survivor=survivor.name, trials=trials)
    return Survivor(survivor.config, model, path, block, found_teachers)


def _tune(ctx: Context, study: str, chosen: list[Candidate], found: teachers.Teachers | None) -> list[Any]:
    cache: dict[str, Any] = {}
    starts = [tune.TrialStart(f"trial-{c.trial}", c.config, start_weights(ctx, c.config, cache)) for c in chosen]
    data, cfg = ctx.prepared, ctx.cfg.finetune
    spec = tune.TuneSpec(
        ss.space_payload(ctx.space), data.train, data.val, data.normalizer, cfg, ctx.cfg.data.flip, ctx.cfg.seed,
        tune.trial_device(ctx.cfg.device), ctx.cfg.score.eval_batch_size, amp=ctx.cfg.amp,  # the trial's GPU decides amp
    )  # fmt: skip
    if found is not None:  # each trial distills from the same teachers, shipped as torch.export programs
        example = data.normalizer(data.train.images[:2])
        spec.teachers = [to_program(model, example) for model in found.models]
        spec.teacher_weights, spec.distill = found.weights, ctx.cfg.distill
    identity = {**meta(ctx, FINETUNE, ()), "study": study, "candidates": [list(c.config) for c in chosen],
                "asha": [cfg.grace_epochs, cfg.reduction_factor]}  # fmt: skip
    try:
        return tune.tune_finetune(
            starts, spec, ctx.dir / TUNE / digest(identity), grace_epochs=cfg.grace_epochs,
            reduction_factor=cfg.reduction_factor, progress=ctx.cfg.progress,
        )  # fmt: skip
    except JoinError as exc:  # RAY_ADDRESS names a cluster this driver cannot join
        raise UserError(str(exc)) from None
