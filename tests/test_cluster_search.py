"""Searches through the CLI on Ray: a real two-node cluster on loopback, and a local pool losing an actor."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path

from tests.conftest import cli, scored_configs, study_trials
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
    assert cli("search", run_dir=reference, sets=sets, inprocess=True).returncode == 0
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


def descendants(pid: int) -> dict[int, str]:
    """Every process below `pid`, with its command line (from /proc: no psutil needed)."""
    children: dict[int, list[int]] = {}
    commands: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            commands[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(entry.name))
    found, todo = {}, [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found[child] = commands.get(child, "")
            todo.append(child)
    return found


def test_killing_a_ray_actor_mid_search_loses_and_duplicates_nothing(trained_run: Path, tmp_path: Path) -> None:
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    shutil.copytree(trained_run, reference)
    shutil.copytree(trained_run, killed)
    sets = ["search.generations=3"]
    assert cli("search", run_dir=reference, sets=sets, inprocess=True).returncode == 0
    process = cli("search", "--executor", "ray", "--workers", "2", run_dir=killed, sets=sets, background=True)
    try:
        deadline = time.time() + 240
        while len(scored_configs(killed)) < 4 and process.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        actors = [pid for pid, command in descendants(process.pid).items() if "ScoringActor" in command]
        assert actors and process.poll() is None, "no scoring actor found to kill"
        os.kill(actors[0], signal.SIGKILL)
        assert process.wait(timeout=300) == 0, process.stderr.read() if process.stderr else ""
    finally:
        if process.poll() is None:
            process.kill()
    trials = study_trials(killed)
    configs = scored_configs(killed)
    assert len(configs) == len(set(configs)) == len([t for t in trials if t.user_attrs["status"] == "scored"])
    assert [(t.params, t.values) for t in trials] == [(t.params, t.values) for t in study_trials(reference)]
