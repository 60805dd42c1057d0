"""Errors a user can act on. `train.py` prints their message (no traceback) and exits non-zero."""

from __future__ import annotations


class SentinelError(Exception):
    """A problem with the user's input or environment; the message names the file/key and the fix."""


class ConfigError(SentinelError):
    """A config value that types cannot rule out (ranges, combinations). Names the full dotted key."""

    def __init__(self, key: str, problem: str, fix: str = "") -> None:
        self.key = key
        message = f"config key '{key}': {problem}"
        if fix:
            message += f". Fix: {fix}"
        super().__init__(message)


class Interrupted(SentinelError):
    """A stage stopped before it finished (Ctrl-C, SIGTERM): it stays resumable and is never recorded as done."""

    exit_code = 130  # what a shell reports for a process ended by SIGINT
