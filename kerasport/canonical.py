"""Byte-reproducible model files: rewrite what Keras and TensorFlow write differently on every save.

Two saves of the same weights differ only in run-dependent details; each normaliser here replaces one of them with
a value that depends on the content alone:
- `.keras` zip: the weights entry carries the wall-clock date, `metadata.json` the save time, and `config.json`
  numbers shared objects (the dtype policy) by their memory address (`id()`).
- SavedModel: function names carry a process-global trace counter (`__inference_serve_588`), and `fingerprint.pb`
  has a random `uuid` and checksums of the rest.
The variable order of a SavedModel is fixed before it is written (`export_saved_model` in `bundle.py`).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
import zipfile
from pathlib import Path

# Every entry of a normalised .keras archive gets this date (the zip epoch, as Keras already uses for the JSON
# entries) and these permissions (Keras's own: -rw-------).
ZIP_DATE = (1980, 1, 1, 0, 0, 0)
ZIP_PERMISSIONS = 0o600 << 16
KERAS_DATE_FORMAT = "%Y-%m-%d@%H:%M:%S"
_SHARED_ID = re.compile(r'("shared_object_id":\s*)(\d+)')
_COUNTED_FUNCTION = re.compile(r"^(.*_)(\d+)$")


def fixed_save_date() -> str:
    """The `date_saved` a normalised .keras records: `SOURCE_DATE_EPOCH` (reproducible-builds) or the zip epoch."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    when = (datetime.datetime.fromtimestamp(int(epoch), datetime.UTC) if epoch.isdigit()
            else datetime.datetime(*ZIP_DATE))
    return when.strftime(KERAS_DATE_FORMAT)


def normalize_keras_archive(source: Path, destination: Path) -> None:
    """Copy a `.keras` zip with fixed entry dates and permissions, a fixed `date_saved` and renumbered shared ids.

    Entries keep Keras's order and compression; the weights file is copied byte for byte.
    """
    with zipfile.ZipFile(source) as archive, zipfile.ZipFile(destination, "w") as out:
        for entry in archive.infolist():
            data = archive.read(entry)
            if entry.filename == "metadata.json":
                data = _fixed_metadata(data)
            elif entry.filename == "config.json":
                data = _renumber_shared_objects(data)
            info = zipfile.ZipInfo(entry.filename, date_time=ZIP_DATE)
            info.compress_type = entry.compress_type
            info.external_attr = ZIP_PERMISSIONS
            info.create_system = 3  # unix, whatever the platform
            out.writestr(info, data)


def _fixed_metadata(data: bytes) -> bytes:
    metadata = json.loads(data)
    if "date_saved" in metadata:
        metadata["date_saved"] = fixed_save_date()
    return json.dumps(metadata).encode()


def _renumber_shared_objects(data: bytes) -> bytes:
    """`shared_object_id` values are `id()`s; number them 1, 2, ... in order of first appearance instead."""
    numbers: dict[str, int] = {}

    def renumber(match: re.Match) -> str:
        return f"{match.group(1)}{numbers.setdefault(match.group(2), len(numbers) + 1)}"

    return _SHARED_ID.sub(renumber, data.decode()).encode()


def canonicalize_saved_model(path: Path) -> None:
    """Rename the SavedModel's functions by trace order, sort its function library, rewrite its fingerprint.

    `__inference_<lambda>_554` becomes `__inference_<lambda>_1` when it is the first function traced: the numbers
    come from TensorFlow's process-global counter, so they depend on what ran before the export (as do the numeric
    names of captured inputs, renumbered the same way). The fingerprint's
    checksums are recomputed by TensorFlow; its `uuid` (random) becomes a hash of the canonical files.
    """
    from tensorflow.core.protobuf import saved_model_pb2

    model_file = path / "saved_model.pb"
    saved_model = saved_model_pb2.SavedModel()
    saved_model.ParseFromString(model_file.read_bytes())
    for meta_graph in saved_model.meta_graphs:
        library = meta_graph.graph_def.library
        renames = _trace_order_names([function.signature.name for function in library.function])
        _rename_strings(meta_graph, renames)
        _renumber_capture_names(meta_graph)
        functions = sorted(library.function, key=lambda function: function.signature.name)
        copies = [type(function)() for function in functions]
        for copy, function in zip(copies, functions, strict=True):
            copy.CopyFrom(function)
        del library.function[:]
        library.function.extend(copies)
    model_file.write_bytes(saved_model.SerializeToString(deterministic=True))
    if (path / "fingerprint.pb").exists():
        _rewrite_fingerprint(path)


def _trace_order_names(names: list[str]) -> dict[str, str]:
    counted = sorted((int(match.group(2)), name, match.group(1))
                     for name in names if (match := _COUNTED_FUNCTION.match(name)))
    return {name: f"{prefix}{rank}" for rank, (_, name, prefix) in enumerate(counted, start=1)}


def _rename_strings(message, renames: dict[str, str]) -> None:
    """Replace every string field and string map key of `message` (recursively) found in `renames`."""
    from google.protobuf.descriptor import FieldDescriptor

    for field, value in message.ListFields():
        if field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type.GetOptions().map_entry:
            _rename_map(field, value, renames)
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            for item in (value if _is_repeated(field) else [value]):
                _rename_strings(item, renames)
        elif field.type == FieldDescriptor.TYPE_STRING:
            if _is_repeated(field):
                value[:] = [renames.get(text, text) for text in value]
            elif value in renames:
                setattr(message, field.name, renames[value])


def _rename_map(field, mapping, renames: dict[str, str]) -> None:
    from google.protobuf.descriptor import FieldDescriptor

    key_field = field.message_type.fields_by_name["key"]
    holds_messages = field.message_type.fields_by_name["value"].type == FieldDescriptor.TYPE_MESSAGE
    if key_field.type == FieldDescriptor.TYPE_STRING and any(key in renames for key in mapping):
        entries = []
        for key, value in mapping.items():
            if holds_messages:
                copy = type(value)()
                copy.CopyFrom(value)
                value = copy
            entries.append((renames.get(key, key), value))
        mapping.clear()
        for key, value in entries:
            if holds_messages:
                mapping[key].CopyFrom(value)
            else:
                mapping[key] = value
    if holds_messages:
        for value in mapping.values():
            _rename_strings(value, renames)


def _renumber_capture_names(meta_graph) -> None:
    """Captured inputs are named after a process-global tensor counter (`_user_specified_name: "558"`); rank them."""
    numbered = [value for key, value in _map_entries(meta_graph)
                if key == "_user_specified_name" and value.s.isdigit()]
    ranks = {number: rank for rank, number in enumerate(sorted({int(value.s) for value in numbered}), start=1)}
    for value in numbered:
        value.s = str(ranks[int(value.s)]).encode()


def _map_entries(message):
    """Every (key, message value) of every message-valued map in `message`, recursively."""
    from google.protobuf.descriptor import FieldDescriptor

    for field, value in message.ListFields():
        if field.type != FieldDescriptor.TYPE_MESSAGE:
            continue
        if field.message_type.GetOptions().map_entry:
            if field.message_type.fields_by_name["value"].type == FieldDescriptor.TYPE_MESSAGE:
                for key, item in value.items():
                    yield key, item
                    yield from _map_entries(item)
        else:
            for item in (value if _is_repeated(field) else [value]):
                yield from _map_entries(item)


def _is_repeated(field) -> bool:
    # protobuf >= 5 has `is_repeated`; older versions only `label`.
    repeated = getattr(field, "is_repeated", None)
    return bool(repeated) if repeated is not None else field.label == field.LABEL_REPEATED


def _rewrite_fingerprint(path: Path) -> None:
    from tensorflow.core.protobuf import fingerprint_pb2
    from tensorflow.python.saved_model.pywrap_saved_model import fingerprinting

    fingerprint = fingerprint_pb2.FingerprintDef()
    fingerprint.ParseFromString(fingerprinting.CreateFingerprintDef(str(path)))
    fingerprint.ClearField("uuid")
    content = hashlib.sha256(fingerprint.SerializeToString(deterministic=True)).digest()
    fingerprint.uuid = str(int.from_bytes(content[:16]))  # a 128-bit number, as TensorFlow's random one
    (path / "fingerprint.pb").write_bytes(fingerprint.SerializeToString(deterministic=True))
