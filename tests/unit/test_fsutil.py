"""Atomic writes: a block that fails part-way leaves the previous file or directory as it was, and no temp behind."""

import json

import pytest

from kerasport.fsutil import atomic_path, sha256_file, sha256_tree, write_json_atomic, write_text_atomic


class Crash(Exception):
    pass


def leftovers(folder, keep):
    return sorted(path.name for path in folder.iterdir() if path.name not in keep)


def test_a_crash_while_writing_a_file_keeps_the_previous_one(tmp_path):
    target = tmp_path / "manifest.json"
    write_text_atomic(target, "previous")
    with pytest.raises(Crash), atomic_path(target) as temp:
        temp.write_text("half a manif")
        raise Crash
    assert target.read_text() == "previous"
    assert leftovers(tmp_path, {"manifest.json"}) == []


def test_a_crash_while_building_a_directory_keeps_the_previous_tree(tmp_path):
    target = tmp_path / "export"
    with atomic_path(target) as temp:
        temp.mkdir()
        (temp / "model.onnx").write_bytes(b"old model")
    before = sha256_tree(target)
    with pytest.raises(Crash), atomic_path(target) as temp:
        temp.mkdir()
        (temp / "model.onnx").write_bytes(b"new mod")
        raise Crash
    assert sha256_tree(target) == before and (target / "model.onnx").read_bytes() == b"old model"
    assert leftovers(tmp_path, {"export"}) == []


def test_a_finished_directory_replaces_the_old_one_whole(tmp_path):
    target = tmp_path / "export"
    with atomic_path(target) as temp:
        temp.mkdir()
        (temp / "stale.tflite").write_bytes(b"x")
    with atomic_path(target) as temp:
        temp.mkdir()
        (temp / "model.onnx").write_bytes(b"new")
    assert sorted(path.name for path in target.iterdir()) == ["model.onnx"]  # no file of the old tree survives
    assert leftovers(tmp_path, {"export"}) == []  # nor the old tree moved aside


def test_a_block_that_writes_nothing_fails_and_keeps_the_previous_file(tmp_path):
    target = tmp_path / "report.json"
    write_json_atomic(target, {"passed": True})
    with pytest.raises(FileNotFoundError, match="nothing was written"), atomic_path(target):
        pass
    assert json.loads(target.read_text()) == {"passed": True}
    assert leftovers(tmp_path, {"report.json"}) == []


def test_json_and_hashes(tmp_path):
    import numpy as np

    target = tmp_path / "deep" / "metrics.json"  # parent folders are created
    write_json_atomic(target, {"accuracy": np.float32(0.5), "path": tmp_path})
    assert json.loads(target.read_text()) == {"accuracy": 0.5, "path": str(tmp_path)}
    with pytest.raises(TypeError, match="cannot serialise object"):
        write_json_atomic(target, {"x": object()})
    assert json.loads(target.read_text())["accuracy"] == 0.5
    # sha256 of b"abc" (FIPS 180-2, appendix B.1)
    (tmp_path / "abc").write_bytes(b"abc")
    assert sha256_file(tmp_path / "abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
