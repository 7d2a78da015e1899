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

    segexp-upload <run_dir>            # or: python -m segexp.outbox <run_dir>

Entries are removed from the file as they are sent, and metrics carry their original
timestamps (MLflow stores a metric value once per key, step and timestamp), so running the
command again, or after an interrupted upload, does not duplicate anything.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import shutil
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

log = logging.getLogger(__name__)
T = TypeVar("T")

OUTBOX_FILE = "mlflow_outbox.jsonl"
OUTBOX_DIR = "mlflow_outbox"
UPLOAD_COMMAND = "segexp-upload {run_dir}   (or: python -m segexp.outbox {run_dir})"


class TrackingUnavailable(RuntimeError):
    """The tracking server cannot be reached; the message names the URI and what to do."""


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
) -> T:
    """Call ``fn``; after a failure wait ``d, 2d, 4d, …`` (plus jitter) and retry.

    Stops retrying when the next wait would end later than ``max_wait_s`` after the first call,
    and re-raises the last error: one logging call never blocks training for much longer.
    """
    start, delay = clock(), first_delay_s
    while True:
        try:
            return fn()
        except Exception:
            wait = delay * random.uniform(1.0, 1.25)
            if clock() - start + wait > max_wait_s:
                raise
            sleep(wait)
            delay *= 2


# --------------------------------------------------------------------------- sending one entry


def _client(uri: str) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def send_entry(uri: str, run_id: str, entry: Mapping[str, Any], base: Path | None = None) -> None:
    """Send one outbox entry to the MLflow run ``run_id``; raises on failure.

    ``base`` is the run folder that relative paths in buffered entries refer to.
    """
    from mlflow.entities import Metric, Param, RunTag

    from segexp.tracking import retry_locked

    client = _client(uri)
    kind = entry["kind"]

    def local(key: str) -> Path:
        path = Path(entry[key])
        return path if path.is_absolute() or base is None else base / path

    if kind == "params":
        items = [Param(k, v) for k, v in entry["params"].items()]
        for start in range(0, len(items), 100):  # at most 100 params per batch
            retry_locked(client.log_batch, run_id, params=items[start : start + 100], synchronous=True)
    elif kind == "tags":
        tags = [RunTag(k, v) for k, v in entry["tags"].items()]
        retry_locked(client.log_batch, run_id, tags=tags, synchronous=True)
    elif kind == "metrics":
        ts, step = int(entry["timestamp"]), int(entry["step"])
        metrics = [Metric(k, float(v), ts, step) for k, v in entry["metrics"].items()]
        retry_locked(client.log_batch, run_id, metrics=metrics, synchronous=True)
    elif kind == "image":
        image = entry.get("array")
        if image is None:
            from PIL import Image

            image = np.asarray(Image.open(local("path")))
        retry_locked(
            client.log_image, run_id, image, key=entry["key"], step=int(entry["step"]),
            timestamp=int(entry["timestamp"]), synchronous=True,
        )
    elif kind == "artifact":
        path = local("path")
        log_fn = client.log_artifacts if path.is_dir() else client.log_artifact
        retry_locked(log_fn, run_id, str(path), entry.get("artifact_path"))
    elif kind == "model":
        model = entry["model"] if entry.get("model") is not None else _load_saved_model(local("path"))
        _send_model(uri, run_id, model, entry.get("name", "model"))
    elif kind == "terminated":
        retry_locked(client.set_terminated, run_id, entry["status"], int(entry["end_time"]))
    else:
        raise ValueError(f"unknown outbox entry kind {kind!r}")


def _load_saved_model(path: Path) -> Any:
    from segexp.runs import load_keras_model

    return load_keras_model(path)


def _send_model(uri: str, run_id: str, model: Any, name: str) -> None:
    """Log ``model`` into ``run_id`` (reopening the run when it is not the active one)."""
    import mlflow

    from segexp.tracking import log_keras_model

    active = mlflow.active_run()
    if active is not None and active.info.run_id == run_id:
        log_keras_model(model, name)
        return
    mlflow.set_tracking_uri(uri)
    status = _client(uri).get_run(run_id).info.status
    with mlflow.start_run(run_id=run_id, nested=active is not None):
        log_keras_model(model, name)
    _client(uri).update_run(run_id, status=status)  # leaving the block marked it FINISHED: restore


# --------------------------------------------------------------------------- the outbox


class Outbox:
    """Sends a run's logging calls; keeps those the server could not take in ``<run_dir>/mlflow_outbox.jsonl``."""

    def __init__(self, run_dir: Path, run_id: str, uri: str, policy: OutagePolicy = OutagePolicy()) -> None:
        self.run_dir, self.run_id, self.uri, self.policy = Path(run_dir), run_id, uri, policy
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
                self.policy.max_wait_s, self.policy.first_delay_s,
            )
        except Exception as err:
            log.warning(
                "MLflow at %s did not take %s (%s); kept in %s, sent when the server is back",
                self.uri, describe(entry), _first_line(err), self.file,
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
                len(self.pending), self.uri, self.file, self.run_id, UPLOAD_COMMAND.format(run_dir=self.run_dir),
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
            from segexp.outputs import atomic_write_text

            saved = [e for e in self.pending if "array" not in e and "model" not in e]
            atomic_write_text(self.file, "".join(json.dumps(e) + "\n" for e in saved))
        except OSError as err:
            log.error("could not update %s (%s)", self.file, err)

    def _persistable(self, entry: dict[str, Any]) -> dict[str, Any]:
        """A JSON-safe copy: artifacts copied, images saved as PNG, models saved as ``.keras`` in the outbox folder."""
        stored = {k: v for k, v in entry.items() if k not in ("array", "model")}
        kind = entry["kind"]
        if kind not in ("artifact", "image", "model"):
            return stored
        target = self.folder / uuid.uuid4().hex[:12]
        target.mkdir(parents=True, exist_ok=True)
        if kind == "artifact":
            source = Path(entry["path"])
            copy = target / source.name
            if source.is_dir():
                shutil.copytree(source, copy)
            elif source.exists():
                shutil.copy2(source, copy)
        elif kind == "image":
            from PIL import Image

            copy = target / "image.png"
            Image.fromarray(np.asarray(entry["array"])).save(copy)
        else:
            copy = target / "model.keras"
            if entry.get("model") is not None:
                entry["model"].save(copy)
            else:
                shutil.copy2(entry["path"], copy)
        stored["path"] = str(copy.relative_to(self.run_dir))
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
    kind = entry["kind"]
    if kind == "metrics":
        return f"metrics of step {entry['step']}"
    if kind == "image":
        return f"image {entry['key']} of step {entry['step']}"
    if kind == "artifact":
        return f"artifact {Path(entry['path']).name}"
    if kind == "terminated":
        return f"run status {entry['status']}"
    return kind


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:300]


# --------------------------------------------------------------------------- segexp-upload


def upload(run_dir: Path, tracking_uri: str | None = None, timeout_s: float = 10.0) -> int:
    """Send every entry of ``<run_dir>/mlflow_outbox.jsonl`` into the run's MLflow run; return how many."""
    from segexp.runs import MLFLOW_RUN_FILE

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


def main(argv: list[str] | None = None) -> int:
    """``segexp-upload <run_dir>``: upload what a run could not send to its tracking server."""
    parser = argparse.ArgumentParser(prog="segexp-upload", description=main.__doc__)
    parser.add_argument("run_dir", type=Path, help="training run folder (holds mlflow_run.json and mlflow_outbox.jsonl)")
    parser.add_argument("--tracking-uri", default=None, help="another address of the same store (default: the run's)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the server (default 10)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        count = upload(args.run_dir, args.tracking_uri, args.timeout)
    except TrackingUnavailable as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"{args.run_dir}: " + (f"uploaded {count} buffered logging calls" if count else "nothing to upload"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
