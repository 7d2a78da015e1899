"""``segexp-prepare``: cut CT volumes (NIfTI, MHA/MHD, NRRD, DICOM series) into a split slice dataset
(``conf/prepare.yaml``), tracked in MLflow."""

from __future__ import annotations

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from segexp.cli.shell import user_errors_exit
from segexp.config.resolvers import register_resolvers
from segexp.config.schema import CONF_DIR
from segexp.data.prepare.volumes_to_slices import MANIFEST, prepare
from segexp.tracking.tracker import tracked_run

register_resolvers()  # before Hydra composes; also in sweep workers that import this task


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="prepare")
def main(cfg: DictConfig) -> None:
    """Prepare the volumes named by ``volumes`` into ``out_dir``; the manifest is logged to MLflow."""
    t = cfg.tracking
    with (
        user_errors_exit(),
        tracked_run(
            t.enabled,
            uri=t.uri,
            experiment=f"{t.experiment}-prepare",
            artifact_location=t.artifact_location,
            run_name=f"prepare {cfg.volumes.name}",
            tags={"dataset": str(cfg.volumes.name)},
            description="segexp-prepare " + " ".join(HydraConfig.get().overrides.task),
        ) as tracker,
    ):
        out_dir = prepare(cfg)
        tracker.log_artifact(out_dir / MANIFEST)


if __name__ == "__main__":
    main()
