"""Every option set of segexp's configs, once: a ``StrEnum`` per set (derived from :class:`Option`).

The config schemas (:mod:`segexp.config.schema`, a network's ``ModelParams``) type their option fields with
these sets, so OmegaConf itself turns ``"bf16"`` into ``Precision.bf16`` and refuses any other value. A member
compares equal to its string (``Precision.bf16 == "bf16"``), so code may compare either; ``str(member)`` and
``repr(member)`` are those of the plain string. What writes a config out takes plain strings
(``OmegaConf.to_container(..., enum_to_str=True)``, :func:`segexp.config.schema.to_dict`): ``yaml.safe_dump``
refuses a member.

Every member's name is its value (``bf16 = "bf16"``), because OmegaConf converts a string to an enum member
*by name* (``Precision["bf16"]``) and ``OmegaConf.to_yaml`` writes the member's name: with name == value a
config reads and dumps the strings a user writes. Every value is therefore a Python identifier. One name
shadows a ``str`` method: ``MaskFormat.index`` (and ``PreparedMaskFormat.index``) hides ``str.index`` on these
members; call ``str.index(member, ...)`` if ever needed.

Checks use :func:`expected`, which words the error the same way everywhere:
``<full key>: expected one of [...], got '<value>'``. The schema reports every bad option of a config this way
before OmegaConf sees it (OmegaConf stops at the first, without the allowed values).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class Option(StrEnum):
    """Base of the option sets: its ``repr`` is its string's (``'bf16'``), so a message that quotes a value
    (``got {value!r}``) reads the same for a member and for the plain string a user wrote."""

    def __repr__(self) -> str:
        return repr(self.value)


class Split(Option):
    """Dataset splits, in this order everywhere."""

    train = "train"
    valid = "valid"
    test = "test"


class MaskFormat(Option):
    """``dataset.mask_format``: colour masks, class-index masks, or 0/255 binary masks."""

    rgb = "rgb"
    index = "index"  # type: ignore[assignment]  # shadows str.index on these members (module docstring)
    binary = "binary"


class PreparedMaskFormat(Option):
    """``mask_format`` of ``segexp-prepare``: what it writes."""

    rgb = "rgb"
    index = "index"  # type: ignore[assignment]  # shadows str.index on these members (module docstring)


class Layout(Option):
    """``dataset.layout``: split folders, one flat folder split by patient, or read from the folder."""

    auto = "auto"
    splits = "splits"
    flat = "flat"


class OnBadFile(Option):
    """``dataset.on_bad_file``: stop at a bad file, or skip it."""

    error = "error"
    skip = "skip"


class Precision(Option):
    """``training.precision`` and the ``precision`` of evaluate/infer (``segexp.models.precision``)."""

    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


class PostprocessMode(Option):
    """``training.postprocess`` and the ``postprocess`` of evaluate/infer (``segexp.evaluation.postprocess``)."""

    auto = "auto"  # training: choose on validation; evaluate/infer: the run's chosen rules, if any
    none = "none"  # raw argmax labels


class PostprocessRule(Option):
    """What is done to a class's predictions in a case (``postprocessing.json``, ``segexp.evaluation.postprocess``)."""

    none = "none"
    min_volume = "min_volume"
    min_size = "min_size"
    largest = "largest"


class Norm(Option):
    """``model.norm``: the normalisation after each hidden convolution."""

    batch = "batch"
    instance = "instance"
    group = "group"
    none = "none"


class LargeImages(Option):
    """``large_images`` of ``segexp-infer``: resize as in training, or tile at native size."""

    resize = "resize"
    tile = "tile"


class VolumeOutputFormat(Option):
    """``output_format`` of ``segexp-infer``: the format of predicted volumes (``segexp.data.io.volume_files``)."""

    auto = "auto"  # the input's format; a DICOM series: nifti
    nifti = "nifti"
    mha = "mha"
    nrrd = "nrrd"
    dicom_seg = "dicom_seg"  # a DICOM series as DICOM-SEG (extra segexp[dicom-seg]); other volumes: auto


class SliceAxis(Option):
    """``axis`` of ``segexp-prepare``: the slicing plane."""

    sagittal = "sagittal"
    coronal = "coronal"
    axial = "axial"


class WindowMode(Option):
    """``window.mode``: a fixed level/width or per-volume percentiles (8-bit slices); nnU-Net's CT normalisation
    with the training foreground's statistics, or a per-image z-score (16-bit slices;
    ``segexp.data.io.intensity.normalise_volume``)."""

    fixed = "fixed"
    percentile = "percentile"
    ct_zscore = "ct_zscore"
    zscore = "zscore"


class Metric(Option):
    """Per-structure scores (``segexp.evaluation.scoring``), in report order."""

    dice = "dice"
    iou = "iou"
    hd95 = "hd95"
    precision = "precision"
    recall = "recall"
    nsd = "nsd"
    assd = "assd"


def values(options: type[StrEnum]) -> tuple[str, ...]:
    """The option strings of ``options``, in declaration order."""
    return tuple(str(m) for m in options)


def expected(key: str, value: Any, options: type[StrEnum]) -> str | None:
    """None when ``value`` is one of ``options``; else the error naming ``key``, the choices and ``value``."""
    if isinstance(value, str) and value in values(options):
        return None
    return f"{key}: expected one of {list(values(options))}, got {value!r}"
