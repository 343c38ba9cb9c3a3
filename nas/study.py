"""The search record: every candidate a search proposes is a trial of an Optuna study.

By default the studies live in Optuna's journal file format in the run directory (`study.journal`,
no server; it opens in optuna-dashboard), or in any Optuna storage URL (PostgreSQL when several
drivers share a server). Only the driver writes. A run keeps one study per searcher, window and
search settings; the scores of all its studies form one cache, so no configuration is ever scored
twice in a run, whichever searcher or budget asks for it again.

A trial's user attributes say what happened to it: `status` is `scored` (proxy top-1 measured),
`reused` (measured earlier, in this study or another of the run), or `infeasible` (outside the
FLOPs window: recorded with Optuna's constraint mechanism, never scored). `flops` and `params`
are set at ask time, `node` (who scored it) at tell time.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, IntDistribution
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from nas.storage import Storage
from search_spaces import Config, GeneSpace

SCORED, REUSED, INFEASIBLE = "scored", "reused", "infeasible"

optuna.logging.set_verbosity(optuna.logging.WARNING)


class MetaMismatch(ValueError):
    """A stored artifact was made with other settings than the current ones."""

    def __init__(self, path: Path | str, changed: list[str]) -> None:
        self.path, self.changed = path, changed
        super().__init__(f"{path} was made with other settings ({', '.join(changed[:4])})")


def changed_keys(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested dicts."""
    keys: list[str] = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            keys += changed_keys(a, b, f"{prefix}{key}.")
        elif a != b:
            keys.append(f"{prefix}{key}")
    return keys


@dataclass(frozen=True)
class Candidate:
    """A measured configuration: `trial` is its number in `study` (scored there, or reused there)."""

    trial: int
    config: Config
    flops: int
    params: int
    proxy_top1: float
    study: str = ""

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["config"] = list(self.config)
        return data


def distributions(space: GeneSpace) -> dict[str, BaseDistribution]:
    """One integer parameter per gene: its choice index."""
    return {gene.name: IntDistribution(0, len(gene.choices) - 1) for gene in space.genes}


def trial_config(space: GeneSpace, trial: FrozenTrial) -> Config:
    return tuple(int(trial.params[gene.name]) for gene in space.genes)


def run_studies(storage: Storage, prefix: str, meta: dict[str, Any]) -> list[optuna.Study]:
    """The studies of this run (names starting with `prefix`); one made under other settings is refused."""
    studies = []
    for name in storage.study_names():
        if not name.startswith(prefix):
            continue
        study = optuna.load_study(study_name=name, storage=storage.optuna)
        stored = study.user_attrs.get("meta")
        if stored is not None and stored != meta:
            raise MetaMismatch(f"{storage.location} (study {name})", sorted(changed_keys(stored, meta)))
        studies.append(study)
    return studies


def scored_candidates(storage: Storage, space: GeneSpace, prefix: str, meta: dict[str, Any]) -> Iterator[Candidate]:
    """Candidates measured in every study of this run."""
    for study in run_studies(storage, prefix, meta):
        name = study.study_name
        for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            if trial.user_attrs.get("status") == SCORED:
                yield candidate_of(space, trial, name)


def candidate_of(space: GeneSpace, trial: FrozenTrial, study: str) -> Candidate:
    assert trial.values is not None
    return Candidate(
        trial.number, trial_config(space, trial), int(trial.user_attrs["flops"]), int(trial.user_attrs["params"]),
        float(trial.values[0]), study,
    )  # fmt: skip


@dataclass
class Pending:
    """A trial of a round: to be scored unless `known`, infeasible, or already told (`trial` None:
    a replayed searcher asked for a configuration this study finished before a crash)."""

    trial: optuna.Trial | None
    config: Config
    flops: int
    params: int
    feasible: bool
    known: Candidate | None  # measured before: told with these values, not scored again


class StudyRecord:
    """One search's study, with the run's score cache; asks, tells and flushes trials."""

    def __init__(
        self, storage: Storage, name: str, prefix: str, space: GeneSpace, meta: dict[str, Any],
        directions: list[StudyDirection], attrs: dict[str, Any], window: tuple[float, float],
        latency: Callable[[Config], float] | None = None, max_latency_ms: float = 0.0,
    ) -> None:  # fmt: skip
        self.storage, self.name, self.space, self.window = storage, name, space, window
        self.latency, self.max_latency_ms = latency, max_latency_ms  # a latency budget: predicted ms per config
        self.cache: dict[Config, Candidate] = {}
        for candidate in scored_candidates(storage, space, prefix, meta):
            self.cache.setdefault(candidate.config, candidate)
        self.study = optuna.create_study(storage=storage.optuna, study_name=name, directions=directions, load_if_exists=True)
        if "meta" not in self.study.user_attrs:
            self.study.set_user_attr("meta", meta)
            for key, value in attrs.items():
                self.study.set_user_attr(key, value)
            storage.flush()
        self.distributions = distributions(space)
        self.random = optuna.samplers.RandomSampler(seed=0)  # never consulted: every value is fixed
        self._fail_unfinished_asks()
        self.by_config = {
            trial_config(space, t): t for t in self.trials() if t.state in (TrialState.COMPLETE, TrialState.RUNNING)
        }

    def _fail_unfinished_asks(self) -> None:
        """An ask writes several records (the trial, each gene, constraints, costs); a database
        commits each at once and a torn journal append can keep only some. A trial left WAITING,
        or RUNNING without all of them, cannot be resumed: mark it FAIL (its configuration is asked
        again as a new trial)."""
        broken = []
        for trial in self.trials((TrialState.WAITING, TrialState.RUNNING)):
            whole = (
                trial.state == TrialState.RUNNING
                and set(self.distributions) <= set(trial.params)
                and {"flops", "params"} <= set(trial.user_attrs)
                and {"flops_over_budget", "flops_under_minimum"} <= set(trial.constraints)
            )
            if not whole:
                broken.append(trial)
        for trial in broken:
            self.study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        if broken:
            self.storage.flush()

    # -- reading ------------------------------------------------------------------------------------
    def trials(self, states: tuple[TrialState, ...] | None = None) -> list[FrozenTrial]:
        return self.study.get_trials(deepcopy=False, states=states)

    def stale(self) -> list[FrozenTrial]:
        """Trials left RUNNING by a driver that died: asked, never told."""
        return self.trials((TrialState.RUNNING,))

    def candidates(self) -> list[Candidate]:
        """Every measured candidate of this study (scored here or reused from another study)."""
        found = []
        for trial in self.trials((TrialState.COMPLETE,)):
            if trial.user_attrs.get("status") in (SCORED, REUSED):
                found.append(candidate_of(self.space, trial, self.name))
        return found

    # -- asking -------------------------------------------------------------------------------------
    def pending(self, trial: optuna.Trial, config: Config, fresh: bool = True) -> Pending:
        """Set the constraints and costs of a new trial (a resumed one has them) and see whether it is known."""
        from search_spaces import count

        cost = count(self.space, config)
        low, high = self.window
        over, under = cost.flops - high, low - cost.flops
        late = self.latency(config) - self.max_latency_ms if self.latency is not None else 0.0
        if fresh:
            trial.set_constraint("flops_over_budget", over)
            trial.set_constraint("flops_under_minimum", under)
            if self.latency is not None:
                trial.set_constraint("latency_over_budget", late)
                trial.set_user_attr("latency_ms", late + self.max_latency_ms)
            trial.set_user_attr("flops", cost.flops)
            trial.set_user_attr("params", cost.params)
        feasible = over <= 0 and under <= 0 and late <= 0
        return Pending(trial, config, cost.flops, cost.params, feasible, self.cache.get(config))

    def ask_config(self, config: Config) -> Pending:
        """A trial with the given configuration (the evolutionary and random searchers).

        Replaying after a crash, a configuration this study finished is answered from it, and one
        left RUNNING is taken up again (to be scored once), so no trial is added twice.
        """
        existing = self.by_config.get(config)
        if existing is not None and existing.state == TrialState.RUNNING:
            return self.resume(existing)
        if existing is not None:
            done = self.study._storage.get_trial(existing._trial_id)
            known = candidate_of(self.space, done, self.name) if done.user_attrs.get("status") != INFEASIBLE else None
            flops, params = int(done.user_attrs["flops"]), int(done.user_attrs["params"])
            return Pending(None, config, flops, params, known is not None, known)
        # a sampler that answers with the given values: no WAITING trial (enqueue_trial) to be left behind
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self.study.sampler = optuna.samplers.PartialFixedSampler(dict(zip(self.distributions, config)), self.random)
        trial = self.study.ask(self.distributions)
        self.by_config[config] = self.study._storage.get_trial(trial._trial_id)
        return self.pending(trial, config)

    def ask_sampled(self, sampler: optuna.samplers.BaseSampler) -> Pending:
        """A trial whose configuration `sampler` chooses (Optuna's TPE, NSGA-II)."""
        self.study.sampler = sampler
        trial = self.study.ask(self.distributions)
        return self.pending(trial, trial_config(self.space, self.study._storage.get_trial(trial._trial_id)))

    def resume(self, trial: FrozenTrial) -> Pending:
        """A stale RUNNING trial as pending work: it is scored (once) and told now."""
        return self.pending(optuna.Trial(self.study, trial._trial_id), trial_config(self.space, trial), fresh=False)

    # -- telling ------------------------------------------------------------------------------------
    def values(self, proxy_top1: float, flops: int) -> list[float]:
        return [proxy_top1, float(flops)][: len(self.study.directions)]

    def tell_scored(self, pending: Pending, proxy_top1: float, node: str) -> Candidate:
        assert pending.trial is not None
        pending.trial.set_user_attr("status", SCORED)
        pending.trial.set_user_attr("node", node)
        self.study.tell(pending.trial, self.values(proxy_top1, pending.flops))
        self.storage.flush()
        candidate = Candidate(pending.trial.number, pending.config, pending.flops, pending.params, proxy_top1, self.name)
        self.cache.setdefault(pending.config, candidate)
        return candidate

    def tell_known(self, pending: Pending) -> Candidate:
        """A configuration measured before: recorded with its earlier score, not scored again."""
        known = pending.known
        assert known is not None and pending.trial is not None
        pending.trial.set_user_attr("status", REUSED)
        pending.trial.set_user_attr("reused_from", f"{known.study}#{known.trial}")
        self.study.tell(pending.trial, self.values(known.proxy_top1, pending.flops))
        self.storage.flush()
        return Candidate(pending.trial.number, pending.config, pending.flops, pending.params, known.proxy_top1, self.name)

    def tell_infeasible(self, pending: Pending) -> None:
        """Outside the window: never scored. Optuna's constrained samplers rank such trials by
        their violation alone, so the objective values told here (0 for top-1) do not steer them."""
        assert pending.trial is not None
        pending.trial.set_user_attr("status", INFEASIBLE)
        self.study.tell(pending.trial, self.values(0.0, pending.flops))
        self.storage.flush()

    def fail_stale(self) -> int:
        """Mark RUNNING trials no searcher took up again as failed (so none stays RUNNING)."""
        stale = self.stale()
        for trial in stale:
            self.study.tell(trial.number, state=TrialState.FAIL)
        self.storage.flush()
        return len(stale)


def pareto_front(candidates: Iterable[Candidate]) -> list[Candidate]:
    """Candidates no other beats on both proxy top-1 (higher) and FLOPs (lower), by FLOPs ascending."""
    front: list[Candidate] = []
    best = -math.inf
    for candidate in sorted(candidates, key=lambda c: (c.flops, -c.proxy_top1, c.trial)):
        if candidate.proxy_top1 > best:
            front.append(candidate)
            best = candidate.proxy_top1
    return front


def load_candidates(storage: Storage, name: str, space: GeneSpace) -> list[Candidate]:
    """The measured candidates of study `name` in trial order; empty when there is no such study."""
    if name not in storage.study_names():
        return []
    study = optuna.load_study(study_name=name, storage=storage.optuna)
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return [candidate_of(space, t, name) for t in trials if t.user_attrs.get("status") in (SCORED, REUSED)]
