"""SIGTERM ends a run as Ctrl-C does, in every mode (`kill`, a scheduler, a container stopping).

Its default ends the process where it stands: no state written, no MLflow run ended. As SIGINT, every stage's
Ctrl-C path runs (Ray Tune saves its state and returns, the merge stops its pool), the run is recorded as
unfinished and resumable, and train.py exits 143. A library that takes SIGTERM over is given it back:
`ray.init` installs a handler of its own and its core worker a native one that prints a stack dump and aborts
(SIGABRT), so sentinel.runtime.raycluster calls `take_back_sigterm` after it connects.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

EXIT_CODE = 143  # what a shell reports for a process ended by SIGTERM
_received: list[int] = []  # the SIGTERMs this process got: signal handlers are process-wide by nature
_installed: list[bool] = []


def _as_ctrl_c(signum: int, frame: Any) -> None:
    _received.append(signum)
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        # A process started with SIGINT ignored (a script's background job, a test runner's worker) gets no
        # KeyboardInterrupt from raising it: SIGTERM would do nothing. Python's own Ctrl-C is this exception.
        raise KeyboardInterrupt
    signal.raise_signal(signal.SIGINT)


def handle_sigterm_as_ctrl_c() -> Any:
    """Install the handler (from the main thread); returns the previous one, to restore."""
    _installed.append(True)
    return signal.signal(signal.SIGTERM, _as_ctrl_c)


def take_back_sigterm() -> None:
    """After a library replaced the handler: install it again, if this process uses it."""
    if _installed and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _as_ctrl_c)


def terminated() -> bool:
    """Whether the interrupt being handled came from SIGTERM (exit 143, not Ctrl-C's 130)."""
    return bool(_received)
