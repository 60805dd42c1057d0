"""Small pieces of glue around Ultralytics that several stages share."""

from __future__ import annotations

import csv
import logging
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sentinel.config.plain import plain
from sentinel.config.schema import AugmentationConfig, ModelConfig, TrainingConfig

FONTS = ("Arial.ttf", "Arial.Unicode.ttf")


def provide_offline_font() -> None:
    """Offline, give Ultralytics a local font where it would download one.

    Ultralytics' plotting calls check_font(), which, when Arial is missing from its config folder, sends an
    HTTP HEAD to its asset server (ultralytics/utils/checks.py check_font → downloads.is_url(check=True)),
    and that is not gated by YOLO_OFFLINE. With YOLO_OFFLINE set, we put matplotlib's DejaVu Sans there
    under Ultralytics' file names instead, so plots work and nothing reaches for the network.
    """
    if not offline():
        return
    import matplotlib
    from ultralytics.utils import USER_CONFIG_DIR

    source = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    for name in FONTS:
        target = Path(USER_CONFIG_DIR) / name
        if not target.exists() and source.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{name}.tmp-{os.getpid()}")
            shutil.copyfile(source, tmp)
            os.replace(tmp, target)


def offline() -> bool:
    return os.environ.get("YOLO_OFFLINE", "").lower() in ("1", "true", "yes")


def check_weights_available(weights: str) -> None:
    """Fail before any work when pretrained weights would have to be downloaded but cannot be."""
    from sentinel.errors import ConfigError

    if weights.endswith(".pt") and not Path(weights).expanduser().exists() and offline():
        raise ConfigError(
            "model.weights",
            f"{weights} is not on disk and downloads are off (YOLO_OFFLINE=1)",
            "use model=yolov8n_scratch (built from .yaml), or give a path to .pt weights",
        )


def load_yolo(weights: str | Path):  # -> ultralytics.YOLO
    """YOLO(weights) with a clear error instead of a traceback when the file is missing or broken."""
    from ultralytics import YOLO

    from sentinel.errors import SentinelError

    check_weights_available(str(weights))
    route_ultralytics_log()
    try:
        return YOLO(str(weights))
    except Exception as error:  # Ultralytics raises several types for missing, corrupt or unknown models
        raise SentinelError(f"cannot load weights {weights}: {type(error).__name__}: {error}") from None


def route_ultralytics_log() -> None:
    """Ultralytics' detail (argument dumps, model summaries, validation tables) goes to the run's log file;
    the console keeps its warnings, and Sentinel prints one line per epoch (finetune.EpochLogger).

    Its progress bars are switched off through `ultralytics.utils.VERBOSE`, which its TQDM reads whenever a
    bar starts (ultralytics/utils/tqdm.py); the only other switch, YOLO_VERBOSE=False, also drops the log.
    """
    import ultralytics.utils as ultralytics_utils

    ultralytics_log = logging.getLogger("ultralytics")
    for handler in ultralytics_log.handlers:
        if type(handler) is logging.StreamHandler:
            handler.setLevel(logging.WARNING)
    for handler in logging.getLogger().handlers:  # Hydra's run log (train.log); Ultralytics does not propagate
        if isinstance(handler, logging.FileHandler) and handler not in ultralytics_log.handlers:
            ultralytics_log.addHandler(handler)
    ultralytics_utils.VERBOSE = False


def fixed_training_args(
    augmentation: AugmentationConfig, model: ModelConfig, training: TrainingConfig, seed: int
) -> dict[str, Any]:
    """The training arguments every training shares: augmentation and model values (tuning overrides them)."""
    args = plain(augmentation)
    args.update(imgsz=model.imgsz, batch=model.batch, patience=model.patience, seed=seed)
    args["optimizer"] = training.optimizer  # never Ultralytics' default, auto (sentinel.runtime.applied)
    if training.class_weights:  # only when set, so that earlier runs' keys (and reuse) stay as they were
        args["cls_pw"] = training.class_weights
    return args


def ultralytics_device(device: str) -> str:
    """Hydra may hand '0,1' or 0; Ultralytics wants a string like 'cpu', '0' or '0,1'."""
    return str(device).replace(" ", "")


def cuda_device_count() -> int:
    """CUDA devices torch can use here (0 without CUDA, or without torch)."""
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_device(device: str) -> None:
    """A CUDA device index the machine does not have fails here, with the fix, not deep inside torch."""
    from sentinel.errors import ConfigError

    ids = [int(d) for d in str(device).replace(" ", "").split(",") if d.isdigit()]
    if not ids:
        return
    count = cuda_device_count()
    if max(ids) >= count:
        raise ConfigError(
            "hardware.device",
            f"{device} asks for CUDA device {max(ids)} but this machine has {count}",
            "use hardware=cpu (or hardware.device=cpu)",
        )


# Ultralytics' integrations that Sentinel does itself: raytune would add a second tune.report per epoch (ASHA
# would count two iterations per epoch); mlflow calls mlflow.autolog() for the whole process, sets the
# experiment to trainer.args.project (the run folder) and logs the weights folder again, where
# sentinel.runtime.tracking logs the same epochs to the run's own MLflow run.
SENTINEL_DOES_ITSELF = ("mlflow", "raytune")


@contextmanager
def builtin_integrations_off() -> Iterator[None]:
    """Ultralytics' settings read its MLflow and Ray Tune integrations as off, in this process, inside the block.

    A trainer, when it is made, imports every integration its settings switch on
    (callbacks.add_integration_callbacks); the mlflow one imports MLflow, 1.3-3 s in a fresh process (every
    trial's first in its Ray worker), only for Sentinel to remove its callbacks. Ultralytics has no per-run
    switch (ultralytics#2241), only the user's settings file. dict.__setitem__ changes the values in memory
    without SettingsManager's save, so that file is never written; the old values are back on leaving.
    """
    from ultralytics.utils import SETTINGS

    saved = {key: SETTINGS.get(key) for key in SENTINEL_DOES_ITSELF}
    try:
        for key in saved:
            dict.__setitem__(SETTINGS, key, False)
        yield
    finally:
        for key, value in saved.items():
            dict.__setitem__(SETTINGS, key, value)


class OptimizerWithoutState:
    """What a checkpoint sees of an optimizer when its per-parameter state is left out: the parameter groups.

    Ultralytics' save_model deep-copies `optimizer.state_dict()` into every checkpoint so that last.pt can
    resume; for AdamW that is two fp32 tensors per parameter, 24 MB of YOLOv8n's 30 MB checkpoint.
    """

    def __init__(self, optimizer: Any) -> None:
        self.optimizer = optimizer

    def state_dict(self) -> dict[str, Any]:
        return {"state": {}, "param_groups": self.optimizer.state_dict()["param_groups"]}


@contextmanager
def font_check_skipped(skip: bool) -> Iterator[None]:
    """Within: Ultralytics' dataset check does not look for the plots' font.

    check_det_dataset calls check_font (ultralytics/data/utils.py) whether or not the run plots, and
    check_font starts by importing matplotlib's font_manager: 0.1 to 0.35 s in each fresh process, which
    is every new tune trial worker. A run with plots=False draws nothing, so it needs no font.
    """
    if not skip:
        yield
        return
    import ultralytics.data.utils as data_utils

    check_font = data_utils.check_font
    data_utils.check_font = lambda font="Arial.ttf": None
    try:
        yield
    finally:
        data_utils.check_font = check_font


def read_results_csv(path: Path) -> dict[str, list[Any]]:
    """Ultralytics' results.csv as {column: values}, what BaseTrainer.read_results_csv gives the checkpoint.

    Ultralytics reads it with polars after every epoch (train_results in last.pt and best.pt); importing
    polars costs 0.25 s in each fresh process. Same shape here with the csv module: a column whose every
    value is an integer holds ints, one of numbers holds floats, and one with a NaN ("nan") holds its text, as
    polars infers them from Ultralytics' "%.6g" values.
    """
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle))
        header, values = rows[0], rows[1:]
        columns = {name: [row[i] for row in values] for i, name in enumerate(header)}
        return {name: _column_values(column) for name, column in columns.items()}
    except (OSError, IndexError, ValueError):
        return {}  # as Ultralytics does when the file cannot be read


def _column_values(column: list[str]) -> list[Any]:
    try:
        return [int(value) for value in column]
    except ValueError:
        pass
    if "nan" in column:  # what "%.6g" writes for NaN; polars reads only "NaN" as a number, so the column is text
        return column
    try:
        return [float(value) for value in column]
    except ValueError:
        return column


def sentinel_trainer(resumable: bool = True) -> type:
    """Ultralytics' DetectionTrainer, made without the integrations Sentinel does itself, with atomic checkpoints.

    BaseTrainer.save_model writes the checkpoint bytes straight over last.pt and best.pt
    (ultralytics/engine/trainer.py), so a full disk or a kill mid-write leaves a truncated file where the
    previous good one was. Here they are written to a temporary name and renamed: a failed write leaves the
    previous checkpoint whole.

    `resumable=False` (tune trials: a trial that fails starts over, it never resumes from its weights) leaves
    the optimizer's state out of the checkpoints, as Ultralytics' strip_optimizer does to a finished
    training's weights: each epoch's checkpoint is then a fifth of the size to copy, serialise and write.

    Two imports Ultralytics makes in every training are left out, which matters where a process trains
    once (a fresh tune trial worker): polars for the checkpoints' copy of results.csv (read_results_csv
    above) and, with plots=False, matplotlib's font manager for a font nothing draws (font_check_skipped).
    """
    from ultralytics.models.yolo.detect import DetectionTrainer

    from sentinel.runtime.faults import kill_point

    class SentinelTrainer(DetectionTrainer):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            with builtin_integrations_off():
                super().__init__(*args, **kwargs)

        def get_dataset(self) -> dict[str, Any]:
            with font_check_skipped(not self.args.plots):
                return super().get_dataset()

        def final_eval(self) -> Any:
            with font_check_skipped(not self.args.plots):  # the final validation checks the dataset again
                return super().final_eval()

        def read_results_csv(self) -> dict[str, list[Any]]:
            return read_results_csv(self.csv)

        def save_model(self) -> bool:
            finals = (self.last, self.best)
            temps = tuple(path.with_name(f".{path.name}.tmp-{os.getpid()}") for path in finals)
            self.last, self.best = temps
            optimizer = self.optimizer
            if not resumable:
                self.optimizer = OptimizerWithoutState(optimizer)
            try:
                saved = super().save_model()
                kill_point("checkpoint.before_rename")
                for tmp, final in zip(temps, finals, strict=True):
                    if tmp.exists():
                        os.replace(tmp, final)
            finally:
                self.optimizer = optimizer
                self.last, self.best = finals
                for tmp in temps:
                    tmp.unlink(missing_ok=True)
            return saved

    return SentinelTrainer
