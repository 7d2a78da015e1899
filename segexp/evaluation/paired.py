"""``segexp-compare --stats A B``: two systems compared case by case, per class and on the foreground mean.

Each side is a run or a sweep / CV parent (:mod:`segexp.tracking.cases`); their per-case scores are paired by
``(case, class)``. Per class: the pairs where both scores are defined; the foreground mean: per case, the mean
over the classes paired in that case, so the bootstrap resamples cases (:mod:`segexp.evaluation.statistics`).
A parent whose children differ only in ``seed`` also gets, per class, the mean ± sd over its seeds of each
child's mean score.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

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


def _per_case_fg(a: Scores, b: Scores, keys: Sequence[tuple[str, str]]) -> tuple[list[float], list[float]]:
    """Per case, the mean over its paired classes of A's and of B's score."""
    by_case: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for key in keys:
        by_case[key[0]].append((a[key], b[key]))
    cases = sorted(by_case)
    return (
        [sum(x for x, _ in by_case[c]) / len(by_case[c]) for c in cases],
        [sum(y for _, y in by_case[c]) / len(by_case[c]) for c in cases],
    )


def _seed_spread(system: System, classes: Sequence[str]) -> dict[str, dict[str, float]]:
    """``{class: {"mean", "sd", "seeds"}}``: over the children, each child's mean score of the class (its cases)."""
    spread = {}
    for name in [*classes, FOREGROUND]:
        child_means = []
        for run in system.runs:
            if name == FOREGROUND:
                per_case: dict[str, list[float]] = defaultdict(list)
                for (case, _), v in run.scores.items():
                    if not math.isnan(v):
                        per_case[case].append(v)
                values = [sum(v) / len(v) for v in per_case.values()]
            else:
                values = [v for (_, k), v in run.scores.items() if k == name and not math.isnan(v)]
            if values:
                child_means.append(sum(values) / len(values))
        if child_means:
            mean, sd = mean_sd(child_means)
            spread[name] = {"mean": mean, "sd": sd, "seeds": len(child_means)}
    return spread


def compare_systems(
    a: System,
    b: System,
    *,
    split: str,
    metric: str,
    n_resamples: int = 10_000,
    seed: int = 0,
    confidence: float = 0.95,
    intersect: bool = False,
) -> dict[str, Any]:
    """The comparison of ``a`` and ``b`` (differences ``b - a``) as a JSON-ready dict: ``rows`` (per class, then
    the foreground mean), ``unshared`` (pairs one side lacks), ``seeds`` (mean ± sd per side that varies only
    ``seed``), ``notes``. Cases or classes one side lacks are an error unless ``intersect`` (then the shared
    pairs are compared and ``unshared`` names the rest); no shared pair at all is always an error."""
    sa, sb = a.pooled(), b.pooled()
    unshared = _unshared(sa, sb, f"A ({a.source})", f"B ({b.source})")
    shared = sorted(set(sa) & set(sb))
    if not shared:
        cases_a, cases_b = sorted({c for c, _ in sa}), sorted({c for c, _ in sb})
        raise RunError(
            f"A ({a.source}) and B ({b.source}) share no (case, class) on split {split!r}: "
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
    rows = []
    for name in classes:
        keys = [k for k in defined if k[1] == name]
        if not keys:
            rows.append({"class": name, "n": 0, "note": "no case with a defined score on both sides"})
            continue
        result = paired_comparison([sa[k] for k in keys], [sb[k] for k in keys], n_resamples, seed, confidence)
        rows.append({"class": name, **result.as_dict()})
    if defined:
        fg_a, fg_b = _per_case_fg(sa, sb, defined)
        rows.append({"class": FOREGROUND, **paired_comparison(fg_a, fg_b, n_resamples, seed, confidence).as_dict()})
    undefined = len(shared) - len(defined)
    notes = [*a.notes, *b.notes]
    if undefined:
        notes.append(f"{undefined} (case, class) pairs left out: {metric} undefined on one side or both")
    seeds = {side: _seed_spread(s, classes) for side, s in (("A", a), ("B", b)) if s.varies_only_seed()}
    return {
        "a": {"source": a.source, "kind": a.kind, "runs": [r.name for r in a.runs]},
        "b": {"source": b.source, "kind": b.kind, "runs": [r.name for r in b.runs]},
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
    return side["source"] if side["kind"] == "run" else f"{side['source']} ({len(runs)} runs pooled)"


def format_comparison(report: dict[str, Any]) -> str:
    """The report of :func:`compare_systems` as text: the sides, the table, the seed spreads, the notes."""
    level = round(100 * report["confidence"])
    lines = [
        f"A: {_side(report['a'])}",
        f"B: {_side(report['b'])}",
        f"{report['metric']} on split {report['split']!r}, {report['cases']} cases paired; difference B - A, "
        f"{level}% percentile bootstrap CI ({report['bootstrap_resamples']} resamples of the cases, seed "
        f"{report['seed']}), Wilcoxon signed-rank p (two-sided)",
        "",
    ]
    ci = f"{level}% CI"
    table = []
    for row in report["rows"]:
        if row["n"] == 0:
            table.append({"class": row["class"], "n": 0, "p (Wilcoxon)": row["note"]})
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
            }
        )
    lines.append(format_table(["class", "n", "mean A", "mean B", "B - A", ci, "p (Wilcoxon)"], table))
    for side, spread in report["seeds"].items():
        seeds = max(s["seeds"] for s in spread.values())
        lines += ["", f"{side}: mean ± sd (ddof=1) over {seeds} seeds of each seed's mean {report['metric']}"]
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
    """The report of :func:`compare_systems` as JSON (an undefined value, NaN, as ``null``)."""
    return json.dumps(_null_nan(report), indent=2)
