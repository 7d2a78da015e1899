"""Hydra multirun sweeps grouped in MLflow: one parent run per sweep, one child run per job.

:func:`open_parent` creates the sweep's parent run, tagged with the sweep folder and the
sweep overrides, and writes its id to ``<sweep dir>/mlflow_parent.json``, where every job
(in-process, joblib worker, submitit or SLURM task on a shared file system) finds it
(:func:`parent_run_id`) and tags its own run ``mlflow.parentRunId``. :func:`close_parent`
gives the parent the best child's objective and id, and counts of finished and failed
children, and the table of its children (:data:`CHILDREN_TABLE`, best first), and registers the best
child's model as ``<tracking.registered_model>@champion``.
The Hydra callback that calls them around a sweep is :class:`segexp.launch.sweep.MlflowSweepCallback`.

Names say what varies: :func:`sweep_dimensions` reads the sweep's dimensions (the overrides that are
sweeps: ``a,b``, ``range()``, ``choice()``, ``interval()``, ``glob()``; from the command line and
``hydra.sweeper.params``), the parent is named after them (``sweep: model ∈ {resunet, flexunet}``,
``optuna: 20 trials over model, training.learning_rate``), and each job's run by its own values of those
keys only (:func:`child_run_name`: ``model=resunet``); the parent file records the keys for the jobs.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from segexp.tracking.store import configure, mlflow_client, retry_locked
from segexp.tracking.study import PRUNED_TAG
from segexp.tracking.tracker import Tracker, run_name_from_overrides
from segexp.tracking.view import metric_column, update_view, view_url

log = logging.getLogger(__name__)

PARENT_FILE = "mlflow_parent.json"
#: The parent run's tag that says what kind of sweep it is, and its value for a cross-validation (``segexp-cv``).
KIND_TAG, CV_KIND = "segexp.kind", "cv"
#: The alias the best child of the latest sweep gets in the model registry.
CHAMPION = "champion"
#: MLflow's longest run name (its database column).
MAX_RUN_NAME = 250


def _parse(line: str) -> Any | None:
    """Hydra's parse of one override (None: not an override Hydra understands)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        return OverridesParser.create().parse_override(line)
    except Exception:  # noqa: BLE001 - e.g. a value Hydra's grammar refuses: not a sweep dimension
        return None


def sweep_dimensions(overrides: Sequence[str], sweeper_params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``{key: Hydra override}`` of what a sweep varies: the overrides that are sweeps, from
    ``hydra.sweeper.params`` and then the command line (which wins for the same key, as in Hydra's
    sweepers). A key given one value on the command line is no dimension, even when the params sweep it."""
    lines = [f"{key}={value}" for key, value in (sweeper_params or {}).items()] + list(overrides)
    found: dict[str, Any] = {}
    for line in lines:
        override = _parse(line)
        if override is None:
            continue
        found.pop(override.key_or_group, None)
        if override.is_sweep_override():
            found[override.key_or_group] = override
    return found


def _dimension_text(key: str, override: Any) -> str:
    from hydra.core.override_parser.types import ChoiceSweep

    if isinstance(override.value(), ChoiceSweep):
        return f"{key} ∈ {{{', '.join(override.sweep_string_iterator())}}}"
    return f"{key}={override.input_line.split('=', 1)[1]}"


def parent_run_name(dimensions: Mapping[str, Any], overrides: Sequence[str], sweeper: str, n_trials: Any) -> str:
    """What the sweep is, short: ``sweep: model ∈ {resunet, flexunet}``, ``optuna: 20 trials over model, ...``."""
    cv_folds = next((o for o in overrides if o.startswith("cv.folds=")), None)
    if cv_folds is not None:  # segexp-cv: the folds are the sweep; name it by the rest
        rest = [o for o in overrides if not o.startswith(("cv.", "hydra.", "training.resume="))]
        name = f"cv: {cv_folds.split('=', 1)[1]} folds" + (f", {run_name_from_overrides(rest)}" if rest else "")
        return name[:MAX_RUN_NAME]
    if "optuna" in sweeper.lower():
        name = f"optuna: {n_trials} trials over {', '.join(dimensions) or 'nothing'}"
    elif dimensions:
        name = "sweep: " + " × ".join(_dimension_text(k, o) for k, o in dimensions.items())
    else:
        name = "sweep: " + run_name_from_overrides(overrides)
    if len(name) > MAX_RUN_NAME:  # long value lists: the keys say it
        name = "sweep over " + ", ".join(dimensions)
    return name[:MAX_RUN_NAME]


def sweep_keys(sweep_dir: Path) -> list[str] | None:
    """The keys the sweep in ``sweep_dir`` varies, as its parent file records them (None: no record)."""
    try:
        keys = json.loads((Path(sweep_dir) / PARENT_FILE).read_text())["varying"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return [str(k) for k in keys]


def child_run_name(sweep_dir: Path, overrides: Sequence[str]) -> str | None:
    """A sweep job's run name: its overrides of the keys the sweep varies (``model=resunet``); None when
    the sweep recorded no keys or the job overrides none of them (the caller names it by all its overrides)."""
    keys = sweep_keys(sweep_dir)
    if not keys:
        return None
    named = []
    for line in overrides:
        override = _parse(line)
        if override is not None and override.key_or_group in keys:
            named.append(line)
    return ",".join(named)[:MAX_RUN_NAME] if named else None


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
    sweeper_params: Mapping[str, Any] | None = None,
    n_trials: Any = None,
) -> str:
    """Create the sweep's parent run (and the store and experiment, once) and write its id into ``sweep_dir``.

    ``tags`` are added to the sweep folder, the overrides, the varied keys and the command (a ``sweeper``
    tag names the sweeper; ``sweeper_params``: ``hydra.sweeper.params``); returns the run id.
    """
    import mlflow

    dimensions = sweep_dimensions(overrides, sweeper_params)
    experiment_id = configure(uri, experiment, artifact_location)
    earlier = _earlier_parent(sweep_dir, uri)
    if earlier is not None:  # a resumed sweep (same folder, same store): its children stay under one parent
        retry_locked(mlflow.MlflowClient().update_run, earlier, "RUNNING")
        log.info("MLflow parent run %s of the sweep in %s continues", earlier, sweep_dir)
        return earlier
    run = retry_locked(
        mlflow.MlflowClient().create_run,
        experiment_id,
        run_name=parent_run_name(dimensions, overrides, tags.get("sweeper", ""), n_trials),
        tags={
            "sweep_dir": str(sweep_dir),
            "sweep_overrides": " ".join(overrides),
            "sweep_varying": ",".join(dimensions),
            **tags,
            "mlflow.note.content": "segexp-train -m " + " ".join(overrides),
        },
    )
    sweep_dir.mkdir(parents=True, exist_ok=True)
    record = {"run_id": run.info.run_id, "tracking_uri": uri, "varying": list(dimensions)}
    (sweep_dir / PARENT_FILE).write_text(json.dumps(record))
    log.info("MLflow parent run %s for the sweep in %s", run.info.run_id, sweep_dir)
    return str(run.info.run_id)


def _earlier_parent(sweep_dir: Path, uri: str) -> str | None:
    """The parent run an earlier launch of this sweep folder made in the same store (None: none, or another
    store, or the run is gone)."""
    try:
        record = json.loads((Path(sweep_dir) / PARENT_FILE).read_text())
    except (OSError, ValueError):
        return None
    if record.get("tracking_uri") != uri or not record.get("run_id"):
        return None
    try:
        retry_locked(mlflow_client(uri).get_run, record["run_id"])
    except Exception:  # noqa: BLE001 - deleted or unreadable: a new parent
        return None
    return str(record["run_id"])


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
    between children (the sweep's overrides, ``model/base_filters``), ``metric``, the test foreground and
    per-class Dice, wall time, parameter count (``model/num_params``) and run id (missing values None)."""
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
    # MLflow's table view reads a dot in a column name as a nested field and shows it empty: model/base_filters.
    return {column.replace(".", "/"): values for column, values in table.items()}


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


def close_parent(
    parent: str, uri: str, monitor: str, mode: str, registered_model: str | None = None, *, rank: bool = True
) -> None:
    """End the parent run with the best child's objective (metric ``best/<monitor>``) and id and the table of its
    children (:data:`CHILDREN_TABLE`); with ``registered_model``, the best child's logged model becomes its newest
    version, alias ``champion``. ``rank=False`` (a cross-validation, whose folds are one system scored on different
    cases, not candidates): no best child, no ``best/<monitor>`` and no champion; the parent ends FINISHED when
    a child did (its figures are the CV's own, :mod:`segexp.launch.crossval`)."""
    import mlflow

    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient()
    runs = children(parent)
    metric = f"best/{monitor}"
    if runs:
        Tracker(parent, uri).log_table(children_table(runs, metric, mode), CHILDREN_TABLE)
    best, value = best_child(runs, metric, mode) if rank else (None, None)
    statuses = [r.info.status for r in runs]
    tags = {
        "children": str(len(runs)),
        "children_finished": str(statuses.count("FINISHED")),
        "children_failed": str(statuses.count("FAILED")),
        "children_pruned": str(sum(PRUNED_TAG in r.data.tags for r in runs)),
    }
    if best is not None:
        tags.update(best_child_run_id=best.info.run_id, best_child_run_name=best.info.run_name or "")
        retry_locked(client.log_metric, parent, metric, value)
        if registered_model:
            version = register_champion(best, registered_model, {"sweep_parent_run_id": parent, metric: str(value)})
            if version is not None:
                tags["registered_model"] = f"{registered_model}/{version}"
    for key, text in tags.items():
        retry_locked(client.set_tag, parent, key, text)
    experiment_id = retry_locked(client.get_run, parent).info.experiment_id
    columns = [metric_column(m) for m in (metric, "test/dice_fg_mean", *per_class_metrics(runs))]
    update_view(experiment_id, columns, metric_column(metric), expand=[parent], uri=uri)
    finished = best is not None if rank else "FINISHED" in statuses
    retry_locked(client.set_terminated, parent, "FINISHED" if finished else "FAILED")
    log.info(
        "sweep parent %s: %s children (%s failed, %s pruned)%s",
        parent,
        len(runs),
        tags["children_failed"],
        tags["children_pruned"],
        f"; best {metric} = {value} ({best.info.run_name if best else 'none'})" if rank else "",
    )
    log.info("compare the sweep's runs in the MLflow UI: %s", view_url(uri, experiment_id))


def register_champion(run: Any, name: str, tags: Mapping[str, str]) -> str | None:
    """Register ``run``'s logged model as a new version of ``name`` and point the ``champion`` alias at it;
    returns the version (None: the run logged no model, or the registry refused; a warning says which)."""
    import mlflow

    models = retry_locked(
        mlflow.search_logged_models,
        experiment_ids=[run.info.experiment_id],
        filter_string=f"source_run_id = '{run.info.run_id}'",
        output_format="list",
    )
    if not models:
        log.info("best child %s logged no model (tracking.log_model=false): nothing registered", run.info.run_id)
        return None
    try:
        version = retry_locked(mlflow.register_model, models[0].model_uri, name, tags=dict(tags)).version
        retry_locked(mlflow.MlflowClient().set_registered_model_alias, name, CHAMPION, version)
    except Exception as err:  # noqa: BLE001 - the sweep's results stand without the registry entry
        log.warning("registering the best child %s as %s@%s failed: %s", run.info.run_id, name, CHAMPION, err)
        return None
    log.info("registered model %s version %s (%s@%s): run %s", name, version, name, CHAMPION, run.info.run_id)
    return str(version)


def record_failed_job(
    parent: str,
    uri: str,
    overrides: Sequence[str],
    error: BaseException,
    run_name: str | None = None,
    tags: Mapping[str, str] | None = None,
) -> None:
    """A child run for a job that failed before its own MLflow run started (e.g. an invalid combination); ``tags``
    are added (an Optuna job's trial number)."""
    import mlflow

    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient()
    experiment = retry_locked(client.get_run, parent).info.experiment_id
    run = retry_locked(
        client.create_run,
        experiment,
        run_name=run_name or run_name_from_overrides(overrides),
        tags={
            "mlflow.parentRunId": parent,
            "overrides": " ".join(overrides),
            "error": f"{type(error).__name__}: {error}"[:5000],
            "mlflow.note.content": "segexp-train " + " ".join(overrides),
            **(tags or {}),
        },
    )
    retry_locked(client.set_terminated, run.info.run_id, "FAILED")
