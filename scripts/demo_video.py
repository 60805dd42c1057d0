"""Write a short video to try mode=predict on: one of the demo's test images sliding slowly across the frame
(96×96, 25 frames per second), so the shapes stay in view for the tracker. Needs the demo data merged first
(`make demo`, or any `experiment=demo` run).

Usage: python scripts/demo_video.py door.avi [--data data] [--seconds 10]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output", type=Path, help="the video to write (.avi, MJPG)")
    parser.add_argument("--data", type=Path, default=Path("data"), help="data_dir of the demo runs (default: data)")
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    images = sorted(args.data.glob("merged/*/images/test/*.jpg"))
    if not images:
        sys.exit(f"error: no demo test image under {args.data}/merged/; run `make demo` first (or give --data)")
    import cv2
    import numpy as np

    still = cv2.imread(str(images[0]))
    height, width = still.shape[:2]
    partial = args.output.with_name(f".{args.output.stem}.partial{args.output.suffix or '.avi'}")
    writer = cv2.VideoWriter(str(partial), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (width, height))
    for i in range(int(args.seconds * 25)):
        writer.write(np.roll(still, i // 6, axis=1))
    writer.release()
    partial.replace(args.output)
    print(f"{args.output}: {int(args.seconds * 25)} frames of {images[0].name}")


if __name__ == "__main__":
    main()
