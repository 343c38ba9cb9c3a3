"""Executors score candidates: in this process, or on a pool of Ray actors (`nas.ray_executor`).

An executor receives a round of `Task`s and yields one `Scored` per task as results arrive, in any
order. The driver alone records results, so an executor never writes the study. Importing this
module does not import Ray.

What scores a candidate is the caller's: a `ScorerFactory`, plain picklable data that each worker
builds once into a `Scorer` (metaprune's is `metaprune.score.ScorerSpec`: the PruningNet with its
calibration and validation images). nas itself knows only configurations and numbers.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

from search_spaces import Config


class Scorer(Protocol):
    def __call__(self, config: Config) -> float:
        """The proxy top-1 (percent) of one configuration."""
        ...


class ScorerFactory(Protocol):
    """Picklable: shipped once to every worker, built there once, then called per configuration."""

    def build(self, device: str) -> Scorer:
        """The scorer on `device` ("cpu", "cuda", "cuda:0"): the same scores wherever it is built."""
        ...


@dataclass(frozen=True)
class Task:
    """One candidate to score. `slot` is its index in the round (not an Optuna trial number): results
    arrive in any order and map back to their candidate by it."""

    slot: int
    config: Config


@dataclass(frozen=True)
class Scored:
    """A task's result: its proxy top-1 (percent) and the node that computed it (for the record)."""

    task: Task
    proxy_top1: float
    node: str


class Executor(Protocol):
    """Scores rounds of candidates; `close` releases workers."""

    def score(self, tasks: list[Task]) -> Iterator[Scored]:
        """Yield each task's result exactly once, as soon as it is known (any order)."""
        ...

    def close(self) -> None: ...

    def report(self) -> dict[str, object]:
        """What the pool looked like, for summary.json: the nodes it scored on, chunks lost."""
        ...


class InProcessExecutor:
    """Scores one candidate after another with a scorer built in this process."""

    def __init__(self, factory: ScorerFactory, device: str = "cpu") -> None:
        self.scorer = factory.build(device)
        self.node = f"local:{socket.gethostname()}"

    def score(self, tasks: list[Task]) -> Iterator[Scored]:
        for task in tasks:
            yield Scored(task, self.scorer(task.config), self.node)

    def close(self) -> None:
        pass

    def report(self) -> dict[str, object]:
        return {"nodes": [self.node]}


class LazyExecutor:
    """Builds its executor on the first round that has work: a search resumed after its last
    candidate was scored, or replayed entirely from the study, starts no Ray and loads no scorer."""

    def __init__(self, make: Callable[[], Executor]) -> None:
        self.make = make
        self.inner: Executor | None = None
        self.last_report: dict[str, object] = {"nodes": []}  # nothing scored: no pool

    def score(self, tasks: list[Task]) -> Iterator[Scored]:
        if not tasks:
            return iter(())
        if self.inner is None:
            self.inner = self.make()
        return self.inner.score(tasks)

    def close(self) -> None:
        if self.inner is not None:
            self.last_report = self.inner.report()
            self.inner.close()
            self.inner = None

    def report(self) -> dict[str, object]:
        return self.inner.report() if self.inner is not None else self.last_report


class JoinError(ConnectionError):
    """Why this process cannot join a Ray cluster, in one line that names the fix (`nas.ray_cluster`)."""


def unreachable(address: str, timeout: float = 10.0) -> str | None:
    """Why the Ray head at `address` (host:port, optionally with a scheme) cannot be reached, or None.

    `ray.init` keeps retrying an unreachable head for a long time; a plain TCP connect answers in
    seconds, so a mistyped --ray-address fails fast and before anything is written.
    """
    if address in ("", "auto", "local"):
        return None
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = hostport.rpartition(":")
    if not sep or not host or not port.isdigit():
        return f"{address!r} is not HOST:PORT"
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        return f"{hostport} does not answer ({exc.strerror or exc.__class__.__name__})"
    return None
