"""Optuna studies next to the MLflow runs: their storage, and what a search's MLflow parent run shows of its study.

A search (``hparams_search=*_optuna``, segexp's sweeper ``hydra_plugins/segexp_optuna``) keeps its study in an
SQL storage (:func:`open_storage`: the tracking store's neighbour, ``tracking.optuna_storage``), which the sweeper
and every job reach: the sweeper asks and tells trials, each job reports its validated epochs to its own trial
(:mod:`segexp.training.pruning`). The study remembers what its jobs need besides the trial: the pruner
(:data:`PRUNER_ATTR`, a ``_target_`` entry) and the objectives (:data:`OBJECTIVES_ATTR`), as study user attributes.

The links both ways: a job's MLflow run is tagged :data:`TRIAL_TAG` (and :data:`STUDY_TAG`), its trial gets the
user attribute :data:`RUN_ID_ATTR`; the parent run is tagged with the study's name and storage. At the sweep's end
:func:`log_study` gives the parent the best trial (or the Pareto front of several objectives), the table of every
trial and Optuna's plots: optimisation history, parameter importances (from 2 completed trials), intermediate values
(what the pruner saw) and the Pareto front.
"""

from __future__ import annotations

import logging
import math
import tempfile
import warnings
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from segexp.core.files import sqlite_path
from segexp.tracking.tracker import Tracker

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)

#: Study user attributes: the pruner each job builds (a ``_target_`` entry or None) and the objectives' names.
PRUNER_ATTR = "segexp.pruner"
OBJECTIVES_ATTR = "segexp.objectives"
#: Trial user attributes a job sets: its MLflow run and its run folder.
RUN_ID_ATTR = "mlflow_run_id"
RUN_DIR_ATTR = "run_dir"
#: MLflow tags: a job's trial and study; the epoch after which a pruned job stopped.
TRIAL_TAG = "optuna.trial_number"
STUDY_TAG = "optuna.study_name"
STORAGE_TAG = "optuna.storage"
PRUNED_TAG = "pruned_at_epoch"
#: The parent's artifacts (the folder of segexp's sweep artifacts).
FOLDER = "sweep"
TRIALS_TABLE = f"{FOLDER}/optuna_trials.json"
BEST_TABLE = f"{FOLDER}/optuna_best_trials.json"
#: How long an SQLite storage waits for another process's lock (jobs report while others write).
SQLITE_TIMEOUT_S = 60


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """The study storage at ``url`` (an SQLAlchemy URL); an SQLite file's folder is created, and a writer waits
    up to :data:`SQLITE_TIMEOUT_S` for another's lock."""
    import optuna

    path = sqlite_path(url)
    if path is None:
        return optuna.storages.RDBStorage(url)
    path.parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": SQLITE_TIMEOUT_S}})


def masked_url(url: str) -> str:
    """``url`` with its password hidden (``***``), for logs and tags."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not an SQLAlchemy URL: nothing to hide
        return url


def finished_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The trials of ``study`` that ended: complete, pruned or failed (an interrupted one stays RUNNING)."""
    from optuna.trial import TrialState

    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL))


def best_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The best completed trial of a one-objective study, the Pareto front of several (empty: none completed)."""
    from optuna.trial import TrialState

    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return []
    return list(study.best_trials) if len(study.directions) > 1 else [study.best_trial]


def trial_rows(trials: Sequence[optuna.trial.FrozenTrial], objectives: Sequence[str]) -> dict[str, list[Any]]:
    """``{column: values}``, one row per trial: number, state, objective values, the epoch a pruned trial stopped
    at, its params (the parameter names as MLflow shows them: ``model/base_filters``), duration and MLflow run."""
    params = sorted({p for t in trials for p in t.params})
    table: dict[str, list[Any]] = {c: [] for c in ["trial", "state", *objectives, "last_epoch", *params]}
    table.update(duration_s=[], mlflow_run_id=[])
    for t in trials:
        values = t.values or [None] * len(objectives)
        table["trial"].append(t.number)
        table["state"].append(t.state.name)
        for name, value in zip(objectives, values):
            table[name].append(None if value is None or not math.isfinite(value) else value)
        table["last_epoch"].append(t.last_step)
        for p in params:
            value = t.params.get(p)
            table[p].append(value if value is None or isinstance(value, (int, float, bool)) else str(value))
        table["duration_s"].append(t.duration.total_seconds() if t.duration else None)
        table["mlflow_run_id"].append(t.user_attrs.get(RUN_ID_ATTR))
    return {column.replace(".", "/"): values for column, values in table.items()}


def study_tags(study: optuna.Study, storage_url: str, objectives: Sequence[str]) -> dict[str, str]:
    """The parent's tags of the study: name, storage (password hidden), objectives, trial counts, best trial(s)."""
    from optuna.trial import TrialState

    states = [t.state for t in study.get_trials(deepcopy=False)]
    tags = {
        STUDY_TAG: study.study_name,
        STORAGE_TAG: masked_url(storage_url),
        "optuna.objectives": ",".join(objectives),
        "optuna.directions": ",".join(d.name.lower() for d in study.directions),
        **{f"optuna.trials_{s.name.lower()}": str(states.count(s)) for s in TrialState if states.count(s)},
    }
    best = best_trials(study)
    if len(study.directions) == 1 and best:
        tags.update({"optuna.best_trial_number": str(best[0].number), "optuna.best_value": str(best[0].value)})
        tags.update({f"optuna.best.{name}": str(value) for name, value in best[0].params.items()})
    elif best:
        tags.update({"optuna.pareto_front": ",".join(str(t.number) for t in best)})
    return tags


def _figure(ax: Any) -> Any:
    """The matplotlib figure of what an ``optuna.visualization.matplotlib`` function returned (axes or an array)."""
    first = ax.flat[0] if hasattr(ax, "flat") else ax
    return first.figure


def study_plots(study: optuna.Study, objectives: Sequence[str]) -> dict[str, Callable[[], Any]]:
    """``{file name: draw}`` of the plots that fit ``study``: the optimisation history and the parameter importances
    (from 2 completed trials) of each objective, the intermediate values (one objective, trials that reported
    epochs) and the Pareto front (2 or 3 objectives)."""
    import optuna.visualization.matplotlib as plots
    from optuna.study import StudyDirection
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    several = len(study.directions) > 1
    found: dict[str, Callable[[], Any]] = {}
    for index, (name, direction) in enumerate(zip(objectives, study.directions)):
        suffix = f"_{name.replace('/', '_')}" if several else ""
        found[f"optuna_history{suffix}.png"] = partial(
            plots.plot_optimization_history,
            study,
            target=objective_target(index) if several else None,
            target_name=name,
        )
        if len(complete) >= 2 and any(t.params for t in complete):  # the importance evaluator looks for low values
            minimised = objective_target(index, -1.0 if direction == StudyDirection.MAXIMIZE else 1.0)
            found[f"optuna_importance{suffix}.png"] = partial(
                plots.plot_param_importances, study, target=minimised if several else None, target_name=name
            )
    if not several and any(t.intermediate_values for t in study.get_trials(deepcopy=False)):
        found["optuna_intermediate_values.png"] = partial(plots.plot_intermediate_values, study)
    if several and len(study.directions) <= 3 and complete:
        found["optuna_pareto_front.png"] = partial(plots.plot_pareto_front, study, target_names=list(objectives))
    return found


def objective_target(index: int, sign: float = 1.0) -> Callable[[optuna.trial.FrozenTrial], float]:
    """The ``target`` of Optuna's plots that picks objective ``index`` of a multi-objective trial (times ``sign``)."""

    def target(trial: optuna.trial.FrozenTrial) -> float:
        return sign * float(trial.values[index])

    return target


def log_study_plots(tracker: Tracker, study: optuna.Study, objectives: Sequence[str]) -> list[str]:
    """Log :func:`study_plots` to the parent (``sweep/<file>``); a plot that fails is skipped with a warning.
    Returns the files logged."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    logged = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, draw in study_plots(study, objectives).items():
            try:
                with warnings.catch_warnings():  # ExperimentalWarning, the importance evaluator's target note
                    warnings.simplefilter("ignore")
                    figure = _figure(draw())
                figure.set_size_inches(max(figure.get_figwidth(), 8), max(figure.get_figheight(), 5))
                figure.tight_layout()
                figure.savefig(Path(tmp) / name, dpi=100)
                plt.close(figure)
            except Exception as err:  # noqa: BLE001 - a plot is a view: the study's results stand without it
                log.warning("no %s for study %s: %s", name, study.study_name, err)
                continue
            tracker.log_artifact(Path(tmp) / name, FOLDER)
            logged.append(name)
    return logged


def log_study(parent: str, uri: str, study: optuna.Study, storage_url: str, objectives: Sequence[str]) -> None:
    """Give the sweep's parent run the study: :func:`study_tags`, the table of every trial (:data:`TRIALS_TABLE`),
    the best trial or Pareto front (:data:`BEST_TABLE`) and :func:`log_study_plots`."""
    tracker = Tracker(parent, uri)
    trials = study.get_trials(deepcopy=False)
    tracker.set_tags(study_tags(study, storage_url, objectives))
    if trials:
        tracker.log_table(trial_rows(trials, objectives), TRIALS_TABLE)
    best = best_trials(study)
    if best:
        tracker.log_table(trial_rows(best, objectives), BEST_TABLE)
    plots = log_study_plots(tracker, study, objectives)
    what = "Pareto front" if len(study.directions) > 1 else "best trial"
    log.info(
        "study %s: %d trials; %s %s; plots %s",
        study.study_name,
        len(trials),
        what,
        ", ".join(f"#{t.number} {t.values}" for t in best) or "none",
        ", ".join(plots) or "none",
    )


def run_links(run_id: str | None, run_dir: Path) -> Mapping[str, str]:
    """A trial's user attributes that lead to its job: the MLflow run (when tracked) and the run folder."""
    return {**({RUN_ID_ATTR: run_id} if run_id else {}), RUN_DIR_ATTR: str(run_dir)}
