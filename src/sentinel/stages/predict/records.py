"""What a predict run writes as it goes: detections.jsonl (a line per image or frame, each line whole even
when the run is killed), the annotated images or videos, and the counts and times of predict_report.md/.json."""

from __future__ import annotations

import json
import os
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from sentinel.errors import SentinelError
from sentinel.runtime.runs import save_image_atomic, write_json_atomic, write_text_atomic
from sentinel.stages.predict.alerts import Alert, Box

STAGES = ("decode", "preprocess", "inference", "postprocess")


class LineLog:
    """A JSON-lines file of our own, appended a whole line per write(2): a kill leaves every line it wrote."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        self.lines = 0

    def write(self, record: dict[str, Any]) -> None:
        os.write(self.fd, (json.dumps(record) + "\n").encode())
        self.lines += 1

    def close(self) -> None:
        if self.fd >= 0:
            os.fsync(self.fd)
            os.close(self.fd)
            self.fd = -1


class Annotated:
    """The annotated images (one file each) and videos (same frame count and rate as what was processed:
    the input's with vid_stride 1), each written under a hidden name and renamed when complete."""

    def __init__(self, folder: Path, fps: dict[str, float]) -> None:
        self.folder, self.fps = folder, fps
        self.writers: dict[str, tuple[Any, Path, Path]] = {}
        folder.mkdir(parents=True, exist_ok=True)

    def add(self, source_path: str, plotted: Any, is_video: bool) -> None:
        import cv2

        name = Path(source_path).name
        if not is_video:
            save_image_atomic(plotted, self.folder / name)
            return
        if source_path not in self.writers:
            final = self.folder / f"{Path(name).stem}.avi"
            partial = self.folder / f".{final.stem}.partial.avi"  # OpenCV picks its writer by the suffix
            height, width = plotted.shape[:2]
            fps = self.fps.get(source_path, 30.0)
            writer = cv2.VideoWriter(str(partial), cv2.VideoWriter_fourcc(*"MJPG"), fps, (width, height))
            if not writer.isOpened():
                raise SentinelError(f"OpenCV cannot write the annotated video {partial} (MJPG in AVI)")
            self.writers[source_path] = (writer, partial, final)
        self.writers[source_path][0].write(plotted)

    def close(self) -> list[Path]:
        done = []
        for writer, partial, final in self.writers.values():
            writer.release()
            os.replace(partial, final)
            done.append(final)
        self.writers = {}
        return done


class Tally:
    """Counts per class (detections, frames with one, tracks) and the time each stage took, for the report."""

    def __init__(self, names: list[str]) -> None:
        self.names = names
        self.frames = 0
        self.detections: dict[str, int] = defaultdict(int)
        self.frames_with: dict[str, int] = defaultdict(int)
        self.tracks: dict[str, set[tuple[str, int]]] = defaultdict(set)
        self.ms: dict[str, float] = dict.fromkeys(STAGES, 0.0)
        self.first_at = self.last_at = 0.0

    def add(self, source: str, boxes: list[Box], speed: dict[str, float], wall_ms: float) -> None:
        self.last_at = time.perf_counter()
        if not self.frames:
            self.first_at = self.last_at
        self.frames += 1
        for box in boxes:
            self.detections[box.class_name] += 1
            if box.track_id is not None:
                self.tracks[box.class_name].add((source, box.track_id))
        for name in {box.class_name for box in boxes}:
            self.frames_with[name] += 1
        if self.frames == 1:  # the first frame's time is start-up (the model's first call, opening the source)
            return
        for stage in STAGES[1:]:
            self.ms[stage] += speed.get(stage) or 0.0
        # What the loop waited for beyond Ultralytics' three timed stages: reading and decoding the frame
        # (and the tracker's update, which Ultralytics runs outside its timers).
        self.ms["decode"] += max(0.0, wall_ms - sum(speed.get(s) or 0.0 for s in STAGES[1:]))

    def fps(self) -> float:
        """Frames per second from the first frame's end to the last's: the steady rate, without the start-up
        (loading the model, opening the source, the first frame's warm-up), which a long video does not feel."""
        elapsed = self.last_at - self.first_at
        return (self.frames - 1) / elapsed if elapsed > 0 else 0.0


def report(
    tally: Tally, alerts: list[Alert], facts: dict[str, Any], not_decoded: dict[str, int], interrupted: str
) -> dict[str, Any]:
    classes = [
        {
            "class": name,
            "detections": tally.detections.get(name, 0),
            "frames_with": tally.frames_with.get(name, 0),
            "tracks": len(tally.tracks.get(name, ())),
            "alerts": sum(1 for a in alerts if a.class_name == name),
        }
        for name in tally.names
    ]
    timed = tally.frames - 1  # from the second frame on, as the rate (Tally.fps)
    per_frame = {stage: round(ms / timed, 2) if timed > 0 else 0.0 for stage, ms in tally.ms.items()}
    return {
        **facts,
        "frames": tally.frames,
        "fps": round(tally.fps(), 2),
        "ms_per_frame": per_frame,
        "classes": classes,
        "alerts": len(alerts),
        "frames_not_decoded": not_decoded,
        "interrupted": interrupted,
    }


def report_markdown(data: dict[str, Any]) -> str:
    lines = [f"# Predictions on {data['source']}", ""]
    if data["interrupted"]:
        lines += [f"**Stopped early** ({data['interrupted']}): the counts below cover the frames done.", ""]
    lines += [
        f"Weights: `{data['weights']}` (sha256 {data['weights_sha256'][:12]}…), image size {data['imgsz']}, "
        f"confidence ≥ {data['conf']}.",
        "",
        f"{data['frames']} {'frames' if data['kind'] != 'images' else 'images'} at {data['fps']:.1f} per second; "
        "time per frame in ms: "
        + ", ".join(f"{stage} {ms:.1f}" for stage, ms in data["ms_per_frame"].items())
        + " (decode: reading the frame, and the tracker's update; the first frame, start-up, not counted).",
        "",
        "| class | detections | frames with one | tracks | alerts |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {c['class']} | {c['detections']} | {c['frames_with']} | {c['tracks']} | {c['alerts']} |"
        for c in data["classes"]
    ]
    missing = {k: v for k, v in data["frames_not_decoded"].items() if v}
    if missing:
        lines += ["", "Frames the video's header counts but that could not be decoded (skipped):", ""]
        lines += [f"- {path}: {count}" for path, count in missing.items()]
    lines += [
        "",
        "Each detection is a line of `detections.jsonl`; each alert a line of `alerts.jsonl`, its crop in `alerts/`.",
    ]
    return "\n".join(lines) + "\n"


def write_report(run_dir: Path, data: dict[str, Any]) -> Path:
    write_json_atomic(run_dir / "predict_report.json", data)
    write_text_atomic(run_dir / "predict_report.md", report_markdown(data))
    return run_dir / "predict_report.md"
