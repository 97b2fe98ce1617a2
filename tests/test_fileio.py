"""Tests of elasticvit_tf.fileio: atomic writes leave the old file or the new one, never half."""

import json
import os

import pytest

from elasticvit_tf import fileio


def test_write_json_atomic_round_trip_and_layout(tmp_path):
    path = tmp_path / "sub" / "a.json"  # the folder is created
    fileio.write_json_atomic(path, {"b": 1, "a": [1, 2]}, sort_keys=True)
    text = path.read_text()
    assert text.endswith("\n") and text.index('"a"') < text.index('"b"')
    assert json.loads(text) == {"a": [1, 2], "b": 1}
    fileio.write_json_atomic(path, {"x": 1.5}, indent=None)
    assert path.read_text() == '{"x": 1.5}'
    assert os.listdir(path.parent) == ["a.json"]  # no temporary file left


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "state.json"
    fileio.write_json_atomic(path, {"step": 1}, fsync=True)

    with pytest.raises(TypeError):  # not JSON-able: fails before anything is renamed
        fileio.write_json_atomic(path, {"step": object()})

    def boom(f):
        f.write("partial")
        raise KeyboardInterrupt  # a kill mid-write

    with pytest.raises(KeyboardInterrupt):
        fileio.write_atomic(path, boom)
    assert json.loads(path.read_text()) == {"step": 1}
    assert os.listdir(tmp_path) == ["state.json"]


def test_binary_and_text_writes(tmp_path):
    fileio.write_atomic(tmp_path / "b.bin", lambda f: f.write(b"\x00\x01"), binary=True)
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    fileio.write_text_atomic(tmp_path / "r.md", "# report\n")
    assert (tmp_path / "r.md").read_text() == "# report\n"
    json_default = {"when": pytest}  # a module: only ``default`` makes it JSON-able
    fileio.write_json_atomic(tmp_path / "d.json", json_default, default=lambda o: o.__name__)
    assert json.loads((tmp_path / "d.json").read_text()) == {"when": "pytest"}
