"""What every stage works from: the resolved config, the run directory, the data and the space.

`Context` is built once per command (`metaprune.pipeline.open_run` builds and checks it); stages are
functions of it (`metaprune.stages`). It decodes the data lazily, so a command refused for a bad
setting costs no decoding of a large dataset beyond its shape.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path

import torch

import search_spaces as ss
from metaprune.config import RunConfig, dump_config, validate
from metaprune.data import ImageData, Normalizer, Splits, load_dataset, split
from metaprune.errors import UserError
from metaprune.results import BaseResult
from metaprune.run_dir import RunDir
from metaprune.score import fixed_batches, top1
from nas.budget import resolve_flops


@dataclass
class Prepared:
    train: ImageData
    val: ImageData
    test: ImageData
    normalizer: Normalizer


@dataclass
class Pick:
    """Which point of the last search later stages use: a trial, the best under a FLOPs cap, or the winner."""

    trial: int | None = None
    max_flops: float | None = None  # <= 1: a fraction of the full model's FLOPs

    @property
    def picked(self) -> bool:
        return self.trial is not None or self.max_flops is not None


class Context:
    """One command's view of a run: config, store, device, data, space, FLOPs windows."""

    def __init__(
        self,
        cfg: RunConfig,
        run_dir: str | Path,
        pick: Pick | None = None,
        model: torch.nn.Module | None = None,
        splits: Splits | None = None,
    ) -> None:
        validate(cfg)
        self.cfg, self.store, self.pick = cfg, RunDir(run_dir), pick or Pick()
        self.dir = self.store.path
        if cfg.threads > 0:
            torch.set_num_threads(cfg.threads)
        self.device = device(cfg.device)
        try:
            if model is None and not cfg.space.model:
                ss.get_family(cfg.space.family)  # fail on a typo before decoding a large dataset
        except ValueError as exc:
            raise UserError(str(exc)) from None
        self.splits: Splits = load_dataset(cfg.data.kind, cfg.data.path, cfg.data.split_seed) if splits is None else splits
        channels, size = self.splits.train.shape
        try:
            self.base_space = make_space(cfg, len(self.splits.train.classes), channels, size, model)
            self.full = ss.count(self.base_space, self.base_space.largest)
            self.pn_window = self._window(cfg.pruningnet.min_flops, cfg.pruningnet.max_flops)
            self.search_window = self._window(cfg.search.min_flops, cfg.search.max_flops)
        except ValueError as exc:
            raise UserError(str(exc)) from None

    @property
    def space(self) -> ss.GraphSpace:
        """The space the PruningNet, the search and the subnets use: it keeps each gene's most
        important channels first once a trained network exists (its weights stay put; see
        `metaprune.graph_importance`)."""
        return self.ordered(self.base_space)

    def ordered(self, space: ss.GraphSpace) -> ss.GraphSpace:
        """`space` in the trained network's importance order (`metaprune.pipeline.Run` knows the
        trained network; a bare Context has none)."""
        return space

    def _window(self, low: float, high: float) -> tuple[float, float]:
        window = (resolve_flops(low, self.full.flops), resolve_flops(high, self.full.flops))
        ss.check_window(self.base_space, *window)
        return window

    @cached_property
    def prepared(self) -> Prepared:
        cfg = self.cfg.data
        train_all = self.splits.train
        if 0 < cfg.train_subset < len(train_all):  # seeded random subset: folder data is sorted by class
            train_all = split(train_all, len(train_all) - cfg.train_subset, cfg.split_seed + 1)[0]
        train_part, val = split(train_all, cfg.val_size, cfg.split_seed)
        given = cfg.mean is not None and cfg.std is not None  # what the user's trained network expects
        normalizer = Normalizer(list(cfg.mean), list(cfg.std)) if given else Normalizer.fit(train_part.images)  # type: ignore[arg-type]
        return Prepared(train_part, val, self.splits.test, normalizer)

    @property
    def amp(self) -> bool:
        """Mixed-precision (bf16) training: asked for, on a GPU, and one that computes in bf16."""
        return self.cfg.amp and self.device.type == "cuda" and torch.cuda.is_bf16_supported()

    @property
    def device_kind(self) -> str:
        return "cpu" if self.device.type == "cpu" else "cuda"

    def begin(self) -> BaseResult:
        """Own the run directory before a stage writes anything; the full model's figures go in the
        report, beside what it said of the base network before (returned: train-base adds to it)."""
        self.store.begin(dump_config(self.cfg))
        before = self.store.result("base", BaseResult) or BaseResult(flops=0, params=0, space="")
        base = replace(before, flops=self.full.flops, params=self.full.params, space=self.space.name)
        self.store.report("base", base)
        return base

    def test_top1(self, model: torch.nn.Module) -> float:
        """Top-1 (%) on the test split, where the model is: used once per trained model, never to choose one."""
        data = self.prepared
        where = next(model.parameters()).device
        return top1(model, fixed_batches(data.test, data.normalizer, self.cfg.score.eval_batch_size, where))

    def image_shape(self) -> tuple[int, int, int]:
        return (self.space.in_channels, self.space.resolution, self.space.resolution)


def make_space(cfg: RunConfig, num_classes: int, channels: int, size: int, model: torch.nn.Module | None = None) -> ss.GraphSpace:
    """The run's space: a registered family, or the user's own network traced (`space.model`, or a
    module handed to the Python entry point), for the data's classes, channels and image size."""
    if model is not None or cfg.space.model:
        from search_spaces.user import graph_space

        recipe = {"model": model if model is not None else cfg.space.model}
        return graph_space(recipe, num_classes, (channels, size, size), cfg.space.channel_multiple)
    space = cfg.space
    return ss.create_space(space.family, num_classes, channels, size, space.width_mult, space.channel_multiple)


def device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("device=cuda but no CUDA GPU is visible; use --set device=cpu or device=auto")
    if name not in ("cpu", "cuda"):
        raise UserError(f"unknown device {name!r}; choose auto, cpu or cuda")
    return torch.device(name)
