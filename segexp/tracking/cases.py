"""Per-case scores of a run, a sweep or a cross-validation, for comparing two systems case by case.

A *system* is a single run (MLflow run id, training run folder, ``models:/<name>@<alias>``) or a sweep / CV
parent (its MLflow run id or the sweep folder holding ``mlflow_parent.json``), whose finished children are pooled.
A run's scores are its evaluation's table of every case and class: the MLflow artifact
``evaluation/<split>/cases.json`` (:func:`segexp.evaluation.reports.case_table`), else, for a run folder, its
``evaluation/evaluation.csv`` when ``evaluation/summary.json`` says it scored that split.

Which split: the one asked for; when none is asked, ``valid`` for a cross-validation parent (tag
``segexp.kind=cv``: each fold's child scored its held-out cases as ``evaluation/valid/cases.json``, so the
children together score every case once, cross-validated) and ``test`` for anything else
(:func:`default_split`).
"""

from __future__ import annotations

import csv
import json
import math
import tempfile
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from segexp.core.errors import RunError
from segexp.tracking.runs import MLFLOW_RUN_FILE, RUN_ID, registered_run_id
from segexp.tracking.store import mlflow_client, retry_locked
from segexp.tracking.sweep import CV_KIND, KIND_TAG, PARENT_FILE, changed_params, children

#: ``{(case, class): score}``; NaN where the score is undefined (e.g. Dice of a class absent from truth and prediction).
Scores = dict[tuple[str, str], float]

#: The tag that says what a parent run groups; ``cv``: the folds of a cross-validation (``segexp-cv``).
#: The split compared when none is given: a CV parent's folds' held-out cases, else the test split.
CV_SPLIT = "valid"
DEFAULT_SPLIT = "test"


@dataclass
class RunScores:
    """One run's per-case scores: its name, MLflow id (None: a run folder without MLflow), params, ``scores``."""

    name: str
    run_id: str | None
    params: dict[str, str]
    scores: Scores


@dataclass
class System:
    """What one side of a comparison is: ``source`` as given, ``kind`` (``run``, ``parent`` or ``cv``: a
    cross-validation parent), its ``runs`` (one, or the parent's finished children), the ``split`` they were
    scored on and ``notes`` (children left out, and why)."""

    source: str
    kind: str
    runs: list[RunScores]
    split: str = DEFAULT_SPLIT
    notes: list[str] = field(default_factory=list)

    def pooled(self) -> Scores:
        """``{(case, class): score}`` over the runs: each case scored by the runs that scored it, their mean where
        several did (a CV parent: every case once, by its fold; a seeds sweep: the mean over seeds); NaN when
        none has a defined score."""
        found: dict[tuple[str, str], list[float]] = defaultdict(list)
        for run in self.runs:
            for key, value in run.scores.items():
                found[key].append(value)
        pooled = {}
        for key, values in found.items():
            finite = [v for v in values if not math.isnan(v)]
            pooled[key] = sum(finite) / len(finite) if finite else math.nan
        return pooled

    def varies_only_seed(self) -> bool:
        """A parent whose finished children differ only in ``seed`` (paths and tracking settings aside)."""
        return self.kind == "parent" and len(self.runs) > 1 and changed_params_of(self.runs) == ["seed"]


def default_split(split: str | None, tags: Mapping[str, str]) -> str:
    """``split`` when given; else :data:`CV_SPLIT` for a run tagged ``segexp.kind=cv`` (a cross-validation
    parent), :data:`DEFAULT_SPLIT` for any other."""
    if split is not None:
        return split
    return CV_SPLIT if tags.get(KIND_TAG) == CV_KIND else DEFAULT_SPLIT


def changed_params_of(runs: Sequence[RunScores]) -> list[str]:
    """:func:`segexp.tracking.sweep.changed_params` of :class:`RunScores` (which carry only their params)."""

    return changed_params([SimpleNamespace(data=SimpleNamespace(params=r.params)) for r in runs])


def _number(value: Any) -> float:
    """A score from a table cell: None, ``""`` or ``"nan"`` is NaN."""
    if value is None or value == "":
        return math.nan
    return float(value)


def scores_from_rows(rows: Sequence[Mapping[str, Any]], metric: str, where: str) -> Scores:
    """``{(case, class): metric}`` of table rows with columns ``case``, ``class`` and ``metric``."""
    if rows and metric not in rows[0]:
        columns = ", ".join(rows[0])
        raise RunError(f"{where}: no column {metric!r} (it has {columns})")
    return {(str(r["case"]), str(r["class"])): _number(r[metric]) for r in rows}


def _table_rows(text: str) -> list[dict[str, Any]]:
    """The rows of an MLflow table artifact (pandas ``orient="split"`` JSON: ``columns`` and ``data``)."""
    table = json.loads(text)
    return [dict(zip(table["columns"], row)) for row in table["data"]]


def cases_artifact(split: str) -> str:
    return f"evaluation/{split}/cases.json"


def read_run_scores(
    uri: str | None, run_id: str | None, run_dir: Path | None, split: str, metric: str, where: str
) -> Scores:
    """The per-case ``metric`` of one run on ``split``: its MLflow table ``evaluation/<split>/cases.json``, else
    the run folder's ``evaluation/evaluation.csv`` (when its ``summary.json`` is of ``split``). Raises
    :class:`RunError` naming the run and what it lacks."""
    artifact = cases_artifact(split)
    if run_id is not None and uri is not None:
        client = mlflow_client(uri)
        folder = artifact.rpartition("/")[0]
        if artifact in [a.path for a in retry_locked(client.list_artifacts, run_id, folder)]:
            with tempfile.TemporaryDirectory() as tmp:
                path = retry_locked(client.download_artifacts, run_id, artifact, tmp)
                return scores_from_rows(_table_rows(Path(path).read_text()), metric, f"{where}: {artifact}")
    if run_dir is not None and (run_dir / "evaluation" / "evaluation.csv").is_file():
        summary = run_dir / "evaluation" / "summary.json"
        scored = json.loads(summary.read_text()).get("split") if summary.is_file() else None
        if scored == split:
            with open(run_dir / "evaluation" / "evaluation.csv", newline="") as f:
                return scores_from_rows(list(csv.DictReader(f)), metric, f"{where}: evaluation/evaluation.csv")
    raise RunError(
        f"{where}: no per-case scores of split {split!r} (no MLflow table {artifact}"
        + (", no evaluation/evaluation.csv of that split in its folder" if run_dir is not None else "")
        + f"); evaluate it first: segexp-evaluate run=<it> split={split}"
    )


def _run_record(run_dir: Path) -> tuple[str | None, str | None]:
    record = run_dir / MLFLOW_RUN_FILE
    if not record.is_file():
        return None, None
    data = json.loads(record.read_text())
    return data.get("run_id"), data.get("tracking_uri")


def open_system(source: str, split: str | None, metric: str, tracking_uri: str) -> System:
    """The system ``source`` names, with its runs' per-case ``metric`` on ``split`` (None: :func:`default_split`):
    a sweep folder (``mlflow_parent.json``) or a parent run id (a run with children): its finished children; a
    run folder, a run id or a registered model (``models:/...``): that run."""
    path = Path(source).expanduser()
    if path.is_dir():
        if (path / PARENT_FILE).is_file():
            record = json.loads((path / PARENT_FILE).read_text())
            uri = record.get("tracking_uri") or tracking_uri
            return _parent_system(source, _get_run(record["run_id"], uri), uri, split, metric)
        run_id, uri = _run_record(path)
        chosen = split or DEFAULT_SPLIT
        scores = read_run_scores(uri, run_id, path, chosen, metric, f"run folder {source}")
        params = _params(uri, run_id) if run_id and uri else {}
        return System(source, "run", [RunScores(path.name, run_id, params, scores)], chosen)
    if source.startswith("models:/"):
        run_id = registered_run_id(source, tracking_uri)
    elif RUN_ID.match(source):
        run_id = source
    else:
        raise RunError(
            f"{source!r} is neither a run or sweep folder nor an MLflow run id (32 hex characters) nor a "
            "registered model (models:/<name>@<alias>)"
        )
    run = _get_run(run_id, tracking_uri)
    if children(run_id):
        return _parent_system(source, run, tracking_uri, split, metric)
    chosen = split or DEFAULT_SPLIT
    run_dir = Path(run.data.tags["run_dir"]) if "run_dir" in run.data.tags else None
    where = f"run {run.info.run_name or run_id} ({run_id})"
    scores = read_run_scores(tracking_uri, run_id, run_dir, chosen, metric, where)
    name = run.info.run_name or run_id
    return System(source, "run", [RunScores(name, run_id, dict(run.data.params), scores)], chosen)


def _get_run(run_id: str, uri: str) -> Any:
    """The MLflow run ``run_id`` at ``uri``; :class:`RunError` when it cannot be read."""
    from mlflow.exceptions import MlflowException

    try:
        return retry_locked(mlflow_client(uri).get_run, run_id)
    except MlflowException as err:
        raise RunError(f"MLflow run {run_id} at {uri}: {str(err).splitlines()[0]}") from err


def _params(uri: str, run_id: str) -> dict[str, str]:
    return dict(retry_locked(mlflow_client(uri).get_run, run_id).data.params)


def _parent_system(source: str, parent: Any, uri: str, split: str | None, metric: str) -> System:
    """The finished children of the MLflow run ``parent``, scored on ``split`` (None: :func:`default_split` of
    the parent's tags: ``valid`` for a CV parent)."""
    import mlflow

    mlflow.set_tracking_uri(uri)  # children() searches the current store
    tags = parent.data.tags
    chosen = default_split(split, tags)
    runs, notes = [], []
    for child in sorted(children(parent.info.run_id), key=lambda r: r.info.run_name or ""):
        name = child.info.run_name or child.info.run_id
        if child.info.status != "FINISHED":
            notes.append(f"{source}: child {name} left out ({child.info.status})")
            continue
        run_dir = Path(child.data.tags["run_dir"]) if "run_dir" in child.data.tags else None
        where = f"{source}: child {name} ({child.info.run_id})"
        scores = read_run_scores(uri, child.info.run_id, run_dir, chosen, metric, where)
        runs.append(RunScores(name, child.info.run_id, dict(child.data.params), scores))
    kind = CV_KIND if tags.get(KIND_TAG) == CV_KIND else "parent"
    if not runs:
        what = "cross-validation" if kind == CV_KIND else "sweep"
        raise RunError(f"{source}: {what} parent {parent.info.run_id} has no finished child runs")
    return System(source, kind, runs, chosen, notes)
