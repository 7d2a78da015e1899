"""``segexp-check``: validate a slice dataset or a volume folder (any format) before training.

Thin Hydra entry: the work is in :mod:`segexp.data.prepare.check`. Prints one line per
problem (file and cause) and the dataset's fingerprint, writes both as JSON in the
job folder and exits 0 (no problem), 1 (problems found) or 2 (invalid config).
A dataset without ``class_names`` (``dataset=folder``) gets its class table from its
``dataset.json`` or its train masks (:mod:`segexp.data.runtime.class_table`): it is printed,
and a table that cannot be found is one more problem.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from segexp.cli.shell import user_errors_exit
from segexp.config.commands import validate_check_config
from segexp.config.resolvers import register_resolvers
from segexp.config.schema import CONF_DIR, to_dict
from segexp.data.phantom import ensure_phantom_volumes
from segexp.data.prepare.check import CheckReport, check_slice_dataset, check_volume_folder

log = logging.getLogger(__name__)


def run_check(cfg: DictConfig) -> CheckReport:
    """Validate ``cfg`` and check its ``volumes`` folder when given, else its ``dataset``."""
    cfg = validate_check_config(cfg)
    v = cfg.volumes
    if v is not None:
        source = Path(v.source).expanduser()
        ensure_phantom_volumes(source, to_dict(v.phantom, resolve=False) if v.phantom is not None else None)
        classes = {name: list(c.labels) for name, c in v.classes.items()}
        return check_volume_folder(source, v.pattern, classes, axis=cfg.axis)
    size = list(cfg.image_size) if cfg.image_size is not None else None
    return check_slice_dataset(to_dict(cfg.dataset, resolve=True), cfg.image_channels, size=size)


register_resolvers()  # before Hydra composes; also in sweep workers that import this task


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="check")
def main(cfg: DictConfig) -> None:
    """Hydra entry point: compose ``conf/check.yaml``, check, print, exit with the verdict."""
    with user_errors_exit():
        report = run_check(cfg)
    out = Path(HydraConfig.get().runtime.output_dir) / cfg.report_file
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report.to_json())
    print("\n".join(report.lines(cfg.max_lines)))
    print(f"report: {out}")
    sys.exit(0 if report.ok else 1)


if __name__ == "__main__":
    main()
