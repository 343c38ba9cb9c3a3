"""The stages of a run, each resumable, sharing one run directory and one `summary.json`.

    train-pruningnet -> search -> finetune -> export

Run directory: `config.yaml` (resolved config), `pruningnet.pt` (training checkpoint),
`search_record.jsonl` (every scored candidate), `finetune.pt`, `export/`, `summary.json`.
All input is validated before anything in the directory is written.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

import search_spaces as ss
from metaprune.config import RunConfig, config_from_dict, dump_config
from metaprune.data import ImageData, Normalizer, load_dataset, split
from metaprune.errors import UserError
from metaprune.io import atomic_torch_save, atomic_write_json, atomic_write_text, safe_torch_load
from metaprune.pruningnet import PruningNet, PruningNetConfig
from metaprune.score import Scorer, calibration_images, fixed_batches, top1
from metaprune.train import load_trained_weights, step_seed, train
from nas.budget import resolve_flops
from nas.evolution import evolve
from nas.record import Candidate, SearchRecord

STAGES = ("train-pruningnet", "search", "finetune", "export")
# Config sections each artifact depends on: changing one of them under a finished artifact is refused.
_DEPENDS = {
    "pruningnet.pt": ("seed", "data", "space", "pruningnet"),
    "search_record.jsonl": ("seed", "data", "space", "pruningnet", "score"),
    "finetune.pt": ("seed", "data", "space", "pruningnet", "score", "search", "finetune"),
}


@dataclass
class Prepared:
    train: ImageData
    val: ImageData
    test: ImageData
    normalizer: Normalizer


class Run:
    """One run directory. Construct it (validates everything), then call the stages."""

    def __init__(self, cfg: RunConfig, run_dir: str | Path) -> None:
        self.cfg, self.dir = cfg, Path(run_dir)
        if cfg.threads > 0:
            torch.set_num_threads(cfg.threads)
        self.device = _device(cfg.device)
        try:
            ss.get_family(cfg.space.family)  # fail on a typo before decoding a large dataset
        except ValueError as exc:
            raise UserError(str(exc)) from None
        self.splits = load_dataset(cfg.data.kind, cfg.data.path, cfg.data.split_seed)
        channels, size = self.splits.train.shape
        try:
            self.space = ss.create_space(cfg.space.family, len(self.splits.train.classes), channels, size, cfg.space.width_mult)
            self.full = ss.count(self.space, self.space.largest)
            self.pn_window = self._window(cfg.pruningnet.min_flops, cfg.pruningnet.max_flops, float(self.full.flops))
            self.search_window = self._window(cfg.search.min_flops, cfg.search.max_flops, float(self.full.flops))
        except ValueError as exc:
            raise UserError(str(exc)) from None
        self._check_run_dir()

    def _window(self, low: float, high: float, default_high: float) -> tuple[float, float]:
        window = (resolve_flops(low, self.full.flops, 0.0), resolve_flops(high, self.full.flops, default_high))
        ss.check_window(self.space, *window)
        return window

    # -- run directory ----------------------------------------------------------------------------
    def _check_run_dir(self) -> None:
        """Refuse a config that contradicts artifacts already in the run directory."""
        saved = self.dir / "config.yaml"
        if not saved.exists():
            return
        import yaml

        try:
            old = config_from_dict(yaml.safe_load(saved.read_text()) or {}).to_dict()
        except (UserError, yaml.YAMLError, TypeError) as exc:
            raise UserError(f"{saved} is unreadable ({str(exc).splitlines()[0]}); use a new --run-dir") from None
        new = self.cfg.to_dict()
        for artifact, sections in _DEPENDS.items():
            if (self.dir / artifact).exists():
                changed = [s for s in sections if old[s] != new[s]]
                if changed:
                    raise UserError(
                        f"{self.dir / artifact} was made with other '{changed[0]}' settings than this config; "
                        f"use a new --run-dir, or delete {artifact} to redo it"
                    )

    def _begin(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock()
        atomic_write_text(self.dir / "config.yaml", dump_config(self.cfg))
        self._update_summary("base", {"flops": self.full.flops, "params": self.full.params, "space": self.space.name})

    def _lock(self) -> None:
        """One process per run directory. The OS drops the lock when its holder dies, even by kill -9."""
        if getattr(self, "_lock_file", None) is not None:
            return
        import fcntl

        handle = open(self.dir / ".lock", "w")  # noqa: SIM115  (held open for the run's lifetime)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise UserError(f"another process is running in {self.dir}; wait for it or use another --run-dir") from None
        self._lock_file = handle

    def summary(self) -> dict[str, Any]:
        path = self.dir / "summary.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def _update_summary(self, stage: str, result: dict[str, Any]) -> None:
        summary = self.summary()
        summary[stage] = result
        atomic_write_json(self.dir / "summary.json", summary)

    # -- shared pieces ----------------------------------------------------------------------------
    @cached_property
    def prepared(self) -> Prepared:
        cfg = self.cfg.data
        train_all = self.splits.train
        if 0 < cfg.train_subset < len(train_all):  # seeded random subset: folder data is sorted by class
            train_all = split(train_all, len(train_all) - cfg.train_subset, cfg.split_seed + 1)[0]
        train_part, val = split(train_all, cfg.val_size, cfg.split_seed)
        return Prepared(train_part, val, self.splits.test, Normalizer.fit(train_part.images))

    def pruningnet(self) -> PruningNet:
        net = PruningNet(self.space, PruningNetConfig(self.cfg.pruningnet.hidden, self.cfg.pruningnet.bn_affine))
        return net.to(self.device)

    def trained_pruningnet(self) -> PruningNet:
        path = self.dir / "pruningnet.pt"
        state = safe_torch_load(path) if path.exists() else None
        if state is None or state.get("step") != state.get("total_steps"):
            raise UserError(
                f"no finished PruningNet in {self.dir}; run `run_search.py train-pruningnet --run-dir {self.dir}` first"
            )
        net = self.pruningnet()
        net.load_state_dict(state["model"])
        return net.eval()

    def scorer(self) -> Scorer:
        data, cfg = self.prepared, self.cfg.score
        calib = calibration_images(data.train, cfg.calib_images, self.cfg.data.split_seed)
        calib_x = [x for x, _ in fixed_batches(calib, data.normalizer, cfg.calib_batch_size, self.device)]
        return Scorer(
            self.trained_pruningnet(), calib_x, fixed_batches(data.val, data.normalizer, cfg.eval_batch_size, self.device)
        )

    # -- stages -----------------------------------------------------------------------------------
    def train_pruningnet(self) -> dict[str, Any]:
        """Train the PruningNet on one random configuration per mini-batch."""
        self._begin()
        cfg, data = self.cfg.pruningnet, self.prepared
        torch.manual_seed(self.cfg.seed)  # the initial weights are part of what the seed fixes
        net = self.pruningnet()
        low, high = self.pn_window

        def forward(x: torch.Tensor, step: int) -> torch.Tensor:
            rng = np.random.default_rng(step_seed(self.cfg.seed, step))
            return net(x, ss.sample_within(self.space, rng, low, high))

        result = train(
            net, forward, data.train, data.normalizer, cfg, seed=self.cfg.seed, checkpoint=self.dir / "pruningnet.pt",
            flip=self.cfg.data.flip, device=self.device, desc="pruningnet", progress=self.cfg.progress,
        )  # fmt: skip
        tail = result.losses[-max(1, len(result.losses) // 10) :]
        summary = {"steps": result.steps, "final_loss": float(np.mean(tail)) if tail else None, "checkpoint": "pruningnet.pt"}
        self._update_summary("pruningnet", summary)
        return summary

    def search(self) -> dict[str, Any]:
        """Evolutionary search under the FLOPs budget; every score lands in the record at once."""
        self._begin()
        scorer = self.scorer()
        record = SearchRecord(self.dir / "search_record.jsonl")
        already = len(record)

        def evaluate(config: ss.Config) -> Candidate:
            known = record.get(config)
            if known is not None:
                return known
            cost = ss.count(self.space, config)
            return record.append(config, cost.flops, cost.params, scorer(config))

        best = evolve(self.space, evaluate, self.cfg.search, *self.search_window, progress=self.cfg.progress)
        summary = {
            "evaluated": len(record),
            "scored_this_run": len(record) - already,
            "budget_flops": self.search_window[1],
            "best": _candidate_summary(self.space, best, self.full.flops),
            "record": "search_record.jsonl",
        }
        self._update_summary("search", summary)
        return summary

    def winner(self) -> ss.Config:
        best = self.summary().get("search", {}).get("best")
        if best is None:
            raise UserError(f"no finished search in {self.dir}; run `run_search.py search --run-dir {self.dir}` first")
        return self.space.validate(best["config"])

    def winner_model(self) -> torch.nn.Module:
        """The winner before fine-tuning: generated weights with re-estimated BN, or a fresh init."""
        config = self.winner()
        if self.cfg.finetune.init == "inherit":
            return self.scorer().subnet(config).to(self.device)
        if self.cfg.finetune.init == "scratch":
            torch.manual_seed(self.cfg.seed)
            return ss.build_subnet(self.space, config).to(self.device)
        raise UserError(f"unknown finetune.init {self.cfg.finetune.init!r}; choose inherit or scratch")

    def finetune(self) -> dict[str, Any]:
        """Train the winner (from inherited weights or from scratch) and measure test top-1."""
        self._begin()
        config, data = self.winner(), self.prepared
        model = self.winner_model()
        result = train(
            model, lambda x, step: model(x), data.train, data.normalizer, self.cfg.finetune, seed=self.cfg.seed,
            checkpoint=self.dir / "finetune.pt", flip=self.cfg.data.flip, device=self.device, desc="finetune",
            progress=self.cfg.progress,
        )  # fmt: skip
        cost = ss.count(self.space, config)
        test = fixed_batches(data.test, data.normalizer, self.cfg.score.eval_batch_size, self.device)
        summary = {
            "top1": top1(model, test),
            "flops": cost.flops,
            "params": cost.params,
            "steps": result.steps,
            "init": self.cfg.finetune.init,
        }
        self._update_summary("finetune", summary)
        return summary

    def export(self) -> dict[str, Any]:
        """Write the winner as weights + architecture JSON, reload it from those alone, compare."""
        self._begin()
        config = self.winner()
        path = self.dir / "finetune.pt"
        if not path.exists():
            raise UserError(f"no fine-tuned winner in {self.dir}; run `run_search.py finetune --run-dir {self.dir}` first")
        model = ss.build_subnet(self.space, config)
        model.load_state_dict(load_trained_weights(path))
        summary = export_model(
            model.eval(), self.space, config, self.prepared.normalizer, self.splits.train.classes, self.dir / "export"
        )
        self._update_summary("export", summary)
        return summary

    def pipeline(self) -> dict[str, Any]:
        self.train_pruningnet()
        self.search()
        self.finetune()
        self.export()
        return self.summary()


def export_model(
    model: torch.nn.Module, space: ss.SearchSpace, config: ss.Config, normalizer: Normalizer, classes: list[str], out: Path
) -> dict[str, Any]:
    """Save a plain subnet so that `search_spaces.load_subnet(out)` rebuilds it with equal outputs."""
    inputs = {"channels": space.in_channels, "size": space.resolution, "mean": normalizer.mean, "std": normalizer.std}
    cost = ss.count(space, config)
    arch = ss.architecture(space, config, input=inputs, classes=classes, flops=cost.flops, params=cost.params)
    atomic_torch_save(out / "weights.pt", {k: v.detach().cpu() for k, v in model.state_dict().items()})
    atomic_write_json(out / "architecture.json", arch)
    reloaded = ss.load_subnet(out)
    x = torch.randn(4, space.in_channels, space.resolution, space.resolution, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = float((reloaded(x) - model.cpu().eval()(x)).abs().max())
    return {"files": [str(out / "architecture.json"), str(out / "weights.pt")], "reload_max_abs_diff": diff}


def _candidate_summary(space: ss.SearchSpace, best: Candidate, full_flops: int) -> dict[str, Any]:
    return {
        "trial": best.trial,
        "config": list(best.config),
        "channels": space.describe(best.config),
        "flops": best.flops,
        "flops_ratio": best.flops / full_flops,
        "params": best.params,
        "proxy_top1": best.proxy_top1,
    }


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("device=cuda but no CUDA GPU is visible; use --set device=cpu or device=auto")
    if name not in ("cpu", "cuda"):
        raise UserError(f"unknown device {name!r}; choose auto, cpu or cuda")
    return torch.device(name)
