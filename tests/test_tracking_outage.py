"""Tracking outages with a real server: it goes away mid-run, comes back, or stays away.

A plain ``mlflow server`` (SQLite backend, artifacts proxied) on a free loopback port is stopped
from a Keras callback after epoch 1 and restarted on the same port (tests/outage_server.py).
Skipped when the ``mlflow`` command is not on PATH.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import keras
import pytest
from mlflow import MlflowClient

import segexp.training.loop as train_module
from segexp.config.schema import REPO_DIR
from segexp.core.errors import SegexpError, TrackingUnavailable
from segexp.tracking.outbox import OUTBOX_DIR, OUTBOX_FILE
from segexp.training.loop import train

from .conftest import TINY_DATASET_OVERRIDES
from .outage_server import RestartableServer
from .servers import free_port

KEYS = ("train/loss", "val/loss", "val/dice/square", "val/dice/disc", "val/dice_fg_mean", "learning_rate")
FAST_OUTAGE = (
    "tracking.outage.connect_timeout_s=2",
    "tracking.outage.max_wait_s=2",
    "tracking.outage.request_timeout_s=5",
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RestartableServer]:
    if shutil.which("mlflow") is None:
        pytest.skip("the mlflow command is not on PATH")
    srv = RestartableServer(tmp_path_factory.mktemp("outage-server"))
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


class Outage(keras.callbacks.Callback):
    """Stops the server after epoch ``stop_after`` and starts it again after ``restart_after`` (None: never)."""

    def __init__(self, server: RestartableServer, stop_after: int, restart_after: int | None) -> None:
        super().__init__()
        self.server, self.stop_after, self.restart_after = server, stop_after, restart_after

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if epoch + 1 == self.stop_after:
            self.server.stop()
        if self.restart_after is not None and epoch + 1 == self.restart_after:
            self.server.start()


def run_training(
    compose_train,
    tiny_dataset: Path,
    run_dir: Path,
    server: RestartableServer,
    epochs: int,
    experiment: str,
    outage: Outage,
) -> float:
    """A tiny run tracked on ``server``; ``outage`` runs after segexp's own callbacks (each epoch is logged
    before the server changes)."""
    cfg = compose_train(
        *TINY_DATASET_OVERRIDES,
        f"dataset.root={tiny_dataset}",
        f"training.epochs={epochs}",
        "callbacks=none",
        "tracking=server",
        f"tracking.uri={server.uri}",
        f"tracking.experiment={experiment}",
        *FAST_OUTAGE,
    )
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text("seed: 42\n")
    return train(cfg, run_dir, overrides=[f"training.epochs={epochs}"], callbacks=[outage])


def only_run(client: MlflowClient, experiment: str):
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert len(runs) == 1
    return runs[0]


def artifacts(client: MlflowClient, run_id: str, path: str = "") -> list[str]:
    found = []
    for item in client.list_artifacts(run_id, path):
        found += artifacts(client, run_id, item.path) if item.is_dir else [item.path]
    return found


def test_server_outage_mid_run_loses_nothing(
    server: RestartableServer,
    compose_train,
    tiny_dataset: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="segexp.tracking.outbox")
    server.start()
    run_dir = tmp_path / "run"
    run_training(
        compose_train,
        tiny_dataset,
        run_dir,
        server,
        epochs=3,
        experiment="outage-mid-run",
        outage=Outage(server, stop_after=1, restart_after=2),  # epoch 2 is logged while it is down
    )

    client = MlflowClient(tracking_uri=server.uri)
    run = only_run(client, "outage-mid-run")
    assert run.info.status == "FINISHED"
    for key in KEYS:
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [1, 2, 3], key
    assert "test/dice_fg_mean" in run.data.metrics
    found = artifacts(client, run.info.run_id)
    images = [a for a in found if a.startswith("images/epoch_images~") and a.endswith(".png")]
    assert len(images) == 2 * 3  # 2 images x 3 epochs, the one of epoch 2 sent late
    assert {"config/config.yaml", "history.csv", "curves.png"} <= set(found)
    assert not (run_dir / OUTBOX_FILE).exists() and not (run_dir / OUTBOX_DIR).exists()
    assert "metrics of step 2" in caplog.text and "buffered logging calls uploaded" in caplog.text


def upload(run_dir: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_DIR), os.environ.get("PYTHONPATH")]))}
    return subprocess.run(
        [sys.executable, "-m", "segexp.cli.upload", str(run_dir)], capture_output=True, text=True, env=env, timeout=300
    )


@pytest.mark.slow  # CI time: ~75 s; the mid-run outage test stays in the default run
def test_server_down_until_the_end_then_upload(
    server: RestartableServer, compose_train, tiny_dataset: Path, tmp_path: Path
) -> None:
    server.start()
    run_dir = tmp_path / "run"
    objective = run_training(
        compose_train,
        tiny_dataset,
        run_dir,
        server,
        epochs=2,
        experiment="outage-to-the-end",
        outage=Outage(server, stop_after=1, restart_after=None),
    )
    assert objective == objective  # finished, with a number: logging did not stop the training

    entries = [json.loads(line) for line in (run_dir / OUTBOX_FILE).read_text().splitlines()]
    kinds = [e["kind"] for e in entries]
    assert kinds[-1] == "terminated" and entries[-1]["status"] == "FINISHED"
    assert {"metrics", "image", "artifact", "model"} <= set(kinds)
    assert [e["step"] for e in entries if e["kind"] == "metrics"][0] == 2

    still_down = upload(run_dir)
    assert still_down.returncode == 1 and server.uri in still_down.stderr, still_down.stderr

    server.start()
    client = MlflowClient(tracking_uri=server.uri)
    run_id = only_run(client, "outage-to-the-end").info.run_id
    assert client.get_run(run_id).info.status == "RUNNING"  # the end was not sent yet
    done = upload(run_dir)
    assert done.returncode == 0, done.stderr
    assert f"uploaded {len(entries)} buffered logging calls" in done.stdout
    assert not (run_dir / OUTBOX_FILE).exists()

    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    for key in KEYS:
        assert [m.step for m in client.get_metric_history(run_id, key)] == [1, 2], key
    assert "test/dice_fg_mean" in run.data.metrics
    found = artifacts(client, run_id)
    assert {"config/config.yaml", "history.csv", "curves.png", "evaluation/summary.json"} <= set(found)
    assert len([a for a in found if a.startswith("images/epoch_images~") and a.endswith(".png")]) == 2 * 2
    models = client.search_logged_models(experiment_ids=[run.info.experiment_id])
    assert len(models) == 1 and models[0].source_run_id == run_id

    again = upload(run_dir)  # idempotent: nothing left, nothing sent twice
    assert again.returncode == 0 and "nothing to upload" in again.stdout
    assert [m.step for m in client.get_metric_history(run_id, "val/loss")] == [1, 2]


def test_unreachable_server_fails_at_once_before_reading_data(
    compose_train, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_data(*args, **kwargs):
        raise AssertionError("the dataset was opened")

    monkeypatch.setattr(train_module, "open_dataset", no_data)
    monkeypatch.setattr(train_module, "compile_model", no_data)
    uri = f"http://127.0.0.1:{free_port()}"
    cfg = compose_train(*TINY_DATASET_OVERRIDES, f"dataset.root={tmp_path}", "tracking=server", f"tracking.uri={uri}")
    with pytest.raises(TrackingUnavailable, match="scripts/mlflow_server.sh start") as err:
        train(cfg, tmp_path / "run")
    assert uri in str(err.value) and "tracking=sqlite" in str(err.value)
    assert isinstance(err.value, SegexpError)  # one clear message from segexp-train, exit code 2


@pytest.mark.parametrize("multirun", [False, True], ids=["run", "sweep"])
def test_cli_with_unreachable_server_stops_with_one_message(tmp_path: Path, multirun: bool) -> None:
    uri = f"http://127.0.0.1:{free_port()}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_DIR), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "segexp.cli.train",
            *(["-m"] if multirun else []),
            f"paths.root={tmp_path}",
            "tracking=server",
            f"tracking.uri={uri}",
            "tracking.outage.connect_timeout_s=2",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 2, output[-3000:]
    assert f"tracking.uri = {uri}: no MLflow tracking server answers there" in output
    assert "Traceback" not in output
    assert not (tmp_path / "outputs" / "data").exists()  # no data was generated or read
