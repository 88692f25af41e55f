"""A report as a readable table for a terminal: criterion, status, reason."""

from __future__ import annotations

import shutil
import textwrap

from fhir_trial.report import CriterionResult, EligibilityReport

_STATUS_WIDTH = 14
_ID_WIDTH = 27
_EVIDENCE_SHOWN = 4  # the JSON and FHIR outputs list all of it


def _rows(result: CriterionResult, reason_width: int) -> list[str]:
    ident = f"  {result.id}" if result.part_of else result.id
    reason = result.reason
    if result.evidence:
        shown = ", ".join(result.evidence[:_EVIDENCE_SHOWN])
        more = len(result.evidence) - _EVIDENCE_SHOWN
        reason += f" [evidence: {shown}{f' and {more} more' if more > 0 else ''}]"
    if result.missing:
        reason += f" [missing: {'; '.join(result.missing)}]"
    lines = textwrap.wrap(reason, reason_width) or [""]
    first = f"{ident:<{_ID_WIDTH}} {result.status:<{_STATUS_WIDTH}} {lines[0]}"
    pad = " " * (_ID_WIDTH + _STATUS_WIDTH + 2)
    return [first, *(pad + line for line in lines[1:])]


def _vital_lines(report: EligibilityReport) -> list[str]:
    """What must be read before anything else: the patient died, or whether they did is unclear."""
    if report.deceased is not None:
        return [
            f"DECEASED: {report.reason or 'recorded as deceased'}. Not eligible whatever the "
            "criteria say; they are still listed below.",
            "",
        ]
    if report.reason:
        return [f"CHECK FIRST: {report.reason}.", ""]
    return []


def report_text(report: EligibilityReport, width: int | None = None) -> str:
    """The report as a table (wrapped to the terminal width), headed by the verdict.

    A deceased patient (or one whose vital status cannot be read) gets that said on the first line.
    """
    width = width or shutil.get_terminal_size((120, 24)).columns
    reason_width = max(30, width - _ID_WIDTH - _STATUS_WIDTH - 2)
    out = [*_vital_lines(report)]
    out += [
        f"{report.study} screening of {report.patient} as of {report.as_of}: {report.verdict.upper()}",
        "",
        f"{'criterion':<{_ID_WIDTH}} {'status':<{_STATUS_WIDTH}} reason",
        f"{'-' * _ID_WIDTH} {'-' * _STATUS_WIDTH} {'-' * min(reason_width, 40)}",
    ]
    for result in report.criteria:
        out.extend(_rows(result, reason_width))
    if report.warnings:
        out.append("")
        out.extend(f"warning: {w}" for w in report.warnings)
    return "\n".join(out) + "\n"
