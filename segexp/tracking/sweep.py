"""Hydra multirun sweeps grouped in MLflow: one parent run per sweep, one child run per job.

:func:`open_parent` creates the sweep's parent run, tagged with the sweep folder and the
sweep overrides, and writes its id to ``<sweep dir>/mlflow_parent.json``, where every job
(in-process, joblib worker, submitit or SLURM task on a shared file system) finds it
(:func:`parent_run_id`) and tags its own run ``mlflow.parentRunId``. :func:`close_parent`
gives the parent the best child's objective and id, and counts of finished and failed
children. The Hydra callback that calls them around a sweep is
:class:`segexp.launch.sweep.MlflowSweepCallback`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from segexp.tracking.store import configure, retry_locked
from segexp.tracking.tracker import run_name_from_overrides

log = logging.getLogger(__name__)

PARENT_FILE = "mlflow_parent.json"


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


def close_parent(parent: str, uri: str, monitor: str, mode: str) -> None:
    """End the parent run with the best child's objective (metric ``best/<monitor>``) and id."""
    import mlflow

    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient()
    runs = children(parent)
    metric = f"best/{monitor}"
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
