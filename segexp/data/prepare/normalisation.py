"""What segexp-prepare measures on the non-test cases before it writes a slice: the dataset-wide settings.

* :func:`foreground_statistics` — ``window=ct_zscore``: the intensities of the foreground voxels (class > 0)
  of the non-test cases, as nnU-Net's fingerprint: mean and std over all of them (exact, float64 sums),
  the ``low_percentile`` / ``high_percentile`` (0.5 / 99.5) from a seeded sample of at most
  :data:`FOREGROUND_SAMPLE` voxels in all (nnU-Net samples 10e7), split evenly over the cases.
* :func:`median_spacing` — ``spacing=auto``: the median in-plane ``(row, col)`` spacing, per axis.
* :func:`median_canvas` — ``canvas=auto``: the median slice shape at the target spacing, per axis.

The non-test cases (train and valid, every fold's training data) are nnU-Net's ``imagesTr``; the test
cases never enter a statistic. Headers suffice for the spacing and canvas; the statistics read each
volume once (in parallel worker processes).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from segexp.data.io.resample import resampled_shape
from segexp.data.io.volumes import (
    CaseHeader,
    VolumeCase,
    VolumeError,
    canonical_grid,
    load_case,
    slice_pixel_spacing,
    slice_shape,
)

#: Foreground voxels sampled for the percentiles, over all cases together (nnU-Net: 10e7).
FOREGROUND_SAMPLE = 10_000_000


@dataclass
class ForegroundPart:
    """One case's foreground intensities: count, float64 sum and sum of squares, and a sample (float32)."""

    case: str
    count: int
    total: float
    total_sq: float
    sample: np.ndarray


def foreground_part(case: VolumeCase, label_lut: Sequence[int], sample: int, seed: int) -> ForegroundPart:
    """The intensities of ``case``'s voxels of class > 0 (``label_lut``: label value -> class index); a sample of
    at most ``sample`` of them, drawn without replacement, seeded by ``(seed, case)``."""
    lut = np.asarray(label_lut, np.uint8)
    loaded = load_case(case, allowed_labels=[int(v) for v in np.flatnonzero(lut != 255)], image_dtype=None)
    assert loaded.label is not None  # prepare lists its cases with labels required
    values = loaded.image[lut[loaded.label] > 0]
    count = int(values.size)
    total = total_sq = 0.0
    for start in range(0, values.size, 1 << 22):  # float64 sums chunk by chunk
        chunk = values[start : start + (1 << 22)].astype(np.float64)
        total += float(chunk.sum())
        total_sq += float(np.dot(chunk, chunk))
    if values.size > sample:
        rng = np.random.default_rng([seed, zlib.crc32(case.case.encode())])
        values = values[np.sort(rng.choice(values.size, sample, replace=False))]
    return ForegroundPart(case.case, count, total, total_sq, values.astype(np.float32))


def foreground_statistics(
    cases: Sequence[VolumeCase],
    label_lut: Sequence[int],
    low_percentile: float,
    high_percentile: float,
    *,
    seed: int,
    workers: int,
) -> dict[str, Any]:
    """nnU-Net's CT intensity properties of the foreground of ``cases``: ``mean``, ``std`` (population, over
    all foreground voxels), ``low`` / ``high`` = the ``low_percentile`` / ``high_percentile`` of the sampled
    voxels (numpy's linear interpolation), in the image's units (HU); raises :class:`VolumeError` when a
    case fails or no case has foreground."""
    per_case = max(1, FOREGROUND_SAMPLE // max(1, len(cases)))
    parts: list[ForegroundPart] = []
    errors: list[str] = []
    if workers <= 1:
        for case in cases:
            try:
                parts.append(foreground_part(case, label_lut, per_case, seed))
            except VolumeError as err:
                errors.append(str(err))
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(foreground_part, c, tuple(label_lut), per_case, seed) for c in cases]
            for future in futures:
                try:
                    parts.append(future.result())
                except VolumeError as err:
                    errors.append(str(err))
    if errors:
        raise VolumeError("foreground statistics (window=ct_zscore):\n  " + "\n  ".join(sorted(errors)))
    count = sum(p.count for p in parts)
    if count == 0:
        raise VolumeError(
            "window=ct_zscore: the non-test cases have no foreground voxel (class > 0) to take the statistics from"
        )
    mean = sum(p.total for p in parts) / count
    std = max(sum(p.total_sq for p in parts) / count - mean * mean, 0.0) ** 0.5
    pooled = np.concatenate([p.sample for p in sorted(parts, key=lambda p: p.case)])
    low, high = (float(v) for v in np.percentile(pooled, [low_percentile, high_percentile]))
    return {
        "mean": mean,
        "std": std,
        "low": low,
        "high": high,
        "low_percentile": float(low_percentile),
        "high_percentile": float(high_percentile),
        "voxels": count,
        "sampled_voxels": int(pooled.size),
        "cases": sorted(p.case for p in parts),
    }


def in_plane(header: CaseHeader, axis: str) -> tuple[tuple[int, int], tuple[float, float]]:
    """``((rows, cols), (row, col) mm)`` of a case's slices along ``axis`` after reorientation, from its header."""
    shape, spacing = canonical_grid(header)
    return slice_shape(shape, axis), slice_pixel_spacing(spacing, axis)


def median_spacing(headers: Sequence[CaseHeader], axis: str) -> tuple[float, float]:
    """The median in-plane ``(row, col)`` spacing (mm) of ``headers``, per axis (nnU-Net's target spacing)."""
    spacings = np.asarray([in_plane(h, axis)[1] for h in headers], np.float64)
    row, col = np.median(spacings, axis=0)
    return float(row), float(col)


def median_canvas(headers: Sequence[CaseHeader], axis: str, target: Sequence[float]) -> tuple[int, int]:
    """The median ``(rows, cols)`` of ``headers``' slices resampled to ``target`` mm, per axis, rounded."""
    shapes = np.asarray([resampled_shape(*in_plane(h, axis), target) for h in headers], np.float64)
    rows, cols = np.median(shapes, axis=0)
    return int(round(float(rows))), int(round(float(cols)))


def target_spacing(value: Any, headers: Sequence[CaseHeader], axis: str) -> tuple[float, float] | None:
    """``spacing`` as ``(row, col)`` mm: None (off), ``auto`` (:func:`median_spacing`), a number or a pair."""
    if value is None:
        return None
    if value == "auto":
        return median_spacing(headers, axis)
    if isinstance(value, (int, float)):
        return float(value), float(value)
    row, col = value
    return float(row), float(col)
