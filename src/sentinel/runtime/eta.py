"""How long work has left, in words, for the progress lines of a search and a fine-tune."""

from __future__ import annotations


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
