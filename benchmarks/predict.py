"""mode=predict against plain Ultralytics on the same video, weights and image size.

Weights: the demo preset's fine-tune (trained here first, ~1 min), which finds the demo shapes, so boxes are
recorded, tracked and alerted on. Video: a generated 640×480 MJPG of --frames frames (a demo test image scaled
up and sliding). Rates are frames per second of the predict loop (the model loaded first in both):
- plain `yolo predict` (model.predict(stream=True)), and `yolo track` with ByteTrack (what mode=predict runs on
  a video: the like-for-like baseline);
- Sentinel's mode=predict (ByteTrack, detections.jsonl, alerts; its predict_report.json's steady rate), target
  ≥ 0.95 × plain track (the cost of recording and alerts), and its ratio to plain predict (tracking's cost too);
- the same weights exported to ONNX (ONNX Runtime) and TorchScript, plain predict, for the side-by-side.
Memory: Sentinel's peak RSS on --frames and on --long frames (10×): streaming keeps it within 10%.
Usage: python benchmarks/predict.py [--frames 600] [--long 6000] [--imgsz 64]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from _common import ENV, run_timed  # noqa: E402

RATE_TARGET = 0.95
MEMORY_TARGET = 1.10


def train_demo_weights(workdir: Path) -> Path:
    run_timed(
        [
            sys.executable,
            str(REPO / "train.py"),
            "experiment=demo",
            "mode=finetune",
            "tracking=none",
            f"data_dir={workdir / 'data'}",
            f"hydra.run.dir={workdir / 'weights'}",
        ],
        workdir,
    )
    return workdir / "weights" / "sentinel.pt"


def write_video(path: Path, image: Path, frames: int) -> Path:
    import cv2
    import numpy as np

    still = cv2.resize(cv2.imread(str(image)), (480, 480), interpolation=cv2.INTER_LINEAR)
    canvas = np.full((480, 640, 3), 114, np.uint8)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (640, 480))
    for i in range(frames):
        frame = canvas.copy()
        x = (i // 4) % 160
        frame[:, x : x + 480] = still
        writer.write(frame)
    writer.release()
    return path


def plain_rate(weights: Path, video: Path, imgsz: int, track: bool = False) -> float:
    from ultralytics import YOLO

    model = YOLO(str(weights), task="detect")
    arguments = {"source": str(video), "stream": True, "imgsz": imgsz, "conf": 0.25, "verbose": False, "device": "cpu"}
    tracking = {"persist": True, "tracker": "bytetrack.yaml"}  # mode=predict's default; Ultralytics' is BoT-SORT
    results = model.track(**tracking, **arguments) if track else model.predict(**arguments)
    next(results)  # from the first frame's end, as mode=predict's report counts (start-up is not the rate)
    started = time.perf_counter()
    frames = sum(1 for _ in results)
    return frames / (time.perf_counter() - started)


def sentinel_run(workdir: Path, weights: Path, video: Path, imgsz: int, name: str) -> tuple[float, int, dict]:
    """mode=predict in a process of its own: its loop's rate (predict_report.json), its peak RSS in KiB."""
    run_dir = workdir / name
    wrapper = (
        "import resource, subprocess, sys; code = subprocess.run(sys.argv[1:]).returncode; "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(code)"
    )
    command = [
        sys.executable, "-c", wrapper, sys.executable, str(REPO / "train.py"), "experiment=demo", "mode=predict",
        "tracking=none", f"data_dir={workdir / 'data'}", f"hydra.run.dir={run_dir}", f"predict.weights={weights}",
        f"predict.source={video}", f"predict.imgsz={imgsz}", "predict.alert={knife: 0.5, gun: 0.5}",
    ]  # fmt: skip
    result = subprocess.run(command, cwd=workdir, env=ENV, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"mode=predict failed:\n{result.stderr[-3000:]}")
    report = json.loads((run_dir / "predict_report.json").read_text())
    return report["fps"], int(result.stdout.strip().splitlines()[-1]), report


def export(weights: Path, fmt: str, imgsz: int) -> Path:
    from ultralytics import YOLO

    return Path(YOLO(str(weights)).export(format=fmt, imgsz=imgsz, device="cpu", verbose=False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--frames", type=int, default=600)
    parser.add_argument("--long", type=int, default=6000)
    parser.add_argument("--imgsz", type=int, default=64, help="the demo weights were trained at 64")
    parser.add_argument("--runs", type=int, default=3, help="rounds of alternating runs; medians are printed")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        workdir = Path(scratch)
        weights = train_demo_weights(workdir)
        image = sorted((workdir / "data" / "merged").glob("*/images/test/*.jpg"))[0]
        video = write_video(workdir / "clip.avi", image, args.frames)
        long_video = write_video(workdir / "long.avi", image, args.long)
        onnx, torchscript = export(weights, "onnx", args.imgsz), export(weights, "torchscript", args.imgsz)
        plain_rate(weights, video, args.imgsz, track=True)  # warm the file cache and the libraries' first use
        rates: dict[str, list[float]] = {k: [] for k in ("plain", "tracked", "ours", "onnx", "torchscript")}
        for round_ in range(args.runs):
            rates["plain"].append(plain_rate(weights, video, args.imgsz))
            rates["tracked"].append(plain_rate(weights, video, args.imgsz, track=True))
            ours, memory, report = sentinel_run(workdir, weights, video, args.imgsz, f"short{round_}")
            rates["ours"].append(ours)
            rates["onnx"].append(plain_rate(onnx, video, args.imgsz))
            rates["torchscript"].append(plain_rate(torchscript, video, args.imgsz))
        _, long_memory, _ = sentinel_run(workdir, weights, long_video, args.imgsz, "long")
    rate = {k: statistics.median(v) for k, v in rates.items()}
    boxes = sum(row["detections"] for row in report["classes"])
    print(
        f"{args.frames} frames of 640x480 video at imgsz {args.imgsz} on the CPU ({boxes} boxes, "
        f"{report['alerts']} alert(s)); frames per second, medians of {args.runs} alternating runs:"
    )
    print(f"  plain yolo predict (PyTorch):    {rate['plain']:7.1f}")
    print(f"  plain yolo track (ByteTrack):    {rate['tracked']:7.1f}")
    print(f"  Sentinel mode=predict:           {rate['ours']:7.1f}")
    print(f"  plain predict, ONNX Runtime:     {rate['onnx']:7.1f}")
    print(f"  plain predict, TorchScript:      {rate['torchscript']:7.1f}")
    ratio = rate["ours"] / rate["tracked"]
    print(f"rate ratio Sentinel / plain track: {ratio:.3f} (target >= {RATE_TARGET}: recording and alerts)")
    print(f"rate ratio Sentinel / plain predict: {rate['ours'] / rate['plain']:.3f} (tracking's cost too; no target)")
    print(
        f"peak memory: {memory / 1024:.0f} MiB after {args.frames} frames, {long_memory / 1024:.0f} MiB after "
        f"{args.long}: ratio {long_memory / memory:.3f} (target <= {MEMORY_TARGET})"
    )


if __name__ == "__main__":
    main()
