"""Hydra multirun sweeps grouped in MLflow: one parent run per sweep, one child run per job.

:class:`MlflowSweepCallback` (configured in ``conf/hydra/default.yaml``) runs in the
process that launches the sweep. Before any job starts it creates the MLflow
store and experiment once (so parallel jobs never race to create them) and a
parent run tagged with the sweep folder and the sweep overrides; it writes the
parent's id to ``<sweep dir>/mlflow_parent.json``, where every job (in-process,
joblib worker, submitit or SLURM task on a shared file system) finds it and tags
its own run ``mlflow.parentRunId``. When the sweep ends, the parent gets the best
child's objective and id, and counts of finished and failed children.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from segexp.config.errors import TrackingUnavailable
from segexp.tracking.store import OutagePolicy, check_server, configure, retry_locked
from segexp.tracking.tracker import run_name_from_overrides

log = logging.getLogger(__name__)

PARENT_FILE = "mlflow_parent.json"


def _tracking(config: DictConfig) -> Any | None:
    tracking = config.get("tracking")
    return tracking if tracking is not None and tracking.get("enabled", False) else None


def parent_run_id(sweep_dir: Path) -> str | None:
    """The sweep's parent run id, or None outside a tracked sweep."""
    try:
        return json.loads((Path(sweep_dir) / PARENT_FILE).read_text())["run_id"]
    except (OSError, ValueError, KeyError):
        return None


class MlflowSweepCallback(Callback):
    """Creates the sweep's MLflow parent run before the jobs and closes it with the best child after them."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # The sweep folder (and paths.output_dir above it) exists before the sweeper opens its
        # storage (hparams_search: sqlite:///${paths.output_dir}/optuna.db) and before any job.
        Path(config.hydra.sweep.dir).mkdir(parents=True, exist_ok=True)
        tracking = _tracking(config)
        if tracking is None:
            return
        import mlflow

        try:  # an unreachable server stops the sweep before any job starts
            check_server(
                tracking.uri,
                float(OmegaConf.select(tracking, "outage.connect_timeout_s", default=OutagePolicy().connect_timeout_s)),
            )
        except TrackingUnavailable as err:
            log.error("%s", err)
            sys.exit(2)
        experiment_id = configure(tracking.uri, tracking.experiment, tracking.artifact_location)
        sweep_dir = Path(config.hydra.sweep.dir)
        overrides = list(config.hydra.overrides.task)
        run = retry_locked(
            mlflow.MlflowClient().create_run,
            experiment_id,
            run_name="sweep: " + run_name_from_overrides(overrides),
            tags={
                "sweep_dir": str(sweep_dir),
                "sweep_overrides": " ".join(overrides),
                "sweeper": str(config.hydra.sweeper.get("_target_", "")),
                "launcher": str(config.hydra.launcher.get("_target_", "")),
                "mlflow.note.content": "segexp-train -m " + " ".join(overrides),
            },
        )
        sweep_dir.mkdir(parents=True, exist_ok=True)
        (sweep_dir / PARENT_FILE).write_text(json.dumps({"run_id": run.info.run_id, "tracking_uri": tracking.uri}))
        log.info("MLflow parent run %s for the sweep in %s", run.info.run_id, sweep_dir)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        tracking = _tracking(config)
        if tracking is None:
            return
        parent = parent_run_id(Path(config.hydra.sweep.dir))
        if parent is None:
            return
        training = config.get("training", {})
        close_parent(
            parent,
            tracking.uri,
            str(training.get("monitor", "val_dice_fg_mean")),
            str(training.get("monitor_mode", "max")),
        )


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
