"""The search space: which keys may be searched, Ray Tune's space and search algorithm from `search_space`, and
the two probes of the dry build that checks every searched value acts before Ray starts."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from sentinel.config.schema import AugmentationConfig
from sentinel.config.validate import param_specs
from sentinel.errors import ConfigError
from sentinel.runtime.ultralytics_facts import UltralyticsFacts

VAL_LOSSES = ("val/box_loss", "val/cls_loss", "val/dfl_loss")  # reported with the metrics each epoch
# Training arguments a search space must not touch: they belong to Sentinel or to Ray, not to the search.

NOT_TUNABLE = frozenset(
    {
        "data",
        "epochs",
        "model",
        "device",
        "project",
        "name",
        "exist_ok",
        "resume",
        "workers",
        "mode",
        "task",
        "save_dir",
        "pretrained",
    }
)


SEARCH_ALG_PACKAGES = {"optuna": "optuna", "hyperopt": "hyperopt"}


def check_search_space(space: Mapping[str, Any], facts: UltralyticsFacts) -> None:
    """Every parameter must be a real, tunable Ultralytics training argument with sensible bounds."""
    for name, spec in param_specs(space).items():
        key = f"search_space.{name}"
        if name not in facts.arguments:
            raise ConfigError(
                key,
                f"{name!r} is not an Ultralytics training argument",
                "see ultralytics/cfg/default.yaml for the names",
            )
        if name in NOT_TUNABLE:
            raise ConfigError(key, f"{name!r} is set by Sentinel, not tuned", "remove it from the search space")
        values = list(spec.values or []) if spec.dist == "choice" else [spec.low, spec.high]
        if name in facts.fractions and any(not 0.0 <= float(v) <= 1.0 for v in values):
            raise ConfigError(key, f"{name} is a fraction; {values} is not within [0, 1]")
        if spec.dist == "randint" and any(float(v) != int(v) for v in values):
            raise ConfigError(key, f"randint needs whole-number bounds, got {values}")


def ray_space(space: Mapping[str, Any]) -> dict[str, Any]:
    """search_space → Ray Tune distributions. randint is Ray's: integers in [low, high)."""
    from ray import tune

    make = {
        "uniform": lambda s: tune.uniform(s.low, s.high),
        "loguniform": lambda s: tune.loguniform(s.low, s.high),
        "randint": lambda s: tune.randint(int(s.low), int(s.high)),
        "choice": lambda s: tune.choice(list(s.values)),
    }
    return {name: make[spec.dist](spec) for name, spec in param_specs(space).items()}


def make_search_alg(name: str, seed: int, metric: str, mode: str, max_concurrent: int) -> Any:
    """Ray's random generator (seeded, so the same seed samples the same trials); optuna and hyperopt need their
    packages. Each takes the concurrency limit itself (BasicVariantGenerator's own, a ConcurrencyLimiter around
    the others): Ray ignores TuneConfig's max_concurrent_trials for a generator passed in, with only a warning
    (ray#36080), so run_search does not pass it."""
    if name == "random":
        from ray.tune.search.basic_variant import BasicVariantGenerator

        return BasicVariantGenerator(random_state=seed, max_concurrent=max_concurrent)
    from ray.tune.search import ConcurrencyLimiter

    try:
        if name == "optuna":
            from ray.tune.search.optuna import OptunaSearch

            return ConcurrencyLimiter(OptunaSearch(metric=metric, mode=mode, seed=seed), max_concurrent)
        from ray.tune.search.hyperopt import HyperOptSearch

        return ConcurrencyLimiter(HyperOptSearch(metric=metric, mode=mode, random_state_seed=seed), max_concurrent)
    except (ImportError, AssertionError):
        raise ConfigError(
            "tune.search_alg",
            f"{name} needs the package {SEARCH_ALG_PACKAGES[name]!r}",
            f"pip install {SEARCH_ALG_PACKAGES[name]}",
        ) from None


def check_metric(metric: str, facts: UltralyticsFacts) -> None:
    """tune.metric must be a name Ultralytics reports each epoch; a typo would fail every trial after epoch 1."""
    known = [*facts.metrics, *VAL_LOSSES]
    if metric not in known:
        close = difflib.get_close_matches(metric, known, n=1)
        hint = f"did you mean {close[0]}?" if close else "use one of " + ", ".join(known)
        raise ConfigError("tune.metric", f"{metric!r} is not a metric Ultralytics reports", hint)


def space_probes(space: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Two points of the space: every dimension at a quarter and at three quarters of its range (in its own
    scale; a choice's first and last value).

    Not the ends: at a range's low end a zero switches related keys off (warmup_epochs=0 leaves
    warmup_momentum nothing to act on), which a search samples almost never, and would refuse a sound space.
    """
    lower: dict[str, Any] = {}
    upper: dict[str, Any] = {}
    for name, spec in param_specs(space).items():
        if spec.dist == "choice":
            lower[name], upper[name] = spec.values[0], spec.values[-1]
        elif spec.dist == "randint":  # Ray's randint excludes high
            span = int(spec.high) - 1 - int(spec.low)
            lower[name], upper[name] = int(spec.low) + round(span / 4), int(spec.low) + round(3 * span / 4)
        elif spec.dist == "loguniform":
            ratio = spec.high / spec.low
            lower[name], upper[name] = spec.low * ratio**0.25, spec.low * ratio**0.75
        else:
            span = spec.high - spec.low
            lower[name], upper[name] = spec.low + span / 4, spec.low + 3 * span / 4
    return {"lower": lower, "upper": upper}


def config_key(name: str, searched: dict[str, Any]) -> str:
    """The config key a training argument came from, for an error a user can act on."""
    if name in searched:
        return f"search_space.{name}"
    if name in AugmentationConfig.__dataclass_fields__:
        return f"augmentation.{name}"
    return {"cls_pw": "training.class_weights", "optimizer": "training.optimizer"}.get(name, f"model.{name}")
