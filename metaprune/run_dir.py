"""The run directory as a store: its lock, its files' names, `summary.json` (the report) and the
winner (control state, kept apart from the report).

    config.yaml        the latest resolved config
    base.pt            train-base's checkpoint (absent with base.weights)
    pruningnet.pt      the PruningNet's training checkpoint
    study.journal      every trial of every search (Optuna's journal; or search.storage)
    run_id             names this run's studies in a shared database
    finetune/<id>.pt   one per (winner, fine-tune settings)
    tune/<id>/         a top-k fine-tune experiment (Ray Tune)
    distill/           assistants
    quantize/<id>/     one per (model, quantize settings), with its result.json
    export/            the exported winner; export/trial-N/ for picked points
    winner.json        which point later stages use: the search's best or the Tune survivor
    summary.json       every stage's result (metaprune.results), for people and scripts; never read to decide anything

Every write is atomic (temp file, then rename); one process holds the directory at a time.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from metaprune.errors import UserError
from metaprune.io import atomic_write_json, atomic_write_text, remove_stale_temp_files
from metaprune.results import R, Result, from_json_or_none, to_json
from search_spaces import Config

BASE = "base.pt"
PRUNINGNET = "pruningnet.pt"
RECORD = "study.journal"  # nas.storage.JOURNAL
FINETUNE = "finetune"
TUNE = "tune"
ASSISTANTS = "distill"
QUANTIZE = "quantize"
EXPORT = "export"
FRONT_PLOT = "search_front.png"
RUN_ID = "run_id"
WINNER = "winner.json"
SUMMARY = "summary.json"
WINNER_STAGES = ("finetune", "distill", "quantize", "export")  # results about one model: each names its config


class RunDir:
    """One run directory: owned by one process at a time (`begin` takes the lock)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise UserError(f"--run-dir {self.path} is a file; pass a directory")
        self._lock_file: IO[str] | None = None  # held open while this process owns the directory

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def begin(self, config_text: str) -> None:
        """Own the directory (create, lock, clear temp files a kill left) and record the config."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self._lock()
            remove_stale_temp_files([self.path, self.path / FINETUNE, self.path / EXPORT])
            atomic_write_text(self.path / "config.yaml", config_text)
        except OSError as exc:
            raise UserError(f"cannot write --run-dir {self.path} ({exc.strerror or exc}); choose a writable directory") from None

    def _lock(self) -> None:
        """One process per run directory. The OS drops the lock when its holder dies, even by kill -9."""
        if self._lock_file is not None:
            return
        import fcntl

        handle = open(self.path / ".lock", "w")  # noqa: SIM115  (held open for the run's lifetime)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise UserError(f"another process is running in {self.path}; wait for it or use another --run-dir") from None
        self._lock_file = handle

    def close(self) -> None:
        """Release the directory now (else when this object is collected or the process ends)."""
        if self._lock_file is not None:
            self._lock_file.close()  # closing the descriptor drops the flock
            self._lock_file = None

    # -- the report -------------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        path = self.path / SUMMARY
        return json.loads(path.read_text()) if path.exists() else {}

    def result(self, stage: str, cls: type[R]) -> R | None:
        """One stage's result as `report` took it, or None: not reported, or written in another
        layout (by another version; the stage reports it anew)."""
        found = self.summary().get(stage)
        return None if found is None else from_json_or_none(cls, found)

    def results(self, stage: str, cls: type[R]) -> dict[str, R]:
        """A stage that reports one result per name (`exports`: per export directory)."""
        found = {name: from_json_or_none(cls, data) for name, data in self.summary().get(stage, {}).items()}
        return {name: result for name, result in found.items() if result is not None}

    def report(
        self, stage: str, result: Result | Mapping[str, Result], winner: Config | None = None, also: list[int] | None = None
    ) -> None:
        """Set one stage's result; a new `winner` drops the post-search results of other models
        (but for `also`: the Tune survivor of the same study, which stays the winner)."""
        summary = self.summary()
        summary[stage] = to_json(result)
        if winner is not None:
            kept = [list(winner), also]
            summary = {k: v for k, v in summary.items() if k not in WINNER_STAGES or v.get("config") in kept}
        atomic_write_json(self.path / SUMMARY, summary)

    # -- control state ----------------------------------------------------------------------------
    def winner(self) -> dict[str, Any] | None:
        """{"study", "config", "by": search | tune} of the last search, or None before one.

        Runs made before winner.json existed kept this in summary.json: read from there once, as
        plain JSON (those summaries predate the result classes of `metaprune.results`)."""
        path = self.path / WINNER
        if path.exists():
            found: dict[str, Any] = json.loads(path.read_text())
            return found
        summary = self.summary()
        search = summary.get("search")
        if search is None:
            return None
        tuned = summary.get("finetune", {}).get("tune")
        if tuned is not None and tuned["study"] == search["study"]:
            return {"study": search["study"], "config": summary["finetune"]["config"], "by": "tune"}
        return {"study": search["study"], "config": search["best"]["config"], "by": "search"}

    def set_winner(self, study: str, config: Config, by: str) -> None:
        atomic_write_json(self.path / WINNER, {"study": study, "config": list(config), "by": by})

    def run_id(self) -> str:
        """This run's id (made once, kept in the directory): two run directories never share studies."""
        path = self.path / RUN_ID
        if not path.exists():
            atomic_write_text(path, uuid.uuid4().hex[:12] + "\n")
        return path.read_text().strip()
