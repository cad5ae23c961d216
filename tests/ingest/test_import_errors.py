"""Bad input to `kerasport import`: one line on stderr, exit 2, nothing written, an existing bundle untouched."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from import_helpers import invoke, two_io_arrays

from devtools.tiny_models import CLASS_OUTPUT, CLASSES
from kerasport.errors import EXIT_USAGE
from kerasport.fsutil import sha256_file


def _snapshot(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}


def _npz(path: Path, **changes) -> Path:
    arrays = {**two_io_arrays(), **changes}
    np.savez(path, **{key: value for key, value in arrays.items() if value is not None})
    return path


def _junk_model(tmp: Path) -> Path:
    (tmp / "junk.keras").write_bytes(b"not a zip archive")
    return tmp / "junk.keras"


# Each case: (id, function of (tmp_path, model path) -> extra argv, words the error line must contain)
CASES = [
    ("missing-file", lambda tmp, model: [str(tmp / "absent.keras")], ["absent.keras", "no such file"]),
    ("unloadable-model", lambda tmp, model: [str(_junk_model(tmp))], ["junk.keras", "zip"]),
    ("unknown-extension", lambda tmp, model: [str(shutil.copy(model, tmp / "model.onnx"))], ["'.onnx'"]),
    ("not-a-saved-model", lambda tmp, model: [str(tmp)], ["saved_model.pb"]),
    ("missing-builder-module", lambda tmp, model: ["no_such_pkg_for_import.models:build"], ["no_such_pkg"]),
    ("missing-custom-objects-module", lambda tmp, model: [str(model), "--custom-objects", "no_such_layers_mod"],
     ["--custom-objects", "no_such_layers_mod"]),
    ("eval-input-name", lambda tmp, model: [str(model), "--eval-data",
                                            f"npz:{_npz(tmp / 'e.npz', picture=None, pic=two_io_arrays()['picture'])}"],
     ["'pic'", "picture"]),
    ("eval-missing-input", lambda tmp, model: [str(model), "--eval-data", f"npz:{_npz(tmp / 'e.npz', features=None)}"],
     ["'features'"]),
    ("eval-input-shape", lambda tmp, model: [str(model), "--eval-data",
                                             f"npz:{_npz(tmp / 'e.npz', picture=np.zeros((20, 16, 16, 3)))}"],
     ["'picture'", "[20, 16, 16, 3]"]),
    ("eval-input-dtype", lambda tmp, model: [str(model), "--eval-data",
                                             f"npz:{_npz(tmp / 'e.npz', features=np.full((20, 8), 'abc'))}"],
     ["'features'", "<U3"]),
    ("eval-lengths", lambda tmp, model: [str(model), "--eval-data",
                                         f"npz:{_npz(tmp / 'e.npz', features=np.zeros((5, 8)))}"], ["lengths"]),
    ("eval-class-index", lambda tmp, model: [str(model), "--eval-data",
                                             f"npz:{_npz(tmp / 'e.npz', **{f'y:{CLASS_OUTPUT}': np.full(20, 7)})}"],
     [f"'{CLASS_OUTPUT}'", "0..2"]),
    ("eval-missing-file", lambda tmp, model: [str(model), "--eval-data", f"npz:{tmp / 'none.npz'}"], ["none.npz"]),
    ("eval-unknown-form", lambda tmp, model: [str(model), "--eval-data", "csv:data.csv"], ["csv:data.csv"]),
    ("eval-images-for-two-inputs", lambda tmp, model: [str(model), "--eval-data", f"images:{tmp}"],
     ["one image input"]),
    ("calibration-shape", lambda tmp, model: [str(model), "--calibration-data",
                                              f"npz:{_npz(tmp / 'c.npz', features=np.zeros((20, 9)))}"],
     ["--calibration-data", "'features'"]),
    ("labels-count", lambda tmp, model: [str(model), "--labels", "a,b"], ["--labels", "2 labels"]),
    ("labels-file-missing", lambda tmp, model: [str(model), "--labels", str(tmp / "labels.txt")], ["labels.txt"]),
    ("unknown-task", lambda tmp, model: [str(model), "--task", "ranking"], ["--task", "ranking"]),
    ("unknown-input-kind", lambda tmp, model: [str(model), "--input-kind", "audio"], ["--input-kind", "audio"]),
    ("input-kind-does-not-fit", lambda tmp, model: [str(model), "--input-kind", "image"], ["'features'"]),
    ("input-range-order", lambda tmp, model: [str(model), "--input-range", "5,1"], ["--input-range"]),
    ("input-range-text", lambda tmp, model: [str(model), "--input-range", "low,high"], ["--input-range"]),
    ("data-outside-input-range", lambda tmp, model: [str(model), "--input-range", "0,1", "--eval-data",
                                                     f"npz:{_npz(tmp / 'e.npz')}"], ["0..255", "0..1"]),
]


@pytest.mark.parametrize(("make_argv", "words"), [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_bad_input_exits_2_and_writes_nothing(make_argv, words, two_io_keras, imported_bundle, tmp_path):
    existing = tmp_path / "existing"
    shutil.copytree(imported_bundle, existing)
    before = _snapshot(existing)
    data = tmp_path / "data"
    data.mkdir()
    argv = make_argv(data, two_io_keras)
    for run in (existing, tmp_path / "fresh"):
        result = invoke(["import", *argv, "--run", str(run), "--labels", ",".join(CLASSES)]
                        if "--labels" not in argv else ["import", *argv, "--run", str(run)])
        assert result.exit_code == EXIT_USAGE, result.stdout + result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
        assert all(word in lines[0] for word in words), lines[0]
        assert result.stdout == ""
    assert _snapshot(existing) == before
    assert not (tmp_path / "fresh").exists()


def test_labels_from_a_file(two_io_keras, tmp_path):
    (tmp_path / "labels.txt").write_text("\n".join(CLASSES) + "\n")
    result = invoke(["import", str(two_io_keras), "--run", str(tmp_path / "run"), "--labels",
                     str(tmp_path / "labels.txt"), "--json"])
    assert result.exit_code == 0, result.stderr
    assert '"labels": ["cat", "dog", "fox"]' in result.stdout
