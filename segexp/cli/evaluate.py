"""``segexp-evaluate``: score a trained run (folder or MLflow run id), or a cross-validation's fold ensemble (CV
folder or its MLflow parent run), on a split of its dataset."""

from __future__ import annotations

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from segexp.cli.shell import user_errors_exit
from segexp.config.commands import validate_evaluate_config
from segexp.config.resolvers import register_resolvers
from segexp.config.schema import CONF_DIR
from segexp.core.files import check_writable
from segexp.evaluation.ensemble import open_source
from segexp.evaluation.reports import evaluate_run
from segexp.models.precision import resolve_precision

register_resolvers()  # before Hydra composes; also in sweep workers that import this task


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="evaluate")
def main(cfg: DictConfig) -> float:
    """Evaluate ``run`` into this job's run folder; return the foreground mean Dice (NaN when undefined)."""
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    with user_errors_exit():
        cfg = validate_evaluate_config(cfg)  # every key checked before the model is loaded
        check_writable(out_dir, "run folder (hydra.run.dir)", cfg.paths.min_free_mb)
        summary = evaluate_run(
            open_source(str(cfg.run), cfg.tracking_uri),
            out_dir,
            split=cfg.split,
            batch_size=cfg.batch_size,
            flip_tta=cfg.flip_tta,
            dataset_root=cfg.dataset_root,
            log_to_run=cfg.log_to_run,
            precision=resolve_precision(cfg.precision),
            postprocess=cfg.postprocess,
            nsd_tolerance_mm=cfg.nsd_tolerance_mm,
        )
    value = summary["mean"]["foreground_mean"]["dice"]
    return float("nan") if value is None else float(value)


if __name__ == "__main__":
    main()
