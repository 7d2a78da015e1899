"""segexp's saved view of an experiment in the MLflow UI: the runs table with the objective and per-class Dice.

The MLflow UI (3.x) keeps the columns, sort order and expanded rows of its runs table in the
browser; the one thing a project can store on the server is a *shared view*: the experiment tag
``mlflow.sharedViewState.<key>`` holding that state as JSON, applied by opening
``#/experiments/<id>/runs?viewStateShareKey=<key>`` (what the UI's own "Share" writes). The
``workflowType=machine_learning`` parameter opens the model-training side of the UI rather than GenAI.

Each training run and each sweep adds its columns (``best/<monitor>``, ``test/dice_fg_mean``,
``test/dice/<class>``) and its sweep parent (expanded) to the view, and logs the link.
Written by hand: MLflow has no API for views; the state format is the UI's (``mlflow>=3.4``; keys it
does not know are ignored, a value it cannot parse shows an error in the UI and nothing else).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

from segexp.tracking.store import is_http, retry_locked

log = logging.getLogger(__name__)

#: The share key of segexp's view (``mlflow.sharedViewState.segexp``).
VIEW_KEY = "segexp"
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_KEY}"
#: Columns at most in the view (a tag value holds 8,000 characters at most in MLflow's stores).
MAX_COLUMNS = 40


def metric_column(name: str) -> str:
    """The runs table's column id of the metric ``name``."""
    return f"metrics.`{name}`"


def run_columns(monitor: str, class_names: Sequence[str]) -> list[str]:
    """The objective, the test foreground mean and the test Dice of every class but the background (index 0)."""
    names = [f"best/{monitor}", "test/dice_fg_mean", *(f"test/dice/{c}" for c in class_names[1:])]
    return [metric_column(n) for n in names]


def view_state(
    previous: dict[str, Any] | None, columns: Sequence[str], sort_by: str, expand: Sequence[str] = ()
) -> dict[str, Any]:
    """The view after adding ``columns`` (kept in order, earlier ones first), sorted by ``sort_by`` (a column id,
    highest first), with the runs ``expand`` expanded (sweep parents show their children)."""
    state = dict(previous or {})
    selected = [c for c in state.get("selectedColumns", []) if isinstance(c, str)]
    selected += [c for c in columns if c not in selected]
    expanded = dict(state.get("runsExpanded") or {})
    expanded.update({run_id: True for run_id in expand})
    state.update(
        selectedColumns=selected[:MAX_COLUMNS],
        orderByKey=sort_by,
        orderByAsc=False,
        runsExpanded=expanded,
        lifecycleFilter="Active",
        startTime="ALL",
    )
    return state


def view_url(tracking_uri: str, experiment_id: str) -> str:
    """The link that opens ``experiment_id`` in segexp's view: on the tracking server itself, or on
    ``mlflow ui``'s default address for a local store."""
    base = tracking_uri.rstrip("/") if is_http(tracking_uri) else "http://127.0.0.1:5000"
    return f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning&viewStateShareKey={VIEW_KEY}"


def update_view(
    experiment_id: str, columns: Sequence[str], sort_by: str, expand: Sequence[str] = (), uri: str | None = None
) -> None:
    """Add ``columns`` (and expanded ``expand`` runs) to the experiment's segexp view in the store at ``uri``
    (None: the active one). Never raises: the view only arranges the UI."""
    import mlflow

    try:
        client = mlflow.MlflowClient(tracking_uri=uri)
        tags = dict(retry_locked(client.get_experiment, experiment_id).tags)
        try:
            previous = json.loads(tags.get(VIEW_TAG, "{}"))
        except json.JSONDecodeError:
            previous = {}
        state = view_state(previous if isinstance(previous, dict) else {}, columns, sort_by, expand)
        retry_locked(client.set_experiment_tag, experiment_id, VIEW_TAG, json.dumps(state, separators=(",", ":")))
    except Exception as err:  # noqa: BLE001 - a missing view costs the columns only
        log.warning("experiment %s: segexp's MLflow view not updated: %s", experiment_id, err)
