"""A Ray cluster started as users start one: `ray start --head`, then `ray start --address` for a
second node, on loopback, with token authentication on, for tests of the Ray executor and the CLI.

Use it from a test module with `from tests.ray_cluster import ray_cluster  # noqa: F401` and a
`ray_cluster` argument. The test process itself does not connect: a driver in a subprocess joins with
`cluster.env` (HOME holding the cluster's token in ~/.ray/auth_token, where `ray get-auth-token
--generate` put it), as a user's driver would on the head machine.

Ray allows two nodes on one machine: each `ray start` runs its own raylet (its own node id and
resources) against the same head; the second one is told apart by its node-manager port.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

NODE_CPUS = 1  # per node, so two one-CPU actors must land on different nodes
RAY = str(Path(sys.executable).with_name("ray"))  # the `ray` command of this environment


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class RayStartCluster:
    address: str  # the head, as `ray start --head` prints it
    env: dict[str, str]  # a driver's environment: HOME with the token, the project on PYTHONPATH
    worker_port: int = 0  # node-manager port of the current second node

    def ray(self, *args: str, extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """Run the `ray` command as a user on this machine would."""
        return subprocess.run([RAY, *args], env={**self.env, **(extra or {})}, capture_output=True, text=True, timeout=120)

    def start_worker(self) -> None:
        """A second node joining the head (worker nodes need RAY_AUTH_MODE=token: they do not turn it on themselves)."""
        self.worker_port = free_port()
        started = self.ray(
            "start", f"--address={self.address}", f"--num-cpus={NODE_CPUS}", "--node-ip-address=127.0.0.1",
            f"--node-manager-port={self.worker_port}", extra={"RAY_AUTH_MODE": "token"},
        )  # fmt: skip
        assert started.returncode == 0, started.stdout + started.stderr
        self.wait_for_nodes(2)

    def alive_nodes(self) -> int:
        code = (
            f"import ray; ray.init(address={self.address!r}, logging_level='ERROR')\nprint(sum(n['Alive'] for n in ray.nodes()))"
        )
        env = {**self.env, "RAY_AUTH_MODE": "token"}  # a bare ray.init by address sends no token without it
        run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
        return int(run.stdout.strip().splitlines()[-1]) if run.returncode == 0 else -1

    def wait_for_nodes(self, count: int, timeout: float = 60.0) -> None:
        deadline = time.time() + timeout
        while (alive := self.alive_nodes()) != count:
            assert time.time() < deadline, f"{alive} Ray nodes alive, expected {count}"
            time.sleep(0.5)

    def kill_worker_raylet(self) -> int:
        """SIGKILL the second node's raylet (as a crashed machine would go); its pid."""
        for entry in Path("/proc").iterdir():
            try:
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if "raylet" in command.split(" ", 1)[0] and f"--node_manager_port={self.worker_port}" in command:
                os.kill(int(entry.name), signal.SIGKILL)
                return int(entry.name)
        raise AssertionError(f"no raylet with node manager port {self.worker_port}")


@pytest.fixture(scope="session")  # one cluster for every module that asks: starting one costs ~10 s
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayStartCluster]:
    if shutil.which(RAY) is None:
        pytest.skip(f"no `ray` command beside {sys.executable}")
    home = tmp_path_factory.mktemp("ray-home")
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "HOME": str(home), "PYTHONPATH": str(root), "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1"}
    for name in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        env.pop(name, None)
    cluster = RayStartCluster(f"127.0.0.1:{free_port()}", env)
    try:
        token = cluster.ray("get-auth-token", "--generate")
        assert token.returncode == 0 and (home / ".ray" / "auth_token").is_file(), token.stderr
        head = cluster.ray(
            "start", "--head", f"--port={cluster.address.rsplit(':', 1)[1]}", f"--num-cpus={NODE_CPUS}",
            "--node-ip-address=127.0.0.1", "--include-dashboard=false",
        )  # fmt: skip
        assert head.returncode == 0, head.stdout + head.stderr
        cluster.start_worker()
        yield cluster
    finally:
        cluster.ray("stop", "--force")  # every Ray process on this machine: the tests run one cluster at a time
