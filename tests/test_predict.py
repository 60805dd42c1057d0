"""mode=predict on a folder, a video (tracked, with alerts), an ONNX export; bad sources and classes; a kill and
a Ctrl-C mid-video. The weights are the session's shared demo model (conftest.demo_weights); the video is one
of its test images sliding across the frame."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from builders import write_video
from conftest import REPO, UNTRACKED, free_port, run_train

pytestmark = pytest.mark.slow

ALERT = "predict.alert={knife: 0.4}"


def predict_args(tmp_path: Path, weights: Path, source: Path | str, *extra: str, run: str = "run") -> list[str]:
    return [
        "experiment=demo",
        "mode=predict",
        UNTRACKED,
        f"data_dir={weights.parents[1] / 'data'}",
        f"predict.weights={weights}",
        f"predict.source={source}",
        f"hydra.run.dir={tmp_path / run}",
        *extra,
    ]


def predict(tmp_path: Path, weights: Path, source: Path | str, *extra: str, run: str = "run"):
    result = run_train(predict_args(tmp_path, weights, source, *extra, run=run), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def demo_test_images(demo_weights: Path) -> list[Path]:
    return sorted((demo_weights.parents[1] / "data" / "merged").glob("*/images/test/*.jpg"))


@pytest.fixture(scope="module")
def clip(demo_weights, tmp_path_factory) -> Path:
    """200 frames of the test image the weights find the most knives in, most surely."""
    from ultralytics import YOLO

    model = YOLO(str(demo_weights))
    scored = []
    for image in demo_test_images(demo_weights):
        boxes = model.predict(str(image), imgsz=64, conf=0.4, verbose=False)[0].boxes
        scored.append((sum(1 for c in boxes.cls.tolist() if model.names[int(c)] == "knife"), image))
    best = max(scored)[1]
    return write_video(tmp_path_factory.mktemp("clip") / "door.avi", best, frames=200)


def test_a_folder_gives_a_line_per_image_with_ultralytics_own_boxes(demo_weights, tmp_path):
    from ultralytics import YOLO

    images = demo_test_images(demo_weights)
    predict(tmp_path, demo_weights, images[0].parent, "predict.save_annotated=true")
    run = tmp_path / "run"
    records = lines(run / "detections.jsonl")
    assert [Path(r["source"]).name for r in records] == [p.name for p in images]
    theirs = YOLO(str(demo_weights)).predict([str(p) for p in images], imgsz=64, conf=0.25, verbose=False)
    for record, result in zip(records, theirs, strict=True):
        assert [b["class"] for b in record["boxes"]] == [result.names[int(c)] for c in result.boxes.cls.tolist()]
        assert [b["confidence"] for b in record["boxes"]] == pytest.approx(result.boxes.conf.tolist(), abs=1e-3)
        for box in record["boxes"]:  # original pixels, inside the 96×96 image
            assert 0 <= box["box"][0] < box["box"][2] <= 96 and 0 <= box["box"][1] < box["box"][3] <= 96
            assert "track_id" not in box  # images are not followed
    report = json.loads((run / "predict_report.json").read_text())
    assert report["frames"] == len(images) and report["kind"] == "images"
    total = {row["class"]: row["detections"] for row in report["classes"]}
    assert sum(total.values()) == sum(len(r["boxes"]) for r in records) > 0
    assert sorted(p.name for p in (run / "annotated").iterdir()) == [p.name for p in images]
    assert report["weights_sha256"] and set(report["ms_per_frame"]) == {
        "decode",
        "preprocess",
        "inference",
        "postprocess",
    }


def expected_alerts(records: list[dict], threshold: float, min_frames: int) -> set[tuple[int, str]]:
    """Objects (track id, class) seen over the threshold in min_frames frames in a row, from the lines alone."""
    streak: dict[tuple[int, str], int] = {}
    found = set()
    for record in records:
        seen = {
            (b["track_id"], b["class"]) for b in record["boxes"] if "track_id" in b and b["confidence"] >= threshold
        }
        streak = {key: streak.get(key, 0) + 1 for key in seen}
        found |= {key for key, count in streak.items() if count >= min_frames and key[1] == "knife"}
    return found


def test_a_video_is_tracked_and_each_object_over_the_threshold_is_one_alert(demo_weights, clip, tmp_path):
    import cv2

    result = predict(tmp_path, demo_weights, clip, ALERT, "predict.alert_min_frames=5", "predict.save_annotated=true")
    run = tmp_path / "run"
    records = lines(run / "detections.jsonl")
    assert [r["frame"] for r in records] == list(range(200))
    assert records[25]["time_s"] == pytest.approx(1.0)  # 25 frames per second
    alerts = lines(run / "alerts.jsonl")
    expected = expected_alerts(records, 0.4, 5)
    assert expected and {(a["track_id"], a["class_name"]) for a in alerts} == expected
    assert len(alerts) < sum(len(r["boxes"]) for r in records) / 10  # one per object, not one per frame
    assert result.stdout.count("ALERT knife") == len(alerts)
    for alert in alerts:
        assert (run / "alerts" / alert["crop"]).is_file() and alert["top_confidence"] >= 0.4
        frames = [r["frame"] for r in records if any(b.get("track_id") == alert["track_id"] for b in r["boxes"])]
        assert alert["first_frame"] >= frames[0] and alert["last_frame"] <= frames[-1]
    video = cv2.VideoCapture(str(run / "annotated" / "door.avi"))
    source = cv2.VideoCapture(str(clip))
    assert video.get(cv2.CAP_PROP_FRAME_COUNT) == source.get(cv2.CAP_PROP_FRAME_COUNT) == 200
    assert video.get(cv2.CAP_PROP_FPS) == pytest.approx(source.get(cv2.CAP_PROP_FPS))
    report = json.loads((run / "predict_report.json").read_text())
    knife = next(row for row in report["classes"] if row["class"] == "knife")
    assert knife["alerts"] == len(alerts) and knife["tracks"] >= len(alerts)
    assert report["frames_not_decoded"] == {str(clip): 0}


def test_frames_a_damaged_video_cannot_decode_are_counted_and_skipped(demo_weights, clip, tmp_path):
    damaged = tmp_path / "damaged.avi"
    data = clip.read_bytes()
    damaged.write_bytes(data[: len(data) * 6 // 10])  # the end of the file lost, as a copy cut short
    predict(tmp_path, demo_weights, damaged)
    run = tmp_path / "run"
    report = json.loads((run / "predict_report.json").read_text())
    done = report["frames"]
    assert 0 < done < 200 and len(lines(run / "detections.jsonl")) == done
    assert report["frames_not_decoded"] == {str(damaged): 200 - done}
    assert f"- {damaged}: {200 - done}" in (run / "predict_report.md").read_text()


def test_an_onnx_export_predicts_what_its_weights_do(demo_weights, tmp_path):
    data = f"data_dir={demo_weights.parents[1] / 'data'}"
    exported = run_train(
        [
            "experiment=demo",
            "mode=export",
            UNTRACKED,
            data,
            "export.formats=[onnx]",
            f"export.weights={demo_weights}",
            f"hydra.run.dir={tmp_path / 'export'}",
        ],
        cwd=tmp_path,
    )
    assert exported.returncode == 0, exported.stderr[-3000:]
    folder = demo_test_images(demo_weights)[0].parent
    predict(tmp_path, demo_weights, folder, run="pt")
    predict(tmp_path, tmp_path / "export" / "export" / "sentinel.onnx", folder, run="onnx")
    torch_lines, onnx_lines = lines(tmp_path / "pt" / "detections.jsonl"), lines(tmp_path / "onnx" / "detections.jsonl")
    assert len(torch_lines) == len(onnx_lines)
    for a, b in zip(torch_lines, onnx_lines, strict=True):
        sure = [box["class"] for box in a["boxes"] if box["confidence"] > 0.3]
        assert sure == [box["class"] for box in b["boxes"] if box["confidence"] > 0.3] or not sure
    report = json.loads((tmp_path / "onnx" / "predict_report.json").read_text())
    assert report["imgsz"] == 64  # from the model card Sentinel wrote beside the export


@pytest.mark.parametrize(
    ("source", "extra", "says"),
    [
        ("missing.mp4", [], "predict.source': missing.mp4 does not exist"),
        ("corrupt.mp4", [], "predict.source': corrupt.mp4 cannot be decoded as a video"),
        ("CLIP", ["predict.alert={knive: 0.5}"], "'knive' is not a class of sentinel.pt, whose classes are ['gun', "),
        ("CLIP", ["predict.classes=[guns]"], "did you mean gun?"),
        ("rtsp://127.0.0.1:PORT/door", ["predict.timeout_s=2"], "gave no frame within 2 s"),
    ],
)
def test_a_bad_source_or_class_is_one_line_naming_it(demo_weights, clip, tmp_path, source, extra, says):
    (tmp_path / "corrupt.mp4").write_bytes(os.urandom(4096))
    source = source.replace("CLIP", str(clip)).replace("PORT", str(free_port()))
    result = run_train(predict_args(tmp_path, demo_weights, source, *extra), cwd=tmp_path)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and says in errors[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "detections.jsonl").exists()  # refused before any work


def test_a_kill_mid_video_leaves_every_line_whole(demo_weights, clip, tmp_path):
    killed = run_train(
        predict_args(tmp_path, demo_weights, clip, ALERT), cwd=tmp_path, env={"SENTINEL_KILL_AFTER": "predict.frame:40"}
    )
    assert killed.returncode == -signal.SIGKILL
    records = lines(tmp_path / "run" / "detections.jsonl")  # every line parses
    assert [r["frame"] for r in records] == list(range(40))


def terminal_ctrl_c() -> None:
    """In the child, SIGINT as a terminal's foreground process has it (a test runner's worker may ignore it)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def background_job() -> None:
    """In the child, SIGINT ignored, as a job a script starts with `&` has it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.mark.parametrize(("stop", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["ctrl_c", "sigterm"])
def test_ctrl_c_or_sigterm_mid_video_closes_every_file_and_says_what_was_done(demo_weights, clip, tmp_path, stop, code):
    """The run is held after its first frame (SENTINEL_HOLD_AT) until the test has stopped it: it cannot finish
    the video first, however loaded the machine. SIGTERM is sent with SIGINT ignored, as a script's background
    job has it: it must still stop the run as Ctrl-C does."""
    run = tmp_path / "run"
    args = predict_args(tmp_path, demo_weights, clip, ALERT, "predict.save_annotated=true")
    process = subprocess.Popen(
        [sys.executable, str(REPO / "train.py"), *args],
        cwd=tmp_path,
        env={**os.environ, "SENTINEL_HOLD_AT": f"predict.frame:{tmp_path / 'never'}"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
        preexec_fn=terminal_ctrl_c if stop == signal.SIGINT else background_job,
    )
    # The moment is the first line on disk (the run then holds); the sleep is only how often to look.
    while not (run / "detections.jsonl").is_file() or not (run / "detections.jsonl").read_text():
        assert process.poll() is None, "predict ended before its first frame"
        time.sleep(0.2)
    os.kill(process.pid, stop)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == code, stderr[-2000:]
    records = lines(run / "detections.jsonl")
    report = json.loads((run / "predict_report.json").read_text())
    assert report["interrupted"] and report["frames"] == len(records) == 1
    assert "after 1 frame:" in stderr and "Traceback" not in stderr
    lines(run / "alerts.jsonl")  # whole
    import cv2

    video = cv2.VideoCapture(str(run / "annotated" / "door.avi"))  # closed and renamed: playable
    assert video.get(cv2.CAP_PROP_FRAME_COUNT) == 1 and not (run / "annotated" / ".door.partial.avi").exists()
    assert json.loads((run / "run_status.json").read_text())["status"] == "KILLED"
