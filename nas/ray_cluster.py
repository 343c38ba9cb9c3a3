"""Connecting this process to Ray: a cluster that `ray start` made, or a Ray of its own.

The one start-up helper for the Ray executor and Tune. Joining by address is checked step by step
before `ray.init`, so a failure says why in one line instead of Ray's 20 seconds of retries:

1. the head answers on TCP (`unreachable`);
2. the authentication token: `ray start` turns token authentication on whenever a token file
   exists (any local `ray.init` writes one to ~/.ray/auth_token), and Ray's driver enables it only
   for `address="auto"`, so a driver joining by address with RAY_AUTH_MODE unset sends no token and
   is refused. We enable token mode whenever a token is available (RAY_AUTH_TOKEN,
   RAY_AUTH_TOKEN_PATH, then ~/.ray/auth_token; Ray's own order): a cluster without authentication
   accepts a token too (measured with Ray 2.60), and RAY_AUTH_MODE=disabled is respected;
3. a GCS client to the head, which fails at once with an authentication error if the token is
   missing or wrong, and reads the Ray and Python versions the cluster runs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ray

from nas.executors import JoinError, unreachable

AUTH_MODE, AUTH_TOKEN, AUTH_TOKEN_PATH = "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"
TOKEN_HELP = "`ray get-auth-token` on the head prints the cluster's token"
METADATA_KEY, METADATA_NAMESPACE = b"CLUSTER_METADATA", b"cluster"  # where the head records its versions


def join(address: str | None, *, log_to_driver: bool = False, logging_level: int = logging.WARNING) -> bool:
    """Connect to the cluster at `address` (or RAY_ADDRESS), or start Ray here; False if already connected."""
    if ray.is_initialized():
        return False  # a caller (or a test) already connected this process: use its Ray and leave it running
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage-stats prompt or upload attempt
    address = address or os.environ.get("RAY_ADDRESS") or None
    quiet: dict[str, Any] = {"include_dashboard": False, "logging_level": logging_level, "log_to_driver": log_to_driver}
    if not address or address == "local":
        # "local" rather than None: None would join any cluster that `ray start` left running on this machine
        ray.init(address="local", num_cpus=os.cpu_count(), **quiet)
        return True
    if address != "auto" and not address.startswith("ray://"):  # "auto" and Ray Client resolve the head themselves
        check_cluster(address)
    try:
        ray.init(address=address, **quiet)
    except ConnectionError as exc:
        raise JoinError(f"cannot join the Ray cluster at {address!r} ({exc}); is `ray start --head` running there?") from None
    except RuntimeError as exc:  # Ray's own version check, for addresses check_cluster does not probe
        if "Version mismatch" in str(exc):
            raise JoinError(f"the Ray cluster at {address!r} runs other versions: {' '.join(str(exc).split())}") from None
        raise
    return True


def check_cluster(address: str) -> None:
    """Raise JoinError unless the head at `address` answers, accepts our token and runs our versions."""
    if problem := unreachable(address):
        raise JoinError(f"cannot reach the Ray cluster at {address!r}: {problem}; check the address and that the head runs")
    source = use_token()
    from ray._raylet import GcsClient  # type: ignore[attr-defined]  # Ray's own client of the head; fails fast where ray.init retries
    from ray.exceptions import AuthenticationError

    try:
        with _stderr_silenced():  # the C++ client logs each refusal to fd 2; the JoinError below says it once
            client = GcsClient(address=address.split("://", 1)[-1])
        metadata = client.internal_kv_get(METADATA_KEY, namespace=METADATA_NAMESPACE)
    except AuthenticationError:
        if source is None and os.environ.get(AUTH_MODE, "").lower() == "disabled":
            raise JoinError(f"the Ray cluster at {address!r} requires a token, but {AUTH_MODE}=disabled here; unset it") from None
        if source is None:
            raise JoinError(
                f"the Ray cluster at {address!r} requires an authentication token and this driver has none; "
                f"set {AUTH_TOKEN} (or copy the head's ~/.ray/auth_token here): {TOKEN_HELP}"
            ) from None
        raise JoinError(f"the Ray cluster at {address!r} refused the token from {source}; {TOKEN_HELP}") from None
    if metadata:
        check_versions(address, json.loads(metadata))


@contextlib.contextmanager
def _stderr_silenced() -> Iterator[None]:
    """File descriptor 2 pointed at /dev/null meanwhile: what Ray's C++ code writes there is dropped."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def token_source() -> str | None:
    """Where Ray would read its authentication token from, or None; JoinError for a broken setting."""
    if os.environ.get(AUTH_TOKEN, "").strip():
        return AUTH_TOKEN
    if path := os.environ.get(AUTH_TOKEN_PATH):
        file = Path(path).expanduser()
        if not file.is_file() or not file.read_text().strip():
            # Ray aborts the process on an unreadable token file rather than falling back: say so first
            raise JoinError(f"{AUTH_TOKEN_PATH}={path!r} is not a readable token file; fix or unset it ({TOKEN_HELP})")
        return f"{AUTH_TOKEN_PATH} ({path})"
    default = Path.home() / ".ray" / "auth_token"
    if default.is_file() and default.read_text().strip():
        return str(default)
    return None


def use_token() -> str | None:
    """Turn Ray's token mode on for this process when a token is available and the mode is unset;
    the token's source, or None when no token is sent."""
    mode = os.environ.get(AUTH_MODE, "").lower()
    if mode not in ("", "token", "disabled"):
        raise JoinError(f"{AUTH_MODE}={os.environ[AUTH_MODE]!r} is not a mode this Ray knows; use 'token' or 'disabled'")
    if mode == "disabled":
        return None
    source = token_source()
    if source is None:
        if mode == "token":
            raise JoinError(f"{AUTH_MODE}=token but no token is set: set {AUTH_TOKEN} or {AUTH_TOKEN_PATH} ({TOKEN_HELP})")
        return None
    if not mode:
        os.environ[AUTH_MODE] = "token"  # workers this process starts inherit it
        from ray._raylet import Config  # type: ignore[attr-defined]  # Ray caches its config at import: re-read it, as Ray does for "auto"

        Config.initialize("")
    return source


def check_versions(address: str, metadata: dict[str, Any]) -> None:
    """Ray's rule, said before ray.init: the same Ray, and the same Python to the patch (or to the
    minor version with RAY_DEFAULT_PYTHON_VERSION_MATCH_LEVEL=minor)."""
    theirs = (str(metadata.get("ray_version")), str(metadata.get("python_version")))
    ours = (ray.__version__, ".".join(map(str, sys.version_info[:3])))
    level = 3 if os.environ.get("RAY_DEFAULT_PYTHON_VERSION_MATCH_LEVEL", "patch") == "patch" else 2
    if theirs[0] != ours[0] or theirs[1].split(".")[:level] != ours[1].split(".")[:level]:
        raise JoinError(
            f"the Ray cluster at {address!r} runs Ray {theirs[0]} on Python {theirs[1]}, this driver Ray {ours[0]} "
            f"on Python {ours[1]}; install the cluster's versions here (pip install 'ray[tune]=={theirs[0]}')"
        )
