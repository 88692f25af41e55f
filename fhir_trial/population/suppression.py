"""Small-cell suppression for shared reports, with complementary suppression and its audit.

A report is a set of *cells* (counts of patients) tied by *relations*: exact linear equalities
between cells that a reader can use (a row of statuses sums to the living patients, each funnel
step is the previous one minus the patients it removes, the verdicts sum to the screened...). Each
relation is ``{cell: coefficient}`` with ``sum(coefficient * value) == 0``.

:func:`protect` suppresses every count ``0 < n < min_count`` (zeros are shown: they name nobody),
then adds complementary suppressions until no suppressed cell can be recomputed exactly from the
published cells: :func:`exposed` is the audit (linear algebra over all relations at once, plus the
non-negativity of counts, which pins every unknown of a relation whose published part already
adds up). Cells listed together in a ``group`` (the same count in the baseline and in a what-if
run) are suppressed together, so comparing two runs cannot undo a suppression either.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping, Sequence
from fractions import Fraction

Key = Hashable
Relation = Mapping[Key, int]


def _rref_determined(unknowns: list[Key], relations: Sequence[Relation]) -> set[Key]:
    """Unknowns whose value the homogeneous part of ``relations`` fixes (unit rows of the RREF)."""
    index = {key: n for n, key in enumerate(unknowns)}
    rows: list[list[Fraction]] = []
    for relation in relations:
        row = [Fraction(0)] * len(unknowns)
        used = False
        for key, coefficient in relation.items():
            if key in index and coefficient:
                row[index[key]] += coefficient
                used = True
        if used:
            rows.append(row)
    pivot_row = 0
    pivots: list[int] = []
    for column in range(len(unknowns)):
        found = next((r for r in range(pivot_row, len(rows)) if rows[r][column] != 0), None)
        if found is None:
            continue
        rows[pivot_row], rows[found] = rows[found], rows[pivot_row]
        lead = rows[pivot_row][column]
        rows[pivot_row] = [value / lead for value in rows[pivot_row]]
        for r in range(len(rows)):
            if r != pivot_row and rows[r][column] != 0:
                factor = rows[r][column]
                rows[r] = [a - factor * b for a, b in zip(rows[r], rows[pivot_row], strict=True)]
        pivots.append(column)
        pivot_row += 1
        if pivot_row == len(rows):
            break
    determined = set()
    for r, column in enumerate(pivots):
        if all(value == 0 for c, value in enumerate(rows[r]) if c != column):
            determined.add(unknowns[column])
    return determined


def exposed(
    values: Mapping[Key, int], relations: Sequence[Relation], suppressed: Iterable[Key]
) -> set[Key]:
    """The suppressed cells a reader can recompute exactly from the published ones."""
    hidden = set(suppressed)
    known = set(values) - hidden
    while True:
        learned: set[Key] = set()
        for relation in relations:
            unknown = [key for key in relation if key not in known and relation[key]]
            if not unknown:
                continue
            signs = {relation[key] > 0 for key in unknown}
            rest = sum(relation[key] * values[key] for key in relation if key in known)
            if len(signs) == 1 and rest == 0:  # counts are >= 0: every unknown here is 0
                learned.update(unknown)
        unknowns = sorted((key for key in hidden if key not in known), key=repr)
        learned |= _rref_determined(unknowns, relations)
        learned -= known
        if not learned:
            return hidden & known
        known |= learned


def _cheapest(candidates: Iterable[Key], values: Mapping[Key, int]) -> Key | None:
    """The published cell to suppress as a complement: the smallest non-zero count first."""
    ranked = sorted(candidates, key=lambda key: (values[key] == 0, values[key], repr(key)))
    return ranked[0] if ranked else None


def protect(
    values: Mapping[Key, int],
    relations: Sequence[Relation],
    min_count: int,
    groups: Iterable[Sequence[Key]] = (),
) -> set[Key]:
    """The cells to suppress so that no count below ``min_count`` can be read or recomputed."""
    if min_count <= 1:
        return set()
    together = [list(group) for group in groups]
    hidden = {key for key, value in values.items() if 0 < value < min_count}
    while True:
        added = False
        for group in together:
            if any(key in hidden for key in group) and not all(key in hidden for key in group):
                hidden.update(group)
                added = True
        for relation in relations:
            inside = [key for key in relation if key in hidden]
            if len(inside) == 1:
                pick = _cheapest((key for key in relation if key not in hidden), values)
                if pick is not None:
                    hidden.add(pick)
                    added = True
        if added:
            continue
        leaks = exposed(values, relations, hidden)
        if not leaks:
            return hidden
        for leak in sorted(leaks, key=repr):
            pick = _cheapest(
                (
                    key
                    for relation in relations
                    if leak in relation
                    for key in relation
                    if key not in hidden
                ),
                values,
            )
            if pick is not None:
                hidden.add(pick)
                added = True
        if not added:  # nothing left to suppress around the leaks: suppress them all
            return set(values)
