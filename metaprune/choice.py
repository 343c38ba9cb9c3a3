"""The one place that decides which model a stage works on.

chosen_point    the point of the last search: --trial, the best under --max-flops, else the winner
                (the search's best, or the Tune survivor when a top-k fine-tune ran on that study)
start_weights   what fine-tuning starts from (finetune.init): generated, pruned from the trained
                network, or a fresh init
chosen_model    what quantize and export ship: the point's fine-tuned weights if a fine-tune of
                it finished, else its generated weights with re-estimated BN
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import search_spaces as ss
from metaprune import trained
from metaprune.context import Context
from metaprune.errors import UserError
from metaprune.graph_pruningnet import GraphPruningNet
from metaprune.identity import finetune_path, pruningnet_config
from metaprune.importance import crop
from metaprune.run_dir import PRUNINGNET
from metaprune.score import Scorer, ScorerSpec, build_scorer, calibration_images
from metaprune.studies import last_search, rank
from metaprune.train import checkpoint_header, load_trained_weights
from nas.budget import resolve_flops
from nas.study import Candidate


@dataclass
class Chosen:
    candidate: Candidate  # the point of the search
    model: torch.nn.Module  # on the CPU, eval mode
    weights: str  # finetuned | generated
    checkpoint: Path | None  # the fine-tune checkpoint the weights come from


def load_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor], path: Path) -> None:
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        raise UserError(
            f"{path} does not fit this model ({str(exc).splitlines()[0]}); delete it or use a new --run-dir"
        ) from None


# -- the trained PruningNet ---------------------------------------------------------------------------
def require_pruningnet(ctx: Context) -> Path:
    path = ctx.dir / PRUNINGNET
    header = checkpoint_header(path) if path.exists() else None
    if header is None or header["step"] != header["total_steps"]:
        raise UserError(f"no finished PruningNet in {ctx.dir}; run `run_search.py train-pruningnet --run-dir {ctx.dir}` first")
    return path


def scorer_spec(ctx: Context) -> ScorerSpec:
    """The trained PruningNet and the fixed scoring data, as plain data any worker can rebuild."""
    data, cfg = ctx.prepared, ctx.cfg.score
    calib = calibration_images(data.train, cfg.calib_images, ctx.cfg.data.split_seed)
    # full batches only: a short last batch would weigh as much as a full one in the average
    whole = len(calib) // cfg.calib_batch_size * cfg.calib_batch_size
    if whole == 0:
        raise UserError(f"score.calib_batch_size {cfg.calib_batch_size} exceeds the {len(calib)} calibration images; lower it")
    weights = load_trained_weights(require_pruningnet(ctx))
    load_weights(GraphPruningNet(ctx.space, pruningnet_config(ctx)), weights, ctx.dir / PRUNINGNET)  # a clear error if unfit
    return ScorerSpec(
        space=ss.space_payload(ctx.space),
        pruningnet=pruningnet_config(ctx),
        weights=weights,
        calibration=calib.images[:whole],
        validation_images=data.val.images[: cfg.val_images or None],
        validation_labels=data.val.labels[: cfg.val_images or None],
        normalizer=data.normalizer,
        score=cfg,
    )


def scorer(ctx: Context) -> Scorer:
    return build_scorer(scorer_spec(ctx), ctx.device)


# -- which point ----------------------------------------------------------------------------------
def chosen_point(ctx: Context) -> Candidate:
    """The chosen point of the last search: `pick` (a trial, or the best under a FLOPs cap), else the winner."""
    name, found = last_search(ctx)
    pick = ctx.pick
    if pick.trial is not None:
        chosen = [c for c in found if c.trial == pick.trial]
        if not chosen:
            raise UserError(
                f"--trial {pick.trial} is not a scored trial of study {name} (trials {found[0].trial}..{found[-1].trial}); "
                "pick one listed in summary.json search.pareto"
            )
        return chosen[0]
    if pick.max_flops is not None:
        cap = resolve_flops(pick.max_flops, ctx.full.flops)
        under = [c for c in found if c.flops <= cap]
        if not under:
            raise UserError(
                f"--max-flops {pick.max_flops:g} ({cap:,.0f} FLOPs) is below every scored candidate "
                f"(smallest {min(c.flops for c in found):,}); raise it"
            )
        return min(under, key=rank)
    winner = ctx.store.winner()
    match = [c for c in found if winner is not None and list(c.config) == winner["config"]]
    if not match:
        raise UserError(f"no finished search in {ctx.dir}; run `run_search.py search --run-dir {ctx.dir}` first")
    return match[0]


# -- which weights ----------------------------------------------------------------------------------
def start_model(ctx: Context, config: ss.Config) -> torch.nn.Module:
    """The point before fine-tuning, on the run's device: generated weights with re-estimated BN,
    the trained network pruned to its widths, or a fresh init (finetune.init)."""
    if ctx.cfg.finetune.init == "inherit":
        return scorer(ctx).subnet(config).to(ctx.device)
    if ctx.cfg.finetune.init == "filter":
        return crop(ctx.space, trained.model(ctx), config).to(ctx.device)
    torch.manual_seed(ctx.cfg.seed)
    return ss.fresh_subnet(ctx.space, config).to(ctx.device)


def start_weights(ctx: Context, config: ss.Config, cache: dict[str, Any]) -> dict[str, torch.Tensor] | None:
    """A Tune trial's starting weights on the CPU (None: a fresh init); `cache` keeps the scorer or the trained network."""
    if ctx.cfg.finetune.init == "scratch":
        return None
    if "source" not in cache:
        cache["source"] = scorer(ctx) if ctx.cfg.finetune.init == "inherit" else trained.model(ctx)
    if ctx.cfg.finetune.init == "inherit":
        return cache["source"].subnet(config).cpu().state_dict()
    return crop(ctx.space, cache["source"], config).cpu().state_dict()


def finetuned_model(ctx: Context, config: ss.Config) -> tuple[torch.nn.Module, Path] | None:
    """The fine-tuned weights of `config` under the current settings (CPU, eval), if that fine-tune finished."""
    path = finetune_path(ctx, config)
    weights = load_trained_weights(path) if path.exists() else None  # an unfinished fine-tune is refused
    if weights is None:
        return None
    model: torch.nn.Module = ss.build_subnet(ctx.space, config)
    load_weights(model, weights, path)
    return model.eval(), path


def chosen_model(ctx: Context) -> Chosen:
    """The chosen point as a model (on the CPU): fine-tuned when a fine-tune of it finished, else generated."""
    point = chosen_point(ctx)
    tuned = finetuned_model(ctx, point.config)
    if tuned is None:
        return Chosen(point, scorer(ctx).subnet(point.config).cpu().eval(), "generated", None)
    return Chosen(point, tuned[0], "finetuned", tuned[1])
