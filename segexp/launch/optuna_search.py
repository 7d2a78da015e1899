"""segexp's Optuna search: ask a batch of trials, launch their jobs through Hydra's launcher, tell what they returned.

The Hydra sweeper plugin (``hydra_plugins/segexp_optuna/sweeper.py``, ``hydra.sweeper._target_``) is a thin shell
around :func:`run_search`, so every Hydra launcher runs the trials: in process, joblib, submitit locally or on
SLURM. The settings are ``hydra.sweeper`` (``conf/hydra/sweeper/segexp_optuna.yaml``), typed and checked by
:func:`search_settings` (a :class:`ConfigError` names the key); the search space is
:mod:`segexp.launch.search_space`.

Each job gets the trial's parameters as overrides and ``optuna.study``, ``optuna.storage``, ``optuna.trial``
(:func:`trial_overrides`), through which it reaches its trial to report every validated epoch and be pruned
(:mod:`segexp.training.pruning`). A job returns :meth:`segexp.training.loop.RunOutcome.result`; :func:`trial_result`
picks the objectives (``hydra.sweeper.objectives``) from it, or sees that it was pruned or failed.

:class:`OptunaSearchCheck` (a Hydra callback, ``conf/hydra/default.yaml``, before the MLflow parent opens) checks
the settings, the search space and the storage, and stops a search that cannot run at once (exit 2, naming the
key).

The study is resumable: :func:`open_study` loads it from the storage when it exists, and the search runs only the
trials still missing up to ``n_trials`` (complete, pruned and failed ones count). A resumed study's sampler is seeded
``seed + trials so far``, so it does not replay the first invocation's random draws.
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from segexp.core.errors import ConfigError, SegexpError, raise_config_problems
from segexp.core.files import atomic_write_text
from segexp.launch.search_space import SearchSpace, quoted, search_space
from segexp.tracking.study import (
    OBJECTIVES_ATTR,
    PRUNED_TAG,
    PRUNER_ATTR,
    best_trials,
    finished_trials,
    masked_url,
    open_storage,
)
from segexp.training.loop import OUTCOME_VALUES
from segexp.training.pruning import PRUNER_MODULE, build_entry, build_pruner

if TYPE_CHECKING:
    import optuna
    from hydra.core.utils import JobReturn

log = logging.getLogger(__name__)

DIRECTIONS = ("maximize", "minimize")
GRID_SAMPLER = "optuna.samplers.GridSampler"
#: The summary the sweep writes into its folder (as hydra-optuna-sweeper did).
RESULTS_FILE = "optimization_results.yaml"

#: ``batch of override lists, first job index -> the jobs' returns``: the sweeper's launcher.
Launch = Callable[[Sequence[Sequence[str]], int], Sequence["JobReturn"]]


@dataclass(frozen=True)
class SearchSettings:
    """``hydra.sweeper``, typed (:func:`search_settings`)."""

    study_name: str
    storage: str
    directions: list[str]
    objectives: list[str]
    n_trials: int
    n_jobs: int
    max_failure_rate: float
    sampler: dict[str, Any]  # a _target_ entry of optuna.samplers
    pruner: dict[str, Any] | None  # a _target_ entry of optuna.pruners, or None
    params: dict[str, Any]  # the search space: key -> Hydra sweep


def _plain(node: Any) -> Any:
    """A config node as plain Python (resolved), anything else unchanged."""
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def search_settings(sweeper: Mapping[str, Any], monitor: str, monitor_mode: str) -> SearchSettings:
    """The sweeper's keys typed and checked against each other and ``training.monitor`` / ``monitor_mode``; every
    problem in one :class:`ConfigError`, each naming its ``hydra.sweeper`` key and value."""
    direction = _plain(sweeper.get("direction"))
    directions = [str(d) for d in (direction if isinstance(direction, list) else [direction])]
    objectives = [str(o) for o in (_plain(sweeper.get("objectives")) or [f"best/{monitor}"])]
    settings = SearchSettings(
        study_name=str(sweeper.get("study_name") or ""),
        storage=str(sweeper.get("storage") or ""),
        directions=directions,
        objectives=objectives,
        n_trials=int(sweeper.get("n_trials", 0)),
        n_jobs=int(sweeper.get("n_jobs", 1)),
        max_failure_rate=float(sweeper.get("max_failure_rate", 1.0)),
        sampler=dict(_plain(sweeper.get("sampler")) or {}),
        pruner=_plain(sweeper.get("pruner")) or None,
        params=dict(_plain(sweeper.get("params")) or {}),
    )
    raise_config_problems(settings_problems(settings, monitor, monitor_mode))
    return settings


def settings_problems(s: SearchSettings, monitor: str, monitor_mode: str) -> list[str]:
    """What is wrong with ``s`` (empty: nothing), each problem naming its key and value."""
    problems = []
    if not s.study_name:
        problems.append("hydra.sweeper.study_name: give the study a name (its key in the storage)")
    if not s.storage:
        problems.append("hydra.sweeper.storage: a database URL (sqlite:///..., postgresql://...) every job can reach")
    for direction in s.directions:
        if direction not in DIRECTIONS:
            problems.append(f"hydra.sweeper.direction: {direction!r}: expected one of {list(DIRECTIONS)}")
    if len(s.directions) != len(s.objectives):
        problems.append(
            f"hydra.sweeper.direction={s.directions} and hydra.sweeper.objectives={s.objectives}: one direction "
            "per objective"
        )
    known = [f"best/{monitor}", *OUTCOME_VALUES]
    for objective in s.objectives:
        if objective not in known:
            problems.append(f"hydra.sweeper.objectives: {objective!r} is not a run's value; expected some of {known}")
    wanted = "maximize" if monitor_mode == "max" else "minimize"
    for objective, direction in zip(s.objectives, s.directions):
        if objective == f"best/{monitor}" and direction in DIRECTIONS and direction != wanted:
            problems.append(
                f"hydra.sweeper.direction: {direction} for {objective}, but training.monitor_mode={monitor_mode}: "
                f"use {wanted} (or the other training.monitor_mode)"
            )
    if s.n_trials < 0 or s.n_jobs < 1:
        problems.append(f"hydra.sweeper.n_trials={s.n_trials}, n_jobs={s.n_jobs}: expected n_trials >= 0, n_jobs >= 1")
    if not 0.0 <= s.max_failure_rate <= 1.0:
        problems.append(f"hydra.sweeper.max_failure_rate: expected a share in [0, 1], got {s.max_failure_rate}")
    if not str(s.sampler.get("_target_", "")).startswith("optuna.samplers."):
        problems.append(f"hydra.sweeper.sampler._target_: expected a class of optuna.samplers, got {s.sampler}")
    if s.pruner is not None and not str(s.pruner.get("_target_", "")).startswith(PRUNER_MODULE):
        problems.append(f"hydra.sweeper.pruner._target_: expected a class of optuna.pruners, got {s.pruner}")
    if s.pruner is not None and len(s.directions) > 1:
        problems.append(
            f"hydra.sweeper.pruner: a study of {len(s.directions)} objectives cannot be pruned (Optuna); use "
            "hparams_search.pruner=none"
        )
    return problems


def build_sampler(spec: Mapping[str, Any], space: SearchSpace, trials_so_far: int) -> optuna.samplers.BaseSampler:
    """The sampler of ``spec`` (``hydra.sweeper.sampler``): seeded ``seed + trials_so_far`` (a resumed study draws
    anew), a grid over ``space``."""
    spec = dict(spec)
    if spec.get("seed") is not None:
        spec["seed"] = int(spec["seed"]) + trials_so_far
    if spec["_target_"] == GRID_SAMPLER:
        spec["search_space"] = space.grid()
    return build_entry(spec, "hydra.sweeper.sampler")


def open_study(s: SearchSettings, space: SearchSpace) -> optuna.Study:
    """The study ``s.study_name`` in ``s.storage``, created or loaded (its directions must match), with the sampler
    and pruner of ``s``; the pruner and objectives are recorded in the study for the jobs."""
    import optuna

    storage = open_storage(s.storage)
    try:
        earlier = optuna.load_study(study_name=s.study_name, storage=storage)
    except KeyError:
        earlier = None
    if earlier is not None and [d.name.lower() for d in earlier.directions] != s.directions:
        raise ConfigError(
            f"hydra.sweeper.direction={s.directions}: study {s.study_name!r} in {masked_url(s.storage)} was made "
            f"with {[d.name.lower() for d in earlier.directions]}; use another hydra.sweeper.study_name"
        )
    study = optuna.create_study(
        study_name=s.study_name,
        storage=storage,
        sampler=build_sampler(s.sampler, space, len(earlier.trials) if earlier is not None else 0),
        pruner=build_pruner(s.pruner),
        directions=s.directions,
        load_if_exists=True,
    )
    study.set_user_attr(PRUNER_ATTR, s.pruner)
    study.set_user_attr(OBJECTIVES_ATTR, s.objectives)
    return study


def trial_overrides(study: optuna.Study, trial: optuna.trial.Trial, storage: str, space: SearchSpace) -> list[str]:
    """A trial's job overrides: the fixed ones, the suggested parameters, and the job's link to its trial."""
    return [
        *space.overrides(trial.params),
        f"optuna.study={quoted(study.study_name)}",
        f"optuna.storage={quoted(storage)}",
        f"optuna.trial={trial.number}",
    ]


def trial_result(ret: JobReturn, objectives: Sequence[str]) -> tuple[str, list[float] | None, str]:
    """``(state, values, why)`` of a trial from its job's return: ``COMPLETE`` with one value per objective,
    ``PRUNED``, or ``FAIL`` (the job raised, or did not return the objectives) with the reason."""
    try:
        result = ret.return_value  # re-raises what a failed job raised
    except Exception as err:  # noqa: BLE001 - any failure of the job is the trial's
        return "FAIL", None, f"{type(err).__name__}: {err}"
    if isinstance(result, Mapping) and result.get(PRUNED_TAG) is not None:
        return "PRUNED", None, f"pruned after epoch {result[PRUNED_TAG]}"
    if isinstance(result, (int, float)) and len(objectives) == 1:  # a job that returns its objective alone
        result = {objectives[0]: result}
    if not isinstance(result, Mapping) or any(o not in result for o in objectives):
        return "FAIL", None, f"the job returned {result!r}, not the objectives {list(objectives)}"
    values = [float(result[o]) for o in objectives]
    if not all(math.isfinite(v) for v in values):
        return "FAIL", None, f"objectives {list(objectives)} = {values}: not all finite"
    return "COMPLETE", values, ""


def tell(study: optuna.Study, trial: optuna.trial.Trial, state: str, values: list[float] | None) -> None:
    """Record a trial's end; a grid sampler's stop request once its grid is done (outside ``optimize``) is ignored,
    the trial is recorded all the same."""
    from optuna.trial import TrialState

    try:
        study.tell(trial, values if state == "COMPLETE" else None, state=TrialState[state])
    except RuntimeError as err:
        if "Study.stop" not in str(err):
            raise


def trials_to_run(study: optuna.Study, s: SearchSettings, space: SearchSpace) -> int:
    """How many trials the study still misses up to ``n_trials`` (a grid: its points not tried yet, at most)."""
    total = min(s.n_trials, space.grid_size()) if s.sampler["_target_"] == GRID_SAMPLER else s.n_trials
    return max(0, total - len(finished_trials(study)))


def run_search(s: SearchSettings, arguments: Sequence[str], launch: Launch, sweep_dir: Path) -> list[Any]:
    """The search: batches of ``n_jobs`` trials asked, launched (``launch``) and told, until the study holds
    ``n_trials``; stops when a batch's share of failed trials exceeds ``max_failure_rate``. Writes
    :data:`RESULTS_FILE` into ``sweep_dir``; returns every batch's job returns."""
    space = search_space(s.params, arguments)
    study = open_study(s, space)
    to_go = trials_to_run(study, s, space)
    log.info(
        "study %s in %s: %d trials so far; %d to run (%d at a time); sampler %s, pruner %s, %s %s",
        s.study_name,
        masked_url(s.storage),
        len(study.trials),
        to_go,
        s.n_jobs,
        s.sampler["_target_"],
        (s.pruner or {}).get("_target_", "none"),
        "/".join(s.directions),
        ", ".join(s.objectives),
    )
    returns, job_index = [], 0
    while to_go > 0:
        trials = [study.ask(space.distributions()) for _ in range(min(s.n_jobs, to_go))]
        batch = [trial_overrides(study, t, s.storage, space) for t in trials]
        rets = launch(batch, job_index)
        job_index += len(rets)
        failures = 0
        for trial, ret in zip(trials, rets):
            state, values, why = trial_result(ret, s.objectives)
            tell(study, trial, state, values)
            failures += state == "FAIL"
            log.info("trial %d: %s %s%s", trial.number, state, values if values else "", f" ({why})" if why else "")
        returns.append(rets)
        if failures / len(rets) > s.max_failure_rate:
            write_results(study, s.objectives, sweep_dir)
            raise RuntimeError(
                f"{failures} of {len(rets)} trials failed (hydra.sweeper.max_failure_rate={s.max_failure_rate}); "
                f"the job logs are in {sweep_dir}"
            )
        to_go = min(to_go - len(rets), trials_to_run(study, s, space))
    write_results(study, s.objectives, sweep_dir)
    return returns


def write_results(study: optuna.Study, objectives: Sequence[str], sweep_dir: Path) -> None:
    """``<sweep dir>/optimization_results.yaml``: the best trial's params and value (one objective), or the Pareto
    front's (several); nothing to write before a trial completed."""
    best = best_trials(study)
    if not best:
        log.warning("study %s: no completed trial yet", study.study_name)
        return
    if len(study.directions) == 1:
        results: dict[str, Any] = {
            "name": "optuna",
            "study": study.study_name,
            "best_trial": best[0].number,
            "best_params": best[0].params,
            "best_value": best[0].value,
        }
    else:
        results = {
            "name": "optuna",
            "study": study.study_name,
            "objectives": list(objectives),
            "solutions": [{"trial": t.number, "params": t.params, "values": t.values} for t in best],
        }
    atomic_write_text(Path(sweep_dir) / RESULTS_FILE, OmegaConf.to_yaml(OmegaConf.create(results)))
    log.info("study %s: results in %s", study.study_name, Path(sweep_dir) / RESULTS_FILE)


#: ``hydra.sweeper._target_`` of segexp's Optuna sweeper (``conf/hydra/sweeper/segexp_optuna.yaml``).
OPTUNA_SWEEPER = "hydra_plugins.segexp_optuna.sweeper.OptunaSweeper"


def sweep_settings(config: DictConfig) -> SearchSettings:
    """The search settings of a sweep's config (``hydra.sweeper`` against ``training.monitor`` and its mode)."""
    return search_settings(
        config.hydra.sweeper,
        str(OmegaConf.select(config, "training.monitor", default="val_dice_fg_mean")),
        str(OmegaConf.select(config, "training.monitor_mode", default="max")),
    )


def check_search(config: DictConfig) -> None:
    """Everything about an Optuna search that can fail before its first trial: the settings, the search space
    with the command line's overrides, the sampler, and the storage (reached, its tables made)."""
    settings = sweep_settings(config)
    space = search_space(settings.params, list(config.hydra.overrides.task))
    build_sampler(settings.sampler, space, 0)
    build_pruner(settings.pruner)
    try:
        open_storage(settings.storage)
    except Exception as err:  # noqa: BLE001 - any failure to reach it is the key's
        raise ConfigError(f"hydra.sweeper.storage: cannot open {masked_url(settings.storage)}: {err}") from err


class OptunaSearchCheck(Callback):
    """Stops an Optuna search that cannot run before anything starts (no MLflow parent, no job): exit 2, naming
    the key (:func:`check_search`)."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if config.hydra.sweeper.get("_target_") != OPTUNA_SWEEPER:
            return
        try:
            check_search(config)
        except SegexpError as err:
            log.error("%s", err)
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)
