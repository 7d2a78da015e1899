"""Volume intensities (CT in Hounsfield units, or MR) to the stored slice pixels, and those to model inputs.

A volume is mapped with ONE mapping for all of its slices, so a stored value means the
same intensity on every slice of a case (per-slice normalisation would make the same
tissue look different from slice to slice). Every mapping is linear between a ``low``
and a ``high`` intensity per channel, clipped, to ``levels`` stored steps
(:func:`linear_map`): 255 (``uint8``) for the display windows, 65535 (``uint16``) for the
z-scores, whose decimals 8 bits would lose. :class:`InputEncoding` says how the model's
input layer turns the stored value back into the value it computes on:
``value = stored * scale + offset``.

* :func:`window_to_uint8` — linear window ``(level, width)`` in HU:
  ``round(clip((hu - (level - width / 2)) / width, 0, 1) * 255)``.
* :func:`percentile_window` — a ``(level, width)`` from the volume's own
  intensity percentiles, computed once per volume, so
  ``window_to_uint8(vol, *percentile_window(vol, 0.5, 99.5))`` is per-volume
  percentile clipping (as in nnU-Net-style CT normalisation, there over the
  foreground of the training set).
* :data:`WINDOW_PRESETS` — fixed clinical windows by name.
* :func:`normalise_volume` — the one mapping of segexp-prepare and segexp-infer, from the
  ``window`` entry of ``dataset.json``: ``fixed`` and ``percentile`` (uint8, as above),
  ``stack`` (several fixed windows as channels, uint8), ``ct_zscore`` (nnU-Net's CT
  normalisation: clip to the training foreground's 0.5..99.5 percentiles, z-score with its
  mean and std; uint16) and ``zscore`` (per image, nnU-Net's default for MR; uint16).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal

import numpy as np

WINDOW_PRESETS: Mapping[str, tuple[float, float]] = MappingProxyType(
    {
        # Contrast-enhanced cardiac / coronary CT angiography: W 800, L 300 shows
        # -100..700 HU, i.e. epicardial fat (about -100) at black, myocardium
        # (about 100-150) dark grey and iodinated blood (about 300-500) bright
        # without saturating, so lumen, wall and fat stay distinguishable; only
        # calcium and metal clip to white. Conventional CT angiography display
        # windows lie around W 600-900 / L 200-300 and are widened for dense
        # calcium or stents; this is the usual "angio" preset of CT workstations.
        "cardiac_cta": (300.0, 800.0),
        # Wide mediastinal (soft-tissue) window, W 500 / L 50 -> -200..300 HU.
        # The standard mediastinal window is about W 350-400 / L 40-50
        # (e.g. Radiopaedia "CT windowing": mediastinum W 350 L 50; Bae et al.,
        # Radiology 2005;236:677, standard mediastinal W 400 C 30); widening it to
        # 500 keeps more fat/soft-tissue contrast and delays saturation of
        # enhanced vessels.
        "mediastinal": (50.0, 500.0),
        # Standard soft-tissue / mediastinum window (W 350 / L 50).
        "soft_tissue": (50.0, 350.0),
        # Lung window (W 1500 / L -600).
        "lung": (-600.0, 1500.0),
        # Bone window (W 2000 / L 500).
        "bone": (500.0, 2000.0),
    }
)
"""Named CT windows, ``name -> (level, width)`` in HU."""


def window_to_uint8(hu: np.ndarray, level: float, width: float) -> np.ndarray:
    """Hounsfield windowing to 8 bit.

    ``out = round(clip((hu - (level - width / 2)) / width, 0, 1) * 255)`` as uint8:
    ``level - width/2`` HU and below map to 0, ``level + width/2`` HU and above to
    255 (rounding half to even, ``np.rint``). ``width`` must be > 0 HU.
    """
    return linear_map(hu, level, width, UINT8_LEVELS)


def linear_map(hu: np.ndarray, level: float, width: float, levels: int) -> np.ndarray:
    """A window ``(level, width)`` to ``levels`` steps:
    ``round(clip((hu - (level - width/2)) / width, 0, 1) * levels)``, as uint8 for ``levels`` <= 255, else
    uint16 (:data:`UINT16_LEVELS`). ``width`` must be > 0 (input units)."""
    if not width > 0:
        raise ValueError(f"window.width must be > 0 HU, got {width}")
    dtype = np.dtype(np.uint8 if levels <= UINT8_LEVELS else np.uint16)
    hu = np.asarray(hu)
    if hu.dtype in _LUT_DTYPES and hu.size > _LUT_DTYPES[hu.dtype][1] - _LUT_DTYPES[hu.dtype][0]:
        # Integer CT (int16 HU as stored): one table lookup per voxel instead of six float64
        # passes (12x faster on a 512x512x128 volume); the table is this same formula.
        lo, hi = _LUT_DTYPES[hu.dtype]
        table = _window_float(np.arange(lo, hi + 1), level, width, levels, dtype)
        # Walk memory in its own order (NIfTI arrays are Fortran-ordered, reoriented ones have
        # flipped strides): a C-order walk of such a view is ~5x slower.
        order: Literal["F", "C"] = "F" if hu.ndim > 1 and abs(hu.strides[0]) < abs(hu.strides[-1]) else "C"
        flat = np.asarray(hu, order=order).reshape(-1, order=order)
        if lo:  # signed: the unsigned view with the sign bit flipped is value - lo, without a wider copy
            unsigned = np.dtype(f"u{hu.dtype.itemsize}")
            flat = flat.view(unsigned) ^ unsigned.type(-lo)
        return table[flat].reshape(hu.shape, order=order)
    return _window_float(hu, level, width, levels, dtype)


#: Stored steps of an 8-bit and of a 16-bit slice.
UINT8_LEVELS = 255
UINT16_LEVELS = 65535

#: Integer dtypes windowed through a lookup table: dtype -> (min, max) value.
_LUT_DTYPES = {
    np.dtype(t): (int(np.iinfo(t).min), int(np.iinfo(t).max)) for t in (np.int8, np.uint8, np.int16, np.uint16)
}


def _window_float(hu: np.ndarray, level: float, width: float, levels: int, dtype: np.dtype) -> np.ndarray:
    low = float(level) - float(width) / 2.0
    scaled = np.clip((np.asarray(hu, dtype=np.float64) - low) / float(width), 0.0, 1.0) * float(levels)
    return np.rint(scaled).astype(dtype)


def percentile_window(volume: np.ndarray, low_pct: float, high_pct: float) -> tuple[float, float]:
    """``(level, width)`` spanning the ``low_pct`` .. ``high_pct`` percentiles of ``volume``.

    ``lo, hi = percentile(volume, [low_pct, high_pct])`` (numpy's default linear
    interpolation, over all voxels); ``level = (lo + hi) / 2``,
    ``width = hi - lo``. A constant volume (``hi == lo``) gets ``width = 1`` around
    its value, so it maps to mid grey (128) instead of dividing by zero.
    Requires ``0 <= low_pct < high_pct <= 100`` and finite voxel values.
    """
    low_pct, high_pct = float(low_pct), float(high_pct)
    if not (0.0 <= low_pct < high_pct <= 100.0):
        raise ValueError(f"percentile window needs 0 <= low < high <= 100, got low={low_pct}, high={high_pct}")
    arr = np.asarray(volume)
    if arr.size == 0:
        raise ValueError("percentile window of an empty volume")
    lo, hi = (float(v) for v in np.percentile(arr, [low_pct, high_pct]))
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError(f"percentile window: volume has non-finite values (got {lo}, {hi})")
    width = hi - lo
    if width <= 0.0:
        width = 1.0
    return (lo + hi) / 2.0, width


def preset_window(name: str) -> tuple[float, float]:
    """``(level, width)`` of the preset ``name``; ValueError listing the presets."""
    try:
        return WINDOW_PRESETS[name]
    except KeyError as err:
        raise ValueError(f"unknown window preset {name!r}; choose one of {sorted(WINDOW_PRESETS)}") from err


def window_volume(
    volume: np.ndarray,
    mode: str = "fixed",
    level: float | None = None,
    width: float | None = None,
    low_percentile: float = 0.5,
    high_percentile: float = 99.5,
) -> tuple[np.ndarray, tuple[float, float]]:
    """A volume's intensities to uint8 the way training saw them: ``(image, (level, width))``.

    ``mode="fixed"``: the window ``level``/``width`` (e.g. a CT preset, in HU);
    ``mode="percentile"``: per volume, from its ``low_percentile``..``high_percentile``
    intensities (MR). The one windowing step of segexp-prepare and segexp-infer.
    """
    if mode == "percentile":
        level, width = percentile_window(volume, low_percentile, high_percentile)
    elif level is None or width is None:
        raise ValueError(f"window mode {mode!r} needs a level and a width, got level={level}, width={width}")
    return window_to_uint8(volume, level, width), (float(level), float(width))


# --------------------------------------------------------------------------- stored slices -> model inputs

#: The z-scores a 16-bit ``zscore`` slice can hold: stored 0 is z = -8, stored 65535 is z = 24 (a step of
#: 32 / 65535 = 0.0005 std). A non-negative image (MR) whose mean is under 8 of its std reaches no lower z;
#: the rare voxels brighter than 24 std clip (nnU-Net's z-score has no bound, a 16-bit file needs one).
ZSCORE_RANGE = (-8.0, 24.0)
#: The smallest std a z-score divides by (a constant image), as nnU-Net's ``max(std, 1e-8)``.
MIN_STD = 1e-8
#: The modes of :func:`normalise_volume` and the stored dtype each writes.
STORED_DTYPES: Mapping[str, str] = MappingProxyType(
    {"fixed": "uint8", "percentile": "uint8", "stack": "uint8", "ct_zscore": "uint16", "zscore": "uint16"}
)


@dataclass(frozen=True)
class InputEncoding:
    """How a network's input layer reads stored slices of ``dtype``: ``value = stored * scale + offset``.

    8-bit windows: ``scale = 1/255``, ``offset = 0`` (values 0..1, segexp's input from the start); a 16-bit
    z-score: the affine of its storage map (:func:`normalise_volume`), so ``value`` is the z-score itself.
    """

    dtype: str = "uint8"
    scale: float = 1.0 / UINT8_LEVELS
    offset: float = 0.0

    def decode(self, stored: np.ndarray) -> np.ndarray:
        """``stored * scale + offset`` as float32 (what the model's ``rescale`` layer computes)."""
        return (np.asarray(stored, np.float64) * self.scale + self.offset).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        return {"dtype": self.dtype, "scale": self.scale, "offset": self.offset}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> InputEncoding:
        dtype = str(d.get("dtype", "uint8"))
        if dtype not in ("uint8", "uint16"):
            raise ValueError(f"stored slices must be uint8 or uint16, got dtype {dtype!r}")
        return cls(dtype, float(d.get("scale", 1.0 / UINT8_LEVELS)), float(d.get("offset", 0.0)))


#: The encoding of 8-bit slices (every dataset without a ``storage`` entry in its ``dataset.json``).
UINT8_ENCODING = InputEncoding()


@dataclass(frozen=True)
class Normalised:
    """A volume as stored: ``stored`` ``(x, y, z)`` or, several channels, ``(x, y, z, C)`` (uint8 or uint16),
    its ``encoding``, and the intensity window ``(level, width)`` applied to make each channel."""

    stored: np.ndarray
    encoding: InputEncoding
    windows: list[tuple[float, float]]


def mean_std(volume: np.ndarray) -> tuple[float, float]:
    """Mean and (population) std of all voxels, float64 sums slice by slice along the last axis (no full
    float64 copy): ``mean = sum(x) / n``, ``std = sqrt(max(sum(x^2) / n - mean^2, 0))``."""
    arr = np.asarray(volume)
    if arr.size == 0:
        raise ValueError("z-score of an empty volume")
    total = total_sq = 0.0
    for k in range(arr.shape[-1]):
        part = arr[..., k].astype(np.float64)
        total += float(part.sum())
        total_sq += float(np.vdot(part, part))
    mean = total / arr.size
    return mean, max(total_sq / arr.size - mean * mean, 0.0) ** 0.5


def zscore_encoding(low: float, width: float, mean: float, std: float) -> InputEncoding:
    """The 16-bit encoding of the window ``[low, low + width]`` as z-scores ``(x - mean) / std``:
    ``x = low + stored / 65535 * width``, so ``z = stored * width / (65535 std) + (low - mean) / std``."""
    return InputEncoding("uint16", width / (UINT16_LEVELS * std), (low - mean) / std)


def _ct_statistics(window: Mapping[str, Any]) -> tuple[float, float, float, float]:
    """``(low, width, mean, std)`` of a ``ct_zscore`` window from its ``foreground`` statistics (HU)."""
    fg = window.get("foreground")
    if not isinstance(fg, Mapping) or any(fg.get(k) is None for k in ("mean", "std", "low", "high")):
        raise ValueError(
            "window mode ct_zscore needs the training foreground's statistics (window.foreground: mean, std, "
            "low, high in dataset.json), which segexp-prepare computes; a volume cannot be normalised without them"
        )
    low, high = float(fg["low"]), float(fg["high"])
    return low, (high - low if high > low else 1.0), float(fg["mean"]), max(float(fg["std"]), MIN_STD)


def _mode(window: Mapping[str, Any]) -> str:
    mode = str(window.get("mode", "fixed"))
    if mode not in STORED_DTYPES:
        raise ValueError(f"unknown window mode {mode!r}; expected one of {sorted(STORED_DTYPES)}")
    return mode


def window_encoding(window: Mapping[str, Any]) -> InputEncoding:
    """The :class:`InputEncoding` of the slices :func:`normalise_volume` makes with ``window`` (the same for every
    case): 8-bit modes ``value = stored / 255``; ``ct_zscore`` :func:`zscore_encoding` of the foreground
    statistics; ``zscore`` ``value = stored * 32 / 65535 - 8`` (:data:`ZSCORE_RANGE`)."""
    mode = _mode(window)
    if STORED_DTYPES[mode] == "uint8":
        return UINT8_ENCODING
    if mode == "zscore":
        z_low, z_high = ZSCORE_RANGE
        return InputEncoding("uint16", (z_high - z_low) / UINT16_LEVELS, z_low)
    return zscore_encoding(*_ct_statistics(window))


def normalise_volume(volume: np.ndarray, window: Mapping[str, Any]) -> Normalised:
    """The one intensity mapping of segexp-prepare and segexp-infer, by ``window["mode"]``:

    * ``fixed`` / ``percentile``: :func:`window_volume` to uint8 (``value = stored / 255``);
    * ``stack``: each of ``window["windows"]`` (``{level, width}`` in HU) by :func:`window_to_uint8`, one
      channel each, ``(x, y, z, C)`` uint8;
    * ``ct_zscore``: nnU-Net's CT normalisation with the training foreground's statistics
      ``window["foreground"]`` (``mean``, ``std``, ``low`` = its 0.5th and ``high`` = its 99.5th percentile,
      HU): ``z = (clip(x, low, high) - mean) / max(std, 1e-8)``, stored as
      ``round((clip(x, low, high) - low) / (high - low) * 65535)`` uint16 (:func:`zscore_encoding`);
    * ``zscore``: per image, ``z = (x - mean) / max(std, 1e-8)`` over all its voxels (nnU-Net's MR default),
      stored over :data:`ZSCORE_RANGE` as uint16: the window ``[mean - 8 std, mean + 24 std]`` to 0..65535.

    The encoding is :func:`window_encoding`'s.
    """
    mode = _mode(window)
    if mode in ("fixed", "percentile"):
        keys = ("level", "width", "low_percentile", "high_percentile")
        stored, applied = window_volume(volume, mode, **{k: window[k] for k in keys if window.get(k) is not None})
        return Normalised(stored, UINT8_ENCODING, [applied])
    if mode == "stack":
        windows = [(float(w["level"]), float(w["width"])) for w in window["windows"]]
        stored = np.stack([window_to_uint8(volume, level, width) for level, width in windows], axis=-1)
        return Normalised(stored, UINT8_ENCODING, windows)
    if mode == "ct_zscore":
        low, width, _, _ = _ct_statistics(window)
    else:  # zscore
        mean, std = mean_std(volume)
        std = max(std, MIN_STD)
        z_low, z_high = ZSCORE_RANGE
        low, width = mean + z_low * std, (z_high - z_low) * std
    level = low + width / 2.0
    return Normalised(linear_map(volume, level, width, UINT16_LEVELS), window_encoding(window), [(level, width)])


def stacked_windows(entries: Sequence[Any]) -> list[dict[str, Any]]:
    """``windows`` entries (a preset name of :data:`WINDOW_PRESETS`, or ``{level, width}`` in HU, optionally
    ``name``) as ``{name, level, width}``; ValueError naming ``windows[i]``."""
    out = []
    for i, entry in enumerate(entries):
        if isinstance(entry, str):
            try:
                level, width = preset_window(entry)
            except ValueError as err:
                raise ValueError(f"windows[{i}]: {err}") from err
            out.append({"name": entry, "level": level, "width": width})
        elif isinstance(entry, Mapping) and {"level", "width"} <= set(entry):
            level, width = float(entry["level"]), float(entry["width"])
            if not width > 0:
                raise ValueError(f"windows[{i}].width: must be > 0 HU, got {width}")
            out.append({"name": str(entry.get("name", f"L{level:g}W{width:g}")), "level": level, "width": width})
        else:
            raise ValueError(
                f"windows[{i}]: expected a preset name ({', '.join(sorted(WINDOW_PRESETS))}) or {{level, width}} "
                f"in HU, got {entry!r}"
            )
    return out
