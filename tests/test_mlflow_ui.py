"""The MLflow UI as the place where runs are compared: the experiment's view, run names by what varies,
system metrics, and the best child of a sweep registered as ``champion`` (then used by ``run=models:/...``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest

from segexp.core.errors import RunError
from segexp.tracking.runs import open_run
from segexp.tracking.store import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, configure
from segexp.tracking.sweep import PARENT_FILE, child_run_name, parent_run_name, sweep_dimensions
from segexp.tracking.view import MAX_COLUMNS, VIEW_KEY, VIEW_TAG, metric_column, run_columns, view_state, view_url

from .conftest import TINY_DATASET_OVERRIDES, compose_config, sqlite_tracked_run

TINY_CLASSES = ["background", "square", "disc"]  # TINY_DATASET_OVERRIDES' class table
PARAMS = {"training.learning_rate": "tag(log, interval(1e-4, 3e-3))", "model.base_filters": "choice(8, 16, 32)"}


def _client(root: Path) -> mlflow.MlflowClient:
    mlflow.set_tracking_uri(f"sqlite:///{root}/outputs/mlflow.db")
    return mlflow.MlflowClient()


def test_experiments_open_in_the_model_training_view_and_a_hand_set_kind_is_kept(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    created = configure(uri, "segexp", str(tmp_path / "artifacts"))
    client = mlflow.MlflowClient(uri)
    assert client.get_experiment(created).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND == "custom_model_development"
    untagged = client.create_experiment("older")  # made before segexp tagged experiments
    assert configure(uri, "older", None) == untagged
    assert client.get_experiment(untagged).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    client.set_experiment_tag(created, EXPERIMENT_KIND_TAG, "genai_development")  # chosen by hand in the UI
    configure(uri, "segexp", None)
    assert client.get_experiment(created).tags[EXPERIMENT_KIND_TAG] == "genai_development"


def test_a_sweep_is_named_by_what_varies() -> None:
    grid = ["model=resunet,flexunet", "experiment=hvsmr_mini", "hparams_search=architectures"]
    dims = sweep_dimensions(grid)
    assert list(dims) == ["model"]
    assert parent_run_name(dims, grid, "hydra._internal.core_plugins.basic_sweeper.BasicSweeper", None) == (
        "sweep: model ∈ {resunet, flexunet}"
    )
    two = ["training.learning_rate=3e-4,1e-3", "model.base_filters=16,32", "training.epochs=5"]
    assert parent_run_name(sweep_dimensions(two), two, "", None) == (
        "sweep: training.learning_rate ∈ {0.0003, 0.001} × model.base_filters ∈ {16, 32}"
    )
    # the sweeper's params are dimensions too, unless the command line fixes one of them
    globbed = sweep_dimensions([], {"model": "glob(*,exclude=flexunet_hocm)"})
    assert parent_run_name(globbed, [], "", None) == "sweep: model=glob(*,exclude=flexunet_hocm)"
    assert list(sweep_dimensions(["model=resunet"], {"model": "glob(*)"})) == []
    optuna = sweep_dimensions(["model.base_filters=16"], PARAMS)
    assert list(optuna) == ["training.learning_rate"]
    sweeper = "hydra_plugins.segexp_optuna.sweeper.OptunaSweeper"
    assert parent_run_name(sweep_dimensions([], PARAMS), [], sweeper, 20) == (
        "optuna: 20 trials over training.learning_rate, model.base_filters"
    )


def test_a_sweep_job_is_named_by_its_values_of_the_varied_keys(tmp_path: Path) -> None:
    job = ["training.learning_rate=0.0003", "experiment=hvsmr_mini", "model.base_filters=16", "paths.root=/x"]
    assert child_run_name(tmp_path, job) is None  # no sweep record: named by all its overrides, as before
    (tmp_path / PARENT_FILE).write_text(json.dumps({"run_id": "r", "varying": ["training.learning_rate", "model"]}))
    assert child_run_name(tmp_path, job) == "training.learning_rate=0.0003"
    (tmp_path / PARENT_FILE).write_text(json.dumps({"run_id": "r", "varying": list(PARAMS)}))
    assert child_run_name(tmp_path, job) == "training.learning_rate=0.0003,model.base_filters=16"


@pytest.mark.parametrize("on", [True, False])
def test_system_metrics_are_sampled_only_when_asked(tmp_path: Path, on: bool, monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.5")  # MLflow's own setting (default 10 s)
    with sqlite_tracked_run(tmp_path, system_metrics=on) as tracker:
        time.sleep(2.5)
    metrics = _client(tmp_path).get_run(tracker.run_id).data.metrics
    system = {k for k in metrics if k.startswith("system/")}
    assert ({"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= system) is on
    assert bool(system) is on


def test_system_metrics_are_on_in_every_tracking_preset_and_a_registered_model_is_named() -> None:
    for preset in ("sqlite", "server", "none"):
        tracking = compose_config([f"tracking={preset}", "dataset=phantom"]).tracking
        assert tracking.system_metrics is True and tracking.registered_model == "segexp-phantom"


def test_a_registered_model_that_is_not_there_is_named_with_what_is(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/outputs/mlflow.db"
    configure(uri, "segexp", None)
    with pytest.raises(RunError, match="no registered model 'nope'; registered models: none"):
        open_run("models:/nope@champion", uri)
    mlflow.MlflowClient(uri).create_registered_model("segexp-tiny")
    with pytest.raises(RunError, match=r"'segexp-tiny' has versions none and aliases none"):
        open_run("models:/segexp-tiny@champion", uri)
    with pytest.raises(RunError, match="models:/<name>@<alias>"):
        open_run("models:/a/b/c", uri)


def test_the_view_adds_columns_keeps_earlier_ones_and_links_to_the_server() -> None:
    columns = run_columns("val_dice_fg_mean", ["background", "LV", "Myo"])
    assert columns == [
        "metrics.`best/val_dice_fg_mean`",
        "metrics.`test/dice_fg_mean`",
        "metrics.`test/dice/LV`",
        "metrics.`test/dice/Myo`",
    ]  # background is never a column
    first = view_state(None, columns, columns[0], expand=["p1"])
    second = view_state(first, run_columns("val_dice_fg_mean", ["background", "RV"]), columns[0], expand=["p2"])
    assert second["selectedColumns"] == [*columns, "metrics.`test/dice/RV`"]
    assert second["runsExpanded"] == {"p1": True, "p2": True}
    many = view_state(None, [metric_column(f"m{i}") for i in range(100)], columns[0])
    assert len(many["selectedColumns"]) == MAX_COLUMNS
    assert view_url("http://mlflow.lab:5000/", "7") == (
        "http://mlflow.lab:5000/#/experiments/7/runs?workflowType=machine_learning&viewStateShareKey=segexp"
    )
    assert view_url("sqlite:///outputs/mlflow.db", "1").startswith("http://127.0.0.1:5000/#/experiments/1/runs?")


def test_sweep_children_named_by_what_varies_best_one_is_champion_and_predicts(
    tmp_path: Path, tiny_dataset: Path
) -> None:
    """A grid over one key with another held constant: children are named by the varying key only, they
    log system metrics, and the best child's model is <registered_model>@champion, which segexp-infer uses."""
    tiny = [o for o in TINY_DATASET_OVERRIDES if not o.startswith(("training.epochs", "model.base_filters"))]
    env = {**os.environ, "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "1"}
    sweep = subprocess.run(
        [
            sys.executable,
            "-m",
            "segexp.cli.train",
            "-m",
            f"paths.root={tmp_path}",
            *tiny,
            f"dataset.root={tiny_dataset}",
            "training.epochs=1",
            "training.epoch_images.num=1",
            "training.evaluate_after=false",
            "model.base_filters=2,4",
            "training.learning_rate=1e-3",
            "tracking.registered_model=segexp-tiny",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert sweep.returncode == 0, sweep.stdout[-3000:] + sweep.stderr[-3000:]
    client = _client(tmp_path)
    experiment = client.get_experiment_by_name("segexp")
    assert experiment.tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [r for r in runs if "sweep_dir" in r.data.tags]
    kids = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert parent.info.run_name == "sweep: model.base_filters ∈ {2, 4}"
    assert parent.data.tags["sweep_varying"] == "model.base_filters"
    assert sorted(k.info.run_name for k in kids) == ["model.base_filters=2", "model.base_filters=4"]
    for kid in kids:  # the full override list is still there
        assert "training.learning_rate=0.001" in kid.data.tags["overrides"].split()  # as the sweeper wrote it
        assert kid.data.params["training.learning_rate"] == "0.001"
        assert any(k.startswith("system/") for k in kid.data.metrics)

    view = json.loads(experiment.tags[VIEW_TAG])  # segexp's view: objective and per-class columns, parent expanded
    assert view["selectedColumns"][0] == "metrics.`best/val_dice_fg_mean`"
    assert view["orderByKey"] == "metrics.`best/val_dice_fg_mean`" and view["orderByAsc"] is False
    assert {f"metrics.`test/dice/{c}`" for c in TINY_CLASSES[1:]} <= set(view["selectedColumns"])
    assert view["runsExpanded"] == {parent.info.run_id: True}
    assert f"viewStateShareKey={VIEW_KEY}" in sweep.stderr + sweep.stdout

    best = client.get_run(parent.data.tags["best_child_run_id"])
    champion = client.get_model_version_by_alias("segexp-tiny", "champion")
    assert champion.run_id == best.info.run_id and parent.data.tags["registered_model"] == "segexp-tiny/1"
    assert open_run("models:/segexp-tiny/1", f"sqlite:///{tmp_path}/outputs/mlflow.db").run_id == best.info.run_id

    infer = subprocess.run(
        [
            sys.executable,
            "-m",
            "segexp.cli.infer",
            f"paths.root={tmp_path}",
            "run=models:/segexp-tiny@champion",
            f"input={tiny_dataset}/valid/images",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert infer.returncode == 0, infer.stdout[-3000:] + infer.stderr[-3000:]
    assert len(list((tmp_path / "outputs" / "infer" / "runs").glob("*/*/masks/*.png"))) == 4
