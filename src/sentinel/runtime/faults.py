"""Fault injection for tests that kill a process: a kill that cannot miss its moment.

A test that sends SIGKILL after a sleep races the work (a fast machine finishes first, a slow one has not
started). Instead the test sets `SENTINEL_KILL_AFTER=<point>:<n>` and the process kills itself with SIGKILL
the n-th time it passes `kill_point("<point>")` — a place in the code where a crash is worth proving safe.
`SENTINEL_RAISE_AT=<point>` raises a RuntimeError there instead: an unforeseen error, to prove it reaches
the user as one line and the log as a full traceback. `SENTINEL_HOLD_AT=<point>:<file>` holds the process at
`hold_point("<point>")` until the test creates <file>: a moment that is otherwise a race (a service still
starting when train.py ends) made certain. Unset (always, outside tests), a kill point costs
two dictionary look-ups.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter

KILL_ENV = "SENTINEL_KILL_AFTER"
RAISE_ENV = "SENTINEL_RAISE_AT"
HOLD_ENV = "SENTINEL_HOLD_AT"
HOLD_LIMIT_S = 600.0  # a test that never releases the hold fails on its own time limit, not a hang
_passes: Counter[str] = Counter()
_lock = threading.Lock()


def kill_point(point: str) -> None:
    """SIGKILL this process here if SENTINEL_KILL_AFTER names this point and its count is reached."""
    if os.environ.get(RAISE_ENV) == point:
        raise RuntimeError(f"injected fault at {point}")
    count = armed(KILL_ENV, point)
    if count is None:
        return
    with _lock:
        _passes[point] += 1
        reached = _passes[point] >= int(count or 1)
    if reached:
        os.kill(os.getpid(), signal.SIGKILL)


def hold_point(point: str) -> None:
    """Wait here until the file SENTINEL_HOLD_AT names exists, if it names this point (at most HOLD_LIMIT_S)."""
    release = armed(HOLD_ENV, point)
    if release is None:
        return
    deadline = time.monotonic() + HOLD_LIMIT_S
    while not os.path.exists(release) and time.monotonic() < deadline:
        time.sleep(0.05)


def armed(env: str, point: str) -> str | None:
    """What follows `<point>:` in the variable `env` when it names this point (`""` when nothing does); None
    when it names another point or is unset."""
    wanted = os.environ.get(env)
    if not wanted:
        return None
    name, _, argument = wanted.partition(":")
    return argument if name == point else None
