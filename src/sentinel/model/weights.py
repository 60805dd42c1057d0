"""Which weights a stage works on, and whether they fit the dataset: `latest`, a fine-tune run folder or a
.pt file, refused when trained on another class list. Export, evaluate and inspect all resolve weights so."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from sentinel.errors import ConfigError
from sentinel.runtime.runs import resolve_result
from sentinel.runtime.ultra import load_yolo


def resolve_weights(value: str, key: str, data_dir: Path, dataset: str, names: list[str]) -> Path:
    """latest → the newest fine-tune's weights on this dataset; a finetune run folder; or a .pt file.

    Weights trained on another class list are refused: evaluating them here would silently drop classes.
    """
    if value.endswith(".pt"):
        path = Path(value).expanduser().resolve()
        if not path.is_file():
            raise ConfigError(
                key, f"{path} does not exist", "give an existing .pt file, a finetune run folder or latest"
            )
    else:
        entry = resolve_result(value, "finetune", key, data_dir, match={"dataset": dataset})
        path = Path(entry["weights"])
        if not path.is_file():
            raise ConfigError(key, f"{path}, the weights of that fine-tune, are missing", "fine-tune again")
    check_class_names(path, names, key)
    return path


def check_class_names(weights: Path, names: list[str], key: str) -> None:
    """Refuse weights whose classes (in order) are not the dataset's."""
    model_names = list(load_yolo(weights).names.values())
    if [str(n) for n in model_names] != [str(n) for n in names]:
        raise ConfigError(
            key,
            f"{weights} was trained on classes {model_names} but the selected dataset has {names}",
            "give weights trained on these datasets and merge settings, or select the datasets they were trained on",
        )


def weights_key(weights: Path) -> dict[str, object]:
    """Identify weights by content: the same file reached through another run folder is the same model."""
    digest = hashlib.blake2b(digest_size=16)
    with open(weights, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return {"weights_digest": digest.hexdigest()}


def given_weights_file(value: str, key: str) -> Path | None:
    """A weights file or export named directly (`.pt`, `.onnx`, `.torchscript`, an OpenVINO folder, …), which
    must exist; None for `latest` and run folders, which name a fine-tune."""
    path = Path(value).expanduser()
    looks_like_file = path.suffix.lower() in WEIGHTS_SUFFIXES or path.name.endswith("_model")
    if not looks_like_file:
        return None
    if not path.exists():
        raise ConfigError(
            key, f"{path.resolve()} does not exist", "give existing weights, a finetune run folder or latest"
        )
    return path.resolve()


# What Ultralytics loads as a model: its weights and the exports Sentinel makes (sentinel.stages.export).
WEIGHTS_SUFFIXES = (".pt", ".onnx", ".torchscript", ".engine", ".mlpackage", ".tflite", ".pb")


def registered_weights(folder: Path) -> Path:
    """The weights in a downloaded registered version: the pyfunc model's artefact (artifacts/*.pt), or the .pt
    of a version registered before versions were MLflow models."""
    found = sorted(folder.glob("artifacts/*.pt")) or sorted(folder.rglob("*.pt"))
    if not found:
        raise ConfigError(
            "predict.weights", f"the registered version in {folder} holds no .pt file", "register fine-tuned weights"
        )
    return found[0]


def model_names(model: Any) -> list[str]:
    """The class names of a loaded YOLO model (an export's from its metadata), in class-id order."""
    names = model.names
    return [str(names[i]) for i in sorted(names)] if isinstance(names, dict) else [str(n) for n in names]


def trained_imgsz(model: Any, weights: Path) -> int | None:
    """The image size the weights were trained at: the checkpoint's training arguments, or the model card that
    Sentinel writes beside weights and exports; None when neither says (Ultralytics' default then)."""
    import json

    args = getattr(model, "ckpt", None) or {}
    size = (args.get("train_args") or {}).get("imgsz") if isinstance(args, dict) else None
    card = weights.parent / "model_card.json"
    if size is None and card.is_file():
        size = (json.loads(card.read_text()).get("training") or {}).get("imgsz")
    return int(size) if isinstance(size, (int, float)) else None
