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

FORMAT = "metaprune-search-record/1"


class MetaMismatch(ValueError):
    """A stored artifact was made with other settings than the current ones."""

    def __init__(self, path: Path, changed: list[str]) -> None:
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
    """Append-only record of scored candidates, keyed by configuration.

    The first line is a header holding `meta`, the settings the scores depend on; opening a
    record with other `meta` is refused, since its scores would not be comparable.
    """

    def __init__(self, path: str | Path, meta: dict[str, Any] | None = None, writable: bool = True) -> None:
        """Open (or start) a record. Only a writer, holding the run's lock, may repair a torn tail."""
        self.path = Path(path)
        self.meta = meta or {}
        self.candidates: dict[tuple[int, ...], Candidate] = {}
        if self.path.exists():
            self._load(writable)

    def _load(self, writable: bool) -> None:
        content = self.path.read_bytes()
        lines = content.split(b"\n")
        intact = 0  # bytes of the file made of complete lines
        for number, line in enumerate(lines[:-1]):
            try:
                data = json.loads(line)
                if not isinstance(data, dict):
                    raise TypeError(f"expected a JSON object, got {type(data).__name__}")
                if number == 0:
                    self._check_header(data)
                else:
                    candidate = Candidate.from_json(data)
                    self.candidates.setdefault(candidate.config, candidate)
            except MetaMismatch:
                raise
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(
                    f"line {number + 1} of search record {self.path} is damaged ({exc}); move the file aside to search afresh"
                ) from None
            intact += len(line) + 1
        if writable and intact != len(content):  # a torn last line (a kill mid-write): drop it
            with open(self.path, "r+b") as handle:
                handle.truncate(intact)

    def _check_header(self, data: dict[str, Any]) -> None:
        if data.get("format") != FORMAT:
            raise ValueError(f"not a metaprune search record (format {data.get('format')!r})")
        if self.meta and data.get("meta") != self.meta:
            changed = sorted(changed_keys(data.get("meta") or {}, self.meta))
            raise MetaMismatch(self.path, changed)

    def __len__(self) -> int:
        return len(self.candidates)

    def __contains__(self, config: tuple[int, ...]) -> bool:
        return tuple(config) in self.candidates

    def get(self, config: tuple[int, ...]) -> Candidate | None:
        return self.candidates.get(tuple(config))

    def append(self, config: tuple[int, ...], flops: int, params: int, proxy_top1: float) -> Candidate:
        candidate = Candidate(len(self.candidates), tuple(config), flops, params, proxy_top1)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = not self.path.exists() or self.path.stat().st_size == 0
        header = json.dumps({"format": FORMAT, "meta": self.meta}) + "\n" if new else ""
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(header + json.dumps(candidate.to_json()) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        self.candidates[candidate.config] = candidate
        return candidate

    def best(self) -> Candidate:
        if not self.candidates:
            raise ValueError(f"search record {self.path} holds no candidates")
        return max(self.candidates.values(), key=lambda c: (c.proxy_top1, -c.flops, -c.trial))
