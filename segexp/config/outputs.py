"""Output safety: a run never writes over another run's files, and never leaves half-written ones.

* :func:`check_run_dir_free` refuses a run folder that already holds a run's outputs
  (unless ``training.resume`` says to continue that run); :class:`RunDirGuard` does the same
  as a Hydra callback, before Hydra writes ``.hydra/`` into the folder.
* :func:`check_writable` / :func:`check_output_locations` find unwritable or (nearly) full
  output locations at start-up, before any data is read.
* :func:`atomic_write_path` writes a file under a temporary name in the same folder and
  renames it into place (:func:`os.replace`) only when it is complete.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from segexp.config.errors import OutputError

log = logging.getLogger(__name__)

#: Files that show a folder holds a training run's outputs (relative to the run folder).
RUN_MARKERS = ("mlflow_run.json", "checkpoints", "history.csv", "evaluation/summary.json", "curves.png")
#: Default of ``paths.min_free_mb``: less free space than this at start-up is an error.
DEFAULT_MIN_FREE_MB = 200.0


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


def check_writable(folder: Path, what: str, min_free_mb: float = DEFAULT_MIN_FREE_MB) -> None:
    """Create ``folder`` if needed, write and delete a temporary file in it, check its free space.

    ``what`` names the setting that chose the folder (``paths.output_dir``) for the message.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".segexp-write-check-") as probe:
            probe.write(b"ok")
            probe.flush()
    except OSError as err:
        raise OutputError(
            f"{what} = {folder}: cannot write there ({err.strerror or err}); "
            f"choose a writable folder or fix its permissions"
        ) from err
    free_mb = shutil.disk_usage(folder).free / 2**20
    if free_mb < min_free_mb:
        raise OutputError(
            f"{what} = {folder}: only {free_mb:.0f} MB free, less than paths.min_free_mb = {min_free_mb:g} MB; "
            "free some space, choose another folder, or lower paths.min_free_mb"
        )


def check_output_locations(locations: Sequence[tuple[str, Path]], min_free_mb: float) -> None:
    """:func:`check_writable` for every ``(what, folder)``; all problems in one :class:`OutputError`."""
    problems = []
    for what, folder in locations:
        try:
            check_writable(folder, what, min_free_mb)
        except OutputError as err:
            problems.append(str(err))
    if problems:
        raise OutputError("output location problem:\n  " + "\n  ".join(problems))


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///…`` store URI (MLflow, Optuna), else None."""
    return Path(uri[len("sqlite:///") :]) if uri.startswith("sqlite:///") else None


def sqlite_folder(uri: str) -> Path | None:
    """The folder of a ``sqlite:///…`` tracking store, else None."""
    path = sqlite_path(uri)
    return None if path is None else path.parent


def train_output_locations(cfg: Any, run_dir: Path) -> list[tuple[str, Path]]:
    """The folders a training run writes to, each with the setting that chose it."""
    locations = [("paths.output_dir", Path(cfg.paths.output_dir)), ("run folder (hydra.run.dir)", Path(run_dir))]
    folder = sqlite_folder(cfg.tracking.uri) if cfg.tracking.enabled else None
    if folder is not None:
        locations.append(("tracking.uri (SQLite store folder)", folder))
    return locations


@contextmanager
def atomic_write_path(path: str | Path, durable: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` when the block ends without error.

    ``durable``: fsync the file before the rename (checkpoints that must survive a power cut).

    The temporary name keeps the extension (``.tmp-<id>-best.keras``), so writers that pick the
    format from it (OpenCV, nibabel, Keras) work unchanged; on an error it is deleted and
    ``path`` keeps its previous content (or stays absent)::

        with atomic_write_path(out / "summary.json") as tmp:
            tmp.write_text(text)
    """
    path = Path(path)
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex[:8]}-{path.name}")
    try:
        yield tmp
        if durable:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` through :func:`atomic_write_path`."""
    with atomic_write_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


class RunDirGuard(Callback):
    """Hydra callback: refuse a single run whose ``hydra.run.dir`` already holds a run's outputs.

    Runs in ``on_run_start``, before Hydra writes ``.hydra/`` into the folder (so a previous run's
    config is not overwritten either). Sweeps get a new timestamped folder per sweep.
    """

    def on_run_start(self, config: Any, **_: Any) -> None:
        from omegaconf import OmegaConf

        run_dir = OmegaConf.select(config, "hydra.run.dir", default=None)
        if run_dir is None:
            return
        try:
            check_run_dir_free(Path(run_dir), resume_requested(config), (*RUN_MARKERS, ".hydra/config.yaml"))
        except OutputError as err:
            log.error("%s", err)
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)


@contextmanager
def staging_folder(target: Path) -> Iterator[Path]:
    """A fresh hidden sibling folder of ``target`` to build a dataset in, removed on exit if still there.

    A sibling lives on the same file system, so moving the finished folder (or its entries)
    into ``target`` is a rename: readers never see a half-written dataset. The one staging
    step of ``segexp-prepare`` and the phantom writers.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.staging-", dir=target.parent))
    try:
        yield staging
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
