"""A search launched through the CLI onto a real two-node Ray cluster on loopback."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tests.conftest import cli, study_trials
from tests.ray_cluster import ray_cluster  # noqa: F401  (the fixture)


def test_cli_search_on_a_two_node_cluster_matches_in_process(
    trained_run: Path,
    tmp_path: Path,
    ray_cluster: str,  # noqa: F811
) -> None:
    reference, clustered = tmp_path / "reference", tmp_path / "cluster"
    shutil.copytree(trained_run, reference)
    shutil.copytree(trained_run, clustered)
    sets = ["search.generations=2"]
    assert cli("search", run_dir=reference, sets=sets).returncode == 0
    result = cli("search", "--executor", "ray", "--workers", "2", "--ray-address", ray_cluster, run_dir=clustered, sets=sets)
    assert result.returncode == 0, result.stderr

    trials = study_trials(clustered)
    nodes = {t.user_attrs["node"] for t in trials if t.user_attrs["status"] == "scored"}
    assert len(nodes) == 2, f"both nodes should score candidates, saw {nodes}"
    # the search path does not depend on where candidates are scored: the same study, value for value
    assert [(t.params, t.values) for t in trials] == [(t.params, t.values) for t in study_trials(reference)]
    summary = json.loads((clustered / "summary.json").read_text())["search"]
    assert (
        summary["executor"] == "ray x2"
        and summary["best"] == json.loads((reference / "summary.json").read_text())["search"]["best"]
    )
