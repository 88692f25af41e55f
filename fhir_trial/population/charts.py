"""The report's charts, drawn with matplotlib as inline SVG (no file, no network, no pyplot state).

matplotlib is the optional extra ``report``: screening does not need it, only ``--report``'s
HTML page does. Suppressed counts are not drawn (their bar is absent and labelled "suppressed").
"""

from __future__ import annotations

import io
from typing import Any

from fhir_trial.errors import ConfigurationError

STATUS_COLOURS = {
    "met": "#2e7d32",
    "not-met": "#c62828",
    "unknown": "#9e9e9e",
    "needs-review": "#f9a825",
    "not-applicable": "#90caf9",
}
RUN_COLOURS = ("#1565c0", "#ef6c00", "#6a1b9a", "#00838f", "#ad1457", "#558b2f")


def _figure(width: float, height: float) -> Any:
    try:
        import matplotlib
        from matplotlib.figure import Figure
    except ImportError:
        raise ConfigurationError(
            "the HTML report needs matplotlib: pip install 'fhir-trial[report]'"
        ) from None
    matplotlib.rcParams["svg.fonttype"] = "none"  # text stays text: small, searchable
    matplotlib.rcParams["svg.hashsalt"] = "fhir-trial"  # the same ids on every run
    return Figure(figsize=(width, height), layout="constrained")


def _svg(figure: Any) -> str:
    out = io.StringIO()
    figure.savefig(out, format="svg", metadata={"Date": None})
    text = out.getvalue()
    return text[text.index("<svg") :]  # inline: no XML prolog or DOCTYPE


def _count(cell: dict[str, Any] | None) -> float | None:
    if cell is None or cell.get("suppressed") or cell.get("count") is None:
        return None
    return float(cell["count"])


def funnel_chart(runs: list[dict[str, Any]]) -> str:
    """Horizontal bars: patients left after each step, in protocol order, one bar per run."""
    steps = [step["step"] for step in runs[0]["funnel"]]
    figure = _figure(9.0, 0.2 * len(steps) * (1 + 0.3 * (len(runs) - 1)) + 1.2)
    axes = figure.subplots()
    height = 0.8 / len(runs)
    for number, run in enumerate(runs):
        values = [_count(step["remaining"]) for step in run["funnel"]]
        positions = [index + number * height for index in range(len(steps))]
        axes.barh(
            positions,
            [value or 0 for value in values],
            height=height,
            color=RUN_COLOURS[number % len(RUN_COLOURS)],
            label=run["label"],
        )
        for position, value in zip(positions, values, strict=True):
            text = "suppressed" if value is None else f"{value:.0f}"
            axes.text(value or 0, position, f" {text}", va="center", fontsize=7)
    axes.set_yticks([index + 0.4 - height / 2 for index in range(len(steps))], labels=steps)
    axes.tick_params(axis="y", labelsize=8)
    axes.invert_yaxis()
    axes.set_xlabel("patients left after the step (in protocol order)")
    axes.set_title("Attrition funnel")
    if len(runs) > 1:
        axes.legend(fontsize=8, loc="lower right")
    return _svg(figure)


def status_chart(run: dict[str, Any]) -> str:
    """Stacked horizontal bars: each criterion's statuses, percent of the living patients."""
    rows = run["criteria"]
    figure = _figure(9.0, 0.26 * len(rows) + 1.4)
    axes = figure.subplots()
    left = [0.0] * len(rows)
    for status, colour in STATUS_COLOURS.items():
        widths = [row["statuses"][status].get("percent") or 0.0 for row in rows]
        axes.barh(range(len(rows)), widths, left=left, color=colour, label=status)
        left = [a + b for a, b in zip(left, widths, strict=True)]
    axes.set_yticks(range(len(rows)), labels=[row["id"] for row in rows])
    axes.tick_params(axis="y", labelsize=8)
    axes.invert_yaxis()
    axes.set_xlim(0, 100)
    axes.set_xlabel("% of the living patients (suppressed counts are left out)")
    axes.set_title("Status of each criterion")
    axes.legend(fontsize=8, ncols=5, loc="upper center", bbox_to_anchor=(0.5, -0.08))
    return _svg(figure)


def bar_chart(labels: list[str], cells: list[dict[str, Any]], title: str, xlabel: str) -> str:
    """Horizontal bars of counts (the impact of each criterion, the missing data, ...)."""
    figure = _figure(9.0, 0.3 * max(len(labels), 1) + 1.2)
    axes = figure.subplots()
    values = [_count(cell) for cell in cells]
    axes.barh(range(len(labels)), [value or 0 for value in values], color=RUN_COLOURS[0])
    for index, value in enumerate(values):
        text = "suppressed" if value is None else f"{value:.0f}"
        axes.text(value or 0, index, f" {text}", va="center", fontsize=7)
    axes.set_yticks(range(len(labels)), labels=[label[:70] for label in labels])
    axes.tick_params(axis="y", labelsize=8)
    axes.invert_yaxis()
    axes.set_xlabel(xlabel)
    axes.set_title(title)
    return _svg(figure)


def require() -> None:
    """Raise :class:`ConfigurationError` now when matplotlib is missing (before a long run)."""
    _figure(1.0, 1.0)
