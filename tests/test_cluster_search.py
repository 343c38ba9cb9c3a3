"""Searches through the CLI on Ray: a real two-node cluster on loopback, one of its nodes lost mid-search."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import cli, hold_at, scored_configs, study_trials, wait_held
from tests.ray_cluster import RayStartCluster, ray_cluster, readme_commands  # noqa: F401  (the fixture)

pytestmark = pytest.mark.ray


SETS = ["search.generations=2"]


@pytest.fixture(scope="module")
def reference(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The trained run searched in process with SETS: the study any executor must reproduce."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    shutil.copytree(trained_run, run_dir)
    assert cli("search", run_dir=run_dir, sets=SETS, inprocess=True).returncode == 0
    return run_dir


@pytest.mark.timeout(600)  # as the node-loss test: run first, its fixtures (cluster, reference search) count too
def test_cli_search_on_a_two_node_cluster_matches_in_process(
    trained_run: Path,
    reference: Path,
    tmp_path: Path,
    ray_cluster: RayStartCluster,  # noqa: F811
) -> None:
    clustered = tmp_path / "clustered"
    shutil.copytree(trained_run, clustered)
    # the README's driver command, on the head machine: the token is found in ~/.ray/auth_token
    (line,) = readme_commands()["the driver"]
    command = shlex.split(ray_cluster.fill(line).replace("runs/r20", str(clustered)))
    assert command[:2] == ["python", "run_search.py"]
    result = cli(*command[2:], sets=SETS, env=ray_cluster.env)
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


@pytest.mark.timeout(600)  # run first or alone, the cluster's start-up and the reference search count too
def test_a_worker_node_lost_mid_search_loses_and_duplicates_nothing(
    trained_run: Path,
    reference: Path,
    tmp_path: Path,
    ray_cluster: RayStartCluster,  # noqa: F811
) -> None:
    """A machine lost mid-search (its raylet and every process under it SIGKILLed): its chunks are
    scored again elsewhere, nothing twice. A single actor killed is covered at the executor's level
    (test_ray_executor.py::test_killed_actor_loses_no_candidate)."""
    killed = tmp_path / "killed"
    shutil.copytree(trained_run, killed)
    release = tmp_path / "release"
    env = hold_at("recorded", 3, release, ray_cluster.env)
    process = cli(
        "search", "--executor", "ray", "--workers", "2", "--ray-address", ray_cluster.address,
        run_dir=killed, sets=SETS, background=True, env=env,
    )  # fmt: skip
    try:
        wait_held(process, release)  # both actors are up, one on each node, with chunks in flight
        ray_cluster.kill_worker_raylet()
        release.touch()
        assert process.wait(timeout=300) == 0, process.stderr.read() if process.stderr else ""
    finally:
        if process.poll() is None:
            process.kill()
        ray_cluster.start_worker()  # the next tests get two nodes again
    trials = study_trials(killed)
    configs = scored_configs(killed)
    assert len(configs) == len(set(configs)) == len([t for t in trials if t.user_attrs["status"] == "scored"])
    assert [(t.params, t.values) for t in trials] == [(t.params, t.values) for t in study_trials(reference)]
    # which actor answers first is the machine's business; where the actors started is not
    pool = json.loads((killed / "summary.json").read_text())["search"]["pool"]
    assert len(pool["nodes"]) == 2, f"the actors should have started one on each node, saw {pool}"
    last_round = [t.user_attrs["node"] for t in trials[-8:] if t.user_attrs["status"] == "scored"]  # population 8
    assert last_round and len(set(last_round)) == 1, f"after the loss only the head should score, saw {last_round}"


def _run_files(run_dir: Path) -> dict[str, float]:
    return {str(p.relative_to(run_dir)): p.stat().st_mtime for p in run_dir.rglob("*")}


@pytest.mark.parametrize(
    ("token", "expected"),
    [
        ({}, "requires an authentication token and this driver has none; set RAY_AUTH_TOKEN"),
        ({"RAY_AUTH_TOKEN": "not-the-token"}, "refused the token from RAY_AUTH_TOKEN"),
        ({"RAY_AUTH_TOKEN_PATH": "/nonexistent/token"}, "RAY_AUTH_TOKEN_PATH='/nonexistent/token' is not a readable token file"),
    ],
)
def test_joining_without_the_right_token_is_refused_in_one_line(
    trained_run: Path,
    tmp_path: Path,
    ray_cluster: RayStartCluster,  # noqa: F811
    token: dict[str, str],
    expected: str,
) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir)
    before = _run_files(run_dir)
    elsewhere = tmp_path / "home"  # another machine's user: no ~/.ray/auth_token
    elsewhere.mkdir()
    env = {**ray_cluster.env, "HOME": str(elsewhere), **token}
    result = cli("search", "--executor", "ray", "--ray-address", ray_cluster.address, run_dir=run_dir, env=env)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().count("\n") == 0 and expected in result.stderr, result.stderr
    assert _run_files(run_dir) == before


def test_a_cluster_of_other_versions_is_named_before_joining(
    trained_run: Path,
    tmp_path: Path,
    ray_cluster: RayStartCluster,  # noqa: F811
) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir)
    before = _run_files(run_dir)
    # what a head of another Ray release records: its versions, in the cluster metadata
    edit = (
        "import json, sys\n"
        "from ray._raylet import GcsClient\n"
        "client = GcsClient(address=sys.argv[1])\n"
        "meta = json.loads(client.internal_kv_get(b'CLUSTER_METADATA', namespace=b'cluster'))\n"
        "saved = dict(meta)\n"
        "meta['ray_version'] = sys.argv[2] or saved['ray_version']\n"
        "client.internal_kv_put(b'CLUSTER_METADATA', json.dumps(meta).encode(), True, namespace=b'cluster')\n"
        "print(saved['ray_version'])\n"
    )
    env = {**ray_cluster.env, "RAY_AUTH_MODE": "token"}

    def set_version(version: str) -> str:
        done = subprocess.run([sys.executable, "-c", edit, ray_cluster.address, version], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    ours = set_version("2.0.0")
    try:
        result = cli("search", "--executor", "ray", "--ray-address", ray_cluster.address, run_dir=run_dir, env=ray_cluster.env)
    finally:
        set_version(ours)
    assert result.returncode == 2, result.stderr
    assert "runs Ray 2.0.0 on Python" in result.stderr and f"this driver Ray {ours}" in result.stderr, result.stderr
    assert "pip install 'ray[tune]==2.0.0'" in result.stderr and result.stderr.strip().count("\n") == 0
    assert _run_files(run_dir) == before
