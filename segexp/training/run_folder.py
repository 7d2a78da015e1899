"""The run folder of a training run: whether this run may use it, and which folders the run writes to.

* :func:`check_run_dir_free` refuses a run folder that already holds a run's outputs
  (:data:`RUN_MARKERS`), unless the config continues that run (:func:`resume_requested`:
  ``training.resume``, or a requeued SLURM job, :func:`requeued`).
* :func:`train_output_locations`: the folders a training run writes to, each with the setting
  that chose it, for :func:`segexp.core.files.check_output_locations`.

The Hydra callback that applies the same check before Hydra writes ``.hydra/`` is
:class:`segexp.launch.run_dir.RunDirGuard`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from segexp.config.schema import PathsConfig, TrackingConfig
from segexp.core.errors import OutputError
from segexp.core.files import sqlite_folder

#: Files that show a folder holds a training run's outputs (relative to the run folder).
RUN_MARKERS = ("mlflow_run.json", "checkpoints", "history.csv", "evaluation/summary.json", "curves.png")


def requeued(env: Mapping[str, str] = os.environ) -> bool:
    """True in a SLURM job that was requeued (pre-emption, submitit resubmission after a timeout)."""
    try:
        return int(env.get("SLURM_RESTART_COUNT", "0")) > 0
    except ValueError:
        return False


def resume_requested(cfg: Any) -> bool:
    """True when the config asks to continue an earlier run (``training.resume`` set and not false)."""
    from omegaconf import OmegaConf

    value = OmegaConf.select(cfg, "training.resume", default=None)
    # A requeued SLURM job resumes its own folder by itself (segexp.training.resume): not another run's.
    return value not in (None, False, "", "false", "False") or requeued()


def found_markers(run_dir: Path, markers: Sequence[str] = RUN_MARKERS) -> list[str]:
    """The ``markers`` present in ``run_dir`` (empty when it is new or empty)."""
    return [m for m in markers if (run_dir / m).exists()]


def check_run_dir_free(run_dir: Path, resume: bool, markers: Sequence[str] = RUN_MARKERS) -> None:
    """Raise :class:`OutputError` when ``run_dir`` holds another run's outputs and this is no resume."""
    found = found_markers(Path(run_dir), markers)
    if found and not resume:
        raise OutputError(
            f"run folder {run_dir} already holds the outputs of another run ({', '.join(found)}); "
            "a run never writes over another run's files. Leave hydra.run.dir at its default "
            "(a new timestamped folder), choose an empty folder, or continue that run with training.resume"
        )


def train_output_locations(paths: PathsConfig, tracking: TrackingConfig, run_dir: Path) -> list[tuple[str, Path]]:
    """The folders a training run writes to, each with the setting that chose it."""
    locations = [("paths.output_dir", Path(paths.output_dir)), ("run folder (hydra.run.dir)", Path(run_dir))]
    folder = sqlite_folder(tracking.uri) if tracking.enabled else None
    if folder is not None:
        locations.append(("tracking.uri (SQLite store folder)", folder))
    return locations
