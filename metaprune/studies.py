"""The run's studies: where they are stored, how each is named, and the errors a user sees about them.

One study per searcher, FLOPs window and search settings; in a shared database (search.storage)
this run's studies are named `<name>-<run id>/...`, so two runs never mix trials.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from optuna.study import StudyDirection

from metaprune import settings
from metaprune.context import Context
from metaprune.errors import UserError
from metaprune.identity import digest, meta
from metaprune.run_dir import FINETUNE, RECORD, RUN_ID
from nas.storage import Storage, StorageError, redact
from nas.study import Candidate, MetaMismatch, StudyRecord, load_candidates, run_studies

T = TypeVar("T")


def conflict(path: Path | str, changed: list[str], redo: list[str]) -> NoReturn:
    raise UserError(
        f"{path} was made with other settings ({', '.join(changed[:4])}); use a new --run-dir, "
        f"or delete {', '.join(redo)} to redo them"
    )


def guard(ctx: Context, action: Callable[[], T]) -> T:
    """Run `action`, turning a study made under other settings, or a damaged one, into a UserError."""
    try:
        return action()
    except MetaMismatch as exc:
        studies = f"the run's studies in {exc.path}" if ctx.cfg.search.storage else RECORD
        conflict(exc.path, exc.changed, [studies, f"{FINETUNE}/"])
    except ValueError as exc:
        raise UserError(str(exc)) from None


def storage(ctx: Context, writable: bool) -> Storage:
    url = ctx.cfg.search.storage
    try:
        return Storage(url, ctx.dir, writable)
    except (StorageError, ValueError) as exc:
        raise UserError(str(exc)) from None
    except OSError as exc:
        where = redact(url) if url else str(ctx.dir / RECORD)
        raise UserError(f"cannot open {where} ({exc.strerror or exc}); check the path and its permissions") from None
    except Exception as exc:  # a database that cannot be reached
        first = str(exc).splitlines()[0].replace(url, redact(url))
        raise UserError(f"cannot open search.storage {redact(url)!r} ({first}); check the URL") from None


def study_prefix(ctx: Context) -> str:
    """All of the journal file's studies, or in a shared database those of this run's id."""
    return f"{ctx.cfg.name}-{ctx.store.run_id()}/" if ctx.cfg.search.storage else ""


def search_settings(ctx: Context) -> dict[str, Any]:
    """What the search does, not where it runs, with the resolved FLOPs window."""
    nested = ctx.cfg.to_dict()["search"]
    search = settings.without(ctx.cfg.search, nested, settings.RUNTIME)
    for section in ("evolution", "rounds"):  # flat, as before the sections existed: study names stay the same
        search |= search.pop(section)
    search["window"] = list(ctx.search_window)
    if search["max_latency_ms"] > 0:  # the budget's meaning depends on what the table measures
        search["latency"] = {"batch": ctx.cfg.latency.batch, "threads": ctx.cfg.latency.threads}
    return search


def study_name(ctx: Context) -> str:
    return f"{study_prefix(ctx)}{ctx.cfg.search.searcher}-{digest(search_settings(ctx), 8)}"


def open_study(
    ctx: Context, writable: bool, directions: list[StudyDirection] | None = None, latency: Callable[..., float] | None = None
) -> StudyRecord:
    search = search_settings(ctx)
    attrs = {"searcher": search["searcher"], "search": search, "window": search["window"]}
    return guard(
        ctx,
        lambda: StudyRecord(
            storage(ctx, writable),
            study_name(ctx),
            study_prefix(ctx),
            ctx.space,
            meta(ctx, RECORD),
            directions or [StudyDirection.MAXIMIZE],
            attrs,
            ctx.search_window,
            latency,
            ctx.cfg.search.max_latency_ms,
        ),  # fmt: skip
    )


def check_studies(ctx: Context) -> None:
    """Refuse settings that contradict the run's recorded studies (before anything is written)."""
    if (ctx.cfg.search.storage and (ctx.dir / RUN_ID).exists()) or (ctx.dir / RECORD).exists():
        guard(ctx, lambda: run_studies(storage(ctx, writable=False), study_prefix(ctx), meta(ctx, RECORD)))


def last_search(ctx: Context) -> tuple[str, list[Candidate]]:
    """The study of the last search and its measured candidates (read only)."""
    winner = ctx.store.winner()
    found = None
    if winner is not None and (ctx.cfg.search.storage or (ctx.dir / RECORD).exists()):
        found = guard(ctx, lambda: load_candidates(storage(ctx, writable=False), winner["study"], ctx.space))
    if winner is None or not found:
        raise UserError(f"no finished search in {ctx.dir}; run `run_search.py search --run-dir {ctx.dir}` first")
    return winner["study"], found


def rank(candidate: Candidate) -> tuple[float, int, int]:
    """Best first: higher proxy top-1, then fewer FLOPs, then the earlier trial."""
    return (-candidate.proxy_top1, candidate.flops, candidate.trial)
