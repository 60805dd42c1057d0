"""read_file: the whole file whatever the size hint says, and open()'s errors."""

from __future__ import annotations

import os

import pytest

from sentinel.dataset.file_bytes import read_file

DATA = os.urandom(3 * 2**20 + 7)  # more than one of read_file's follow-up reads


@pytest.mark.parametrize(
    "hint",
    [len(DATA), 0, 100, len(DATA) - 1, len(DATA) + 1, 10 * len(DATA)],
    ids=["exact", "unknown", "grew since the stat", "grew by one byte", "shrank by one byte", "shrank"],
)
def test_the_whole_file_comes_back_whatever_the_size_hint(tmp_path, hint):
    path = tmp_path / "f.bin"
    path.write_bytes(DATA)
    assert read_file(path, hint) == DATA
    assert read_file(str(path), hint) == DATA


def test_an_empty_file_and_a_small_one(tmp_path):
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "label.txt").write_bytes(b"0 0.5 0.5 0.2 0.2\n")
    assert read_file(tmp_path / "empty", 0) == b"" and read_file(tmp_path / "empty", 5) == b""
    assert read_file(tmp_path / "label.txt", 18) == b"0 0.5 0.5 0.2 0.2\n"


def test_errors_are_those_of_open(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_file(tmp_path / "missing.jpg", 10)
    with pytest.raises(IsADirectoryError):
        read_file(tmp_path, 0)
