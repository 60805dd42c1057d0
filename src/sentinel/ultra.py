"""Small pieces of glue around Ultralytics that several stages share."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

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
    try:
        return YOLO(str(weights))
    except Exception as error:  # Ultralytics raises several types for missing, corrupt or unknown models
        raise SentinelError(f"cannot load weights {weights}: {type(error).__name__}: {error}") from None


def fixed_training_args(cfg: DictConfig) -> dict[str, Any]:
    """The training arguments every training shares: augmentation and model values (tuning overrides them)."""
    args = OmegaConf.to_container(cfg.augmentation, resolve=True)
    args.update(imgsz=cfg.model.imgsz, batch=cfg.model.batch, patience=cfg.model.patience, seed=cfg.seed)
    return args


def ultralytics_device(device: str) -> str:
    """Hydra may hand '0,1' or 0; Ultralytics wants a string like 'cpu', '0' or '0,1'."""
    return str(device).replace(" ", "")
