"""Loading what `kerasport import` was given: a `.keras` or legacy `.h5` file, a TF SavedModel directory, or a
`package.module:function` that returns a built Keras model.

Keras files load with `safe_mode` on unless the user passes `--unsafe`. Keras' own errors are long, multi-line and
name neither the layer nor our flag, so the ones a user can cause are turned into one `UsageError` line here:

- Keras 3 raises `ValueError("Requested the deserialization of a `Lambda` layer whose `function` is a Python
  lambda ...")` for a Lambda layer under safe mode (from `Lambda.from_config`, for `.keras` and `.h5` alike) without
  the layer's name; the name is read from the file's model config (`config.json` in the `.keras` zip, the
  `model_config` attribute of an `.h5` file).
- An unregistered custom class surfaces as `TypeError("<class Functional> could not be deserialized ... Could not
  locate class 'Scale' ...")`; a missing or non-zip `.keras` file as `ValueError("File not found: ...")`.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kerasport.contract import ModelContract
from kerasport.errors import UsageError

from .importer import ContractHints, contract_from_keras, contract_from_signature

KERAS_SUFFIXES = (".keras",)
H5_SUFFIXES = (".h5", ".hdf5")
BUILDER = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
SIGNATURE = "serving_default"
UNSAFE_FLAG = "--unsafe"
CUSTOM_OBJECTS_FLAG = "--custom-objects"
PREDICT_BATCH = 64


@dataclass
class LoadedSource:
    """A loaded model: a Keras model, or a SavedModel's `serving_default` signature."""

    kind: str  # "keras", "h5", "builder" or "saved_model"
    location: str
    model: Any = None
    signature: Any = None
    saved_model_dir: Path | None = None
    parameters: int = 0
    details: dict = field(default_factory=dict)
    handle: Any = None  # the loaded SavedModel object: it owns the variables the signature reads

    @property
    def default_name(self) -> str:
        if self.kind == "builder":
            return self.location.rsplit(":", 1)[1]
        return Path(self.location).stem if self.kind != "saved_model" else Path(self.location).name

    def record(self) -> dict:
        """What the manifest records as `model.source`."""
        return {"kind": self.kind, "location": self.location, **self.details}

    def contract(self, hints: ContractHints, data_ranges: dict, sample_inputs: dict[str, np.ndarray] | None
                 ) -> ModelContract:
        """The contract; for a SavedModel, `sample_inputs` are run through the signature to tell probabilities."""
        if self.model is not None:
            return contract_from_keras(self.model, hints, data_ranges)
        inputs = self.signature.structured_input_signature[1]
        outputs = self.signature.structured_outputs
        ordered = {name: outputs[name] for name in sorted(outputs, key=_natural_key)}
        predictions = self.predict(sample_inputs) if sample_inputs else None
        return contract_from_signature(inputs, ordered, hints, data_ranges, predictions)

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the SavedModel signature on named inputs, in batches."""
        import tensorflow as tf

        specs = self.signature.structured_input_signature[1]
        total = len(next(iter(inputs.values())))
        chunks: dict[str, list] = {}
        for start in range(0, total, PREDICT_BATCH):
            feed = {name: tf.constant(np.asarray(inputs[name][start:start + PREDICT_BATCH]), dtype=spec.dtype)
                    for name, spec in specs.items()}
            for name, value in self.signature(**feed).items():
                chunks.setdefault(name, []).append(value.numpy())
        return {name: np.concatenate(parts) for name, parts in chunks.items()}


def _natural_key(name: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def load_source(source: str, *, unsafe: bool = False, custom_objects: str | None = None) -> LoadedSource:
    """Load SOURCE.

    Args:
        source: a `.keras`/`.h5` file, a SavedModel directory, or `package.module:function`.
        unsafe: load with Keras `safe_mode=False` (Lambda layers holding Python code).
        custom_objects: a module imported first, so that its `register_keras_serializable` classes load.

    Returns:
        The loaded source.

    Raises:
        UsageError: a missing or unloadable source, a refused Lambda layer, an unknown custom class (exit 2).
    """
    if custom_objects:
        import_user_module(custom_objects, CUSTOM_OBJECTS_FLAG)
    path = Path(source)
    if path.is_dir():
        return _load_saved_model(path)
    if path.is_file():
        if path.suffix.lower() not in KERAS_SUFFIXES + H5_SUFFIXES:
            raise UsageError(f"SOURCE {source}: unknown file type {path.suffix!r}; expected a .keras or .h5 file, "
                             f"a SavedModel directory or package.module:function")
        return _load_keras_file(path, unsafe=unsafe)
    if BUILDER.match(source):
        return _call_builder(source)
    raise UsageError(f"SOURCE {source}: no such file or directory; expected a .keras or .h5 file, a SavedModel "
                     f"directory or package.module:function")


def import_user_module(name: str, option: str, given: str | None = None):
    """Import a user's module; the working directory is searched too, as `python -m` would.

    Raises:
        UsageError: the module cannot be imported (naming the option, what was given and the error).
    """
    where = f"{option} {given or name}"
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    try:
        return importlib.import_module(name)
    except ImportError as error:
        raise UsageError(f"{where}: cannot import module {name} ({error}); expected an importable module") from None
    except Exception as error:  # the user's module raised while importing: their bug, our one line
        raise UsageError(f"{where}: importing {name} raised {type(error).__name__}: {_first_line(error)}") from None


def _first_line(error: BaseException, limit: int = 300) -> str:
    text = str(error).strip().splitlines()
    line = text[0] if text else type(error).__name__
    return line if len(line) <= limit else line[:limit] + "…"


def _load_keras_file(path: Path, *, unsafe: bool) -> LoadedSource:
    import h5py
    import keras

    kind = "keras" if path.suffix.lower() in KERAS_SUFFIXES else "h5"
    readable = zipfile.is_zipfile(path) if kind == "keras" else h5py.is_hdf5(path)
    if not readable:
        expected = "a zip archive written by model.save()" if kind == "keras" else "an HDF5 file"
        raise UsageError(f"SOURCE {path}: not {expected}; expected a Keras 3 .keras or legacy .h5 file")
    try:
        model = keras.saving.load_model(path, compile=False, safe_mode=not unsafe)
    except Exception as error:  # Keras raises ValueError/TypeError/OSError for bad files: map to one line
        raise _load_error(path, error) from None
    _require_built(model, f"SOURCE {path}")
    details = {"unsafe": True} if unsafe else {}
    return LoadedSource(kind=kind, location=str(path), model=model, parameters=int(model.count_params()),
                        details=details)


def _load_error(path: Path, error: Exception) -> UsageError:
    message = str(error)
    if "`Lambda` layer" in message and "safe_mode" in message:
        names = lambda_layer_names(path)
        layers = ", ".join(repr(name) for name in names) if names else "a Lambda layer"
        noun = "layer" if len(names) == 1 else "layers"
        return UsageError(f"SOURCE {path}: {noun} {layers} (Lambda with Python code) cannot be loaded in safe mode; "
                          f"pass {UNSAFE_FLAG} to allow it if you trust this file")
    missing = re.search(r"Could not locate (class|function) '([^']+)'", message)
    if missing:
        return UsageError(f"SOURCE {path}: unknown custom {missing.group(1)} {missing.group(2)!r}; pass "
                          f"{CUSTOM_OBJECTS_FLAG} package.module (a module that registers it with "
                          f"keras.saving.register_keras_serializable)")
    return UsageError(f"SOURCE {path}: cannot load it as a Keras model ({type(error).__name__}: "
                      f"{_first_line(error)}); expected a Keras 3 .keras or legacy .h5 file")


def lambda_layer_names(path: Path) -> list[str]:
    """Names of the Lambda layers in a `.keras` or `.h5` file's model config (those holding Python code first)."""
    config = _model_config(path)
    found: list[tuple[bool, str]] = []

    def visit(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("class_name") == "Lambda" and isinstance(node.get("config"), dict):
                layer = node["config"]
                function = layer.get("function")
                python_code = layer.get("function_type") == "lambda" or (
                    isinstance(function, dict) and function.get("class_name") == "__lambda__")
                found.append((python_code, str(layer.get("name", "?"))))
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    visit(config)
    with_code = [name for python_code, name in found if python_code]
    return with_code or [name for _, name in found]


def _model_config(path: Path) -> Any:
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                return json.loads(archive.read("config.json"))
        import h5py

        with h5py.File(path, "r") as handle:
            raw = handle.attrs.get("model_config")
            return json.loads(raw.decode() if isinstance(raw, bytes) else raw) if raw is not None else {}
    except (OSError, KeyError, ValueError):
        return {}


def _require_built(model: Any, where: str) -> None:
    try:
        inputs, outputs = model.inputs, model.outputs
    except (AttributeError, ValueError) as error:
        raise UsageError(f"{where}: the model has no defined inputs ({_first_line(error)}); expected a built "
                         f"Functional or Sequential Keras model") from None
    if not inputs or not outputs:
        raise UsageError(f"{where}: the model has no defined inputs or outputs; expected a built Functional or "
                         f"Sequential Keras model")


def _call_builder(source: str) -> LoadedSource:
    import keras

    module_name, function_name = source.rsplit(":", 1)
    module = import_user_module(module_name, "SOURCE", source)
    builder = getattr(module, function_name, None)
    if not callable(builder):
        raise UsageError(f"SOURCE {source}: module {module_name} has no function {function_name!r}; expected "
                         f"package.module:function returning a built Keras model")
    try:
        model = builder()
    except Exception as error:  # the user's builder failed: one line, exit 2
        raise UsageError(f"SOURCE {source}: calling {function_name}() raised {type(error).__name__}: "
                         f"{_first_line(error)}") from None
    if not isinstance(model, keras.Model):
        raise UsageError(f"SOURCE {source}: {function_name}() returned {type(model).__name__}; expected a built "
                         f"keras.Model")
    _require_built(model, f"SOURCE {source}")
    return LoadedSource(kind="builder", location=source, model=model, parameters=int(model.count_params()))


def _load_saved_model(path: Path) -> LoadedSource:
    import tensorflow as tf

    if not tf.saved_model.contains_saved_model(str(path)):
        raise UsageError(f"SOURCE {path}: a directory without saved_model.pb; expected a TF SavedModel directory "
                         f"(e.g. written by model.export())")
    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as error:  # TF raises many types for a broken SavedModel
        raise UsageError(f"SOURCE {path}: cannot load the SavedModel ({type(error).__name__}: "
                         f"{_first_line(error)})") from None
    signatures = dict(loaded.signatures)
    if SIGNATURE not in signatures:
        raise UsageError(f"SOURCE {path}: the SavedModel has signatures {sorted(signatures)}; expected "
                         f"{SIGNATURE!r}")
    signature = signatures[SIGNATURE]
    outputs = signature.structured_outputs
    if not signature.structured_input_signature[1] or not isinstance(outputs, dict) or not outputs:
        raise UsageError(f"SOURCE {path}: signature {SIGNATURE!r} does not take and return named tensors; "
                         f"expected keyword inputs and a dict of outputs")
    variables = getattr(loaded, "variables", None) or []
    parameters = int(sum(np.prod(variable.shape) for variable in variables))
    return LoadedSource(kind="saved_model", location=str(path), signature=signature, saved_model_dir=path,
                        parameters=parameters, details={"signature": SIGNATURE}, handle=loaded)
