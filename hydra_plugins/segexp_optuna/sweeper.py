"""The Hydra sweeper of ``hydra/sweeper=segexp_optuna`` (``conf/hydra/sweeper/segexp_optuna.yaml``).

A small class on Hydra's ``Sweeper`` interface: :meth:`OptunaSweeper.setup` builds the configured launcher,
:meth:`OptunaSweeper.sweep` runs :func:`segexp.launch.optuna_search.run_search`, which launches each batch of
trials through ``launcher.launch(overrides, initial_job_idx)``, so every Hydra launcher runs them (in process,
joblib, submitit locally or on SLURM). Hydra imports this module whenever an app starts (plugin discovery), so
segexp and Optuna are imported only when a sweep runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.core.plugins import Plugins
from hydra.plugins.launcher import Launcher
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class OptunaSweeper(Sweeper):
    """Optuna's ask-and-tell over Hydra jobs; the keys are those of ``conf/hydra/sweeper/segexp_optuna.yaml``."""

    def __init__(self, **settings: Any) -> None:
        self.settings = settings  # as configured; the search reads them from the config it is set up with
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.launcher: Launcher | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> Any:
        from segexp.launch.optuna_search import run_search, sweep_settings

        assert self.config is not None, "setup() first"
        return run_search(sweep_settings(self.config), arguments, self.launch, Path(self.config.hydra.sweep.dir))

    def launch(self, batch: Any, first_job: int) -> Any:
        """Check that every job of ``batch`` composes, then launch them numbered from ``first_job``."""
        assert self.launcher is not None, "setup() first"
        self.validate_batch_is_legal(batch)
        return self.launcher.launch(batch, initial_job_idx=first_job)
