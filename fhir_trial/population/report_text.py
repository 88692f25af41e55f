"""The feasibility report as a terminal table (``screen-population`` on stdout).

Two measures that must not be mixed have their own column groups: *in protocol order* (the
funnel: removed at this step, left after it and every step before) and *on its own* (patients the
criterion rules out whatever the others say, and its impact: patients it alone rules out).
"""

from __future__ import annotations

from typing import Any

MISSING_LINES = 10


def _n(cell: dict[str, Any] | None) -> str:
    if cell is None:
        return ""
    return "*" if cell.get("suppressed") else str(cell["count"])


def _pct(cell: dict[str, Any] | None) -> str:
    if cell is None or cell.get("percent") is None:
        return ""
    return f"{cell['percent']:.1f}%"


def _run_table(run: dict[str, Any]) -> list[str]:
    criteria = {row["id"]: row for row in run["criteria"]}
    funnel = {step["step"]: step for step in run["funnel"]}
    groups = (
        f"  {'':<27}{' in protocol order ':-^23}  {' on its own ':-^16}"
        f"  {' statuses (living) ':-^25}"
    )
    header = (
        f"  {'step / criterion':<27}{'removed':>8}{'left':>7}{'left%':>8}  "
        f"{'rules out':>9}{'impact':>7}  {'met':>5}{'not':>5}{'unk':>5}{'rev':>5}{'n/a':>5}"
    )
    lines = [groups, header, "  " + "-" * (len(header) - 2)]
    screened = funnel["screened"]["remaining"]
    lines.append(f"  {'screened':<27}{'':>8}{_n(screened):>7}{_pct(screened):>8}")
    deceased = funnel["deceased"]
    lines.append(
        f"  {'deceased':<27}{_n(deceased['removed']):>8}{_n(deceased['remaining']):>7}"
        f"{_pct(deceased['remaining']):>8}"
    )
    for criterion_id, row in criteria.items():
        step = funnel.get(criterion_id)
        name = ("  " if row["partOf"] else "") + criterion_id
        removed = _n(step["removed"]) if step else ""
        left = _n(step["remaining"]) if step else ""
        left_pct = _pct(step["remaining"]) if step else ""
        statuses = row["statuses"]
        lines.append(
            f"  {name:<27}{removed:>8}{left:>7}{left_pct:>8}  "
            f"{_n(row['rulesOut']):>9}{_n(row['impact']):>7}  "
            f"{_n(statuses['met']):>5}{_n(statuses['not-met']):>5}{_n(statuses['unknown']):>5}"
            f"{_n(statuses['needs-review']):>5}{_n(statuses['not-applicable']):>5}"
        )
    return lines


def render(data: dict[str, Any]) -> str:
    """The terminal text of a report document (:meth:`FeasibilityReport.to_json`)."""
    baseline = data["runs"][0]
    total = baseline["population"]["patients"]
    count = total["count"]
    lines = [
        f"Feasibility: {_n(total)} patient{'s' if count != 1 else ''} screened"
        + (f" as of {data['asOf']}" if data.get("asOf") else ""),
        "Verdicts: "
        + ", ".join(
            f"{verdict} {_n(cell)}" + (f" ({_pct(cell)})" if _pct(cell) else "")
            for verdict, cell in baseline["verdicts"].items()
        ),
    ]
    if count != 0:
        lines += ["", *_run_table(baseline)]
        lines += [
            "",
            "  In protocol order: removed = patients who leave at this step; left = still in",
            "  after it and every step before; left% = of the patients screened. deceased:",
            "  patients who died on or before the screening date, counted before the criteria.",
            "  On its own (of the living): rules out = patients this criterion rules out, whatever",
            "  the others say; impact = patients it alone rules out (how many more would be",
            "  potentially eligible without it). Statuses: met / not(-met) / unk(nown) /",
            "  rev(iew needed) / n/a, patients per status among the living.",
        ]
        missing = baseline["missingData"][:MISSING_LINES]
        if missing:
            lines += ["", "  Missing data that keeps patients unknown (patients, area, item):"]
            for item in missing:
                lines.append(f"  {_n(item['patients']):>7}  {item['area']:<17} {item['item']}")
    if len(data["runs"]) > 1:
        lines += ["", *_what_if_table(data["runs"])]
    if data["suppression"]["minCount"] > 1:
        lines += ["", f"  * suppressed ({data['suppression']['rule']})."]
    return "\n".join(lines) + "\n"


def _what_if_table(runs: list[dict[str, Any]]) -> list[str]:
    width = 12
    lines = ["What-if runs beside the baseline (patients):"]
    for run in runs[1:]:
        lines.append(f"  {run['id']}: {run['label']}")
    lines.append(f"  {'':<27}" + "".join(f"{run['id']:>{width}}" for run in runs))
    for verdict in runs[0]["verdicts"]:
        lines.append(
            f"  {verdict:<27}" + "".join(f"{_n(run['verdicts'][verdict]):>{width}}" for run in runs)
        )
    lines.append("  left after each step (in protocol order):")
    for index, step in enumerate(runs[0]["funnel"][1:], 1):
        cells = [run["funnel"][index]["remaining"] for run in runs]
        lines.append(f"    {step['step']:<25}" + "".join(f"{_n(c):>{width}}" for c in cells))
    return lines
