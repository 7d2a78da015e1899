"""The plan of a run: the data's fingerprint -> rules -> choices, applied under the user's own keys.

:func:`make_plan` is what ``segexp-train`` (``plan=auto``, the default) and ``segexp-plan`` call
with the composed config and the command-line overrides:

1. the class table (``dataset.class_names``/``rgb_map``) comes from the config, a
   ``dataset.json`` beside the data, or the masks (:mod:`segexp.data.runtime.class_table`);
2. the fingerprint is read (:mod:`segexp.planning.fingerprint`), the rules choose network,
   input size, batch, learning rate, augmentation and foreground fraction
   (:mod:`segexp.planning.rules`);
3. with ``training.max_time`` the planned network's step is timed on this machine
   (:mod:`segexp.planning.steptime`, cached) and steps per epoch, epochs and schedule fill the
   budget; without it ``plan.fixed_steps`` are planned.

A key the user set — on the command line or in an ``experiment=``/``debug=`` preset chosen
there — is never planned: the plan skips it and says so. Config-group choices (``model=``,
``augmentation=``) are applied by composing again with Hydra; values by ``OmegaConf.update``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml
from hydra import compose
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf, open_dict

from segexp.config.options import Precision, values
from segexp.config.resolvers import register_resolvers
from segexp.config.schema import CONF_DIR
from segexp.data.io.layout import ResolvedLayout, with_layout
from segexp.data.runtime.class_table import ClassTable, with_class_table
from segexp.data.runtime.dataset import open_dataset
from segexp.models import RESOLVERS as MODEL_RESOLVERS
from segexp.models.precision import resolve_precision
from segexp.planning.fingerprint import DataFingerprint, read_fingerprint
from segexp.planning.rules import (
    Choice,
    Machine,
    StepTime,
    budget_choices,
    data_choices,
    loader_choices,
    network_choices,
    xla_choice,
    xla_measured,
)
from segexp.planning.steptime import loader_batch_time, measure_step_time, this_machine
from segexp.training.loop import validate_run_config

log = logging.getLogger(__name__)

#: Config groups whose options are ``# @package _global_`` presets: their keys count as the user's.
GLOBAL_GROUPS = ("experiment", "debug", "hparams_search")
#: The plan of a run, in its run folder (reapplied as it is when the run is resumed).
PLAN_FILE = "plan.json"
PRESET_FILE = "plan.yaml"


@dataclass
class Explicit:
    """What the user set: dotted value keys and config-group choices (``model``, ``augmentation``)."""

    keys: set[str] = field(default_factory=set)
    groups: set[str] = field(default_factory=set)

    def covers(self, choice: Choice) -> bool:
        """Whether ``choice`` is the user's: its group was chosen, or its key, a parent or a child was set."""
        if choice.group:
            return choice.key in self.groups
        return any(
            k == choice.key or choice.key.startswith(k + ".") or k.startswith(choice.key + ".") for k in self.keys
        )


@dataclass
class Plan:
    """The fingerprint, the machine, the measured step and every choice: applied or the user's."""

    fingerprint: DataFingerprint
    machine: Machine
    step: StepTime | None
    class_table: ClassTable
    applied: list[Choice]
    skipped: list[Choice]
    group_overrides: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {
            "fingerprint": self.fingerprint.to_dict(),
            "machine": asdict(self.machine),
            "step": asdict(self.step) if self.step else None,
            "class_table": {
                "names": self.class_table.names,
                "colours": self.class_table.colours,
                "source": self.class_table.source,
            },
            "applied": [asdict(c) for c in self.applied],
            "skipped": [asdict(c) for c in self.skipped],
            "group_overrides": self.group_overrides,
        }

    def params(self) -> dict[str, str]:
        """MLflow params ``plan.<key>`` for every applied choice, plus the measured step."""
        out = {f"plan.{c.key}": json.dumps(c.value) if not isinstance(c.value, str) else c.value for c in self.applied}
        out["plan.class_table"] = self.class_table.source
        if self.step is not None:
            out.update(
                {
                    "plan.step_s": f"{self.step.train_s:g}",
                    "plan.first_step_s": f"{self.step.first_s:g}",
                    "plan.loader_batch_s": f"{self.step.load_s:g}",
                }
            )
        out["plan.machine"] = f"{self.machine.device}: {self.machine.name}, {self.machine.cores} cores"
        return out

    def lines(self) -> list[str]:
        """The plan as printed: one line per choice, the figure read and the rule."""
        f = self.fingerprint
        out = [
            f"plan for {f.name} on {self.machine.device} ({self.machine.name}, {self.machine.cores} cores):",
            f"  fingerprint: {f.slices} slices, {f.cases} cases, median {f.image_size[0]}x{f.image_size[1]}, "
            f"{f.channels} channel(s), intensity mean {_g(f.intensity_mean)} std {_g(f.intensity_std)}"
            + (f", spacing {f.spacing_mm} mm" if f.spacing_mm else ""),
            f"  class table ({self.class_table.source}): " + ", ".join(self.class_table.names),
        ]
        if self.step is not None:
            out.append(
                f"  step time: {self.step.train_s:.3f} s (first {self.step.first_s:.1f} s, "
                f"validation batch {self.step.infer_s:.3f} s, loader batch {self.step.load_s:.3f} s)"
            )
        for c in self.applied:
            setting = f"{c.key}{'=' if c.group else ': '}{_show(c.value)}"
            out.append(f"  {setting:<44} # {c.figure} -> {c.rule}")
        for c in self.skipped:
            out.append(f"  {c.key}: yours (the plan would choose {_show(c.value)})")
        return out


def _g(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _show(value: Any) -> str:
    return "null" if value is None else value if isinstance(value, str) else json.dumps(value)


# ----------------------------------------------------------------------------- what the user set


def _preset_settings(group: str, option: str, conf_dir: Path) -> Explicit:
    """Keys and group overrides of a ``_global_`` preset ``conf/<group>/<option>.yaml`` (and its defaults)."""
    found = Explicit()
    path = conf_dir / group / f"{option}.yaml"
    if not path.is_file():
        return found  # Hydra reports an unknown option
    data = yaml.safe_load(path.read_text()) or {}
    for entry in data.pop("defaults", []) or []:
        if isinstance(entry, dict):
            for name, value in entry.items():
                target = name.replace("override", "").strip().lstrip("/")
                if target in GLOBAL_GROUPS and isinstance(value, str):
                    nested = _preset_settings(target, value, conf_dir)
                    found.keys |= nested.keys
                    found.groups |= nested.groups
                elif target:
                    found.groups.add(target)
    found.keys |= set(_flat_keys(data))
    return found


def _flat_keys(data: Any, prefix: str = "") -> Iterable[str]:
    if isinstance(data, dict) and data:
        for key, value in data.items():
            yield from _flat_keys(value, f"{prefix}{key}.")
    elif prefix:
        yield prefix[:-1]


def explicit_settings(overrides: Sequence[str], conf_dir: Path = CONF_DIR) -> Explicit:
    """What ``overrides`` (the job's command line) set, including the keys of ``_global_`` presets chosen there."""
    found = Explicit()
    for override in OverridesParser.create().parse_overrides(list(overrides)):
        key = override.key_or_group
        if key.startswith("hydra.") or key == "hydra":
            continue
        value = override.value() if not override.is_delete() else None
        if (conf_dir / key).is_dir():
            if key in GLOBAL_GROUPS and isinstance(value, str):
                preset = _preset_settings(key, value, conf_dir)
                found.keys |= preset.keys
                found.groups |= preset.groups
            found.groups.add(key)
        else:
            found.keys.add(key)
    return found


# ----------------------------------------------------------------------------- making and applying


def compose_train(overrides: Sequence[str]) -> DictConfig:
    """``conf/train.yaml`` composed with ``overrides`` (inside a Hydra app or an initialised Hydra)."""
    register_resolvers(MODEL_RESOLVERS)
    return compose(config_name="train", overrides=list(overrides))


def _set(cfg: DictConfig, choices: Sequence[Choice]) -> DictConfig:
    with open_dict(cfg):
        for c in choices:
            OmegaConf.update(cfg, c.key, c.value, merge=False, force_add=True)
    return cfg


def _applicable(choices: Sequence[Choice], explicit: Explicit, cfg: DictConfig) -> tuple[list[Choice], list[Choice]]:
    """(to apply, the user's): a choice whose ``requires`` the final group choice misses is dropped."""
    apply: list[Choice] = []
    skipped: list[Choice] = []
    for c in choices:
        if c.requires is not None:
            group, option = c.requires.split("=")
            if OmegaConf.select(cfg, f"{group}.name") != option:
                continue
        (skipped if explicit.covers(c) else apply).append(c)
    return apply, skipped


def _layout_choices(layout: ResolvedLayout) -> list[Choice]:
    if layout.source == "config":
        return []
    choices = [Choice("dataset.layout", str(layout.layout), layout.source, "the layout read from the folder")]
    if layout.cases:
        choices.append(Choice("dataset.cases", layout.cases, layout.source, "split by patient, never by slice"))
    return choices


def _class_table_choices(table: ClassTable) -> list[Choice]:
    if table.source == "config":
        return []
    overrides = table.to_dataset_overrides()
    return [
        Choice("dataset.class_names", overrides["class_names"], table.source, "the class table read from the data"),
        Choice("dataset.rgb_map", overrides["rgb_map"], table.source, "the mask colours read from the data"),
    ]


def _foreign_model_keys(explicit: Explicit, network: str, conf_dir: Path) -> list[str]:
    """The user's ``model.*`` keys that the preset ``conf/model/<network>.yaml`` does not have."""
    path = conf_dir / "model" / f"{network}.yaml"
    known = set((yaml.safe_load(path.read_text()) or {}).keys()) if path.is_file() else set()
    return [k for k in explicit.keys if k.startswith("model.") and k.split(".")[1] not in known]


def make_plan(cfg: DictConfig, overrides: Sequence[str], conf_dir: Path = CONF_DIR) -> tuple[DictConfig, Plan]:
    """The planned config for the composed ``cfg`` of a job with command line ``overrides``, and its :class:`Plan`."""
    explicit = explicit_settings(overrides, conf_dir)
    dataset_cfg, layout = with_layout(cfg.dataset)
    dataset_cfg, table = with_class_table(dataset_cfg)
    cache_dir = Path(cfg.paths.output_dir) / "cache"
    dataset = open_dataset(dataset_cfg, len(table.names))
    workers = max(1, int(cfg.training.loader.workers))
    fingerprint = read_fingerprint(dataset, cache_dir, workers)
    machine = this_machine()
    requested = cfg.training.precision  # a bad value is named by the config check of the run
    precision = resolve_precision(requested) if requested in values(Precision) else "fp32"
    static = [
        *_layout_choices(layout),
        *_class_table_choices(table),
        *network_choices(fingerprint, machine, cfg.plan.max_side, precision),
        *data_choices(fingerprint),
    ]
    for c in static:  # your keys of another network (model.base_filters=...) keep that network
        if c.group and c.key == "model" and _foreign_model_keys(explicit, str(c.value), conf_dir):
            explicit.groups.add("model")
    groups = [f"{c.key}={c.value}" for c in static if c.group and not explicit.covers(c)]
    planned = compose_train([*groups, *overrides]) if groups else cfg
    apply, skipped = _applicable(static, explicit, planned)
    planned = _set(planned, [c for c in apply if not c.group])
    size = (planned.model.image_height, planned.model.image_width)
    loader, loader_skipped = _applicable(
        loader_choices(fingerprint, machine, size, planned.training.loader.cache_mb), explicit, planned
    )
    planned = _set(planned, loader)
    apply, skipped = [*apply, *loader], [*skipped, *loader_skipped]
    t = planned.training
    step = None
    budget_keys = Explicit(keys=explicit.keys)
    wants_budget = not all(
        budget_keys.covers(Choice(k, None, "", "")) for k in ("training.steps_per_epoch", "training.epochs")
    )
    if t.max_time is not None and wants_budget and t.devices == 1:
        step = measure_step_time(validate_run_config(planned.copy()), table.names, machine, cache_dir, dataset.encoding)
        jit = next((c for c in apply if c.key == "training.jit_compile"), None)
        if jit is not None and xla_measured(machine, precision):
            other = _set(planned.copy(), [replace(jit, value=not jit.value)])
            other_step = measure_step_time(
                validate_run_config(other), table.names, machine, cache_dir, dataset.encoding
            )
            with_xla, without = (step, other_step) if jit.value else (other_step, step)
            chosen = xla_choice(t.max_time, with_xla, without, jit.requires)
            apply = [chosen if c is jit else c for c in apply]
            planned = _set(planned, [chosen])
            step = with_xla if chosen.value else without
        if planned.training.loader.workers == 0:  # the batches are augmented between two steps: part of the step
            step = replace(step, load_s=loader_batch_time(validate_run_config(planned.copy()), dataset))
    budget = budget_choices(
        t.max_time if step else None,
        step,
        fingerprint.slices.get("valid", 0),
        t.batch_size,
        cfg.plan.fixed_steps,
        cfg.plan.validations,
        cfg.plan.max_overhead,
    )
    more, more_skipped = _applicable(budget, explicit, planned)
    planned = _set(planned, more)
    plan = Plan(fingerprint, machine, step, table, [*apply, *more], [*skipped, *more_skipped], groups)
    return planned, plan


def replay_plan(cfg: DictConfig, overrides: Sequence[str], saved: dict[str, Any]) -> DictConfig:
    """``cfg`` with a saved plan's group overrides and choices applied as they were (a resumed run)."""
    groups = list(saved.get("group_overrides", []))
    planned = compose_train([*groups, *overrides]) if groups else cfg
    values = [Choice(**c) for c in saved.get("applied", []) if not c.get("group")]
    return _set(planned, values)


# ----------------------------------------------------------------------------- the editable preset


def preset_text(plan: Plan, planned: DictConfig, defaults: DictConfig, overrides: Sequence[str]) -> str:
    """An ``experiment`` preset (``# @package _global_``) listing only what differs from ``defaults``
    (the config composed with ``plan=none`` and the same overrides), each line with its figure and rule.
    The command line's own settings are listed too, so the preset stands alone."""
    explicit = explicit_settings(overrides)
    lines = [
        "# @package _global_",
        f"# The plan for {plan.fingerprint.name}, made by segexp-plan on {plan.machine.device} "
        f"({plan.machine.name}, {plan.machine.cores} cores). Edit freely, then:",
        "#   segexp-train experiment=<this file's name>",
        "# Each planned line names the fingerprint figure it read and the rule (README 'Plan').",
        "defaults:",
    ]
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if key in explicit.groups and key not in GLOBAL_GROUPS and key != "plan":
            lines.append(f"  - override /{key}: {override.split('=', 1)[1]}  # yours")
    lines += [f"  - override /{c.key}: {c.value}  # {c.figure} -> {c.rule}" for c in plan.applied if c.group]
    lines.append("  - override /plan: none  # this file is the plan")
    entries: list[tuple[str, Any, str]] = []
    for key in sorted(k for k in explicit.keys if not k.startswith(("hydra", "plan"))):
        entries.append((key, _plain(OmegaConf.select(planned, key)), "yours"))
    for c in plan.applied:
        if not c.group and _plain(OmegaConf.select(defaults, c.key, default="<missing>")) != c.value:
            entries.append((c.key, c.value, f"{c.figure} -> {c.rule}"))
    lines += _nested_yaml(entries)
    return "\n".join(lines) + "\n"


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value, enum_to_str=True) if OmegaConf.is_config(value) else value


def _nested_yaml(entries: Sequence[tuple[str, Any, str]]) -> list[str]:
    """``key.sub: value  # comment`` entries as nested YAML, values in flow style (JSON is YAML)."""
    out: list[str] = []
    opened: list[str] = []
    for key, value, comment in sorted(entries, key=lambda e: e[0]):
        parts = key.split(".")
        common = 0
        while common < min(len(opened), len(parts) - 1) and opened[common] == parts[common]:
            common += 1
        opened = opened[:common]
        for depth in range(common, len(parts) - 1):
            out.append("  " * depth + f"{parts[depth]}:")
            opened.append(parts[depth])
        out.append("  " * (len(parts) - 1) + f"{parts[-1]}: {json.dumps(value)}  # {comment}")
    return out
