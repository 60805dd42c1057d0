"""Alerts: an object of an alert class seen over its confidence in `min_frames` processed frames in a row is
one alert, however long it stays in view. Objects are told apart by the tracker's id (ByteTrack), so one knife
seen for ten seconds is one alert, not 300. Images (no tracking) give one alert per box over the threshold."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sentinel.runtime.runs import save_image_atomic


@dataclass
class Box:
    """One detection in original pixels; `track_id` None when not tracked (images) or not yet confirmed."""

    class_name: str
    class_id: int
    confidence: float
    xyxy: tuple[float, float, float, float]
    track_id: int | None = None

    def as_record(self) -> dict[str, Any]:
        x1, y1, x2, y2 = (round(v, 1) for v in self.xyxy)
        record = {"class": self.class_name, "class_id": self.class_id, "confidence": round(self.confidence, 4)}
        record["box"] = [x1, y1, x2, y2]
        if self.track_id is not None:
            record["track_id"] = self.track_id
        return record


@dataclass
class Alert:
    """What alerts.jsonl holds, one line per alert; `last_*` and `top_confidence` grow while it stays in view."""

    class_name: str
    track_id: int | None
    source: str
    first_frame: int | None
    first_time_s: float | None
    last_frame: int | None
    last_time_s: float | None
    top_confidence: float
    crop: str

    def as_record(self) -> dict[str, Any]:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in asdict(self).items()}


@dataclass
class Streak:
    """Frames in a row (processed frames: with vid_stride 2, every other) an object has been over its threshold."""

    count: int
    last_index: int
    first_frame: int | None
    first_time_s: float | None
    top_confidence: float


class AlertWatch:
    def __init__(self, thresholds: dict[str, float], min_frames: int, crops: Path) -> None:
        self.thresholds, self.min_frames, self.crops = thresholds, min_frames, crops
        self.streaks: dict[tuple[str, int, str], Streak] = {}
        self.raised: dict[tuple[str, int, str], Alert] = {}
        self.alerts: list[Alert] = []

    def see(
        self,
        source: str,
        index: int,
        frame: int | None,
        time_s: float | None,
        boxes: list[Box],
        image: Any,
        tracked: bool,
    ) -> list[Alert]:
        """The alerts this frame (the `index`-th processed of `source`) raises; updates those already raised."""
        new: list[Alert] = []
        for box in boxes:
            threshold = self.thresholds.get(box.class_name)
            if threshold is None or box.confidence < threshold:
                continue
            if not tracked:
                new.append(self._raise(source, box, frame, time_s, image, box.confidence, frame, time_s))
                continue
            if box.track_id is None:  # the tracker has not confirmed it: it cannot be followed yet
                continue
            key = (source, box.track_id, box.class_name)
            if key in self.raised:
                alert = self.raised[key]
                alert.last_frame, alert.last_time_s = frame, time_s
                alert.top_confidence = max(alert.top_confidence, box.confidence)
                continue
            streak = self.streaks.get(key)
            if streak is None or streak.last_index != index - 1:
                streak = self.streaks[key] = Streak(0, index, frame, time_s, 0.0)
            streak.count += 1
            streak.last_index = index
            streak.top_confidence = max(streak.top_confidence, box.confidence)
            if streak.count >= self.min_frames:
                del self.streaks[key]
                alert = self._raise(
                    source, box, streak.first_frame, streak.first_time_s, image, streak.top_confidence, frame, time_s
                )
                self.raised[key] = alert
                new.append(alert)
        self.streaks = {k: s for k, s in self.streaks.items() if k[0] != source or s.last_index >= index - 1}
        return new

    def _raise(
        self,
        source: str,
        box: Box,
        first_frame: int | None,
        first_time_s: float | None,
        image: Any,
        top: float,
        frame: int | None,
        time_s: float | None,
    ) -> Alert:
        number = len(self.alerts) + 1
        crop = self.crops / f"{number:04d}_{box.class_name}.jpg"
        save_crop(image, box.xyxy, crop)
        alert = Alert(box.class_name, box.track_id, source, first_frame, first_time_s, frame, time_s, top, crop.name)
        self.alerts.append(alert)
        return alert


def save_crop(image: Any, xyxy: tuple[float, float, float, float], path: Path, margin: float = 0.1) -> None:
    """The box with a margin of 10% of its size around it, as a JPEG written whole or not at all."""
    height, width = image.shape[:2]
    x1, y1, x2, y2 = xyxy
    dx, dy = (x2 - x1) * margin, (y2 - y1) * margin
    left, top = max(0, int(x1 - dx)), max(0, int(y1 - dy))
    right, bottom = min(width, int(x2 + dx) + 1), min(height, int(y2 + dy) + 1)
    save_image_atomic(image[top:bottom, left:right], path)
