"""The search driver: rounds of ask -> score (any executor) -> record -> tell.

Only the driver writes the study. Each result is told and flushed the moment it arrives, so a kill
at any moment loses at most the candidates being scored; the same command then takes up trials
left RUNNING, scores each of them once, and the searcher's replay answers the rest from the study.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from tqdm import tqdm

from nas.executors import Executor, Task
from nas.searchers import Searcher
from nas.stops import stop_point
from nas.study import Candidate, Pending, StudyRecord


@dataclass
class SearchOutcome:
    candidates: list[Candidate]  # every measured candidate of the study, in trial order
    scored_now: int  # candidates scored by this process (the rest came from the record)
    trials: int  # trials in the study, infeasible ones included
    driver_seconds: float  # asking, constraint checks and recording: all but waiting for scores
    scoring_seconds: float  # waiting for the executor
    rounds: list[tuple[int, float, float]]  # per round: (trials in it, driver seconds, scoring seconds)


def drive_search(searcher: Searcher, record: StudyRecord, executor: Executor, total: int, progress: bool = True) -> SearchOutcome:
    """Run `searcher` to the end; `total` sizes the progress bar (trials the searcher will ask)."""
    bar = tqdm(total=total, desc="search", unit="trial", disable=not progress, dynamic_ncols=True)
    scored_now, scoring = 0, 0.0
    rounds: list[tuple[int, float, float]] = []
    began = time.perf_counter()
    while True:
        round_began = time.perf_counter()
        round_ = searcher.ask(record)
        if not round_:
            break
        results, tasks, repeats = _settle(record, round_)
        waited = time.perf_counter()
        scoring_round = 0.0
        for scored in executor.score(tasks):
            arrived = time.perf_counter()
            scoring_round += arrived - waited
            index = scored.task.slot
            results[index] = record.tell_scored(round_[index], scored.proxy_top1, scored.node)
            stop_point("recorded")  # a test's chosen moment to kill or hold the driver
            scored_now += 1
            _advance(bar, 1)
            waited = time.perf_counter()
        scoring += scoring_round
        for index, first in repeats:  # the same configuration twice in one round: scored once
            round_[index].known = results[first]
            results[index] = record.tell_known(round_[index])
        _advance(bar, len(round_) - len(tasks))
        best = max((c.proxy_top1 for c in results.values() if c is not None), default=None)
        if best is not None:
            bar.set_postfix(best=f"{best:.2f}")
        searcher.tell([results.get(i) for i in range(len(round_))])
        rounds.append((len(round_), time.perf_counter() - round_began - scoring_round, scoring_round))
    record.fail_stale()
    bar.close()
    driver = time.perf_counter() - began - scoring
    candidates = sorted(record.candidates(), key=lambda c: c.trial)
    return SearchOutcome(candidates, scored_now, len(record.trials()), driver, scoring, rounds)


def _advance(bar: tqdm, count: int) -> None:
    """Move the bar; a searcher that asks more than its estimate (repairs, resumed rounds) grows the
    total instead of running the bar past it ("21/20")."""
    if bar.total is not None and bar.n + count > bar.total:
        bar.total = bar.n + count
    bar.update(count)


def _settle(record: StudyRecord, round_: list[Pending]) -> tuple[dict[int, Candidate | None], list[Task], list[tuple[int, int]]]:
    """Record what needs no scoring; return the results so far, the tasks, and in-round repeats.

    Task.slot carries the index in the round, so results map back without a search.
    """
    results: dict[int, Candidate | None] = {}
    tasks: list[Task] = []
    first: dict[tuple[int, ...], int] = {}
    repeats: list[tuple[int, int]] = []
    for index, pending in enumerate(round_):
        if pending.trial is None:  # finished in this study before a crash
            results[index] = pending.known
        elif not pending.feasible:
            record.tell_infeasible(pending)
            results[index] = None
        elif pending.known is not None:
            results[index] = record.tell_known(pending)
        elif pending.config in first:
            repeats.append((index, first[pending.config]))
        else:
            first[pending.config] = index
            tasks.append(Task(index, pending.config))
    return results, tasks, repeats
