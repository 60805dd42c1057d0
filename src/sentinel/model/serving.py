"""Fine-tuned weights as an MLflow pyfunc model folder (sentinel.model.pyfunc_model is its code), so that the
registry can deploy what it holds: `mlflow.pyfunc.load_model("models:/sentinel/latest")` and
`mlflow models serve -m models:/sentinel/<version> --env-manager local` both answer."""

from __future__ import annotations

import os
import warnings
from importlib.metadata import version
from pathlib import Path

from sentinel.runtime.atomic import atomic_build, target_lock

CODE = Path(__file__).with_name("pyfunc_model.py")
BOX_COLUMNS = (
    ("image_index", "long"),
    ("class_name", "string"),
    ("class_id", "long"),
    ("confidence", "double"),
    ("x1", "double"),
    ("y1", "double"),
    ("x2", "double"),
    ("y2", "double"),
)
# What the model's own environment needs (given, not inferred: inferring loads the model in a subprocess).
REQUIREMENTS = ("mlflow", "ultralytics", "torch", "torchvision", "opencv-python-headless", "pandas", "numpy")


def signature():  # -> mlflow.models.ModelSignature
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("string", "image")]),
        outputs=Schema([ColSpec(kind, name) for name, kind in BOX_COLUMNS]),
        params=ParamSchema([ParamSpec("conf", "double", 0.25), ParamSpec("iou", "double", 0.7)]),
    )


def pinned_requirements() -> list[str]:
    pins = []
    for package in REQUIREMENTS:
        try:
            pins.append(f"{package}=={version(package)}")
        except Exception:  # not installed under that name here: unpinned
            pins.append(package)
    return pins


def save_pyfunc_model(weights: Path, card_json: Path, target: Path) -> Path:
    """Write the MLflow model folder `target` (MLmodel, this code, the weights and card as artefacts) under a
    temporary name and rename it into place: a folder that exists is whole."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # it copies the artefacts: not news
    import mlflow.pyfunc

    with target_lock(target), atomic_build(target) as staging, warnings.catch_warnings():
        # MLflow asks for an input example; the signature says what the model takes, and an example image
        # would be one more copy of data in every version. The message starts with a terminal colour code, and
        # `message` matches from its start.
        warnings.filterwarnings("ignore", message=r".*An input example was not provided")
        mlflow.pyfunc.save_model(  # into a subfolder: MLflow refuses a path that exists
            path=str(staging / "mlflow"),
            python_model=str(CODE),
            artifacts={"weights": str(weights), **({"model_card": str(card_json)} if card_json.is_file() else {})},
            signature=signature(),
            pip_requirements=pinned_requirements(),
        )
        for entry in (staging / "mlflow").iterdir():
            entry.rename(staging / entry.name)
        (staging / "mlflow").rmdir()
    return target
