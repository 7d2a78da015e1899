"""Multirun sweeps in MLflow: one parent per sweep, one child per job, nothing lost."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from segexp.tracking.compare import compare
from segexp.tracking.store import configure, retry_locked
from segexp.tracking.sweep import CHILDREN_TABLE
from segexp.tracking.tracker import tracked_run

from .conftest import TINY_DATASET_OVERRIDES


def _sweep(tmp_path: Path, dataset: Path, *overrides: str) -> subprocess.CompletedProcess:
    tiny = [o for o in TINY_DATASET_OVERRIDES if not o.startswith("training.epochs")]
    cmd = [
        sys.executable,
        "-m",
        "segexp.cli.train",
        "-m",
        f"paths.root={tmp_path}",
        *tiny,
        f"dataset.root={dataset}",
        "training.epochs=1",
        "training.epoch_images.num=1",
        "training.evaluate_after=false",
        "tracking.log_model=false",
        *overrides,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def _runs(tmp_path: Path):
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/outputs/mlflow.db")
    client = mlflow.MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name("segexp").experiment_id], max_results=100)
    parents = [r for r in runs if "sweep_dir" in r.data.tags]
    kids = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return parents, kids


@pytest.mark.slow  # CI time: ~100 s; parent and children are also covered by the joblib and SLURM launcher tests
def test_grid_sweep_is_one_parent_with_four_children(tmp_path: Path, tiny_dataset: Path) -> None:
    result = _sweep(tmp_path, tiny_dataset, "model.base_filters=2,4", "training.learning_rate=1e-3,5e-4")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (parent,), kids = _runs(tmp_path)
    assert len(kids) == 4 and {k.data.tags["mlflow.parentRunId"] for k in kids} == {parent.info.run_id}
    combos = {(k.data.params["model.base_filters"], k.data.params["training.learning_rate"]) for k in kids}
    assert combos == {("2", "0.001"), ("2", "0.0005"), ("4", "0.001"), ("4", "0.0005")}
    assert all(k.info.status == "FINISHED" and "model.base_filters=" in k.info.run_name for k in kids)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["sweep_overrides"].endswith("model.base_filters=2,4 training.learning_rate=1e-3,5e-4")
    assert Path(parent.data.tags["sweep_dir"]).is_dir()
    best = max(kids, key=lambda k: k.data.metrics["best/val_dice_fg_mean"])
    assert parent.data.tags["best_child_run_id"] == best.info.run_id
    assert parent.data.metrics["best/val_dice_fg_mean"] == pytest.approx(best.data.metrics["best/val_dice_fg_mean"])

    table = compare(parent.info.run_id)
    lines = table.splitlines()
    assert "model.base_filters" in lines[0] and "training.learning_rate" in lines[0] and len(lines) == 2 + 4
    assert lines[2].startswith(best.info.run_name)  # best first
    logged = [a.path for a in mlflow.MlflowClient().list_artifacts(parent.info.run_id, "compare")]
    assert sorted(logged) == ["compare/children.csv", "compare/parallel_coordinates.png"]
    children = mlflow.MlflowClient().load_table(parent.info.experiment_id, CHILDREN_TABLE, [parent.info.run_id])
    assert len(children) == 4 and set(children["run_id"]) == {k.info.run_id for k in kids}  # one row per child
    assert list(children["run_id"])[0] == best.info.run_id and {"wall_time_s", "model/num_params"} <= set(children)


@pytest.mark.slow  # CI time: ~35 s; a failed child among finished ones is also covered by the SLURM test
def test_failing_job_does_not_lose_the_others(tmp_path: Path, tiny_dataset: Path) -> None:
    """num_layers=9 cannot work on 32x32 images: that child is FAILED with its error, the other finishes."""
    result = _sweep(tmp_path, tiny_dataset, "model.num_layers=2,9")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (parent,), kids = _runs(tmp_path)
    status = {k.info.run_name.split("model.num_layers=")[1].split(",")[0]: k for k in kids}
    assert status["2"].info.status == "FINISHED"
    assert status["9"].info.status == "FAILED" and "model.image_height" in status["9"].data.tags["error"]
    assert parent.info.status == "FINISHED" and parent.data.tags["children_failed"] == "1"
    assert parent.data.tags["best_child_run_id"] == status["2"].info.run_id


def test_retry_locked_retries_only_lock_errors() -> None:
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("(sqlite3.OperationalError) database is locked")
        return "ok"

    assert retry_locked(flaky) == "ok" and len(calls) == 3
    with pytest.raises(ValueError, match="other"):
        retry_locked(lambda: (_ for _ in ()).throw(ValueError("other")))


def _log_many(uri: str, artifacts: str, worker: int, steps: int) -> None:
    with tracked_run(
        True, uri=uri, experiment="segexp", artifact_location=artifacts, run_name=f"w{worker}", tags={}, description=""
    ) as tracker:
        tracker.log_params({"worker": str(worker)})
        for step in range(steps):
            tracker.log_metrics({"a": float(step), "b": float(worker)}, step=step)


@pytest.mark.slow  # CI time: ~40 s; MLflow's own sqlite locking under 8 writers
def test_parallel_writers_lose_nothing_in_sqlite(tmp_path: Path) -> None:
    """Four processes hammer one SQLite store; every run and every metric arrives."""
    uri, artifacts = f"sqlite:///{tmp_path}/mlflow.db", str(tmp_path / "artifacts")
    configure(uri, "segexp", artifacts)  # created once before the jobs, as the sweep callback does
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_log_many, args=(uri, artifacts, w, 40)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name("segexp").experiment_id])
    assert len(runs) == 4 and all(r.info.status == "FINISHED" for r in runs)
    for run in runs:
        assert [m.step for m in client.get_metric_history(run.info.run_id, "a")] == list(range(40))
        assert len(client.get_metric_history(run.info.run_id, "b")) == 40


def _browser_missing() -> bool:
    missing = not (shutil.which("chromium") and shutil.which("chromedriver"))
    if missing and os.environ.get("SEGEXP_REQUIRE_BROWSER"):
        pytest.fail("SEGEXP_REQUIRE_BROWSER is set but chromium/chromedriver are missing: bash scripts/ci_services.sh")
    return missing


def test_mlflow_ui_shows_what_a_user_must_see(tmp_path: Path, tiny_dataset: Path) -> None:
    """A real headless Chromium on `mlflow ui` after a sweep: segexp's view (training side, objective and per-class
    columns, the parent expanded with its children), the epoch-image cards with their slider, the case viewer
    with working toggles and opacity, the children table (scripts/mlflow_ui_check.py)."""
    if _browser_missing():
        pytest.skip("Debian's chromium and chromium-driver are not installed (bash scripts/ci_services.sh)")
    result = _sweep(
        tmp_path, tiny_dataset, "model.base_filters=2,4", "training.epochs=2", "training.evaluate_after=true"
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    script = Path(__file__).resolve().parents[1] / "scripts" / "mlflow_ui_check.py"
    shots = tmp_path / "shots"
    check = subprocess.run(
        [sys.executable, str(script), "--store", str(tmp_path / "outputs" / "mlflow.db"), "--screenshots", str(shots)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert check.returncode == 0, check.stdout[-3000:] + check.stderr[-3000:]
    for name in ("view", "images", "viewer", "children"):
        assert f"{name}: ok" in check.stdout
    names = ["case_viewer.png", "mlflow_children_table.png", "mlflow_epoch_images.png", "mlflow_runs.png"]
    assert sorted(p.name for p in shots.glob("*.png")) == names
    assert all(p.stat().st_size > 10_000 for p in shots.glob("*.png"))
