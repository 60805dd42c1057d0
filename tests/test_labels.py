"""Every kind of label line: accepted, or rejected with the right reason."""

from __future__ import annotations

import pytest

from sentinel.dataset.labels import parse_label_file, parse_line

LINES = [
    ("valid", "1 0.5 0.5 0.2 0.3", (1, 0.5, 0.5, 0.2, 0.3), None),
    ("float_class_id_integral", "1.0 0.5 0.5 0.2 0.3", (1, 0.5, 0.5, 0.2, 0.3), None),
    ("tiny_overshoot_clipped", "0 0.5 0.5 1.0000001 0.3", (0, 0.5, 0.5, 1.0, 0.3), None),
    ("polygon_to_box", "0 0.1 0.2 0.5 0.2 0.5 0.6", (0, 0.3, 0.4, 0.4, 0.4), None),
    ("too_few_fields", "1 0.5 0.5 0.2", None, "wrong_field_count"),
    ("odd_polygon", "1 0.5 0.5 0.2 0.3 0.4", None, "wrong_field_count"),
    ("not_a_number", "1 0.5 abc 0.2 0.3", None, "not_a_number"),
    ("nan", "1 nan 0.5 0.2 0.3", None, "non_finite"),
    ("infinity", "1 0.5 inf 0.2 0.3", None, "non_finite"),
    ("negative", "1 -0.1 0.5 0.2 0.3", None, "out_of_range"),
    ("above_one", "1 0.5 0.5 1.2 0.3", None, "out_of_range"),
    ("zero_width", "1 0.5 0.5 0 0.3", None, "zero_size"),
    ("class_too_large", "3 0.5 0.5 0.2 0.3", None, "bad_class_id"),
    ("negative_class", "-1 0.5 0.5 0.2 0.3", None, "bad_class_id"),
    ("fractional_class", "1.5 0.5 0.5 0.2 0.3", None, "bad_class_id"),
]


@pytest.mark.parametrize(("line", "box", "reason"), [r[1:] for r in LINES], ids=[r[0] for r in LINES])
def test_label_line(line, box, reason):
    parsed, problem, _ = parse_line(line, 7, num_classes=3)
    if reason is None:
        assert problem is None and parsed == pytest.approx(box)
    else:
        assert parsed is None and problem.reason == reason and problem.line == 7


def test_label_file_counts_duplicates_and_keeps_line_numbers(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("0 0.5 0.5 0.2 0.2\n\n0 0.5 0.5 0.2 0.2\n9 0.5 0.5 0.2 0.2\n1 0.1 0.1 0.1 0.1\n")
    parsed = parse_label_file(path, num_classes=2)
    assert [b[0] for b in parsed.boxes] == [0, 1]
    assert [(p.line, p.reason) for p in parsed.problems] == [(3, "duplicate_box"), (4, "bad_class_id")]


def test_undecodable_label_file_is_unreadable_not_a_crash(tmp_path):
    path = tmp_path / "a.txt"
    path.write_bytes(b"0 0.5 0.5 0.2 0.2\n\xe9\x00garbage")
    parsed = parse_label_file(path, 2)
    assert parsed.unreadable.startswith("UnicodeDecodeError") and parsed.boxes == [] and parsed.problems == []


@pytest.mark.parametrize("encoding", ["utf-16", "utf-8-sig"])
def test_label_files_with_a_byte_order_mark_are_decoded(tmp_path, encoding):
    path = tmp_path / "a.txt"
    path.write_bytes("0 0.5 0.5 0.2 0.2\r\n1 0.1 0.1 0.1 0.1\r\n".encode(encoding))
    parsed = parse_label_file(path, 2)
    assert not parsed.unreadable and [box[0] for box in parsed.boxes] == [0, 1]
