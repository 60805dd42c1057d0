"""How long work has left, in words, for the progress lines of a search and a fine-tune."""

from __future__ import annotations

import logging
import time


def time_left(done: float, total: float, elapsed_s: float) -> str:
    """`about 3 min left` from the rate so far (`done` of `total` units in `elapsed_s`); an upper bound where
    work can end early (ASHA, patience)."""
    if done <= 0 or elapsed_s <= 0:
        return "time left: after the first epoch"
    if done >= total:
        return "nothing left"
    return f"about {duration(elapsed_s / done * (total - done))} left"


def duration(seconds: float) -> str:
    """`40 s`, `3 min`, `1 h 5 min`: rounded as a person would say it."""
    if seconds < 60:
        return f"{max(1, round(seconds))} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60} min"


class ProgressLines:
    """Progress as log lines, at most one per `every_s` seconds: what a progress bar shows on a terminal, for a
    log file or a console that is not one (tqdm's bar then stays off)."""

    def __init__(self, log: logging.Logger, what: str, total: int, every_s: float = 10.0) -> None:
        self.log, self.what, self.total, self.every_s = log, what, total, every_s
        self.done = 0
        self.started = self.shown = time.monotonic()

    def update(self, count: int) -> None:
        self.done += count
        now = time.monotonic()
        if now - self.shown < self.every_s or self.done >= self.total:
            return
        self.shown = now
        left = time_left(self.done, self.total, now - self.started)
        self.log.info("%s: %d of %d (%d%%), %s", self.what, self.done, self.total, 100 * self.done // self.total, left)
