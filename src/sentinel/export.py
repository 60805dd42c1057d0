"""mode=export: export the fine-tuned weights to each of `export.formats`, then load each file back once and
run a prediction on a validation image, so a broken export fails here and not in production."""

from __future__ import annotations

import hashlib
import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from sentinel.errors import ConfigError, SentinelError
from sentinel.fingerprint import stable_hash
from sentinel.prep import data_dir_of, prepare_dataset
from sentinel.runs import link_or_copy, lookup_result, record_result, resolve_result
from sentinel.ultra import load_yolo

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


def resolve_weights(value: str, key: str) -> Path:
    """latest → the newest fine-tune's weights; a finetune run folder; or a .pt file."""
    if value.endswith(".pt"):
        path = Path(value).expanduser().resolve()
        if not path.is_file():
            raise ConfigError(
                key, f"{path} does not exist", "give an existing .pt file, a finetune run folder or latest"
            )
        return path
    return Path(resolve_result(value, "finetune", key)["weights"])


def check_formats(formats: list[str]) -> None:
    """Fail before exporting anything when a format is unknown or its packages are missing."""
    for fmt in formats:
        if fmt not in FORMAT_PACKAGES:
            raise ConfigError("export.formats", f"unknown format {fmt!r}", f"use some of {sorted(FORMAT_PACKAGES)}")
        missing = [p for p in FORMAT_PACKAGES[fmt] if importlib.util.find_spec(p) is None]
        if missing:
            raise ConfigError("export.formats", f"format {fmt} needs {missing}", f"pip install {' '.join(missing)}")


def weights_key(weights: Path) -> dict[str, object]:
    """Identify weights by content: the same file reached through another run folder is the same model."""
    digest = hashlib.blake2b(digest_size=16)
    with open(weights, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return {"weights_digest": digest.hexdigest()}


def export(cfg: DictConfig, run_dir: Path, weights: Path | None = None, skip_if_done: bool = False) -> ExportResult:
    formats = list(cfg.export.formats)
    check_formats(formats)
    weights = weights or resolve_weights(cfg.export.weights, "export.weights")
    key = stable_hash({**weights_key(weights), "formats": formats, "imgsz": cfg.model.imgsz})
    data_dir = data_dir_of(cfg)
    if skip_if_done and (done := lookup_result("export", key, data_dir)):
        earlier = {fmt: Path(path) for fmt, path in done["files"].items()}
        if all(p.is_file() for p in earlier.values()):
            files = {fmt: run_dir / "export" / p.name for fmt, p in earlier.items()}
            for fmt, path in earlier.items():
                link_or_copy(path, files[fmt])
            log.info("export: skipped, done in %s", done["run_dir"])
            return ExportResult(files, skipped=True)
    folder = run_dir / "export"
    local = folder / weights.name
    link_or_copy(weights, local)  # Ultralytics writes exports next to the weights: keep them in this run
    sample = _sample_image(cfg)
    files: dict[str, Path] = {}
    for fmt in formats:
        path = Path(load_yolo(local).export(format=fmt, imgsz=cfg.model.imgsz, device="cpu", verbose=False))
        _check_loads_and_predicts(path, sample, cfg.model.imgsz)
        files[fmt] = path
        log.info("export: %s → %s (loaded back and predicted)", fmt, path)
    record_result("export", key, run_dir, data_dir, {"files": {k: str(v) for k, v in files.items()}})
    return ExportResult(files)


def _sample_image(cfg: DictConfig) -> Path:
    merged = prepare_dataset(cfg)
    images = sorted((merged.folder / "images" / "val").iterdir())
    if not images:
        raise SentinelError(f"export: no validation image in {merged.folder} to check the exports with")
    return images[0]


def _check_loads_and_predicts(path: Path, image: Path, imgsz: int) -> None:
    from ultralytics import YOLO

    try:
        results = YOLO(str(path), task="detect").predict(str(image), imgsz=imgsz, device="cpu", verbose=False)
    except Exception as error:  # any failure to load or run the exported file means the export is unusable
        raise SentinelError(f"export: {path} was written but does not load and predict ({error})") from None
    if len(results) != 1:
        raise SentinelError(f"export: {path} returned {len(results)} results for one image")
