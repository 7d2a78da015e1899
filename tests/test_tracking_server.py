"""tracking=server: an MLflow tracking server with a PostgreSQL backend (scripts/mlflow_server.sh).

The ``mlflow_server`` fixture (tests/servers.py) starts one on free loopback ports for the session;
without PostgreSQL these tests are skipped, or fail when ``SEGEXP_REQUIRE_SERVER`` is set (CI).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from mlflow import MlflowClient
from mlflow.tracking._tracking_service.utils import _use_tracking_uri

from segexp.config.schema import CONF_DIR
from segexp.training.loop import train

from .conftest import TINY_DATASET_OVERRIDES


@pytest.fixture
def server_uri(mlflow_server: str) -> Iterator[str]:
    """The server's URI, also as MLflow's current tracking URI for the test (restored after)."""
    with _use_tracking_uri(mlflow_server):
        yield mlflow_server


def _artifacts(client: MlflowClient, run_id: str, path: str = "") -> list[str]:
    found = []
    for item in client.list_artifacts(run_id, path):
        found += _artifacts(client, run_id, item.path) if item.is_dir else [item.path]
    return found


def test_server_stores_runs_in_postgres_and_proxies_artifacts(server_uri: str, tmp_path: Path) -> None:
    client = MlflowClient(tracking_uri=server_uri)
    assert client._tracking_client.store.__class__.__name__ == "RestStore"
    experiment_id = client.create_experiment("server-roundtrip")
    experiment = client.get_experiment(experiment_id)
    assert experiment.artifact_location.startswith("mlflow-artifacts:/")  # the server decides, and proxies

    run = client.create_run(experiment_id, run_name="roundtrip")
    run_id = run.info.run_id
    client.log_param(run_id, "model.base_kernels", "[3, 3]")
    for step, value in enumerate([0.5, 0.25, 0.125], start=1):
        client.log_metric(run_id, "val/loss", value, step=step)
    (tmp_path / "notes.json").write_text(json.dumps({"dice": [0.1, 0.2]}))
    client.log_artifact(run_id, str(tmp_path / "notes.json"), artifact_path="reports")
    client.set_terminated(run_id, "FINISHED")

    again = MlflowClient(tracking_uri=server_uri).get_run(run_id)  # a fresh client: read back from the server
    assert again.info.status == "FINISHED" and again.info.run_name == "roundtrip"
    assert again.data.params == {"model.base_kernels": "[3, 3]"}
    history = client.get_metric_history(run_id, "val/loss")
    assert [(m.step, m.value) for m in history] == [(1, 0.5), (2, 0.25), (3, 0.125)]
    assert _artifacts(client, run_id) == ["reports/notes.json"]
    local = client.download_artifacts(run_id, "reports/notes.json", str(tmp_path / "download"))
    assert json.loads(Path(local).read_text()) == {"dice": [0.1, 0.2]}
    found = client.search_runs([experiment_id], filter_string="params.`model.base_kernels` = '[3, 3]'")
    assert [r.info.run_id for r in found] == [run_id]


def test_training_is_tracked_through_the_server(
    server_uri: str, compose_train, tiny_dataset: Path, tmp_path: Path
) -> None:
    cfg = compose_train(
        *TINY_DATASET_OVERRIDES,
        f"dataset.root={tiny_dataset}",
        "tracking=server",
        f"tracking.uri={server_uri}",
        "tracking.experiment=segexp-server",
    )
    assert cfg.tracking.artifact_location is None
    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text("seed: 42\n")
    objective = train(cfg, run_dir, overrides=["tracking=server", "training.epochs=2"])

    client = MlflowClient(tracking_uri=server_uri)
    experiment = client.get_experiment_by_name("segexp-server")
    assert experiment.artifact_location.startswith("mlflow-artifacts:/")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "tracking=server,training.epochs=2"
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/")
    assert run.data.params["tracking.uri"] == server_uri and run.data.params["model.base_filters"] == "4"
    assert run.data.tags["dataset"] == "folder"

    for key in ("train/loss", "val/loss", "val/dice/square", "val/dice/disc", "val/dice_fg_mean", "learning_rate"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [1, 2], key
    best = max(m.value for m in client.get_metric_history(run.info.run_id, "val/dice_fg_mean"))
    assert objective == pytest.approx(best)
    assert "test/dice_fg_mean" in run.data.metrics  # evaluation after training, same run

    artifacts = _artifacts(client, run.info.run_id)
    assert {"config/config.yaml", "history.csv", "curves.png"} <= set(artifacts)
    epoch_images = [a for a in artifacts if a.startswith("images/epoch_images~") and a.endswith(".png")]
    assert len(epoch_images) == 2 * 2  # 2 images x 2 epochs
    image = client.download_artifacts(run.info.run_id, epoch_images[0], str(tmp_path / "download"))
    assert Path(image).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    models = client.search_logged_models(experiment_ids=[experiment.experiment_id])
    assert len(models) == 1 and models[0].source_run_id == run.info.run_id
    assert models[0].artifact_location.startswith("mlflow-artifacts:/")
    loaded = mlflow.keras.load_model(models[0].model_uri)  # downloaded through the server
    assert loaded.predict(np.zeros((1, 32, 32, 1), np.uint8), verbose=0).shape == (1, 32, 32, 3)

    record = json.loads((run_dir / "mlflow_run.json").read_text())
    assert record == {"run_id": run.info.run_id, "tracking_uri": server_uri}  # segexp-evaluate reopens it there


def test_optuna_studies_live_on_the_same_postgres_server(optuna_postgres: str, tmp_path: Path) -> None:
    """tracking=server: the search's study goes to the database ``optuna`` on the server's PostgreSQL (created by
    scripts/mlflow_server.sh); a job reaches its trial there and reports, and a second open resumes the study."""
    optuna = pytest.importorskip("optuna", minversion="4.5", reason='pip install "optuna>=4.5,<6"')
    from segexp.launch.optuna_search import open_study, search_settings
    from segexp.launch.search_space import quoted, search_space
    from segexp.training.pruning import TrialLink, TrialPruning, open_trial

    from .conftest import compose_config

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                "hparams_search=flexunet_optuna",
                "tracking=server",
                "hydra/sweeper/optuna_pruner=median",
                f"hydra.sweeper.storage={quoted(optuna_postgres)}",
                "hydra.sweeper.study_name=server_study",
            ],
            return_hydra_config=True,
        )
    assert compose_config(["tracking=server"]).tracking.optuna_storage.endswith("@127.0.0.1:5433/optuna")
    settings = search_settings(cfg.hydra.sweeper, cfg.training.monitor, cfg.training.monitor_mode)
    space = search_space(settings.params, [])
    study = open_study(settings, space)
    trial = study.ask(space.distributions())
    callback = TrialPruning(open_trial(TrialLink("server_study", optuna_postgres, trial.number)), "val_dice_fg_mean")
    callback.on_epoch_end(0, {"val_dice_fg_mean": 0.4})
    study.tell(trial, 0.4)
    again = open_study(settings, space)
    assert len(again.trials) == 1 and again.trials[0].intermediate_values == {1: 0.4}
    assert again.trials[0].state == optuna.trial.TrialState.COMPLETE
