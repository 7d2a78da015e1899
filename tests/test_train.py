"""End-to-end training runs on tiny images, checked through MLflow's client."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import keras
import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient

from segexp.training.loop import train

from .conftest import HOCM_MINI, TINY_DATASET_OVERRIDES


def _client(tmp_path: Path) -> MlflowClient:
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/outputs/mlflow.db")
    return MlflowClient()


def _only_run(client: MlflowClient):
    experiment = client.get_experiment_by_name("segexp")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    return runs[0]


def _artifacts(client: MlflowClient, run_id: str, path: str = "") -> list[str]:
    found = []
    for item in client.list_artifacts(run_id, path):
        found += _artifacts(client, run_id, item.path) if item.is_dir else [item.path]
    return found


def test_two_epoch_run_is_fully_tracked(compose_train, tiny_dataset: Path, tmp_path: Path) -> None:
    cfg = compose_train(*TINY_DATASET_OVERRIDES, f"dataset.root={tiny_dataset}")
    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text("seed: 42\n")
    objective = train(cfg, run_dir, overrides=["model.base_filters=4", "training.epochs=2"])

    client = _client(tmp_path)
    run = _only_run(client)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "model.base_filters=4,training.epochs=2"
    assert run.data.tags["mlflow.note.content"] == "segexp-train model.base_filters=4 training.epochs=2"
    assert run.data.tags["keras_backend"] == "tensorflow" and run.data.tags["dataset"] == "folder"
    assert run.data.tags["git_commit"]
    params = run.data.params
    assert params["model.base_filters"] == "4" and params["model.base_kernels"] == "[3, 3]"
    assert params["training.optimizer._target_"] == "keras.optimizers.Adam"
    assert params["augmentation.transforms.hflip._target_"] == "albumentations.HorizontalFlip"
    assert int(params["model.num_params"]) > 0

    for key in (
        "train/loss",
        "val/loss",
        "val/dice/square",
        "val/dice/disc",
        "val/dice_fg_mean",
        "train/dice_fg_mean",
        "val/dice_incl_bg_original",
        "learning_rate",
    ):
        history = client.get_metric_history(run.info.run_id, key)
        assert [m.step for m in history] == [1, 2], key
    best = max(m.value for m in client.get_metric_history(run.info.run_id, "val/dice_fg_mean"))
    assert objective == pytest.approx(best)

    artifacts = _artifacts(client, run.info.run_id)
    assert "config/config.yaml" in artifacts and "history.csv" in artifacts and "curves.png" in artifacts
    assert {"evaluation/test/cases.json", "evaluation/test/case_viewer.html"} <= set(artifacts)
    cases = client.load_table(run.info.experiment_id, "evaluation/test/cases.json", [run.info.run_id])
    assert list(cases.columns)[:5] == ["case", "class", "dice", "iou", "hd95"] and len(cases) == 2
    epoch_images = [a for a in artifacts if a.startswith("images/epoch_images~") and a.endswith(".png")]
    assert len(epoch_images) == 2 * 2  # 2 images x 2 epochs
    assert {a.split("+step+")[1].split("+")[0] for a in epoch_images} == {"1", "2"}

    models = mlflow.search_logged_models(experiment_ids=[run.info.experiment_id], output_format="list")
    assert len(models) == 1 and models[0].source_run_id == run.info.run_id
    loaded = mlflow.keras.load_model(models[0].model_uri)
    x = np.zeros((1, 32, 32, 1), np.uint8)
    assert loaded.predict(x, verbose=0).shape == (1, 32, 32, 3)

    assert (run_dir / "checkpoints" / "best.keras").is_file()
    assert sorted(p.name for p in (run_dir / "epoch_images").iterdir())[0].startswith("epoch_001_case1_")
    assert (run_dir / "history.csv").read_text().count("\n") == 3


@pytest.mark.slow  # CI time: ~35 s; bit-exactness is also covered by test_resumed_run_equals_uninterrupted_run
def test_training_is_reproducible(compose_train, tiny_dataset: Path, tmp_path: Path) -> None:
    overrides = (
        *TINY_DATASET_OVERRIDES,
        f"dataset.root={tiny_dataset}",
        "tracking.enabled=false",
        "training.epochs=1",
        "training.epoch_images.num=0",
    )
    first = train(compose_train(*overrides), tmp_path / "a")
    second = train(compose_train(*overrides), tmp_path / "b")
    assert first == second
    a = keras.models.load_model(tmp_path / "a" / "checkpoints" / "best.keras")
    b = keras.models.load_model(tmp_path / "b" / "checkpoints" / "best.keras")
    assert all(np.array_equal(u, v) for u, v in zip(a.get_weights(), b.get_weights()))


def test_failed_run_is_marked_failed(compose_train, tiny_dataset: Path, tmp_path: Path) -> None:
    """A broken file met mid-training ends the MLflow run FAILED with the error, not RUNNING."""
    cfg = compose_train(*TINY_DATASET_OVERRIDES, f"dataset.root={tiny_dataset}")
    (tiny_dataset / "train" / "images" / "case0_005.png").write_bytes(b"not a png")
    with pytest.raises(Exception, match="case0_005.png"):
        train(cfg, tmp_path / "run")
    run = _only_run(_client(tmp_path))
    assert run.info.status == "FAILED"
    assert "case0_005.png" in run.data.tags["error"]


def test_interrupted_run_is_marked_killed(compose_train, tiny_dataset: Path, tmp_path: Path, monkeypatch) -> None:
    from segexp.training import callbacks

    def interrupt(self, epoch, logs=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(callbacks.MlflowEpochLogger, "on_epoch_end", interrupt)
    cfg = compose_train(*TINY_DATASET_OVERRIDES, f"dataset.root={tiny_dataset}")
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "run")
    assert _only_run(_client(tmp_path)).info.status == "KILLED"


def test_cli_bad_value_is_one_clear_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "segexp.cli.train", f"paths.root={tmp_path}", "model.base_kernels=[4,4]"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 2
    assert "model.base_kernels: expected a pair of odd positive ints like [3, 3], got [4, 4]" in output
    assert "Traceback" not in output
    assert not (tmp_path / "outputs" / "mlflow.db").exists()  # failed before any run was created


def test_cli_debug_run_end_to_end(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "segexp.cli.train",
            f"paths.root={tmp_path}",
            "debug=fast",
            "training.epochs=1",
            "training.loader.workers=2",
            "training.verbose=0",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    runs = list((tmp_path / "outputs" / "train" / "runs").glob("*/*"))
    assert len(runs) == 1 and (runs[0] / ".hydra" / "config.yaml").is_file() and (runs[0] / "curves.png").is_file()
    client = _client(tmp_path)
    run = _only_run(client)
    assert (
        run.info.status == "FINISHED"
        and run.info.run_name == "debug=fast,training.epochs=1,training.loader.workers=2,training.verbose=0"
    )


@pytest.mark.skipif(not HOCM_MINI.is_dir(), reason="../shared/data/hocmvalves_mini is absent")
def test_short_training_on_real_hocmvalves_slices(compose_train, tmp_path: Path) -> None:
    """Case 10001 trains, case 10002 validates; the per-class metrics exist for the 7 structures."""
    cfg = compose_train(
        "experiment=hocmvalves_mini",
        f"dataset.root={HOCM_MINI}",
        "model=resunet",
        "model.image_height=64",
        "model.image_width=64",
        "model.channels=[4,8,16]",
        "training.steps_per_epoch=2",
        "training.epochs=1",
        "training.batch_size=7",
        "training.loader.workers=0",
        "training.verbose=0",
        "training.jit_compile=false",
        "training.epoch_images.num=2",
    )
    objective = train(cfg, tmp_path / "run")
    run = _only_run(_client(tmp_path))
    assert run.info.status == "FINISHED" and run.data.tags["dataset"] == "hocmvalves_mini"
    assert {f"val/dice/{c}" for c in ("AV", "MV", "AO", "LA", "LV", "Myocardium", "Excised")} <= set(run.data.metrics)
    assert 0.0 <= objective <= 1.0 or np.isnan(objective)


def test_sigterm_marks_the_run_killed(tmp_path: Path) -> None:
    """A pre-empted job (SIGTERM) ends its MLflow run KILLED instead of leaving it RUNNING."""
    script = (
        "import os, signal, time\n"
        "from segexp.cli.shell import interrupt_on_sigterm\n"
        "from segexp.tracking.tracker import tracked_run\n"
        "with interrupt_on_sigterm(), "
        f"tracked_run(True, uri='sqlite:///{tmp_path}/outputs/mlflow.db', experiment='segexp', "
        f"artifact_location='{tmp_path}/outputs/mlartifacts', run_name='x', tags={{}}, description='') as t:\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    time.sleep(30)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert _only_run(_client(tmp_path)).info.status == "KILLED"
