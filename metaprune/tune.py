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

The trial itself is `metaprune.tune_trial`, the one-experiment-per-directory guard
`metaprune.tune_storage`; this module is the driver, and keeps their names under its import path.

This module imports Ray: import it where the stage runs, not at package import time.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune
from ray.tune.schedulers import ASHAScheduler

from metaprune.errors import UserError
from metaprune.io import safe_torch_load
from metaprune.tune_storage import GUARD_FILE, fingerprint, guard_storage, restorable
from metaprune.tune_trial import (
    HISTORY,
    METRIC,
    TIME_ATTR,
    WEIGHTS_FILE,
    TrialStart,
    TuneSpec,
    run_trial,
    trial_device,
)
from nas.ray_cluster import join
from search_spaces import Config

Candidate = TrialStart  # the old name, until its callers switch (metaprune.pipeline)

__all__ = [
    "GUARD_FILE",
    "HISTORY",
    "METRIC",
    "TIME_ATTR",
    "WEIGHTS_FILE",
    "Candidate",
    "TrialStart",
    "TuneOutcome",
    "TuneSpec",
    "trial_device",
    "trial_resources",
    "tune_finetune",
]

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


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
    candidates: list[TrialStart],
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
    guard_storage(storage_dir, fingerprint(candidates, spec, grace_epochs, reduction_factor))
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


def _check_arguments(candidates: list[TrialStart], spec: TuneSpec, grace_epochs: int, reduction_factor: int) -> None:
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


def trial_resources(cluster: dict[str, float], device: str, trials: int) -> tuple[int, int, int]:
    """How many of `trials` run at once on a cluster with `cluster` resources (`ray.cluster_resources()`),
    and the CPUs and GPUs each asks for: one GPU each wherever the cluster has GPUs, unless `device`
    (`TuneSpec.device`) is cpu; the cluster's CPUs shared out between the trials that run at once."""
    cpus, gpus = int(cluster.get("CPU", 1)), int(cluster.get("GPU", 0))
    use_gpus = gpus > 0 and device != "cpu"
    slots = min(gpus, trials) if use_gpus else max(1, min(cpus, trials))
    return slots, max(1, cpus // slots), int(use_gpus)


def _trainable(candidates: list[TrialStart], spec: TuneSpec) -> tuple[Any, int]:
    """The trial function with data in the object store and its resources; how many fit at once."""
    slots, cpus_per_trial, gpus_per_trial = trial_resources(ray.cluster_resources(), spec.device, len(candidates))
    bound = tune.with_parameters(
        run_trial,
        spec=spec,
        candidates={c.name: replace(c, initial=None) for c in candidates},
        initial={c.name: None if c.initial is None else ray.put(c.initial) for c in candidates},
        threads=cpus_per_trial,
    )
    return tune.with_resources(bound, {"cpu": float(cpus_per_trial), "gpu": float(gpus_per_trial)}), slots


def _tuner(
    trainable: Any,
    candidates: list[TrialStart],
    spec: TuneSpec,
    storage_dir: Path,
    grace_epochs: int,
    reduction_factor: int,
    max_concurrent: int,
    progress: bool,
) -> tune.Tuner:
    """Restore the experiment in `storage_dir` if one was started there, else a new one."""
    if restorable(storage_dir):
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


def _outcomes(results: Any, candidates: list[TrialStart], max_t: int) -> list[TuneOutcome]:
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


def _outcome(result: Any, candidate: TrialStart, max_t: int) -> TuneOutcome:
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
