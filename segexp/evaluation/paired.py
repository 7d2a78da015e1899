"""``segexp-compare --stats A B``: two systems compared case by case, per class and on the foreground mean.

Each side is a run or a sweep / CV parent (:mod:`segexp.tracking.cases`); their per-case scores are paired by
``(case, class)``. Per class: the pairs where both scores are defined; the foreground mean: per case, the mean
over the classes paired in that case, so the bootstrap resamples cases (:mod:`segexp.evaluation.statistics`).
A parent whose children differ only in ``seed`` also gets, per class and for the foreground mean, the mean ± sd
over its seeds of each child's run-level mean (:func:`run_means`).

:func:`compare_seeds` compares two systems that were each run once per seed on the same cases (seed ``i`` of
one against seed ``i`` of the other): the paired units are the (seed, case) pairs, and each side's spread is
the mean ± sd over its seeds of its run-level means (``scripts/accuracy.py``: segexp against MONAI).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Hashable, Mapping, Sequence
from typing import Any, TypeVar

from segexp.core.errors import RunError
from segexp.evaluation.statistics import mean_sd, paired_comparison
from segexp.tracking.cases import Scores, System
from segexp.tracking.compare import format_table

FOREGROUND = "foreground mean"
#: How many unshared cases an error or a note names before "...".
SHOWN = 10


def _names(items: Sequence[Any]) -> str:
    shown = ", ".join(map(str, items[:SHOWN]))
    return shown + (f", ... ({len(items)} in all)" if len(items) > SHOWN else "")


def _unshared(a: Scores, b: Scores, label_a: str, label_b: str) -> list[str]:
    """One line per side naming its ``(case, class)`` pairs the other side lacks (by case, or by class)."""
    lines = []
    for label, mine, other in ((label_a, a, b), (label_b, b, a)):
        missing = sorted(set(mine) - set(other))
        if not missing:
            continue
        cases = sorted({c for c, _ in missing})
        other_cases = {c for c, _ in other}
        whole = [c for c in cases if c not in other_cases]
        classes = sorted({k for c, k in missing if c in other_cases})
        parts = []
        if whole:
            parts.append(f"cases {_names(whole)}")
        if classes:
            parts.append(f"classes {_names(classes)} of shared cases")
        lines.append(f"only {label} has " + " and ".join(parts))
    return lines


#: The unit paired scores are keyed by, with the class: a case (``segexp-compare``) or a (seed, case) pair.
Unit = TypeVar("Unit", bound=Hashable)


def _per_unit_fg(
    a: Mapping[tuple[Unit, str], float], b: Mapping[tuple[Unit, str], float], keys: Sequence[tuple[Unit, str]]
) -> tuple[list[float], list[float]]:
    """Per unit (``key[0]``: a case, or a (seed, case) pair), the mean over its paired classes of A's and of B's
    score, units in the order they first appear in ``keys``."""
    by_unit: dict[Unit, list[tuple[float, float]]] = defaultdict(list)
    for key in keys:
        by_unit[key[0]].append((a[key], b[key]))
    return (
        [sum(x for x, _ in pairs) / len(pairs) for pairs in by_unit.values()],
        [sum(y for _, y in pairs) / len(pairs) for pairs in by_unit.values()],
    )


def _alone(mine: Mapping[Any, float], theirs: Mapping[Any, float], keys: Sequence[Any]) -> list[Any]:
    """The keys scored on ``mine`` and undefined (NaN) on ``theirs``."""
    return [k for k in keys if math.isnan(theirs[k]) and not math.isnan(mine[k])]


def paired_rows(
    a: Mapping[tuple[Unit, str], float],
    b: Mapping[tuple[Unit, str], float],
    keys: Sequence[tuple[Unit, str]],
    classes: Sequence[str],
    *,
    n_resamples: int = 10_000,
    seed: int = 0,
    confidence: float = 0.95,
) -> list[dict[str, Any]]:
    """Per class of ``classes``, then :data:`FOREGROUND`, ``{"class": ..., **PairedResult, "only_a", "only_b"}``
    of ``a`` and ``b`` on the ``(unit, class)`` pairs of ``keys`` (both sides hold each) whose scores are defined
    on both sides (differences ``b - a``). ``only_a`` / ``only_b``: the pairs of the class (all classes for the
    foreground) scored on that side alone — for Dice, a structure absent from the unit's truth that only that
    side predicts (a false alarm, 0 there), which the pairs leave out. A class with no defined pair:
    ``{"class", "n": 0, "note", "only_a", "only_b"}``; no foreground row when no pair is defined."""
    defined = [k for k in keys if not (math.isnan(a[k]) or math.isnan(b[k]))]
    alone = {"only_a": _alone(a, b, keys), "only_b": _alone(b, a, keys)}
    rows: list[dict[str, Any]] = []
    for name in classes:
        mine = [k for k in defined if k[1] == name]
        counts = {side: sum(1 for k in units if k[1] == name) for side, units in alone.items()}
        if not mine:
            rows.append({"class": name, "n": 0, "note": "no case with a defined score on both sides", **counts})
            continue
        result = paired_comparison([a[k] for k in mine], [b[k] for k in mine], n_resamples, seed, confidence)
        rows.append({"class": name, **result.as_dict(), **counts})
    if defined:
        fg_a, fg_b = _per_unit_fg(a, b, defined)
        result = paired_comparison(fg_a, fg_b, n_resamples, seed, confidence)
        rows.append({"class": FOREGROUND, **result.as_dict(), **{side: len(u) for side, u in alone.items()}})
    return rows


def run_means(scores: Scores) -> dict[str, float]:
    """One run's level scores: per class ``k``, ``m_k`` = the mean of its defined (non-NaN) case scores; and
    :data:`FOREGROUND` = ``(1/K) Σ_k m_k`` over the ``K`` classes with a mean, as the run's evaluation reports its
    foreground mean (``summary.json`` ``mean.foreground_mean``, ``test/dice_fg_mean``)."""
    by_class: dict[str, list[float]] = defaultdict(list)
    for (_, name), value in scores.items():
        if not math.isnan(value):
            by_class[name].append(value)
    means = {name: sum(values) / len(values) for name, values in by_class.items()}
    if means:
        means[FOREGROUND] = sum(means.values()) / len(means)
    return means


def seed_spread(runs: Sequence[Scores], names: Sequence[str]) -> dict[str, dict[str, float]]:
    """``{name: {"mean", "sd", "seeds"}}`` for each of ``names`` (classes, :data:`FOREGROUND`): the mean and sd
    (:func:`~segexp.evaluation.statistics.mean_sd`, ``ddof=1``) over ``runs`` (one per seed) of each run's
    :func:`run_means`; ``seeds``: the runs with a mean of that name (a name no run has a mean of is left out)."""
    levels = [run_means(scores) for scores in runs]
    spread = {}
    for name in names:
        values = [level[name] for level in levels if name in level]
        if values:
            mean, sd = mean_sd(values)
            spread[name] = {"mean": mean, "sd": sd, "seeds": len(values)}
    return spread


def compare_seeds(
    a: Sequence[Scores],
    b: Sequence[Scores],
    *,
    n_resamples: int = 10_000,
    seed: int = 0,
    confidence: float = 0.95,
) -> list[dict[str, Any]]:
    """Two systems each run once per seed on the same cases: ``a[i]``, ``b[i]`` the ``{(case, class): score}``
    of seed ``i`` (differences ``b - a``). Per class (in the order ``a`` first names them), then
    :data:`FOREGROUND`, a row of :func:`paired_rows` over the (seed, case) units (``n``: the (seed, case) pairs
    with both scores defined; the foreground: per unit, the mean over its paired classes), plus ``seeds``,
    ``a``, ``b``: ``{"mean", "sd"}`` of :func:`seed_spread` (NaN when the side has no defined score of that
    class), and :func:`paired_rows`' ``only_a``, ``only_b`` (each side's false alarms, left out of the pairs).
    The (seed, case) pairs of one case are not independent (the same images), so the bootstrap interval over
    them is narrower than one over cases would be; with one seed the units are the cases. Raises
    :class:`ValueError` when the numbers of seeds differ or a seed's sides scored different ``(case, class)``
    pairs."""
    if len(a) != len(b) or not a:
        raise ValueError(f"compare_seeds needs as many seeds on each side (at least one), got {len(a)} and {len(b)}")
    for i, (x, y) in enumerate(zip(a, b)):
        if set(x) != set(y):
            only = sorted(set(x) ^ set(y))
            raise ValueError(f"seed {i}: the sides scored different (case, class) pairs, e.g. {only[:3]}")
    units_a = {((i, case), name): v for i, scores in enumerate(a) for (case, name), v in scores.items()}
    units_b = {((i, case), name): v for i, scores in enumerate(b) for (case, name), v in scores.items()}
    classes = list(dict.fromkeys(name for scores in a for _, name in scores))
    spreads = {side: seed_spread(runs, [*classes, FOREGROUND]) for side, runs in (("a", a), ("b", b))}
    nan = {"mean": math.nan, "sd": math.nan}
    keys = list(units_a)
    rows = paired_rows(units_a, units_b, keys, classes, n_resamples=n_resamples, seed=seed, confidence=confidence)
    for row in rows:
        for side, spread in spreads.items():
            found = spread.get(row["class"])
            row[side] = {"mean": found["mean"], "sd": found["sd"]} if found else dict(nan)
        row["seeds"] = len(a)
    return rows


def compare_systems(
    a: System,
    b: System,
    *,
    metric: str,
    n_resamples: int = 10_000,
    seed: int = 0,
    confidence: float = 0.95,
    intersect: bool = False,
) -> dict[str, Any]:
    """The comparison of ``a`` and ``b`` (differences ``b - a``) as a JSON-ready dict: ``rows`` (per class, then
    the foreground mean), ``unshared`` (pairs one side lacks), ``seeds`` (mean ± sd per side that varies only
    ``seed``), ``notes``. Cases or classes one side lacks are an error unless ``intersect`` (then the shared
    pairs are compared and ``unshared`` names the rest); no shared pair at all is always an error. ``split``: the
    sides' split (:attr:`System.split`), ``"valid (A), test (B)"`` when they differ."""
    split = a.split if a.split == b.split else f"{a.split} (A), {b.split} (B)"
    sa, sb = a.pooled(), b.pooled()
    unshared = _unshared(sa, sb, f"A ({a.source})", f"B ({b.source})")
    shared = sorted(set(sa) & set(sb))
    if not shared:
        cases_a, cases_b = sorted({c for c, _ in sa}), sorted({c for c, _ in sb})
        raise RunError(
            f"A ({a.source}, split {a.split!r}) and B ({b.source}, split {b.split!r}) share no (case, class): "
            f"A has cases {_names(cases_a)}; B has cases {_names(cases_b)}"
        )
    if unshared and not intersect:
        raise RunError(
            "A and B were not scored on the same cases and classes: "
            + "; ".join(unshared)
            + " (--intersect compares the shared ones)"
        )
    defined = [k for k in shared if not (math.isnan(sa[k]) or math.isnan(sb[k]))]
    classes = sorted({k for _, k in shared})
    rows = paired_rows(sa, sb, shared, classes, n_resamples=n_resamples, seed=seed, confidence=confidence)
    undefined = len(shared) - len(defined)
    notes = [*a.notes, *b.notes]
    if undefined:
        notes.append(f"{undefined} (case, class) pairs left out: {metric} undefined on one side or both")
    seeds = {
        side: seed_spread([r.scores for r in s.runs], [*classes, FOREGROUND])
        for side, s in (("A", a), ("B", b))
        if s.varies_only_seed()
    }
    return {
        "a": {"source": a.source, "kind": a.kind, "split": a.split, "runs": [r.name for r in a.runs]},
        "b": {"source": b.source, "kind": b.kind, "split": b.split, "runs": [r.name for r in b.runs]},
        "split": split,
        "metric": metric,
        "difference": "B - A",
        "confidence": confidence,
        "bootstrap_resamples": n_resamples,
        "seed": seed,
        "cases": len({c for c, _ in defined}),
        "rows": rows,
        "unshared": unshared,
        "seeds": seeds,
        "notes": notes,
    }


def _side(side: dict[str, Any]) -> str:
    runs = side["runs"]
    if side["kind"] == "run":
        return side["source"]
    pooled = f"{len(runs)} folds pooled, cross-validation" if side["kind"] == "cv" else f"{len(runs)} runs pooled"
    return f"{side['source']} ({pooled})"


def _split(split: str) -> str:
    """``split 'test'``, or ``splits valid (A), test (B)`` when the sides were scored on different splits."""
    return f"split {split!r}" if " " not in split else f"splits {split}"


def format_comparison(report: dict[str, Any]) -> str:
    """The report of :func:`compare_systems` as text: the sides, the table, the seed spreads, the notes."""
    level = round(100 * report["confidence"])
    lines = [
        f"A: {_side(report['a'])}",
        f"B: {_side(report['b'])}",
        f"{report['metric']} on {_split(report['split'])}, {report['cases']} cases paired; difference B - A, "
        f"{level}% percentile bootstrap CI ({report['bootstrap_resamples']} resamples of the cases, seed "
        f"{report['seed']}), Wilcoxon signed-rank p (two-sided)",
        "",
    ]
    ci = f"{level}% CI"
    alone = "one side only A / B"
    table = []
    for row in report["rows"]:
        counts = f"{row['only_a']} / {row['only_b']}"
        if row["n"] == 0:
            table.append({"class": row["class"], "n": 0, "p (Wilcoxon)": row["note"], alone: counts})
            continue
        table.append(
            {
                "class": row["class"],
                "n": row["n"],
                "mean A": row["mean_a"],
                "mean B": row["mean_b"],
                "B - A": f"{row['mean_diff']:+.4f}",
                ci: "-" if math.isnan(row["ci_low"]) else f"[{row['ci_low']:+.4f}, {row['ci_high']:+.4f}]",
                "p (Wilcoxon)": row["note"] or f"{row['p_value']:.4g}",
                alone: counts,
            }
        )
    lines.append(format_table(["class", "n", "mean A", "mean B", "B - A", ci, "p (Wilcoxon)", alone], table))
    lines.append(
        f"{alone}: (case, class) pairs scored on that side alone, left out of the pairs (for Dice: a structure "
        "absent from the case's truth that only that side predicts, a false alarm)"
    )
    for side, spread in report["seeds"].items():
        seeds = max(s["seeds"] for s in spread.values())
        lines += [
            "",
            f"{side}: mean ± sd (ddof=1) over {seeds} seeds of each seed's mean {report['metric']} "
            "(foreground mean: over the classes of the seed's class means)",
        ]
        lines += [f"  {name}: {s['mean']:.4f} ± {s['sd']:.4f}" for name, s in spread.items()]
    if report["unshared"]:
        lines += ["", "compared on the shared cases only: " + "; ".join(report["unshared"])]
    lines += [f"note: {n}" for n in report["notes"]]
    return "\n".join(lines)


def _null_nan(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _null_nan(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_null_nan(v) for v in value]
    return value


def report_json(report: dict[str, Any]) -> str:
    """The report of :func:`compare_systems` (or any JSON-ready dict, e.g. :func:`compare_seeds`' rows) as JSON
    (an undefined value, NaN, as ``null``)."""
    return json.dumps(_null_nan(report), indent=2)
