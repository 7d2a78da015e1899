"""The run-folder guard: a single run never writes into a folder that holds another run's outputs.

:class:`RunDirGuard` (a Hydra callback in ``conf/hydra/default.yaml``) applies
:func:`segexp.training.run_folder.check_run_dir_free` to ``hydra.run.dir`` before Hydra writes
``.hydra/`` into it, so a previous run's config is not overwritten either.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from segexp.core.errors import OutputError
from segexp.training.run_folder import RUN_MARKERS, check_run_dir_free, resume_requested

log = logging.getLogger(__name__)


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
