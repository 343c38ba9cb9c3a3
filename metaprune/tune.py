"""Fine-tune the best few candidates as Ray Tune trials under successive halving (ASHA).

Each candidate is one trial that trains one epoch at a time with `metaprune.train.train` (the same
deterministic, resumable loop as every other stage), measures validation top-1 and reports it
with a checkpoint. ASHA compares trials at epochs grace, grace * rf, grace * rf^2, ... and stops
those below the best 1/rf of the trials that reached the same epoch before them; the rest train
to `OptimConfig.epochs`, with the learning-rate schedule of the full run.

Restore: the experiment lives in one directory. Calling `tune_finetune` again with the same
arguments after the driver died (even by kill -9) resumes it there: finished trials keep their
results, interrupted ones continue from their last epoch, and a finished experiment is read back
without training. Tune does not save the scheduler's state, so every trial reports its whole
history and `_DurableASHA` replays it into the rungs when Tune re-adds a restored trial. Tune's
record of trial statuses is saved at most a second apart (TUNE_GLOBAL_CHECKPOINT_S): a trial
that ended in the last second before a kill is resumed, and either has nothing left to train or,
if ASHA had just stopped it, trains on until the rebuilt rungs stop it again.

This module imports Ray: import it where the stage runs, not at package import time.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune
from ray.tune.schedulers import ASHAScheduler

from metaprune.data import ImageData, Normalizer
from metaprune.distill import DistillConfig, DistillLoss, from_program
from metaprune.errors import UserError
from metaprune.io import atomic_write_json, safe_torch_load
from metaprune.score import fixed_batches, top1
from metaprune.train import OptimConfig, train
from nas.ray_cluster import join
from nas.stops import stop_point
from search_spaces import Config, SearchSpace, build_subnet

METRIC = "val_top1"  # validation top-1 (%) after the reported epoch
TIME_ATTR = "epoch"  # epochs trained so far: ASHA's clock
HISTORY = "val_top1_history"  # val top-1 after every epoch so far (replayed into ASHA on restore)
WEIGHTS_FILE = "train.pt"  # the training checkpoint inside each Tune checkpoint directory
GUARD_FILE = "metaprune_tune.json"  # what the experiment in a storage directory was started with
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass
class Candidate:
    name: str  # unique, filesystem-safe: names the Tune trial and its directory
    config: Config  # one choice index per gene of the space
    initial: dict[str, torch.Tensor] | None = None  # starting weights (inherit); None: fresh seeded init (scratch)


@dataclass
class TuneSpec:
    """Everything a trial needs, as plain data: it travels through Ray's object store once."""

    space: dict[str, Any]  # SearchSpace.to_dict()
    train: ImageData  # uint8 training split (augmented as in every other stage)
    validation: ImageData  # uint8 split scored after every epoch: ASHA's metric
    normalizer: Normalizer
    optim: OptimConfig  # epochs = ASHA's max_t; the schedule spans all of them
    flip: bool = False  # horizontal flips in augmentation
    seed: int = 0  # batch order, augmentation and scratch init: a trial is reproducible
    device: str = "auto"  # auto: one GPU per trial where the cluster has GPUs | cpu
    eval_batch_size: int = 500  # images per validation batch
    teachers: list[bytes] = field(default_factory=list)  # distillation: torch.export programs (metaprune.distill.to_program)
    teacher_weights: list[float] | None = None  # of the teachers' soft targets (None: equal)
    distill: DistillConfig | None = None  # alpha and temperature of distillation (None: plain cross-entropy)
    amp: bool = False  # bf16 mixed precision when a trial trains on a GPU


@dataclass
class TuneOutcome:
    name: str  # the candidate's name
    config: Config
    epochs: int  # epochs trained: spec.optim.epochs, or fewer if ASHA stopped it
    val_top1: float  # validation top-1 (%) after its last epoch
    history: list[float]  # validation top-1 after each epoch
    stopped_early: bool  # ASHA stopped it before the last epoch
    checkpoint: Path  # training checkpoint after its last epoch; its "model" entry is the state dict
    survivor: bool = False  # the best val_top1 among the trials trained to the last epoch

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The trained weights, for `build_subnet(space, config).load_state_dict`."""
        state = safe_torch_load(self.checkpoint)
        if not isinstance(state, dict) or "model" not in state:
            raise UserError(f"checkpoint {self.checkpoint} holds no model weights; rerun the tune stage in a new directory")
        weights: dict[str, torch.Tensor] = state["model"]
        return weights


def tune_finetune(
    candidates: list[Candidate],
    spec: TuneSpec,
    storage_dir: Path,
    *,
    grace_epochs: int = 1,
    reduction_factor: int = 2,
    max_concurrent_trials: int | None = None,
    progress: bool = False,
) -> list[TuneOutcome]:
    """Fine-tune every candidate under ASHA in `storage_dir`; outcomes in the order of `candidates`.

    Resumes the experiment already in `storage_dir` (after a kill, run the same call again); one
    started with other candidates or settings is refused. `max_concurrent_trials` defaults to as
    many as the cluster's GPUs (or CPUs) allow. Starts a local Ray quietly unless Ray is running or
    RAY_ADDRESS names a cluster, and stops only a Ray it started.
    """
    _check_arguments(candidates, spec, grace_epochs, reduction_factor)
    storage_dir = Path(storage_dir).resolve()
    _guard_storage(storage_dir, _fingerprint(candidates, spec, grace_epochs, reduction_factor))
    started = join(None, log_to_driver=progress, logging_level=logging.INFO if progress else logging.ERROR)
    try:
        trainable, slots = _trainable(candidates, spec)
        tuner = _tuner(
            trainable, candidates, spec, storage_dir, grace_epochs, reduction_factor, max_concurrent_trials or slots, progress
        )
        with _environment(_fit_environment(progress)):
            results = tuner.fit()
        return _outcomes(results, candidates, spec.optim.epochs)
    finally:
        if started:
            ray.shutdown()


def _distill_loss(spec: TuneSpec, device: str) -> DistillLoss | None:
    if spec.distill is None or not spec.teachers:
        return None
    models = [from_program(data).to(device) for data in spec.teachers]
    return DistillLoss(models, spec.distill, spec.teacher_weights, spec.optim.label_smoothing)


def _check_arguments(candidates: list[Candidate], spec: TuneSpec, grace_epochs: int, reduction_factor: int) -> None:
    names = [c.name for c in candidates]
    if not candidates or len(set(names)) != len(names):
        raise UserError(f"candidates need distinct names, but got {names}")
    if bad := [n for n in names if not _SAFE_NAME.match(n)]:
        raise UserError(f"candidate names must be letters, digits, '_', '.' or '-' (they name directories), but got {bad}")
    if not 1 <= grace_epochs <= spec.optim.epochs:
        raise UserError(f"1 <= grace_epochs <= epochs must hold, but got grace_epochs={grace_epochs}, epochs={spec.optim.epochs}")
    if reduction_factor < 2:
        raise UserError(f"reduction_factor >= 2 must hold, but got {reduction_factor}")
    if len(spec.train) < spec.optim.batch_size:
        raise UserError(f"batch_size <= training images must hold, but got {spec.optim.batch_size} > {len(spec.train)}")
    if spec.device not in ("auto", "cpu"):
        raise UserError(f"device must be 'auto' or 'cpu', but got {spec.device!r}")


# ---------------------------------------------------------------- the trial (runs in a Ray worker)


def _run_trial(
    config: dict[str, Any], spec: TuneSpec, candidates: dict[str, Candidate], initial: dict[str, Any], threads: int
) -> None:
    """Train one candidate epoch by epoch, reporting val top-1 with a checkpoint after each.

    `candidates` come without their weights: `initial` maps each name to an object-store reference
    to them (or None), so that a trial fetches only its own, and only when it starts from scratch.
    """
    torch.set_num_threads(threads)
    candidate = candidates[config["candidate"]]
    stop_point("trial", at=list(candidates).index(candidate.name) + 1)  # a test holds one candidate here
    device = "cuda" if spec.device != "cpu" and torch.cuda.is_available() else "cpu"
    validation = fixed_batches(spec.validation, spec.normalizer, spec.eval_batch_size, device)
    steps_per_epoch = len(spec.train) // spec.optim.batch_size
    with tempfile.TemporaryDirectory(prefix="metaprune-tune-") as work:
        history = _resume_into(Path(work))  # the weights then come from the checkpoint
        weights = None if history or initial[candidate.name] is None else ray.get(initial[candidate.name])
        model = _initial_model(SearchSpace.from_dict(spec.space), candidate.config, weights, spec.seed).to(device)
        loss_fn = _distill_loss(spec, device)
        for epoch in range(len(history) + 1, spec.optim.epochs + 1):
            train(
                model, lambda x, step: model(x), spec.train, spec.normalizer, spec.optim, seed=spec.seed,
                checkpoint=Path(work) / WEIGHTS_FILE, flip=spec.flip, device=device, progress=False,
                meta={"candidate": candidate.name, "config": list(candidate.config)}, until_step=epoch * steps_per_epoch,
                loss_fn=loss_fn, amp=spec.amp,
            )  # fmt: skip
            history.append(top1(model, validation))
            atomic_write_json(Path(work) / "history.json", history)
            metrics = {TIME_ATTR: epoch, METRIC: history[-1], HISTORY: list(history)}
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(work))


def _initial_model(space: SearchSpace, config: Config, weights: dict[str, torch.Tensor] | None, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)  # scratch init as the pipeline's winner_model does it
    model = build_subnet(space, config)
    if weights is not None:
        model.load_state_dict(weights)
    return model


def _resume_into(work: Path) -> list[float]:
    """Copy the trial's last Tune checkpoint (if restored) into `work`; the val top-1 history so far."""
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return []
    with checkpoint.as_directory() as saved:
        for name in (WEIGHTS_FILE, "history.json"):
            shutil.copyfile(Path(saved) / name, work / name)
    history: list[float] = json.loads((work / "history.json").read_text())
    return history


# ---------------------------------------------------------------- the driver


class _DurableASHA(ASHAScheduler):
    """ASHA whose rungs survive a restore.

    Tune saves trials but not scheduler state; on restore it re-adds every trial (finished ones
    too) through `on_trial_add`. Replaying each trial's reported history here rebuilds the rungs,
    so a resumed trial is compared with every trial that passed a rung before the kill.
    """

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        super().on_trial_add(tune_controller, trial)
        bracket = self._trial_info[trial.trial_id]
        for epoch, value in enumerate((trial.last_result or {}).get(HISTORY, []), start=1):
            bracket.on_result(trial, epoch, self._metric_op * value)


def _fit_environment(progress: bool) -> dict[str, str]:
    """Tune settings read from the environment while the experiment runs."""
    # Snapshot the experiment state (trial statuses, last results) at most a second apart instead
    # of every 10 s or more, so that a trial finished before a kill is rarely trained again.
    variables = {"TUNE_GLOBAL_CHECKPOINT_S": os.environ.get("TUNE_GLOBAL_CHECKPOINT_S", "1")}
    if not progress:
        variables["RAY_AIR_NEW_OUTPUT"] = "0"  # the new output engine prints its header even at verbose=0
    return variables


@contextlib.contextmanager
def _environment(variables: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the duration of a block, then restore them."""
    saved = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _trial_dirname(trial: Any) -> str:
    return str(trial.config["candidate"])


def _trainable(candidates: list[Candidate], spec: TuneSpec) -> tuple[Any, int]:
    """The trial function with data in the object store and its resources; how many fit at once."""
    resources = ray.cluster_resources()
    cpus, gpus = int(resources.get("CPU", 1)), int(resources.get("GPU", 0))
    use_gpus = gpus > 0 and spec.device != "cpu"
    slots = min(gpus, len(candidates)) if use_gpus else max(1, min(cpus, len(candidates)))
    cpus_per_trial = max(1, cpus // slots)
    bound = tune.with_parameters(
        _run_trial,
        spec=spec,
        candidates={c.name: replace(c, initial=None) for c in candidates},
        initial={c.name: None if c.initial is None else ray.put(c.initial) for c in candidates},
        threads=cpus_per_trial,
    )
    return tune.with_resources(bound, {"cpu": float(cpus_per_trial), "gpu": float(use_gpus)}), slots


def _tuner(
    trainable: Any,
    candidates: list[Candidate],
    spec: TuneSpec,
    storage_dir: Path,
    grace_epochs: int,
    reduction_factor: int,
    max_concurrent: int,
    progress: bool,
) -> tune.Tuner:
    """Restore the experiment in `storage_dir` if one was started there, else a new one."""
    if _restorable(storage_dir):
        return tune.Tuner.restore(str(storage_dir), trainable, resume_unfinished=True, resume_errored=True)
    scheduler = _DurableASHA(
        time_attr=TIME_ATTR, metric=METRIC, mode="max", max_t=spec.optim.epochs,
        grace_period=grace_epochs, reduction_factor=reduction_factor,
    )  # fmt: skip
    return tune.Tuner(
        trainable,
        param_space={"candidate": tune.grid_search([c.name for c in candidates])},
        tune_config=tune.TuneConfig(
            scheduler=scheduler, max_concurrent_trials=max_concurrent, trial_dirname_creator=_trial_dirname, reuse_actors=True
        ),
        run_config=tune.RunConfig(
            name=storage_dir.name,
            storage_path=str(storage_dir.parent),
            verbose=1 if progress else 0,
            # Keep every checkpoint: with num_to_keep, Tune deletes old ones before the experiment state
            # naming the newest is saved, and a kill in between leaves a trial nothing to resume from.
            checkpoint_config=tune.CheckpointConfig(num_to_keep=None),
            failure_config=tune.FailureConfig(max_failures=0),
        ),
    )


def _restorable(storage_dir: Path) -> bool:
    """Whether Tune saved an experiment there (a kill before its first state file leaves none)."""
    states = list(storage_dir.glob("experiment_state-*.json"))  # trial statuses, last results, checkpoints
    if not tune.Tuner.can_restore(storage_dir) or not states:
        return False
    for path in states:  # Tune rewrites it in place: after a kill mid-write, Tune would log the
        try:  # error and go on to start trials without a config
            json.loads(path.read_text())
        except ValueError:
            raise UserError(
                f"Tune's saved state {path} is torn (the driver was killed while Tune wrote it), so the experiment "
                f"cannot be resumed; delete {storage_dir} to fine-tune again"
            ) from None
    return True


def _outcomes(results: Any, candidates: list[Candidate], max_t: int) -> list[TuneOutcome]:
    if errors := [f"{(r.config or {}).get('candidate', r.path)}: {_last_line(r.error)}" for r in results if r.error]:
        raise UserError(f"{len(errors)} fine-tuning trial(s) failed ({'; '.join(errors)}); run again to resume them")
    by_name = {r.config["candidate"]: r for r in results}
    if missing := [c.name for c in candidates if c.name not in by_name or _unreported(by_name[c.name])]:
        raise UserError(f"trials {missing} reported no epoch; run again to resume them")
    outcomes = [_outcome(by_name[c.name], c, max_t) for c in candidates]
    finished = [o for o in outcomes if o.epochs == max_t]
    if finished:
        max(finished, key=lambda o: o.val_top1).survivor = True  # ties: the first candidate
    return outcomes


def _last_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[-1] if lines else type(error).__name__


def _unreported(result: Any) -> bool:
    return result.checkpoint is None or TIME_ATTR not in (result.metrics or {})


def _outcome(result: Any, candidate: Candidate, max_t: int) -> TuneOutcome:
    epochs = int(result.metrics[TIME_ATTR])
    return TuneOutcome(
        name=candidate.name,
        config=tuple(candidate.config),
        epochs=epochs,
        val_top1=float(result.metrics[METRIC]),
        history=[float(v) for v in result.metrics[HISTORY]],
        stopped_early=epochs < max_t,
        checkpoint=Path(result.checkpoint.path) / WEIGHTS_FILE,
    )


# ---------------------------------------------------------------- one experiment per directory


def _fingerprint(candidates: list[Candidate], spec: TuneSpec, grace_epochs: int, reduction_factor: int) -> dict[str, Any]:
    """What the outcomes depend on: the candidates, their initial weights, data and settings."""
    return {
        "candidates": [
            {"name": c.name, "config": list(c.config), "initial": None if c.initial is None else _digest(c.initial)}
            for c in candidates
        ],
        "space": _digest(spec.space),
        "data": _digest(
            {"train": [spec.train.images, spec.train.labels], "val": [spec.validation.images, spec.validation.labels]}
        ),
        "normalizer": asdict(spec.normalizer),
        "optim": asdict(spec.optim),
        "flip": spec.flip,
        "seed": spec.seed,
        "teachers": [hashlib.sha1(data).hexdigest() for data in spec.teachers],
        "teacher_weights": spec.teacher_weights,
        "distill": None if spec.distill is None else asdict(spec.distill),
        "amp": spec.amp,
        "grace_epochs": grace_epochs,
        "reduction_factor": reduction_factor,
    }


def _digest(value: Any) -> str:
    sha = hashlib.sha1()

    def feed(item: Any) -> None:
        if isinstance(item, torch.Tensor):
            sha.update(f"{item.dtype}{tuple(item.shape)}".encode())
            sha.update(item.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(item, dict):
            for key in sorted(item):
                sha.update(str(key).encode())
                feed(item[key])
        elif isinstance(item, list | tuple):
            for element in item:
                feed(element)
        else:
            sha.update(json.dumps(item).encode())

    feed(value)
    return sha.hexdigest()[:16]


def _guard_storage(storage_dir: Path, fingerprint: dict[str, Any]) -> None:
    """Record what the experiment is started with; refuse to resume it with anything else."""
    path = storage_dir / GUARD_FILE
    if path.exists():
        stored = json.loads(path.read_text())
        if stored != fingerprint:
            changed = sorted(key for key in fingerprint.keys() | stored.keys() if stored.get(key) != fingerprint.get(key))
            raise UserError(
                f"{storage_dir} holds a fine-tuning experiment started with other {', '.join(changed)}; "
                "use the original settings or another directory"
            )
        return
    if storage_dir.exists() and any(storage_dir.iterdir()):
        raise UserError(f"{storage_dir} is not empty and holds no metaprune fine-tuning experiment; choose another directory")
    atomic_write_json(path, fingerprint)
