"""Executors score candidates: in this process, or on a pool of Ray actors (`nas.ray_executor`).

An executor receives a round of `Task`s and yields one `Scored` per task as results arrive, in any
order. The driver alone records results, so an executor never writes the study. Importing this
module does not import Ray.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import torch

from metaprune.score import ScorerSpec, build_scorer
from search_spaces import Config


@dataclass(frozen=True)
class Task:
    """One candidate to score. `trial` is its trial number in the study: unique within a round."""

    trial: int
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


class InProcessExecutor:
    """Scores one candidate after another with a scorer built in this process."""

    def __init__(self, spec: ScorerSpec, device: torch.device | str = "cpu") -> None:
        self.scorer = build_scorer(spec, device)
        self.node = f"local:{socket.gethostname()}"

    def score(self, tasks: list[Task]) -> Iterator[Scored]:
        for task in tasks:
            yield Scored(task, self.scorer(task.config), self.node)

    def close(self) -> None:
        pass
