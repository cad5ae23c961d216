"""Flash and RAM budgets of the `tflm` artifact as a release gate, and the per-device fit report.

A budget comes from a device of the table (`--device NAME`: its flash and SRAM) or from `--max-flash-kib` /
`--max-ram-kib` (which replace the device's figure of the same kind). Flash is compared with the flatbuffer's
size; RAM with the tensor arena to reserve (measured + margin, kerasport.devices). An arena that was not measured
fails a RAM budget: the gate cannot show that it fits. Each budget is one check (`budget_flash`, `budget_ram`):
one JUnit testcase, and a failure of the whole gate (exit 1) naming the budget and by how much it is exceeded.
"""

from __future__ import annotations

from dataclasses import dataclass

from kerasport.devices import KIB, device
from kerasport.errors import UsageError

from .checks import Checks
from .results import BudgetRow, BudgetsSection, MicrocontrollerSection, ParityReport

BUDGET_CLASS = "budget"
KIND_LABEL = {"flash": "flash", "ram": "RAM"}
TFLM_ARTIFACT = "tflm"


@dataclass(frozen=True)
class Budget:
    kind: str  # "flash" or "ram"
    limit_bytes: int
    origin: str


def resolve_budgets(device_name: str | None = None, max_flash_kib: float | None = None,
                    max_ram_kib: float | None = None) -> list[Budget]:
    """The budgets the options ask for (none: an empty list).

    Raises:
        UsageError: an unknown device (the message lists the known ones) or a budget that is not positive.
    """
    budgets: dict[str, Budget] = {}
    if device_name:
        part = device(device_name)
        budgets["flash"] = Budget("flash", part.flash_bytes, f"device {part.key}: {part.name}, {part.flash_kib} KiB "
                                                             f"flash ({part.source})")
        budgets["ram"] = Budget("ram", part.ram_bytes, f"device {part.key}: {part.name}, {part.sram_kib} KiB SRAM "
                                                       f"({part.source})")
    for kind, value in (("flash", max_flash_kib), ("ram", max_ram_kib)):
        if value is None:
            continue
        if value <= 0:
            raise UsageError(f"--max-{kind}-kib {value:g}; expected a positive number of KiB")
        budgets[kind] = Budget(kind, int(value * KIB), f"--max-{kind}-kib {value:g}")
    return list(budgets.values())


def require_tflm(budgets: list[Budget], has_tflm: bool, run_dir) -> None:
    """Budgets apply to the `tflm` artifact: a bundle without it cannot be budgeted.

    Raises:
        UsageError: budgets were asked for and the bundle has no built `tflm` artifact.
    """
    if budgets and not has_tflm:
        raise UsageError(f"{run_dir}: flash/RAM budgets apply to the tflm artifact, which the bundle lacks; expected "
                         f"`kerasport export --run {run_dir}` with tflm among --formats")


def _kib(value: int) -> str:
    return f"{value / KIB:.1f} KiB"


def _budget_check(budget: Budget, section: MicrocontrollerSection, checks: Checks) -> BudgetRow:
    arena = section.arena
    if budget.kind == "flash":
        used, what = section.flash_bytes, f"the model takes {_kib(section.flash_bytes)} of flash"
    elif arena.get("measured"):
        used = arena["reserve_bytes"]
        what = (f"the tensor arena to reserve is {_kib(used)} ({arena['used_bytes']} bytes measured + "
                f"{arena['margin']:.0%} margin)")
    else:
        used, what = None, f"the tensor arena was not measured ({arena.get('why', 'unknown')})"
    label = KIND_LABEL[budget.kind]
    limit = f"the {label} budget {_kib(budget.limit_bytes)} ({budget.origin})"
    if used is None:
        passed, message = False, f"{label}: {what}; cannot show it fits {limit}"
    elif used <= budget.limit_bytes:
        passed, message = True, f"{label}: {what}, within {limit}; {_kib(budget.limit_bytes - used)} to spare"
    else:
        passed, message = False, f"{label}: {what}, over {limit} by {_kib(used - budget.limit_bytes)}"
    checks.add(f"budget_{budget.kind}", passed, message)
    return BudgetRow(budget.kind, budget.limit_bytes, budget.origin, used, passed, message)


def apply_budgets(report: ParityReport, budgets: list[Budget], device_name: str | None = None) -> None:
    """Judge each budget against the `tflm` candidate's flash and arena; record checks, failures and the verdict."""
    if not budgets:
        return
    section = report.candidates[TFLM_ARTIFACT].microcontroller
    checks = Checks()
    rows = [_budget_check(budget, section, checks) for budget in budgets]
    report.budgets = BudgetsSection(device_name, rows, checks.records)
    failed = [f"{BUDGET_CLASS}: {record.id} — {record.message}" for record in checks.records if not record.passed]
    report.failures += failed
    report.passed = report.passed and not failed


def _mark(value: bool | None) -> str:
    return "?" if value is None else ("yes" if value else "**no**")


def fit_markdown(report: ParityReport) -> list[str]:
    """report.md's microcontroller section: flash, arena, MACs, TFLM vs LiteRT, fit per device, budgets."""
    result = report.candidates.get(TFLM_ARTIFACT)
    if result is None:
        return []
    section = result.microcontroller
    lines = ["## Microcontroller (tflm)", ""]
    if result.skipped:
        lines += [f"> **TFLite Micro candidate skipped: {result.skipped}.**", ""]
    lines += [f"- {line}" for line in microcontroller_facts(section)] + [""]
    for label, outputs in (result.vs_litert or {}).items():
        for output, row in outputs.items():
            agreement = f", top-1 agreement {row['top1_agreement']:.4f}" if "top1_agreement" in row else ""
            steps = f" ({row['steps']:g} output steps)" if row["steps"] is not None else ""
            lines.append(f"- TFLM vs LiteRT {label}, `{output}`: max |diff| {row['max_abs_diff']:.3g}{steps}"
                         f"{agreement}")
    if result.vs_litert:
        lines.append("")
    lines += ["| device | core | flash | SRAM | flash used | SRAM used (arena reserve) | fits |",
              "|---|---|---|---|---|---|---|"]
    for key, fit in section.fit.items():
        ram_share = "–" if fit["ram_share"] is None else f"{fit['ram_share']:.1%} {_mark(fit['ram'])}"
        lines.append(f"| {key}: {fit['name']} | {fit['core']} | {_kib(fit['flash_bytes'])} | "
                     f"{_kib(fit['ram_bytes'])} | {fit['flash_share']:.1%} {_mark(fit['flash'])} | {ram_share} | "
                     f"{_mark(fit['fits'])} |")
    lines += ["", "Sources: " + "; ".join(sorted({f"{key}: {fit['source']}" for key, fit in section.fit.items()}))
              + ". Whole-part figures: the firmware's own flash and RAM come on top.", ""]
    if report.budgets:
        lines += ["### Budgets", ""] + [f"- {'✅' if row.passed else '❌'} {row.message}"
                                        for row in report.budgets.budgets] + [""]
    return lines


def microcontroller_facts(section: MicrocontrollerSection) -> list[str]:
    """The tflm artifact's flash, tensor arena, MACs and op resolver, one sentence each."""
    arena, macs = section.arena, section.macs
    facts = [f"flash: {section.flash_bytes} bytes ({_kib(section.flash_bytes)}) of int8 flatbuffer"]
    if arena.get("measured"):
        facts.append(f"tensor arena: {arena['used_bytes']} bytes measured ({arena.get('tflite_micro', '')}); "
                     f"reserve {arena['reserve_bytes']} bytes — {arena['why']}")
    else:
        facts.append(f"tensor arena: not measured ({arena.get('why')})")
    if macs:
        facts.append(f"MACs per inference: {macs['total']:,} ({macs['what']})")
    resolver = section.op_resolver
    if resolver:
        facts.append(f"op resolver: MicroMutableOpResolver<{resolver['size']}> with "
                     f"{', '.join(call + '()' for call in resolver['calls'])}")
    return facts


def fit_lines(report: ParityReport) -> list[str]:
    """The console's microcontroller summary: flash, arena, MACs, one line per device, and the budgets."""
    result = report.candidates.get(TFLM_ARTIFACT)
    if result is None:
        return []
    section = result.microcontroller
    arena = section.arena
    lines = []
    if result.skipped:
        lines.append(f"  skipped: tflm ({result.skipped})")
    macs = section.macs or {}
    text = f"  tflm: flash {_kib(section.flash_bytes)}, "
    text += (f"arena {arena['used_bytes']} B measured, reserve {_kib(arena['reserve_bytes'])}"
             if arena.get("measured") else "arena not measured")
    lines.append(text + (f", {macs['total']:,} MACs per inference" if macs else ""))
    for key, fit in section.fit.items():
        flash = f"flash {'ok' if fit['flash'] else 'NO':<2} ({fit['flash_share']:6.1%})"
        ram = "RAM ?" if fit["ram"] is None else f"RAM {'ok' if fit['ram'] else 'NO':<2} ({fit['ram_share']:6.1%})"
        verdict = {True: "fits", False: "does not fit", None: "unknown"}[fit["fits"]]
        lines.append(f"    {key:<10} {flash}  {ram}  {verdict}")
    # failing budgets are among the FAIL lines already
    lines += [f"  budget ok: {row.message}" for row in (report.budgets.budgets if report.budgets else []) if row.passed]
    return lines
