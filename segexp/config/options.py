"""Every option set of segexp's configs, once: a ``StrEnum`` per set.

A member compares equal to its string (``Precision.BF16 == "bf16"``), so configs keep plain strings and
code may compare either. Checks use :func:`expected`, which words the error the same way everywhere:
``<full key>: expected one of [...], got '<value>'``.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class Split(StrEnum):
    """Dataset splits, in this order everywhere."""

    TRAIN = "train"
    VALID = "valid"
    TEST = "test"


class Loss(StrEnum):
    """``training.loss`` (``segexp.models.losses``)."""

    CATEGORICAL_CROSSENTROPY = "categorical_crossentropy"
    DICE = "dice"
    DICE_CE = "dice_ce"
    BCE_DICE = "bce_dice"


class MaskFormat(StrEnum):
    """``dataset.mask_format``: colour masks, class-index masks, or 0/255 binary masks."""

    RGB = "rgb"
    INDEX = "index"
    BINARY = "binary"


class PreparedMaskFormat(StrEnum):
    """``mask_format`` of ``segexp-prepare``: what it writes."""

    RGB = "rgb"
    INDEX = "index"


class Layout(StrEnum):
    """``dataset.layout``: split folders, one flat folder split by patient, or read from the folder."""

    AUTO = "auto"
    SPLITS = "splits"
    FLAT = "flat"


class OnBadFile(StrEnum):
    """``dataset.on_bad_file``: stop at a bad file, or skip it."""

    ERROR = "error"
    SKIP = "skip"


class Precision(StrEnum):
    """``training.precision`` and the ``precision`` of evaluate/infer (``segexp.models.precision``)."""

    AUTO = "auto"
    FP32 = "fp32"
    BF16 = "bf16"
    FP16 = "fp16"


class PostprocessMode(StrEnum):
    """``training.postprocess`` and the ``postprocess`` of evaluate/infer (``segexp.evaluation.postprocess``)."""

    AUTO = "auto"  # training: choose on validation; evaluate/infer: the run's chosen rules, if any
    NONE = "none"  # raw argmax labels


class PostprocessRule(StrEnum):
    """What is done to a class's predictions in a case (``postprocessing.json``, ``segexp.evaluation.postprocess``)."""

    NONE = "none"
    MIN_VOLUME = "min_volume"
    MIN_SIZE = "min_size"
    LARGEST = "largest"


class Norm(StrEnum):
    """``model.norm``: the normalisation after each hidden convolution."""

    BATCH = "batch"
    INSTANCE = "instance"
    GROUP = "group"
    NONE = "none"


class LargeImages(StrEnum):
    """``large_images`` of ``segexp-infer``: resize as in training, or tile at native size."""

    RESIZE = "resize"
    TILE = "tile"


class SliceAxis(StrEnum):
    """``axis`` of ``segexp-prepare``: the slicing plane."""

    SAGITTAL = "sagittal"
    CORONAL = "coronal"
    AXIAL = "axial"


class WindowMode(StrEnum):
    """``window.mode``: a fixed level/width, or per-volume percentiles."""

    FIXED = "fixed"
    PERCENTILE = "percentile"


class Metric(StrEnum):
    """Per-structure scores (``segexp.evaluation.scoring``), in report order."""

    DICE = "dice"
    IOU = "iou"
    HD95 = "hd95"
    PRECISION = "precision"
    RECALL = "recall"


def values(options: type[StrEnum]) -> tuple[str, ...]:
    """The option strings of ``options``, in declaration order."""
    return tuple(str(m) for m in options)


def expected(key: str, value: Any, options: type[StrEnum]) -> str | None:
    """None when ``value`` is one of ``options``; else the error naming ``key``, the choices and ``value``."""
    if isinstance(value, str) and value in values(options):
        return None
    return f"{key}: expected one of {list(values(options))}, got {value!r}"
