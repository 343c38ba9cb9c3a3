"""Studies in a real PostgreSQL server: drivers started together, a killed driver resumed, runs kept
apart, and one-line errors for every way opening the database fails. The server is the one `.ci/run`
starts (METAPRUNE_TEST_POSTGRES_URL), or one started here; the tests skip where none can start."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest

from tests.conftest import cli, hold_at, study_trials, wait_held
from tests.postgres_server import Unavailable, start, stop

SETS = ["search.generations=2"]


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    if url := os.environ.get("METAPRUNE_TEST_POSTGRES_URL"):
        yield url
        return
    pytest.importorskip("psycopg", reason="the PostgreSQL driver is not installed: pip install -e '.[postgres]'")
    directory = Path(tempfile.mkdtemp(prefix="metaprune-pg-"))
    try:
        try:
            url = start(directory)
        except Unavailable as exc:
            pytest.skip(f"no PostgreSQL server could start here: {exc}")
        yield url
    finally:
        try:
            stop(directory)
        finally:
            shutil.rmtree(directory, ignore_errors=True)


def _admin(url: str, statement: str) -> None:
    import sqlalchemy

    engine = sqlalchemy.create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text(statement))
    finally:
        engine.dispose()


@pytest.fixture
def database(postgres_url: str) -> Iterator[str]:
    """A fresh, empty database on the server; its URL."""
    name = f"test_{uuid.uuid4().hex[:10]}"
    _admin(postgres_url, f"CREATE DATABASE {name}")
    yield postgres_url.rsplit("/", 1)[0] + f"/{name}"
    _admin(postgres_url, f"DROP DATABASE {name} WITH (FORCE)")


def database_trials(run_dir: Path, url: str) -> list[optuna.trial.FrozenTrial]:
    name = json.loads((run_dir / "summary.json").read_text())["search"]["study"]
    return optuna.load_study(study_name=name, storage=url).trials


def scored(trials: list[optuna.trial.FrozenTrial]) -> list[tuple[int, ...]]:
    return [tuple(t.params.values()) for t in trials if t.user_attrs.get("status") == "scored"]


def shape(trials: list[optuna.trial.FrozenTrial]) -> list[tuple[dict, list[float] | None]]:
    return [(t.params, t.values) for t in trials]


@pytest.fixture(scope="module")
def reference(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> list[optuna.trial.FrozenTrial]:
    """The same search with the study in the run's journal file."""
    run_dir = tmp_path_factory.mktemp("journal") / "run"
    shutil.copytree(trained_run, run_dir)
    result = cli("search", run_dir=run_dir, sets=SETS, inprocess=True)
    assert result.returncode == 0, result.stderr
    return study_trials(run_dir)


def test_four_drivers_on_one_fresh_database(
    trained_run: Path, tmp_path: Path, database: str, reference: list[optuna.trial.FrozenTrial]
) -> None:
    runs = [tmp_path / f"run{i}" for i in range(4)]
    release = tmp_path / "release"
    processes = []
    for run_dir in runs:
        shutil.copytree(trained_run, run_dir)
        processes.append(
            cli("search", "--storage", database, run_dir=run_dir, sets=SETS, background=True, env=hold_at("database", 1, release))
        )
    try:
        for process in processes:
            wait_held(process, release)  # all four about to open the empty database
        release.touch()  # ... and now they do, together: each creates Optuna's tables unless another did
        for process in processes:
            assert process.wait(timeout=300) == 0, process.stderr.read() if process.stderr else ""
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    names = set()
    for run_dir in runs:
        trials = database_trials(run_dir, database)
        assert len(scored(trials)) == len(set(scored(trials))), "a configuration was scored twice"
        assert shape(trials) == shape(reference)  # the database changes where, not what
        names.add(json.loads((run_dir / "summary.json").read_text())["search"]["study"])
    assert len(names) == 4, f"runs shared a study: {names}"  # each run's studies carry its own run id
    assert sorted(s.study_name for s in optuna.get_all_study_summaries(database)) == sorted(names)


def test_a_killed_driver_resumes_from_the_database(
    trained_run: Path, tmp_path: Path, database: str, reference: list[optuna.trial.FrozenTrial]
) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir)
    kill = {**os.environ, "METAPRUNE_STOP": "recorded@5:kill"}  # SIGKILL right after its 5th recorded result
    killed = cli("search", "--storage", database, run_dir=run_dir, sets=SETS, env=kill)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    result = cli("search", "--storage", database, run_dir=run_dir, sets=SETS)
    assert result.returncode == 0, result.stderr
    trials = database_trials(run_dir, database)
    assert len(scored(trials)) == len(set(scored(trials))), "a configuration was scored twice"
    assert shape(trials) == shape(reference)


def test_a_missing_driver_names_the_extra(trained_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir)
    for module in ("psycopg", "psycopg2"):
        monkeypatch.setitem(sys.modules, module, None)  # what an environment without the extra has: no module to import
    result = cli("search", "--storage", "postgresql://user:secret@127.0.0.1:5432/db", run_dir=run_dir, inprocess=True)
    assert result.returncode == 2
    assert "pip install -e '.[postgres]'" in result.stderr and "secret" not in result.stderr, result.stderr
    assert result.stderr.strip().count("\n") == 0


def test_opening_errors_name_the_cause(trained_run: Path, tmp_path: Path, postgres_url: str, database: str) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir)
    before = sorted(p.name for p in run_dir.iterdir())
    _admin(database, "CREATE TABLE trials (id integer)")  # someone else's table of Optuna's name
    base = postgres_url.rsplit("/", 1)[0]
    cases = {
        base.replace(":test-password@", ":wrong@") + "/postgres": "refused user 'metaprune'",
        "postgresql://metaprune:pw@127.0.0.1:1/postgres": "no database server answers at 127.0.0.1:1",
        base + "/no_such_database": "the database 'no_such_database' does not exist",
        database: "holds tables that are not Optuna's (trials)",
    }
    for url, expected in cases.items():
        result = cli("search", "--storage", url, run_dir=run_dir, inprocess=True)
        assert result.returncode == 2 and expected in result.stderr, (url, result.stderr)
        assert result.stderr.strip().count("\n") == 0 and "test-password" not in result.stderr
        assert sorted(p.name for p in run_dir.iterdir()) == before
