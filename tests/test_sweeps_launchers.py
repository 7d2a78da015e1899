"""Optuna search (``hparams_search=``) and launcher presets (``launcher=``) compose, validate and run.

The Hydra plugins are optional: each test skips, naming the package to install, when
its plugin is missing (``pip install hydra-optuna-sweeper hydra-joblib-launcher
hydra-submitit-launcher``).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf, open_dict

from segexp.config.schema import CONF_DIR, validate_train_config

OPTUNA_PLUGIN = "hydra_plugins.hydra_optuna_sweeper"
JOBLIB_PLUGIN = "hydra_plugins.hydra_joblib_launcher"
SUBMITIT_PLUGIN = "hydra_plugins.hydra_submitit_launcher"
PIP_NAMES = {
    OPTUNA_PLUGIN: "hydra-optuna-sweeper==1.3.0",
    JOBLIB_PLUGIN: "hydra-joblib-launcher==1.2.0",
    SUBMITIT_PLUGIN: "hydra-submitit-launcher==1.2.0",
}

#: launcher preset -> (plugin module, expected hydra.launcher._target_)
LAUNCHERS = {
    "joblib": (JOBLIB_PLUGIN, "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"),
    "submitit_local": (SUBMITIT_PLUGIN, "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher"),
    "submitit_slurm": (SUBMITIT_PLUGIN, "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"),
    "gpu": (SUBMITIT_PLUGIN, "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"),
}

#: A short sweep job: tiny phantom, one epoch, no MLflow, no test-split evaluation.
FAST_JOB = ("debug=fast", "training.epochs=1", "tracking=none", "training.evaluate_after=false", "training.verbose=0")


def _need(plugin: str) -> None:
    pytest.importorskip(plugin, reason=f"Hydra plugin not installed: pip install '{PIP_NAMES[plugin]}'")


def _compose(overrides: Sequence[str]) -> DictConfig:
    """The train config with the ``hydra`` node, as a multirun would see it."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=True)


def _validated(cfg: DictConfig) -> DictConfig:
    """segexp's start-up validation of the task config (the ``hydra`` node removed)."""
    task = cfg.copy()
    with open_dict(task):
        task.pop("hydra")
    return validate_train_config(task)


# --------------------------------------------------------------------------- Optuna search


def test_optuna_search_composes(tmp_path: Path) -> None:
    _need(OPTUNA_PLUGIN)
    cfg = _compose(["hparams_search=flexunet_optuna", f"paths.root={tmp_path}", "hydra.sweeper.n_trials=3"])
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_ == "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    assert sweeper.direction == "maximize" and cfg.training.monitor_mode == "max"
    assert cfg.training.monitor == "val_dice_fg_mean"
    assert sweeper.study_name == "flexunet_optuna"
    assert sweeper.n_trials == 3 and sweeper.n_jobs == 1
    assert sweeper.sampler._target_ == "optuna.samplers.TPESampler" and sweeper.sampler.seed is not None
    assert sweeper.storage.url == f"sqlite:///{tmp_path}/outputs/optuna.db"  # under paths.output_dir
    assert set(sweeper.params) == {
        "training.learning_rate",
        "model.base_filters",
        "model.base_kernels",
        "model.num_layers",
        "model.dropout_rate",
        "augmentation",
    }
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"
    _validated(cfg)


def test_optuna_search_space_is_valid_everywhere() -> None:
    """Parse hydra.sweeper.params as the plugin does; every categorical choice composes and validates."""
    _need(OPTUNA_PLUGIN)
    from hydra_plugins.hydra_optuna_sweeper._impl import create_params_from_overrides
    from optuna.distributions import (
        CategoricalDistribution,
        LogUniformDistribution,
        UniformDistribution,
    )

    params = _compose(["hparams_search=flexunet_optuna"]).hydra.sweeper.params
    space, fixed = create_params_from_overrides([f"{k}={v}" for k, v in params.items()])
    assert not fixed
    assert isinstance(space["training.learning_rate"], LogUniformDistribution)
    assert (space["training.learning_rate"].low, space["training.learning_rate"].high) == (1e-4, 3e-3)
    assert isinstance(space["model.dropout_rate"], UniformDistribution)
    assert space["model.dropout_rate"].high == 0.2
    # List-valued choices reach optuna as strings and come back as lists through Hydra's override parser.
    assert space["model.base_kernels"].choices == ("[3,3]", "[5,5]", "[7,7]")
    for name, dist in space.items():
        if not isinstance(dist, CategoricalDistribution):
            continue
        for choice in dist.choices:
            for base in ([], ["debug=fast"]):  # the default model (128 px) and the smoke-test model (64 px)
                cfg = _validated(_compose([*base, f"{name}={choice}"]))
                if name == "model.base_kernels":
                    assert list(cfg.model.base_kernels) == OmegaConf.create(f"k: {choice}").k
    # the largest dropout at the deepest level stays below 1
    _validated(_compose(["model.num_layers=5", "model.dropout_rate=0.2"]))


def test_optuna_storage_persists_and_resumes(tmp_path: Path) -> None:
    """The configured storage works with the installed optuna + SQLAlchemy and a second study() resumes.

    optuna 2.10 + SQLAlchemy 2 fails with a plain ``sqlite:///`` URL (its schema stamp is rolled
    back: AssertionError in check_table_schema_compatibility); the preset's AUTOCOMMIT engine fixes it.
    """
    _need(OPTUNA_PLUGIN)
    import optuna
    from hydra.utils import instantiate

    sweeper = _compose(["hparams_search=flexunet_optuna", f"paths.root={tmp_path}"]).hydra.sweeper
    (tmp_path / "outputs").mkdir()

    def study() -> optuna.Study:  # what the plugin does: create_study(..., load_if_exists=True)
        return optuna.create_study(
            study_name=sweeper.study_name,
            storage=instantiate(sweeper.storage),
            sampler=instantiate(sweeper.sampler),
            direction=sweeper.direction,
            load_if_exists=True,
        )

    first = study()
    for value in (0.2, 0.5):
        trial = first.ask()
        trial.suggest_categorical("model.base_kernels", ["[3,3]", "[5,5]", "[7,7]"])
        first.tell(trial, value)
    again = study()
    assert len(again.trials) == 2 and again.best_value == pytest.approx(0.5)
    assert (tmp_path / "outputs" / "optuna.db").is_file()


# two Optuna sweeps of real jobs: about 2 min (the default run keeps the composition and storage tests)
@pytest.mark.slow
def test_optuna_sweep_runs_and_resumes(tmp_path: Path) -> None:
    """3 trials from a fresh project root write optimization_results.yaml; a rerun continues the study."""
    _need(OPTUNA_PLUGIN)
    import optuna
    from hydra.utils import instantiate

    def sweep(n_trials: int) -> subprocess.CompletedProcess:
        cmd = [
            sys.executable,
            "-m",
            "segexp.cli.train",
            "-m",
            "hparams_search=flexunet_optuna",
            *FAST_JOB,
            f"hydra.sweeper.n_trials={n_trials}",
            f"paths.root={tmp_path}",
        ]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=tmp_path)

    result = sweep(3)
    assert result.returncode == 0, (
        (
            "(unable to open database file: the sweep callback must create paths.output_dir before the study opens)\n"
            if "unable to open database file" in result.stderr
            else ""
        )
        + result.stdout[-3000:]
        + result.stderr[-3000:]
    )
    (results_file,) = (tmp_path / "outputs" / "train" / "multiruns").glob("*/*/optimization_results.yaml")
    results = OmegaConf.load(results_file)
    assert results.name == "optuna" and 0.0 <= results.best_value <= 1.0
    assert set(results.best_params) >= {"model.base_kernels", "training.learning_rate", "augmentation"}
    assert sorted(p.name for p in results_file.parent.iterdir() if p.is_dir()) == ["0", "1", "2"]

    result = sweep(1)  # same study_name and storage: the study goes on
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Using an existing study with name 'flexunet_optuna'" in result.stdout + result.stderr
    storage = _compose(["hparams_search=flexunet_optuna", f"paths.root={tmp_path}"]).hydra.sweeper.storage
    trials = optuna.load_study(study_name="flexunet_optuna", storage=instantiate(storage)).trials
    assert len(trials) == 4 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)


@pytest.mark.slow
def test_optuna_sweep_goes_on_after_a_failed_trial(tmp_path: Path) -> None:
    """A trial that cannot run (64x36 slices, num_layers=4) is recorded FAIL; the other trials complete.

    With seed 42 the third trial draws num_layers=4. The job must raise (not return NaN: the
    plugin then calls tell(FAIL, values=[nan]), which optuna refuses, and the sweep crashes).
    """
    _need(OPTUNA_PLUGIN)
    import optuna
    from hydra.utils import instantiate

    cmd = [
        sys.executable,
        "-m",
        "segexp.cli.train",
        "-m",
        "hparams_search=flexunet_optuna",
        *FAST_JOB,
        "model.image_height=36",
        "hydra.sweeper.sampler.seed=42",
        "hydra.sweeper.n_trials=3",
        f"paths.root={tmp_path}",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    storage = _compose(["hparams_search=flexunet_optuna", f"paths.root={tmp_path}"]).hydra.sweeper.storage
    trials = optuna.load_study(study_name="flexunet_optuna", storage=instantiate(storage)).trials
    states = [t.state for t in trials]
    assert len(trials) == 3 and optuna.trial.TrialState.FAIL in states and optuna.trial.TrialState.COMPLETE in states
    assert all(t.params["model.num_layers"] == 3 for t in trials if t.state == optuna.trial.TrialState.COMPLETE)
    (results_file,) = (tmp_path / "outputs" / "train" / "multiruns").glob("*/*/optimization_results.yaml")
    assert OmegaConf.load(results_file).best_params["model.num_layers"] == 3


# --------------------------------------------------------------------------- launchers


def test_every_launcher_preset_is_tested() -> None:
    assert sorted(p.stem for p in (CONF_DIR / "launcher").glob("*.yaml")) == sorted(LAUNCHERS)


@pytest.mark.parametrize("preset", sorted(LAUNCHERS))
def test_launcher_preset_composes(preset: str) -> None:
    plugin, target = LAUNCHERS[preset]
    _need(plugin)
    cfg = _compose([f"launcher={preset}"])
    assert cfg.hydra.launcher._target_ == target
    typed = _validated(cfg)
    if preset in ("joblib", "submitit_local"):  # parallel jobs on 2 cores: one thread and one loader worker each
        assert typed.training.threads.intra_op == typed.training.threads.inter_op == 1
        assert typed.training.loader.workers == 1
    if preset == "joblib":
        assert cfg.hydra.launcher.n_jobs == 2
    if preset == "submitit_local":
        launcher = cfg.hydra.launcher
        assert launcher.tasks_per_node == 1 and launcher.timeout_min > 0 and launcher.cpus_per_task == 1
    if preset == "submitit_slurm":
        launcher = cfg.hydra.launcher
        assert launcher.tasks_per_node == 1 and launcher.array_parallelism >= 1 and "partition" in launcher
        assert typed.training.threads.intra_op == launcher.cpus_per_task
    if preset == "gpu":
        assert cfg.hydra.launcher.gpus_per_node == 1 and cfg.hydra.launcher.tasks_per_node == 1
        assert typed.training.precision == "auto" and typed.training.jit_compile is True
        assert typed.training.batch_size > _validated(_compose([])).training.batch_size


def test_optuna_search_with_parallel_launcher_composes() -> None:
    _need(OPTUNA_PLUGIN)
    _need(JOBLIB_PLUGIN)
    cfg = _compose(["hparams_search=flexunet_optuna", "launcher=joblib", "hydra.sweeper.n_jobs=2"])
    assert cfg.hydra.sweeper._target_.endswith("OptunaSweeper") and cfg.hydra.launcher._target_.endswith(
        "JoblibLauncher"
    )
    assert cfg.hydra.sweeper.n_jobs == cfg.hydra.launcher.n_jobs == 2
    _validated(cfg)


@pytest.mark.parametrize("preset", ["joblib", pytest.param("submitit_local", marks=pytest.mark.slow)])  # CI time
def test_parallel_launcher_logs_complete_runs(tmp_path: Path, preset: str) -> None:
    """Two jobs at once on a fresh root: both generate the phantom, both log complete child runs to SQLite."""
    _need(LAUNCHERS[preset][0])
    import mlflow

    tracked = [o for o in FAST_JOB if o != "tracking=none"] + ["tracking.log_model=false"]
    cmd = [
        sys.executable,
        "-m",
        "segexp.cli.train",
        "-m",
        f"launcher={preset}",
        *tracked,
        "training.epochs=2",
        "training.learning_rate=1e-3,3e-4",
        f"paths.root={tmp_path}",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (sweep_dir,) = (tmp_path / "outputs" / "train" / "multiruns").glob("*/*")
    for job in ("0", "1"):
        assert (sweep_dir / job / "history.csv").is_file()
        assert OmegaConf.load(sweep_dir / job / ".hydra" / "config.yaml").training.threads.intra_op == 1
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/outputs/mlflow.db")
    client = mlflow.MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name("segexp").experiment_id])
    (parent,) = [r for r in runs if "sweep_dir" in r.data.tags]
    kids = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(kids) == 2 and all(k.info.status == "FINISHED" for k in kids)
    assert {k.data.params["training.learning_rate"] for k in kids} == {"0.001", "0.0003"}
    for kid in kids:
        for key in ("train/loss", "val/loss", "val/dice_fg_mean", "learning_rate"):
            assert [m.step for m in client.get_metric_history(kid.info.run_id, key)] == [1, 2], key
    assert parent.info.status == "FINISHED" and parent.data.tags["children_finished"] == "2"
