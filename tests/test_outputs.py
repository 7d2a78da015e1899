"""Output safety: no run writes over another's files, bad output folders fail at start, no half-written files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

import segexp.training.loop as train_module
from segexp.config.schema import REPO_DIR
from segexp.core.errors import OutputError, SegexpError
from segexp.core.files import atomic_write_path, atomic_write_text, check_writable
from segexp.evaluation.viz import save_png
from segexp.training.loop import train
from segexp.training.run_folder import check_run_dir_free, resume_requested

from .conftest import TINY_DATASET_OVERRIDES


def leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(".tmp-")]


def test_atomic_write_replaces_only_when_complete(tmp_path: Path) -> None:
    target = tmp_path / "summary.json"
    atomic_write_text(target, '{"dice": 0.5}')
    with pytest.raises(RuntimeError):
        with atomic_write_path(target) as tmp:
            assert tmp.parent == tmp_path and tmp.name.endswith("summary.json") and tmp != target
            tmp.write_text('{"di')  # a crash half-way through
            raise RuntimeError("killed")
    assert json.loads(target.read_text()) == {"dice": 0.5}  # the complete old file, not half a new one
    assert leftovers(tmp_path) == []


def test_atomic_write_keeps_the_extension_for_format_sniffing_writers(tmp_path: Path) -> None:
    path = save_png(tmp_path / "epoch_001_a.png", np.full((4, 5, 3), 9, np.uint8))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert leftovers(tmp_path) == []


def test_unwritable_location_is_named(tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(OutputError, match=r"paths.output_dir = .*a_file/outputs: cannot write there"):
        check_writable(blocker / "outputs", "paths.output_dir")


def test_full_disk_is_detected_against_the_threshold(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match=r"MB free, less than paths.min_free_mb = 1e\+12 MB"):
        check_writable(tmp_path, "run folder (hydra.run.dir)", min_free_mb=1e12)
    check_writable(tmp_path, "run folder (hydra.run.dir)", min_free_mb=1)


def test_run_dir_of_a_finished_run_is_refused_unless_resumed(tmp_path: Path) -> None:
    check_run_dir_free(tmp_path / "new", resume=False)
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "mlflow_run.json").write_text("{}")
    with pytest.raises(OutputError, match=r"already holds the outputs of another run \(mlflow_run.json, checkpoints"):
        check_run_dir_free(tmp_path, resume=False)
    check_run_dir_free(tmp_path, resume=True)
    assert resume_requested(OmegaConf.create({"training": {"resume": "/some/run"}}))
    assert not resume_requested(OmegaConf.create({"training": {"resume": None}}))
    assert not resume_requested(OmegaConf.create({"training": {}}))


@pytest.fixture
def no_data(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args, **kwargs):
        raise AssertionError("the dataset was opened")

    monkeypatch.setattr(train_module, "open_dataset", fail)


def test_train_refuses_a_used_run_dir_before_reading_data(compose_train, tmp_path: Path, no_data) -> None:
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "best.keras").write_bytes(b"an earlier run's model")
    cfg = compose_train(*TINY_DATASET_OVERRIDES, f"dataset.root={tmp_path}", "tracking=none")
    with pytest.raises(OutputError, match="training.resume"):
        train(cfg, run_dir)
    assert (run_dir / "checkpoints" / "best.keras").read_bytes() == b"an earlier run's model"


def test_train_refuses_unwritable_or_full_outputs_before_reading_data(compose_train, tmp_path: Path, no_data) -> None:
    (tmp_path / "a_file").write_text("")
    cfg = compose_train(*TINY_DATASET_OVERRIDES, f"dataset.root={tmp_path}", f"paths.output_dir={tmp_path}/a_file/out")
    with pytest.raises(OutputError) as err:
        train(cfg, tmp_path / "run")
    assert "paths.output_dir" in str(err.value) and "tracking.uri (SQLite store folder)" in str(err.value)
    assert isinstance(err.value, SegexpError)
    cfg = compose_train(*TINY_DATASET_OVERRIDES, f"dataset.root={tmp_path}", "paths.min_free_mb=1e12")
    with pytest.raises(OutputError, match="paths.min_free_mb"):
        train(cfg, tmp_path / "run2")


def test_cli_refuses_hydra_run_dir_of_another_run_before_hydra_writes(tmp_path: Path) -> None:
    run_dir = tmp_path / "old_run"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text("seed: 1  # the earlier run's config\n")
    (run_dir / "mlflow_run.json").write_text("{}")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_DIR), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(
        [sys.executable, "-m", "segexp.cli.train", f"paths.root={tmp_path}", f"hydra.run.dir={run_dir}"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"run folder {run_dir} already holds the outputs of another run" in done.stderr
    assert "Traceback" not in done.stderr
    assert (run_dir / ".hydra" / "config.yaml").read_text() == "seed: 1  # the earlier run's config\n"
    assert sorted(p.name for p in run_dir.iterdir()) == [".hydra", "mlflow_run.json"]
