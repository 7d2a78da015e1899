"""Tracking outages: logging that retries, buffers what cannot be sent, and uploads it later.

A long training run must never die because the tracking server went away. Every MLflow
call of a run goes through :meth:`Outbox.submit`:

1. older entries still waiting are sent first (after a quick ``/health`` probe of the server);
2. the call is retried with exponential back-off for at most ``max_wait_s`` seconds;
3. what still fails is kept in memory and appended to ``<run_dir>/mlflow_outbox.jsonl``
   (artifacts, images and models are copied to ``<run_dir>/mlflow_outbox/``).

When the server answers again, the next logging call (the next epoch at the latest) sends the
buffered entries in order. Whatever is left at the end of the run stays in the run folder;
upload it into the same MLflow run with::

    segexp-upload <run_dir>            # or: python -m segexp.cli.upload <run_dir>

Entries are removed from the file as they are sent, and metrics carry their original
timestamps (MLflow stores a metric value once per key, step and timestamp), so running the
command again, or after an interrupted upload, does not duplicate anything.

An entry is a dict with a ``kind``; :data:`KINDS` holds how each kind is sent, named in
messages and kept on disk (:class:`EntryKind`): a new kind is one entry there.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import shutil
import tempfile
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from segexp.core.errors import TrackingUnavailable
from segexp.core.files import atomic_write_text
from segexp.models.saving import load_keras_model, save_keras_model
from segexp.tracking.runs import MLFLOW_RUN_FILE
from segexp.tracking.store import (
    OutagePolicy,
    call_with_backoff,
    check_server,
    http_settings,
    log_keras_model,
    mlflow_client,
    retry_locked,
    server_reachable,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

OUTBOX_FILE = "mlflow_outbox.jsonl"
OUTBOX_DIR = "mlflow_outbox"
UPLOAD_COMMAND = "segexp-upload {run_dir}   (or: python -m segexp.cli.upload {run_dir})"


# --------------------------------------------------------------------------- entry kinds


@dataclass(frozen=True)
class Destination:
    """Where an entry goes: the MLflow run ``run_id`` at ``uri``; relative paths of buffered entries are under
    ``base`` (the run folder)."""

    uri: str
    run_id: str
    client: Any  # mlflow.MlflowClient of uri
    base: Path | None

    def local(self, entry: Mapping[str, Any], key: str = "path") -> Path:
        """The file ``entry[key]`` names, on this machine."""
        path = Path(entry[key])
        return path if path.is_absolute() or self.base is None else self.base / path


def _send_params(to: Destination, entry: Mapping[str, Any]) -> None:
    from mlflow.entities import Param

    items = [Param(k, v) for k, v in entry["params"].items()]
    for start in range(0, len(items), 100):  # at most 100 params per batch
        retry_locked(to.client.log_batch, to.run_id, params=items[start : start + 100], synchronous=True)


def _send_tags(to: Destination, entry: Mapping[str, Any]) -> None:
    from mlflow.entities import RunTag

    tags = [RunTag(k, v) for k, v in entry["tags"].items()]
    retry_locked(to.client.log_batch, to.run_id, tags=tags, synchronous=True)


def _send_delete_tag(to: Destination, entry: Mapping[str, Any]) -> None:
    if entry["key"] in retry_locked(to.client.get_run, to.run_id).data.tags:  # sent twice (a lost reply): done
        retry_locked(to.client.delete_tag, to.run_id, entry["key"])


def _send_metrics(to: Destination, entry: Mapping[str, Any]) -> None:
    from mlflow.entities import Metric

    ts, step = int(entry["timestamp"]), int(entry["step"])
    metrics = [Metric(k, float(v), ts, step) for k, v in entry["metrics"].items()]
    retry_locked(to.client.log_batch, to.run_id, metrics=metrics, synchronous=True)


def _send_image(to: Destination, entry: Mapping[str, Any]) -> None:
    image = entry.get("array")
    if image is None:
        from PIL import Image

        image = np.asarray(Image.open(to.local(entry)))
    retry_locked(
        to.client.log_image,
        to.run_id,
        image,
        key=entry["key"],
        step=int(entry["step"]),
        timestamp=int(entry["timestamp"]),
        synchronous=True,
    )


def _keep_image(entry: Mapping[str, Any], folder: Path) -> Path:
    from PIL import Image

    copy = folder / "image.png"
    Image.fromarray(np.asarray(entry["array"])).save(copy)
    return copy


def _send_artifact(to: Destination, entry: Mapping[str, Any]) -> None:
    path = to.local(entry)
    log_fn = to.client.log_artifacts if path.is_dir() else to.client.log_artifact
    retry_locked(log_fn, to.run_id, str(path), entry.get("artifact_path"))


def _keep_artifact(entry: Mapping[str, Any], folder: Path) -> Path:
    source = Path(entry["path"])
    copy = folder / source.name
    if source.is_dir():
        shutil.copytree(source, copy)
    elif source.exists():
        shutil.copy2(source, copy)
    return copy


def _send_table(to: Destination, entry: Mapping[str, Any]) -> None:
    import pandas as pd

    retry_locked(_put_table, to, pd.DataFrame(entry["data"]), entry["artifact_file"])


def _put_table(to: Destination, table: Any, artifact_file: str) -> None:
    """``MlflowClient.log_table`` appends to a table already there: a table logged again (a second evaluation of
    the split, an entry sent twice after a lost reply) replaces the file instead."""
    folder = posixpath.dirname(artifact_file) or None
    if artifact_file not in [a.path for a in to.client.list_artifacts(to.run_id, folder)]:
        to.client.log_table(to.run_id, table, artifact_file)
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / posixpath.basename(artifact_file)
        table.to_json(path, orient="split", index=False)  # as log_table writes it
        to.client.log_artifact(to.run_id, str(path), folder)


def _send_model_entry(to: Destination, entry: Mapping[str, Any]) -> None:
    model = entry["model"] if entry.get("model") is not None else _load_saved_model(to.local(entry))
    _send_model(to.uri, to.run_id, model, entry.get("name", "model"))


def _keep_model(entry: Mapping[str, Any], folder: Path) -> Path:
    copy = folder / "model.keras"
    if entry.get("model") is not None:
        save_keras_model(entry["model"], copy)
    else:
        shutil.copy2(entry["path"], copy)
    return copy


def _send_terminated(to: Destination, entry: Mapping[str, Any]) -> None:
    retry_locked(to.client.set_terminated, to.run_id, entry["status"], int(entry["end_time"]))


@dataclass(frozen=True)
class EntryKind:
    """How an outbox entry of one ``kind`` is sent, named and kept on disk."""

    send: Callable[[Destination, Mapping[str, Any]], None]  # into the MLflow run; raises on failure
    describe: Callable[[Mapping[str, Any]], str] | None = None  # for messages; None: the kind's name
    # Copies what the entry holds beyond JSON (a file, an array, a model) into the given folder of the outbox
    # and returns the copy, which the buffered entry then names as its ``path``; None: the JSON is all of it.
    keep: Callable[[Mapping[str, Any], Path], Path] | None = None


#: Every outbox entry kind (what :class:`segexp.tracking.tracker.Tracker` submits) -> its handling.
KINDS: dict[str, EntryKind] = {
    "params": EntryKind(_send_params),
    "tags": EntryKind(_send_tags),
    "delete_tag": EntryKind(_send_delete_tag, lambda e: f"deletion of tag {e['key']}"),
    "metrics": EntryKind(_send_metrics, lambda e: f"metrics of step {e['step']}"),
    "image": EntryKind(_send_image, lambda e: f"image {e['key']} of step {e['step']}", _keep_image),
    "artifact": EntryKind(_send_artifact, lambda e: f"artifact {Path(e['path']).name}", _keep_artifact),
    "table": EntryKind(_send_table, lambda e: f"table {e['artifact_file']}"),
    "model": EntryKind(_send_model_entry, keep=_keep_model),
    "terminated": EntryKind(_send_terminated, lambda e: f"run status {e['status']}"),
}


def send_entry(uri: str, run_id: str, entry: Mapping[str, Any], base: Path | None = None) -> None:
    """Send one outbox entry to the MLflow run ``run_id`` by its kind (:data:`KINDS`); raises on failure.

    ``base`` is the run folder that relative paths in buffered entries refer to.
    """
    kind = KINDS.get(entry["kind"])
    if kind is None:
        raise ValueError(f"unknown outbox entry kind {entry['kind']!r}")
    kind.send(Destination(uri, run_id, mlflow_client(uri), base), entry)


def _load_saved_model(path: Path) -> Any:
    return load_keras_model(path)


def _send_model(uri: str, run_id: str, model: Any, name: str) -> None:
    """Log ``model`` into ``run_id`` (reopening the run when it is not the active one)."""
    import mlflow

    active = mlflow.active_run()
    if active is not None and active.info.run_id == run_id:
        log_keras_model(model, name)
        return
    mlflow.set_tracking_uri(uri)
    status = mlflow_client(uri).get_run(run_id).info.status
    with mlflow.start_run(run_id=run_id, nested=active is not None):
        log_keras_model(model, name)
    mlflow_client(uri).update_run(run_id, status=status)  # leaving the block marked it FINISHED: restore


# --------------------------------------------------------------------------- the outbox


class Outbox:
    """Sends a run's logging calls; keeps those the server could not take in ``<run_dir>/mlflow_outbox.jsonl``."""

    def __init__(self, run_dir: Path, run_id: str, uri: str, policy: OutagePolicy | None = None) -> None:
        self.run_dir, self.run_id, self.uri = Path(run_dir), run_id, uri
        self.policy = policy or OutagePolicy()
        self.file = self.run_dir / OUTBOX_FILE
        self.folder = self.run_dir / OUTBOX_DIR
        self.pending: list[dict[str, Any]] = read_entries(self.file) if self.file.is_file() else []

    def submit(self, entry: dict[str, Any]) -> bool:
        """Send ``entry`` (after older buffered ones); buffer it when the server does not take it. True: sent."""
        if self.pending and not self.flush():
            self._buffer(entry)
            return False
        try:
            call_with_backoff(
                lambda: send_entry(self.uri, self.run_id, entry, self.run_dir),
                self.policy.max_wait_s,
                self.policy.first_delay_s,
            )
        except Exception as err:
            log.warning(
                "MLflow at %s did not take %s (%s); kept in %s, sent when the server is back",
                self.uri,
                describe(entry),
                _first_line(err),
                self.file,
            )
            self._buffer(entry)
            return False
        return True

    def flush(self) -> bool:
        """Send the buffered entries in order if the server answers; True when none is left."""
        if not self.pending:
            return True
        if not server_reachable(self.uri, self.policy.connect_timeout_s):
            return False
        count = len(self.pending)
        while self.pending:
            try:
                send_entry(self.uri, self.run_id, self.pending[0], self.run_dir)
            except Exception as err:
                log.warning("MLflow at %s: upload of buffered entries stopped (%s)", self.uri, _first_line(err))
                return False
            self.pending.pop(0)
            self._save()
        log.info("MLflow at %s is back: %d buffered logging calls uploaded", self.uri, count)
        return True

    def close(self) -> None:
        """At the end of the run: say what is left and how to upload it (nothing when all was sent)."""
        if self.pending:
            log.warning(
                "%d MLflow logging calls could not reach %s; they are kept in %s. "
                "Upload them into run %s when the server is back: %s",
                len(self.pending),
                self.uri,
                self.file,
                self.run_id,
                UPLOAD_COMMAND.format(run_dir=self.run_dir),
            )

    # -- persistence

    def _buffer(self, entry: dict[str, Any]) -> None:
        try:
            stored = self._persistable(entry)
            with open(self.file, "a") as f:
                f.write(json.dumps(stored) + "\n")
                f.flush()
                os.fsync(f.fileno())
        except OSError as err:  # full or read-only disk: keep it in memory, never stop the training
            log.error("could not save %s in %s (%s): kept in memory only", describe(entry), self.file, err)
            stored = entry
        self.pending.append(stored)

    def _save(self) -> None:
        """Rewrite the file with the entries still pending (entries held in memory only are left out)."""
        try:
            if not self.pending:
                self.file.unlink(missing_ok=True)
                shutil.rmtree(self.folder, ignore_errors=True)
                return

            saved = [e for e in self.pending if "array" not in e and "model" not in e]
            atomic_write_text(self.file, "".join(json.dumps(e) + "\n" for e in saved))
        except OSError as err:
            log.error("could not update %s (%s)", self.file, err)

    def _persistable(self, entry: dict[str, Any]) -> dict[str, Any]:
        """A JSON-safe copy: what the entry holds beyond JSON (artifacts, images, models) kept in the outbox folder
        by its kind's ``keep`` (:data:`KINDS`)."""
        stored = {k: v for k, v in entry.items() if k not in ("array", "model")}
        kind = KINDS.get(entry["kind"])
        if kind is None or kind.keep is None:
            return stored
        target = self.folder / uuid.uuid4().hex[:12]
        target.mkdir(parents=True, exist_ok=True)
        stored["path"] = str(kind.keep(entry, target).relative_to(self.run_dir))
        return stored


def read_entries(path: Path) -> list[dict[str, Any]]:
    """The entries of an outbox file; a last line cut short by a crash is skipped."""
    entries = []
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            log.warning("%s:%d: unreadable entry skipped", path, number)
    return entries


def describe(entry: Mapping[str, Any]) -> str:
    """The entry in words, for messages (its kind's ``describe``, else the kind's name)."""
    kind = KINDS.get(entry["kind"])
    return kind.describe(entry) if kind is not None and kind.describe is not None else str(entry["kind"])


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:300]


# --------------------------------------------------------------------------- segexp-upload


def upload(run_dir: Path, tracking_uri: str | None = None, timeout_s: float = 10.0) -> int:
    """Send every entry of ``<run_dir>/mlflow_outbox.jsonl`` into the run's MLflow run; return how many."""

    run_dir = Path(run_dir)
    record_file = run_dir / MLFLOW_RUN_FILE
    if not record_file.is_file():
        raise TrackingUnavailable(f"{run_dir}: no {MLFLOW_RUN_FILE}, so no MLflow run to upload into")
    record = json.loads(record_file.read_text())
    uri = tracking_uri or record["tracking_uri"]
    if not (run_dir / OUTBOX_FILE).is_file():
        return 0
    check_server(uri, timeout_s)
    outbox = Outbox(run_dir, record["run_id"], uri, OutagePolicy(connect_timeout_s=timeout_s))
    count = len(outbox.pending)
    with http_settings(outbox.policy):
        if not outbox.flush():
            raise TrackingUnavailable(
                f"{uri}: upload stopped with {len(outbox.pending)} of {count} entries left in {outbox.file}; run again"
            )
    return count
