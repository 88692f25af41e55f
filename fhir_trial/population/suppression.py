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
    """Unknowns whose value the relations fix: rows of the reduced echelon form with one entry.

    Sparse rows (``{column: Fraction}``): relations touch a handful of cells each.
    """
    index = {key: n for n, key in enumerate(unknowns)}
    rows: list[dict[int, Fraction]] = []
    for relation in relations:
        row: dict[int, Fraction] = {}
        for key, coefficient in relation.items():
            if key in index and coefficient:
                row[index[key]] = row.get(index[key], Fraction(0)) + coefficient
        row = {c: v for c, v in row.items() if v}
        if row:
            rows.append(row)
    pivots: dict[int, dict[int, Fraction]] = {}  # pivot column -> its row (fully reduced)
    for row in rows:
        for column, pivot_row in pivots.items():  # reduce by the pivots found so far
            if column in row:
                factor = row[column]
                for c, v in pivot_row.items():
                    row[c] = row.get(c, Fraction(0)) - factor * v
                row = {c: v for c, v in row.items() if v}
        if not row:
            continue
        column = min(row)
        lead = row[column]
        row = {c: v / lead for c, v in row.items()}
        for other in pivots.values():  # keep earlier pivot rows reduced by the new one
            if column in other:
                factor = other[column]
                for c, v in row.items():
                    other[c] = other.get(c, Fraction(0)) - factor * v
                for c in [c for c, v in other.items() if not v]:
                    del other[c]
        pivots[column] = row
    return {unknowns[column] for column, row in pivots.items() if len(row) == 1}


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


def _cheapest(
    candidates: Iterable[Key], values: Mapping[Key, int], keep: frozenset[Key]
) -> Key | None:
    """The published cell to suppress as a complement: the smallest non-zero count first, the
    cells to ``keep`` (totals) last."""
    ranked = sorted(
        candidates, key=lambda key: (key in keep, values[key] == 0, values[key], repr(key))
    )
    return ranked[0] if ranked else None


def protect(
    values: Mapping[Key, int],
    relations: Sequence[Relation],
    min_count: int,
    groups: Iterable[Sequence[Key]] = (),
    keep: Iterable[Key] = (),
) -> set[Key]:
    """The cells to suppress so that no count below ``min_count`` can be read or recomputed.

    ``keep``: cells to choose as complements only when nothing else will do (the totals).
    """
    kept = frozenset(keep)
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
                pick = _cheapest((key for key in relation if key not in hidden), values, kept)
                if pick is not None:
                    hidden.add(pick)
                    added = True
        if added:
            continue
        leaks = exposed(values, relations, hidden)
        if not leaks:
            return hidden
        pick = _complement_for(leaks, values, relations, hidden, kept)
        if pick is None:  # nothing left to suppress that helps: suppress everything
            return set(values)
        hidden.add(pick)


def _complement_for(
    leaks: set[Key],
    values: Mapping[Key, int],
    relations: Sequence[Relation],
    hidden: set[Key],
    kept: frozenset[Key],
) -> Key | None:
    """A published cell whose suppression leaves fewer suppressed cells recomputable.

    Cells of relations that hold a leak come first, then those of relations that hold any
    suppressed cell; in each, the cheapest first (:func:`_cheapest`'s order).
    """
    near = {key for r in relations if leaks & set(r) for key in r if key not in hidden}
    far = {key for r in relations if hidden & set(r) for key in r if key not in hidden} - near
    for pool in (near, far):
        ranked = sorted(
            pool, key=lambda key: (key in kept, values[key] == 0, values[key], repr(key))
        )
        for key in ranked:
            if len(exposed(values, relations, hidden | {key})) < len(leaks):
                return key
    return None
