"""What `predict.source` names, checked before any work: a missing file, a video that cannot be decoded or a
stream that does not answer is one line naming it, not a traceback from inside Ultralytics' loaders."""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path

from sentinel.errors import ConfigError

KEY = "predict.source"
STREAM_SCHEMES = ("rtsp://", "rtmp://", "http://", "https://", "tcp://", "udp://")


@dataclass(frozen=True)
class Source:
    """`kind` is images (a file, a folder or a glob of images), video (files), stream or camera. Videos,
    streams and cameras are followed frame to frame (tracking); images are each on their own."""

    value: str
    kind: str
    videos: dict[str, VideoFacts]  # each video file (absolute path): its frame count and rate, as its header says

    @property
    def tracked(self) -> bool:
        return self.kind != "images"


@dataclass(frozen=True)
class VideoFacts:
    frames: int
    fps: float


def image_and_video_suffixes() -> tuple[set[str], set[str]]:
    from ultralytics.data.utils import IMG_FORMATS, VID_FORMATS

    return {f".{s}" for s in IMG_FORMATS}, {f".{s}" for s in VID_FORMATS}


def check_source(value: str, timeout_s: float) -> Source:
    """The source as Ultralytics will read it, or a ConfigError naming what is wrong with it."""
    value = value.strip()
    if value.isdigit():
        check_stream(int(value), f"camera {value}", timeout_s)
        return Source(value, "camera", {})
    if value.lower().startswith(STREAM_SCHEMES):
        check_stream(value, value, timeout_s)
        return Source(value, "stream", {})
    files = files_of(value)
    images, videos = image_and_video_suffixes()
    usable = [f for f in files if f.suffix.lower() in images | videos]
    if not usable:
        kinds = ", ".join(sorted(images | videos))
        raise ConfigError(KEY, f"{value} holds no image or video Ultralytics reads", f"give files ending in {kinds}")
    found_videos = [f for f in usable if f.suffix.lower() in videos]
    if found_videos and len(found_videos) != len(usable):
        raise ConfigError(KEY, f"{value} mixes images and videos", "give the images and the videos as two predict runs")
    facts = {os.path.abspath(f): video_facts(f) for f in found_videos}  # as Ultralytics names them in results
    return Source(value, "video" if found_videos else "images", facts)


def files_of(value: str) -> list[Path]:
    """The files a path, a folder or a glob names, sorted; a ConfigError when there are none."""
    if any(c in value for c in "*?["):
        files = sorted(Path(p) for p in glob.glob(value, recursive=True) if Path(p).is_file())
        if not files:
            raise ConfigError(KEY, f"no file matches {value}", "check the pattern (quote it in the shell)")
        return files
    path = Path(value).expanduser()
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.is_file())
    if path.is_file():
        return [path]
    raise ConfigError(
        KEY, f"{path} does not exist", "give an existing image, folder, glob, video, stream URL or camera index"
    )


def video_facts(path: Path) -> VideoFacts:
    """Open the video and decode its first frame: a file OpenCV cannot decode is refused here."""
    import cv2

    capture = cv2.VideoCapture(str(path))
    try:
        ok, frame = capture.read() if capture.isOpened() else (False, None)
        if not ok or frame is None:
            raise ConfigError(
                KEY, f"{path} cannot be decoded as a video", "check the file (ffprobe), or convert it to MP4"
            )
        return VideoFacts(
            frames=int(capture.get(cv2.CAP_PROP_FRAME_COUNT)),
            fps=float(capture.get(cv2.CAP_PROP_FPS)) or 30.0,
        )
    finally:
        capture.release()


def check_stream(source: str | int, name: str, timeout_s: float) -> None:
    """A stream or camera must give a frame within `timeout_s` (OpenCV's own open and read time limits)."""
    import cv2

    limit_ms = int(timeout_s * 1000)
    params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, limit_ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, limit_ms]
    capture = cv2.VideoCapture(source, cv2.CAP_ANY, params)
    try:
        ok = capture.isOpened() and capture.read()[0]
    finally:
        capture.release()
    if not ok:
        raise ConfigError(
            KEY,
            f"{name} gave no frame within {timeout_s:g} s",
            "check the address and that the stream is live (predict.timeout_s waits longer)",
        )
