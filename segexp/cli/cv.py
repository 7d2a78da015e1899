"""``segexp-cv``: k-fold cross-validation by patient as one sweep (:mod:`segexp.launch.crossval`).

    segexp-cv cv.folds=5 dataset=hvsmr_mini training.max_time=2      # any segexp-train overrides
    segexp-cv cv.folds=5 dataset=folder dataset.root=/data/my_set launcher=joblib   # folds in parallel
    segexp-cv resume=outputs/cv/2026-12-06/23-10-00-123456            # train the folds that did not finish

A new CV is ``segexp-train -m cv.folds=K cv.fold=range(0,K)`` into ``outputs/cv/<date>/<time>/fold_<k>``
(K: ``cv.folds``, default 5 as nnU-Net). ``resume=<cv folder>`` repeats that folder's sweep with its own
overrides and ``training.resume=auto``: finished folds are kept, interrupted ones continue from their
checkpoint, missing ones train; then the summary is made again over every finished fold.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from omegaconf import OmegaConf

from segexp.cli.shell import user_errors_exit
from segexp.cli.train import main as train_main
from segexp.config.schema import renamed_overrides
from segexp.core.errors import ConfigError, raise_config_problems
from segexp.launch import crossval

#: nnU-Net's default number of folds.
DEFAULT_FOLDS = 5
SWEEP_DIR = "hydra.sweep.dir=${paths.output_dir}/cv/${now:%Y-%m-%d}/${now:%H-%M-%S-%f}"
SWEEP_SUBDIR = "hydra.sweep.subdir=fold_${cv.fold}"
#: Overrides segexp-cv sets itself (refused from the user, dropped from a resumed sweep's record).
OWN = ("cv.fold=", "hydra.sweep.dir=", "hydra.sweep.subdir=", "training.resume=", "-m", "--multirun")


def _folds(overrides: Sequence[str]) -> int:
    given = [o.split("=", 1)[1] for o in overrides if o.startswith("cv.folds=")]
    if not given:
        return DEFAULT_FOLDS
    try:
        folds = int(given[-1])
    except ValueError:
        folds = 0
    if folds < 2:
        raise ConfigError(f"cv.folds: expected an integer >= 2, got {given[-1]!r}")
    return folds


def new_cv_arguments(argv: Sequence[str]) -> list[str]:
    """segexp-train's arguments for a new CV with the user's overrides ``argv``."""
    own = [a for a in argv if a.startswith(OWN) or a in OWN]
    if own:
        raise ConfigError(
            f"segexp-cv sets {', '.join(own)} itself: leave them out (cv.folds=K chooses the folds; "
            "resume=<cv folder> continues a CV)"
        )
    folds = _folds(argv)
    rest = [a for a in argv if not a.startswith("cv.folds=")]
    return ["-m", f"cv.folds={folds}", f"cv.fold=range(0,{folds})", *rest, SWEEP_DIR, SWEEP_SUBDIR]


def resumed_cv_arguments(folder: Path, argv: Sequence[str]) -> list[str]:
    """segexp-train's arguments that repeat the CV sweep in ``folder`` (its recorded overrides)."""
    if argv:
        raise ConfigError(f"segexp-cv resume=...: no other overrides, got {' '.join(argv)} (the CV keeps its own)")
    record = folder / "multirun.yaml"
    if not record.is_file():
        raise ConfigError(f"resume: {folder} is not a segexp-cv folder (no {record.name}); give the folder it printed")
    try:
        task = list(OmegaConf.select(OmegaConf.load(record), "hydra.overrides.task", default=[]) or [])
    except Exception as err:  # noqa: BLE001 - an unreadable record: say which file
        raise ConfigError(f"resume: cannot read {record}: {err}") from err
    if not any(str(o).startswith("cv.folds=") for o in task):
        raise ConfigError(f"resume: {folder} holds a sweep that is not a cross-validation (no cv.folds in {record})")
    kept = [str(o) for o in task if not str(o).startswith(OWN)]
    folds = _folds(kept)
    return [
        "-m",
        *kept,
        f"cv.fold=range(0,{folds})",
        "training.resume=auto",
        f"hydra.sweep.dir={folder.resolve()}",
        SWEEP_SUBDIR,
    ]


def cv_arguments(argv: Sequence[str]) -> list[str]:
    """segexp-train's arguments for ``segexp-cv argv``: a new CV, or ``resume=<folder>`` of an earlier one."""
    resume = [a for a in argv if a.startswith("resume=")]
    rest = [a for a in argv if not a.startswith("resume=")]
    raise_config_problems(renamed_overrides(rest))
    if resume:
        return resumed_cv_arguments(Path(resume[-1].split("=", 1)[1]).expanduser(), rest)
    return new_cv_arguments(rest)


def main() -> None:
    """``segexp-cv``: run the folds as one segexp-train sweep (:func:`cv_arguments`)."""
    with user_errors_exit():
        arguments = cv_arguments(sys.argv[1:])
    sys.argv = [sys.argv[0], *arguments]
    train_main()
    if crossval.LAST_MISSING:  # a fold left out: the CV is incomplete (its summary names the folds)
        sys.exit(1)


if __name__ == "__main__":
    main()
