"""Hydra multirun sweeps grouped in MLflow: one parent run per sweep, one child run per job.

:func:`open_parent` creates the sweep's parent run, tagged with the sweep folder and the
sweep overrides, and writes its id to ``<sweep dir>/mlflow_parent.json``, where every job
(in-process, joblib worker, submitit or SLURM task on a shared file system) finds it
(:func:`parent_run_id`) and tags its own run ``mlflow.parentRunId``. :func:`close_parent`
gives the parent the best child's objective and id, counts of finished and failed
children, and the table of its children (:data:`CHILDREN_TABLE`, best first). The Hydra
callback that calls them around a sweep is :class:`segexp.launch.sweep.MlflowSweepCallback`.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from segexp.tracking.store import configure, retry_locked
from segexp.tracking.tracker import Tracker, run_name_from_overrides

log = logging.getLogger(__name__)

PARENT_FILE = "mlflow_parent.json"
EXTRA_METRICS = ("test/dice_fg_mean",)
IGNORED_PARAMS = ("paths.", "tracking.", "model.num_params")
#: The parent's MLflow table of its children (:func:`children_table`).
CHILDREN_TABLE = "sweep/children.json"


def parent_run_id(sweep_dir: Path) -> str | None:
    """The sweep's parent run id, or None outside a tracked sweep."""
    try:
        return json.loads((Path(sweep_dir) / PARENT_FILE).read_text())["run_id"]
    except (OSError, ValueError, KeyError):
        return None


def open_parent(
    uri: str,
    experiment: str,
    artifact_location: str | None,
    sweep_dir: Path,
    overrides: Sequence[str],
    tags: dict[str, str],
) -> str:
    """Create the sweep's parent run (and the store and experiment, once) and write its id into ``sweep_dir``.

    ``tags`` are added to the sweep folder, the overrides and the command; returns the run id.
    """
    import mlflow

    experiment_id = configure(uri, experiment, artifact_location)
    run = retry_locked(
        mlflow.MlflowClient().create_run,
        experiment_id,
        run_name="sweep: " + run_name_from_overrides(overrides),
        tags={
            "sweep_dir": str(sweep_dir),
            "sweep_overrides": " ".join(overrides),
            **tags,
            "mlflow.note.content": "segexp-train -m " + " ".join(overrides),
        },
    )
    sweep_dir.mkdir(parents=True, exist_ok=True)
    (sweep_dir / PARENT_FILE).write_text(json.dumps({"run_id": run.info.run_id, "tracking_uri": uri}))
    log.info("MLflow parent run %s for the sweep in %s", run.info.run_id, sweep_dir)
    return str(run.info.run_id)


def children(parent: str) -> list[Any]:
    """The child runs of ``parent`` (any status), in the parent's experiment."""
    import mlflow

    client = mlflow.MlflowClient()
    experiment = retry_locked(client.get_run, parent).info.experiment_id
    return retry_locked(
        client.search_runs, [experiment], filter_string=f"tags.mlflow.parentRunId = '{parent}'", max_results=10_000
    )


def best_child(runs: Sequence[Any], metric: str, mode: str) -> tuple[Any | None, float | None]:
    """The finished child with the best ``metric`` (max or min) and that value."""
    scored = [(r, r.data.metrics[metric]) for r in runs if r.info.status == "FINISHED" and metric in r.data.metrics]
    scored = [(r, v) for r, v in scored if v == v]  # drop NaN
    if not scored:
        return None, None
    return (max if mode == "max" else min)(scored, key=lambda rv: rv[1])


def changed_params(runs: Sequence[Any]) -> list[str]:
    """Params whose value differs between the runs (paths and tracking settings left out).

    When the runs are different networks (``model.name`` differs, e.g. ``hparams_search=architectures``),
    each network's own keys are left out (they differ by definition) and its parameter count is shown.
    """
    keys = {k for r in runs for k in r.data.params if not k.startswith(IGNORED_PARAMS)}
    if len({r.data.params.get("model.name") for r in runs}) > 1:
        shared = set.intersection(*(set(r.data.params) for r in runs))
        keys = {k for k in keys if not k.startswith("model.") or k in shared} | {"model.num_params"}
    return [k for k in sorted(keys) if len({r.data.params.get(k) for r in runs}) > 1]


def per_class_metrics(runs: Sequence[Any], prefix: str = "test/dice/") -> list[str]:
    """The per-class metrics ``<prefix><class>`` logged by any of the runs, sorted by name."""
    return sorted({m for r in runs for m in r.data.metrics if m.startswith(prefix)})


def comparison_rows(
    runs: Sequence[Any], metric: str, mode: str, extra: Sequence[str] = ()
) -> tuple[list[str], list[dict[str, Any]]]:
    """Table columns and rows (one per child), sorted by ``metric`` (best first, missing last);
    ``extra`` metrics (e.g. :func:`per_class_metrics`) are added as columns."""
    params = changed_params(runs)
    metrics = list(dict.fromkeys((metric, *EXTRA_METRICS, *extra)))
    rows = []
    for r in runs:
        row: dict[str, Any] = {"run": r.info.run_name, "status": r.info.status, "run_id": r.info.run_id}
        row.update({p: r.data.params.get(p, "") for p in params})
        for m in metrics:
            row[m] = r.data.metrics.get(m, math.nan)
        rows.append(row)
    sign = -1.0 if mode == "max" else 1.0
    rows.sort(key=lambda row: (math.isnan(row[metric]), sign * row[metric] if not math.isnan(row[metric]) else 0.0))
    return ["run", "status", *params, *metrics], rows


def children_table(runs: Sequence[Any], metric: str, mode: str) -> dict[str, list[Any]]:
    """``{column: values}``, one row per child, best ``metric`` first: run name, status, the params that differ
    between children (the sweep's overrides), ``metric``, the test foreground and per-class Dice, wall time,
    parameter count and run id (missing values None)."""
    columns, rows = comparison_rows(runs, metric, mode, per_class_metrics(runs))
    by_id = {r.info.run_id: r for r in runs}
    table: dict[str, list[Any]] = {c: [] for c in [*columns, "wall_time_s", "model.num_params", "run_id"]}
    for row in rows:
        run = by_id[row["run_id"]]
        start, end = run.info.start_time, run.info.end_time
        num_params = run.data.params.get("model.num_params")
        extra = {
            "wall_time_s": (end - start) / 1000 if start and end else None,
            "model.num_params": int(num_params) if num_params and num_params.isdigit() else None,
        }
        for column in table:
            value = extra[column] if column in extra else row.get(column)
            table[column].append(None if isinstance(value, float) and math.isnan(value) else value)
    return table


def child_artifacts(parent: str, uri: str, artifact_file: str) -> list[tuple[str, str]]:
    """``(run name, text)`` of the artifact ``artifact_file`` of every finished child of ``parent`` that has it."""
    import mlflow

    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient()
    folder = artifact_file.rpartition("/")[0] or None
    found = []
    for run in children(parent):
        if run.info.status != "FINISHED":
            continue
        if artifact_file not in [a.path for a in retry_locked(client.list_artifacts, run.info.run_id, folder)]:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            path = retry_locked(client.download_artifacts, run.info.run_id, artifact_file, tmp)
            found.append((run.info.run_name or run.info.run_id, Path(path).read_text()))
    return found


def log_to_parent(parent: str, uri: str, name: str, text: str, artifact_path: str) -> None:
    """Log ``text`` as the artifact ``<artifact_path>/<name>`` of the parent run."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_text(text)
        Tracker(parent, uri).log_artifact(path, artifact_path)


def close_parent(parent: str, uri: str, monitor: str, mode: str) -> None:
    """End the parent run with the best child's objective (metric ``best/<monitor>``) and id, and the table of its
    children (:data:`CHILDREN_TABLE`)."""
    import mlflow

    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient()
    runs = children(parent)
    metric = f"best/{monitor}"
    if runs:
        Tracker(parent, uri).log_table(children_table(runs, metric, mode), CHILDREN_TABLE)
    best, value = best_child(runs, metric, mode)
    statuses = [r.info.status for r in runs]
    tags = {
        "children": str(len(runs)),
        "children_finished": str(statuses.count("FINISHED")),
        "children_failed": str(statuses.count("FAILED")),
    }
    if best is not None:
        tags.update(best_child_run_id=best.info.run_id, best_child_run_name=best.info.run_name or "")
        retry_locked(client.log_metric, parent, metric, value)
    for key, text in tags.items():
        retry_locked(client.set_tag, parent, key, text)
    retry_locked(client.set_terminated, parent, "FINISHED" if best is not None else "FAILED")
    log.info(
        "sweep parent %s: %s children (%s failed); best %s = %s (%s)",
        parent,
        len(runs),
        tags["children_failed"],
        metric,
        value,
        best.info.run_name if best else "none",
    )


def record_failed_job(parent: str, uri: str, overrides: Sequence[str], error: BaseException) -> None:
    """A child run for a job that failed before its own MLflow run started (e.g. an invalid combination)."""
    import mlflow

    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient()
    experiment = retry_locked(client.get_run, parent).info.experiment_id
    run = retry_locked(
        client.create_run,
        experiment,
        run_name=run_name_from_overrides(overrides),
        tags={
            "mlflow.parentRunId": parent,
            "error": f"{type(error).__name__}: {error}"[:5000],
            "mlflow.note.content": "segexp-train " + " ".join(overrides),
        },
    )
    retry_locked(client.set_terminated, run.info.run_id, "FAILED")
