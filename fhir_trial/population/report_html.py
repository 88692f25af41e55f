"""``report.html``: the feasibility report as one self-contained page (opens offline).

Charts are matplotlib SVG inlined in the page (:mod:`.charts`); styles are inline; a
Content-Security-Policy forbids every fetch, so the page can be mailed or archived as one file.
Drawn from the report document only (:meth:`FeasibilityReport.to_json`): suppressed counts show
as "suppressed" and names no patient.
"""

from __future__ import annotations

import json
from html import escape
from typing import Any

from fhir_trial.population import charts

CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 72em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: .5em 0 1em; font-size: 13px; }
th, td { border: 1px solid #ddd; padding: 2px 8px; text-align: right; vertical-align: top; }
th { background: #f4f4f4; } td.l, th.l { text-align: left; }
.part td.l { padding-left: 2em; color: #555; } .sup { color: #a00; font-style: italic; }
.chart svg { max-width: 100%; height: auto; } .note { color: #555; font-size: 12px; }
"""


def _n(cell: dict[str, Any] | None) -> str:
    if cell is None:
        return ""
    if cell.get("suppressed"):
        return '<span class="sup">suppressed</span>'
    return str(cell["count"])


def _p(cell: dict[str, Any] | None) -> str:
    if cell is None or cell.get("percent") is None:
        return ""
    return f"{cell['percent']:.1f}%"


def _np(cell: dict[str, Any] | None) -> str:
    """A count with its percentage: ``7 (70.0%)``."""
    percent = _p(cell)
    return _n(cell) + (f" ({percent})" if percent else "")


def _row(*cells: str, cls: str = "") -> str:
    attr = f' class="{cls}"' if cls else ""
    return f"<tr{attr}>" + "".join(cells) + "</tr>"


def _td(value: str, left: bool = False) -> str:
    return f'<td class="l">{value}</td>' if left else f"<td>{value}</td>"


def _th(*names: str) -> str:
    return "<tr>" + "".join(f"<th>{escape(name)}</th>" for name in names) + "</tr>"


def _funnel_table(run: dict[str, Any]) -> str:
    rows = [_th("step", "ref", "removed at this step", "left after it", "% of screened")]
    for step in run["funnel"]:
        rows.append(
            _row(
                _td(escape(step["step"]), True),
                _td(escape(step.get("ref", "")), True),
                _td(_n(step.get("removed"))),
                _td(_n(step["remaining"])),
                _td(_p(step["remaining"])),
            )
        )
    return "<table>" + "".join(rows) + "</table>"


def _criteria_table(run: dict[str, Any]) -> str:
    statuses = ("met", "not-met", "unknown", "needs-review", "not-applicable")
    head = ["criterion", "ref", "title", *statuses]
    head += ["rules out on its own", "impact: more potentially eligible without it"]
    rows = [_th(*head)]
    for row in run["criteria"]:
        cells = [
            _td(escape(row["id"]), True),
            _td(escape(row["ref"]), True),
            _td(escape(row["title"]), True),
        ]
        for status in statuses:
            cells.append(_td(_np(row["statuses"][status])))
        for key in ("rulesOut", "impact"):
            cells.append(_td(_np(row[key])))
        rows.append(_row(*cells, cls="part" if row["partOf"] else ""))
    return "<table>" + "".join(rows) + "</table>"


def _what_if_table(runs: list[dict[str, Any]]) -> str:
    head = _th("measure", *(run["label"] for run in runs))
    rows = [head]
    for verdict in runs[0]["verdicts"]:
        rows.append(
            _row(
                _td(escape(verdict), True),
                *(
                    _td(f"{_n(run['verdicts'][verdict])} {_p(run['verdicts'][verdict])}")
                    for run in runs
                ),
            )
        )
    for index, step in enumerate(runs[0]["funnel"]):
        rows.append(
            _row(
                _td("left after " + escape(step["step"]), True),
                *(_td(_n(run["funnel"][index]["remaining"])) for run in runs),
            )
        )
    for index, row in enumerate(runs[0]["criteria"]):
        if row["rulesOut"] is None:
            continue
        rows.append(
            _row(
                _td(escape(row["id"]) + " rules out on its own", True),
                *(_td(_n(run["criteria"][index]["rulesOut"])) for run in runs),
            )
        )
    return "<table>" + "".join(rows) + "</table>"


def _missing_table(run: dict[str, Any]) -> str:
    rows = [_th("missing data", "area", "criteria", "patients kept unknown", "% of living")]
    for item in run["missingData"]:
        rows.append(
            _row(
                _td(escape(item["item"]), True),
                _td(escape(item["area"]), True),
                _td(escape(", ".join(item["criteria"])), True),
                _td(_n(item["patients"])),
                _td(_p(item["patients"])),
            )
        )
    return "<table>" + "".join(rows) + "</table>"


def _inputs_table(inputs: dict[str, Any]) -> str:
    """A mapping as a table: nested mappings become columns, anything else a value column."""
    nested = [value for value in inputs.values() if isinstance(value, dict)]
    columns: list[str] = []
    for value in nested:
        columns += [key for key in value if key not in columns]

    def show(value: Any) -> str:
        if isinstance(value, str | int | float) or value is None:
            return escape("" if value is None else str(value))
        return escape(json.dumps(value, ensure_ascii=False))

    rows = [_th("", *columns) if columns else _th("", "value")]
    for key, value in inputs.items():
        if isinstance(value, dict) and columns:
            rows.append(
                _row(_td(escape(str(key)), True), *(_td(show(value.get(c))) for c in columns))
            )
        else:
            rows.append(_row(_td(escape(str(key)), True), _td(show(value), True)))
    return "<table>" + "".join(rows) + "</table>"


def render(data: dict[str, Any]) -> str:
    """The HTML page of a report document (:meth:`FeasibilityReport.to_json`)."""
    runs = data["runs"]
    baseline = runs[0]
    voting = [row for row in baseline["criteria"] if row["impact"] is not None]
    missing = baseline["missingData"][:15]
    verdicts = "".join(
        f"<li>{escape(verdict)}: {_n(cell)} ({_p(cell)})</li>"
        for verdict, cell in baseline["verdicts"].items()
    )
    population = baseline["population"]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
        f"<title>Feasibility report: {escape(data['study'])}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>Feasibility report: {escape(data['study'])}</h1>",
        f"<p>Screened as of {escape(str(data.get('asOf') or ''))}: {_n(population['patients'])}"
        f" patients, {_n(population['deceased'])} deceased, {_n(population['living'])} living.</p>",
        f"<ul>{verdicts}</ul>",
        f'<p class="note">Small counts: {escape(data["suppression"]["rule"])}. Percentages: '
        "the population, verdicts and funnel are of the patients screened; the criteria, impact "
        "and missing data of the living patients.</p>",
        '<h2 id="funnel">Attrition funnel (in protocol order)</h2>',
        f'<div class="chart">{charts.funnel_chart(runs)}</div>',
        _funnel_table(baseline),
        '<h2 id="criteria">Each criterion on its own</h2>',
        f'<div class="chart">{charts.status_chart(baseline)}</div>',
        _criteria_table(baseline),
        '<h2 id="impact">Criteria impact</h2>',
        '<p class="note">Patients this criterion alone rules out: how many more would be '
        "potentially eligible if it were dropped.</p>",
        '<div class="chart">'
        + charts.bar_chart(
            [row["id"] for row in voting],
            [row["impact"] for row in voting],
            "More potentially eligible without the criterion",
            "patients",
        )
        + "</div>",
    ]
    if len(runs) > 1:
        parts += ['<h2 id="what-if">What-if runs beside the baseline</h2>', _what_if_table(runs)]
    parts.append('<h2 id="missing">Missing data that keeps patients unknown</h2>')
    if missing:
        parts.append(
            '<div class="chart">'
            + charts.bar_chart(
                [item["item"] for item in missing],
                [item["patients"] for item in missing],
                "Patients kept unknown, per missing item",
                "living patients",
            )
            + "</div>"
        )
        parts.append(_missing_table(baseline))
    else:
        parts.append("<p>No criterion is unknown for want of data.</p>")
    if data.get("inputs"):
        parts += ['<h2 id="inputs">Inputs</h2>', _inputs_table(data["inputs"])]
    if data.get("skipped"):
        parts.append('<h2 id="skipped">Inputs skipped</h2>')
        rows = [_th("reason", "inputs")] + [
            _row(_td(escape(s["reason"]), True), _td(str(s["inputs"]))) for s in data["skipped"]
        ]
        parts.append("<table>" + "".join(rows) + "</table>")
    parts.append("</body></html>\n")
    return "\n".join(parts)
