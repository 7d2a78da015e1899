"""Cross-validation as one sweep (``segexp-cv``): skip finished folds on a resume, summarise the folds at the end.

``segexp-cv cv.folds=5 ...`` (:mod:`segexp.cli.cv`) is ``segexp-train -m cv.fold=range(0,5)`` into one sweep
folder with a subfolder ``fold_<k>`` per fold, so any Hydra launcher runs the folds (in process, joblib,
submitit, SLURM) and the MLflow sweep callback makes one parent run with a child per fold.

* :func:`finished_fold` (a job, before training): a fold whose folder holds the finished-fold record is not
  trained again; resuming the sweep therefore trains only the folds that are missing (and continues an
  interrupted fold from its checkpoint: ``training.resume=auto``).
* :class:`CrossValidationCallback` (``conf/hydra/default.yaml``; at the sweep's end, before the MLflow
  callback closes the parent): :func:`finish_cross_validation` pools the held-out cases of the finished folds,
  chooses the postprocessing on them, and writes into the sweep folder and onto the parent run
  ``cv_summary.json`` (per case, per class, means, sd and bootstrap intervals), ``postprocessing.json``,
  ``cv.json`` (the folds and where their models are: what ``segexp-infer run=<cv folder>`` ensembles) and the
  table ``evaluation/cv/cases.json``; the figures become parent metrics ``cv/...``. A fold that did not finish
  is named (log, ``folds_missing``, tag ``cv.missing_folds``) and left out.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from segexp.config.options import PostprocessMode
from segexp.core.errors import EvaluationError
from segexp.core.files import atomic_write_text
from segexp.evaluation.crossval import (
    FOLD_FILE,
    SUMMARY_FILE,
    HeldOutCase,
    choose_postprocessing,
    held_out_table,
    read_fold_failure,
    read_fold_record,
    read_held_out,
    restore_fold_config,
    summarise,
    summary_metrics,
)
from segexp.evaluation.ensemble import CV_FILE, CV_FILE_KIND, open_ensemble
from segexp.evaluation.postprocess import FILE_NAME as POSTPROCESSING_FILE
from segexp.evaluation.postprocess import Postprocessing
from segexp.evaluation.reports import evaluate_run
from segexp.evaluation.scoring import class_tolerances
from segexp.tracking.runs import MLFLOW_RUN_FILE
from segexp.tracking.sweep import CV_KIND as CV_KIND_VALUE
from segexp.tracking.sweep import KIND_TAG, parent_run_id
from segexp.tracking.tracker import Tracker

log = logging.getLogger(__name__)

#: A fold's subfolder of the sweep folder (``hydra.sweep.subdir`` of ``segexp-cv``).
FOLD_DIR = "fold_{fold}"


def cv_enabled(config: Mapping[str, Any] | DictConfig) -> bool:
    """Whether ``config`` (a job's or the sweep's) is a cross-validation (``cv.folds`` set)."""
    return OmegaConf.select(config, "cv.folds", default=None) is not None  # type: ignore[arg-type]


def finished_fold(run_dir: Path) -> float | None:
    """The objective of the fold finished earlier in ``run_dir`` (None: train it)."""
    record = read_fold_record(run_dir)
    if record is None:
        return None
    log.info("fold %s finished earlier in %s: kept, not trained again", record["fold"], run_dir)
    restore_fold_config(run_dir)
    objective = record.get("objective")
    return float(objective) if objective is not None else float("nan")


@dataclass
class FoldRun:
    """One fold of a CV folder: where it trained, its MLflow run, and whether it finished (else why not)."""

    fold: int
    run_dir: Path | None
    status: str
    run_id: str | None = None
    valid_cases: list[str] = field(default_factory=list)
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "fold": self.fold,
            "run_dir": str(self.run_dir) if self.run_dir else None,
            "run_id": self.run_id,
            "status": self.status,
            "valid_cases": self.valid_cases,
            "error": self.error,
        }


def _job_fold(folder: Path) -> int | None:
    try:
        fold = OmegaConf.select(OmegaConf.load(folder / ".hydra" / "config.yaml"), "cv.fold", default=None)
    except (OSError, ValueError, TypeError):  # a folder of something else
        return None
    return int(fold) if fold is not None else None


def fold_runs(sweep_dir: Path, folds: int) -> list[FoldRun]:
    """Every fold 0..folds-1 of the CV in ``sweep_dir``: ``finished``, ``failed`` (started, did not finish: the
    error when the job recorded one) or ``missing`` (never started)."""
    found: dict[int, Path] = {}
    for folder in sorted(p for p in Path(sweep_dir).iterdir() if p.is_dir()):
        fold = _job_fold(folder)
        if fold is not None and (fold not in found or (folder / FOLD_FILE).is_file()):
            found[fold] = folder
    runs = []
    for k in range(folds):
        if k not in found:
            runs.append(FoldRun(k, None, "missing", error="never started"))
            continue
        folder = found[k]
        run_id = _run_id(folder)
        record = read_fold_record(folder)
        if record is not None:
            runs.append(FoldRun(k, folder, "finished", run_id, list(record.get("valid_cases", []))))
        else:
            why = read_fold_failure(folder) or f"did not finish (see the log in {folder})"
            runs.append(FoldRun(k, folder, "failed", run_id, error=why))
    return runs


def _run_id(folder: Path) -> str | None:
    try:
        return str(json.loads((folder / MLFLOW_RUN_FILE).read_text())["run_id"])
    except (OSError, ValueError, KeyError):
        return None


def _fold_config(run: FoldRun) -> DictConfig:
    assert run.run_dir is not None
    return OmegaConf.load(run.run_dir / ".hydra" / "config.yaml")  # type: ignore[return-value]


def finish_cross_validation(sweep_dir: Path, folds: int, tracking_uri: str | None) -> dict[str, Any] | None:
    """Summarise the CV in ``sweep_dir`` (module docstring); log it to the sweep's parent run when
    ``tracking_uri`` is given and the sweep has one. Returns the summary (None: no fold finished)."""
    sweep_dir = Path(sweep_dir)
    runs = fold_runs(sweep_dir, folds)
    missing = {r.fold: f"{r.status}: {r.error}" for r in runs if r.status != "finished"}
    for fold, why in missing.items():
        log.error("cross-validation fold %d is left out of the summary: %s", fold, why)
    finished = [r for r in runs if r.status == "finished"]
    parent = parent_run_id(sweep_dir) if tracking_uri else None
    index = {
        "kind": CV_FILE_KIND,
        "folds": folds,
        "sweep_dir": str(sweep_dir.resolve()),
        "parent_run_id": parent,
        "tracking_uri": tracking_uri if parent else None,
        "fold_runs": [r.to_json() for r in runs],
        "postprocessing": None,
    }
    if not finished:
        atomic_write_text(sweep_dir / CV_FILE, json.dumps(index, indent=2))
        log.error("cross-validation in %s: no fold finished, nothing to summarise", sweep_dir)
        return None
    config = _fold_config(finished[0])
    class_names = list(config.dataset.class_names)
    tolerances = class_tolerances(config.training.nsd_tolerance_mm, class_names)
    cases: list[HeldOutCase] = [c for r in finished for c in read_held_out(r.run_dir, r.fold)]  # type: ignore[arg-type]
    post: Postprocessing | None = None
    if str(config.training.postprocess) != PostprocessMode.none:
        post = choose_postprocessing(cases, class_names)
        post.save(sweep_dir / POSTPROCESSING_FILE)
        index["postprocessing"] = POSTPROCESSING_FILE
    summary = summarise(cases, class_names, tolerances, folds, missing, post)
    summary["fold_runs"] = index["fold_runs"]
    atomic_write_text(sweep_dir / SUMMARY_FILE, json.dumps(summary, indent=2))
    atomic_write_text(sweep_dir / CV_FILE, json.dumps(index, indent=2))
    if parent is not None and tracking_uri:
        log_to_parent(Tracker(parent, tracking_uri), sweep_dir, summary, post)
    if list(OmegaConf.select(config, "dataset.cases.test", default=[]) or []):
        summary["ensemble_test"] = ensemble_on_test(sweep_dir, tracking_uri if parent else None)
        atomic_write_text(sweep_dir / SUMMARY_FILE, json.dumps(summary, indent=2))
    log.info("%s", describe(summary))
    return summary


def ensemble_on_test(sweep_dir: Path, tracking_uri: str | None) -> dict[str, Any]:
    """The fold ensemble's own score on the held-out test split (no fold saw it), with the CV's postprocessing:
    reports in ``<sweep dir>/ensemble_test/``, metrics ``ensemble_test/...`` on the parent run; returns the means."""
    source = open_ensemble(str(sweep_dir), tracking_uri)
    if source is None:  # cannot happen after cv.json was written; named anyway
        raise EvaluationError(f"{sweep_dir}: no fold ensemble to score on the test split")
    scored = evaluate_run(source, sweep_dir / "ensemble_test", split="test", log_to_run=tracking_uri is not None)
    return {
        "folds": [f.fold for f in source.folds],
        "num_cases": scored["num_cases"],
        "mean": {name: stats["dice"]["mean"] for name, stats in scored["mean"]["per_class"].items()},
        "foreground_mean": scored["mean"]["foreground_mean"],
        "reports": str(sweep_dir / "ensemble_test"),
    }


def log_to_parent(tracker: Tracker, sweep_dir: Path, summary: Mapping[str, Any], post: Postprocessing | None) -> None:
    """The CV's files, table, metrics and tags on its parent run."""
    tracker.log_artifact(sweep_dir / SUMMARY_FILE)
    tracker.log_artifact(sweep_dir / CV_FILE, "cv")
    if post is not None:
        tracker.log_artifact(sweep_dir / POSTPROCESSING_FILE)
    tracker.log_table(held_out_table(summary), "evaluation/cv/cases.json")
    tracker.log_metrics(summary_metrics(summary), step=0)
    tags = {
        KIND_TAG: CV_KIND_VALUE,
        "cv.folds": str(summary["folds"]),
        "cv.folds_used": ",".join(str(f) for f in summary["folds_used"]),
        "cv.missing_folds": ",".join(str(m["fold"]) for m in summary["folds_missing"]) or "none",
    }
    if post is not None:
        tags.update({f"postprocess.{n}": r.describe() for n, r in post.rules.items()})
    tracker.set_tags(tags)


def describe(summary: Mapping[str, Any]) -> str:
    """The summary as a table: per class the mean Dice over held-out cases, sd, 95 % interval and n."""
    fmt = lambda v: "    -" if v is None else f"{v:.3f}"  # noqa: E731
    lines = [
        f"cross-validation: {summary['num_cases']} held-out cases, folds {summary['folds_used']} of {summary['folds']}"
    ]
    lines.append(f"{'class':<16}{'Dice':>7}{'sd':>7}{'95 % CI':>17}{'n':>4}")
    for name, stats in summary["statistics"].items():
        d = stats["dice"]
        label = "foreground mean" if name == "foreground_mean" else name
        ci = f"[{fmt(d['ci95'][0])}, {fmt(d['ci95'][1])}]"
        lines.append(f"{label:<16}{fmt(d['mean']):>7}{fmt(d['std']):>7}{ci:>17}{d['n']:>4}")
    if summary.get("postprocessing"):
        post = summary["postprocessing"]
        lines.append(
            f"after postprocessing ({len(post['rules'])} rule(s) kept): "
            f"foreground mean Dice {fmt(post['foreground_mean']['dice'])}"
        )
    if summary.get("ensemble_test"):
        test = summary["ensemble_test"]
        lines.append(
            f"fold ensemble ({len(test['folds'])} folds) on the test split ({test['num_cases']} cases, seen by no "
            f"fold): foreground mean Dice {fmt(test['foreground_mean']['dice'])}"
        )
    for missing in summary["folds_missing"]:
        lines.append(f"fold {missing['fold']} LEFT OUT: {missing['why']}")
    return "\n".join(lines)


#: Folds left out by the last CV summarised in this process (for ``segexp-cv``'s exit status); None: no CV.
LAST_MISSING: list[int] | None = None


class CrossValidationCallback(Callback):
    """At the end of a ``segexp-cv`` sweep: :func:`finish_cross_validation` (nothing for other sweeps)."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if not cv_enabled(config):
            return
        tracking = config.get("tracking")
        uri = str(tracking.uri) if tracking is not None and tracking.get("enabled", False) else None
        global LAST_MISSING
        LAST_MISSING = list(range(int(config.cv.folds)))
        try:
            summary = finish_cross_validation(Path(config.hydra.sweep.dir), int(config.cv.folds), uri)
            if summary is not None:
                LAST_MISSING = [m["fold"] for m in summary["folds_missing"]]
        except Exception as err:  # the folds' own results stay; say what failed and how to redo it
            log.error(
                "the cross-validation summary failed: %s; the folds are kept, rerun the summary with "
                "segexp-cv resume=%s",
                err,
                config.hydra.sweep.dir,
                exc_info=True,
            )
