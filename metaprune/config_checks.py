"""Every setting checked before any work starts, so a typo cannot cost hours of finished stages;
each failure is a one-line error naming the key, the rule and the value."""

from __future__ import annotations

import math
from typing import Any

from metaprune.compress import check_compress_config
from metaprune.config_sections import (
    FINETUNE_INITS,
    PRUNINGNET_INITS,
    DataConfig,
    RunConfig,
    SearchSection,
    SpaceConfig,
)
from metaprune.deploy import QuantizeConfig
from metaprune.distill import DistillConfig
from metaprune.errors import UserError
from metaprune.latency import LatencyConfig
from metaprune.score import ScoreConfig
from metaprune.train import OptimConfig


def _require(ok: bool, key: str, value: Any, rule: str) -> None:
    if not ok:
        raise UserError(f"config key {key!r} must be {rule}, got {value!r}")


def _check_optim(section: str, cfg: OptimConfig, pruningnet: bool = False) -> None:
    from metaprune.train import SCHEDULES

    if pruningnet:  # 0 epochs: the warm start as it is (EagleEye); 0 lr: the automatic rate
        _require(cfg.epochs >= 0, f"{section}.epochs", cfg.epochs, ">= 0 (0 only with pruningnet.init=trained)")
        _require(cfg.lr >= 0 and math.isfinite(cfg.lr), f"{section}.lr", cfg.lr, ">= 0 (0 = auto)")
    else:
        _require(cfg.epochs >= 1, f"{section}.epochs", cfg.epochs, ">= 1")
        _require(cfg.lr > 0 and math.isfinite(cfg.lr), f"{section}.lr", cfg.lr, "a positive number")
    _require(cfg.batch_size >= 2, f"{section}.batch_size", cfg.batch_size, ">= 2 (BatchNorm needs two images)")
    _require(0 <= cfg.momentum < 1, f"{section}.momentum", cfg.momentum, "in [0, 1)")
    _require(0 <= cfg.weight_decay < 1, f"{section}.weight_decay", cfg.weight_decay, "in [0, 1)")
    _require(cfg.schedule in SCHEDULES, f"{section}.schedule", cfg.schedule, f"one of {', '.join(SCHEDULES)}")
    _require(0 <= cfg.label_smoothing < 1, f"{section}.label_smoothing", cfg.label_smoothing, "in [0, 1)")
    _require(cfg.checkpoint_every >= 1, f"{section}.checkpoint_every", cfg.checkpoint_every, ">= 1")


def validate(cfg: RunConfig) -> None:
    """Check every value before any work starts, so a typo cannot cost hours of finished stages."""
    seeds = {"seed": cfg.seed, "search.seed": cfg.search.seed, "data.split_seed": cfg.data.split_seed}
    for key, seed in seeds.items():
        _require(0 <= seed < 2**32, key, seed, "in [0, 2**32)")
    _require(cfg.device in ("auto", "cpu", "cuda"), "device", cfg.device, "auto, cpu or cuda")
    _require(cfg.threads >= 0, "threads", cfg.threads, ">= 0")
    _check_data(cfg.data)
    _check_space(cfg.space)
    _check_training(cfg)
    _check_distill(cfg.distill)
    _check_quantize(cfg.quantize)
    check_compress_config(cfg.compress)
    _check_score(cfg.score)
    _check_search(cfg.search, cfg.latency)
    for key, value in {
        "search.max_flops": cfg.search.max_flops,
        "search.min_flops": cfg.search.min_flops,
        "pruningnet.max_flops": cfg.pruningnet.max_flops,
        "pruningnet.min_flops": cfg.pruningnet.min_flops,
    }.items():
        _require(value >= 0 and math.isfinite(value), key, value, "a fraction <= 1 or absolute FLOPs > 1")


def _check_data(data: DataConfig) -> None:
    _require(
        data.kind in ("digits", "folder", "synthetic", "tensors"), "data.kind", data.kind, "digits, folder or synthetic"
    )  # tensors: the data handed to metaprune.prune
    _require(data.val_size >= 1, "data.val_size", data.val_size, ">= 1")
    _require(data.train_subset >= 0, "data.train_subset", data.train_subset, ">= 0 (0 = all)")
    for key in ("mean", "std"):
        values = getattr(data, key)
        if values is not None:
            ok = all(math.isfinite(v) for v in values) and len(values) >= 1
            _require(ok, f"data.{key}", values, "a list of numbers, one per image channel")
    both = (data.mean is None) == (data.std is None)
    _require(both, "data.std", data.std, "set together with data.mean (or both null)")
    if data.std is not None:
        _require(min(data.std) > 0, "data.std", data.std, "positive numbers")


def _check_space(space: SpaceConfig) -> None:
    wm, cm = space.width_mult, space.channel_multiple
    _require(0 < wm <= 16 and math.isfinite(wm), "space.width_mult", wm, "in (0, 16]")
    _require(1 <= cm <= 256, "space.channel_multiple", cm, "in [1, 256] (1: the paper's grid, 8: what kernels block by)")


def _check_training(cfg: RunConfig) -> None:
    _check_optim("base", cfg.base)
    _check_optim("pruningnet", cfg.pruningnet, pruningnet=True)
    _check_optim("finetune", cfg.finetune)
    pn, ft = cfg.pruningnet, cfg.finetune
    _require(1 <= pn.hidden <= 4096, "pruningnet.hidden", pn.hidden, "in [1, 4096]")
    _require(ft.init in FINETUNE_INITS, "finetune.init", ft.init, "inherit, filter or scratch")
    _require(pn.init in PRUNINGNET_INITS, "pruningnet.init", pn.init, "auto, trained or scratch")
    from metaprune.importance import RANKINGS

    _require(pn.ranking in RANKINGS, "pruningnet.ranking", pn.ranking, f"one of {', '.join(RANKINGS)}")
    _require(pn.epochs >= 1 or pn.init == "trained", "pruningnet.epochs", pn.epochs, ">= 1 (0 needs pruningnet.init=trained)")
    _require(ft.top_k >= 1, "finetune.top_k", ft.top_k, ">= 1")
    _require(1 <= ft.grace_epochs <= ft.epochs, "finetune.grace_epochs", ft.grace_epochs, "in [1, finetune.epochs]")
    _require(ft.reduction_factor >= 2, "finetune.reduction_factor", ft.reduction_factor, ">= 2")


def _check_score(score: ScoreConfig) -> None:
    _require(score.calib_batch_size >= 2, "score.calib_batch_size", score.calib_batch_size, ">= 2")
    _require(score.calib_images >= score.calib_batch_size, "score.calib_images", score.calib_images, ">= score.calib_batch_size")
    _require(score.val_images >= 0, "score.val_images", score.val_images, ">= 0 (0: the whole validation split)")
    _require(score.eval_batch_size >= 1, "score.eval_batch_size", score.eval_batch_size, ">= 1")


def _check_search(search: SearchSection, latency: LatencyConfig) -> None:
    from nas.searchers import SEARCHERS

    _require(search.searcher in SEARCHERS, "search.searcher", search.searcher, f"one of {', '.join(SEARCHERS)}")
    _require(search.rounds.batch >= 1, "search.rounds.batch", search.rounds.batch, ">= 1")
    lat = search.max_latency_ms
    _require(lat >= 0 and math.isfinite(lat), "search.max_latency_ms", lat, ">= 0 (0 = no latency budget)")
    for key in ("batch", "threads", "runs"):
        _require(getattr(latency, key) >= 1, f"latency.{key}", getattr(latency, key), ">= 1")
    _require(latency.warmup >= 0, "latency.warmup", latency.warmup, ">= 0")
    _require(search.executor in ("inprocess", "ray"), "search.executor", search.executor, "inprocess or ray")
    _require(search.workers >= 1, "search.workers", search.workers, ">= 1")
    if search.searcher == "nsga2":
        _require(search.population >= 2, "search.population", search.population, ">= 2 for searcher nsga2")
    _require(search.population >= 1, "search.population", search.population, ">= 1")
    _require(search.generations >= 1, "search.generations", search.generations, ">= 1")
    evo = search.evolution
    _require(1 <= evo.parents <= search.population, "search.evolution.parents", evo.parents, "in [1, search.population]")
    _require(evo.mutations >= 0, "search.evolution.mutations", evo.mutations, ">= 0")
    _require(evo.crossovers >= 0, "search.evolution.crossovers", evo.crossovers, ">= 0")
    _require(0 <= evo.mutation_prob <= 1, "search.evolution.mutation_prob", evo.mutation_prob, "in [0, 1]")


def _check_distill(cfg: DistillConfig) -> None:
    from metaprune.distill import parse_weights, teacher_paths

    _require(cfg.alpha >= 0 and math.isfinite(cfg.alpha), "distill.alpha", cfg.alpha, ">= 0 (0 turns distillation off)")
    t = cfg.temperature
    _require(0 < t <= 1000 and math.isfinite(t), "distill.temperature", t, "in (0, 1000]")
    _require(0 <= cfg.assistant_width < 1, "distill.assistant_width", cfg.assistant_width, "in [0, 1) (0 = no assistant)")
    teachers = teacher_paths(cfg)
    parse_weights(cfg.teacher_weights, max(1, len(teachers)))


def _check_quantize(cfg: QuantizeConfig) -> None:
    from metaprune.deploy import CALIBRATION_METHODS

    _require(cfg.calib_images >= 1, "quantize.calib_images", cfg.calib_images, ">= 1")
    methods = ", ".join(CALIBRATION_METHODS)
    _require(cfg.calibration in CALIBRATION_METHODS, "quantize.calibration", cfg.calibration, f"one of {methods}")
    _require(cfg.max_drop >= 0 and math.isfinite(cfg.max_drop), "quantize.max_drop", cfg.max_drop, ">= 0 (top-1 points)")
    _require(cfg.qat in ("auto", "always", "never"), "quantize.qat", cfg.qat, "auto, always or never")
    _require(cfg.qat_epochs >= 1, "quantize.qat_epochs", cfg.qat_epochs, ">= 1")
    _require(cfg.qat_lr > 0 and math.isfinite(cfg.qat_lr), "quantize.qat_lr", cfg.qat_lr, "a positive number")
    _require(cfg.qat_batch_size >= 2, "quantize.qat_batch_size", cfg.qat_batch_size, ">= 2")
    _require(cfg.batch >= 1, "quantize.batch", cfg.batch, ">= 1")
    _require(cfg.threads >= 0, "quantize.threads", cfg.threads, ">= 0 (0 = one per core)")
