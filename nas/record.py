"""The search record: one JSON line per scored candidate, appended and fsynced as it is scored.

A crash can tear at most the line being written; loading skips a torn last line. A resumed search
reads the record first, so no finished candidate is ever scored again.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Candidate:
    """A scored configuration. `trial` numbers candidates in the order they were first scored."""

    trial: int
    config: tuple[int, ...]
    flops: int
    params: int
    proxy_top1: float

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["config"] = list(self.config)
        return data

    @staticmethod
    def from_json(data: dict[str, Any]) -> Candidate:
        return Candidate(
            int(data["trial"]),
            tuple(int(c) for c in data["config"]),
            int(data["flops"]),
            int(data["params"]),
            float(data["proxy_top1"]),
        )


class SearchRecord:
    """Append-only record of scored candidates, keyed by configuration."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.candidates: dict[tuple[int, ...], Candidate] = {}
        if self.path.exists():
            self._load()

    def _load(self) -> None:
        lines = self.path.read_bytes().split(b"\n")
        intact = 0  # bytes of the file made of complete lines
        for line in lines[:-1]:
            try:
                candidate = Candidate.from_json(json.loads(line))
            except (ValueError, KeyError, TypeError):
                break  # a torn or foreign line: keep what precedes it
            self.candidates.setdefault(candidate.config, candidate)
            intact += len(line) + 1
        if intact != self.path.stat().st_size:  # drop the torn tail so appends start on a clean line
            with open(self.path, "r+b") as handle:
                handle.truncate(intact)

    def __len__(self) -> int:
        return len(self.candidates)

    def __contains__(self, config: tuple[int, ...]) -> bool:
        return tuple(config) in self.candidates

    def get(self, config: tuple[int, ...]) -> Candidate | None:
        return self.candidates.get(tuple(config))

    def append(self, config: tuple[int, ...], flops: int, params: int, proxy_top1: float) -> Candidate:
        candidate = Candidate(len(self.candidates), tuple(config), flops, params, proxy_top1)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(candidate.to_json()) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        self.candidates[candidate.config] = candidate
        return candidate

    def best(self) -> Candidate:
        if not self.candidates:
            raise ValueError(f"search record {self.path} holds no candidates")
        return max(self.candidates.values(), key=lambda c: (c.proxy_top1, -c.flops, -c.trial))
