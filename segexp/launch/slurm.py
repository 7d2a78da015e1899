"""The SLURM Hydra callback: check a sweep's request before submitting; requeue on USR1 inside a job.

:class:`SlurmSweepCallback` (in ``conf/hydra/default.yaml``, before the MLflow parent run is
created) stops a ``launcher=submitit_slurm``/``launcher=gpu`` sweep at once (exit 2) when no job
could ever start (:func:`segexp.launch.slurm_request.check_slurm_request`).

Inside a job the callback also makes SIGUSR1 do what submitit does on its own pre-emption
signal (SIGUSR2 in submitit >= 1.5, the signal ``sbatch --signal`` sends before the time
limit): requeue the job, which then resumes its last checkpoint. Without it, ``scancel
--signal=USR1`` (or a cluster that warns with USR1) kills the job silently and the launching
command waits for it forever (see :func:`alias_preemption_signals`).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

from hydra.experimental.callback import Callback

from segexp.config.schema import to_dict
from segexp.core.errors import ConfigError
from segexp.launch.slurm_request import SLURM_LAUNCHER, check_slurm_request

log = logging.getLogger(__name__)


def alias_preemption_signals(names: Sequence[str] = ("SIGUSR1", "SIGUSR2")) -> list[str]:
    """Make the signals in ``names`` that still kill the process act like submitit's pre-emption signal.

    submitit (in a SLURM job) handles one user signal (``SUBMITIT_PREEMPT_SIGNAL``, USR2 by
    default): it pickles the job again and calls ``scontrol requeue``, and SLURM's SIGTERM then
    ends the run (KILLED) until the requeued job resumes it. The other user signal would kill
    the job without a result, and the launching command would wait for it forever (with
    accounting disabled it cannot see the job end). Returns the signals aliased.
    """
    from submitit import JobEnvironment

    handler = signal.getsignal(JobEnvironment._usr_sig())
    if not callable(handler):  # submitit installed no handler: nothing to alias to
        return []
    aliased = []
    for name in names:
        number = getattr(signal, name, None)
        if number is not None and signal.getsignal(number) == signal.SIG_DFL:
            signal.signal(number, handler)
            aliased.append(name)
    return aliased


class SlurmSweepCallback(Callback):
    """Hydra callback: check a SLURM sweep's request before it is submitted; requeue on USR1 in its jobs."""

    def on_multirun_start(self, config: Any, **_: Any) -> None:
        launcher = config.hydra.launcher
        if launcher.get("_target_") != SLURM_LAUNCHER:
            return
        try:
            check_slurm_request(to_dict(launcher, resolve=True))
        except ConfigError as err:
            log.error("%s", err)
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)
        log.info("SLURM request fits partition %s", launcher.get("partition") or "(default)")

    def on_job_start(self, config: Any, **_: Any) -> None:
        if os.environ.get("SUBMITIT_EXECUTOR") != "slurm" or "SLURM_JOB_ID" not in os.environ:
            return
        aliased = alias_preemption_signals()
        if aliased:
            array_job, array_task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
            job = f"{array_job}_{array_task}" if array_job and array_task else os.environ["SLURM_JOB_ID"]
            log.info(
                "SLURM job %s: %s requeues it like submitit's %s (it then resumes from its last checkpoint)",
                job,
                " and ".join(aliased),
                os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"),
            )
