"""Which weights a stage works on, and whether they fit the dataset: `latest`, a fine-tune run folder or a
.pt file, refused when trained on another class list. Export, evaluate and inspect all resolve weights so."""

from __future__ import annotations

import hashlib
from pathlib import Path

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
