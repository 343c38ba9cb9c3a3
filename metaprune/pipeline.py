"""The stages of a run, each resumable, sharing one run directory and one `summary.json`.

    train-pruningnet -> search -> finetune -> export

Run directory: `config.yaml` (the latest resolved config), `pruningnet.pt` (training checkpoint),
`search_record.jsonl` (every scored candidate), `finetune/<id>.pt` (one per winner and fine-tune
setting), `export/`, `summary.json`. Each artifact stores the settings it was made with and is
refused under other settings; all input is checked before anything in the directory is written.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch

import search_spaces as ss
from metaprune.config import RunConfig, dump_config, validate
from metaprune.data import ImageData, Normalizer, load_dataset, split
from metaprune.errors import UserError
from metaprune.io import atomic_torch_save, atomic_write_json, atomic_write_text, remove_stale_temp_files
from metaprune.pruningnet import PruningNet, PruningNetConfig
from metaprune.score import Scorer, ScorerSpec, build_scorer, calibration_images, fixed_batches, top1
from metaprune.train import checkpoint_header, load_trained_weights, step_seed, train
from nas.budget import resolve_flops
from nas.evolution import evolve
from nas.record import Candidate, MetaMismatch, SearchRecord, changed_keys

PRUNINGNET = "pruningnet.pt"
RECORD = "search_record.jsonl"
FINETUNE = "finetune"


@dataclass
class Prepared:
    train: ImageData
    val: ImageData
    test: ImageData
    normalizer: Normalizer


class Run:
    """One run directory. Construct it (validates everything), then call the stages."""

    def __init__(self, cfg: RunConfig, run_dir: str | Path) -> None:
        validate(cfg)
        self.cfg, self.dir = cfg, Path(run_dir)
        if self.dir.exists() and not self.dir.is_dir():
            raise UserError(f"--run-dir {self.dir} is a file; pass a directory")
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
            self.pn_window = self._window(cfg.pruningnet.min_flops, cfg.pruningnet.max_flops)
            self.search_window = self._window(cfg.search.min_flops, cfg.search.max_flops)
        except ValueError as exc:
            raise UserError(str(exc)) from None
        for section in ("pruningnet", "finetune"):
            batch = getattr(cfg, section).batch_size
            if batch > len(self.prepared.train):
                raise UserError(f"{section}.batch_size {batch} exceeds the {len(self.prepared.train)} training images; lower it")
        self._check_artifacts()

    def _window(self, low: float, high: float) -> tuple[float, float]:
        window = (resolve_flops(low, self.full.flops), resolve_flops(high, self.full.flops))
        ss.check_window(self.space, *window)
        return window

    # -- what each artifact depends on ------------------------------------------------------------
    def meta(self, artifact: str, winner: ss.Config | None = None) -> dict[str, Any]:
        """The settings an artifact's content depends on (stored in it, checked on reuse)."""
        full = self.cfg.to_dict()
        # checkpoint intervals and evaluation batch sizes cannot change a result: left out
        for section, key in (("pruningnet", "checkpoint_every"), ("finetune", "checkpoint_every"), ("score", "eval_batch_size")):
            del full[section][key]
        data = full["data"]
        data["path"] = str(Path(data["path"]).resolve()) if data["kind"] == "folder" and data["path"] else None
        meta = {key: full[key] for key in ("seed", "data", "space", "pruningnet")}
        if artifact in (RECORD, FINETUNE):
            meta["score"] = full["score"]
        if artifact == FINETUNE:
            meta.update(finetune=full["finetune"], winner=list(winner or ()))
        return meta

    def finetune_path(self, winner: ss.Config) -> Path:
        """One checkpoint per (winner, fine-tune settings): searching again never clobbers one."""
        digest = hashlib.sha1(json.dumps(self.meta(FINETUNE, winner), sort_keys=True).encode()).hexdigest()[:12]
        return self.dir / FINETUNE / f"{digest}.pt"

    def _check_artifacts(self) -> None:
        """Refuse settings that contradict finished work, naming everything that depends on it."""
        path = self.dir / PRUNINGNET
        if path.exists():
            stored = checkpoint_header(path)["meta"]
            if stored != self.meta(PRUNINGNET):
                _conflict(path, changed_keys(stored, self.meta(PRUNINGNET)), [PRUNINGNET, RECORD, f"{FINETUNE}/"])
        if (self.dir / RECORD).exists():
            self._record(writable=False)

    def _record(self, writable: bool) -> SearchRecord:
        try:
            return SearchRecord(self.dir / RECORD, self.meta(RECORD), writable)
        except MetaMismatch as exc:
            _conflict(exc.path, exc.changed, [RECORD, f"{FINETUNE}/"])
        except ValueError as exc:
            raise UserError(str(exc)) from None

    def _begin(self) -> None:
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._lock()
            remove_stale_temp_files([self.dir, self.dir / FINETUNE, self.dir / "export"])
            atomic_write_text(self.dir / "config.yaml", dump_config(self.cfg))
        except OSError as exc:
            raise UserError(f"cannot write --run-dir {self.dir} ({exc.strerror or exc}); choose a writable directory") from None
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

    def _update_summary(self, stage: str, result: dict[str, Any], winner: ss.Config | None = None) -> None:
        """Set one stage's result; a new `winner` drops fine-tune/export results of another model."""
        summary = self.summary()
        summary[stage] = result
        if winner is not None:
            summary = {k: v for k, v in summary.items() if k not in ("finetune", "export") or v.get("config") == list(winner)}
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

    def _require_pruningnet(self) -> Path:
        path = self.dir / PRUNINGNET
        header = checkpoint_header(path) if path.exists() else None
        if header is None or header["step"] != header["total_steps"]:
            raise UserError(
                f"no finished PruningNet in {self.dir}; run `run_search.py train-pruningnet --run-dir {self.dir}` first"
            )
        return path

    def trained_pruningnet(self) -> PruningNet:
        net = self.pruningnet()
        _load_weights(net, load_trained_weights(self._require_pruningnet()), self.dir / PRUNINGNET)
        return net.eval()

    def scorer_spec(self) -> ScorerSpec:
        """The trained PruningNet and the fixed scoring data, as plain data any worker can rebuild."""
        data, cfg = self.prepared, self.cfg.score
        calib = calibration_images(data.train, cfg.calib_images, self.cfg.data.split_seed)
        # full batches only: a short last batch would weigh as much as a full one in the average
        whole = len(calib) // cfg.calib_batch_size * cfg.calib_batch_size
        if whole == 0:
            raise UserError(
                f"score.calib_batch_size {cfg.calib_batch_size} exceeds the {len(calib)} calibration images; lower it"
            )
        weights = load_trained_weights(self._require_pruningnet())
        _load_weights(self.pruningnet(), weights, self.dir / PRUNINGNET)  # a clear error if it does not fit
        return ScorerSpec(
            space=self.space.to_dict(),
            pruningnet=PruningNetConfig(self.cfg.pruningnet.hidden, self.cfg.pruningnet.bn_affine),
            weights=weights,
            calibration=calib.images[:whole],
            validation_images=data.val.images,
            validation_labels=data.val.labels,
            normalizer=data.normalizer,
            score=cfg,
        )

    def scorer(self) -> Scorer:
        return build_scorer(self.scorer_spec(), self.device)

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
            net, forward, data.train, data.normalizer, cfg, seed=self.cfg.seed, checkpoint=self.dir / PRUNINGNET,
            flip=self.cfg.data.flip, device=self.device, desc="pruningnet", progress=self.cfg.progress,
            meta=self.meta(PRUNINGNET),
        )  # fmt: skip
        tail = result.losses[-max(1, len(result.losses) // 10) :]
        summary = {"steps": result.steps, "final_loss": float(np.mean(tail)), "checkpoint": PRUNINGNET}
        self._update_summary("pruningnet", summary)
        return summary

    def search(self) -> dict[str, Any]:
        """Evolutionary search under the FLOPs budget; every score lands in the record at once."""
        self._require_pruningnet()
        self._begin()
        scorer = self.scorer()
        record = self._record(writable=True)  # under the lock: may drop a torn last line
        already = len(record)

        def evaluate(config: ss.Config) -> Candidate:
            known = record.get(config)
            if known is not None:
                return known
            cost = ss.count(self.space, config)
            return record.append(config, cost.flops, cost.params, scorer(config))

        try:
            best = evolve(self.space, evaluate, self.cfg.search, *self.search_window, progress=self.cfg.progress)
        except ValueError as exc:
            raise UserError(str(exc)) from None
        summary = {
            "evaluated": len(record),
            "scored_this_run": len(record) - already,
            "budget_flops": self.search_window[1],
            "best": _candidate_summary(self.space, best, self.full.flops),
            "record": RECORD,
        }
        self._update_summary("search", summary, winner=best.config)
        return summary

    def winner(self) -> ss.Config:
        """The best candidate of the last search, provided its record still holds it."""
        best = self.summary().get("search", {}).get("best")
        if best is None or not (self.dir / RECORD).exists() or tuple(best["config"]) not in self._record(writable=False):
            raise UserError(f"no finished search in {self.dir}; run `run_search.py search --run-dir {self.dir}` first")
        return self.space.validate(best["config"])

    def winner_model(self, config: ss.Config) -> torch.nn.Module:
        """The winner before fine-tuning: generated weights with re-estimated BN, or a fresh init."""
        if self.cfg.finetune.init == "inherit":
            return self.scorer().subnet(config).to(self.device)
        torch.manual_seed(self.cfg.seed)
        return ss.build_subnet(self.space, config).to(self.device)

    def finetune(self) -> dict[str, Any]:
        """Train the winner (from inherited weights or from scratch) and measure test top-1."""
        config, data = self.winner(), self.prepared
        if self.cfg.finetune.init == "inherit":
            self._require_pruningnet()
        self._begin()
        model = self.winner_model(config)
        path = self.finetune_path(config)
        result = train(
            model, lambda x, step: model(x), data.train, data.normalizer, self.cfg.finetune, seed=self.cfg.seed,
            checkpoint=path, flip=self.cfg.data.flip, device=self.device, desc="finetune", progress=self.cfg.progress,
            meta=self.meta(FINETUNE, config),
        )  # fmt: skip
        cost = ss.count(self.space, config)
        test = fixed_batches(data.test, data.normalizer, self.cfg.score.eval_batch_size, self.device)
        summary = {
            "top1": top1(model, test),
            "flops": cost.flops,
            "params": cost.params,
            "config": list(config),
            "steps": result.steps,
            "init": self.cfg.finetune.init,
            "checkpoint": str(path.relative_to(self.dir)),
        }
        self._update_summary("finetune", summary)
        return summary

    def export(self) -> dict[str, Any]:
        """Write the winner as weights + architecture JSON, reload it from those alone, compare."""
        config = self.winner()
        path = self.finetune_path(config)
        if not path.exists():
            raise UserError(
                f"no fine-tuned winner for these settings in {self.dir}; run `run_search.py finetune --run-dir {self.dir}` first"
            )
        weights = load_trained_weights(path)
        self._begin()
        model = ss.build_subnet(self.space, config)
        _load_weights(model, weights, path)
        classes = self.splits.train.classes
        summary = export_model(model.eval(), self.space, config, self.prepared.normalizer, classes, self.dir / "export")
        self._update_summary("export", {**summary, "config": list(config)})
        return summary

    def pipeline(self) -> dict[str, Any]:
        self.train_pruningnet()
        self.search()
        self.finetune()
        self.export()
        return self.summary()


def _conflict(path: Path, changed: list[str], redo: list[str]) -> NoReturn:
    raise UserError(
        f"{path} was made with other settings ({', '.join(changed[:4])}); use a new --run-dir, "
        f"or delete {', '.join(redo)} to redo them"
    )


def _load_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor], path: Path) -> None:
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        raise UserError(
            f"{path} does not fit this model ({str(exc).splitlines()[0]}); delete it or use a new --run-dir"
        ) from None


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
