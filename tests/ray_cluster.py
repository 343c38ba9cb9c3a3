"""A Ray cluster started as users start one, by the README's own cluster commands (run as written,
with HEAD_IP, TOKEN and the port filled in): `ray start --head`, then `ray start --address` for a
second node, on loopback, with token authentication on, for tests of the Ray executor and the CLI.

Use it from a test module with `from tests.ray_cluster import ray_cluster  # noqa: F401` and a
`ray_cluster` argument. The test process itself does not connect: a driver in a subprocess joins with
`cluster.env` (HOME holding the cluster's token in ~/.ray/auth_token, where `ray get-auth-token
--generate` put it), as a user's driver would on the head machine.

Ray allows two nodes on one machine: each `ray start` runs its own raylet (its own node id and
resources) against the same head; the second one is told apart by its raylet's pid. Each node is
told its share of this machine's cores (`--num-cpus`, the one flag added to the README's commands):
left alone, both claim every core, the executor gives each actor as many threads, and the
oversubscribed threads made each chunk ~10x slower (12 candidates: 34 s of scoring against 2.5 s).
"""

from __future__ import annotations

import contextlib
import os
import re
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

RAY = str(Path(sys.executable).with_name("ray"))  # the `ray` command of this environment
NODE_CPUS = max(1, (os.cpu_count() or 2) // 2)  # two nodes share this machine's cores
README = Path(__file__).resolve().parents[1] / "README.md"
MARKER = "<!-- cluster-commands -->"
SECTIONS = ("on the head machine", "on every other machine", "the driver", "when done")


def readme_commands() -> dict[str, list[str]]:
    """The README's cluster block, by section (the comment line that opens it)."""
    text = README.read_text()
    block = text[text.index(MARKER) :].split("```bash\n", 1)[1].split("```", 1)[0]
    sections: dict[str, list[str]] = {}
    current = ""
    for line in block.splitlines():
        if line.startswith("#"):
            current = next((name for name in SECTIONS if line[1:].strip().startswith(name)), line)
        elif line.strip():
            sections.setdefault(current, []).append(line)
    assert set(sections) == set(SECTIONS), f"the README's cluster block has sections {list(sections)}"
    return sections


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class RayStartCluster:
    address: str  # the head, as `ray start --head` prints it
    env: dict[str, str]  # a driver's environment: HOME with the token, the project on PYTHONPATH
    worker_raylet: int = 0  # pid of the current second node's raylet

    def ray(self, *args: str, extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """Run the `ray` command as a user on this machine would."""
        return subprocess.run([RAY, *args], env={**self.env, **(extra or {})}, capture_output=True, text=True, timeout=120)

    def fill(self, command: str) -> str:
        """A README command with this cluster's head, port and token."""
        host, port = self.address.rsplit(":", 1)
        command = command.replace("HEAD_IP", host).replace("6379", port)
        if command.startswith("ray start "):
            command += f" --num-cpus={NODE_CPUS}"
        if re.search(r"\bTOKEN\b", command):  # what `ray get-auth-token` prints on the head
            command = re.sub(r"\bTOKEN\b", (Path(self.env["HOME"]) / ".ray" / "auth_token").read_text().strip(), command)
        return command

    def run_section(self, section: str) -> None:
        """Run one section of the README's block in bash, as a user types it."""
        script = "set -e\n" + "\n".join(self.fill(c) for c in readme_commands()[section])
        done = subprocess.run(["bash", "-c", script], env=self.env, capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, f"README section {section!r} failed:\n{script}\n{done.stdout}{done.stderr}"

    def start_worker(self) -> None:
        """A second node joining the head: the README's "on every other machine", on this one."""
        before = raylets()
        self.run_section("on every other machine")
        (self.worker_raylet,) = raylets() - before
        self.wait_for_nodes(2)

    def alive_nodes(self) -> int:
        code = (
            f"import ray; ray.init(address={self.address!r}, logging_level='ERROR')\n"
            "print('alive', sum(n['Alive'] for n in ray.nodes()))"
        )
        env = {**self.env, "RAY_AUTH_MODE": "token"}  # a bare ray.init by address sends no token without it
        run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
        counts = [line.split()[1] for line in run.stdout.splitlines() if line.startswith("alive ")]  # Ray prints warnings too
        return int(counts[-1]) if run.returncode == 0 and counts else -1

    def wait_for_nodes(self, count: int, timeout: float = 60.0) -> None:
        deadline = time.time() + timeout
        while (alive := self.alive_nodes()) != count:
            assert time.time() < deadline, f"{alive} Ray nodes alive, expected {count}"
            time.sleep(0.5)

    def kill_worker_raylet(self) -> int:
        """SIGKILL the second node's raylet and every process under it, its actors' workers included,
        as a crashed machine would go (an actor's worker outlives its raylet for a while and goes on
        answering the driver directly); the raylet's pid."""
        doomed, todo = [self.worker_raylet], [self.worker_raylet]
        while todo:
            above = todo.pop()
            children = [pid for pid, parent in parents().items() if parent == above]
            doomed += children
            todo += children
        for pid in doomed:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return self.worker_raylet


def parents() -> dict[int, int]:
    """{pid: parent pid} of every process on this machine."""
    found = {}
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError, IndexError, ValueError):
            found[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
    return found


def raylets() -> set[int]:
    """The pids of every raylet on this machine (from /proc: no psutil needed)."""
    found = set()
    for entry in Path("/proc").iterdir():
        try:
            program = (entry / "cmdline").read_bytes().split(b"\0", 1)[0]
        except OSError:
            continue
        if program.endswith(b"/raylet"):
            found.add(int(entry.name))
    return found


@pytest.fixture(scope="session")  # one cluster for every module that asks: starting one costs ~10 s
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayStartCluster]:
    if shutil.which(RAY) is None:
        pytest.skip(f"no `ray` command beside {sys.executable}")
    home = tmp_path_factory.mktemp("ray-home")
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "HOME": str(home), "PYTHONPATH": str(root), "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1"}
    for name in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        env.pop(name, None)
    env["PATH"] = f"{Path(RAY).parent}{os.pathsep}{env.get('PATH', '')}"  # `ray` and `python` as after activating
    cluster = RayStartCluster(f"127.0.0.1:{free_port()}", env)
    try:
        cluster.run_section("on the head machine")
        assert (home / ".ray" / "auth_token").is_file()
        cluster.start_worker()
        yield cluster
    finally:
        cluster.run_section("when done")  # `ray stop`: every Ray process of this machine (one cluster at a time here)
