"""A throwaway PostgreSQL server for the storage tests, started as its own user on a loopback port.

    python -m tests.postgres_server start DIR   # prints the server's URL (a superuser with a password)
    python -m tests.postgres_server stop DIR

`.ci/run` starts one and exports its URL as METAPRUNE_TEST_POSTGRES_URL; without that the tests'
fixture starts one itself. The server refuses to run as root, so as root it runs as the `postgres`
user that Debian's package creates. DIR is made here, under /tmp (pytest's own temporary folders
are private to root, which the `postgres` user cannot enter).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
from pathlib import Path

USER, PASSWORD = "metaprune", "test-password"


class Unavailable(RuntimeError):
    """Why no server could be started here (the tests skip with this reason)."""


def _bindir() -> Path:
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if not versions:
        raise Unavailable("no PostgreSQL server installed (Debian: apt-get install postgresql)")
    return Path(versions[-1]).parent


def _as_server_user(command: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return command
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise Unavailable("running as root and no `postgres` user to run the server as") from None
    return ["runuser", "-u", "postgres", "--", *command]


def _run(command: list[str]) -> None:
    done = subprocess.run(_as_server_user(command), capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise Unavailable(f"{Path(command[0]).name} failed: {(done.stderr or done.stdout).strip().splitlines()[-1:]}")


def start(directory: Path) -> str:
    """initdb and start a server in `directory`; its URL."""
    bindir = _bindir()
    directory.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        shutil.chown(directory, "postgres")
    password_file = directory / "password"
    password_file.write_text(PASSWORD + "\n")
    if os.geteuid() == 0:
        shutil.chown(password_file, "postgres")
    data = directory / "data"
    _run([str(bindir / "initdb"), "-D", str(data), "-U", USER, f"--pwfile={password_file}", "--auth=scram-sha-256", "-E", "UTF8"])
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    options = f"-c listen_addresses=127.0.0.1 -p {port} -k {directory} -c fsync=off -c max_connections=50"
    _run([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(directory / "server.log"), "-o", options, "-w", "start"])
    url = f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{port}/postgres"
    (directory / "url").write_text(url + "\n")
    return url


def stop(directory: Path) -> None:
    data = directory / "data"
    if (data / "postmaster.pid").exists():
        _run([str(_bindir() / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"])


if __name__ == "__main__":
    action, where = sys.argv[1], Path(sys.argv[2])
    try:
        if action == "start":
            print(start(where))
        else:
            stop(where)
    except Unavailable as exc:
        print(f"PostgreSQL unavailable: {exc}", file=sys.stderr)
        sys.exit(1)
