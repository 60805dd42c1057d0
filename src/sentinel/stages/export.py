"""mode=export: export the fine-tuned weights to each of `export.formats`, then load each file back once and
run a prediction on a validation image, so a broken export fails here and not in production."""

from __future__ import annotations

import importlib.util
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

from sentinel.config.schema import SentinelConfig
from sentinel.dataset.prepare import RunDataset, data_dir_of
from sentinel.dataset.sources.yolo_dir import class_names_of
from sentinel.errors import ConfigError, SentinelError
from sentinel.model.card import copy_model_card
from sentinel.model.weights import resolve_weights, weights_key
from sentinel.runtime.fingerprint import stable_hash
from sentinel.runtime.runs import claim_run_folder, link_or_copy, lookup_result, record_result
from sentinel.runtime.ultra import load_yolo

log = logging.getLogger(__name__)

# Python packages each Ultralytics export format needs to write the file and to load it back.
FORMAT_PACKAGES: dict[str, tuple[str, ...]] = {
    "torchscript": (),
    "onnx": ("onnx", "onnxruntime"),
    "openvino": ("openvino",),
    "engine": ("tensorrt",),
    "coreml": ("coremltools",),
    "saved_model": ("tensorflow",),
    "tflite": ("tensorflow",),
    "paddle": ("paddle", "x2paddle"),
    "ncnn": ("ncnn", "pnnx"),
}


@dataclass(frozen=True)
class ExportResult:
    files: dict[str, Path]
    skipped: bool = False


def check_formats(formats: list[str]) -> None:
    """Fail before exporting anything when a format is unknown or its packages are missing."""
    for fmt in formats:
        if fmt not in FORMAT_PACKAGES:
            raise ConfigError("export.formats", f"unknown format {fmt!r}", f"use some of {sorted(FORMAT_PACKAGES)}")
        missing = [p for p in FORMAT_PACKAGES[fmt] if importlib.util.find_spec(p) is None]
        if missing:
            raise ConfigError("export.formats", f"format {fmt} needs {missing}", f"pip install {' '.join(missing)}")


def export(
    cfg: SentinelConfig, run_dir: Path, dataset: RunDataset, weights: Path | None = None, skip_if_done: bool = False
) -> ExportResult:
    formats = list(cfg.export.formats)
    check_formats(formats)
    data_dir = data_dir_of(cfg)
    merged = dataset.merged()
    names = class_names_of(merged.dataset_yaml)
    weights = weights or resolve_weights(cfg.export.weights, "export.weights", data_dir, merged.fingerprint, names)
    device = export_device(cfg.hardware.device)
    key = stable_hash({**weights_key(weights), "formats": formats, "imgsz": cfg.model.imgsz, "device": device})
    if skip_if_done and (done := lookup_result("export", key, data_dir)):
        earlier = {fmt: Path(path) for fmt, path in done["files"].items()}
        if all(p.is_file() for p in earlier.values()):
            files = {fmt: run_dir / "export" / p.name for fmt, p in earlier.items()}
            for fmt, path in earlier.items():
                link_or_copy(path, files[fmt])
            copy_model_card(weights.parent, run_dir / "export")
            log.info("export: skipped, done in %s", done["run_dir"])
            return ExportResult(files, skipped=True)
    claim_run_folder(run_dir, "export", key)
    folder = run_dir / "export"
    local = folder / weights.name
    link_or_copy(weights, local)  # Ultralytics writes exports next to the weights: keep them in this run
    sample = _sample_image(merged.folder)
    files: dict[str, Path] = {}
    # Ultralytics' TorchScript export and its check call torch.jit.trace/load, which torch 2.14 marks
    # deprecated with a FutureWarning on every call; it is Ultralytics' choice, not the user's to act on.
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.", category=FutureWarning)
    for fmt in formats:
        path = Path(load_yolo(local).export(format=fmt, imgsz=cfg.model.imgsz, device=device, verbose=False))
        _check_loads_and_predicts(path, sample, cfg.model.imgsz, device)
        files[fmt] = path
        log.info("export: %s → %s (loaded back and predicted)", fmt, path)
    copy_model_card(weights.parent, folder)
    record_result(
        "export",
        key,
        run_dir,
        data_dir,
        {"files": {k: str(v) for k, v in files.items()}, "dataset": merged.fingerprint, "weights": str(weights)},
    )
    return ExportResult(files)


def export_device(device: str) -> str:
    """Where exports are built and checked: `hardware.device`, its first GPU when it lists several (an
    export is one model on one device; TensorRT builds its engine for the GPU it runs on)."""
    return str(device).replace(" ", "").split(",")[0] or "cpu"


def _sample_image(folder: Path) -> Path:
    images = sorted((folder / "images" / "val").iterdir())
    if not images:
        raise SentinelError(f"export: no validation image in {folder} to check the exports with")
    return images[0]


def _check_loads_and_predicts(path: Path, image: Path, imgsz: int, device: str) -> None:
    from ultralytics import YOLO

    try:
        results = YOLO(str(path), task="detect").predict(str(image), imgsz=imgsz, device=device, verbose=False)
    except Exception as error:  # any failure to load or run the exported file means the export is unusable
        raise SentinelError(f"export: {path} was written but does not load and predict ({error})") from None
    if len(results) != 1:
        raise SentinelError(f"export: {path} returned {len(results)} results for one image")
