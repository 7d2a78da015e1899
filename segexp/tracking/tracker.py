"""MLflow tracking of a run: store set-up, params, tags, metric names and run status.

Default store: SQLite at ``<paths.output_dir>/mlflow.db`` with artifacts in
``<paths.output_dir>/mlartifacts``; ``tracking.uri`` may name a server instead.
A run that raises is ended FAILED (its error as the ``error`` tag), one that is
interrupted (Ctrl-C, SIGTERM turned into KeyboardInterrupt by the command, a requeueing SystemExit) KILLED,
never left RUNNING. A training run's calls go through :mod:`segexp.tracking.outbox`: a tracking server
that goes away mid-run delays them (buffered in the run folder, sent when it is back), it never
stops training.
"""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from segexp.tracking.outbox import Outbox, send_entry
from segexp.tracking.store import (
    IMAGE_ARTIFACT_DIR,
    OutagePolicy,
    configure,
    ensure_experiment_kind,
    image_key_and_step,
    mlflow_client,
    retry_locked,
)
from segexp.tracking.view import update_view, view_url

log = logging.getLogger(__name__)
T = TypeVar("T")

#: MLflow's limit on one param value (MLflow 3); longer values are truncated.
MAX_PARAM_LENGTH = 6000


def flatten_config(cfg: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Flatten nested mappings/lists to ``{"model.base_kernels": "[11, 11]", ...}`` strings.

    Lists of scalars stay one value (as written on the command line); mappings recurse.
    """
    flat: dict[str, str] = {}
    for key, value in cfg.items():
        full = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_config(value, f"{full}."))
            if not value:
                flat[full] = "{}"
        else:
            text = str(value)
            flat[full] = text if len(text) <= MAX_PARAM_LENGTH else text[: MAX_PARAM_LENGTH - 3] + "..."
    return flat


def git_commit(repo: Path) -> str:
    """``HEAD`` of the git checkout at ``repo`` (suffixed ``-dirty`` with local changes), or ``unknown``."""
    try:
        head = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("-dirty" if dirty else "")


def run_name_from_overrides(overrides: Sequence[str], fallback: str = "default") -> str:
    """Run name from command-line overrides (``model.base_filters=8,training.epochs=2``), else ``fallback``.

    Overrides of where files go (``paths.*``, ``hydra.*``) say nothing about the experiment and are left out.
    A sweep's child is named by the overrides that vary between its jobs only
    (:func:`segexp.tracking.sweep.child_run_name`).
    """
    named = [o for o in overrides if not o.lstrip("+~").startswith(("paths.", "hydra."))]
    return ",".join(named) if named else fallback


def system_metrics_available() -> bool:
    """True when MLflow can sample system metrics here (it needs ``psutil``); else a warning, once per call."""
    import importlib.util

    if importlib.util.find_spec("psutil") is not None:
        return True
    log.warning("tracking.system_metrics: psutil is not installed (pip install psutil); no system/* metrics")
    return False


class Tracker:
    """Logging calls of one run; every method is a no-op when tracking is disabled.

    With an :class:`~segexp.tracking.outbox.Outbox` (training runs) a call the server does not take is
    retried with back-off, then buffered in the run folder and sent later: logging never
    stops the training. Without one, calls go straight to the store (retrying a locked SQLite).
    """

    def __init__(self, run_id: str | None = None, uri: str | None = None, outbox: Outbox | None = None) -> None:
        self.run_id = run_id
        self.uri = uri
        self.outbox = outbox
        #: The status :func:`tracked_run` ends a run with that raised nothing (KILLED: an Optuna trial pruned).
        self.final_status = "FINISHED"

    @property
    def enabled(self) -> bool:
        return self.run_id is not None

    def _submit(self, entry: dict[str, Any]) -> None:
        if self.outbox is not None:
            self.outbox.submit(entry)
            return
        import mlflow

        assert self.run_id is not None  # every caller submits only when enabled
        send_entry(self.uri or mlflow.get_tracking_uri(), self.run_id, entry)

    def log_params(self, params: Mapping[str, str]) -> None:
        if self.enabled:
            self._submit({"kind": "params", "params": {k: str(v) for k, v in params.items()}})

    def set_tags(self, tags: Mapping[str, str]) -> None:
        if self.enabled:
            self._submit({"kind": "tags", "tags": {k: str(v) for k, v in tags.items()}})

    def delete_tag(self, key: str) -> None:
        """Remove the tag ``key`` (none: nothing happens); buffered like any call when the server is away."""
        if self.enabled:
            self._submit({"kind": "delete_tag", "key": key})

    def add_to_view(self, columns: Sequence[str], sort_by: str) -> str | None:
        """Add ``columns`` to segexp's view of this run's experiment in the MLflow UI
        (:mod:`segexp.tracking.view`); returns the link that opens it (None when tracking is off or the
        store cannot be read). Never raises: the view only arranges the UI."""
        if not self.enabled:
            return None
        import mlflow

        try:
            experiment_id = retry_locked(self._client().get_run, self.run_id).info.experiment_id
        except Exception as err:  # noqa: BLE001 - e.g. the server is down: the run's data is safe in the outbox
            log.warning("segexp's MLflow view not updated: %s", err)
            return None
        update_view(experiment_id, columns, sort_by, uri=self.uri)
        return view_url(self.uri or mlflow.get_tracking_uri(), experiment_id)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        if self.enabled:
            values = {k: float(v) for k, v in metrics.items()}
            self._submit({"kind": "metrics", "metrics": values, "step": int(step), "timestamp": _now_ms()})

    def log_image(self, key: str, image: np.ndarray, step: int) -> None:
        if self.enabled:
            self._submit({"kind": "image", "key": key, "step": int(step), "timestamp": _now_ms(), "array": image})

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        if self.enabled and path.exists():
            self._submit({"kind": "artifact", "path": str(Path(path).resolve()), "artifact_path": artifact_path})

    def log_table(self, data: Mapping[str, Sequence[Any]], artifact_file: str) -> None:
        """Log ``data`` (``{column: values}``, JSON values) as the MLflow table ``artifact_file`` (``.json``),
        shown in the run's artifacts and read back with ``mlflow.load_table``; logging it again replaces it."""
        if self.enabled:
            columns = {str(k): list(v) for k, v in data.items()}
            self._submit({"kind": "table", "data": columns, "artifact_file": artifact_file})

    def log_keras_model(self, model: Any, name: str = "model") -> None:
        """Log ``model`` with the ``mlflow.keras`` flavour: stored images in (uint8, or 16-bit), probabilities out."""
        if self.enabled:
            self._submit({"kind": "model", "name": name, "model": model})

    # -- reading the run back (a reopened run: what is there already); these need the server

    def _client(self) -> Any:
        import mlflow

        return mlflow_client(self.uri or mlflow.get_tracking_uri())

    def tags(self) -> dict[str, str]:
        """The run's tags as the store has them (empty when tracking is disabled)."""
        if not self.enabled:
            return {}
        return dict(retry_locked(self._client().get_run, self.run_id).data.tags)

    def metric_steps(self, key: str) -> set[int]:
        """The steps at which the store holds a value of metric ``key``."""
        if not self.enabled:
            return set()
        return {m.step for m in retry_locked(self._client().get_metric_history, self.run_id, key)}

    def logged_image_steps(self) -> dict[str, set[int]]:
        """``{key: steps}`` of the time-stepped images (:meth:`log_image`) the store holds."""
        if not self.enabled:
            return {}
        found: dict[str, set[int]] = {}
        for artifact in retry_locked(self._client().list_artifacts, self.run_id, IMAGE_ARTIFACT_DIR):
            key_step = image_key_and_step(artifact.path)
            if key_step is not None:
                found.setdefault(key_step[0], set()).add(key_step[1])
        return found

    def mark_resumed(self, epoch: int) -> int:
        """Tag the reopened run as resumed after ``epoch`` epochs (``resumed``: how often, ``resumed_<n>_at_epoch``);
        the previous attempt's ``error`` tag moves to ``previous_error`` (it is being repaired). Returns n."""
        if not self.enabled:
            return 0
        tags = self.tags()
        if "error" in tags:
            self.set_tags({"previous_error": tags["error"]})
            self.delete_tag("error")
        count = int(tags.get("resumed", "0")) + 1
        self.set_tags({"resumed": str(count), f"resumed_{count}_at_epoch": str(epoch)})
        return count

    def end(self, status: str) -> None:
        """Set the run's final status (buffered like any call when the server is away)."""
        import mlflow

        if not self.enabled:
            return
        if self.outbox is None:
            retry_locked(mlflow.end_run, status=status)
            return
        self._submit({"kind": "terminated", "status": status, "end_time": _now_ms()})
        try:  # leave MLflow's active run; the status is already set (or buffered)
            if self.outbox.pending:
                mlflow.end_run(status=status)  # pops the run first, then fails to reach the server
            else:
                retry_locked(mlflow.end_run, status=status)
        except Exception as err:
            log.debug("end_run: %s", err)
        self.outbox.close()


def _now_ms() -> int:
    return int(time.time() * 1000)


@contextmanager
def tracked_run(
    enabled: bool,
    *,
    uri: str,
    experiment: str,
    artifact_location: str | None,
    run_name: str,
    tags: Mapping[str, str],
    description: str,
    resume_run_id: str | None = None,
    parent_run_id: str | None = None,
    keep_status: bool = True,
    run_dir: Path | None = None,
    outage: OutagePolicy | None = None,
    system_metrics: bool = False,
) -> Iterator[Tracker]:
    """Start an MLflow run (or a disabled :class:`Tracker`) and always end it with a status.

    With ``resume_run_id`` the existing run is reopened (e.g. to add its evaluation); it ends
    with the status it had, and a failure is recorded as the ``error`` tag only; with
    ``keep_status=False`` (a resumed training) it ends FINISHED, FAILED or KILLED like a new run.
    With ``parent_run_id`` the run is a child of a sweep's parent run (``mlflow.parentRunId``).
    With ``run_dir`` logging survives tracking-server outages (:mod:`segexp.tracking.outbox`, policy ``outage``):
    what cannot be sent is kept in the run folder, and even the final status never raises.
    With ``system_metrics`` MLflow samples CPU, memory, disk, network (and GPU with ``nvidia-ml-py``) into
    ``system/*`` metrics every 10 s (``MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL`` changes it) in a daemon
    thread of its own: a server that does not answer ends that sampling (with a warning), never the run.
    """
    if not enabled:
        yield Tracker(None)
        return
    import mlflow

    sample = system_metrics and system_metrics_available()
    if resume_run_id is not None:
        mlflow.set_tracking_uri(uri)
        previous = retry_locked(mlflow.get_run, resume_run_id).info.status if keep_status else None
        run = retry_locked(mlflow.start_run, run_id=resume_run_id, log_system_metrics=sample)
        ensure_experiment_kind(run.info.experiment_id)
    else:
        experiment_id = configure(uri, experiment, artifact_location)
        all_tags = {**tags, "mlflow.note.content": description}
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        run = retry_locked(
            mlflow.start_run,
            experiment_id=experiment_id,
            run_name=run_name,
            tags=all_tags,
            log_system_metrics=sample,
        )
        previous = None
        log.info("MLflow run %s (%s) in experiment %r at %s", run.info.run_id, run_name, experiment, uri)
    run_id = run.info.run_id
    outbox = Outbox(run_dir, run_id, uri, outage or OutagePolicy()) if run_dir is not None else None
    tracker = Tracker(run_id, uri, outbox)
    try:
        yield tracker
    except (KeyboardInterrupt, SystemExit) as err:  # SystemExit: e.g. submitit requeueing a pre-empted job
        tracker.set_tags({"error": f"interrupted ({type(err).__name__}{f': {err}' if str(err) else ''})"})
        tracker.end(previous or "KILLED")
        raise
    except BaseException as err:
        tracker.set_tags({"error": f"{type(err).__name__}: {err}"[:5000]})
        tracker.end(previous or "FAILED")
        raise
    else:
        tracker.end(previous or tracker.final_status)
