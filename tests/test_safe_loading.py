"""Safe loading: models load in Keras safe mode, config values are data, never code."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import keras
import pytest
from mlflow import MlflowClient

from segexp.config.schema import PACKAGE_DIR, REPO_DIR
from segexp.models.saving import load_keras_model
from segexp.tracking.runs import RunError, open_run

from .conftest import TINY_DATASET_OVERRIDES


def lambda_model(path: Path) -> Path:
    inputs = keras.Input((8, 8, 1))
    outputs = keras.layers.Lambda(lambda x: x * 2.0)(inputs)  # code inside the file
    keras.Model(inputs, outputs).save(path)
    return path


def test_a_model_with_a_lambda_layer_is_refused(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text("dataset: {class_names: [a, b]}\n")
    (run_dir / "checkpoints").mkdir()
    lambda_model(run_dir / "checkpoints" / "best.keras")
    with pytest.raises(RunError) as err:
        open_run(str(run_dir)).load_model()  # what segexp-evaluate and segexp-infer do
    text = str(err.value)
    assert "best.keras: refused to load: the model contains code (a Lambda layer" in text
    assert "safe mode" in text and "Traceback" not in text


def test_only_keras_files_are_loaded(tmp_path: Path) -> None:
    (tmp_path / "model.h5").write_bytes(b"\x89HDF")
    with pytest.raises(RunError, match=r"model.h5: segexp loads models saved as .keras only"):
        load_keras_model(tmp_path / "model.h5")


def sources() -> list[Path]:
    return sorted(PACKAGE_DIR.rglob("*.py"))


def test_no_code_is_evaluated_and_no_lambda_layers_exist() -> None:
    called = re.compile(r"(?<![\w.])(eval|exec)\s*\(|\bLambda\s*\(|safe_mode\s*=\s*False")
    offenders = [
        f"{p.relative_to(PACKAGE_DIR)}:{n}: {line.strip()}"
        for p in sources()
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if called.search(line) and not line.lstrip().startswith("#")
    ]
    assert offenders == []
    loads = [
        f"{p.name}:{n}"
        for p in sources()
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if "models.load_model(" in line and "safe_mode=True" not in line
    ]
    assert loads == []  # every keras load site states safe mode (saving.load_keras_model)


@pytest.mark.slow  # CI time: ~40 s; a whole training run
def test_config_values_that_look_like_code_stay_strings(tiny_dataset: Path, tmp_path: Path) -> None:
    marker = Path(f"/tmp/pwned_{uuid.uuid4().hex}")
    payload = f"__import__('os').system('touch {marker}')"
    quoted = "'" + payload.replace("'", "\\'") + "'"  # Hydra's quoting, as typed in a shell inside "..."
    overrides = [
        *TINY_DATASET_OVERRIDES,
        f"dataset.root={tiny_dataset}",
        "training.epochs=1",
        "training.evaluate_after=false",
        "tracking.log_model=false",
        "tracking.log_epoch_images=false",
        f"tracking.run_name={quoted}",
        f"dataset.name={quoted}",
        f"tracking.experiment={quoted}",
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_DIR), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "segexp.cli.train",
            f"paths.root={tmp_path}",
            f"hydra.run.dir={tmp_path}/run",
            *overrides,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert not marker.exists()

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/outputs/mlflow.db")
    experiment = client.get_experiment_by_name(payload)
    assert experiment is not None  # the experiment name, verbatim
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == payload
    assert run.data.params["tracking.run_name"] == payload and run.data.params["dataset.name"] == payload
    assert run.data.tags["dataset"] == payload
    assert not marker.exists()
