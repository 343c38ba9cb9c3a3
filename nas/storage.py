"""Where the studies live: Optuna's journal file in the run directory, or a database by URL.

The journal (`study.journal`) needs no server and is safe for one driver per run directory (the
run's lock guarantees that), on a local disk or on NFS, since only one process appends. A database
(PostgreSQL when several drivers on several machines share one server) is opened with the checks a
user needs: the driver module installed, the server reached, the password accepted, the database
an Optuna store; Optuna's tables are created under a PostgreSQL advisory lock, so drivers started
together on a fresh database do not race to create them (they did: a unique-key violation on
`pg_type` in one of four tries).
"""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage
from optuna.storages.journal import BaseJournalBackend, JournalStorage

from nas.stops import stop_point

JOURNAL = "study.journal"
SCHEMA_LOCK = zlib.crc32(b"metaprune: optuna schema")  # the advisory lock's key: one per database server
OPTUNA_TABLES = {"studies", "trials", "version_info", "trial_values", "trial_params", "study_directions"}
POSTGRES_EXTRA = "pip install -e '.[postgres]' (or pip install 'psycopg[binary]')"


class StorageError(ValueError):
    """A storage URL that cannot be opened, with the reason and the fix in one line."""


class JournalFile(BaseJournalBackend):
    """Optuna's journal file (one JSON log per line) for a single writer, with one fsync per flush.

    Optuna's own file backend fsyncs every operation: asking a trial of a 20-gene space costs over
    twenty fsyncs. Here the logs live in memory, appends are buffered, and `flush` writes them in
    one append + fsync, called after each recorded result. A crash loses only unflushed asks
    (trials never scored), and the file stays readable by Optuna's `JournalFileBackend`. A torn
    last line (a kill mid-write) is cut off on open: the caller holds the run's lock.
    """

    def __init__(self, path: str | Path, writable: bool = True) -> None:
        self.path, self.writable = Path(path), writable
        self.logs: list[dict[str, Any]] = []
        self.pending: list[str] = []
        if self.path.exists():
            self._load()

    def _load(self) -> None:
        content = self.path.read_bytes()
        intact = 0
        for number, line in enumerate(content.split(b"\n")[:-1]):
            try:
                self.logs.append(json.loads(line))
            except ValueError:
                raise ValueError(f"line {number + 1} of {self.path} is damaged; move the file aside to search afresh") from None
            intact += len(line) + 1
        if self.writable and intact != len(content):  # a torn last line: the write it belonged to never finished
            with open(self.path, "r+b") as handle:
                handle.truncate(intact)

    def read_logs(self, log_number_from: int) -> Iterable[dict[str, Any]]:
        return self.logs[log_number_from:]

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        lines = [json.dumps(log, separators=(",", ":")) for log in logs]
        self.logs.extend(json.loads(line) for line in lines)  # replay sees exactly what a reader sees
        self.pending.extend(lines)

    def flush(self) -> None:
        if not self.pending:
            return
        assert self.writable, "a read-only journal was written to"
        with open(self.path, "ab") as handle:
            handle.write(("\n".join(self.pending) + "\n").encode())
            handle.flush()
            os.fsync(handle.fileno())
        self.pending.clear()


class Storage:
    """An Optuna storage plus `flush` (a no-op for database storages, which commit every call)."""

    def __init__(self, url: str, run_dir: Path, writable: bool = True) -> None:
        self.journal: JournalFile | None = None
        if url:
            self.location = url
            self.optuna: BaseStorage = open_database(url)
        else:
            self.location = str(run_dir / JOURNAL)
            self.journal = JournalFile(run_dir / JOURNAL, writable)
            self.optuna = JournalStorage(self.journal)

    def flush(self) -> None:
        if self.journal is not None:
            self.journal.flush()

    def study_names(self) -> list[str]:
        return [s.study_name for s in self.optuna.get_all_studies()]


def open_database(url: str) -> BaseStorage:
    """Optuna's storage for a database URL, or a StorageError that names the real cause."""
    import sqlalchemy

    try:
        parsed = sqlalchemy.engine.make_url(url)
    except sqlalchemy.exc.ArgumentError:
        raise StorageError(f"{redact(url)!r} is not a database URL (dialect+driver://user:password@host:port/database)") from None
    try:
        parsed.get_dialect().import_dbapi()
    except ImportError as exc:
        fix = POSTGRES_EXTRA if parsed.get_backend_name() == "postgresql" else f"install the module {exc.name or exc}"
        raise StorageError(f"the database driver for {redact(url)!r} is not installed; {fix}") from None
    except sqlalchemy.exc.NoSuchModuleError:
        raise StorageError(f"{redact(url)!r} names a database SQLAlchemy does not know; check the URL's scheme") from None
    stop_point("database")  # where a test lines drivers up to open a fresh database together
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect() as connection, _schema_locked(connection):
            _check_tables(url, set(sqlalchemy.inspect(connection).get_table_names()))
            return optuna.storages.get_storage(url)
    except sqlalchemy.exc.OperationalError as exc:
        raise StorageError(_connection_problem(url, parsed, exc)) from None
    except RuntimeError as exc:  # Optuna's own schema check: a store of another Optuna version
        raise StorageError(f"{redact(url)!r}: {' '.join(str(exc).split())}") from None
    finally:
        engine.dispose()


@contextmanager
def _schema_locked(connection: Any) -> Iterator[None]:
    """On PostgreSQL, hold a session advisory lock while Optuna creates or checks its tables."""
    import sqlalchemy

    postgres = connection.dialect.name == "postgresql"
    if postgres:
        connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": SCHEMA_LOCK})
    try:
        yield
    finally:
        if postgres:
            connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": SCHEMA_LOCK})
            connection.commit()


def _check_tables(url: str, tables: set[str]) -> None:
    """An empty database becomes an Optuna store; one with Optuna's table names but not its
    `version_info` belongs to something else, and Optuna would fail on it mid-search."""
    if (tables & OPTUNA_TABLES) and "version_info" not in tables:
        clash = ", ".join(sorted(tables & OPTUNA_TABLES))
        raise StorageError(
            f"{redact(url)!r} holds tables that are not Optuna's ({clash}); use an empty database or an Optuna one"
        )


def _connection_problem(url: str, parsed: Any, exc: Exception) -> str:
    """One line for a failed connection: authentication, a missing database, or no server."""
    text = " ".join(str(getattr(exc, "orig", exc)).split())
    where = f"{parsed.host or 'localhost'}:{parsed.port or 5432}"
    if "password authentication failed" in text or "authentication failed" in text or "no password supplied" in text:
        return f"the database server at {where} refused user {parsed.username!r} ({text}); check the user and password in the URL"
    if "does not exist" in text and "database" in text:
        return f"the database {parsed.database!r} does not exist on {where}; create it (createdb {parsed.database}) or fix it"
    if any(word in text for word in ("Connection refused", "could not connect", "timeout", "timed out", "No route", "resolve")):
        return f"no database server answers at {where} ({text}); check that it runs and the URL's host and port"
    return f"cannot open {redact(url)!r} ({text}); check the URL"


def redact(url: str) -> str:
    """A storage URL fit to print or save: any password replaced by ***."""
    if "://" not in url or "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    credentials, host = rest.rsplit("@", 1)
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in credentials else url
