"""What Ultralytics really trains with, read back from the objects that use each value.

Passing a value to `model.train()` does not mean it acts (ultralytics 8.4.190):
- `optimizer=auto` replaces lr0 and momentum with its own and sets warmup_bias_lr to 0
  (engine/trainer.py `build_optimizer`; upstream changed `Model.tune()` to AdamW for this, ultralytics#25945);
- `close_mosaic` switches mosaic, mixup, cutmix and copy-paste off for the last N epochs, from the first one
  when N >= epochs (`_do_train`, "Closing dataloader mosaic");
- warm-up is capped at epochs - 1 and rounded to whole batches (`_get_warmup_iterations`), and Adam-family
  optimizers have no `momentum` for `warmup_momentum` to ramp (only SGD and RMSprop groups do);
- `CopyPaste` returns at once for images without segment masks (data/augment.py), which box datasets never have;
- `cls_pw` weights classes by their training boxes: with equal counts every weight is 1.

So every Sentinel training (each tune trial, each fine-tune, and the dry build before a search) reads, at its
first batch, what the optimizer, the learning-rate schedule, the loss and the training dataset's transforms
hold, writes it to `applied_args.yaml`, and compares it with what Sentinel asked for: a difference is an
error naming the key, the asked and the applied value. Only this module knows where Ultralytics keeps each one.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sentinel.errors import SentinelError

APPLIED_FILE = "applied_args.yaml"  # in each trial's folder and in the fine-tune's run folder
# Keys a zero turns off: asking 0 and finding the thing absent or inert is the same training.
OFF_AT_ZERO = frozenset(
    {"mosaic", "mixup", "cutmix", "copy_paste", "cls_pw", "warmup_epochs", "warmup_momentum", "warmup_bias_lr"}
)
# Keys that have no effect on some datasets whatever their value: a search over them is dropped with a warning.
DATASET_BOUND = frozenset({"copy_paste", "cls_pw"})


class AppliedMismatch(SentinelError):
    """Ultralytics trains with something other than what Sentinel asked for."""

    def __init__(self, differences: list[Difference]) -> None:
        self.differences = differences
        shown = "; ".join(d.describe() for d in differences)
        super().__init__(f"Ultralytics would not train with what was asked: {shown}")


class DryBuildDone(Exception):
    """Raised by the check of a dry build once it has read the first batch."""


@dataclass(frozen=True)
class Difference:
    key: str
    asked: Any
    applied: Any
    reason: str = ""

    def describe(self) -> str:
        applied = "nothing (no effect)" if self.applied is None else _short(self.applied)
        because = f" ({self.reason})" if self.reason else ""
        return f"{self.key}: asked {_short(self.asked)}, applied {applied}{because}"

    @property
    def dataset_bound(self) -> bool:
        """The key cannot act on this dataset at all (not a setting Sentinel or the user can change)."""
        return self.key in DATASET_BOUND and self.applied is None


@dataclass
class Reading:
    """Applied values by training-argument name (None: the key has no effect here, with its reason)."""

    values: dict[str, Any] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)
    context: dict[str, Any] = field(default_factory=dict)

    def inert(self, key: str, reason: str) -> None:
        self.values[key] = None
        self.reasons[key] = reason

    def as_record(self) -> dict[str, Any]:
        return {
            "applied": {k: _plain(v) for k, v in sorted(self.values.items())},
            "no_effect": dict(sorted(self.reasons.items())),
            "context": {k: _plain(v) for k, v in self.context.items()},
        }


# --- reading ------------------------------------------------------------------------------------------


def read_before_first_step(trainer: Any) -> Reading:
    """At the first batch, before warm-up touches the optimizer: optimizer, schedule, dataset transforms."""
    reading = Reading()
    _read_optimizer(trainer, reading)
    _read_schedule(trainer, reading)
    _read_transforms(trainer, reading)
    _read_trainer_args(trainer, reading)
    return reading


def read_after_first_step(trainer: Any, reading: Reading) -> Reading:
    """After the first batch: warm-up's starting values (bias lr, momentum) and the loss the model built."""
    _read_warmup_start(trainer, reading)
    _read_loss(trainer, reading)
    return reading


def _weight_group(optimizer: Any) -> dict[str, Any]:
    groups = {g.get("param_group"): g for g in optimizer.param_groups}
    return groups.get("weight") or groups.get("muon") or optimizer.param_groups[0]


def _read_optimizer(trainer: Any, reading: Reading) -> None:
    optimizer = trainer.optimizer
    weight = _weight_group(optimizer)
    reading.values["optimizer"] = type(optimizer).__name__
    reading.values["lr0"] = weight["initial_lr"]  # what the schedule scales: lr before warm-up and decay
    if "betas" in weight:
        reading.values["momentum"] = weight["betas"][0]
    else:
        reading.values["momentum"] = weight.get("momentum")
    # Ultralytics scales weight decay by batch × accumulate / nbs (BaseTrainer._build_train_pipeline), with
    # accumulate = round(nbs / batch): 1 for most batch sizes. The nominal value is what was asked.
    batch, nbs = trainer.batch_size, trainer.args.nbs
    scale = batch * max(round(nbs / batch), 1) / nbs
    reading.values["weight_decay"] = weight["weight_decay"] / scale
    reading.context["weight_decay_scale"] = scale


def _read_schedule(trainer: Any, reading: Reading) -> None:
    reading.values["lrf"] = trainer.lf(trainer.epochs)  # the schedule's factor at the end of training
    batches = len(trainer.train_loader)
    warmup = trainer._get_warmup_iterations(batches)  # Ultralytics' own count (capped, rounded to batches)
    reading.values["warmup_epochs"] = warmup / batches
    reading.context.update(batches_per_epoch=batches, warmup_iterations=warmup, epochs=trainer.epochs)
    if warmup == 0:
        reason = "no warm-up in this training (warmup_epochs 0, or a single epoch)"
        reading.inert("warmup_momentum", reason)
        reading.inert("warmup_bias_lr", reason)
    elif warmup / batches < trainer.args.warmup_epochs - 0.5 / batches:
        reading.reasons["warmup_epochs"] = f"Ultralytics caps warm-up at epochs - 1 = {trainer.epochs - 1}"


def _read_warmup_start(trainer: Any, reading: Reading) -> None:
    """After the first warm-up step (iteration 0) every group sits at its warm-up start value."""
    if reading.context.get("warmup_iterations", 0) == 0:
        return
    groups = {g.get("param_group"): g for g in trainer.optimizer.param_groups}
    if "bias" in groups:
        reading.values["warmup_bias_lr"] = groups["bias"]["lr"]
    weight = _weight_group(trainer.optimizer)
    if "momentum" in weight:
        reading.values["warmup_momentum"] = weight["momentum"]
    else:
        reading.inert("warmup_momentum", f"{type(trainer.optimizer).__name__} has no momentum to warm up")


def _read_loss(trainer: Any, reading: Reading) -> None:
    """The loss's gains and class weights, from the criterion the model built for the first batch."""
    from ultralytics.utils.torch_utils import unwrap_model

    criterion = getattr(unwrap_model(trainer.model), "criterion", None)
    if criterion is None:
        return
    for key in ("box", "cls", "dfl"):
        reading.values[key] = getattr(criterion.hyp, key)
    weights = getattr(criterion, "class_weights", None)
    if weights is None:
        reading.values["cls_pw"] = 0.0
        return
    counts = [float(c) for c in trainer.get_class_counts()]
    power = class_weight_power([float(w) for w in weights.flatten()], counts)
    if power is None:
        reading.inert("cls_pw", "every class has the same number of training boxes, so every class weight is 1")
    else:
        reading.values["cls_pw"] = power
    reading.context["class_weights"] = [round(float(w), 6) for w in weights.flatten()]


def class_weight_power(weights: list[float], counts: list[float]) -> float | None:
    """p in weight ∝ (1 / count) ** p, recovered from two present classes with different counts."""
    present = [(w, c) for w, c in zip(weights, counts, strict=False) if c > 0]
    for (w1, c1), (w2, c2) in itertools.pairwise(present):
        if c1 != c2:
            return math.log(w1 / w2) / math.log(c2 / c1)
    return None


def _transforms(dataset: Any) -> list[Any]:
    """The training dataset's transforms, nested Compose flattened (mix transforms' own pre-transforms not)."""
    found: list[Any] = []

    def walk(node: Any) -> None:
        for item in getattr(node, "transforms", []):
            if type(item).__name__ == "Compose":
                walk(item)
            else:
                found.append(item)

    walk(dataset.transforms)
    return found


def _read_transforms(trainer: Any, reading: Reading) -> None:
    dataset = trainer.train_loader.dataset
    by_type: dict[str, Any] = {}
    flips: dict[str, float] = {}
    for transform in _transforms(dataset):
        name = type(transform).__name__
        by_type.setdefault(name, transform)
        if name == "RandomFlip":
            flips[transform.direction] = transform.p
    values = reading.values
    for key, name in (("mosaic", "Mosaic"), ("mixup", "MixUp"), ("cutmix", "CutMix"), ("copy_paste", "CopyPaste")):
        values[key] = getattr(by_type.get(name), "p", 0.0)
    if "RandomPerspective" in by_type:
        affine = by_type["RandomPerspective"]
        for key in ("degrees", "translate", "scale", "shear", "perspective"):
            values[key] = getattr(affine, key)
    if "RandomHSV" in by_type:
        hsv = by_type["RandomHSV"]
        values.update(hsv_h=hsv.hgain, hsv_s=hsv.sgain, hsv_v=hsv.vgain)
    values.update(flipud=flips.get("vertical", 0.0), fliplr=flips.get("horizontal", 0.0))
    values["bgr"] = getattr(by_type.get("Format"), "bgr", 0.0)
    values["imgsz"] = dataset.imgsz
    if values["copy_paste"] and not any(len(label.get("segments", [])) for label in dataset.labels):
        reading.inert("copy_paste", "copy-paste pastes segment masks and this dataset's labels are boxes only")
    closing = trainer.args.close_mosaic
    if closing and trainer.epochs - closing <= trainer.epoch:
        reason = f"close_mosaic={closing} switches it off from the first of {trainer.epochs} epochs"
        for key in ("mosaic", "mixup", "cutmix", "copy_paste"):
            reading.reasons.setdefault(key, reason)
    reading.context["mosaic_closed_from_epoch"] = max(trainer.epochs - closing, 0) + 1 if closing else None


def _read_trainer_args(trainer: Any, reading: Reading) -> None:
    """What has no object of its own: the values the trainer keeps (batch after any out-of-memory halving)."""
    reading.values.update(
        batch=trainer.batch_size,
        patience=trainer.stopper.patience,
        seed=trainer.args.seed,
        close_mosaic=trainer.args.close_mosaic,
    )


def trainer_arg(trainer: Any, key: str) -> Any:
    return getattr(trainer.args, key, None)


# --- comparing ----------------------------------------------------------------------------------------


def differences(asked: dict[str, Any], reading: Reading, trainer: Any = None) -> list[Difference]:
    """Every asked key whose applied value differs (floats to 1e-6, warm-up to half a batch)."""
    found = []
    for key, want in asked.items():
        if key == "optimizer" and str(want).lower() == "auto":
            continue  # auto asks Ultralytics to choose; what it chose is recorded
        if key in reading.values:
            got = reading.values[key]
        elif trainer is not None and hasattr(trainer.args, key):
            got = trainer_arg(trainer, key)  # no object of its own: the trainer's copy is what it reads
        else:
            continue
        if not _same(key, want, got, reading):
            found.append(Difference(key, want, got, reading.reasons.get(key, "")))
    return found


def _same(key: str, want: Any, got: Any, reading: Reading) -> bool:
    if got is None:
        return key in OFF_AT_ZERO and _is_zero(want)
    if isinstance(want, str) or isinstance(got, str):
        return str(want).lower() == str(got).lower()
    if isinstance(want, bool) or isinstance(got, bool):
        return bool(want) == bool(got)
    try:
        want_f, got_f = float(want), float(got)
    except (TypeError, ValueError):
        return want == got
    slack = 0.5 / reading.context["batches_per_epoch"] if key == "warmup_epochs" else 0.0
    return math.isclose(want_f, got_f, rel_tol=1e-6, abs_tol=max(1e-9, slack + 1e-9))


def _is_zero(value: Any) -> bool:
    try:
        return float(value) == 0.0
    except (TypeError, ValueError):
        return False


# --- the callback -------------------------------------------------------------------------------------


class AppliedCheck:
    """Ultralytics callbacks: read what the first batch trains with, write it, and fail on a difference.

    `stop_after` (a dry build) ends the training after that batch by raising DryBuildDone; `raise_on_difference`
    False only records (the dry build's caller decides what a difference means for a search).
    """

    def __init__(
        self, asked: dict[str, Any], out: Path | None, stop_after: bool = False, raise_on_difference: bool = True
    ) -> None:
        self.asked = dict(asked)
        self.out = out
        self.stop_after = stop_after
        self.raise_on_difference = raise_on_difference
        self.reading: Reading | None = None
        self.found: list[Difference] = []
        self._before: Reading | None = None

    def on_train_batch_start(self, trainer: Any) -> None:
        if self._before is None and self.reading is None:
            self._before = read_before_first_step(trainer)

    def on_train_batch_end(self, trainer: Any) -> None:
        if self._before is None or self.reading is not None:
            return
        self.reading = read_after_first_step(trainer, self._before)
        self.found = differences(self.asked, self.reading, trainer)
        record = self.reading.as_record()
        record["differences"] = [d.describe() for d in self.found]
        if self.out is not None:
            from sentinel.runtime.runs import write_text_atomic

            write_text_atomic(self.out, yaml.safe_dump(record, sort_keys=False))
        if self.found and self.raise_on_difference:
            raise AppliedMismatch(self.found)
        if self.stop_after:
            raise DryBuildDone

    def attach(self, model: Any) -> None:
        model.add_callback("on_train_batch_start", self.on_train_batch_start)
        model.add_callback("on_train_batch_end", self.on_train_batch_end)


def read_applied_file(path: Path) -> dict[str, Any]:
    """The `applied` mapping of an applied_args.yaml ({} when there is none)."""
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}
    applied = data.get("applied") if isinstance(data, dict) else None
    return applied if isinstance(applied, dict) else {}


def _plain(value: Any) -> Any:
    """Numbers and strings as YAML writes them (numpy and torch scalars become Python's)."""
    if hasattr(value, "item") and not isinstance(value, (list, dict)):
        value = value.item()
    if isinstance(value, float):
        return float(f"{value:.8g}")
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _short(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def dry_build(weights: str, data: Path, args: dict[str, Any], epochs: int, folder: Path) -> AppliedCheck:
    """Build Ultralytics' trainer for `args` and train one batch: what it would apply, written in `folder`.

    The same trainer, dataset and callbacks as a tune trial, stopped after its first batch (a second or two on
    a CPU at small sizes), so a search never starts with a value that cannot act.
    """
    from sentinel.runtime.ultra import load_yolo, sentinel_trainer

    check = AppliedCheck(args, folder / APPLIED_FILE, stop_after=True, raise_on_difference=False)
    model = load_yolo(weights)
    check.attach(model)
    try:
        model.train(
            trainer=sentinel_trainer(resumable=False),
            data=str(data),
            epochs=epochs,
            device="cpu",
            workers=0,
            project=str(folder.parent),
            name=folder.name,
            exist_ok=True,
            plots=False,
            verbose=False,
            **args,
        )
    except DryBuildDone:
        return check
    raise SentinelError(f"the dry build in {folder} trained without reaching its first batch")
