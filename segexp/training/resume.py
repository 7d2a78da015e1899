"""Deciding and preparing a resume: which run continues, whether its config allows it, where it trains.

``training.resume`` names what to continue: a run folder, an MLflow run id, or ``auto`` (this
job's folder, if it holds a checkpoint). A requeued SLURM job (``SLURM_RESTART_COUNT`` > 0, e.g.
a pre-empted submitit sweep job) resumes its folder's checkpoint by itself. The resumed run trains
in the original folder and continues the same MLflow run. The checkpoint it continues from is
:mod:`segexp.training.checkpoint`; the reopened MLflow run is completed by :mod:`segexp.training.reopen`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
from omegaconf import OmegaConf

from segexp.config.schema import to_dict
from segexp.core.errors import ResumeError, RunError
from segexp.tracking.runs import MLFLOW_RUN_FILE, RUN_ID, run_dir_tag, upgrade_run_config
from segexp.tracking.tracker import flatten_config
from segexp.training.checkpoint import (
    FORMAT,
    RESUME_DIR,
    STATE_FILE,
    load_checkpoint_model,
    read_state,
    restore_best_model,
)
from segexp.training.run_folder import requeued

log = logging.getLogger(__name__)

#: Keys that may differ between a run and its resumption (how long, how verbose, how fast).
MAY_CHANGE = (
    "training.epochs",
    "training.max_time",
    "training.devices",
    "training.resume",
    "training.verbose",
    "training.loader.",
    "training.threads.",
    "training.checkpoint.",
    "training.validation.",
    "training.epoch_images.every_n_epochs",
    "training.postprocess",  # only the step after the last epoch reads it
)


def resume_source(
    setting: str | None, run_dir: Path, tracking_uri: str, env: Mapping[str, str] = os.environ
) -> Path | None:
    """The run folder to continue (or None: a fresh run) for ``training.resume=setting``."""
    here = read_state(run_dir) is not None
    if setting is None:
        if requeued(env) and here:
            log.info(
                "requeued job (SLURM_RESTART_COUNT=%s): resuming the checkpoint in %s",
                env["SLURM_RESTART_COUNT"],
                run_dir,
            )
            return Path(run_dir)
        return None
    if setting == "auto":
        return Path(run_dir) if here else None
    path = Path(setting).expanduser()
    if path.is_dir():
        source = path.resolve()
    elif RUN_ID.match(setting):
        source = _run_dir_of(setting, tracking_uri)
    else:
        raise ResumeError(
            f"training.resume: {setting!r} is neither a run folder nor an MLflow run id (32 hex characters) nor auto"
        )
    if read_state(source) is None:
        raise ResumeError(
            f"training.resume: {source} holds no checkpoint ({RESUME_DIR / STATE_FILE}): "
            "no epoch was completed there, or it was trained before checkpoints existed; start a new run"
        )
    return source


def _run_dir_of(run_id: str, tracking_uri: str) -> Path:
    """The run folder of MLflow run ``run_id`` (its ``run_dir`` tag), which must be on this machine."""
    try:
        folder = run_dir_tag(run_id, tracking_uri)
    except RunError as err:
        raise ResumeError(f"training.resume: {err}") from err
    if folder is None or not Path(folder).is_dir():
        raise ResumeError(
            f"training.resume: MLflow run {run_id}: its run folder {folder} is not on this machine "
            "(checkpoints are kept in the run folder, not in MLflow)"
        )
    return Path(folder).resolve()


def config_differences(before: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """``key: old -> new`` for every config key that differs, except those in :data:`MAY_CHANGE`."""
    a, b = flatten_config(before), flatten_config(now)
    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and not k.startswith(MAY_CHANGE))
    return [f"{k}: {a.get(k, '<absent>')} -> {b.get(k, '<absent>')}" for k in keys]


@dataclass
class Resume:
    """A run to continue: its folder, its last checkpoint state and its MLflow run (if tracked)."""

    run_dir: Path
    state: dict[str, Any]

    @property
    def epoch(self) -> int:
        """Completed epochs: the fit continues at this (0-based) epoch index."""
        return int(self.state["epoch"])

    @property
    def run_id(self) -> str | None:
        record = self.run_dir / MLFLOW_RUN_FILE
        if record.is_file():
            return json.loads(record.read_text())["run_id"]
        return self.state.get("mlflow_run_id")

    def final_epoch(self, epochs: int) -> int:
        """``epochs`` for fit: the configured count, or where early stopping ended the run."""
        return self.epoch if self.state.get("stopped") else epochs

    def load_model(self) -> keras.Model:
        """The model of the last completed epoch with its optimizer and dropout RNG states; ``best.keras``
        put back as committed."""
        model = load_checkpoint_model(self.run_dir, self.state)
        restore_best_model(self.run_dir, self.state)
        return model

    def history(self) -> list[dict[str, float]]:
        return list(self.state["history"])


def prepare_resume(config: Mapping[str, Any], run_dir: Path, env: Mapping[str, str] = os.environ) -> Resume | None:
    """The :class:`Resume` for ``config`` (resolved) started in ``run_dir``, or None for a fresh run.

    Raises :class:`ResumeError` when ``training.resume`` names nothing resumable or the
    config differs from the original in more than :data:`MAY_CHANGE`.
    """
    source = resume_source(config["training"].get("resume"), Path(run_dir), config["tracking"]["uri"], env)
    if source is None:
        return None
    state = read_state(source)
    assert state is not None
    if state.get("format") != FORMAT:
        raise ResumeError(
            f"{source / RESUME_DIR / STATE_FILE}: checkpoint format {state.get('format')}, expected {FORMAT}"
        )
    before = to_dict(upgrade_run_config(OmegaConf.create(state["config"])), resolve=False)  # in today's keys
    differences = config_differences(before, config)
    if differences:
        raise ResumeError(
            f"training.resume: {source} was trained with a different config; only training.epochs (and "
            "training.verbose/loader/threads) may change when resuming. Differing keys:\n  " + "\n  ".join(differences)
        )
    resume = Resume(source, state)
    log.info("resuming %s after epoch %d%s", source, resume.epoch, " (early-stopped)" if state.get("stopped") else "")
    return resume


def follow_log(job_dir: Path, run_dir: Path) -> Path:
    """Also append this job's log to ``run_dir/train.log`` when resuming from another folder; returns ``run_dir``.

    Hydra gives every command a new folder and logs there; a resumed run trains in its original folder.
    """
    if Path(job_dir).resolve() != Path(run_dir).resolve():
        log.info("this command's folder is %s; the run continues in %s", job_dir, run_dir)
        logs = list(Path(job_dir).glob("*.log"))
        if logs:  # under Hydra: mirror its job log into the original folder
            handler = logging.FileHandler(run_dir / logs[0].name, mode="a")
            root = logging.getLogger()
            formatter = next((h.formatter for h in root.handlers if isinstance(h, logging.FileHandler)), None)
            handler.setFormatter(formatter or logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
            root.addHandler(handler)
    return Path(run_dir)
