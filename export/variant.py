"""What a variant is and what building one gets: the types the registry (`variants.py`) and the build functions
(`builders.py`) share, so neither needs the other to describe itself. No TensorFlow import.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from kerasport.contract import ModelContract
from kerasport.samples import Samples

# Formats a TensorFlow-free runtime (kerasport.runtimes) can load and smoke-run.
RUNNABLE_FORMATS = ("onnx", "tflite")


@dataclass
class Built:
    """A variant that was built: where its file is and what was recorded about it."""

    path: Path
    details: dict


@dataclass
class BuildContext:
    """What every build function may read."""

    saved_model: Path
    contract: ModelContract
    calibration: Samples
    opset: int
    int8_io: bool = False
    allow_select_tf_ops: bool = False
    built: dict[str, Built] = field(default_factory=dict)
    scratch: Path | None = None

    def prerequisite(self, name: str) -> Built:
        """The built prerequisite `name` (the registry builds every `requires` entry first)."""
        return self.built[name]


@dataclass(frozen=True)
class Companion:
    """A second file a variant writes beside its own, recorded as its own artifact (the TFLM C header)."""

    artifact: str
    filename: str
    format: str


@dataclass(frozen=True)
class Variant:
    """One deployable artifact the export stage can build.

    Attributes:
        build: `build(context, variant, path) -> details`; writes `path` and returns what the manifest records
            about it. Raises ConversionError (one line naming the op when known) when the model cannot be built.
        requires: variants whose files `build` reads (built first, in scratch space when not requested).
    """

    name: str
    filename: str
    format: str
    precision: str
    runtime: str
    build: Callable[[BuildContext, Variant, Path], dict]
    requires: tuple[str, ...] = ()
    companion: Companion | None = None

    @property
    def runnable(self) -> bool:
        """Whether a kerasport runtime runs this artifact (smoke-run after building)."""
        return self.format in RUNNABLE_FORMATS
