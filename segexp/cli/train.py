"""``segexp-train``: compose the config with Hydra, then :func:`segexp.training.loop.train`.

A key renamed since (:data:`segexp.config.schema.RENAMED`) given on the command line is refused
with its new spelling before Hydra composes; an alias (:data:`segexp.config.schema.ALIASES`:
``hparams_search.pruner=median``) is spelled out. A single run reports a user error as one line (exit 2)
and Ctrl-C/SIGTERM as 130 after the resume message. In a sweep (``-m``) a failing job is logged and
recorded as a FAILED child run; the grid sweeper gets NaN so the other jobs go on, model-based
sweepers (Optuna) get the exception. A job of segexp's Optuna sweeper (``optuna.trial`` set) returns its
:meth:`~segexp.training.loop.RunOutcome.result` (every objective it may be asked for, and whether it was pruned).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from segexp.cli.shell import interrupt_on_sigterm, user_errors_exit
from segexp.config.resolvers import register_resolvers
from segexp.config.schema import CONF_DIR, expand_aliases, renamed_overrides
from segexp.core.errors import SegexpError, raise_config_problems
from segexp.evaluation.crossval import write_fold_failure
from segexp.launch.crossval import cv_enabled, finished_fold
from segexp.models import RESOLVERS as MODEL_RESOLVERS
from segexp.planning.apply import planned_run_config
from segexp.tracking.runs import MLFLOW_RUN_FILE
from segexp.tracking.study import TRIAL_TAG
from segexp.tracking.sweep import child_run_name, parent_run_id, record_failed_job
from segexp.training.loop import RunOutcome, train_run

log = logging.getLogger(__name__)

#: Hydra's default sweeper; it aborts the sweep on a raising job.
GRID_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


register_resolvers(MODEL_RESOLVERS)  # before Hydra composes; also in sweep workers that import this task


def job_result(outcome: RunOutcome, cfg: DictConfig) -> Any:
    """What a sweep job returns: the objective, or to segexp's Optuna sweeper (``optuna.trial`` set) every value
    it may be asked for and the epoch a pruner stopped the run after."""
    return outcome.result() if cfg.optuna.trial is not None else outcome.objective


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def run(cfg: DictConfig) -> Any:
    """Train in this job's run folder; return the best ``training.monitor`` value (the sweep objective; an Optuna
    trial's job: :func:`job_result`)."""
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    overrides = list(hydra_cfg.overrides.task)
    if hydra_cfg.mode != RunMode.MULTIRUN:
        with user_errors_exit():
            cfg, plan_params = planned_run_config(cfg, overrides, run_dir)
            return train_run(cfg, run_dir, overrides, extra_params=plan_params).objective
    if cv_enabled(cfg):  # a resumed cross-validation trains only the folds that did not finish
        done = finished_fold(run_dir)
        if done is not None:
            return done
    parent = parent_run_id(Path(hydra_cfg.sweep.dir))
    name = child_run_name(Path(hydra_cfg.sweep.dir), overrides)  # by what varies between the sweep's jobs
    # Hydra's grid sweeper aborts on a raising job: there a failure returns NaN. Model-based
    # sweepers (segexp's Optuna sweeper) must see the exception instead: it records the trial FAIL.
    grid = hydra_cfg.sweeper._target_ == GRID_SWEEPER
    try:
        with interrupt_on_sigterm():
            cfg, plan_params = planned_run_config(cfg, overrides, run_dir)
            outcome = train_run(cfg, run_dir, overrides, parent_run_id=parent, extra_params=plan_params, run_name=name)
    except Exception as err:
        log.error("job %s failed: %s", hydra_cfg.job.num, err, exc_info=not isinstance(err, SegexpError))
        started = (run_dir / MLFLOW_RUN_FILE).is_file()  # the run itself was then ended FAILED
        if parent is not None and not started:
            trial = OmegaConf.select(cfg, "optuna.trial", default=None)  # an Optuna job: its child names its trial
            tags = {TRIAL_TAG: str(trial)} if trial is not None else {}
            record_failed_job(parent, cfg.tracking.uri, overrides, err, name, tags)
        if cv_enabled(cfg) and cfg.cv.fold is not None:  # named in the CV summary
            write_fold_failure(run_dir, int(cfg.cv.fold), err)
        if not grid:
            raise
        return float("nan")
    if not grid and outcome.pruned_at_epoch is None and not np.isfinite(outcome.objective):
        raise ValueError(
            f"training.monitor {cfg.training.monitor} never had a finite value (objective {outcome.objective})"
        )
    return job_result(outcome, cfg)


def main() -> None:
    """``segexp-train``: spell out the aliases (``hparams_search.pruner=median``), refuse a renamed key on the
    command line with its new spelling (exit 2; Hydra would report only that the key is not in the config), then
    compose and :func:`run`."""
    sys.argv[1:] = expand_aliases(sys.argv[1:])
    with user_errors_exit():
        raise_config_problems(renamed_overrides(sys.argv[1:]))
    run()


if __name__ == "__main__":
    main()
