"""The registered detector as an MLflow pyfunc model ("models from code": MLflow copies this file into the
model and runs it to load it, so it imports nothing from Sentinel — only MLflow, pandas, OpenCV and
Ultralytics, which the model's requirements list).

Input: a DataFrame with a column `image` of base64-encoded image bytes (JPEG, PNG, …). Output: one row per box,
`image_index, class_name, class_id, confidence, x1, y1, x2, y2` in the image's own pixels. Params `conf` and
`iou` change the thresholds per request; the image size is the one the weights were trained at.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import mlflow
import numpy as np
import pandas as pd

COLUMNS = ["image_index", "class_name", "class_id", "confidence", "x1", "y1", "x2", "y2"]


class SentinelDetector(mlflow.pyfunc.PythonModel):
    """YOLO weights (artefact `weights`) with their model card (artefact `model_card`, for the image size)."""

    def load_context(self, context: Any) -> None:
        from ultralytics import YOLO

        self.model = YOLO(context.artifacts["weights"])
        self.imgsz = None  # Ultralytics then uses the size in the checkpoint's training arguments
        if "model_card" in context.artifacts:
            with open(context.artifacts["model_card"]) as handle:
                self.imgsz = json.load(handle).get("training", {}).get("imgsz")

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        import cv2

        params = params or {}
        images = [
            cv2.imdecode(np.frombuffer(base64.b64decode(text), np.uint8), cv2.IMREAD_COLOR)
            for text in model_input["image"]
        ]
        unreadable = [i for i, image in enumerate(images) if image is None]
        if unreadable:
            raise ValueError(f"rows {unreadable}: column `image` is not a base64-encoded image")
        rows: list[dict[str, Any]] = []
        if images:
            results = self.model.predict(
                images,
                conf=float(params.get("conf", 0.25)),
                iou=float(params.get("iou", 0.7)),
                verbose=False,
                **({"imgsz": int(self.imgsz)} if self.imgsz else {}),
            )
            for index, result in enumerate(results):
                boxes = result.boxes
                for xyxy, cls, conf in zip(boxes.xyxy.tolist(), boxes.cls.tolist(), boxes.conf.tolist(), strict=True):
                    rows.append(
                        {
                            "image_index": index,
                            "class_name": result.names[int(cls)],
                            "class_id": int(cls),
                            "confidence": float(conf),
                            **dict(zip(("x1", "y1", "x2", "y2"), (float(v) for v in xyxy), strict=True)),
                        }
                    )
        return pd.DataFrame(rows, columns=COLUMNS).astype(
            {
                "image_index": "int64",
                "class_id": "int64",
                "confidence": "float64",
                "x1": "float64",
                "y1": "float64",
                "x2": "float64",
                "y2": "float64",
            }
        )


mlflow.models.set_model(SentinelDetector())
