"""Typed schemas and start-up validation of the other commands: ``segexp-prepare``, ``segexp-check``,
``segexp-evaluate`` and ``segexp-infer``.

Each ``validate_*_config`` merges the composed config onto its dataclass (unknown keys, wrong types and
bad options at once, :func:`segexp.config.schema.merge_typed`) and checks the rules that only make sense
together, raising one :class:`ConfigError` that names every key. ``segexp-train``'s schema is
:mod:`segexp.config.schema`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import MISSING, DictConfig, OmegaConf, open_dict

from segexp.config.options import (
    LargeImages,
    PostprocessMode,
    Precision,
    PreparedMaskFormat,
    SliceAxis,
    Split,
    VolumeOutputFormat,
    WindowMode,
    values,
)
from segexp.config.schema import (
    DatasetConfig,
    PathsConfig,
    TrackingConfig,
    check_dataset,
    check_dataset_keys,
    check_nsd_tolerance,
    check_tracking,
    in_unit_interval,
    typed_config,
)
from segexp.core.errors import raise_config_problems

# --------------------------------------------------------------------------- segexp-prepare


@dataclass
class VolumeClassConfig:
    """One entry of the user's ``volumes.classes`` map (no YAML holds its defaults: they are the entry's)."""

    labels: list[int] = MISSING
    rgb: list[int] = field(default_factory=lambda: [0, 0, 0])  # colour in rgb masks; background black


@dataclass
class PhantomVolumesConfig:
    num_cases: int = MISSING
    size: int = MISSING
    num_slices: int = MISSING
    seed: int = MISSING
    fovs_mm: Optional[list[float]] = MISSING  # in-plane fields of view the cases cycle through (mixed spacings)


@dataclass
class VolumesConfig:
    name: str = MISSING
    source: str = MISSING
    pattern: str = MISSING
    classes: dict[str, VolumeClassConfig] = MISSING
    phantom: Optional[PhantomVolumesConfig] = MISSING


@dataclass
class WindowConfig:
    name: str = MISSING
    mode: WindowMode = MISSING
    level: float = MISSING
    width: float = MISSING
    low_percentile: float = MISSING
    high_percentile: float = MISSING


@dataclass
class SplitConfig:
    ratios: dict[str, float] = MISSING
    cases: Optional[dict[str, list[str]]] = MISSING
    folds: Optional[int] = MISSING
    fold: Optional[int] = MISSING
    seed: int = MISSING


@dataclass
class PrepareConfig:
    task_name: str = MISSING
    volumes: VolumesConfig = field(default_factory=VolumesConfig)
    window: WindowConfig = field(default_factory=WindowConfig)
    out_dir: str = MISSING
    axis: SliceAxis = MISSING
    size: Optional[list[int]] = MISSING
    empty_fraction: float = MISSING
    seed: int = MISSING
    split: SplitConfig = field(default_factory=SplitConfig)
    windows: Optional[list[Any]] = MISSING  # stacked HU windows: preset names or {level, width}
    spacing: Any = MISSING  # null | auto | mm | [row, col] mm (check_spacing)
    canvas: Any = MISSING  # null | auto | [height, width] (check_canvas)
    context_slices: int = MISSING  # 2.5D: neighbours per side stacked as channels
    mask_format: PreparedMaskFormat = MISSING
    workers: int = MISSING
    overwrite: bool = MISSING
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)


def _check_volume_classes(classes: Any, mask_format: str) -> list[str]:
    errors = []
    names = list(classes.keys())
    if len(names) < 2:
        errors.append(f"volumes.classes: need background plus at least one class, got {names}")
    owner: dict[int, str] = {}
    for name, c in classes.items():
        if not c.labels:
            errors.append(f"volumes.classes.{name}.labels: list the label values of this class")
        for value in c.labels:
            if not 0 <= value <= 255:
                errors.append(f"volumes.classes.{name}.labels: label values must lie in 0..255, got {value}")
            elif value in owner:
                errors.append(f"volumes.classes.{name}.labels: label {value} already belongs to {owner[value]!r}")
            owner[value] = name
        if len(c.rgb) != 3 or any(not 0 <= v <= 255 for v in c.rgb):
            errors.append(f"volumes.classes.{name}.rgb: expected [r, g, b] in 0..255, got {list(c.rgb)}")
    if names and 0 not in classes[names[0]].labels:
        errors.append(f"volumes.classes: the first class ({names[0]!r}) is the background and must contain label 0")
    colours = [tuple(c.rgb) for c in classes.values()]
    if mask_format == "rgb" and len(set(colours)) != len(colours):
        errors.append(f"volumes.classes: rgb colours must be distinct for mask_format rgb, got {colours}")
    return errors


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def _positive_number(value: Any) -> bool:
    return _number(value) and value > 0


def check_spacing(value: Any, key: str = "spacing") -> list[str]:
    """``spacing``: null, ``auto``, a number of mm > 0, or ``[row, col]`` mm > 0."""
    value = _plain(value)
    if value is None or value == "auto" or _positive_number(value):
        return []
    if isinstance(value, list) and len(value) == 2 and all(_positive_number(v) for v in value):
        return []
    return [f"{key}: expected null (off), auto (the median in-plane spacing), mm > 0 or [row, col] mm, got {value!r}"]


def check_canvas(value: Any, spacing: Any) -> list[str]:
    """``canvas``: null, ``auto`` or ``[height, width]`` pixels >= 1; only with a ``spacing``."""
    value = _plain(value)
    if value is None:
        return []
    if _plain(spacing) is None:
        return [
            f"canvas: pads or crops slices resampled to a spacing; set spacing (auto or mm) too, got canvas {value!r}"
        ]
    if value == "auto" or (
        isinstance(value, list) and len(value) == 2 and all(isinstance(v, int) and v >= 1 for v in value)
    ):
        return []
    return [f"canvas: expected null, auto (the median resampled slice) or [height, width] in pixels, got {value!r}"]


def _check_windows(value: Any) -> list[str]:
    """``windows``: null, or a list of window preset names / ``{level, width}`` in HU (stacked as channels;
    the names are checked against the presets by segexp-prepare, ``segexp.data.io.intensity.stacked_windows``)."""
    value = _plain(value)
    if value is None:
        return []
    if not isinstance(value, list) or not value:
        return [f"windows: expected null or a list of windows, e.g. [cardiac_cta, mediastinal, lung], got {value!r}"]
    errors = []
    for i, entry in enumerate(value):
        if isinstance(entry, dict) and {"level", "width"} <= set(entry) and _number(entry["level"]):
            if not _positive_number(entry["width"]):
                errors.append(f"windows[{i}].width: must be > 0 HU, got {entry['width']!r}")
        elif not isinstance(entry, str):
            errors.append(f"windows[{i}]: expected a window preset name or {{level, width}} in HU, got {entry!r}")
    return errors


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def validate_prepare_config(cfg: DictConfig) -> DictConfig:
    """Typed ``segexp-prepare`` config; every problem is reported with its full key."""
    typed, errors = typed_config(cfg, PrepareConfig)
    errors += _check_volume_classes(typed.volumes.classes, typed.mask_format) + check_tracking(typed.tracking)
    w = typed.window
    if w.width <= 0:
        errors.append(f"window.width: must be > 0 HU, got {w.width}")
    if not 0.0 <= w.low_percentile < w.high_percentile <= 100.0:
        errors.append(
            "window.low_percentile/high_percentile: need 0 <= low < high <= 100, "
            f"got {w.low_percentile}, {w.high_percentile}"
        )
    if typed.size is not None and (len(typed.size) != 2 or min(typed.size) < 1):
        errors.append(f"size: expected null or [height, width] in pixels, got {list(typed.size)}")
    errors += check_spacing(typed.spacing) + check_canvas(typed.canvas, typed.spacing)
    errors += _check_windows(typed.windows)
    if not in_unit_interval(typed.empty_fraction):
        errors.append(f"empty_fraction: must lie in [0, 1], got {typed.empty_fraction}")
    if typed.workers < 0:
        errors.append(f"workers: must be >= 0, got {typed.workers}")
    if typed.context_slices < 0:
        errors.append(f"context_slices: neighbours per side, must be >= 0, got {typed.context_slices}")
    for split, ratio in typed.split.ratios.items():
        if split not in values(Split):
            errors.append(f"split.ratios.{split}: unknown split; expected {list(values(Split))}")
        elif not in_unit_interval(ratio):
            errors.append(f"split.ratios.{split}: must lie in [0, 1], got {ratio}")
    raise_config_problems(errors)
    return typed


# --------------------------------------------------------------------------- segexp-check


@dataclass
class CheckConfig:
    task_name: str = MISSING
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    volumes: Optional[VolumesConfig] = MISSING
    image_channels: int = MISSING
    image_size: Optional[list[int]] = MISSING
    axis: SliceAxis = MISSING
    report_file: str = MISSING
    max_lines: int = MISSING
    paths: PathsConfig = field(default_factory=PathsConfig)


def validate_check_config(cfg: DictConfig) -> DictConfig:
    """Typed ``segexp-check`` config: the dataset (or volumes) keys and the check's own keys."""
    typed, errors = typed_config(cfg, CheckConfig)
    if typed.volumes is not None:
        errors += _check_volume_classes(typed.volumes.classes, "index")
    elif typed.dataset.class_names is None:
        errors += check_dataset_keys(typed.dataset)  # segexp-check resolves the class table from the data itself
    else:
        errors += check_dataset(typed.dataset, len(typed.dataset.class_names))
    if typed.image_channels < 1:
        errors.append(
            f"image_channels: must be >= 1 (1 grey, 3 RGB, or the windows segexp-prepare stacked), "
            f"got {typed.image_channels}"
        )
    if typed.image_size is not None and (len(typed.image_size) != 2 or min(typed.image_size) < 1):
        errors.append(f"image_size: expected null or [height, width] in pixels, got {list(typed.image_size)}")
    if typed.max_lines < 1:
        errors.append(f"max_lines: must be >= 1, got {typed.max_lines}")
    raise_config_problems(errors)
    return typed


# --------------------------------------------------------------------------- segexp-evaluate, segexp-infer


@dataclass
class PredictionConfig:
    """Keys segexp-evaluate and segexp-infer share."""

    task_name: str = MISSING
    run: str = MISSING
    tracking_uri: Optional[str] = MISSING
    batch_size: int = MISSING
    flip_tta: bool = MISSING
    postprocess: PostprocessMode = MISSING
    precision: Precision = MISSING
    paths: PathsConfig = field(default_factory=PathsConfig)


@dataclass
class EvaluateConfig(PredictionConfig):
    split: Split = MISSING
    dataset_root: Optional[str] = MISSING
    log_to_run: bool = MISSING
    nsd_tolerance_mm: Any = MISSING  # null: the run's training.nsd_tolerance_mm; else as that key


@dataclass
class InferConfig(PredictionConfig):
    input: str = MISSING
    output_dir: Optional[str] = MISSING
    large_images: LargeImages = MISSING
    overlap: float = MISSING
    window: Optional[WindowConfig] = MISSING
    # Also write the probabilities (before postprocessing), for ensembling across configurations later:
    # probabilities/<stem>.npz per image (float16 (H, W, K)), <name>_probabilities.nii.gz per volume (4D, uint8
    # with scl_slope 1/255: segexp.evaluation.prediction.probability_image says why).
    save_probabilities: bool = MISSING
    # Predicted volumes: auto = the input's format (NIfTI, MHA, NRRD; a DICOM series: NIfTI) | nifti | mha | nrrd |
    # dicom_seg (a DICOM series as DICOM-SEG, highdicom: segexp[dicom-seg]; other volumes as auto).
    output_format: VolumeOutputFormat = MISSING


def _check_prediction_keys(typed: Any) -> list[str]:
    """The rules of :class:`PredictionConfig`'s keys (its options are checked by their sets)."""
    return [f"batch_size: must be >= 1, got {typed.batch_size}"] if typed.batch_size < 1 else []


def validate_evaluate_config(cfg: DictConfig) -> DictConfig:
    """Typed ``segexp-evaluate`` config; every problem is reported with its key, before the model is loaded."""
    typed, problems = typed_config(cfg, EvaluateConfig)
    errors = problems + _check_prediction_keys(typed)
    if typed.nsd_tolerance_mm is not None:
        errors += check_nsd_tolerance(typed.nsd_tolerance_mm, "nsd_tolerance_mm")
    raise_config_problems(errors)
    return typed


def validate_infer_config(cfg: DictConfig) -> DictConfig:
    """Typed ``segexp-infer`` config; every problem is reported with its key, before the model is loaded."""
    if "window" not in cfg:  # the defaults list's `window: null` leaves the key out
        cfg = cfg.copy()
        with open_dict(cfg):
            cfg.window = None
    typed, problems = typed_config(cfg, InferConfig)
    errors = problems + _check_prediction_keys(typed)
    if typed.window is not None and typed.window.mode == "ct_zscore":
        errors.append(
            "window: ct_zscore needs the training foreground's statistics, which only the run's dataset.json holds; "
            "leave window unset (the training's mapping is read from there)"
        )
    if not 0.0 <= typed.overlap < 1.0:
        errors.append(f"overlap: must lie in [0, 1), got {typed.overlap}")
    raise_config_problems(errors)
    return typed
