"""`import_model`: a model trained elsewhere becomes a bundle that export, parity and serve read.

Everything a user can get wrong (the source, the options, the data) is checked before anything is written, so a
failed import leaves an existing bundle in `--run` as it was. `kerasport import` is a thin shell over this.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from kerasport.contract import ModelContract
from kerasport.errors import UsageError
from kerasport.manifest import Manifest
from kerasport.samples import Samples

from .data import SYNTHETIC_EXAMPLES, RawData, infer_ranges, read_data, synthetic_inputs, to_samples
from .importer import INPUT_KINDS, TASKS, ContractHints, write_imported_bundle
from .sources import PREDICT_BATCH, LoadedSource, load_source


@dataclass
class ImportOptions:
    """What `kerasport import` takes; the values are as typed on the command line."""

    source: str
    run: str = "build"
    eval_data: str | None = None
    calibration_data: str | None = None
    labels: str | None = None
    task: str = "auto"
    name: str | None = None
    version: str = "1"
    custom_objects: str | None = None
    input_range: str | None = None
    input_kind: str = "auto"
    eval_samples: int = 1000
    calibration_samples: int = 200
    unsafe: bool = False
    seed: int = 42

    def hints(self) -> ContractHints:
        """The validated contract hints.

        Raises:
            UsageError: an unknown task or input kind, a bad range or labels, a non-positive sample count.
        """
        if self.task not in TASKS:
            raise UsageError(f"--task {self.task!r}; expected one of {', '.join(TASKS)}")
        if self.input_kind not in INPUT_KINDS:
            raise UsageError(f"--input-kind {self.input_kind!r}; expected one of {', '.join(INPUT_KINDS)}")
        for flag, count in (("--eval-samples", self.eval_samples), ("--calibration-samples", self.calibration_samples)):
            if count < 1:
                raise UsageError(f"{flag} {count}; expected at least 1")
        return ContractHints(task=self.task, input_kind=self.input_kind, input_range=parse_range(self.input_range),
                             labels=parse_labels(self.labels))


def parse_range(text: str | None) -> tuple[float, float] | None:
    """`lo,hi` -> (lo, hi) with finite lo < hi.

    Raises:
        UsageError: anything else.
    """
    if text is None:
        return None
    try:
        low, high = (float(part) for part in text.split(","))
    except ValueError:
        raise UsageError(f"--input-range {text!r}; expected lo,hi such as 0,255") from None
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise UsageError(f"--input-range {text!r}; expected finite lo,hi with lo < hi")
    return low, high


def parse_labels(text: str | None) -> tuple[str, ...]:
    """`a,b,c`, or a file with one label per line.

    Raises:
        UsageError: a missing file, or an empty label.
    """
    if not text:
        return ()
    path = Path(text)
    if path.is_file():
        labels = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        where = f"--labels {text}"
    elif "," in text:
        labels = [label.strip() for label in text.split(",")]
        where = f"--labels {text!r}"
    else:
        raise UsageError(f"--labels {text}: no such file; expected FILE (one label per line) or a,b,c")
    if not labels or not all(labels):
        raise UsageError(f"{where}: an empty label; expected non-empty names")
    if len(set(labels)) != len(labels):
        raise UsageError(f"{where}: repeated labels; expected each class once")
    return tuple(labels)


@dataclass
class ImportResult:
    """What an import wrote."""

    run_dir: Path
    manifest: Manifest
    eval_examples: int
    calibration_examples: int
    labelled: bool
    synthetic: bool
    seconds: float

    @property
    def contract(self) -> ModelContract:
        return self.manifest.contract

    def summary(self) -> dict:
        """A JSON-ready summary (what `--json` prints)."""
        return {"run": str(self.run_dir), "name": self.manifest.name, "version": self.manifest.version,
                "task": self.manifest.task, "source": self.manifest.source,
                "parameters": self.manifest.model.get("parameters"), **self.contract.to_dict(),
                "artifacts": self.manifest.artifact_names(), "eval_examples": self.eval_examples,
                "calibration_examples": self.calibration_examples, "labelled_eval_data": self.labelled,
                "synthetic_eval_data": self.synthetic, "seconds": round(self.seconds, 3)}


def import_model(options: ImportOptions) -> ImportResult:
    """Load SOURCE, infer its contract, read or generate eval/calibration data, write `<run>/model/` + manifest.

    Args:
        options: the source, the data specs and the contract hints.

    Returns:
        The written bundle's manifest and counts.

    Raises:
        UsageError: a bad option, source or data set (exit 2); nothing is written then.
    """
    started = time.perf_counter()
    hints = options.hints()
    run_dir = Path(options.run)
    if run_dir.exists() and not run_dir.is_dir():
        raise UsageError(f"--run {run_dir}: a file; expected a run directory")
    source = load_source(options.source, unsafe=options.unsafe, custom_objects=options.custom_objects)
    draft = source.contract(replace(hints, labels=()), {}, None)
    eval_raw = _read(options.eval_data, draft, "--eval-data", options.eval_samples, options.seed)
    calibration_raw = _read(options.calibration_data, draft, "--calibration-data", options.calibration_samples,
                            options.seed)
    given = [raw for raw in (eval_raw, calibration_raw) if raw is not None]
    ranges = {} if hints.input_range else infer_ranges(given, draft)
    synthetic = None
    if eval_raw is None:
        ranged = source.contract(replace(hints, labels=()), ranges, None)
        synthetic = synthetic_inputs(ranged, min(SYNTHETIC_EXAMPLES, options.eval_samples), options.seed)
    contract = _final_contract(source, hints, ranges, eval_raw, synthetic)
    eval_samples = to_samples(eval_raw, contract, with_targets=True) if eval_raw is not None else synthetic
    calibration = (to_samples(calibration_raw, contract, with_targets=False) if calibration_raw is not None
                   else Samples(eval_samples.inputs).take(options.calibration_samples))
    manifest = _write(run_dir, source, contract, eval_samples, calibration, options, synthetic is not None)
    return ImportResult(run_dir=run_dir, manifest=manifest, eval_examples=len(eval_samples),
                        calibration_examples=len(calibration), labelled=eval_samples.labelled,
                        synthetic=synthetic is not None, seconds=time.perf_counter() - started)


def _read(spec: str | None, contract: ModelContract, option: str, limit: int, seed: int) -> RawData | None:
    return None if not spec else read_data(spec, contract, option=option, limit=limit, seed=seed)


def _final_contract(source: LoadedSource, hints: ContractHints, ranges: dict, eval_raw: RawData | None,
                    synthetic: Samples | None) -> ModelContract:
    """The contract with labels (given, or the class folders' names) and the SavedModel's output kinds."""
    folder_labels = eval_raw is not None and bool(eval_raw.classes) and not hints.labels
    if folder_labels:
        hints = replace(hints, labels=eval_raw.classes)
    inputs = eval_raw.inputs if eval_raw is not None else synthetic.inputs
    sample = {name: array[:PREDICT_BATCH] for name, array in inputs.items()}
    try:
        return source.contract(hints, ranges, sample)
    except UsageError:
        if not folder_labels:
            raise
        raise UsageError(f"{eval_raw.origin}: {len(eval_raw.classes)} class folders {list(eval_raw.classes)}, but "
                         f"no classification output has {len(eval_raw.classes)} classes; pass --labels naming every "
                         f"class") from None


def _write(run_dir: Path, source: LoadedSource, contract: ModelContract, eval_samples: Samples,
           calibration: Samples, options: ImportOptions, synthetic: bool) -> Manifest:
    record = source.record()
    if options.custom_objects:
        record["custom_objects"] = options.custom_objects
    details = {"eval_sample": {"synthetic": synthetic, "labelled": eval_samples.labelled},
               "calibration_sample": {"synthetic": synthetic and options.calibration_data is None}}
    stage_record = {"options": asdict(options), "seed": options.seed}
    return write_imported_bundle(
        run_dir, source.model, contract, eval_samples=eval_samples, calibration=calibration,
        name=options.name or source.default_name, version=options.version, source=record,
        stage_record=stage_record, artifact_details=details, saved_model_source=source.saved_model_dir,
        parameters=source.parameters)
