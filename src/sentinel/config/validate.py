"""Range and combination checks that types cannot express, run once before any work.

Every failure raises ConfigError with the full dotted key, so `train.py` can print one actionable line.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from sentinel.config.schema import OPTIMIZERS, SOURCE_SCHEMAS, Mode, ParamSpace, SentinelConfig
from sentinel.errors import ConfigError

DISTRIBUTIONS = ("uniform", "loguniform", "randint", "choice")
SEARCH_ALGS = ("random", "optuna", "hyperopt")
LINK_MODES = ("hardlink", "symlink", "copy")
DEMO_LAYOUTS = ("roboflow", "fiftyone")
REPLACED_BY_AUTO = ("lr0", "momentum", "warmup_bias_lr")  # what Ultralytics' optimizer=auto overrides


def validate(cfg: DictConfig) -> None:
    """Check the whole composed config; raise ConfigError on the first problem found."""
    check_known_keys(cfg)
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(missing[0], "is required but has no value (???)", f"set it, e.g. {missing[0]}=...")
    _check_datasets(cfg.datasets)
    _check_merge(cfg.merge)
    _check_search_space(cfg.search_space)
    _check_hardware(cfg.hardware)
    _check_model(cfg.model)
    _check_training(cfg.training)
    _check_inspect(cfg.inspect)
    _check_predict(cfg.predict, cfg.mode)
    _check_tune(cfg.tune)
    _check_stages(cfg)
    _check_tracking(cfg.tracking)
    _check_optimizer(cfg.training.optimizer, cfg.search_space)
    _check_close_mosaic(cfg)
    _check_data_dir(cfg.data_dir)


def typed_config(cfg: DictConfig) -> SentinelConfig:
    """The checked config as the schema's dataclasses, every interpolation resolved: what the stages receive.

    The pipeline calls this once, after `validate`; below it nothing reads an OmegaConf node (no struct
    checks on each attribute, no lazy interpolation: the values a stage reads are the ones recorded in
    config_resolved.yaml). `datasets` entries come back as their source's dataclass (RoboflowSource, …);
    `search_space` stays a dict of dicts, read through `param_specs`.
    """
    typed = OmegaConf.to_object(cfg)
    if not isinstance(typed, SentinelConfig):  # a config composed without conf/config.yaml's schema
        raise TypeError(f"expected a config with the SentinelConfig schema, got {type(typed).__name__}")
    return typed


def check_known_keys(node: DictConfig, path: str = "") -> None:
    """Every key of a schema-typed node must be one of its fields.

    `+key=value` makes Hydra add a key even where the schema has none (`+model.epoch=5` next to
    model.epochs), and the value would silently do nothing. Free-form nodes (datasets, search_space,
    merge.aliases) hold the user's own names; their typed children are still checked.
    """
    schema = OmegaConf.get_type(node)
    known = {f.name for f in dataclasses.fields(schema)} if dataclasses.is_dataclass(schema) else None
    for key in node:
        full = f"{path}{key}"
        if known is not None and key not in known:
            close = difflib.get_close_matches(str(key), sorted(known), n=1)
            hint = f"did you mean {path}{close[0]}?" if close else f"valid keys here: {', '.join(sorted(known))}"
            raise ConfigError(full, "is not a Sentinel setting (added with +, so nothing would read it)", hint)
        child = node._get_node(key)
        if isinstance(child, DictConfig) and not child._is_none() and not child._is_missing():
            check_known_keys(child, f"{full}.")


def _check_datasets(datasets: DictConfig) -> None:
    if len(datasets) == 0:
        raise ConfigError("datasets", "no dataset selected", "pick some, e.g. datasets=[demo]")
    for name, source in datasets.items():
        key = f"datasets.{name}"
        type_name = source.get("type")
        if type_name not in SOURCE_SCHEMAS:
            raise ConfigError(
                f"{key}.type", f"unknown source type {type_name!r}", f"use one of {sorted(SOURCE_SCHEMAS)}"
            )
        if type_name == "coco" and not 0.0 <= source.test_fraction < 1.0:
            raise ConfigError(f"{key}.test_fraction", f"{source.test_fraction} is not in [0, 1)")
        if type_name == "coco" and source.max_samples is not None and source.max_samples < 1:
            raise ConfigError(f"{key}.max_samples", "must be at least 1, or null for all")
        if type_name == "demo":
            if source.layout not in DEMO_LAYOUTS:
                raise ConfigError(f"{key}.layout", f"unknown layout {source.layout!r}", f"use one of {DEMO_LAYOUTS}")
            if len(source.names) == 0:
                raise ConfigError(f"{key}.names", "needs at least one class name")
            if source.imgsz < 32:
                raise ConfigError(f"{key}.imgsz", f"{source.imgsz} is too small", "use 32 or more")
        if type_name == "roboflow" and source.timeout_s <= 0:
            raise ConfigError(f"{key}.timeout_s", "must be positive")


def _check_merge(merge: DictConfig) -> None:
    if merge.link not in LINK_MODES:
        raise ConfigError("merge.link", f"unknown link mode {merge.link!r}", f"use one of {LINK_MODES}")
    if merge.workers < 1:
        raise ConfigError("merge.workers", "must be at least 1")
    overlap = set(merge.include) & set(merge.exclude)
    if overlap:
        raise ConfigError("merge.include", f"{sorted(overlap)} also in merge.exclude", "list a class in one of them")
    for key in ("balance_target_ratio", "balance_warn_ratio"):
        if not merge[key] >= 1.0:
            raise ConfigError(f"merge.{key}", f"must be at least 1 (most / least frequent class), got {merge[key]}")


def _check_search_space(space: DictConfig) -> None:
    for name, spec in param_specs(space).items():
        key = f"search_space.{name}"
        if spec.dist not in DISTRIBUTIONS:
            raise ConfigError(f"{key}.dist", f"unknown distribution {spec.dist!r}", f"use one of {DISTRIBUTIONS}")
        if spec.dist == "choice":
            if not spec.values:
                raise ConfigError(f"{key}.values", "choice needs a non-empty list of values")
            continue
        low, high = spec.low, spec.high
        if low is None or high is None:
            raise ConfigError(key, f"{spec.dist} needs both low and high")
        if not (_finite(low) and _finite(high)) or low >= high:
            raise ConfigError(f"{key}.low", f"low ({low}) must be below high ({high})")
        if spec.dist == "loguniform" and low <= 0:
            raise ConfigError(f"{key}.low", f"loguniform needs low > 0, got {low}")


def _check_training(training: DictConfig) -> None:
    if not 0.0 <= training.class_weights <= 1.0:  # Ultralytics asserts it deep in training otherwise
        raise ConfigError(
            "training.class_weights", f"must be between 0 and 1, got {training.class_weights}", "use 0 (off) to 1"
        )


def _check_inspect(inspect: DictConfig) -> None:
    if not 0.0 < inspect.iou <= 1.0:
        raise ConfigError("inspect.iou", f"must be above 0 and at most 1, got {inspect.iou}", "use e.g. 0.5")
    for key in ("gallery", "worst"):
        if inspect[key] < 0:
            raise ConfigError(f"inspect.{key}", f"must be 0 or more, got {inspect[key]}")
    if not 1 <= inspect.port <= 65535:
        raise ConfigError("inspect.port", f"{inspect.port} is not a TCP port", "use e.g. 5151")


def _check_predict(predict: DictConfig, mode: str) -> None:
    """Values alone; whether the source exists and the weights know the classes is checked by mode=predict."""
    if mode == "predict" and not str(predict.source).strip():  # Mode is a str enum
        raise ConfigError(
            "predict.source",
            "is empty: mode=predict needs something to run on",
            "give an image, a folder, a glob, a video, an rtsp:// or http:// stream or a camera index, "
            "e.g. predict.source=clips/door.mp4",
        )
    for key in ("conf", "iou"):
        if not 0.0 <= predict[key] <= 1.0:
            raise ConfigError(f"predict.{key}", f"must be between 0 and 1, got {predict[key]}", "e.g. 0.25")
    for name, threshold in predict.alert.items():
        if not isinstance(threshold, (int, float)) or not 0.0 <= threshold <= 1.0:
            raise ConfigError(
                f"predict.alert.{name}", f"must be a confidence between 0 and 1, got {threshold!r}", "e.g. {gun: 0.5}"
            )
    for key in ("vid_stride", "alert_min_frames"):
        if predict[key] < 1:
            raise ConfigError(f"predict.{key}", f"must be at least 1, got {predict[key]}")
    if predict.imgsz is not None and (predict.imgsz < 32 or predict.imgsz % 32):
        raise ConfigError(
            "predict.imgsz", f"must be a multiple of 32 (the model's stride), got {predict.imgsz}", "e.g. 640"
        )
    if not predict.timeout_s > 0:
        raise ConfigError("predict.timeout_s", f"must be above 0 seconds, got {predict.timeout_s}", "e.g. 10")


def _check_hardware(hw: DictConfig) -> None:
    if hw.cpu_per_trial <= 0:
        raise ConfigError("hardware.cpu_per_trial", f"must be positive, got {hw.cpu_per_trial}")
    if hw.gpu_per_trial < 0:
        raise ConfigError("hardware.gpu_per_trial", f"must be 0 or more, got {hw.gpu_per_trial}")
    if 0 < hw.gpu_per_trial < 1 and not _packs_evenly(hw.gpu_per_trial):
        raise ConfigError(
            "hardware.gpu_per_trial",
            f"{hw.gpu_per_trial} does not divide a GPU evenly",
            "use 0.5, 0.25, 0.2 …",
        )
    if hw.gpu_per_trial > 1:
        # Ultralytics trains on several GPUs by starting DDP processes of its own (torch.distributed.run);
        # inside a Ray Tune trial those would train while the trial, which reports each epoch to Ray, waits
        # outside them. Rather than reserve two GPUs and train on one, a trial gets one GPU or a share of one.
        raise ConfigError(
            "hardware.gpu_per_trial",
            f"{hw.gpu_per_trial:g} GPUs per trial: a trial trains on one GPU (multi-GPU DDP runs outside the trial)",
            "use hardware.gpu_per_trial=1 (more trials at once: hardware.max_concurrent_trials) or a share such as "
            "0.5; fine-tune on several GPUs with hardware=multi_gpu",
        )
    if hw.max_concurrent_trials < 1:
        raise ConfigError("hardware.max_concurrent_trials", "must be at least 1")
    if hw.workers < 0:
        raise ConfigError("hardware.workers", "must be 0 or more")
    if hw.max_failures < 0:
        raise ConfigError("hardware.max_failures", f"must be 0 or more, got {hw.max_failures}")


def _check_model(model: DictConfig) -> None:
    for key in ("imgsz", "epochs"):
        if model[key] < 1:
            raise ConfigError(f"model.{key}", f"must be at least 1, got {model[key]}")
    if model.patience < 0:
        raise ConfigError("model.patience", "must be 0 or more")
    if not str(model.weights).endswith((".pt", ".yaml", ".yml")):
        raise ConfigError("model.weights", f"{model.weights!r} is neither a .pt nor a .yaml model")
    name = str(model.output_name)
    if not name.endswith(".pt") or "/" in name or "\\" in name or name.startswith("."):
        raise ConfigError(
            "model.output_name",
            f"{name!r} is not a plain .pt file name (the weights are saved inside the run folder)",
            "use a name like sentinel.pt; copy the file elsewhere yourself after the run",
        )


def _check_tune(tune: DictConfig) -> None:
    if tune.search_alg not in SEARCH_ALGS:
        raise ConfigError("tune.search_alg", f"unknown {tune.search_alg!r}", f"use one of {SEARCH_ALGS}")
    if tune.mode not in ("max", "min"):
        raise ConfigError("tune.mode", f"must be max or min, got {tune.mode!r}")
    if tune.num_samples < 1 or tune.epochs < 1:
        raise ConfigError("tune.num_samples", "num_samples and epochs must be at least 1")
    if tune.epochs == 1 and tune.grace_period != 1:
        raise ConfigError("tune.grace_period", "must be 1 when tune.epochs=1", "set tune.grace_period=1")
    if tune.epochs > 1 and not 0 < tune.grace_period < tune.epochs:
        raise ConfigError(
            "tune.grace_period", f"{tune.grace_period} must be in [1, tune.epochs={tune.epochs})", "lower it"
        )
    if tune.reduction_factor < 2:
        raise ConfigError("tune.reduction_factor", "must be at least 2")


EVALUATE_SPLITS = ("test", "val", "train")


def _check_stages(cfg: DictConfig) -> None:
    if cfg.evaluate.split not in EVALUATE_SPLITS:
        raise ConfigError("evaluate.split", f"unknown split {cfg.evaluate.split!r}", f"use one of {EVALUATE_SPLITS}")
    if len(cfg.export.formats) == 0:
        raise ConfigError("export.formats", "is empty, so mode=export would do nothing", "e.g. [torchscript]")
    if "engine" in cfg.export.formats and str(cfg.hardware.device).strip().lower() == "cpu":
        raise ConfigError(
            "export.formats",
            "engine (TensorRT) is built on a GPU, and hardware.device is cpu",
            "use hardware=gpu (or hardware.device=0), or drop engine from export.formats",
        )
    if cfg.compare.runs < 1:
        raise ConfigError("compare.runs", f"must be at least 1, got {cfg.compare.runs}", "e.g. compare.runs=10")


def _check_tracking(tracking: DictConfig) -> None:
    if not tracking.timeout_s > 0:
        raise ConfigError(
            "tracking.timeout_s", f"must be above 0 seconds, got {tracking.timeout_s}", "e.g. tracking.timeout_s=10"
        )


def _check_optimizer(optimizer: str, space: DictConfig) -> None:
    """A known optimizer, and never `auto` next to a searched value that auto replaces (applied.py's docstring)."""
    known = {name.lower(): name for name in OPTIMIZERS}
    if optimizer.lower() not in known:
        raise ConfigError(
            "training.optimizer", f"unknown optimizer {optimizer!r}", f"use one of {', '.join(OPTIMIZERS)}"
        )
    specs = param_specs(space)
    searched = specs.get("optimizer")
    if searched is not None:
        if searched.dist != "choice":
            raise ConfigError("search_space.optimizer.dist", "an optimizer is a name", "use dist: choice with values")
        for value in searched.values:
            if str(value).lower() not in known:
                raise ConfigError(
                    "search_space.optimizer.values", f"unknown optimizer {value!r}", f"use {', '.join(OPTIMIZERS)}"
                )
    auto_key = "search_space.optimizer" if searched is not None else "training.optimizer"
    chosen = [str(v) for v in searched.values] if searched is not None else [optimizer]
    if any(name.lower() == "auto" for name in chosen):
        for key in REPLACED_BY_AUTO:
            if key in specs:
                raise ConfigError(
                    auto_key,
                    f"auto picks its own optimizer and rate and ignores search_space.{key}, so that search would "
                    "search nothing",
                    f"choose an optimizer (e.g. {auto_key}=SGD or AdamW), or remove search_space.{key}",
                )


def _check_close_mosaic(cfg: DictConfig) -> None:
    """A fine-tune whose close_mosaic switches mosaic off before its first epoch never applies it."""
    if cfg.mode not in (Mode.finetune, Mode.all):
        return
    aug, epochs = cfg.augmentation, cfg.model.epochs
    on = [f"{key}={aug[key]}" for key in ("mosaic", "mixup", "cutmix") if aug[key] > 0]
    if on and aug.close_mosaic >= epochs:
        raise ConfigError(
            "augmentation.close_mosaic",
            f"{aug.close_mosaic} switches mosaic, mixup and cutmix off from the first of model.epochs={epochs} "
            f"epochs, so {', '.join(on)} would never act",
            f"set augmentation.close_mosaic below {epochs} (0 keeps them to the last epoch), or raise model.epochs",
        )


def _check_data_dir(value: str) -> None:
    """data_dir must be (or become) a folder we can write: everything prep builds goes there."""
    path = Path(value).expanduser().resolve()
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing == path and not path.is_dir():
        raise ConfigError("data_dir", f"{path} is a file, not a folder", "point data_dir at a folder")
    if existing != path and not existing.is_dir():
        raise ConfigError("data_dir", f"{existing} is a file, so {path} cannot be made", "point data_dir elsewhere")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError("data_dir", f"{existing} is not writable", "choose a writable folder, e.g. data_dir=data")


def param_specs(space: Mapping[str, Any]) -> dict[str, ParamSpace]:
    """search_space entries (OmegaConf nodes or dicts) as ParamSpace objects (`values` is a DictConfig method)."""
    return {name: as_param_space(raw, f"search_space.{name}") for name, raw in space.items()}


def as_param_space(raw: Any, key: str) -> ParamSpace:
    """Type-check one search-space entry against ParamSpace, naming the entry's full key on failure."""
    if not isinstance(raw, (DictConfig, dict)):
        raise ConfigError(key, f"expected {{dist: ..., low: ..., high: ...}}, got {raw!r}")
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ParamSpace), raw))
    except OmegaConfBaseException as error:
        problem = str(error).splitlines()[0]
        bad = getattr(error, "key", None)
        raise ConfigError(f"{key}.{bad}" if bad else key, problem, "use dist, low, high or values") from None


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _packs_evenly(fraction: float) -> bool:
    count = 1.0 / fraction
    return abs(count - round(count)) < 1e-6
