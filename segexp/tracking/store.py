"""MLflow primitives under the outbox and the tracker: store set-up, server checks, retries, model logging.

Nothing here knows about runs in progress; :mod:`segexp.tracking.outbox` (buffering through
outages) and :mod:`segexp.tracking.tracker` (a run's lifetime) are built on it.
"""

from __future__ import annotations

import logging
import os
import random
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from segexp.core.errors import TrackingUnavailable
from segexp.core.files import sqlite_path
from segexp.models.precision import float32_while_saving

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class OutagePolicy:
    """How long logging waits for the tracking server (``tracking.outage.*``)."""

    connect_timeout_s: float = 5.0  # /health probe at start-up and before resending buffered entries
    request_timeout_s: int = 10  # MLFLOW_HTTP_REQUEST_TIMEOUT during the run
    http_retries: int = 1  # MLFLOW_HTTP_REQUEST_MAX_RETRIES during the run
    max_wait_s: float = 20.0  # total retry time of one logging call before it is buffered
    first_delay_s: float = 0.5  # first back-off delay; doubled after each failure


# --------------------------------------------------------------------------- server checks


def is_http(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def server_reachable(uri: str, timeout_s: float) -> bool:
    """True when an ``http(s)://`` tracking server answers at all (any HTTP status); non-HTTP stores: True."""
    if not is_http(uri):
        return True
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s):
            return True
    except urllib.error.HTTPError:
        return True  # it answered (auth proxy, old server without /health)
    except (OSError, ValueError):
        return False


def check_server(uri: str, timeout_s: float) -> None:
    """Raise :class:`TrackingUnavailable` (naming ``uri`` and the fixes) when the server does not answer."""
    if server_reachable(uri, timeout_s):
        return
    raise TrackingUnavailable(
        f"tracking.uri = {uri}: no MLflow tracking server answers there (waited {timeout_s:g} s). "
        "Start one with `scripts/mlflow_server.sh start` (PostgreSQL + MLflow on http://127.0.0.1:5000), "
        "point tracking.uri (or $MLFLOW_TRACKING_URI) at a running server, "
        "or track locally with tracking=sqlite (or tracking=none)"
    )


@contextmanager
def http_settings(policy: OutagePolicy) -> Iterator[None]:
    """Lower MLflow's HTTP timeout and retries for the run (defaults: 120 s x 7 retries, minutes per call).

    Variables the user set already are kept; the previous environment is restored afterwards.
    """
    wanted = {
        "MLFLOW_HTTP_REQUEST_TIMEOUT": str(int(policy.request_timeout_s)),
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(int(policy.http_retries)),
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    }
    added = [k for k in wanted if k not in os.environ]
    for key in added:
        os.environ[key] = wanted[key]
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


# --------------------------------------------------------------------------- retries


def call_with_backoff(
    fn: Callable[[], T],
    max_wait_s: float,
    first_delay_s: float = 0.5,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    retry_if: Callable[[BaseException], bool] = lambda err: True,
) -> T:
    """Call ``fn``; after a failure that ``retry_if`` accepts wait ``d, 2d, 4d, …`` (plus jitter) and retry.

    Stops retrying when the next wait would end later than ``max_wait_s`` after the first call,
    and re-raises the last error: one logging call never blocks training for much longer.
    The one retry loop of segexp (server outages and SQLite's "database is locked").
    """
    start, delay = clock(), first_delay_s
    while True:
        try:
            return fn()
        except Exception as err:
            wait = delay * random.uniform(1.0, 1.25)
            if not retry_if(err) or clock() - start + wait > max_wait_s:
                raise
            sleep(wait)
            delay *= 2


def retry_locked(fn: Callable[..., T], *args: Any, max_wait_s: float = 60.0, **kwargs: Any) -> T:
    """Call ``fn`` while SQLite says "database is locked", backing off from 0.2 s for at most ``max_wait_s``.

    Several jobs of a parallel sweep write to one SQLite store; SQLite admits one writer at a time.
    """

    def locked(err: BaseException) -> bool:
        if "database is locked" not in str(err):
            return False
        log.warning("MLflow store is locked; retrying")
        return True

    return call_with_backoff(lambda: fn(*args, **kwargs), max_wait_s=max_wait_s, first_delay_s=0.2, retry_if=locked)


def mlflow_client(uri: str) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


#: The artifact folder where ``MlflowClient.log_image(key=..., step=...)`` stores time-stepped images.
IMAGE_ARTIFACT_DIR = "images"


def image_key_and_step(artifact_path: str) -> tuple[str, int] | None:
    """The ``(key, step)`` of a time-stepped image from its artifact path, or None for another file.

    MLflow's own naming (3.x): ``images/<key, "/" as "~">+step+<step>+timestamp+<ms>+<uuid>.png``, and a
    ``+compressed.webp`` copy. Keys hold no ``+`` or ``~`` (MLflow refuses them), so the name is read back
    unambiguously; this is the one place that knows the naming.
    """
    name = artifact_path.rsplit("/", 1)[-1]
    key, found, rest = name.partition("+step+")
    step = rest.split("+", 1)[0]
    if not found or not step.isdigit():
        return None
    return key.replace("~", "/"), int(step)


#: The experiment tag that picks the MLflow UI's view of an experiment (MLflow 3: without it the UI
#: may open the GenAI view of traces); segexp's runs are model training.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"


def ensure_experiment_kind(experiment_id: str, tags: dict[str, str] | None = None) -> None:
    """Tag the experiment ``mlflow.experimentKind = custom_model_development`` when it has no kind yet.

    A kind set already (by hand in the UI, or by another tool) is kept. ``tags``: the experiment's tags
    when the caller has them (saves a request). Never raises: the tag only chooses the UI's view.
    """
    import mlflow

    try:
        if tags is None:
            tags = dict(retry_locked(mlflow.MlflowClient().get_experiment, experiment_id).tags)
        if EXPERIMENT_KIND_TAG not in tags:
            retry_locked(mlflow.MlflowClient().set_experiment_tag, experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    except Exception as err:  # noqa: BLE001 - a missing tag costs the default view only
        log.warning("experiment %s: cannot set %s: %s", experiment_id, EXPERIMENT_KIND_TAG, err)


def configure(uri: str, experiment: str, artifact_location: str | None) -> str:
    """Point MLflow at ``uri`` and return the id of ``experiment`` (created if missing), tagged as model
    training for the UI (:func:`ensure_experiment_kind`)."""
    import mlflow

    db = sqlite_path(uri)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    found = retry_locked(mlflow.get_experiment_by_name, experiment)
    if found is not None:
        ensure_experiment_kind(found.experiment_id, dict(found.tags))
        return found.experiment_id
    location = None
    if artifact_location and "://" in artifact_location:
        location = f"{artifact_location.rstrip('/')}/{experiment}"
    elif artifact_location:
        location = (Path(artifact_location).expanduser().resolve() / experiment).as_uri()
    try:
        return retry_locked(
            mlflow.create_experiment,
            experiment,
            artifact_location=location,
            tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND},
        )
    except Exception:
        found = mlflow.get_experiment_by_name(experiment)  # another job created it meanwhile
        if found is None:
            raise
        ensure_experiment_kind(found.experiment_id, dict(found.tags))
        return found.experiment_id


def log_keras_model(model: Any, name: str = "model") -> None:
    """Log ``model`` into the active MLflow run with the ``mlflow.keras`` flavour and a signature of its stored
    images (uint8, or uint16 for 16-bit slices)."""
    import mlflow.keras
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    stored = np.dtype(str(model.inputs[0].dtype)) if getattr(model, "inputs", None) else np.dtype("uint8")
    signature = ModelSignature(
        inputs=Schema([TensorSpec(stored, (-1, *model.input_shape[1:]), "image")]),
        outputs=Schema([TensorSpec(np.dtype("float32"), (-1, *model.output_shape[1:]), "probabilities")]),
    )
    # Explicit requirements: inferring them imports the model in a subprocess (slow).
    requirements = [f"keras=={_version('keras')}", f"tensorflow=={_version('tensorflow')}"]
    with float32_while_saving(model):  # the logged model predicts in fp32 wherever it is loaded
        retry_locked(mlflow.keras.log_model, model, name=name, signature=signature, pip_requirements=requirements)


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)
