"""`kerasport predict`: TensorFlow-free batch inference over image files and folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kerasport.errors import UsageError
from kerasport.images import decode_image_bytes

from .model import ServedModel

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
BATCH = 64


def collect_images(paths: list[str]) -> list[Path]:
    files: list[Path] = []
    for text in paths:
        path = Path(text)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise UsageError(f"{path}: no {'/'.join(IMAGE_SUFFIXES)} files in this folder")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise UsageError(f"{path}: no such file or folder; expected image files or folders of images")
    return files


def predict_files(model: ServedModel, files: list[Path], top_k: int = 3) -> list[dict]:
    rows: list[dict] = []
    for start in range(0, len(files), BATCH):
        chunk = files[start:start + BATCH]
        images = np.stack([decode_image_bytes(f.read_bytes(), model.preprocessing, origin=str(f))
                           for f in chunk])[..., None]
        outputs = model.predict(images)
        for file, row in zip(chunk, outputs, strict=True):
            if model.task == "classification":
                order = np.argsort(row)[::-1][:top_k]
                labels = model.labels
                rows.append({"file": str(file), "label": labels[order[0]] if labels else str(order[0]),
                             "probability": float(row[order[0]]),
                             "top_k": [{"label": labels[i] if labels else str(i), "probability": float(row[i])}
                                       for i in order]})
            else:
                rows.append({"file": str(file), "values": [float(v) for v in row]})
    return rows
