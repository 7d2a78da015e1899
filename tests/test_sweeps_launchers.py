"""Optuna search (``hparams_search=``) and launcher presets (``launcher=``) compose, validate and run.

The launcher plugins and Optuna are optional: each test skips, naming the package to install, when
it is missing (``pip install -e ".[sweeps]"``). segexp's own Optuna sweeper is tested in detail in
tests/test_optuna_sweeper.py.
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

OPTUNA = "optuna>=4.5,<6"
JOBLIB_PLUGIN = "hydra_plugins.hydra_joblib_launcher"
SUBMITIT_PLUGIN = "hydra_plugins.hydra_submitit_launcher"
PIP_NAMES = {
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


def _need_optuna() -> None:
    pytest.importorskip("optuna", minversion="4.5", reason=f"segexp's Optuna sweeper: pip install '{OPTUNA}'")


def test_optuna_search_composes(tmp_path: Path) -> None:
    cfg = _compose(["hparams_search=flexunet_optuna", f"paths.root={tmp_path}", "hydra.sweeper.n_trials=3"])
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_ == "hydra_plugins.segexp_optuna.sweeper.OptunaSweeper"
    assert sweeper.direction == "maximize" and cfg.training.monitor_mode == "max"
    assert cfg.training.monitor == "val_dice_fg_mean" and list(sweeper.objectives) == ["best/val_dice_fg_mean"]
    assert sweeper.study_name == "flexunet_optuna"
    assert sweeper.n_trials == 3 and sweeper.n_jobs == 1
    assert sweeper.sampler._target_ == "optuna.samplers.TPESampler" and sweeper.sampler.seed is not None
    assert sweeper.pruner is None
    assert sweeper.storage == f"sqlite:///{tmp_path}/outputs/optuna.db"  # beside mlflow.db (tracking.optuna_storage)
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
    """Parse hydra.sweeper.params as the sweeper does; every categorical choice composes and validates."""
    _need_optuna()
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    from segexp.launch.search_space import search_space

    params = _compose(["hparams_search=flexunet_optuna"]).hydra.sweeper.params
    parsed = search_space(OmegaConf.to_container(params, resolve=True), [])
    space = parsed.distributions()
    assert not parsed.fixed
    assert space["training.learning_rate"] == FloatDistribution(1e-4, 3e-3, log=True)
    assert space["model.dropout_rate"] == FloatDistribution(0.0, 0.2)
    # List-valued choices reach optuna as their override text and come back as lists through Hydra's parser.
    assert space["model.base_kernels"].choices == ("[3,3]", "[5,5]", "[7,7]")
    for name, dist in space.items():
        if not isinstance(dist, CategoricalDistribution):
            continue
        for choice in dist.choices:
            for base in ([], ["debug=fast"]):  # the default model (128 px) and the smoke-test model (64 px)
                cfg = _validated(_compose([*base, parsed.parameters[name].override(choice)]))
                if name == "model.base_kernels":
                    assert list(cfg.model.base_kernels) == OmegaConf.create(f"k: {choice}").k
    # the largest dropout at the deepest level stays below 1
    _validated(_compose(["model.num_layers=5", "model.dropout_rate=0.2"]))


def test_optuna_storage_persists_and_resumes(tmp_path: Path) -> None:
    """The configured storage works with the installed Optuna + SQLAlchemy 2 and a second open resumes the study."""
    _need_optuna()
    from segexp.launch.optuna_search import open_study, search_settings
    from segexp.launch.search_space import search_space

    cfg = _compose(["hparams_search=flexunet_optuna", f"paths.root={tmp_path}"])
    settings = search_settings(cfg.hydra.sweeper, cfg.training.monitor, cfg.training.monitor_mode)
    space = search_space(settings.params, [])
    first = open_study(settings, space)
    for value in (0.2, 0.5):
        trial = first.ask(space.distributions())
        first.tell(trial, value)
    again = open_study(settings, space)
    assert len(again.trials) == 2 and again.best_value == pytest.approx(0.5)
    assert again.trials[0].params["model.base_kernels"] in ("[3,3]", "[5,5]", "[7,7]")
    assert (tmp_path / "outputs" / "optuna.db").is_file() and (tmp_path / "outputs" / "optuna.db").stat().st_size


def _sweep(root: Path, *overrides: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "segexp.cli.train", "-m", "hparams_search=flexunet_optuna", *FAST_JOB]
    return subprocess.run(
        [*cmd, *overrides, f"paths.root={root}"], capture_output=True, text=True, timeout=900, cwd=root
    )


# three Optuna sweeps of real jobs: about 1.5 min (the default run keeps the composition and storage tests)
@pytest.mark.slow
def test_optuna_sweep_runs_and_resumes(tmp_path: Path) -> None:
    """3 trials from a fresh project root write optimization_results.yaml; a rerun with the same n_trials runs
    nothing (the study is complete), one with n_trials=4 runs the missing trial only."""
    _need_optuna()
    import optuna

    result = _sweep(tmp_path, "hydra.sweeper.n_trials=3")
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

    result = _sweep(tmp_path, "hydra.sweeper.n_trials=3")  # the study holds 3 trials: nothing to run
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "3 trials so far; 0 to run" in result.stdout + result.stderr
    result = _sweep(tmp_path, "hydra.sweeper.n_trials=4")  # same study_name and storage: the study goes on
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "3 trials so far; 1 to run" in result.stdout + result.stderr
    trials = optuna.load_study(study_name="flexunet_optuna", storage=f"sqlite:///{tmp_path}/outputs/optuna.db").trials
    assert len(trials) == 4 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)


@pytest.mark.slow
def test_optuna_sweep_goes_on_after_a_failed_trial(tmp_path: Path) -> None:
    """A trial that cannot run (64x36 slices, num_layers=4) is recorded FAIL; the other trial completes. A grid
    over num_layers 3 and 4 with everything else fixed tries each once (n_trials=3 is capped at the grid's 2)."""
    _need_optuna()
    import optuna

    fixed = ["training.learning_rate=1e-3", "model.base_filters=8", "model.base_kernels=[3,3]", "augmentation=flips"]
    result = _sweep(
        tmp_path,
        *fixed,
        "model.dropout_rate=0",
        "model.num_layers=choice(3,4)",
        "model.image_height=36",
        "hparams_search.sampler=grid",
        "hydra.sweeper.n_trials=3",
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    trials = optuna.load_study(study_name="flexunet_optuna", storage=f"sqlite:///{tmp_path}/outputs/optuna.db").trials
    states = {t.params["model.num_layers"]: t.state for t in trials}
    assert states == {3: optuna.trial.TrialState.COMPLETE, 4: optuna.trial.TrialState.FAIL}
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
