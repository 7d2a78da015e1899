"""Cross-validation results: every case scored by the fold that held it out, with per-class uncertainty.

A fold's training (``cv.folds`` set) ends by scoring its validation cases and keeping their label stacks
(:func:`save_held_out`: ``<run dir>/cv/valid/<case>.npz`` with ``truth``, ``pred`` (uint8 ``(S, H, W)``) and the
spacing) and writing :data:`FOLD_FILE`, the mark of a finished fold. After the sweep, :func:`summarise` pools
the held-out cases of the finished folds, as nnU-Net's ``summary.json`` of its cross-validation:

* ``metric_per_case``: each case's scores per class (Dice, IoU, HD95, precision, recall, NSD, ASSD;
  background excluded, :func:`segexp.evaluation.scoring.score_classes`) and the fold that scored it;
* ``mean`` per class and ``foreground_mean`` (the mean over classes of the per-class means);
* ``statistics`` per class and metric: mean, sample standard deviation (``ddof=1``) and a 95 % percentile
  bootstrap interval of the mean over cases (:func:`segexp.evaluation.statistics.bootstrap_ci`, 10,000
  resamples, seed 0); for the foreground mean the interval resamples cases and averages the classes each case
  has, so it is an interval of the per-case foreground mean;
* ``folds_missing``: folds that did not finish, named with the reason; their cases are left out, never
  averaged in silently (``complete`` false).

Postprocessing is chosen on the pooled held-out cases (:func:`choose_postprocessing`): nnU-Net's
``determine_postprocessing``, a rule kept only where it raises the cross-validated mean Dice of its class.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from segexp.core.errors import EvaluationError
from segexp.core.files import atomic_write_path, atomic_write_text
from segexp.evaluation.postprocess import Postprocessing, Rule, determine
from segexp.evaluation.scoring import METRICS, ClassScore, aggregate, score_classes, to_json_safe
from segexp.evaluation.statistics import bootstrap_ci

#: Written into a fold's run folder when the fold finished (its presence is what "finished" means).
FOLD_FILE = "cv_fold.json"
#: The fold's held-out cases, one ``<case>.npz`` each.
HELD_OUT_DIR = Path("cv") / "valid"
#: The CV's summary, in the sweep folder and as an artifact of the parent run.
SUMMARY_FILE = "cv_summary.json"
#: Postprocessing candidates on cross-validated cases: nnU-Net's (largest component, small components) and
#: segexp's presence test; each kept only where it raises the class's mean Dice.
CV_RULES = (Rule.min_volume, Rule.min_size, Rule.largest)
#: Bootstrap resamples and seed of the confidence intervals.
RESAMPLES, BOOTSTRAP_SEED = 10_000, 0


@dataclass
class HeldOutCase:
    """One case's labels as the fold that did not train on it predicted them: stacks ``(S, H, W)``."""

    case: str
    fold: int
    truth: np.ndarray
    pred: np.ndarray
    spacing: tuple[float, float, float] | None


def save_held_out(
    run_dir: Path, case: str, truth: np.ndarray, pred: np.ndarray, spacing: Sequence[float] | None
) -> Path:
    """Keep one held-out case's truth and prediction (uint8) and spacing in ``run_dir/cv/valid/<case>.npz``."""
    folder = Path(run_dir) / HELD_OUT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{case}.npz"
    with atomic_write_path(target) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(
            f,
            truth=np.asarray(truth, np.uint8),
            pred=np.asarray(pred, np.uint8),
            spacing=np.asarray(spacing if spacing is not None else [], np.float64),
        )
    return target


def read_held_out(run_dir: Path, fold: int) -> list[HeldOutCase]:
    """The held-out cases a fold kept (:func:`save_held_out`), in case order."""
    cases = []
    for path in sorted((Path(run_dir) / HELD_OUT_DIR).glob("*.npz")):
        try:
            with np.load(path) as data:
                spacing = tuple(float(s) for s in data["spacing"]) or None
                cases.append(HeldOutCase(path.stem, fold, data["truth"], data["pred"], spacing))  # type: ignore[arg-type]
        except (OSError, KeyError, ValueError) as err:
            raise EvaluationError(f"{path}: cannot read the fold's held-out case: {err}") from err
    return cases


#: A finished fold's run config, kept where Hydra does not rewrite it when a resumed sweep reaches the fold.
FOLD_CONFIG = Path("cv") / "config.yaml"
RUN_CONFIG = Path(".hydra") / "config.yaml"


def write_fold_record(run_dir: Path, fold: int, folds: int, valid_cases: Sequence[str], objective: float) -> Path:
    """:data:`FOLD_FILE`: the fold finished, with its validation cases and its best monitored value (and a copy of
    the run's config, :data:`FOLD_CONFIG`, for :func:`restore_fold_config`)."""
    if (Path(run_dir) / RUN_CONFIG).is_file():
        (Path(run_dir) / FOLD_CONFIG).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(Path(run_dir) / FOLD_CONFIG, (Path(run_dir) / RUN_CONFIG).read_text())
    record = {
        "fold": fold,
        "folds": folds,
        "valid_cases": sorted(valid_cases),
        "objective": objective,
        "status": "finished",
    }
    atomic_write_text(Path(run_dir) / FOLD_FILE, json.dumps(to_json_safe(record), indent=2))
    return Path(run_dir) / FOLD_FILE


def _fold_file(run_dir: Path, status: str) -> dict[str, Any] | None:
    """:data:`FOLD_FILE` of ``run_dir`` when it records ``status`` (finished or failed), else None."""
    try:
        record = json.loads((Path(run_dir) / FOLD_FILE).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("status") == status else None


def read_fold_record(run_dir: Path) -> dict[str, Any] | None:
    """A finished fold's record, None when the fold did not finish (no or unreadable :data:`FOLD_FILE`)."""
    return _fold_file(run_dir, "finished")


def restore_fold_config(run_dir: Path) -> None:
    """Put a finished fold's run config back in ``.hydra/config.yaml``: Hydra rewrites that file with its own
    composition when a resumed sweep reaches the fold, which lacks what the fold trained with (cases, plan)."""
    saved = Path(run_dir) / FOLD_CONFIG
    if saved.is_file():
        atomic_write_text(Path(run_dir) / RUN_CONFIG, saved.read_text())


def write_fold_failure(run_dir: Path, fold: int, error: BaseException) -> Path:
    """:data:`FOLD_FILE` of a fold that failed: its error, for the CV summary to name (a resume trains it again)."""
    record = {"fold": fold, "status": "failed", "error": f"{type(error).__name__}: {error}"[:2000]}
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(run_dir) / FOLD_FILE, json.dumps(record, indent=2))
    return Path(run_dir) / FOLD_FILE


def read_fold_failure(run_dir: Path) -> str | None:
    """The error a failed fold recorded (:func:`write_fold_failure`), else None."""
    record = _fold_file(run_dir, "failed")
    return str(record.get("error")) if record is not None else None


def _scores(case: HeldOutCase, num_classes: int, tolerances: Mapping[int, float], post: Postprocessing | None):
    pred = post.apply(case.pred) if post is not None else case.pred
    return score_classes(case.truth, pred, num_classes, case.spacing, tolerances)


def _interval(values: Sequence[float]) -> dict[str, Any]:
    """mean, sd (ddof=1), n and the 95 % bootstrap interval of the mean of the defined ``values``."""
    x = np.asarray([v for v in values if v is not None and not math.isnan(v)], np.float64)
    if x.size == 0:
        return {"mean": None, "std": None, "n": 0, "ci95": [None, None]}
    low, high = bootstrap_ci(x, n_resamples=RESAMPLES, seed=BOOTSTRAP_SEED)
    return {
        "mean": float(x.mean()),
        "std": float(x.std(ddof=1)) if x.size > 1 else None,
        "n": int(x.size),
        "ci95": [low, high],
    }


def class_statistics(per_case: Sequence[Mapping[int, ClassScore]], class_names: Sequence[str]) -> dict[str, Any]:
    """``{class: {metric: interval}, "foreground_mean": {metric: interval}}`` over cases (module docstring)."""
    names = list(class_names)
    keys = sorted(per_case[0]) if per_case else []
    out: dict[str, Any] = {}
    for k in keys:
        out[names[k]] = {m: _interval([getattr(c[k], m) for c in per_case]) for m in METRICS}
    fg: dict[str, Any] = {}
    for m in METRICS:
        case_means = []
        for c in per_case:
            defined = [getattr(c[k], m) for k in keys if not math.isnan(getattr(c[k], m))]
            case_means.append(float(np.mean(defined)) if defined else math.nan)
        fg[m] = _interval(case_means)
    out["foreground_mean"] = fg
    return out


def score_cases(
    cases: Sequence[HeldOutCase],
    class_names: Sequence[str],
    tolerances: Mapping[int, float],
    postprocessing: Postprocessing | None = None,
) -> dict[str, Any]:
    """``metric_per_case``, ``mean``, ``foreground_mean`` and ``statistics`` of ``cases`` (after
    ``postprocessing`` when given), JSON-safe."""
    names = list(class_names)
    per_case = [_scores(c, len(names), tolerances, postprocessing) for c in cases]
    totals = aggregate(per_case, names)
    return to_json_safe(
        {
            "metric_per_case": [
                {"case": c.case, "fold": c.fold, "metrics": {names[k]: s.as_dict() for k, s in scores.items()}}
                for c, scores in zip(cases, per_case)
            ],
            "mean": {name: {m: stats[m]["mean"] for m in METRICS} for name, stats in totals["per_class"].items()},
            "foreground_mean": totals["foreground_mean"],
            "statistics": class_statistics(per_case, names),
        }
    )


def choose_postprocessing(cases: Sequence[HeldOutCase], class_names: Sequence[str]) -> Postprocessing:
    """The rules (:data:`CV_RULES`) that raise the cross-validated mean Dice per class, kept only where they raise
    it (nnU-Net's ``determine_postprocessing``; no tie rule: many held-out cases can show a gain)."""
    return determine([(c.truth, c.pred) for c in cases], class_names, rules=CV_RULES, keep_harmless=False)


def summarise(
    cases: Sequence[HeldOutCase],
    class_names: Sequence[str],
    tolerances: Mapping[int, float],
    folds: int,
    missing: Mapping[int, str],
    postprocessing: Postprocessing | None,
) -> dict[str, Any]:
    """The content of :data:`SUMMARY_FILE` (module docstring); ``missing``: fold -> why it is left out."""
    if not cases:
        raise EvaluationError("cross-validation: no fold finished, nothing to summarise")
    names = list(class_names)
    spacings = {c.spacing is not None for c in cases}
    summary: dict[str, Any] = {
        "method": f"{folds}-fold cross-validation by patient: every case scored by the fold that held it out",
        "folds": folds,
        "folds_used": sorted({c.fold for c in cases}),
        "folds_missing": [{"fold": k, "why": why} for k, why in sorted(missing.items())],
        "complete": not missing,
        "num_cases": len(cases),
        "class_names": names,
        "hd95_units": "mm" if spacings == {True} else "px",
        "nsd_tolerance": {names[k]: t for k, t in tolerances.items()},
        "confidence_interval": f"95 % percentile bootstrap over cases ({RESAMPLES} resamples, seed {BOOTSTRAP_SEED})",
        **score_cases(cases, names, tolerances),
    }
    if postprocessing is not None:
        summary["postprocessing"] = {
            "rules": {n: r.describe() for n, r in postprocessing.active.items()},
            "chosen_by": "per class, kept only if it raises the cross-validated mean Dice (nnU-Net)",
            **{
                k: v for k, v in score_cases(cases, names, tolerances, postprocessing).items() if k != "metric_per_case"
            },
        }
    return summary


def held_out_table(summary: Mapping[str, Any]) -> dict[str, list[Any]]:
    """One row per held-out case and class (case, fold, class, Dice, IoU, HD95, NSD, ASSD), the lowest Dice
    first: the parent run's ``evaluation/cv/cases.json``."""
    rows = [
        (r["case"], r["fold"], name, s["dice"], s["iou"], s["hd95"], s.get("nsd"), s.get("assd"))
        for r in summary["metric_per_case"]
        for name, s in r["metrics"].items()
    ]
    rows.sort(key=lambda r: (r[3] is None, r[3] if r[3] is not None else 0.0, r[0], r[2]))
    columns = ("case", "fold", "class", "dice", "iou", "hd95", "nsd", "assd")
    return {c: [r[i] for r in rows] for i, c in enumerate(columns)}


def summary_metrics(summary: Mapping[str, Any], prefix: str = "cv") -> dict[str, float]:
    """Parent metrics: ``cv/<metric>/<class>``, ``cv/<metric>_fg_mean``, and for Dice the interval
    (``cv/dice_ci_low/<class>``, ``cv/dice_ci_high/<class>``, ``cv/dice_std/<class>``); after postprocessing
    ``cv_postprocessed/...``."""
    out: dict[str, float] = {}

    def add(source: Mapping[str, Any], p: str) -> None:
        for name, stats in source["mean"].items():
            for metric, value in stats.items():
                if value is not None:
                    out[f"{p}/{metric}/{name}"] = float(value)
        for metric, value in source["foreground_mean"].items():
            if value is not None:
                out[f"{p}/{metric}_fg_mean"] = float(value)
        for name, stats in source["statistics"].items():
            dice = stats["dice"]
            suffix = "fg_mean" if name == "foreground_mean" else name
            for key, value in (("ci_low", dice["ci95"][0]), ("ci_high", dice["ci95"][1]), ("std", dice["std"])):
                if value is not None:
                    out[f"{p}/dice_{key}/{suffix}"] = float(value)

    add(summary, prefix)
    if summary.get("postprocessing"):
        add(summary["postprocessing"], f"{prefix}_postprocessed")
    return out
