"""segexp's Optuna sweeper (hydra_plugins/segexp_optuna, segexp/launch/optuna_search.py) on Optuna >= 4.5.

Most tests drive the search with a fake launcher (jobs answered at once): search space, settings checks, resume,
several objectives and the Pareto front on the MLflow parent, pruning against an SQLite study; one real training
run is pruned by its study, and one real sweep of four tiny jobs prunes a poor trial in process (the same on joblib
is marked slow; on SLURM: tests/test_slurm.py).
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import DictConfig, OmegaConf, open_dict

from segexp.config.resolvers import optuna_storage
from segexp.config.schema import CONF_DIR, expand_aliases, renamed_overrides, validate_train_config
from segexp.core.errors import ConfigError

optuna = pytest.importorskip("optuna", minversion="4.5", reason='segexp\'s sweeper needs pip install "optuna>=4.5,<6"')

from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from segexp.launch.optuna_search import (  # noqa: E402
    RESULTS_FILE,
    SearchSettings,
    build_sampler,
    check_search,
    open_study,
    run_search,
    search_settings,
    trial_result,
)
from segexp.launch.search_space import quoted, search_space  # noqa: E402
from segexp.launch.sweep import OPTUNA_SWEEPER  # noqa: E402
from segexp.tracking.study import BEST_TABLE, PRUNER_ATTR, TRIALS_TABLE, log_study  # noqa: E402
from segexp.training.pruning import TrialLink, TrialPruning, build_pruner, open_trial  # noqa: E402

from .conftest import TINY_DATASET_OVERRIDES, sqlite_tracked_run  # noqa: E402

#: Every Optuna search preset (conf/hparams_search/): its study name and its directions.
PRESETS = {
    "flexunet_optuna": ["maximize"],
    "architecture_optuna": ["maximize"],
    "flexunet_pareto": ["maximize", "minimize"],
}


def _compose(overrides: Sequence[str]) -> DictConfig:
    """The train config with the ``hydra`` node, as a multirun sees it (segexp-train's aliases spelled out)."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=expand_aliases(list(overrides)), return_hydra_config=True)


def _settings(tmp_path: Path, *overrides: str) -> SearchSettings:
    """The settings of ``hparams_search=flexunet_optuna`` under ``paths.root=tmp_path``, with ``overrides``."""
    cfg = _compose(["hparams_search=flexunet_optuna", f"paths.root={tmp_path}", *overrides])
    return search_settings(cfg.hydra.sweeper, cfg.training.monitor, cfg.training.monitor_mode)


def _returned(overrides: Sequence[str], value: Any, failed: bool = False) -> JobReturn:
    ret = JobReturn(overrides=list(overrides))
    ret.status = JobStatus.FAILED if failed else JobStatus.COMPLETED
    ret.return_value = value
    return ret


def _override(overrides: Sequence[str], key: str) -> str:
    return next(o.split("=", 1)[1] for o in overrides if o.startswith(f"{key}="))


def fake_launch(answer: Callable[[Sequence[str]], JobReturn], log: list[list[str]]) -> Callable[..., list[JobReturn]]:
    """A launcher that answers each job at once with ``answer(overrides)``; ``log`` collects the batches."""

    def launch(batch: Sequence[Sequence[str]], first_job: int) -> list[JobReturn]:
        log.append([f"{first_job + i}" for i in range(len(batch))])
        return [answer(list(overrides)) for overrides in batch]

    return launch


def dice_of(overrides: Sequence[str]) -> dict[str, Any]:
    """A job's result whose Dice grows with the learning rate's log (no training)."""
    lr = float(_override(overrides, "training.learning_rate"))
    return {
        "best/val_dice_fg_mean": 1.0 + 0.1 * math.log10(lr),
        "wall_time_s": 1.0,
        "num_params": 1000.0 * int(_override(overrides, "model.base_filters")),
        "epochs": 2.0,
        "pruned_at_epoch": None,
    }


# --------------------------------------------------------------------------- configuration


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_search_preset_composes_with_segexp_sweeper(preset: str, tmp_path: Path) -> None:
    cfg = _compose([f"hparams_search={preset}", f"paths.root={tmp_path}"])
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_ == OPTUNA_SWEEPER == "hydra_plugins.segexp_optuna.sweeper.OptunaSweeper"
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN" and sweeper.study_name == preset
    assert sweeper.storage == f"sqlite:///{tmp_path}/outputs/optuna.db"  # beside mlflow.db, never in it
    assert sweeper.sampler._target_ == "optuna.samplers.TPESampler" and sweeper.sampler.seed == 42
    assert sweeper.pruner is None
    settings = search_settings(sweeper, cfg.training.monitor, cfg.training.monitor_mode)
    assert settings.directions == PRESETS[preset] and settings.objectives[0] == "best/val_dice_fg_mean"
    assert len(search_space(settings.params, []).parameters) >= 4
    task = cfg.copy()
    with open_dict(task):
        task.pop("hydra")
    assert validate_train_config(task).optuna.trial is None


def test_samplers_and_pruners_compose_under_their_aliases(tmp_path: Path) -> None:
    assert expand_aliases(["hparams_search.pruner=median", "hparams_search.pruner.n_warmup_steps=0", "x=1"]) == [
        "hydra/sweeper/optuna_pruner=median",
        "hydra.sweeper.pruner.n_warmup_steps=0",
        "x=1",
    ]
    for sampler in ("tpe", "random", "cmaes", "grid"):
        for pruner in ("none", "median", "hyperband"):
            cfg = _compose(
                [
                    "hparams_search=flexunet_optuna",
                    f"hparams_search.sampler={sampler}",
                    f"hparams_search.pruner={pruner}",
                ]
            )
            assert cfg.hydra.sweeper.sampler._target_.lower() == f"optuna.samplers.{sampler}sampler"
            assert (cfg.hydra.sweeper.pruner is None) == (pruner == "none")
            settings = search_settings(cfg.hydra.sweeper, cfg.training.monitor, cfg.training.monitor_mode)
            built = build_pruner(settings.pruner)
            assert (
                type(built).__name__
                == {"none": "NopPruner", "median": "MedianPruner", "hyperband": "HyperbandPruner"}[pruner]
            )
        grid = search_space({"model.num_layers": "choice(3, 4)"}, [])  # a grid needs choices
        assert type(build_sampler(settings.sampler, grid, 3)).__name__.lower() == f"{sampler}sampler"
    median = _settings(tmp_path, "hparams_search.pruner=median", "hparams_search.pruner.n_startup_trials=1")
    assert median.pruner is not None and median.pruner["_target_"] == "optuna.pruners.MedianPruner"
    assert median.pruner["n_startup_trials"] == 1
    # the old plugin's keys are refused on the command line with their new spelling
    problems = renamed_overrides(["hydra/sweeper/sampler=random", "hydra.sweeper.storage.url=sqlite:///x.db"])
    assert "hparams_search.sampler=tpe | random" in problems[0] and "hydra.sweeper.storage is the URL" in problems[1]


def test_the_study_storage_is_beside_the_tracking_store() -> None:
    assert optuna_storage("sqlite:////data/runs/mlflow.db", "/out") == "sqlite:////data/runs/optuna.db"
    assert optuna_storage("http://127.0.0.1:5000", "/out") == "sqlite:////out/optuna.db"
    assert optuna_storage("postgresql+psycopg2://u:secret@db:5432/mlflow", "/out") == (
        "postgresql+psycopg2://u:secret@db:5432/optuna"
    )
    server = _compose(["hparams_search=flexunet_optuna", "tracking=server"]).hydra.sweeper.storage
    assert server.endswith("@127.0.0.1:5433/optuna")  # scripts/mlflow_server.sh's PostgreSQL, database optuna


def test_settings_problems_name_the_keys(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"hydra.sweeper.direction: minimize for best/val_dice_fg_mean, but "):
        _settings(tmp_path, "hydra.sweeper.direction=minimize")
    with pytest.raises(ConfigError, match=r"hydra.sweeper.objectives: 'test/dice' is not a run's value"):
        _settings(tmp_path, "hydra.sweeper.objectives=[test/dice]")
    with pytest.raises(ConfigError, match=r"one direction per objective"):
        _settings(tmp_path, "hydra.sweeper.objectives=[best/val_dice_fg_mean,num_params]")
    with pytest.raises(ConfigError, match=r"hydra.sweeper.pruner: a study of 2 objectives cannot be pruned"):
        _settings(
            tmp_path,
            "hydra.sweeper.objectives=[best/val_dice_fg_mean,num_params]",
            "hydra.sweeper.direction=[maximize,minimize]",
            "hparams_search.pruner=median",
        )
    grid = _settings(tmp_path, "hparams_search.sampler=grid")
    with pytest.raises(ConfigError, match=r"hydra.sweeper.params.training.learning_rate: an interval has no grid"):
        build_sampler(grid.sampler, search_space(grid.params, []), 0)
    architecture = _compose(["hparams_search=architecture_optuna", "hparams_search.sampler=random"])
    settings = search_settings(architecture.hydra.sweeper, "val_dice_fg_mean", "max")
    with pytest.raises(ConfigError, match=r"RandomSampler takes no n_startup_trials .*~hydra.sweeper.sampler"):
        build_sampler(settings.sampler, search_space({}, []), 0)


def test_a_search_that_cannot_run_stops_before_anything_starts(tmp_path: Path) -> None:
    """segexp-train exits 2 naming the key, before the MLflow parent run and any job (OptunaSearchCheck)."""
    cmd = [sys.executable, "-m", "segexp.cli.train", "-m", "hparams_search=flexunet_optuna", f"paths.root={tmp_path}"]
    result = subprocess.run(
        [*cmd, "hydra.sweeper.direction=minimize", "model.num_layers=tag(log, interval(0, 4))"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert result.returncode == 2, result.stdout[-3000:] + result.stderr[-3000:]
    assert "error: invalid config:" in result.stderr
    assert "hydra.sweeper.direction: minimize for best/val_dice_fg_mean, but training.monitor_mode=max" in result.stderr
    assert not (tmp_path / "outputs" / "mlflow.db").exists() and not list(tmp_path.glob("outputs/train/multiruns/*"))
    bad_space = _compose(["hparams_search=flexunet_optuna"])
    with open_dict(bad_space):  # as a multirun records its command line (compose refuses sweeps)
        bad_space.hydra.overrides.task = ["model.num_layers=tag(log, interval(0, 4))"]
    with pytest.raises(ConfigError, match=r"^model.num_layers: model.num_layers=tag\(log, interval\(0, 4\)\): "):
        check_search(bad_space)  # what the callback runs: the command line's sweeps are parsed too
    with pytest.raises(ConfigError, match=r"^hydra.sweeper.storage: cannot open postgresql\+psycopg2://u:\*\*\*@"):
        check_search(
            _compose(
                ["hparams_search=flexunet_optuna", "hydra.sweeper.storage='postgresql+psycopg2://u:pw@127.0.0.1:1/x'"]
            )
        )


# --------------------------------------------------------------------------- search space


def test_search_space_reads_hydra_sweep_syntax() -> None:
    params = {
        "training.learning_rate": "tag(log, interval(1e-4, 3e-3))",
        "model.dropout_rate": "interval(0.0, 0.2)",
        "model.num_layers": "range(3, 6)",
        "training.epochs": "tag(int, interval(2, 8))",
        "training.batch_size": "tag(log, int, interval(2, 32))",
        "training.foreground_fraction": "range(0.0, 0.5, 0.25)",
        "model.base_kernels": "choice([3,3], [5,5])",
        "augmentation": "flips,full",
    }
    space = search_space(params, ["hparams_search=flexunet_optuna", "augmentation=none", "seed=choice(1,2)"])
    d = space.distributions()
    assert d["training.learning_rate"] == FloatDistribution(1e-4, 3e-3, log=True)
    assert d["model.dropout_rate"] == FloatDistribution(0.0, 0.2)
    assert d["model.num_layers"] == IntDistribution(3, 5)  # range's stop is excluded, as in Hydra's grid
    assert d["training.epochs"] == IntDistribution(2, 8)
    assert d["training.batch_size"] == IntDistribution(2, 32, log=True)
    assert d["training.foreground_fraction"] == FloatDistribution(0.0, 0.25, step=0.25)
    assert d["model.base_kernels"] == CategoricalDistribution(["[3,3]", "[5,5]"])
    assert d["seed"] == CategoricalDistribution([1, 2])  # a sweep on the command line joins the space
    assert "augmentation" not in d  # the command line fixed it
    assert space.fixed == ["hparams_search=flexunet_optuna", "augmentation=none"]
    jobs = space.overrides({"model.base_kernels": "[5,5]", "training.learning_rate": 1e-05, "seed": 2})
    assert jobs[2:] == ["model.base_kernels=[5,5]", "training.learning_rate=1e-05", "seed=2"]
    parsed = OverridesParser.create().parse_overrides(jobs)
    assert parsed[2].value() == [5, 5] and parsed[3].value() == 1e-05  # Hydra reads a list back as the list
    assert search_space({"m": "choice(3,4)"}, []).grid() == {"m": [3, 4]}
    assert search_space({"m": "range(1, 9, 3)"}, []).grid_size() == 3
    for bad, message in (
        ("interval(1, 1)", r"expected low < high"),
        ("tag(log, interval(0, 1))", r"low > 0"),
        ("tag(int, interval(0.5, 3))", r"whole-number bounds"),
        ("tag(cube, interval(1, 2))", r"unknown tags \['cube'\]"),
        ("range(3, 3)", r"an empty range"),
    ):
        with pytest.raises(ConfigError, match=rf"^x: x={re.escape(bad)}: .*{message}"):
            search_space({"x": bad}, [])


@pytest.mark.parametrize("text", ["sqlite:////tmp/a b/optuna.db", "it's", "a,b", "C:\\dir\\x.db", "end\\", "q\\'"])
def test_quoted_values_parse_back_exactly(text: str) -> None:
    assert OverridesParser.create().parse_override(f"optuna.storage={quoted(text)}").value() == text


# --------------------------------------------------------------------------- the search, with fake jobs


def test_search_runs_resumes_and_records_every_outcome(tmp_path: Path) -> None:
    """Pruned and failed jobs are told PRUNED and FAIL; a rerun runs only the trials still missing (new draws)."""
    settings = _settings(tmp_path, "hydra.sweeper.n_trials=4", "hydra.sweeper.n_jobs=2")
    sweep_dir = tmp_path / "sweep"
    sweep_dir.mkdir()
    batches: list[list[str]] = []
    seen: list[list[str]] = []

    def answer(overrides: Sequence[str]) -> JobReturn:
        seen.append(list(overrides))
        trial = int(_override(overrides, "optuna.trial"))
        if trial == 1:
            return _returned(overrides, {**dice_of(overrides), "pruned_at_epoch": 1})
        if trial == 2:
            return _returned(overrides, ValueError("model.num_layers: too deep"), failed=True)
        return _returned(overrides, dice_of(overrides))

    run_search(
        settings, ["hparams_search=flexunet_optuna", "model.num_layers=3"], fake_launch(answer, batches), sweep_dir
    )
    assert batches == [["0", "1"], ["2", "3"]]
    assert all("model.num_layers=3" in o and "hparams_search=flexunet_optuna" in o for o in seen)
    assert _override(seen[0], "optuna.storage") == f"'{settings.storage}'"
    assert _override(seen[0], "optuna.study") == "'flexunet_optuna'"
    study = optuna.load_study(study_name="flexunet_optuna", storage=settings.storage)
    assert [t.state for t in study.trials] == [
        TrialState.COMPLETE,
        TrialState.PRUNED,
        TrialState.FAIL,
        TrialState.COMPLETE,
    ]
    assert "model.num_layers" not in study.trials[0].params  # fixed on the command line
    assert study.user_attrs[PRUNER_ATTR] is None
    results = OmegaConf.load(sweep_dir / RESULTS_FILE)
    assert results.name == "optuna" and results.best_trial in (0, 3) and 0 < results.best_value < 1

    run_search(settings, [], fake_launch(answer, batches), sweep_dir)  # the study is full: nothing runs
    assert len(batches) == 2
    more = _settings(tmp_path, "hydra.sweeper.n_trials=5")
    run_search(more, [], fake_launch(answer, batches), sweep_dir)
    assert batches[2:] == [["0"]] and len(study.trials) == 5  # only the missing trial
    first = {t.params["training.learning_rate"] for t in study.trials[:4]}
    assert study.trials[4].params["training.learning_rate"] not in first  # seeded anew on resume: no replay


def test_too_many_failures_stop_the_search(tmp_path: Path) -> None:
    settings = _settings(tmp_path, "hydra.sweeper.n_trials=3", "hydra.sweeper.max_failure_rate=0.5")
    batches: list[list[str]] = []
    with pytest.raises(RuntimeError, match=r"1 of 1 trials failed \(hydra.sweeper.max_failure_rate=0.5\)"):
        run_search(settings, [], fake_launch(lambda o: _returned(o, OSError("disk"), failed=True), batches), tmp_path)
    assert len(batches) == 1
    assert trial_result(_returned([], 0.5), ["best/val_dice_fg_mean"]) == ("COMPLETE", [0.5], "")
    assert trial_result(_returned([], {"wall_time_s": 3.0}), ["num_params"])[0] == "FAIL"
    assert trial_result(_returned([], {"num_params": float("nan")}), ["num_params"])[0] == "FAIL"


def test_a_grid_search_tries_every_point_once(tmp_path: Path) -> None:
    settings = _settings(tmp_path, "hparams_search.sampler=grid", "hydra.sweeper.n_trials=10")
    fixed = ["training.learning_rate=0.001", "model.dropout_rate=0", "augmentation=flips", "model.base_kernels=[3,3]"]
    batches: list[list[str]] = []
    seen: list[list[str]] = []

    def answer(overrides: Sequence[str]) -> JobReturn:
        seen.append(list(overrides))
        return _returned(overrides, dice_of(overrides))

    run_search(settings, [*fixed, "model.num_layers=3"], fake_launch(answer, batches), tmp_path)
    points = {(_override(o, "model.base_filters"),) for o in seen}
    assert len(seen) == 3 and points == {("8",), ("16",), ("32",)}  # base_filters: choice(8, 16, 32)


def test_several_objectives_give_the_parent_the_pareto_front(tmp_path: Path) -> None:
    cfg = _compose(["hparams_search=flexunet_pareto", f"paths.root={tmp_path}", "hydra.sweeper.n_trials=6"])
    settings = search_settings(cfg.hydra.sweeper, cfg.training.monitor, cfg.training.monitor_mode)
    assert settings.objectives == ["best/val_dice_fg_mean", "num_params"]
    run_search(settings, [], fake_launch(lambda o: _returned(o, dice_of(o)), []), tmp_path)
    study = optuna.load_study(study_name="flexunet_pareto", storage=settings.storage)
    front = {t.number for t in study.best_trials}
    assert front and len(study.trials) == 6
    results = OmegaConf.load(tmp_path / RESULTS_FILE)
    assert {s.trial for s in results.solutions} == front and list(results.objectives) == settings.objectives

    import mlflow

    with sqlite_tracked_run(tmp_path, run_name="parent") as parent:
        pass
    log_study(parent.run_id, parent.uri, study, settings.storage, settings.objectives)
    client = mlflow.MlflowClient(parent.uri)
    run = client.get_run(parent.run_id)
    assert {int(n) for n in run.data.tags["optuna.pareto_front"].split(",")} == front
    assert run.data.tags["optuna.study_name"] == "flexunet_pareto" and run.data.tags["optuna.trials_complete"] == "6"
    artifacts = {a.path for a in client.list_artifacts(parent.run_id, "sweep")}
    assert {TRIALS_TABLE, BEST_TABLE, "sweep/optuna_pareto_front.png"} <= artifacts
    assert "sweep/optuna_importance_best_val_dice_fg_mean.png" in artifacts
    table = json.loads(Path(client.download_artifacts(parent.run_id, BEST_TABLE, str(tmp_path / "dl"))).read_text())
    assert {"trial", "best/val_dice_fg_mean", "num_params"} <= set(table["columns"])
    assert {row[table["columns"].index("trial")] for row in table["data"]} == front


def test_importance_needs_two_completed_trials(tmp_path: Path) -> None:
    settings = _settings(tmp_path, "hydra.sweeper.n_trials=1")
    run_search(settings, [], fake_launch(lambda o: _returned(o, dice_of(o)), []), tmp_path)
    study = optuna.load_study(study_name="flexunet_optuna", storage=settings.storage)
    import mlflow

    with sqlite_tracked_run(tmp_path, run_name="parent") as parent:
        pass
    log_study(parent.run_id, parent.uri, study, settings.storage, settings.objectives)
    artifacts = {a.path for a in mlflow.MlflowClient(parent.uri).list_artifacts(parent.run_id, "sweep")}
    assert "sweep/optuna_history.png" in artifacts and not any("importance" in a for a in artifacts)


# --------------------------------------------------------------------------- pruning


def _study_with_a_finished_trial(tmp_path: Path, pruner: str = "median") -> tuple[SearchSettings, Any]:
    """A study (SQLite, MedianPruner after 1 trial, no warm-up) whose trial 0 reached 0.8 after epoch 1."""
    settings = _settings(
        tmp_path,
        f"hparams_search.pruner={pruner}",
        "hparams_search.pruner.n_startup_trials=1",
        "hparams_search.pruner.n_warmup_steps=0",
    )
    study = open_study(settings, search_space(settings.params, []))
    first = study.ask()
    first.report(0.8, 1)
    study.tell(first, 0.8)
    return settings, study


def test_a_worse_trial_is_pruned_through_the_storage(tmp_path: Path) -> None:
    settings, study = _study_with_a_finished_trial(tmp_path)
    asked = study.ask()
    trial = open_trial(TrialLink(settings.study_name, settings.storage, asked.number))  # as a job in another process
    callback = TrialPruning(trial, "val_dice_fg_mean")
    callback.set_model(SimpleNamespace(stop_training=False))
    callback.on_epoch_end(0, {"loss": 1.0})  # no validation this epoch: nothing reported
    assert asked.number not in [t.number for t in study.trials if t.intermediate_values]
    callback.on_epoch_end(0, {"val_dice_fg_mean": 0.9})  # better than the median: goes on
    assert callback.pruned_at_epoch is None and not callback.model.stop_training
    callback.on_epoch_end(1, {"val_dice_fg_mean": 0.1})  # step 2: no finished trial got there, nothing to compare
    assert callback.pruned_at_epoch is None
    worse = study.ask()
    worse_callback = TrialPruning(
        open_trial(TrialLink(settings.study_name, settings.storage, worse.number)), "val_dice_fg_mean"
    )
    worse_callback.set_model(SimpleNamespace(stop_training=False))
    worse_callback.on_epoch_end(0, {"val_dice_fg_mean": 0.2})  # below trial 0's 0.8 at step 1: pruned
    assert worse_callback.pruned_at_epoch == 1 and worse_callback.model.stop_training
    assert study.trials[worse.number].intermediate_values == {1: 0.2}
    state, values, why = trial_result(_returned([], {"pruned_at_epoch": 1, "best/val_dice_fg_mean": 0.2}), ["x"])
    assert (state, values, why) == ("PRUNED", None, "pruned after epoch 1")
    study.tell(worse, state=TrialState.PRUNED)
    assert study.trials[worse.number].state == TrialState.PRUNED and study.trials[worse.number].value == 0.2
    with pytest.raises(ConfigError, match=r"optuna.trial=2: trial of study 'flexunet_optuna' in .* already ended"):
        open_trial(TrialLink(settings.study_name, settings.storage, worse.number))
    with pytest.raises(ConfigError, match=r"optuna.trial=99: no such trial"):
        open_trial(TrialLink(settings.study_name, settings.storage, 99))


def test_a_pruned_run_ends_like_a_time_budget_and_is_killed(
    compose_train: Callable[..., DictConfig], tiny_dataset: Path, tmp_path: Path
) -> None:
    """A real (tiny) run in a trial the study prunes after epoch 1: it stops, keeps its best checkpoint, is not
    evaluated, ends KILLED with ``pruned_at_epoch`` and the trial number, and the trial leads to the run."""
    import mlflow

    from segexp.training.loop import train_run

    settings, study = _study_with_a_finished_trial(tmp_path)
    study.set_user_attr(PRUNER_ATTR, {"_target_": "optuna.pruners.ThresholdPruner", "lower": 1.5})  # always below
    trial = study.ask()
    cfg = compose_train(
        *TINY_DATASET_OVERRIDES,
        f"dataset.root={tiny_dataset}",
        "training.epochs=3",
        "tracking.log_model=false",
        "tracking.system_metrics=false",
        f"optuna.study={settings.study_name}",
        f"optuna.storage={quoted(settings.storage)}",
        f"optuna.trial={trial.number}",
    )
    run_dir = tmp_path / "run"
    outcome = train_run(cfg, run_dir, overrides=[f"optuna.trial={trial.number}"])
    assert outcome.pruned_at_epoch == 1 and outcome.epochs == 1 and outcome.result()["pruned_at_epoch"] == 1
    assert (run_dir / "checkpoints" / "best.keras").is_file() and not (run_dir / "evaluation").exists()
    frozen = optuna.load_study(study_name=settings.study_name, storage=settings.storage).trials[trial.number]
    assert list(frozen.intermediate_values) == [1] and frozen.user_attrs["run_dir"] == str(run_dir)
    run = mlflow.MlflowClient(cfg.tracking.uri).get_run(frozen.user_attrs["mlflow_run_id"])
    assert run.info.status == "KILLED"
    assert run.data.tags["pruned_at_epoch"] == "1" and run.data.tags["optuna.trial_number"] == str(trial.number)
    assert run.data.metrics["best/val_dice_fg_mean"] == pytest.approx(frozen.intermediate_values[1])


# --------------------------------------------------------------------------- real sweeps

#: The pruned sweep: 2 epochs on the tiny dataset; only the learning rate varies, 1e-8 (learns nothing: its
#: validation loss stays high) or 1e-2. With the TPE seed 42 the trials draw 1e-8, 1e-2, 1e-2, 1e-8: the last one
#: is worse than the median after epoch 1 (in process: of trials 0-2; with joblib: of trials 0 and 1).
PRUNED_SWEEP = (
    "hparams_search=flexunet_optuna",
    "hparams_search.pruner=median",
    "hparams_search.pruner.n_startup_trials=1",
    "hparams_search.pruner.n_warmup_steps=0",
    "training.learning_rate=choice(1e-2,1e-8)",
    "model.base_kernels=[3,3]",
    "model.dropout_rate=0",
    "augmentation=flips",
    "training.monitor=val_loss",
    "training.monitor_mode=min",
    "hydra.sweeper.direction=minimize",
    "hydra.sweeper.n_trials=4",
    "tracking.log_model=false",
    "tracking.system_metrics=false",
    "training.evaluate_after=false",
    "training.epoch_images.num=0",
)


def run_pruned_sweep(tmp_path: Path, *extra: str) -> None:
    """The pruned sweep on the tiny dataset under ``tmp_path``; checks the study, the children and the parent."""
    import mlflow

    from .conftest import write_tiny_dataset

    data = write_tiny_dataset(tmp_path / "tiny")
    cmd = [
        *(sys.executable, "-m", "segexp.cli.train", "-m"),
        *TINY_DATASET_OVERRIDES,
        f"dataset.root={data}",
        *PRUNED_SWEEP,
        *extra,
        f"paths.root={tmp_path}",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    study = optuna.load_study(study_name="flexunet_optuna", storage=f"sqlite:///{tmp_path}/outputs/optuna.db")
    states = [t.state for t in study.trials]
    assert len(states) == 4 and TrialState.PRUNED in states, [(t.params, t.intermediate_values) for t in study.trials]
    pruned = [t for t in study.trials if t.state == TrialState.PRUNED]
    assert all(list(t.intermediate_values) == [1] for t in pruned)  # stopped after epoch 1 of 2
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/outputs/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("segexp").experiment_id])
    (parent,) = [r for r in runs if "sweep_dir" in r.data.tags]
    kids = {int(r.data.tags["optuna.trial_number"]): r for r in runs if "optuna.trial_number" in r.data.tags}
    assert sorted(kids) == [0, 1, 2, 3]
    for t in pruned:
        assert kids[t.number].info.status == "KILLED" and kids[t.number].data.tags["pruned_at_epoch"] == "1"
        assert t.user_attrs["mlflow_run_id"] == kids[t.number].info.run_id
    assert parent.data.tags["children_pruned"] == str(len(pruned))
    assert parent.data.tags["optuna.trials_pruned"] == str(len(pruned))
    assert parent.data.tags["optuna.pruner"] == "optuna.pruners.MedianPruner"
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "sweep")}
    assert {"sweep/optuna_intermediate_values.png", "sweep/optuna_history.png", TRIALS_TABLE} <= artifacts


def test_a_sweep_in_process_prunes_a_poor_trial(tmp_path: Path) -> None:  # four tiny jobs: about 30 s on 2 cores
    run_pruned_sweep(tmp_path)


@pytest.mark.slow  # the same on two joblib workers: about 30 s on 2 cores idle, far more when they are shared
def test_a_sweep_on_joblib_prunes_a_poor_trial(tmp_path: Path) -> None:
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher", reason="pip install 'hydra-joblib-launcher==1.2.0'")
    run_pruned_sweep(tmp_path, "launcher=joblib", "hydra.sweeper.n_jobs=2")
