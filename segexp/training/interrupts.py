"""A training that stops early (Ctrl-C, SIGTERM, a crash): is it an interruption, and how to continue it.

The command's signal policy turns SIGTERM into ``KeyboardInterrupt`` (:mod:`segexp.cli.shell`); what the
last checkpoint holds is :mod:`segexp.training.checkpoint`.
"""

from __future__ import annotations

import logging
import shlex
from collections.abc import Sequence
from pathlib import Path

from segexp.core.stop_request import stop_requested
from segexp.training.checkpoint import RESUME_DIR, read_state

log = logging.getLogger(__name__)


def resume_command(overrides: Sequence[str], run_dir: Path) -> str:
    """The command line that continues the run in ``run_dir``."""
    kept = [o for o in overrides if not o.startswith("training.resume=")]
    return " ".join(["segexp-train", *map(shlex.quote, kept), shlex.quote(f"training.resume={run_dir}")])


def interrupted_inside(error: BaseException) -> bool:
    """Whether ``error`` ended training because of Ctrl-C or SIGTERM: it is, or was raised while handling,
    a ``KeyboardInterrupt``, or a stop was requested (:func:`~segexp.core.stop_request.stop_requested`).
    A signal that lands inside TensorFlow's Python code can surface as another error (seen: ``TypeError:
    Invalid input to zip`` over ``SystemError`` over the interrupt, and a tracing error whose chain lost
    the interrupt, both from a SIGTERM during ``model.predict``)."""
    if stop_requested() is not None:
        return True
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, (KeyboardInterrupt, SystemExit)):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def log_interrupted(run_dir: Path, overrides: Sequence[str], error: BaseException) -> None:
    """Say what was saved when training stops early (Ctrl-C, SIGTERM, a crash) and how to continue."""
    interrupted = interrupted_inside(error)
    state = read_state(run_dir)
    if state is None:
        if interrupted:
            log.warning("interrupted during the first epoch: no checkpoint to resume from; run the command again")
        return
    what = "interrupted" if interrupted else f"failed ({type(error).__name__}: {error})"
    status = "KILLED" if interrupted else "FAILED"
    fix = "" if interrupted else " once the cause is fixed"
    log.warning(
        "%s: %d epoch(s) completed and checkpointed in %s; the MLflow run (if tracked) ends %s. Continue%s with:\n  %s",
        what,
        state["epoch"],
        run_dir / RESUME_DIR,
        status,
        fix,
        resume_command(overrides, run_dir),
    )
