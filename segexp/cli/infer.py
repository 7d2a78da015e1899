"""``segexp-infer``: predict PNG images or CT volumes (NIfTI, MHA/MHD, NRRD, DICOM series) with a trained run or a
cross-validation's fold ensemble (exit 1 when an input failed)."""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from segexp.cli.shell import user_errors_exit
from segexp.config.commands import validate_infer_config
from segexp.config.resolvers import register_resolvers
from segexp.config.schema import CONF_DIR
from segexp.core.files import check_writable
from segexp.evaluation.ensemble import open_source
from segexp.evaluation.prediction import infer
from segexp.models.precision import resolve_precision

register_resolvers()  # before Hydra composes; also in sweep workers that import this task


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="infer")
def main(cfg: DictConfig) -> None:
    """Predict ``input`` with ``run`` into this job's run folder (or ``output_dir``)."""
    with user_errors_exit():
        cfg = validate_infer_config(cfg)  # every key checked before the model is loaded
        out_dir = Path(cfg.output_dir) if cfg.output_dir else Path(HydraConfig.get().runtime.output_dir)
        window = dict(cfg.window) if cfg.window is not None else None
        check_writable(out_dir, "output_dir" if cfg.output_dir else "run folder (hydra.run.dir)", cfg.paths.min_free_mb)
        failures = infer(
            open_source(str(cfg.run), cfg.tracking_uri),
            Path(cfg.input),
            out_dir,
            batch_size=cfg.batch_size,
            flip_tta=cfg.flip_tta,
            large_images=cfg.large_images,
            overlap=cfg.overlap,
            window=window,
            precision=resolve_precision(cfg.precision),
            postprocess=cfg.postprocess,
            save_probabilities=cfg.save_probabilities,
            output_format=str(cfg.output_format),
        )
    if failures:
        sys.exit(1)


if __name__ == "__main__":
    main()
