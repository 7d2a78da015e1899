"""``segexp-plan``: print the plan segexp-train would make for a dataset and write it as an editable preset.

    segexp-plan dataset=folder dataset.root=/data/my_set training.max_time=30

Composes the training config exactly as ``segexp-train`` (same groups and overrides), makes the
plan (:func:`segexp.planning.plan.make_plan`) and writes it to ``conf/experiment/plan_<dataset>.yaml``
(``plan_out=`` another path), a ``_global_`` experiment preset that lists only its differences
from the defaults, each line with the figure and the rule behind it. An existing file is never
overwritten: the new plan then goes beside it as ``<name>.new.yaml``. Train with it:
``segexp-train experiment=plan_<dataset>``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from segexp.cli.shell import user_errors_exit
from segexp.config.resolvers import register_resolvers
from segexp.config.schema import CONF_DIR
from segexp.core.files import atomic_write_text
from segexp.models import RESOLVERS as MODEL_RESOLVERS
from segexp.planning.plan import PLAN_FILE, compose_train, make_plan, preset_text

log = logging.getLogger("segexp")


def preset_path(out: str | None, dataset_name: str) -> Path:
    """Where the preset goes: ``out``, else ``conf/experiment/plan_<dataset name>.yaml``; never over a file."""
    path = Path(out) if out else CONF_DIR / "experiment" / f"plan_{dataset_name}.yaml"
    return path.with_suffix(".new.yaml") if path.exists() else path


register_resolvers(MODEL_RESOLVERS)  # before Hydra composes; also in sweep workers that import this task


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="segexp_plan")
def main(cfg: DictConfig) -> None:
    """Make, print and write the plan of the composed config."""
    hydra_cfg = HydraConfig.get()
    overrides = [o for o in hydra_cfg.overrides.task if not o.lstrip("+").startswith("plan_out=")]
    out = cfg.get("plan_out")
    with user_errors_exit():
        with open_dict(cfg):
            cfg.pop("plan_out", None)
        planned, plan = make_plan(cfg, overrides)
        print("\n".join([*plan.class_table.lines(), *plan.lines()]))
        text = preset_text(plan, planned, compose_train([*overrides, "plan=none"]), overrides)
        path = preset_path(out, str(planned.dataset.name))
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, text)
        atomic_write_text(Path(hydra_cfg.runtime.output_dir) / PLAN_FILE, json.dumps(plan.to_dict(), indent=2))
        print(
            f"\nplan written to {path}; train with it: segexp-train experiment={path.stem}"
            if path.parent == CONF_DIR / "experiment"
            else f"\nplan written to {path}"
        )


if __name__ == "__main__":
    main()
