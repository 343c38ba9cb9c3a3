"""Stop points: moments at which a test can kill or hold a run, chosen by the test, not by a clock.

A kill test that sleeps and then kills races the machine's load: under a busy CI the process may
already have finished, or not yet started what the test means to interrupt. Instead the code calls
`stop_point(name)` where an interruption is interesting, and a test sets, in the environment of
the process it starts,

    METAPRUNE_STOP=<name>@<count>:kill          SIGKILL itself the count-th time it gets there
    METAPRUNE_STOP=<name>@<count>:hold=<path>   there, create <path>.reached.<pid> and wait until <path> exists
    METAPRUNE_STOP=<name>@<count>+:...          the count-th time and every time after it (hold them all)

Unset (always, outside tests), a stop point costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

ENV = "METAPRUNE_STOP"
# after a search result is flushed; after a training step (before any checkpoint of it); after a
# training checkpoint is written; before a database is opened; as a Tune trial starts
POINTS = ("recorded", "step", "checkpoint", "database", "trial")
_reached: dict[str, int] = {}


def stop_point(name: str, at: int | None = None) -> None:
    """Count one arrival at `name` and act if METAPRUNE_STOP asks for this one. With `at` (a Tune
    trial's candidate number, say), act whenever `at` equals the count asked for, in whichever process
    gets there: Tune's trials run in worker processes that each count on their own."""
    setting = os.environ.get(ENV)
    if not setting:
        return
    where, _, action = setting.partition(":")
    point, _, count = where.partition("@")
    onward = count.endswith("+")
    count = count.removesuffix("+")
    if point not in POINTS or not count.isdigit() or not (action == "kill" or action.startswith("hold=")):
        raise ValueError(f"{ENV}={setting!r}: expected <point>@<count>[+]:kill or :hold=<path>, with a point of {POINTS}")
    if point != name:
        return
    _reached[name] = _reached.get(name, 0) + 1 if at is None else at
    if _reached[name] != int(count) and not (onward and _reached[name] > int(count)):
        return
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    release = Path(action.removeprefix("hold="))
    release.with_name(f"{release.name}.reached.{os.getpid()}").touch()  # per process: several may wait on one release
    while not release.exists():
        time.sleep(0.05)
