"""mode=predict: the weights on images, a folder, a glob, videos, a stream or a camera, through Ultralytics'
predictor in streaming mode (memory stays flat on a long video) and, for frames, its tracker (ByteTrack), so
an object followed across frames is one alert. Everything is checked before the first frame: the source, the
weights, and that the alert and filter classes are the weights' own."""

from __future__ import annotations

import difflib
import json
import logging
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sentinel.config.schema import PredictConfig, SentinelConfig
from sentinel.dataset.prepare import RunDataset, data_dir_of
from sentinel.dataset.sources.yolo_dir import class_names_of
from sentinel.errors import ConfigError, Interrupted
from sentinel.model.card import sha256_of
from sentinel.model.weights import (
    given_weights_file,
    model_names,
    registered_weights,
    resolve_weights,
    trained_imgsz,
)
from sentinel.runtime.eta import duration
from sentinel.runtime.faults import hold_point, kill_point
from sentinel.runtime.runs import write_text_atomic
from sentinel.runtime.tracking.client import Tracker
from sentinel.runtime.tracking.store import download_registered_model, local_store_dir, tracking_uri
from sentinel.runtime.ultra import load_yolo, provide_offline_font, ultralytics_device
from sentinel.stages.predict.alerts import AlertWatch, Box
from sentinel.stages.predict.records import Annotated, LineLog, Tally, report, write_report
from sentinel.stages.predict.source import Source, check_source

log = logging.getLogger(__name__)

DETECTIONS = "detections.jsonl"
ALERTS = "alerts.jsonl"
PROGRESS_EVERY_S = 10.0
FRAME_POINT = "predict.frame"  # after each image or frame is recorded


@dataclass(frozen=True)
class PredictResult:
    frames: int
    fps: float
    detections: dict[str, int]
    alerts: int
    report: Path
    unit: str  # images or frames
    annotated: list[Path] = field(default_factory=list)


def predict(
    cfg: SentinelConfig, run_dir: Path, dataset: RunDataset, tracker: Tracker, launch_dir: Path
) -> PredictResult:
    settings = cfg.predict
    refuse_earlier_predictions(run_dir)
    source = check_source(str(settings.source), settings.timeout_s)
    weights = resolve_predict_weights(cfg, run_dir, dataset, launch_dir)
    model = load_yolo(weights)
    names = model_names(model)
    check_class_names(settings, names, weights)
    imgsz = settings.imgsz or trained_imgsz(model, weights)
    digest = sha256_of(weights)
    facts = {
        "source": source.value,
        "kind": source.kind,
        "weights": str(weights),
        "weights_sha256": digest,
        "imgsz": imgsz,
        "conf": settings.conf,
        "iou": settings.iou,
        "vid_stride": settings.vid_stride,
    }
    tracker.log_params({"predict.weights_sha256": digest, "predict.weights_file": str(weights)})
    log.info("predict: %s (%s) with %s at %s px", source.value, source.kind, weights, imgsz or "Ultralytics' default")
    provide_offline_font()
    arguments = {
        "source": source.value,
        "stream": True,
        "conf": settings.conf,
        "iou": settings.iou,
        "classes": [names.index(n) for n in settings.classes] or None,
        "vid_stride": settings.vid_stride,
        "device": ultralytics_device(cfg.hardware.device),
        "verbose": False,
        **({"imgsz": imgsz} if imgsz else {}),
    }
    if source.tracked:
        results = model.track(persist=True, tracker=settings.tracker, **arguments)
    else:
        results = model.predict(**arguments)
    return run_predictions(results, source, settings, names, facts, run_dir, tracker)


def refuse_earlier_predictions(run_dir: Path) -> None:
    """A run folder keeps one predict run: a second would mix its lines into the first's detections.jsonl."""
    if (run_dir / DETECTIONS).exists():
        raise ConfigError(
            "hydra.run.dir",
            f"{run_dir} already holds the detections of a predict run ({DETECTIONS})",
            "use a new run folder (leave hydra.run.dir at its default, or give another)",
        )


def resolve_predict_weights(cfg: SentinelConfig, run_dir: Path, dataset: RunDataset, launch_dir: Path) -> Path:
    """models:/ URIs from the registry, a file named directly, or `latest` / a run folder (a fine-tune on the
    selected datasets, checked against their classes as evaluate does)."""
    value, key = str(cfg.predict.weights), "predict.weights"
    if value.startswith("models:/"):
        store = tracking_uri(cfg.tracking.uri, local_store_dir(launch_dir, cfg.paths.tracking))
        folder = run_dir / "registered_model"
        shutil.rmtree(folder, ignore_errors=True)  # a download of an earlier attempt in this folder
        return registered_weights(download_registered_model(value, store, folder, key))
    given = given_weights_file(value, key)
    if given is not None:
        return given
    merged = dataset.merged()
    return resolve_weights(value, key, data_dir_of(cfg), merged.fingerprint, class_names_of(merged.dataset_yaml))


def check_class_names(settings: PredictConfig, names: list[str], weights: Path) -> None:
    """Every class named in predict.alert and predict.classes must be one the weights detect."""
    for key, wanted in (("predict.alert", list(settings.alert)), ("predict.classes", list(settings.classes))):
        for name in wanted:
            if name not in names:
                close = difflib.get_close_matches(str(name), names, n=1)
                hint = f"did you mean {close[0]}? " if close else ""
                raise ConfigError(
                    f"{key}.{name}" if key == "predict.alert" else key,
                    f"{name!r} is not a class of {weights.name}, whose classes are {names}",
                    f"{hint}use the weights' class names",
                )


def boxes_of(result: Any) -> list[Box]:
    boxes = result.boxes
    if boxes is None or len(boxes) == 0:
        return []
    ids = boxes.id.int().tolist() if boxes.is_track and boxes.id is not None else [None] * len(boxes)
    return [
        Box(result.names[int(c)], int(c), float(p), tuple(float(v) for v in xyxy), track)
        for xyxy, c, p, track in zip(boxes.xyxy.tolist(), boxes.cls.tolist(), boxes.conf.tolist(), ids, strict=True)
    ]


class Recorder:
    """Everything a predict run writes, fed one Ultralytics result at a time and closed whole at the end."""

    def __init__(self, source: Source, settings: PredictConfig, names: list[str], run_dir: Path) -> None:
        self.source, self.stride, self.run_dir = source, settings.vid_stride, run_dir
        self.detections = LineLog(run_dir / DETECTIONS)
        self.alert_log = LineLog(run_dir / ALERTS)
        self.watch = AlertWatch(dict(settings.alert), settings.alert_min_frames, run_dir / "alerts")
        self.tally = Tally(names)
        rates = {path: video.fps / self.stride for path, video in source.videos.items()}
        self.annotated = Annotated(run_dir / "annotated", rates) if settings.save_annotated else None
        self.processed: dict[str, int] = {}  # results so far per file
        self.started = time.perf_counter()

    def record(self, result: Any, wall_ms: float) -> None:
        path = str(result.path)
        index = self.processed.get(path, 0)
        self.processed[path] = index + 1
        frame, time_s = frame_and_time(self.source, path, index, self.stride, self.started)
        boxes = boxes_of(result)
        line: dict[str, Any] = {"source": path}
        if frame is not None:
            line.update({"frame": frame, "time_s": round(time_s, 3)})
        line["boxes"] = [box.as_record() for box in boxes]
        self.detections.write(line)
        self.tally.add(path, boxes, result.speed, wall_ms)
        for alert in self.watch.see(path, index, frame, time_s, boxes, result.orig_img, self.source.tracked):
            self.alert_log.write(alert.as_record())
            print(alert_line(alert), flush=True)
        if self.annotated is not None:
            self.annotated.add(path, result.plot(), path in self.source.videos)
        kill_point(FRAME_POINT)  # tests: a kill, or a Ctrl-C while held here, mid-video (runtime/faults.py)
        hold_point(FRAME_POINT)

    def close(self, facts: dict[str, Any], stopped: str) -> tuple[dict[str, Any], Path, list[Path]]:
        """Close every file; alerts.jsonl is rewritten with each alert's last frame and top confidence."""
        self.detections.close()
        self.alert_log.close()
        files = self.annotated.close() if self.annotated is not None else []
        write_text_atomic(self.run_dir / ALERTS, "".join(json.dumps(a.as_record()) + "\n" for a in self.watch.alerts))
        not_decoded = {} if stopped else self.frames_not_decoded()
        data = report(self.tally, self.watch.alerts, facts, not_decoded, stopped)
        return data, write_report(self.run_dir, data), files

    def frames_not_decoded(self) -> dict[str, int]:
        """Per video, the frames its header counts that never came out of the decoder (skipped, counted)."""
        return {
            path: max(0, video.frames // self.stride - self.processed.get(path, 0))
            for path, video in self.source.videos.items()
        }


def run_predictions(
    results: Iterator[Any],
    source: Source,
    settings: PredictConfig,
    names: list[str],
    facts: dict[str, Any],
    run_dir: Path,
    tracker: Tracker,
) -> PredictResult:
    """Record each image or frame as it comes. Ctrl-C and SIGTERM end the loop; every file is then closed
    whole and the report says where it stopped."""
    recorder = Recorder(source, settings, names, run_dir)
    stopped = ""
    shown = time.perf_counter()
    try:
        waited_since = time.perf_counter()
        for result in results:
            recorder.record(result, (time.perf_counter() - waited_since) * 1000)
            if time.perf_counter() - shown >= PROGRESS_EVERY_S:
                shown = time.perf_counter()
                log.info("predict: %s", progress(recorder.tally, source, settings.vid_stride))
            waited_since = time.perf_counter()
    except KeyboardInterrupt:
        stopped = "Ctrl-C or SIGTERM"
    except BaseException as error:  # the report still says how far it got, and that it failed there
        stopped = f"failed: {type(error).__name__}"
        raise
    finally:
        data, report_file, files = recorder.close(facts, stopped)
    record_in_tracking(tracker, data)
    frames, alerts = recorder.tally.frames, len(recorder.watch.alerts)
    if stopped:
        raise Interrupted(
            f"predict stopped ({stopped}) after {frames} frame{'' if frames == 1 else 's'}: "
            f"{run_dir / DETECTIONS} holds them, {alerts} alerts in {run_dir / ALERTS}, report {report_file}"
        )
    unit = "frames" if source.tracked else "images"
    return PredictResult(frames, data["fps"], dict(recorder.tally.detections), alerts, report_file, unit, files)


def frame_and_time(
    source: Source, path: str, index: int, stride: int, started: float
) -> tuple[int | None, float | None]:
    """A video frame's number in the file (0-based, counting the frames vid_stride skips) and its time in the
    video; a stream's frame count and seconds since the start; nothing for an image."""
    if path in source.videos:
        frame = (index + 1) * stride - 1
        return frame, frame / source.videos[path].fps
    if source.kind in ("stream", "camera"):
        return index, time.perf_counter() - started
    return None, None


def alert_line(alert: Any) -> str:
    where = f"frame {alert.first_frame} ({alert.first_time_s:.2f} s)" if alert.first_frame is not None else alert.source
    track = f" track {alert.track_id}" if alert.track_id is not None else ""
    return f"ALERT {alert.class_name}{track} at {where}, confidence {alert.top_confidence:.2f}: alerts/{alert.crop}"


def progress(tally: Tally, source: Source, stride: int) -> str:
    total = sum(v.frames // stride for v in source.videos.values())
    rate = tally.fps()
    if total and rate:
        left = duration((total - tally.frames) / rate)
        return f"{tally.frames} of {total} frames, {rate:.1f} per second, about {left} left"
    return f"{tally.frames} frames, {rate:.1f} per second"


def record_in_tracking(tracker: Tracker, data: dict[str, Any]) -> None:
    metrics = {"predict/frames": data["frames"], "predict/fps": data["fps"], "predict/alerts": data["alerts"]}
    for row in data["classes"]:
        metrics[f"predict/{row['class']}/detections"] = row["detections"]
        metrics[f"predict/{row['class']}/alerts"] = row["alerts"]
    tracker.log_metrics(metrics)
