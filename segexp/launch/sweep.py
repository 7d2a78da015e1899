"""The MLflow sweep callback: one parent run per Hydra multirun sweep, one child run per job.

:class:`MlflowSweepCallback` (configured in ``conf/hydra/default.yaml``) runs in the
process that launches the sweep. Before any job starts it checks the tracking server and
creates the MLflow store, experiment and parent run once (so parallel jobs never race to
create them; :func:`segexp.tracking.sweep.open_parent`, which also records the keys the sweep
varies, so each job's run is named by those only). When the sweep ends it gives the parent the page
that shows the children's test cases side by side (:func:`segexp.evaluation.case_viewer.comparison_page`),
closes it with the best child and registers that child's model as ``champion``
(:func:`segexp.tracking.sweep.close_parent`).

An Optuna search (segexp's sweeper, ``hparams_search=*_optuna``) also tags the parent with its study (name, storage,
sampler, pruner, objectives) when it opens, and gives it the study when the search ends
(:func:`segexp.tracking.study.log_study`: best trial or Pareto front, every trial, Optuna's plots).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from segexp.core.errors import TrackingUnavailable
from segexp.evaluation.case_viewer import COMPARISON_FILE, VIEWER_FILE, comparison_page
from segexp.launch.optuna_search import OPTUNA_SWEEPER
from segexp.tracking.store import OutagePolicy, check_server
from segexp.tracking.study import STORAGE_TAG, STUDY_TAG, log_study, masked_url, open_storage
from segexp.tracking.sweep import (
    CV_KIND,
    KIND_TAG,
    child_artifacts,
    close_parent,
    log_to_parent,
    open_parent,
    parent_run_id,
)

log = logging.getLogger(__name__)


def _tracking(config: DictConfig) -> Any | None:
    tracking = config.get("tracking")
    return tracking if tracking is not None and tracking.get("enabled", False) else None


class MlflowSweepCallback(Callback):
    """Creates the sweep's MLflow parent run before the jobs and closes it with the best child after them."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # The sweep folder (and paths.output_dir above it) exists before the sweeper opens its
        # storage (hparams_search: sqlite:///${paths.output_dir}/optuna.db) and before any job.
        Path(config.hydra.sweep.dir).mkdir(parents=True, exist_ok=True)
        tracking = _tracking(config)
        if tracking is None:
            return
        try:  # an unreachable server stops the sweep before any job starts
            check_server(
                tracking.uri,
                float(OmegaConf.select(tracking, "outage.connect_timeout_s", default=OutagePolicy().connect_timeout_s)),
            )
        except TrackingUnavailable as err:
            log.error("%s", err)
            sys.exit(2)
        cv_folds = OmegaConf.select(config, "cv.folds", default=None)
        open_parent(
            tracking.uri,
            tracking.experiment,
            tracking.artifact_location,
            Path(config.hydra.sweep.dir),
            list(config.hydra.overrides.task),
            {
                "sweeper": str(config.hydra.sweeper.get("_target_", "")),
                "launcher": str(config.hydra.launcher.get("_target_", "")),
                **({KIND_TAG: CV_KIND, "cv.folds": str(cv_folds)} if cv_folds is not None else {}),
                **optuna_tags(config.hydra.sweeper),
            },
            sweeper_params=OmegaConf.to_container(config.hydra.sweeper.params, resolve=False)  # type: ignore[arg-type]
            if config.hydra.sweeper.get("params")
            else None,
            n_trials=config.hydra.sweeper.get("n_trials"),
        )

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        tracking = _tracking(config)
        if tracking is None:
            return
        parent = parent_run_id(Path(config.hydra.sweep.dir))
        if parent is None:
            return
        training = config.get("training", {})
        try:  # the comparison page is a view: a failure leaves it out, never the parent's closing
            log_case_comparison(parent, tracking.uri)
        except Exception as err:
            log.warning("no case comparison page for the sweep parent %s: %s", parent, err)
        if is_optuna_search(config.hydra.sweeper):
            try:  # the study is a view of the search too: its failure never keeps the parent open
                log_search_study(parent, tracking.uri, config.hydra.sweeper)
            except Exception as err:
                log.warning("the study was not logged to the sweep parent %s: %s", parent, err)
        cv = OmegaConf.select(config, "cv.folds", default=None) is not None
        close_parent(
            parent,
            tracking.uri,
            str(training.get("monitor", "val_dice_fg_mean")),
            str(training.get("monitor_mode", "max")),
            # a CV's folds are one system, not candidates: no best fold, no champion (the CV logs cv/...)
            None if cv else OmegaConf.select(tracking, "registered_model", default=None),
            rank=not cv,
        )


def is_optuna_search(sweeper: DictConfig) -> bool:
    """Whether ``hydra.sweeper`` is segexp's Optuna sweeper."""
    return sweeper.get("_target_") == OPTUNA_SWEEPER


def optuna_tags(sweeper: DictConfig) -> dict[str, str]:
    """The parent's tags of an Optuna search (none for another sweeper): its study and how it searches."""
    if not is_optuna_search(sweeper):
        return {}
    pruner = OmegaConf.select(sweeper, "pruner._target_", default=None)
    return {
        STUDY_TAG: str(sweeper.study_name),
        STORAGE_TAG: masked_url(str(sweeper.storage)),
        "optuna.sampler": str(OmegaConf.select(sweeper, "sampler._target_", default="")),
        "optuna.pruner": str(pruner or "none"),
        "optuna.objectives": ",".join(map(str, sweeper.objectives)),
    }


def log_search_study(parent: str, uri: str, sweeper: DictConfig) -> None:
    """Load the search's study from its storage and give it to the parent (:func:`log_study`)."""
    import optuna

    study = optuna.load_study(study_name=str(sweeper.study_name), storage=open_storage(str(sweeper.storage)))
    log_study(parent, uri, study, str(sweeper.storage), [str(o) for o in sweeper.objectives])


#: Where the children's test-split viewers are (segexp.evaluation.reports.score_and_log) and the parent's page goes.
CHILD_VIEWER = f"evaluation/test/{VIEWER_FILE}"
PARENT_FOLDER = "sweep"


def log_case_comparison(parent: str, uri: str) -> bool:
    """Log ``sweep/case_comparison.html`` to the parent: the test cases of its finished children side by side, read
    from their case viewers (none when no child evaluated the test split). True when logged."""
    pages = child_artifacts(parent, uri, CHILD_VIEWER)
    page = comparison_page(pages, title=f"sweep: test cases of {len(pages)} children") if pages else None
    if page is None:
        return False
    log_to_parent(parent, uri, COMPARISON_FILE, page, PARENT_FOLDER)
    return True
