"""Every option set of segexp's configs, once: a ``StrEnum`` per set, its members named as their values.

A member compares equal to its string (``Precision.bf16 == "bf16"``), so configs keep plain strings and
code may compare either. Checks use :func:`expected`, which words the error the same way everywhere:
``<full key>: expected one of [...], got '<value>'``. Members are named by their values so that OmegaConf,
which matches an Enum field by member name, would accept the same strings as these checks.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class Split(StrEnum):
    """Dataset splits, in this order everywhere."""

    train = "train"
    valid = "valid"
    test = "test"


class Loss(StrEnum):
    """``training.loss`` (``segexp.models.losses``)."""

    categorical_crossentropy = "categorical_crossentropy"
    dice = "dice"
    dice_ce = "dice_ce"
    bce_dice = "bce_dice"


class MaskFormat(StrEnum):
    """``dataset.mask_format``: colour masks, class-index masks, or 0/255 binary masks."""

    rgb = "rgb"
    index = "index"
    binary = "binary"


class PreparedMaskFormat(StrEnum):
    """``mask_format`` of ``segexp-prepare``: what it writes."""

    rgb = "rgb"
    index = "index"


class Layout(StrEnum):
    """``dataset.layout``: split folders, or one flat folder with case lists."""

    splits = "splits"
    flat = "flat"


class OnBadFile(StrEnum):
    """``dataset.on_bad_file``: stop at a bad file, or skip it."""

    error = "error"
    skip = "skip"


class Precision(StrEnum):
    """``training.precision`` and the ``precision`` of evaluate/infer (``segexp.models.precision``)."""

    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


class PostprocessMode(StrEnum):
    """``training.postprocess`` and the ``postprocess`` of evaluate/infer (``segexp.evaluation.postprocess``)."""

    auto = "auto"  # training: choose on validation; evaluate/infer: the run's chosen rules, if any
    none = "none"  # raw argmax labels


class Norm(StrEnum):
    """``model.norm``: the normalisation after each hidden convolution."""

    batch = "batch"
    instance = "instance"
    group = "group"
    none = "none"


class LargeImages(StrEnum):
    """``large_images`` of ``segexp-infer``: resize as in training, or tile at native size."""

    resize = "resize"
    tile = "tile"


class SliceAxis(StrEnum):
    """``axis`` of ``segexp-prepare``: the slicing plane."""

    sagittal = "sagittal"
    coronal = "coronal"
    axial = "axial"


class WindowMode(StrEnum):
    """``window.mode``: a fixed level/width, or per-volume percentiles."""

    fixed = "fixed"
    percentile = "percentile"


class Metric(StrEnum):
    """Per-structure scores (``segexp.evaluation.scoring``), in report order."""

    dice = "dice"
    iou = "iou"
    hd95 = "hd95"
    precision = "precision"
    recall = "recall"


def values(options: type[StrEnum]) -> tuple[str, ...]:
    """The option strings of ``options``, in declaration order."""
    return tuple(str(m) for m in options)


def expected(key: str, value: Any, options: type[StrEnum]) -> str | None:
    """None when ``value`` is one of ``options``; else the error naming ``key``, the choices and ``value``."""
    if isinstance(value, str) and value in values(options):
        return None
    return f"{key}: expected one of {list(values(options))}, got {value!r}"
