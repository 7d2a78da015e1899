"""The plan step of ``segexp-train``: plan (or replay the plan of a resumed run), record it, return the config.

What a planned run folder holds: ``plan.json`` (fingerprint, machine, step time, every choice
with its figure and rule), ``plan.yaml`` (the plan as an editable ``experiment`` preset) and
``.hydra/config.yaml`` rewritten to the config the run trained with (Hydra's own composition
kept as ``.hydra/composed.yaml``), so ``segexp-evaluate``, ``segexp-infer`` and a resume read
what was trained.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from segexp.config.schema import check_cross_validation
from segexp.core.errors import raise_config_problems
from segexp.core.files import atomic_write_text
from segexp.data.io.layout import with_layout
from segexp.data.runtime.class_table import class_names_given, with_class_table
from segexp.data.runtime.folds import with_fold
from segexp.planning.plan import PLAN_FILE, PRESET_FILE, compose_train, make_plan, preset_text, replay_plan
from segexp.tracking.store import check_server
from segexp.training.loop import outage_policy, validate_run_config
from segexp.training.resume import resume_source
from segexp.training.run_folder import check_run_dir_free, resume_requested

log = logging.getLogger(__name__)


def _saved_plan(cfg: DictConfig, run_dir: Path) -> dict | None:
    """The ``plan.json`` of the run that ``training.resume`` (or a requeue) continues, if it had one."""
    source = resume_source(cfg.training.resume, Path(run_dir), cfg.tracking.uri, os.environ)
    if source is None:
        return None
    path = Path(source) / PLAN_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def record_run_config(cfg: DictConfig, run_dir: Path) -> None:
    """``.hydra/config.yaml`` := the config the run trains with (Hydra's composition -> ``composed.yaml``)."""
    hydra_dir = Path(run_dir) / ".hydra"
    current = hydra_dir / "config.yaml"
    if current.is_file() and not (hydra_dir / "composed.yaml").exists():
        current.replace(hydra_dir / "composed.yaml")
    if hydra_dir.is_dir():
        atomic_write_text(current, OmegaConf.to_yaml(cfg))


def fold_config(cfg: DictConfig, quiet: bool = False) -> DictConfig:
    """``cfg`` with a cross-validation fold's cases as its dataset split (``cv.folds`` set), else as it is.
    Applied before the plan (which reads the fold's training cases) and again on the planned config, which
    the plan composes anew from the command line."""
    if cfg.cv.folds is None:
        return cfg
    raise_config_problems(check_cross_validation(cfg.cv))
    cfg.dataset, folds = with_fold(cfg.dataset, cfg.cv)
    for line in [] if quiet else folds.lines():
        log.info(line)
    return cfg


def planned_run_config(cfg: DictConfig, overrides: Sequence[str], run_dir: Path) -> tuple[DictConfig, dict[str, str]]:
    """The config this job trains with and the ``plan.*`` MLflow params (empty without a plan).

    ``plan.enabled=false`` (``plan=none``) keeps the composed config; a class table missing from
    it is still read from the data. A resumed run replays its saved plan instead of planning again.
    """
    run_dir = Path(run_dir)
    if class_names_given(cfg.dataset):  # typos and bad values fail before the data is read
        validate_run_config(cfg.copy())
    if cfg.tracking.enabled:  # an unreachable server fails before the plan's work
        check_server(cfg.tracking.uri, outage_policy(cfg.tracking.outage).connect_timeout_s)
    resuming = resume_requested(cfg)
    check_run_dir_free(run_dir, resuming)  # before anything is written into a folder
    if resuming:
        saved = _saved_plan(cfg, run_dir)
        if saved:
            log.info("resumed run: its plan (%s) is applied as it was", PLAN_FILE)
            cfg = fold_config(replay_plan(cfg, overrides, saved))
            record_run_config(cfg, run_dir)
            return cfg, {}
    cfg = fold_config(cfg)
    if not cfg.plan.enabled:
        cfg.dataset, layout = with_layout(cfg.dataset)
        for line in layout.lines():
            log.info(line)
        if not class_names_given(cfg.dataset):
            cfg.dataset, table = with_class_table(cfg.dataset)
            for line in table.lines():
                log.info(line)
        record_run_config(cfg, run_dir)
        return cfg, {}
    planned, plan = make_plan(cfg, overrides)
    planned = fold_config(planned, quiet=True)
    for line in [*plan.class_table.lines(), *plan.lines()]:
        log.info(line)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / PLAN_FILE, json.dumps(plan.to_dict(), indent=2))
    defaults = compose_train([*overrides, "plan=none"])
    atomic_write_text(run_dir / PRESET_FILE, preset_text(plan, planned, defaults, overrides))
    record_run_config(planned, run_dir)
    return planned, plan.params()
