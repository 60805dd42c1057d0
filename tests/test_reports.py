"""What a person reads in the reports and plots, from their inputs (fast: no training, no database)."""

from __future__ import annotations

from sentinel.dataset.report import CAPTION_PX, label_font, tile_sheet
from sentinel.runtime.eta import time_left
from sentinel.runtime.tracking.names import trial_number, trial_run_name
from sentinel.stages.evaluate import PR_NOTE, metrics_markdown
from sentinel.stages.inspection import errors_markdown


def test_an_empty_gallery_is_its_caption_whole_on_a_strip_that_fits_it():
    caption = "No false alarms on this split."
    sheet = tile_sheet([], 256, caption)
    assert sheet.width >= label_font(CAPTION_PX).getlength(caption) + 8 and sheet.height < 60


def test_errors_md_says_none_under_a_heading_with_nothing_to_list():
    errors = {
        "split": "test",
        "weights": "w.pt",
        "images": 3,
        "conf": 0.25,
        "conf_rule": "inspect.conf",
        "iou": 0.5,
        "classes": [],
        "evaluate_recall": {},
        "most_missed": [],
        "most_false_alarms": [],
        "persistent": False,
        "fiftyone_dataset": "x",
    }
    text = errors_markdown(errors)
    assert "## Most false alarms\n\nNone: every prediction matched a box." in text
    assert "## Most missed boxes\n\nNone: the model found every box." in text


def test_metrics_md_explains_ultralytics_precision_for_a_class_never_predicted():
    row = {"class": "gun", "images": 1, "instances": 1, "precision": 1.0, "recall": 0.0, "f1": 0.0}
    row |= {"ap50": 0.0, "ap50-95": 0.0}
    means = dict.fromkeys(("mp", "mr", "map50-95", "map50", "map75"), 0.0)
    text = metrics_markdown({"split": "test", "note": "", "classes": [row], "means": means})
    assert "| gun | 1 | 1 | 1.0000 | 0.0000 |" in text and PR_NOTE in text


def test_trials_are_numbered_from_rays_ids_and_folder_names_and_named_by_their_values():
    assert trial_number("8b553_00003", 0) == 4
    assert trial_number("train_trial_8b553_00003_3_lr0=0.0130,mosaic=0.0000_2026-12-07_02-05-42", 0) == 4
    assert trial_number("a folder of another name", 7) == 7
    assert trial_run_name(4, {"lr0": 0.0123456, "mosaic": 1.0, "fliplr": 0.5, "scale": 0.2}) == (
        "trial 4 · lr0=0.0123 mosaic=1 fliplr=0.5 …"
    )


def test_the_time_left_is_said_as_a_person_would():
    assert time_left(0, 10, 5.0) == "time left: after the first epoch"
    assert time_left(1, 10, 20.0) == "about 3 min left"
    assert time_left(5, 10, 4000.0) == "about 1 h 7 min left"
    assert time_left(10, 10, 60.0) == "nothing left"


def test_progress_lines_say_how_far_and_how_long_is_left_where_no_bar_can_show(caplog):
    import logging

    from sentinel.runtime.eta import ProgressLines

    log = logging.getLogger("test.progress")
    lines = ProgressLines(log, "prep: images merged", 20_000, every_s=0.0)
    with caplog.at_level(logging.INFO, logger="test.progress"):
        for _ in range(4):
            lines.update(5_000)
    shown = [r.getMessage() for r in caplog.records]
    assert shown[0].startswith("prep: images merged: 5000 of 20000 (25%), about ") and len(shown) == 3  # not at 100%


def test_a_roboflow_download_says_how_much_has_arrived_while_it_runs(tmp_path, caplog):
    import logging
    import threading

    from sentinel.dataset.sources.roboflow import log_download_progress

    (tmp_path / "part.zip").write_bytes(b"x" * 2_500_000)
    stop = threading.Event()
    with caplog.at_level(logging.INFO, logger="sentinel.dataset.sources.roboflow"):
        watcher = threading.Thread(target=log_download_progress, args=(tmp_path, "ws/proj/3 (yolov8)", stop, 0.01))
        watcher.start()
        for _ in range(3000):  # until the first progress line, due 10 ms in (a bound, not a speed check)
            if caplog.records:
                break
            stop.wait(0.01)
        stop.set()
        watcher.join()
    assert caplog.records[0].getMessage().startswith("Roboflow ws/proj/3 (yolov8): 2.5 MB downloaded so far")
