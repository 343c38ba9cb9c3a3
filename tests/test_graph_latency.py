"""The latency table of a traced space (`metaprune.graph_latency`): every count a configuration
gives lies in the timed range of its op, interpolation is exact where times are linear, the table
round-trips and refuses another space, and a latency budget constrains a search of a graph family
from the command line as it does a chain family's."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import search_spaces as ss
from metaprune.errors import UserError
from metaprune.graph_latency import POINTS, GraphLatencyTable, build_graph_latency_table
from tests.conftest import cli, study_trials
from tests.test_graph import configs
from tests.test_latency import assert_report_adds_up

FAMILIES = ss.list_spaces("module")


def space_of(name: str, width: float = 0.25) -> ss.GraphSpace:
    space = ss.create_space(name, 10, 3, 32, width)
    assert isinstance(space, ss.GraphSpace)
    return space


@pytest.mark.parametrize("name", FAMILIES)
def test_every_count_lies_in_its_ops_timed_range_and_linear_times_are_priced_exactly(name: str) -> None:
    space = space_of(name)
    table = GraphLatencyTable(space, 1, 1, "none", {})
    weights = {op.key(()).split(" @")[0]: (1 + i % 5, 2 + i % 3) for i, op in enumerate(table.ops)}
    for op in table.ops:  # a time linear in the counts: interpolation must give it back everywhere
        a, b = weights[op.name]
        for point in op.points():
            table.entries[op.key(point)] = a * point[-1] + b * point[0] + 1.0
    for config in [space.largest, space.smallest, *configs(space, 20, seed=3)]:
        counts = space.channel_counts(config)
        expected = 0.0
        for op in table.ops:
            values = tuple(counts[d] for d in op.dims)
            assert all(grid[0] <= v <= grid[-1] for grid, v in zip(op.grids, values)), (op.name, values, op.grids)
            a, b = weights[op.name]
            expected += a * values[-1] + b * values[0] + 1.0
        assert table.summed(config) == pytest.approx(expected, rel=1e-9)
    assert all(len(grid) <= POINTS for op in table.ops for grid in op.grids)


@pytest.fixture(scope="module")
def table() -> GraphLatencyTable:
    return build_graph_latency_table(space_of("squeezenet"), 1, 1, warmup=0, runs=1, calibration=3, progress=False)


@pytest.mark.filterwarnings("ignore:latency table.*busy")
def test_a_measured_table_round_trips_and_refuses_what_it_was_not_measured_for(table: GraphLatencyTable, tmp_path: Path) -> None:
    space = table.space
    predictions = [table.predict(c) for c in configs(space, 10, seed=1)]
    assert all(p > 0 and np.isfinite(p) for p in predictions)
    path = tmp_path / "table.json"
    table.save(path)
    loaded = GraphLatencyTable.load(path, space, 1, 1, "cpu")
    assert loaded.entries == table.entries and [loaded.predict(c) for c in configs(space, 10, seed=1)] == predictions
    for other, fragment in [
        ((space_of("squeezenet", 0.5), 1, 1), "digest"),
        ((ss.create_space("squeezenet", 7, 3, 32, 0.25), 1, 1), "digest"),  # the same code and genes, 7 classes
        ((space, 8, 1), "batch 1"),
        ((space, 1, 2), "threads 1"),
    ]:
        with pytest.raises(UserError, match=fragment):
            GraphLatencyTable.load(path, *other)
    data = json.loads(path.read_text())
    data["entries"].pop(sorted(data["entries"])[0])
    path.write_text(json.dumps(data))
    with pytest.raises(UserError, match="1 op timings missing"):
        GraphLatencyTable.load(path, space)
    path.write_text("{")
    with pytest.raises(UserError, match="damaged"):
        GraphLatencyTable.load(path, space)


def space_of_run() -> ss.GraphSpace:
    space = ss.create_space("squeezenet", 4, 3, 16, 0.5)  # the run's: synthetic data, 4 classes of 16x16, width 0.5
    assert isinstance(space, ss.GraphSpace)
    return space


@pytest.fixture(scope="module")
def graph_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("graph") / "run"
    result = cli("train-pruningnet", run_dir=run_dir, sets=["space.family=squeezenet"])
    assert result.returncode == 0, result.stderr
    return run_dir


def test_a_latency_budget_constrains_the_search_of_a_graph_family(graph_run: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(graph_run, run_dir)
    sets = ["space.family=squeezenet", "latency.runs=3", "latency.warmup=1", "search.max_latency_ms=1000"]
    assert cli("search", run_dir=run_dir, sets=sets, inprocess=True).returncode == 0
    (table_file,) = run_dir.glob("latency_table-b1-t1.json")
    predicted = sorted(t.user_attrs["latency_ms"] for t in study_trials(run_dir))
    cap = predicted[len(predicted) // 2]
    sets[-1] = f"search.max_latency_ms={cap}"
    result = cli("search", run_dir=run_dir, sets=sets, inprocess=True)
    assert result.returncode == 0, result.stderr
    assert list(run_dir.glob("latency_table-*.json")) == [table_file]  # measured once, reused
    summary = json.loads((run_dir / "summary.json").read_text())["search"]
    assert summary["latency"]["max_latency_ms"] == cap and summary["latency"]["best_predicted_ms"] <= cap
    space = ss.with_channel_multiple(space_of_run(), 4)  # tests.conftest.FAST's
    assert_report_adds_up(summary["latency"]["table_check"], GraphLatencyTable.load(table_file, space))
    assert all(t.user_attrs["latency_ms"] <= cap for t in study_trials(run_dir))
