"""`kerasport parity --baseline OTHER_RUN`: drift between this release candidate and a previous release.

Both bundles run on the same pinned inputs: the baseline's eval slice, whose hash is checked against the baseline's
manifest (with every baseline artifact compared). The contracts must be compatible (same input names, dtypes, item
shapes and kinds; same output names, shapes, kinds and labels), else exit 2 naming the first difference. Compared:
the Keras models (when both bundles have one) and every ONNX/TFLite artifact built in both. Per output:

- classification: top-1 flips between the releases (with their indices; a contact sheet of the flipped images for
  an image model), and with targets the accuracy of both and the paired delta with its 95 % CI (compare.py);
- regression, with targets: the MAE of both and the paired delta with its 95 % CI;
- every output: mean and standard deviation of its values in both releases and the two-sample Kolmogorov-Smirnov
  statistic (with its asymptotic p-value) between them.

Policy (`--max-accuracy-drop`, `--max-flips`): one check per compared model and classification output
(`drift_flips`, `drift_accuracy_drop`), each a JUnit testcase; a breach fails the run (exit 1) naming it. Drift never
changes the parity verdicts of the artifacts (the manifest's serving gate is about Keras vs its own artifacts).
"""

from __future__ import annotations

import io
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kerasport.compare import accuracy_statistics, agreement_statistics, class_scores, regression_statistics
from kerasport.contract import ModelContract
from kerasport.errors import UsageError
from kerasport.manifest import Manifest, load_manifest, verify_bundle
from kerasport.runtimes import RuntimeSettings, open_runtime
from kerasport.samples import load_samples
from kerasport.verdict import Verdict

from .results import Check, DriftPolicyRecord, DriftSection, ParityReport, ReleaseRef
from .runners import RUNTIME_FORMATS, KerasRunner, SavedModelRunner, run_batched

DRIFT_CLASS = "drift"
KERAS = "keras"
CONTACT_SHEET_LIMIT = 48
SHEET_PREFIX = "drift_flips_"


@dataclass(frozen=True)
class DriftPolicy:
    max_accuracy_drop: float | None = None  # absolute, 0.01 = 1 percentage point
    max_flips: int | None = None

    def check(self) -> None:
        if self.max_accuracy_drop is not None and not 0 <= self.max_accuracy_drop <= 1:
            raise UsageError(f"--max-accuracy-drop {self.max_accuracy_drop:g}; expected 0..1 (0.01 = 1 pp)")
        if self.max_flips is not None and self.max_flips < 0:
            raise UsageError(f"--max-flips {self.max_flips}; expected a count >= 0")


@dataclass
class Baseline:
    """A previous release, checked: its manifest, its eval slice (hash-verified) and what both bundles share."""

    run_dir: Path
    manifest: Manifest
    inputs: dict[str, np.ndarray]
    targets: dict[str, np.ndarray]
    sample: dict
    compared: list[str]
    policy: DriftPolicy


def contract_differences(baseline: ModelContract, current: ModelContract) -> list[str]:
    """What makes the two contracts incompatible for a drift comparison (empty when compatible)."""
    differences = []
    if baseline.input_names != current.input_names:
        differences.append(f"inputs {current.input_names} vs baseline {baseline.input_names}")
    if baseline.output_names != current.output_names:
        differences.append(f"outputs {current.output_names} vs baseline {baseline.output_names}")
    if differences:
        return differences
    for old, new in zip(baseline.input_specs(), current.input_specs(), strict=True):
        for field, before, after in (("dtype", old.dtype, new.dtype), ("shape", list(old.item_shape),
                                                                        list(new.item_shape)),
                                     ("kind", old.kind, new.kind)):
            if before != after:
                differences.append(f"input {new.name!r} {field} {after} vs baseline {before}")
    for old, new in zip(baseline.output_specs(), current.output_specs(), strict=True):
        for field, before, after in (("shape", list(old.shape[1:]), list(new.shape[1:])), ("kind", old.kind, new.kind),
                                     ("labels", list(old.labels), list(new.labels))):
            if before != after:
                differences.append(f"output {new.name!r} {field} {after} vs baseline {before}")
    return differences


def open_baseline(run_dir: Path, manifest: Manifest, policy: DriftPolicy) -> Baseline:
    """Check the baseline before anything runs.

    Raises:
        UsageError: no bundle there, incompatible contracts, no eval slice in the baseline, a bad policy (exit 2).
        CheckFailed: a baseline artifact (or its eval slice) was altered since its manifest recorded it (exit 1).
    """
    policy.check()
    old = load_manifest(run_dir)
    differences = contract_differences(old.contract, manifest.contract)
    if differences:
        raise UsageError(f"--baseline {run_dir}: the contracts differ ({'; '.join(differences)}); expected a "
                         f"previous release of the same model interface")
    if not old.has("eval_sample"):
        raise UsageError(f"--baseline {run_dir}: the baseline has no eval_sample; expected a bundle from "
                         f"`kerasport train` or `kerasport import` with held-out data")
    compared = [KERAS] if old.has(KERAS) and manifest.has(KERAS) else []
    compared += [artifact.name for artifact in manifest.artifacts()
                 if artifact.format in RUNTIME_FORMATS and artifact.status == "ok" and old.has(artifact.name)
                 and old.artifact(artifact.name).status == "ok"]
    verify_bundle(run_dir, ["eval_sample", *compared])
    artifact = old.artifact("eval_sample")
    samples = load_samples(artifact.resolve(run_dir), old.contract)
    inputs = {spec.name: np.asarray(samples.inputs[spec.name], dtype=spec.dtype) for spec in old.contract.inputs}
    sample = {"path": artifact.path, "sha256": artifact.sha256, "examples": len(samples),
              "verified": "sha256 matches the baseline manifest"}
    return Baseline(run_dir, old, inputs, dict(samples.targets), sample, compared, policy)


def _runner(run_dir: Path, manifest: Manifest, name: str):
    artifact = manifest.artifact(name)
    path = artifact.resolve(run_dir)
    if name == KERAS:
        return KerasRunner(path, manifest.contract, manifest.source)
    if artifact.format in RUNTIME_FORMATS:
        return open_runtime(path, artifact.format, RuntimeSettings())
    return SavedModelRunner(path, manifest.contract)


def compare_releases(baseline: Baseline, run_dir: Path, manifest: Manifest, current_keras=None, *,
                     console=None) -> tuple[DriftSection, dict[str, bytes]]:
    """Run both releases on the baseline's eval slice and compare them.

    Args:
        baseline: the checked baseline (`open_baseline`).
        run_dir: this release candidate's bundle.
        manifest: its manifest.
        current_keras: this bundle's already-loaded Keras runner (reused), or None.
        console: a rich console for one line per compared model, or None.

    Returns:
        (section, files): report.json's `drift` section, and the contact sheets {file name: PNG bytes}.
    """
    started = time.perf_counter()
    contract = manifest.contract
    models, checks, failures, files = {}, [], [], {}
    for name in baseline.compared:
        old = run_batched(_runner(baseline.run_dir, baseline.manifest, name), baseline.inputs)
        runner = current_keras if name == KERAS and isinstance(current_keras, KerasRunner) else _runner(
            run_dir, manifest, name)
        new = run_batched(runner, baseline.inputs)
        models[name] = {output: compare_output(contract.output(output), old[output], new[output],
                                               baseline.targets.get(output)) for output in contract.output_names}
        for output, stats in models[name].items():
            for check in policy_checks(name, output, stats, baseline.policy):
                checks.append(check)
                if not check.passed:
                    failures.append(f"drift {name}: {check.id} — {check.message}")
        sheet = contact_sheet(contract, baseline.inputs, models[name], name)
        if sheet is not None:
            files[f"{SHEET_PREFIX}{name}.png"] = sheet
            models[name]["contact_sheet"] = f"{SHEET_PREFIX}{name}.png"
        if console is not None:
            console.print(drift_line(name, models[name]))
    section = DriftSection(
        baseline=ReleaseRef(str(baseline.run_dir), baseline.manifest.name, baseline.manifest.version),
        current=ReleaseRef(str(run_dir), manifest.name, manifest.version),
        inputs=baseline.sample, policy=DriftPolicyRecord(baseline.policy.max_accuracy_drop, baseline.policy.max_flips),
        models=models, checks=checks, failures=failures, passed=not failures,
        seconds=round(time.perf_counter() - started, 2))
    return section, files


def compare_output(spec, old: np.ndarray, new: np.ndarray, targets: np.ndarray | None) -> dict:
    """Flips, accuracy / MAE deltas (with targets) and the distribution shift of one output between releases."""
    stats = {"kind": spec.kind, "examples": len(old), "shift": distribution_shift(old, new)}
    if spec.is_classification:
        old_scores, new_scores = class_scores(old, spec.kind), class_scores(new, spec.kind)
        agreement = agreement_statistics(old_scores, new_scores)
        stats.update(flips=agreement["label_flips"], flipped_indices=agreement["flipped_indices"],
                     agreement=agreement["top1_agreement"],
                     flipped_pairs=[[int(old_scores[i].argmax()), int(new_scores[i].argmax())]
                                    for i in agreement["flipped_indices"]])
        if targets is not None:
            accuracy = accuracy_statistics(old_scores, new_scores, targets)
            stats.update(baseline_accuracy=accuracy["reference_accuracy"], accuracy=accuracy["accuracy"],
                         accuracy_delta=accuracy["accuracy_delta"], accuracy_delta_ci95=accuracy["accuracy_delta_ci95"])
    elif targets is not None:
        regression = regression_statistics(old, new, targets)
        stats.update(baseline_mae=regression["reference_mae"], mae=regression["mae"],
                     mae_delta=regression["mae_delta"], mae_delta_ci95=regression["mae_delta_ci95"])
    return stats


def distribution_shift(old: np.ndarray, new: np.ndarray) -> dict:
    """Mean / std of the values in both releases, the largest per-column mean shift, and the KS statistic."""
    old64, new64 = np.asarray(old, np.float64), np.asarray(new, np.float64)
    columns_old = old64.reshape(len(old64), -1).mean(axis=0)
    columns_new = new64.reshape(len(new64), -1).mean(axis=0)
    statistic, p_value = ks_two_sample(old64.ravel(), new64.ravel())
    return {"baseline_mean": float(old64.mean()), "baseline_std": float(old64.std()), "mean": float(new64.mean()),
            "std": float(new64.std()), "max_column_mean_shift": float(np.max(np.abs(columns_new - columns_old))),
            "ks_statistic": statistic, "ks_p_value": p_value}


def ks_two_sample(first: np.ndarray, second: np.ndarray) -> tuple[float, float]:
    """The two-sample Kolmogorov-Smirnov statistic D and its asymptotic p-value (Stephens' correction)."""
    first, second = np.sort(np.asarray(first, np.float64)), np.sort(np.asarray(second, np.float64))
    n, m = len(first), len(second)
    if not n or not m:
        return 0.0, 1.0
    values = np.concatenate([first, second])
    statistic = float(np.max(np.abs(np.searchsorted(first, values, side="right") / n
                                    - np.searchsorted(second, values, side="right") / m)))
    effective = math.sqrt(n * m / (n + m))
    return statistic, kolmogorov_survival((effective + 0.12 + 0.11 / effective) * statistic)


def kolmogorov_survival(x: float) -> float:
    """P(K > x) for the Kolmogorov distribution: 2 Σ (-1)^(j-1) exp(-2 j² x²)."""
    if x < 0.2:
        return 1.0
    total = sum((-1) ** (j - 1) * math.exp(-2 * j * j * x * x) for j in range(1, 101))
    return float(min(1.0, max(0.0, 2 * total)))


def policy_checks(name: str, output: str, stats: dict, policy: DriftPolicy) -> list[Check]:
    """The drift checks of one compared model and output: flips and (with targets) the accuracy drop."""
    if "flips" not in stats:
        return []
    where = f"{name}/{output}"
    checks = []
    limit = policy.max_flips
    checks.append(_check("drift_flips", where, limit is None or stats["flips"] <= limit,
                         f"{stats['flips']} top-1 flips against the baseline on {stats['examples']} pinned examples "
                         f"(agreement {stats['agreement']:.4f}); "
                         + ("no --max-flips set" if limit is None else f"allowed {limit}")))
    if "accuracy_delta" in stats:
        drop = -stats["accuracy_delta"]
        low, high = stats["accuracy_delta_ci95"]
        limit = policy.max_accuracy_drop
        checks.append(_check("drift_accuracy_drop", where, limit is None or drop <= limit + 1e-12,
                             f"accuracy {stats['accuracy']:.4f} vs baseline {stats['baseline_accuracy']:.4f} "
                             f"(Δ {stats['accuracy_delta'] * 100:+.2f} pp, 95 % CI [{low * 100:+.2f}, "
                             f"{high * 100:+.2f}]); " + ("no --max-accuracy-drop set" if limit is None
                                                         else f"allowed drop {limit * 100:.2f} pp")))
    return checks


def _check(check: str, where: str, passed: bool, message: str) -> Check:
    return Check.of(check, passed, message, where)


def drift_line(name: str, outputs: dict) -> str:
    """One console line per compared model."""
    parts = []
    for output, stats in outputs.items():
        if not isinstance(stats, dict) or "shift" not in stats:
            continue
        text = f"{output}: KS {stats['shift']['ks_statistic']:.3f}"
        if "flips" in stats:
            text += f", {stats['flips']} flips"
        if "accuracy_delta" in stats:
            text += f", accuracy Δ {stats['accuracy_delta'] * 100:+.2f} pp"
        if "mae_delta" in stats:
            text += f", MAE Δ {stats['mae_delta']:+.4g}"
        parts.append(text)
    return f"drift  {name:<15} " + "; ".join(parts)


def contact_sheet(contract: ModelContract, inputs: dict[str, np.ndarray], outputs: dict, name: str) -> bytes | None:
    """A grid of the flipped images (image models), each titled `baseline → current (target)`; None if none."""
    spec = contract.image_input
    flipped = [(output, stats) for output, stats in outputs.items() if isinstance(stats, dict) and stats.get("flips")]
    if spec is None or not flipped:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    output, stats = flipped[0]
    described = contract.output(output)
    indices = stats["flipped_indices"][:CONTACT_SHEET_LIMIT]
    images = np.asarray(inputs[spec.name][indices], dtype=np.float64)
    low, high = spec.value_range or (float(images.min()), float(images.max()))
    images = np.clip((images - low) / max(high - low, 1e-12), 0, 1)
    columns = min(8, len(indices))
    rows = math.ceil(len(indices) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(1.3 * columns, 1.5 * rows + 0.4), squeeze=False)
    for axis in axes.ravel():
        axis.axis("off")
    for axis, index, image, (before, after) in zip(axes.ravel(), indices, images,
                                                   stats["flipped_pairs"][:CONTACT_SHEET_LIMIT], strict=False):
        axis.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray" if image.shape[-1] == 1 else None,
                    vmin=0, vmax=1)
        axis.set_title(f"#{index}\n{described.label(before)}→{described.label(after)}", fontsize=6)
    more = f" (first {CONTACT_SHEET_LIMIT} of {stats['flips']})" if stats["flips"] > CONTACT_SHEET_LIMIT else ""
    figure.suptitle(f"{name}: top-1 flips, baseline → current{more}", fontsize=8)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    plt.close(figure)
    return buffer.getvalue()


def drift_markdown(report: ParityReport) -> list[str]:
    """report.md's drift section."""
    section = report.drift
    if not section:
        return []
    base, sample, policy = section.baseline, section.inputs, section.policy
    lines = [f"## Drift against the baseline `{base.name}` {base.version} ({base.run})", "",
             f"Pinned inputs: the baseline's eval slice `{sample['path']}` ({sample['examples']} examples, "
             f"`{sample['sha256'][:12]}…`, {sample['verified']}). Policy: max accuracy drop "
             f"{_limit(policy.max_accuracy_drop, pp=True)}, max flips {_limit(policy.max_flips)}. "
             f"**{Verdict.of_checks([section.passed]).headline}.**", "",
             "| model | output | flips | accuracy baseline → current (Δ, 95 % CI) | MAE baseline → current | "
             "mean ± std baseline → current | KS (p) |", "|---|---|---|---|---|---|---|"]
    for name, outputs in section.models.items():
        for output, stats in outputs.items():
            if not isinstance(stats, dict):
                continue
            lines.append(f"| {name} | {output} | {_flips(stats)} | {_accuracy(stats)} | {_mae(stats)} | "
                         f"{_shift(stats['shift'])} | {stats['shift']['ks_statistic']:.3f} "
                         f"({stats['shift']['ks_p_value']:.2g}) |")
    lines.append("")
    if section.failures:
        lines += ["Breaches:", ""] + [f"- {failure}" for failure in section.failures] + [""]
    for name, outputs in section.models.items():
        if outputs.get("contact_sheet"):
            lines += [f"![{name}: flipped examples]({outputs['contact_sheet']})", ""]
    return lines


def _limit(value, pp: bool = False) -> str:
    if value is None:
        return "not set"
    return f"{value * 100:.2f} pp" if pp else str(value)


def _flips(stats: dict) -> str:
    if "flips" not in stats:
        return "–"
    shown = ", ".join(map(str, stats["flipped_indices"][:10]))
    more = ", …" if len(stats["flipped_indices"]) > 10 else ""
    return f"{stats['flips']}" + (f" (#{shown}{more})" if shown else "")


def _accuracy(stats: dict) -> str:
    if "accuracy" not in stats:
        return "–"
    low, high = stats["accuracy_delta_ci95"]
    return (f"{stats['baseline_accuracy']:.4f} → {stats['accuracy']:.4f} ({stats['accuracy_delta'] * 100:+.2f} pp, "
            f"[{low * 100:+.2f}, {high * 100:+.2f}])")


def _mae(stats: dict) -> str:
    if "mae" not in stats:
        return "–"
    low, high = stats["mae_delta_ci95"]
    return f"{stats['baseline_mae']:.4g} → {stats['mae']:.4g} ({stats['mae_delta']:+.3g}, [{low:+.3g}, {high:+.3g}])"


def _shift(shift: dict) -> str:
    return (f"{shift['baseline_mean']:.3g} ± {shift['baseline_std']:.3g} → {shift['mean']:.3g} ± "
            f"{shift['std']:.3g}")


def drift_summary(report: ParityReport) -> list[str]:
    """Console summary lines of the drift section."""
    section = report.drift
    if not section:
        return []
    lines = [f"drift {Verdict.of_checks([section.passed]).headline} against {section.baseline.run}: "
             f"{len(section.models)} models on {section.inputs['examples']} pinned examples"]
    return lines + [f"  BREACH {failure}" for failure in section.failures]
