"""Typed schema and start-up validation of the composed training config.

Hydra composes ``conf/train.yaml``; :func:`validate_train_config` then checks it
against the dataclasses below (unknown keys, wrong types) and against the rules
that only make sense together (image size vs. depth, odd kernels, ratios in
[0, 1], class counts, existing folders). Every problem is reported with its full
key (``model.base_kernels``) in one :class:`ConfigError`, before any data is read.

Option fields are typed with their set of :mod:`segexp.config.options` (``precision: Precision``), so the
typed config holds members and OmegaConf refuses any other value; :func:`merge_typed` reports every bad
option first, with its full key and the choices, together with the other problems.
"""

from __future__ import annotations

import copy
import os
import re
import types
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, is_dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Optional, Union, cast, get_args, get_origin, get_type_hints
from urllib.parse import urlparse

from hydra.utils import get_object
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from segexp.config.options import (
    Layout,
    MaskFormat,
    OnBadFile,
    PostprocessMode,
    Precision,
    Split,
    expected,
    values,
)
from segexp.core.errors import ConfigError, raise_config_problems

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # segexp/
#: The repository checkout that holds ``conf/`` (segexp is installed editable).
REPO_DIR = PACKAGE_DIR.parent
CONF_DIR = REPO_DIR / "conf"
#: The ``loss`` group: one YAML per loss, a ``_target_`` entry each (``conf/loss/dice_ce.yaml``).
LOSS_DIR = CONF_DIR / "loss"


def loss_names() -> list[str]:
    """The losses of the ``loss`` group, sorted: the names of ``conf/loss/*.yaml`` (``loss=<name>``)."""
    return sorted(p.stem for p in LOSS_DIR.glob("*.yaml"))


#: A device name in ``training.devices``: ``GPU:0``, ``/gpu:0``, ``/device:CPU:1`` (any case).
DEVICE_NAME = re.compile(r"^/?(?:device:)?(cpu|gpu):(\d+)$", re.IGNORECASE)


def to_dict(cfg: Any, *, resolve: bool) -> dict[str, Any]:
    """``OmegaConf.to_container(cfg, resolve=resolve)`` of a mapping node, typed as the plain dict it is; options
    (:mod:`segexp.config.options` members) become their plain strings, as YAML, JSON and MLflow take them."""
    plain = OmegaConf.to_container(cfg, resolve=resolve, enum_to_str=True)
    if not isinstance(plain, dict):
        raise TypeError(f"expected a mapping config node, got {type(plain).__name__}")
    return cast("dict[str, Any]", plain)  # DictConfig keys are str in every config this project reads


# --------------------------------------------------------------------------- schema


@dataclass
class PhantomConfig:
    cases: dict[str, int] = MISSING
    num_slices: int = MISSING
    size: int = MISSING
    seed: int = MISSING


@dataclass
class DatasetConfig:
    name: str = MISSING
    root: str = MISSING
    layout: Layout = MISSING
    splits: dict[str, str] = MISSING
    cases: dict[str, list[str]] = MISSING
    case_pattern: str = MISSING
    images_dir: str = MISSING
    masks_dir: str = MISSING
    mask_format: MaskFormat = MISSING
    class_names: Optional[list[str]] = MISSING  # null: resolved from the data (segexp.data.runtime.class_table)
    rgb_map: Optional[dict[str, list[int]]] = MISSING
    binary_threshold: int = MISSING
    on_bad_file: OnBadFile = MISSING
    context_slices: Optional[int] = MISSING  # 2.5D neighbours per side; null: as stored (dataset.json)
    phantom: Optional[PhantomConfig] = MISSING


@dataclass
class AugmentationConfig:
    name: str = MISSING
    transforms: dict[str, Any] = MISSING


@dataclass
class EpochImagesConfig:
    num: int = MISSING
    dir: Optional[str] = MISSING
    every_n_epochs: int = MISSING


@dataclass
class IntervalConfig:
    every_n_epochs: int = MISSING


@dataclass
class LoaderConfig:
    workers: int = MISSING
    use_multiprocessing: bool = MISSING
    max_queue_size: int = MISSING
    cache_mb: float = MISSING


@dataclass
class ThreadsConfig:
    intra_op: Optional[int] = MISSING
    inter_op: Optional[int] = MISSING


@dataclass
class TrainingConfig:
    epochs: int = MISSING
    steps_per_epoch: Optional[int] = MISSING
    foreground_fraction: float = MISSING
    batch_size: int = MISSING
    learning_rate: float = MISSING
    optimizer: dict[str, Any] = MISSING
    schedule: Optional[dict[str, Any]] = MISSING
    max_time: Optional[float] = MISSING
    monitor: str = MISSING
    monitor_mode: str = MISSING
    epoch_images: EpochImagesConfig = field(default_factory=EpochImagesConfig)
    validation: IntervalConfig = field(default_factory=IntervalConfig)
    checkpoint: IntervalConfig = field(default_factory=IntervalConfig)
    loader: LoaderConfig = field(default_factory=LoaderConfig)
    jit_compile: Any = MISSING
    precision: Precision = MISSING
    deterministic: bool = MISSING
    verbose: int = MISSING
    evaluate_after: bool = MISSING
    postprocess: PostprocessMode = MISSING
    nsd_tolerance_mm: Any = MISSING  # a number | {class name: number, default: number}: check_nsd_tolerance
    resume: Optional[str] = MISSING
    threads: ThreadsConfig = field(default_factory=ThreadsConfig)
    devices: Any = MISSING  # 1 | auto | n | [GPU indices or device names]: checked by _check_devices


@dataclass
class OutageConfig:
    connect_timeout_s: float = MISSING
    request_timeout_s: int = MISSING
    http_retries: int = MISSING
    max_wait_s: float = MISSING


@dataclass
class TrackingConfig:
    enabled: bool = MISSING
    uri: str = MISSING
    artifact_location: Optional[str] = MISSING
    experiment: str = MISSING
    run_name: Optional[str] = MISSING
    log_model: bool = MISSING
    log_epoch_images: bool = MISSING
    system_metrics: bool = MISSING
    registered_model: Optional[str] = MISSING
    outage: OutageConfig = field(default_factory=OutageConfig)
    optuna_storage: Optional[str] = MISSING  # where Optuna searches keep their studies (conf/tracking/sqlite.yaml)


@dataclass
class PathsConfig:
    root: str = MISSING
    output_dir: str = MISSING
    data_dir: str = MISSING
    min_free_mb: float = MISSING


@dataclass
class PlanConfig:
    enabled: bool = MISSING
    max_side: Any = MISSING  # auto | int: checked by _check_plan
    fixed_steps: int = MISSING
    validations: int = MISSING
    max_overhead: float = MISSING
    measure_steps: int = MISSING


@dataclass
class CrossValidationConfig:
    folds: Optional[int] = MISSING  # k >= 2; None: no cross-validation
    fold: Optional[int] = MISSING  # 0..folds-1: this job's fold
    seed: int = MISSING
    test_cases: list[str] = MISSING


@dataclass
class OptunaTrialConfig:
    """A sweep job's Optuna trial (set by segexp's Optuna sweeper; all null in any other run)."""

    study: Optional[str] = MISSING
    storage: Optional[str] = MISSING
    trial: Optional[int] = MISSING


@dataclass
class TrainConfig:
    task_name: str = MISSING
    seed: int = MISSING
    model: Any = MISSING  # the network's own keys: checked by segexp.models (each network declares them)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    augmentation: AugmentationConfig = field(default_factory=AugmentationConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    loss: Any = MISSING  # the loss's _target_ entry (conf/loss/): _check_loss; its own rules when it is built
    callbacks: dict[str, Any] = MISSING  # name -> a Keras callback's _target_ entry, or null (off): _check_callbacks
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    plan: PlanConfig = field(default_factory=PlanConfig)
    cv: CrossValidationConfig = field(default_factory=CrossValidationConfig)
    optuna: OptunaTrialConfig = field(default_factory=OptunaTrialConfig)


#: ``Optional[X]`` and ``X | None`` (both kinds of union a field's hint may be).
UNIONS = (Union, types.UnionType)

# --------------------------------------------------------------------------- checks


#: Keys that were renamed or replaced: an old key (or one under it) is refused with this hint, in the composed
#: config (:func:`_unknown_keys`) and on the command line (:func:`renamed_overrides`).
RENAMED: dict[str, str] = {
    "training.mixed_precision": "replaced by training.precision: auto | fp32 | bf16 | fp16 (auto: bf16 on CPUs with "
    "AVX512_BF16/AMX-BF16 and GPUs of compute capability >= 8.0, fp16 on older GPUs, "
    "else fp32; mixed_precision=true was fp16)",
    "training.early_stopping": "moved to the callbacks group: callbacks=early_stopping, "
    "callbacks.early_stopping.patience=... (and min_delta; conf/callbacks/early_stopping.yaml)",
    "training.reduce_lr": "moved to the callbacks group: callbacks=reduce_lr (with training.schedule=null), "
    "callbacks.reduce_lr.patience=... (and factor, min_lr; conf/callbacks/reduce_lr.yaml)",
    "training.callbacks": "moved to the top-level callbacks group: +callbacks.<name>={_target_:my_pkg.MyCallback} "
    "(or a YAML of yours in conf/callbacks/)",
    "training.loss": f"moved to the loss group: loss={' | '.join(loss_names())} (training.loss=dice_ce is "
    "loss=dice_ce; conf/loss/); a loss of yours: loss._target_=my_pkg.MyLoss (or a YAML of yours in conf/loss/)",
    "training.dice": "moved into the loss's own keys: loss.batch=false, loss.include_background=true "
    "(the losses with a Dice term: conf/loss/)",
    "hydra.sweeper.storage.url": "hydra.sweeper.storage is the URL itself now (segexp's Optuna sweeper, "
    "Optuna >= 4.5): hydra.sweeper.storage=sqlite:///... (default: tracking.optuna_storage)",
    "hydra.sweeper.storage.engine_kwargs": "not needed with Optuna >= 4.5: hydra.sweeper.storage is a URL "
    "(SQLite waits up to 60 s for a lock)",
    "hydra.sweeper.search_space": "the search space is hydra.sweeper.params (Hydra's sweep syntax: interval(), "
    "tag(log, interval()), tag(int, interval()), range(), choice())",
    "hydra.sweeper.custom_search_space": "not supported by segexp's Optuna sweeper: put every parameter in "
    "hydra.sweeper.params",
    "hydra/sweeper/sampler": "the sampler of segexp's Optuna sweeper: hparams_search.sampler=tpe | random | cmaes | "
    "grid (the group hydra/sweeper/optuna_sampler)",
}

#: Command-line spellings segexp-train rewrites before Hydra composes, alias -> (config group, config node): an Optuna
#: search's sampler and pruner. ``hparams_search.pruner=median`` picks the group's option
#: (``hydra/sweeper/optuna_pruner=median``), ``hparams_search.pruner.<key>=v`` sets one of its keys
#: (``hydra.sweeper.pruner.<key>=v``).
ALIASES: dict[str, tuple[str, str]] = {
    "hparams_search.sampler": ("hydra/sweeper/optuna_sampler", "hydra.sweeper.sampler"),
    "hparams_search.pruner": ("hydra/sweeper/optuna_pruner", "hydra.sweeper.pruner"),
}


def expand_aliases(overrides: Sequence[str]) -> list[str]:
    """``overrides`` with every :data:`ALIASES` key spelled as Hydra knows it (the rest unchanged)."""
    expanded = []
    for override in overrides:
        key, sep, value = override.partition("=")
        for alias, (group, node) in ALIASES.items():
            if key == alias and sep:
                override = f"{group}={value}"
            elif key.startswith(f"{alias}."):
                override = f"{node}{key[len(alias) :]}{sep}{value}"
        expanded.append(override)
    return expanded


def renamed_overrides(overrides: Sequence[str]) -> list[str]:
    """The problems of command-line ``overrides`` (``key=value``, ``+key=...``, ``~key``) that set a key of
    :data:`RENAMED` or one under it, each naming the new key. Hydra refuses a key the config no longer has with
    its own struct error before segexp sees the config; the train shell checks the overrides first."""
    problems = []
    for override in overrides:
        if override.startswith("-"):  # -m, --config-name, ...: not a key
            continue
        key = override.split("=", 1)[0].lstrip("+~").split("@", 1)[0].strip()
        old = next((k for k in RENAMED if key == k or key.startswith(f"{k}.")), None)
        if old is not None:
            problems.append(f"{old}: {RENAMED[old]}")
    return problems


def _schema_keys(node: Any, schema: Any, path: str = "") -> Iterator[tuple[str, DictConfig, str, dict[str, Any]]]:
    """``(path, section, key, declared keys)`` for every key of the config ``node`` against the dataclass ``schema``:
    ``declared keys`` are the type hints of the section's dataclass (the key absent: unknown). Nested sections,
    ``Optional`` ones and the entries of a ``dict[str, Section]`` are walked too; ``path`` is the dotted key."""
    if not isinstance(node, DictConfig):
        return
    hints = get_type_hints(schema)
    for key in map(str, node.keys()):  # DictConfig keys are str in every config this project reads
        full = f"{path}{key}"
        yield full, node, key, hints
        if key not in hints:
            continue
        hint, args = hints[key], get_args(hints[key])
        if get_origin(hint) is dict and len(args) == 2 and is_dataclass(args[1]):
            for name, value in (node[key] or {}).items():  # dict[str, Section]: every entry
                yield from _schema_keys(value, args[1], f"{full}.{name}.")
            continue
        # Section or Optional[Section]: descend into the nested dataclass.
        sub = next((t for t in (hint, *(args if get_origin(hint) in UNIONS else ())) if is_dataclass(t)), None)
        if sub is not None:
            yield from _schema_keys(node[key], sub, f"{full}.")


def _unknown_keys(node: Any, schema: Any) -> list[str]:
    """Full keys present in ``node`` but not declared in the dataclass ``schema`` (or renamed: :data:`RENAMED`)."""
    problems = []
    for full, _, key, declared in _schema_keys(node, schema):
        if full in RENAMED:
            problems.append(f"{full}: {RENAMED[full]}")
        elif key not in declared:
            problems.append(f"{full}: unknown key; expected one of {sorted(declared)}")
    return problems


def _option_set(hint: Any) -> type[StrEnum] | None:
    """The option set (:mod:`segexp.config.options`) of a field typed ``Options`` or ``Optional[Options]``."""
    for t in (hint, *(get_args(hint) if get_origin(hint) in UNIONS else ())):
        if isinstance(t, type) and issubclass(t, StrEnum):
            return t
    return None


def _bad_options(node: Any, schema: Any, prefix: str = "") -> list[tuple[str, Any, type[StrEnum], str]]:
    """``(path, value, option set, problem)`` of every option field of ``node`` whose value is not one of its set;
    the problem (:func:`~segexp.config.options.expected`) names the full key, ``prefix`` + the path.

    An interpolation counts with its resolved value (one that does not resolve is left to the merge, which names
    it); a missing value (``???``) is left to the missing-keys report; a null is an option where the field is
    ``Optional``."""
    bad = []
    for path, section, key, declared in _schema_keys(node, schema):
        options = _option_set(declared.get(key))
        if options is None or OmegaConf.is_missing(section, key):
            continue
        try:
            value = section[key]
        except OmegaConfBaseException:  # an interpolation that does not resolve
            continue
        optional = get_origin(declared[key]) in UNIONS and type(None) in get_args(declared[key])
        problem = None if value is None and optional else expected(prefix + path, value, options)
        if problem is not None:
            bad.append((path, value, options, problem))
    return bad


def merge_typed(cfg: DictConfig, schema: type, prefix: str = "") -> tuple[DictConfig, list[str]]:
    """``(config, option problems)``: ``cfg`` merged onto the dataclass ``schema``, and one problem per option
    field (typed with a set of :mod:`segexp.config.options`) whose value is not one of its set, worded by
    :func:`~segexp.config.options.expected` with its full key (``prefix`` + its path), all at once.

    Without option problems the config is typed: each option is its set's member. OmegaConf refuses a bad
    option, one at a time and without the choices, so with option problems the merge takes a stand-in (the
    set's first option) and the config returned is the typed one as plain values, struct, with each bad value
    put back as given: the caller's other rules see what was written, and report with these problems.
    Raises what :func:`OmegaConf.merge` raises (a wrong type, an unresolvable interpolation).
    """
    bad = _bad_options(cfg, schema, prefix)
    source = cfg
    if bad:
        source = copy.deepcopy(cfg)
        for path, _, options, _ in bad:
            OmegaConf.update(source, path, next(iter(options)).value, merge=False)
    typed = cast(DictConfig, OmegaConf.merge(OmegaConf.structured(schema), source))  # a dataclass merges to a dict
    if not bad:
        return typed, []
    given = OmegaConf.create(to_dict(typed, resolve=False))
    for path, value, _, _ in bad:
        OmegaConf.update(given, path, value, merge=False)
    OmegaConf.set_struct(given, True)
    return given, [problem for *_, problem in bad]


def in_unit_interval(value: float) -> bool:
    return 0.0 <= value <= 1.0


#: The error when no class table reached validation
#: (a command forgot :func:`segexp.data.runtime.class_table.with_class_table`).
NO_CLASS_TABLE = (
    "dataset.class_names: none given and none resolved (null: the class table comes from dataset.json "
    "beside the data or the train masks, resolved before validation); give dataset.class_names"
)


def check_dataset(d: Any, num_classes: int | None) -> list[str]:
    """Problems of the ``dataset`` section; ``num_classes`` is the model's (checked against the class table)."""
    if d.class_names is None:
        return [NO_CLASS_TABLE] + check_dataset_keys(d)
    errors = []
    names = list(d.class_names)
    if len(names) < 2:
        errors.append(f"dataset.class_names: need background plus at least one class, got {names}")
    if len(set(names)) != len(names):
        errors.append(f"dataset.class_names: names must be unique, got {names}")
    if d.mask_format == "rgb":
        if d.rgb_map is None:
            errors.append("dataset.rgb_map: required when mask_format is 'rgb'")
        else:
            if list(d.rgb_map.keys()) != names:
                errors.append(
                    f"dataset.rgb_map: keys must be the class names in class_names order {names}, "
                    f"got {list(d.rgb_map.keys())}"
                )
            for name, rgb in d.rgb_map.items():
                if len(rgb) != 3 or any(not 0 <= c <= 255 for c in rgb):
                    errors.append(f"dataset.rgb_map.{name}: expected [r, g, b] in 0..255, got {list(rgb)}")
            colours = [tuple(c) for c in d.rgb_map.values()]
            if len(set(colours)) != len(colours):
                errors.append(f"dataset.rgb_map: colours must be distinct, got {colours}")
    if d.mask_format == "binary" and len(names) != 2:
        errors.append(f"dataset.class_names: a binary mask_format needs exactly 2 classes, got {names}")
    expected = 1 if num_classes == 1 else len(names)
    if num_classes == 1 and len(names) != 2:
        errors.append(
            f"model.num_classes: 1 (sigmoid) is for binary tasks, but dataset.class_names has {len(names)} classes"
        )
    elif num_classes != expected:
        errors.append(
            f"model.num_classes: {num_classes} does not match the {len(names)} classes of "
            f"dataset.class_names {names} (use {len(names)}, or 1 for a binary sigmoid head)"
        )
    return errors + check_dataset_keys(d)


def check_dataset_keys(d: Any) -> list[str]:
    """Problems of the ``dataset`` keys other than the class table."""
    errors = []
    if d.mask_format == "binary" and not 0 <= d.binary_threshold <= 255:
        errors.append(f"dataset.binary_threshold: must lie in 0..255, got {d.binary_threshold}")
    if d.context_slices is not None and d.context_slices < 0:
        errors.append(f"dataset.context_slices: neighbours per side, must be null or >= 0, got {d.context_slices}")
    if d.layout != "splits" and any(d.cases.get(s) for s in d.cases):  # {} is the automatic split by patient
        for split in ("train", "valid"):
            if not d.cases.get(split):
                errors.append(
                    f"dataset.cases.{split}: the case ids of the {split} split are missing "
                    "(name train and valid, or leave dataset.cases empty ({}) for an automatic split by patient)"
                )
        seen: dict[str, str] = {}
        for split, case_ids in d.cases.items():
            if split not in values(Split):
                errors.append(f"dataset.cases.{split}: unknown split; expected {list(values(Split))}")
            for case in case_ids or []:
                if case in seen:
                    errors.append(
                        f"dataset.cases: case {case!r} is in both {seen[case]!r} and {split!r} (patient leak)"
                    )
                seen[case] = split
    return errors


def _check_devices(t: Any) -> list[str]:
    """``training.devices``: 1, auto, a count or a list of GPU indices / device names; the batch splits over them."""
    devices = t.devices
    if isinstance(devices, bool) or not (devices == "auto" or isinstance(devices, (int, ListConfig))):
        return [f"training.devices: expected 1, auto, a count or a list of GPU indices / device names, got {devices!r}"]
    if isinstance(devices, int) and devices < 1:
        return [f"training.devices: must be >= 1, got {devices}"]
    if isinstance(devices, ListConfig):
        bad = [
            d
            for d in devices
            if isinstance(d, bool)
            or not ((isinstance(d, int) and d >= 0) or (isinstance(d, str) and DEVICE_NAME.match(d)))
        ]
        if not devices or bad:
            return [f"training.devices: expected GPU indices (>= 0) or device names like 'GPU:0', got {list(devices)}"]
    replicas = devices if isinstance(devices, int) else len(devices) if isinstance(devices, ListConfig) else 1
    if t.batch_size >= 1 and t.batch_size % replicas:
        return [
            (
                f"training.batch_size: the global batch ({t.batch_size}) must split evenly over the {replicas} "
                f"replicas of training.devices (batch_size / replicas samples each)"
            )
        ]
    return []


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_nsd_tolerance(value: Any, key: str, class_names: Sequence[str] | None = None) -> list[str]:
    """The NSD tolerance (segexp.evaluation.scoring.class_tolerances): a number >= 0, or a mapping of foreground
    class names (and ``default``) to such numbers; the names are checked when ``class_names`` are known."""
    if isinstance(value, DictConfig):
        value = OmegaConf.to_container(value)
    entries = value if isinstance(value, dict) else {None: value}
    errors = [
        f"{key}{'' if name is None else '.' + str(name)}: expected a number >= 0 (mm, pixels without spacing), "
        f"got {v!r}"
        for name, v in entries.items()
        if not (_is_number(v) and 0 <= v < float("inf"))
    ]
    if isinstance(value, dict) and class_names:
        unknown = sorted(str(n) for n in set(value) - set(class_names[1:]) - {"default"})
        if unknown:
            errors.append(f"{key}: {unknown} are not foreground classes of {list(class_names[1:])} (or default)")
        elif "default" not in value and set(class_names[1:]) - set(value):
            left = sorted(set(class_names[1:]) - set(value))
            errors.append(f"{key}: no tolerance for {left}: name them or give a default")
    return errors


def _check_training(t: Any) -> list[str]:
    errors = _check_devices(t)
    for key in ("epochs", "batch_size"):
        if t[key] < 1:
            errors.append(f"training.{key}: must be >= 1, got {t[key]}")
    if t.learning_rate <= 0:
        errors.append(f"training.learning_rate: must be > 0, got {t.learning_rate}")
    if t.monitor_mode not in ("min", "max"):
        errors.append(f"training.monitor_mode: expected 'min' or 'max', got {t.monitor_mode!r}")
    if "_target_" not in t.optimizer:
        errors.append("training.optimizer: needs a _target_ such as keras.optimizers.Adam")
    for key in ("epoch_images.num", "loader.workers"):
        group, name = key.split(".")
        if t[group][name] < 0:
            errors.append(f"training.{key}: must be >= 0, got {t[group][name]}")
    if t.loader.cache_mb < 0:
        errors.append(f"training.loader.cache_mb: must be >= 0 (0: no cache), got {t.loader.cache_mb}")
    if t.loader.max_queue_size < 1:
        errors.append(f"training.loader.max_queue_size: must be >= 1, got {t.loader.max_queue_size}")
    for key in ("intra_op", "inter_op"):
        if t.threads[key] is not None and t.threads[key] < 1:
            errors.append(f"training.threads.{key}: must be >= 1 or null (TensorFlow's default), got {t.threads[key]}")
    if t.steps_per_epoch is not None and t.steps_per_epoch < 1:
        errors.append(
            f"training.steps_per_epoch: must be >= 1, or null for one pass over the data, got {t.steps_per_epoch}"
        )
    if not in_unit_interval(t.foreground_fraction):
        errors.append(f"training.foreground_fraction: must lie in [0, 1], got {t.foreground_fraction}")
    elif t.foreground_fraction > 0 and t.steps_per_epoch is None:
        errors.append(
            "training.foreground_fraction: oversampling draws samples, which needs training.steps_per_epoch "
            "(got null: one pass); set steps_per_epoch or foreground_fraction=0"
        )
    if t.max_time is not None and t.max_time <= 0:
        errors.append(f"training.max_time: minutes must be > 0, or null for no limit, got {t.max_time}")
    if t.schedule is not None and "_target_" not in t.schedule:
        errors.append("training.schedule: needs a _target_ such as keras.optimizers.schedules.PolynomialDecay, or null")
    for key in ("epoch_images", "validation", "checkpoint"):
        if t[key].every_n_epochs < 1:
            errors.append(f"training.{key}.every_n_epochs: must be >= 1, got {t[key].every_n_epochs}")
    if t.jit_compile not in ("auto", True, False):
        errors.append(f"training.jit_compile: expected auto, true or false, got {t.jit_compile!r}")
    if t.epoch_images.dir is not None and not Path(t.epoch_images.dir).is_dir():
        errors.append(f"training.epoch_images.dir: folder {t.epoch_images.dir} does not exist")
    return errors


def _check_loss(loss: Any) -> list[str]:
    """``loss``: a ``_target_`` entry that imports. What the loss itself refuses (``bce_dice`` with several
    classes, a key it does not take) is found by building it: :func:`segexp.models.losses.check_loss_config`."""
    if not isinstance(loss, DictConfig) or "_target_" not in loss:
        return [
            f"loss: needs a _target_ naming a keras.losses.Loss (loss=<one of {', '.join(loss_names())}> or "
            f"loss._target_=my_pkg.MyLoss), got {loss!r}"
        ]
    try:
        get_object(loss._target_)
    except Exception as err:  # noqa: BLE001 - whatever importing the user's module raises
        cause = err.__cause__ or err  # hydra wraps the import's own error in a message of several lines
        return [f"loss._target_: cannot import {loss._target_!r} ({type(cause).__name__}: {cause})"]
    return []


def _check_callbacks(callbacks: Any, schedule: Any) -> list[str]:
    """``callbacks``: each entry a ``_target_`` that imports (or null: off). A ReduceLROnPlateau cannot change a
    learning-rate schedule (``training.schedule``); its ``factor`` lies in (0, 1); patiences are >= 0."""
    errors = []
    for name, spec in callbacks.items():
        if spec is None:
            continue
        if not isinstance(spec, DictConfig) or "_target_" not in spec:
            errors.append(f"callbacks.{name}: needs a _target_ naming a keras.callbacks.Callback, or null (off)")
            continue
        try:
            target = get_object(spec._target_)
        except Exception as err:  # noqa: BLE001 - whatever importing the user's module raises
            errors.append(f"callbacks.{name}: cannot build {spec._target_!r}: cannot import it ({err})")
            continue
        import keras  # only here: the schema checks without loading Keras unless a callback is named

        if not isinstance(target, type):  # a factory function: what it builds is checked when the run builds it
            continue
        if issubclass(target, keras.callbacks.ReduceLROnPlateau):
            if schedule is not None:
                errors.append(
                    f"callbacks.{name}: ReduceLROnPlateau cannot change a learning-rate schedule; "
                    f"set training.schedule=null to use it (or drop callbacks.{name}: callbacks=none)"
                )
            factor = spec.get("factor", 0.1)
            if not (isinstance(factor, (int, float)) and 0.0 < factor < 1.0):
                errors.append(f"callbacks.{name}.factor: must lie in (0, 1), got {factor}")
        patience = spec.get("patience", 0)
        if issubclass(target, (keras.callbacks.ReduceLROnPlateau, keras.callbacks.EarlyStopping)) and not (
            isinstance(patience, int) and patience >= 0
        ):
            errors.append(f"callbacks.{name}.patience: must be an int >= 0, got {patience}")
    return errors


def _check_plan(p: Any) -> list[str]:
    errors = []
    if p.max_side != "auto" and (isinstance(p.max_side, bool) or not isinstance(p.max_side, int) or p.max_side < 16):
        errors.append(f"plan.max_side: expected auto or an int >= 16 (pixels), got {p.max_side!r}")
    for key in ("fixed_steps", "validations", "measure_steps"):
        if p[key] < 1:
            errors.append(f"plan.{key}: must be >= 1, got {p[key]}")
    if not 0.0 < p.max_overhead < 1.0:
        errors.append(f"plan.max_overhead: a share of the time budget in (0, 1), got {p.max_overhead}")
    return errors


def check_tracking(t: Any) -> list[str]:
    """``tracking.uri`` names a store MLflow 3 writes to: a database or a server, not the file store (``./mlruns``,
    ``file:...``), which MLflow 3 keeps in maintenance mode and refuses unless ``MLFLOW_ALLOW_FILE_STORE=true``:
    caught here, before the plan and the data are read, instead of as MLflow's exception when the run starts."""
    if not t.enabled or os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() in ("1", "true"):
        return []
    uri = str(t.uri)
    scheme = urlparse(uri).scheme.lower()
    if scheme == "file" or (not scheme and uri not in MLFLOW_SCHEMELESS_URIS):
        return [
            f"tracking.uri: {uri!r} is MLflow's file store, which MLflow 3 refuses (maintenance mode); expected "
            "a database such as sqlite:///<folder>/mlflow.db (tracking=sqlite, the default), a server "
            "http://host:port (tracking=server), or set MLFLOW_ALLOW_FILE_STORE=true to keep the file store"
        ]
    return []


#: Tracking URIs without a scheme that are not paths (MLflow's Databricks workspaces).
MLFLOW_SCHEMELESS_URIS = ("databricks", "databricks-uc")


def check_optuna_trial(o: Any) -> list[str]:
    """``optuna.trial`` >= 0 comes with ``optuna.study`` and ``optuna.storage`` (the sweeper sets all three)."""
    if o.trial is None:
        return []
    if o.trial < 0:
        return [f"optuna.trial: expected a trial number >= 0, got {o.trial}"]
    missing = [f"optuna.{key}" for key in ("study", "storage") if not o[key]]
    if not missing:
        return []
    return [f"optuna.trial={o.trial}: needs {' and '.join(missing)} too (segexp's Optuna sweeper sets all three)"]


def check_cross_validation(cv: Any) -> list[str]:
    """``cv.folds`` an int >= 2 or null, ``cv.fold`` in 0..folds-1 (null only without folds), ``cv.seed`` >= 0."""
    errors = []
    if cv.folds is not None and cv.folds < 2:
        errors.append(f"cv.folds: expected an integer >= 2 (or null: no cross-validation), got {cv.folds}")
    elif cv.folds is None and cv.fold is not None:
        errors.append(f"cv.fold: {cv.fold} given without cv.folds; set cv.folds too (segexp-cv cv.folds=5 sets both)")
    elif cv.folds is not None and (cv.fold is None or not 0 <= cv.fold < cv.folds):
        errors.append(f"cv.fold: expected an integer in 0..{cv.folds - 1} (cv.folds={cv.folds}), got {cv.fold}")
    if cv.seed < 0:
        errors.append(f"cv.seed: expected an integer >= 0, got {cv.seed}")
    return errors


def _check_augmentation(a: Any) -> list[str]:
    errors = []
    for name, entry in (a.transforms or {}).items():
        if entry is None:
            continue
        p = entry.get("p", 1.0) if isinstance(entry, DictConfig) else None
        if isinstance(p, (int, float)) and not in_unit_interval(p):
            errors.append(f"augmentation.transforms.{name}.p: probability must lie in [0, 1], got {p}")
    return errors


def typed_config(cfg: DictConfig, schema: type) -> tuple[DictConfig, list[str]]:
    """``(config, option problems)``: ``cfg`` merged onto the dataclass ``schema`` (:func:`merge_typed`).

    Unknown keys raise at once, together with every option problem; wrong types and missing values raise
    too. Option problems alone are returned, for the caller to report with its own rules' problems.
    """
    unknown = _unknown_keys(cfg, schema)
    if unknown:
        raise_config_problems(unknown + [problem for *_, problem in _bad_options(cfg, schema)])
    try:
        typed, problems = merge_typed(cfg, schema)
        OmegaConf.resolve(typed)
    except OmegaConfBaseException as err:
        where = f"{err.full_key}: " if err.full_key else ""  # a resolver's error (``${len:...}``) names no key
        raise ConfigError(f"invalid config: {where}{str(err).splitlines()[0]}") from err
    missing = sorted(OmegaConf.missing_keys(typed))
    if missing:
        raise ConfigError("invalid config: these keys need a value: " + ", ".join(missing))
    return typed, problems


def check_train_config(cfg: DictConfig) -> tuple[DictConfig, list[str]]:
    """``(typed config, problems)``: ``cfg`` merged onto the schema, and the option and cross-key problems found
    (with option problems the config holds plain values: :func:`merge_typed`).

    Unknown keys, wrong types and missing values raise :class:`ConfigError` at once (nothing
    can be checked further). The ``model`` section is typed and checked by its network
    (:func:`segexp.models.check_model_config`), not here.
    """
    typed, options = typed_config(cfg, TrainConfig)
    problems = options + (
        check_dataset(typed.dataset, typed.model.num_classes)
        + _check_training(typed.training)
        + _check_loss(typed.loss)
        + _check_callbacks(typed.callbacks, typed.training.schedule)
        + _check_augmentation(typed.augmentation)
        + _check_plan(typed.plan)
        + check_tracking(typed.tracking)
        + check_cross_validation(typed.cv)
        + check_optuna_trial(typed.optuna)
        + check_nsd_tolerance(typed.training.nsd_tolerance_mm, "training.nsd_tolerance_mm", typed.dataset.class_names)
    )
    return typed, problems


def validate_train_config(cfg: DictConfig) -> DictConfig:
    """Check ``cfg`` against the schema and the cross-key rules (the network's keys aside).

    Returns the config merged onto the schema (typed). Raises :class:`ConfigError` listing
    every problem with its full key. Dataset folders are checked separately, after an
    optional phantom is generated.
    """
    typed, problems = check_train_config(cfg)
    raise_config_problems(problems)
    return typed
