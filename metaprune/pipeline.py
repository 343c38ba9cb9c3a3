"""The stages of a run, each resumable, sharing one run directory and one `summary.json`.

    train-pruningnet -> search -> finetune -> export

Run directory: `config.yaml` (the latest resolved config), `pruningnet.pt` (training checkpoint),
`study.journal` (every trial of every search, Optuna's journal format), `finetune/<id>.pt` (one per winner and fine-tune
setting), `export/`, `summary.json`. Each artifact stores the settings it was made with and is
refused under other settings; all input is checked before anything in the directory is written.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import uuid
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import IO, Any, NoReturn

import numpy as np
import torch
from optuna.study import StudyDirection

import search_spaces as ss
from metaprune import teachers, trained
from metaprune.config import PruningNetSection, RunConfig, dump_config, validate
from metaprune.data import ImageData, Normalizer, load_dataset, split
from metaprune.distill import DistillLoss, to_program
from metaprune.errors import UserError
from metaprune.importance import crop
from metaprune.io import atomic_write_bytes, atomic_write_json, atomic_write_text, remove_stale_temp_files
from metaprune.latency import LatencyTable
from metaprune.pruningnet import PruningNet, PruningNetConfig, warm_start
from metaprune.score import Scorer, ScorerSpec, build_scorer, calibration_images, fixed_batches, top1
from metaprune.train import checkpoint_header, load_trained_weights, step_seed, train
from nas.budget import resolve_flops
from nas.executors import Executor, InProcessExecutor, JoinError, LazyExecutor, unreachable
from nas.search import run_search
from nas.searchers import make_searcher
from nas.storage import JOURNAL, Storage, StorageError, redact
from nas.study import Candidate, MetaMismatch, StudyRecord, changed_keys, load_candidates, pareto_front, run_studies

PRUNINGNET = "pruningnet.pt"
RECORD = JOURNAL
FINETUNE = "finetune"
FRONT_PLOT = "search_front.png"
WARM_LR_FACTOR = 0.2  # a warm PruningNet's automatic rate, as a fraction of finetune.lr (see pruningnet_optim)
RUN_ID = "run_id"  # names this run's studies in a shared database
WINNER_STAGES = ("finetune", "distill", "quantize", "export")  # results about one model: each names its config


@dataclass
class Prepared:
    train: ImageData
    val: ImageData
    test: ImageData
    normalizer: Normalizer


@dataclass
class Chosen:
    candidate: Candidate  # the point of the search
    model: torch.nn.Module  # on the CPU, eval mode
    weights: str  # finetuned | generated
    checkpoint: Path | None  # the fine-tune checkpoint the weights come from


@dataclass
class Pick:
    """Which point of the last search later stages use: a trial, the best under a FLOPs cap, or the best."""

    trial: int | None = None
    max_flops: float | None = None  # <= 1: a fraction of the full model's FLOPs


class Run:
    """One run directory. Construct it (validates everything), then call the stages."""

    _lock_file: IO[str] | None = None  # held open while this process owns the run directory

    def __init__(self, cfg: RunConfig, run_dir: str | Path, pick: Pick | None = None) -> None:
        validate(cfg)
        self.cfg, self.dir, self.pick = cfg, Path(run_dir), pick or Pick()
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
            self.space = ss.create_space(
                cfg.space.family, len(self.splits.train.classes), channels, size, cfg.space.width_mult, cfg.space.channel_multiple
            )
            self.full = ss.count(self.space, self.space.largest)
            self.pn_window = self._window(cfg.pruningnet.min_flops, cfg.pruningnet.max_flops)
            self.search_window = self._window(cfg.search.min_flops, cfg.search.max_flops)
        except ValueError as exc:
            raise UserError(str(exc)) from None
        trained.check_normalisation(self, channels)
        trained.read_weights(self)  # a wrong base.weights file is refused before anything is written
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
        _drop_unset(full)
        if artifact == teachers.BASE:
            return {key: full[key] for key in ("seed", "data", "space")} | ({"amp": True} if self.amp else {})
        full["pruningnet"] = self._pruningnet_identity(full["pruningnet"])
        meta = {key: full[key] for key in ("seed", "data", "space", "pruningnet")}
        if self.amp:  # mixed-precision training gives other weights (CPU runs never use it)
            meta["amp"] = True
        if artifact in (RECORD, FINETUNE, teachers.FINETUNE_SETTINGS):
            meta["score"] = full["score"]
            if not 0 < full["score"]["val_images"] < self.cfg.data.val_size:  # the whole split: as before the setting
                del meta["score"]["val_images"]  # existed, so such runs resume
        if artifact in (FINETUNE, teachers.FINETUNE_SETTINGS):
            for key in ("top_k", "grace_epochs", "reduction_factor"):  # choose what is fine-tuned, not how
                del full["finetune"][key]
            meta["finetune"] = full["finetune"]
        if artifact in (FINETUNE, teachers.FINETUNE_SETTINGS) and self.cfg.finetune.init == "filter":
            meta["finetune"]["trained"] = trained.identity(self)  # pruned from the trained network
        if artifact == FINETUNE:
            meta["winner"] = list(winner or ())
            distill = teachers.identity(self)
            if distill is not None:  # (an undistilled fine-tune keeps the identity it had before distillation existed)
                meta["distill"] = distill
        return meta

    def _pruningnet_identity(self, section: dict[str, Any]) -> dict[str, Any]:
        """The PruningNet's settings as resolved (init, rate), with the trained network it starts from."""
        section = {**section, "lr": self.pruningnet_optim().lr}
        if trained.pruningnet_init(self) == "scratch":  # as before warm starts existed, so such runs resume
            del section["init"], section["ranking"]
            return section
        section.update(init="trained", bn_affine=True, trained=trained.identity(self))
        if self.cfg.distill.enabled:
            section["distill"] = {"alpha": self.cfg.distill.alpha, "temperature": self.cfg.distill.temperature}
        return section

    def pruningnet_optim(self) -> PruningNetSection:
        """`pruningnet` with its learning rate resolved: 0 is 0.1 from scratch, a fifth of finetune.lr when warm.

        Warm, every step trains another random width on the shared trained weights: on CIFAR-10
        ResNet-20, 60 steps at 0.05 took the 50%-FLOPs proxy from 58% to 20%, while 0.01 raised it
        to 62% and random layer-wise widths from about 21% to 51% (0.002: 66%, 46%)."""
        cfg = self.cfg.pruningnet
        if cfg.lr > 0:
            return cfg
        warm = trained.pruningnet_init(self) == "trained"
        return dataclasses.replace(cfg, lr=WARM_LR_FACTOR * self.cfg.finetune.lr if warm else 0.1)

    def pruningnet_config(self) -> PruningNetConfig:
        warm = trained.pruningnet_init(self) == "trained"  # the trained BN's scale and shift need affine BNs
        return PruningNetConfig(self.cfg.pruningnet.hidden, self.cfg.pruningnet.bn_affine or warm)

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
        base = self.dir / teachers.BASE
        if base.exists() and (stored := checkpoint_header(base)["meta"]) != teachers.base_meta(self):
            _conflict(base, changed_keys(stored, teachers.base_meta(self)), [teachers.BASE, f"{FINETUNE}/"])
        if (self.cfg.search.storage and (self.dir / RUN_ID).exists()) or (self.dir / RECORD).exists():
            self._guard(lambda: run_studies(self.storage(writable=False), self.study_prefix, self.meta(RECORD)))

    def _guard(self, action: Any) -> Any:
        """Run `action`, turning a study made under other settings, or a damaged one, into a UserError."""
        try:
            return action()
        except MetaMismatch as exc:
            studies = f"the run's studies in {exc.path}" if self.cfg.search.storage else RECORD
            redo = [studies, f"{FINETUNE}/"]
            _conflict(exc.path, exc.changed, redo)
        except ValueError as exc:
            raise UserError(str(exc)) from None

    # -- the study record -------------------------------------------------------------------------
    def storage(self, writable: bool) -> Storage:
        url = self.cfg.search.storage
        try:
            return Storage(url, self.dir, writable)
        except StorageError as exc:
            raise UserError(str(exc)) from None
        except ValueError as exc:
            raise UserError(str(exc)) from None
        except OSError as exc:
            where = redact(url) if url else str(self.dir / RECORD)
            raise UserError(f"cannot open {where} ({exc.strerror or exc}); check the path and its permissions") from None
        except Exception as exc:  # a database that cannot be reached
            first = str(exc).splitlines()[0].replace(url, redact(url))
            raise UserError(f"cannot open search.storage {redact(url)!r} ({first}); check the URL") from None

    @property
    def study_prefix(self) -> str:
        """Studies of this run: all of its journal file, or in a shared database those named
        `<name>-<run id>/...`, the run id kept in the run directory (two run directories of one
        name never share studies)."""
        if not self.cfg.search.storage:
            return ""
        path = self.dir / RUN_ID
        if not path.exists():
            atomic_write_text(path, uuid.uuid4().hex[:12] + "\n")
        return f"{self.cfg.name}-{path.read_text().strip()}/"

    def search_settings(self) -> dict[str, Any]:
        """What the search does, not where it runs (executor, workers, Ray address, storage URL
        with its password are left out), with the resolved FLOPs window."""
        search = self.cfg.to_dict()["search"]
        for key in ("executor", "workers", "ray_address", "storage"):
            del search[key]
        search["window"] = list(self.search_window)
        if search["max_latency_ms"] > 0:  # the budget's meaning depends on what the table measures
            search["latency"] = {"batch": self.cfg.latency.batch, "threads": self.cfg.latency.threads}
        return search

    def study_name(self) -> str:
        """One study per searcher, window and search settings."""
        digest = hashlib.sha1(json.dumps(self.search_settings(), sort_keys=True).encode()).hexdigest()[:8]
        return f"{self.study_prefix}{self.cfg.search.searcher}-{digest}"

    def study(
        self, writable: bool, directions: list[StudyDirection] | None = None, latency: LatencyTable | None = None
    ) -> StudyRecord:
        search = self.search_settings()
        attrs = {"searcher": search["searcher"], "search": search, "window": search["window"]}
        return self._guard(
            lambda: StudyRecord(
                self.storage(writable),
                self.study_name(),
                self.study_prefix,
                self.space,
                self.meta(RECORD),
                directions or [StudyDirection.MAXIMIZE],
                attrs,
                self.search_window,
                latency.predict if latency is not None else None,
                self.cfg.search.max_latency_ms,
            )  # fmt: skip
        )

    def _begin(self) -> None:
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._lock()
            remove_stale_temp_files([self.dir, self.dir / FINETUNE, self.dir / "export"])
            atomic_write_text(self.dir / "config.yaml", dump_config(self.cfg))
        except OSError as exc:
            raise UserError(f"cannot write --run-dir {self.dir} ({exc.strerror or exc}); choose a writable directory") from None
        base = {**self.summary().get("base", {}), "flops": self.full.flops, "params": self.full.params, "space": self.space.name}
        self._update_summary("base", base)

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

    def close(self) -> None:
        """Release the run directory now (else when this object is collected or the process ends)."""
        handle = getattr(self, "_lock_file", None)
        if handle is not None:
            handle.close()  # closing the descriptor drops the flock
            self._lock_file = None

    def summary(self) -> dict[str, Any]:
        path = self.dir / "summary.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def _update_summary(
        self, stage: str, result: dict[str, Any], winner: ss.Config | None = None, also: list[int] | None = None
    ) -> None:
        """Set one stage's result; a new `winner` drops the post-search results of other models
        (but for `also`: the Tune survivor of the same study, which stays the winner)."""
        summary = self.summary()
        summary[stage] = result
        if winner is not None:
            kept = [list(winner), also]
            summary = {k: v for k, v in summary.items() if k not in WINNER_STAGES or v.get("config") in kept}
        atomic_write_json(self.dir / "summary.json", summary)

    # -- shared pieces ----------------------------------------------------------------------------
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
        """Mixed-precision training: asked for and on a GPU."""
        return self.cfg.amp and self.device.type == "cuda"

    def test_top1(self, model: torch.nn.Module) -> float:
        """Top-1 (%) on the test split: used once per trained model, never to choose one."""
        data = self.prepared
        return top1(model, fixed_batches(data.test, data.normalizer, self.cfg.score.eval_batch_size, self.device))

    def pruningnet(self) -> PruningNet:
        return PruningNet(self.space, self.pruningnet_config()).to(self.device)

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
            pruningnet=self.pruningnet_config(),
            weights=weights,
            calibration=calib.images[:whole],
            validation_images=data.val.images[: cfg.val_images or None],
            validation_labels=data.val.labels[: cfg.val_images or None],
            normalizer=data.normalizer,
            score=cfg,
        )

    def scorer(self) -> Scorer:
        return build_scorer(self.scorer_spec(), self.device)

    # -- stages -----------------------------------------------------------------------------------
    def train_base(self) -> dict[str, Any]:
        """Train the original full network: the teacher and the reference of every comparison."""
        return teachers.train_base(self)

    def train_pruningnet(self) -> dict[str, Any]:
        """Train the PruningNet on one random configuration per mini-batch; warm-started from the
        importance-ordered trained network and distilled from it (`pruningnet.init=trained`)."""
        warm = trained.pruningnet_init(self) == "trained"
        if warm:
            trained.require(self, "pruningnet.init=trained")
        self._begin()
        cfg, data = self.pruningnet_optim(), self.prepared
        torch.manual_seed(self.cfg.seed)  # the initial weights are part of what the seed fixes
        net = self.pruningnet()
        loss_fn = None
        if warm:
            teacher = trained.model(self)
            warm_start(net, trained.ordered(self, teacher))
            if self.cfg.distill.enabled:  # the trained network teaches every width it generates
                loss_fn = DistillLoss([teacher], self.cfg.distill, None, cfg.label_smoothing)
        low, high = self.pn_window

        def forward(x: torch.Tensor, step: int) -> torch.Tensor:
            rng = np.random.default_rng(step_seed(self.cfg.seed, step))
            return net(x, ss.sample_within(self.space, rng, low, high))

        result = train(
            net, forward, data.train, data.normalizer, cfg, seed=self.cfg.seed, checkpoint=self.dir / PRUNINGNET,
            flip=self.cfg.data.flip, device=self.device, desc="pruningnet", progress=self.cfg.progress, amp=self.amp,
            meta=self.meta(PRUNINGNET), loss_fn=loss_fn,
        )  # fmt: skip
        tail = result.losses[-max(1, len(result.losses) // 10) :]
        final = float(np.mean(tail)) if tail else None  # none with 0 epochs: the warm start as it is
        summary = {"steps": result.steps, "final_loss": final, "checkpoint": PRUNINGNET, "init": "trained" if warm else "scratch"}
        self._update_summary("pruningnet", summary)
        return summary

    def executor(self, spec: ScorerSpec) -> Executor:
        search = self.cfg.search
        if search.executor == "inprocess":
            return InProcessExecutor(spec, str(self.device))
        from nas.ray_executor import RayExecutor  # Ray is imported only when asked for

        try:
            return RayExecutor(spec, search.workers, search.ray_address or None, device=self.cfg.device)
        except ValueError as exc:
            raise UserError(str(exc)) from None
        except ConnectionError as exc:  # JoinError says why; any other is Ray's own
            raise UserError(str(exc) if isinstance(exc, JoinError) else f"cannot join the Ray cluster: {exc}") from None

    def _check_ray_address(self) -> None:
        """Fail before anything is written: the head must answer, accept our token and run our versions."""
        address = self.cfg.search.ray_address or os.environ.get("RAY_ADDRESS", "")
        if self.cfg.search.executor != "ray" or address in ("", "auto", "local") or address.startswith("ray://"):
            return
        source = "--ray-address" if self.cfg.search.ray_address else "RAY_ADDRESS"
        if problem := unreachable(address):
            raise UserError(
                f"cannot reach the Ray cluster at {source} {address!r}: {problem}; "
                "check the address (the head's `ray start --head` prints it) or leave it empty to start Ray here"
            )
        from nas.ray_cluster import check_cluster  # imports Ray: only for a search that asks for it

        try:
            check_cluster(address)
        except JoinError as exc:
            raise UserError(str(exc)) from None

    def search(self) -> dict[str, Any]:
        """Search under the FLOPs budget with the chosen searcher; every result lands in the study at once."""
        self._require_pruningnet()
        spec = self.scorer_spec()  # fails on an unfit PruningNet before anything is written
        self._check_ray_address()
        self._begin()
        search = self.cfg.search
        table = self.latency_table() if search.max_latency_ms > 0 else None
        feasible = None if table is None else lambda config: table.predict(config) <= search.max_latency_ms
        try:
            searcher = make_searcher(search.searcher, self.space, search, self.search_window, search.batch, feasible)
        except ValueError as exc:
            raise UserError(str(exc)) from None
        record = self.study(writable=True, directions=searcher.directions, latency=table)  # under the lock: may cut a torn tail
        executor = LazyExecutor(lambda: self.executor(spec))  # nothing to score: no Ray started
        try:
            total = search.population * search.generations
            outcome = self._guard(lambda: run_search(searcher, record, executor, total, self.cfg.progress))
        finally:
            executor.close()
        pool = executor.report()
        if not outcome.candidates:
            raise UserError("the search scored no candidate inside the window; widen it (search.max_flops) or run more trials")
        best = min(outcome.candidates, key=_rank)
        front = pareto_front(outcome.candidates)
        from nas.plot import front_png

        png = front_png(outcome.candidates, front, self.search_window[1], self.full.flops, title=record.name)
        atomic_write_bytes(self.dir / FRONT_PLOT, png)
        timing = {
            "driver_s": round(outcome.driver_seconds, 3),
            "scoring_s": round(outcome.scoring_seconds, 3),
            "driver_share": round(outcome.driver_seconds / max(outcome.scoring_seconds, 1e-9), 4) if outcome.scored_now else None,
        }
        summary = {
            "searcher": search.searcher,
            "study": record.name,
            "storage": redact(record.storage.location),
            "executor": search.executor if search.executor == "inprocess" else f"ray x{search.workers}",
            "pool": pool,  # where this run's candidates were scored (empty when all came from the study)
            "evaluated": len(outcome.candidates),
            "trials": outcome.trials,
            "scored_this_run": outcome.scored_now,
            "budget_flops": self.search_window[1],
            "best": _candidate_summary(self.space, best, self.full.flops),
            "pareto": [_point(c) for c in front],
            "plot": FRONT_PLOT,
            "timing": timing,
        }
        if table is not None:
            summary["latency"] = self._latency_report(table, best, front)
        tuned = self.summary().get("finetune", {})
        keep = tuned.get("config") if tuned.get("tune", {}).get("study") == record.name else None
        self._update_summary("search", summary, winner=best.config, also=keep)
        return summary

    def latency_table(self) -> LatencyTable:
        """The per-layer latency table of this space on this machine (measured once, kept in the run dir)."""
        from metaprune.latency import LatencyTable, build_latency_table

        cfg = self.cfg.latency
        path = self.dir / f"latency_table-b{cfg.batch}-t{cfg.threads}.json"
        if path.exists():
            return LatencyTable.load(path, self.space, cfg.batch, cfg.threads)
        device = "cpu" if self.device.type == "cpu" else "cuda"
        table = build_latency_table(self.space, cfg.batch, cfg.threads, device, cfg.warmup, cfg.runs, progress=self.cfg.progress)
        table.save(path)
        return table

    def _latency_report(self, table: LatencyTable, best: Candidate, front: list[Candidate]) -> dict[str, Any]:
        """The budget, the winner's predicted latency, and the table checked against measured whole subnets."""
        from metaprune.latency import lut_accuracy

        device = "cpu" if self.device.type == "cpu" else "cuda"
        checked = [c.config for c in front[:: max(1, len(front) // 5)]][:5]  # up to 5 points spread along the front
        check = lut_accuracy(self.space, table, checked, runs=self.cfg.latency.runs, device=device)
        return {
            "max_latency_ms": self.cfg.search.max_latency_ms,
            "batch": table.batch,
            "threads": table.threads,
            "device": table.device,
            "best_predicted_ms": table.predict(best.config),
            "table_check": {k: check[k] for k in ("mape_pct", "max_error_pct", "kendall_tau", "configs")},
        }

    def candidates(self) -> tuple[str, list[Candidate]]:
        """The study of the last search and its measured candidates (read only)."""
        name = self.summary().get("search", {}).get("study")
        found = None
        if name is not None and (self.cfg.search.storage or (self.dir / RECORD).exists()):
            found = self._guard(lambda: load_candidates(self.storage(writable=False), name, self.space))
        if not found:
            raise UserError(f"no finished search in {self.dir}; run `run_search.py search --run-dir {self.dir}` first")
        return name, found

    def winner(self) -> ss.Config:
        return self.choice().config

    def choice(self) -> Candidate:
        """The chosen point of the last search: `pick` (a trial, or the best under a FLOPs cap), else the winner."""
        name, found = self.candidates()
        if self.pick.trial is not None:
            chosen = [c for c in found if c.trial == self.pick.trial]
            if not chosen:
                raise UserError(
                    f"--trial {self.pick.trial} is not a scored trial of study {name} "
                    f"(trials {found[0].trial}..{found[-1].trial}); "
                    "pick one listed in summary.json search.pareto"
                )
            return chosen[0]
        if self.pick.max_flops is not None:
            cap = resolve_flops(self.pick.max_flops, self.full.flops)
            under = [c for c in found if c.flops <= cap]
            if not under:
                raise UserError(
                    f"--max-flops {self.pick.max_flops:g} ({cap:,.0f} FLOPs) is below every scored candidate "
                    f"(smallest {min(c.flops for c in found):,}); raise it"
                )
            return min(under, key=_rank)
        tuned = self.summary().get("finetune", {}).get("tune")
        if tuned is not None and tuned["study"] == name:  # the Tune survivor, not the best proxy, won
            config = tuple(self.summary()["finetune"]["config"])
        else:
            config = tuple(self.summary()["search"]["best"]["config"])
        match = [c for c in found if c.config == config]
        if not match:
            raise UserError(f"no finished search in {self.dir}; run `run_search.py search --run-dir {self.dir}` first")
        return match[0]

    def winner_model(self, config: ss.Config) -> torch.nn.Module:
        """The winner before fine-tuning: generated weights with re-estimated BN, the trained
        network pruned to its widths, or a fresh init."""
        if self.cfg.finetune.init == "inherit":
            return self.scorer().subnet(config).to(self.device)
        if self.cfg.finetune.init == "filter":
            return crop(self.space, trained.ordered(self), config).to(self.device)
        torch.manual_seed(self.cfg.seed)
        return ss.build_subnet(self.space, config).to(self.device)

    def _initial_weights(self, config: ss.Config, cache: dict[str, Any]) -> dict[str, torch.Tensor] | None:
        """A Tune trial's starting weights (None: a fresh init); `cache` keeps the scorer or the ordered network."""
        if self.cfg.finetune.init == "scratch":
            return None
        if "source" not in cache:
            cache["source"] = self.scorer() if self.cfg.finetune.init == "inherit" else trained.ordered(self)
        if self.cfg.finetune.init == "inherit":
            return cache["source"].subnet(config).cpu().state_dict()
        return crop(self.space, cache["source"], config).cpu().state_dict()

    def finetune(self) -> dict[str, Any]:
        """Train the winner (from inherited weights or from scratch) and measure test top-1.

        With `finetune.top_k` > 1 (and no --trial / --max-flops) the k best candidates are
        fine-tuned as Ray Tune trials under ASHA instead, and the survivor is the winner.
        """
        picked = self.pick.trial is not None or self.pick.max_flops is not None
        if self.cfg.finetune.top_k > 1 and not picked:
            return self._finetune_top_k()
        config, data = self.winner(), self.prepared
        if self.cfg.finetune.init == "inherit":
            self._require_pruningnet()
        if self.cfg.finetune.init == "filter":
            trained.require(self, "finetune.init=filter")
        self._begin()
        found = teachers.teachers(self)  # the base network must be trained; an assistant is trained here
        model = self.winner_model(config)
        path = self.finetune_path(config)
        result = train(
            model, lambda x, step: model(x), data.train, data.normalizer, self.cfg.finetune, seed=self.cfg.seed,
            checkpoint=path, flip=self.cfg.data.flip, device=self.device, desc="finetune", progress=self.cfg.progress,
            meta=self.meta(FINETUNE, config), loss_fn=teachers.loss_for(self, found), amp=self.amp,
        )  # fmt: skip
        cost = ss.count(self.space, config)
        student_top1 = self.test_top1(model)
        summary = {
            "top1": student_top1,
            "flops": cost.flops,
            "params": cost.params,
            "config": list(config),
            "steps": result.steps,
            "init": self.cfg.finetune.init,
            "checkpoint": str(path.relative_to(self.dir)),
        }
        self._update_summary("finetune", summary)
        if found is not None:
            self._update_summary("distill", {**teachers.report(self, found, student_top1), "config": list(config)})
        return summary

    def _finetune_top_k(self) -> dict[str, Any]:
        """The k best candidates of the last search as Tune trials under ASHA; the survivor wins."""
        from metaprune import tune  # imports Ray: only for this stage

        name, found = self.candidates()
        ranked = sorted(found, key=_rank)
        chosen = list({c.config: c for c in reversed(ranked)}.values())[::-1][: self.cfg.finetune.top_k]
        if self.cfg.finetune.init == "filter":
            trained.require(self, "finetune.init=filter")
        self._begin()
        found_teachers = teachers.teachers(self)
        cache: dict[str, Any] = {}
        candidates = [tune.Candidate(f"trial-{c.trial}", c.config, self._initial_weights(c.config, cache)) for c in chosen]
        data = self.prepared
        spec = tune.TuneSpec(
            self.space.to_dict(), data.train, data.val, data.normalizer, self.cfg.finetune, self.cfg.data.flip, self.cfg.seed,
            "cpu" if self.device.type == "cpu" else "auto", self.cfg.score.eval_batch_size, amp=self.amp,
        )  # fmt: skip
        if found_teachers is not None:  # each trial distills from the same teachers, shipped as torch.export programs
            example = data.normalizer(data.train.images[:2])
            spec.teachers = [to_program(model, example) for model in found_teachers.models]
            spec.teacher_weights, spec.distill = found_teachers.weights, self.cfg.distill
        identity = {**self.meta(FINETUNE, ()), "study": name, "candidates": [list(c.config) for c in chosen],
                    "asha": [self.cfg.finetune.grace_epochs, self.cfg.finetune.reduction_factor]}  # fmt: skip
        digest = hashlib.sha1(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]
        try:
            outcomes = tune.tune_finetune(
                candidates, spec, self.dir / "tune" / digest, grace_epochs=self.cfg.finetune.grace_epochs,
                reduction_factor=self.cfg.finetune.reduction_factor, progress=self.cfg.progress,
            )  # fmt: skip
        except JoinError as exc:  # RAY_ADDRESS names a cluster this driver cannot join
            raise UserError(str(exc)) from None
        survivor = next(o for o in outcomes if o.survivor)
        path = self.finetune_path(survivor.config)  # export finds the survivor where it finds any fine-tune
        atomic_write_bytes(path, survivor.checkpoint.read_bytes())
        model = ss.build_subnet(self.space, survivor.config).to(self.device)
        _load_weights(model, load_trained_weights(path), path)
        cost = ss.count(self.space, survivor.config)
        student_top1 = self.test_top1(model)
        summary = {
            "top1": student_top1,
            "flops": cost.flops,
            "params": cost.params,
            "config": list(survivor.config),
            "init": self.cfg.finetune.init,
            "checkpoint": str(path.relative_to(self.dir)),
            "tune": {
                "study": name,
                "survivor": survivor.name,
                "trials": [
                    {
                        "name": o.name,
                        "config": list(o.config),
                        "epochs": o.epochs,
                        "val_top1": o.val_top1,
                        "stopped_early": o.stopped_early,
                    }  # fmt: skip
                    for o in outcomes
                ],
            },
        }
        self._update_summary("finetune", summary)
        if found_teachers is not None:
            distilled = teachers.report(self, found_teachers, student_top1)
            self._update_summary("distill", {**distilled, "config": summary["config"]})
        return summary

    def chosen_model(self) -> Chosen:
        """The chosen point (`pick`, else the winner) as a model: its fine-tuned weights when a
        fine-tune of it finished, else its generated weights with re-estimated BN."""
        chosen = self.choice()
        path = self.finetune_path(chosen.config)
        weights = load_trained_weights(path) if path.exists() else None  # an unfinished fine-tune is refused
        if weights is None:
            return Chosen(chosen, self.scorer().subnet(chosen.config).cpu().eval(), "generated", None)
        model: torch.nn.Module = ss.build_subnet(self.space, chosen.config)
        _load_weights(model, weights, path)
        return Chosen(chosen, model.eval(), "finetuned", path)

    @property
    def picked(self) -> bool:
        return self.pick.trial is not None or self.pick.max_flops is not None

    def quantize(self) -> dict[str, Any]:
        """INT8 (ONNX Runtime, static QDQ; QAT if it loses too much), half precision, low-bit weights:
        accuracy, size and measured latency of each beside FP32."""
        from metaprune import shipping

        return shipping.quantize(self)

    def export(self) -> dict[str, Any]:
        """Write the chosen point as architecture JSON + weights, ONNX, a torch.export program and
        (after `quantize`) the INT8 ONNX; each is reloaded and compared. A picked point goes to export/trial-N/."""
        from metaprune import shipping

        return shipping.export(self)

    def needs_base(self) -> bool:
        """Does the pipeline train (or, with base.weights, measure) the full network first."""
        return (
            self.cfg.distill.teacher == "base"
            or self.cfg.pruningnet.init in ("auto", "trained")
            or self.cfg.finetune.init == "filter"
            or bool(self.cfg.base.weights)
        )

    def pipeline(self) -> dict[str, Any]:
        if self.needs_base():
            self.train_base()
        self.train_pruningnet()
        self.search()
        self.finetune()
        self.quantize()
        self.export()
        return self.summary()


def _drop_unset(full: dict[str, Any]) -> None:
    """Leave out settings that are at the value that means "as before they existed", so that runs
    made before them keep their identity and resume."""
    for section, key, unset in (("data", "mean", None), ("data", "std", None), ("space", "channel_multiple", 1)):
        if full[section].get(key, unset) == unset:
            full[section].pop(key, None)


def _conflict(path: Path | str, changed: list[str], redo: list[str]) -> NoReturn:
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


def _rank(candidate: Candidate) -> tuple[float, int, int]:
    """Best first: higher proxy top-1, then fewer FLOPs, then the earlier trial."""
    return (-candidate.proxy_top1, candidate.flops, candidate.trial)


def _point(candidate: Candidate) -> dict[str, Any]:
    return {
        "trial": candidate.trial,
        "config": list(candidate.config),
        "flops": candidate.flops,
        "params": candidate.params,
        "proxy_top1": candidate.proxy_top1,
    }


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
