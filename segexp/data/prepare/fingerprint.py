"""The fingerprint of a dataset: counts per split, class pixels by name, intensity statistics, sizes.

Slice images are uint8 (or uint16), so their statistics come from an exact histogram of every stored
value (:class:`Uint8Stats`, percentiles: nearest rank). Volume intensities are in HU
(:class:`FloatStats`): mean, std, min and max are exact (float64 sums), percentiles come
from a seeded random sample per volume. A :class:`Fingerprint` is plain data.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

PERCENTILES = (0.5, 1.0, 5.0, 25.0, 50.0, 75.0, 95.0, 99.0, 99.5)
"""Intensity percentiles reported in the fingerprint (in %)."""
_CHUNK = 1 << 22


@dataclass
class IntensityStats:
    """Image intensities: ``unit`` ``uint8`` (slices) or ``HU`` (volumes); ``percentiles`` keyed ``p<q>``."""

    unit: str
    count: int = 0
    mean: float | None = None
    std: float | None = None
    min: float | None = None
    max: float | None = None
    percentiles: dict[str, float] = field(default_factory=dict)
    percentiles_from: str = ""


@dataclass
class Fingerprint:
    """What the data looks like: counts per split, class pixels by name, intensities, sizes.

    ``class_frequency[c] = class_pixels[c] / sum(class_pixels)`` over the masks read;
    ``classes_absent[split]`` lists the classes with no pixel in that split's masks read.
    ``files_read`` of ``files_total`` pairs (or cases) entered the pixel statistics.
    """

    kind: str
    name: str
    root: str
    splits: dict[str, dict[str, int]]
    class_names: list[str]
    class_pixels: dict[str, int]
    class_frequency: dict[str, float]
    classes_absent: dict[str, list[str]]
    intensity: IntensityStats
    image_sizes: dict[str, int]
    files_read: int
    files_total: int
    sampling: str
    cases: dict[str, dict[str, Any]] = field(default_factory=dict)

    def params(self) -> dict[str, str]:
        """A few flat MLflow params: ``dataset.num_slices.<split>``, ``dataset.num_cases.<split>``."""
        out = {}
        for split, counts in self.splits.items():
            out[f"dataset.num_slices.{split}"] = str(counts["slices"])
            out[f"dataset.num_cases.{split}"] = str(counts["cases"])
        if self.intensity.mean is not None:
            out["dataset.intensity_mean"] = f"{self.intensity.mean:.4g}"
            out["dataset.intensity_std"] = f"{self.intensity.std:.4g}"
        return out


class Uint8Stats:
    """Exact statistics of stored pixels through a histogram of every value: 256 bins for uint8 slices
    (``bits`` 8), 65536 for 16-bit ones (``bits`` 16; the stored values, not what the model decodes)."""

    def __init__(self, bits: int = 8) -> None:
        self.unit = f"uint{bits}"
        self.hist = np.zeros(1 << bits, np.int64)

    def add(self, image: np.ndarray) -> None:
        self.hist += np.bincount(image.ravel(), minlength=self.hist.size)[: self.hist.size]

    def result(self) -> IntensityStats:
        n = int(self.hist.sum())
        if n == 0:
            return IntensityStats(self.unit)
        values = np.arange(self.hist.size, dtype=np.float64)
        mean = float((self.hist * values).sum() / n)
        var = float((self.hist * (values - mean) ** 2).sum() / n)
        nonzero = np.flatnonzero(self.hist)
        cum = np.cumsum(self.hist)
        pct = {f"p{q:g}": float(np.searchsorted(cum, max(1, int(np.ceil(q / 100 * n))))) for q in PERCENTILES}
        return IntensityStats(
            self.unit,
            n,
            round(mean, 4),
            round(var**0.5, 4),
            float(nonzero[0]),
            float(nonzero[-1]),
            pct,
            "all pixels read (exact, nearest rank)",
        )


class FloatStats:
    """Exact mean/std/min/max of float voxels; percentiles from a seeded sample per volume."""

    def __init__(self, unit: str, sample: int, seed: int = 0) -> None:
        self.unit, self.sample, self.rng = unit, sample, np.random.default_rng(seed)
        self.n, self.total, self.total_sq = 0, 0.0, 0.0
        self.lo, self.hi = np.inf, -np.inf
        self.samples: list[np.ndarray] = []

    def add(self, data: np.ndarray) -> None:
        flat = data.ravel()
        if flat.size == 0:
            return
        self.n += flat.size
        for start in range(0, flat.size, _CHUNK):  # float64 sums chunk by chunk: no full-size temporary
            chunk = flat[start : start + _CHUNK].astype(np.float64)
            self.total += float(chunk.sum())
            self.total_sq += float(np.dot(chunk, chunk))
        self.lo, self.hi = min(self.lo, float(flat.min())), max(self.hi, float(flat.max()))
        take = flat if flat.size <= self.sample else flat[self.rng.choice(flat.size, self.sample, replace=False)]
        self.samples.append(np.asarray(take, np.float64))

    def result(self) -> IntensityStats:
        if self.n == 0:
            return IntensityStats(self.unit)
        mean = self.total / self.n
        std = max(self.total_sq / self.n - mean**2, 0.0) ** 0.5
        pooled = np.concatenate(self.samples)
        pct = {f"p{q:g}": round(float(np.percentile(pooled, q)), 4) for q in PERCENTILES}
        return IntensityStats(
            self.unit,
            self.n,
            round(mean, 4),
            round(std, 4),
            self.lo,
            self.hi,
            pct,
            f"a seeded sample of at most {self.sample} voxels per volume",
        )


def class_summary(
    class_names: Sequence[str], per_split: Mapping[str, np.ndarray]
) -> tuple[dict[str, int], dict[str, float], dict[str, list[str]]]:
    """Pixels and frequency per class name over all splits, and the classes absent per split (of those read)."""
    total = sum(per_split.values(), np.zeros(len(class_names), np.int64))
    pixels = {name: int(total[i]) for i, name in enumerate(class_names)}
    n = int(total.sum())
    frequency = {name: (round(int(total[i]) / n, 8) if n else 0.0) for i, name in enumerate(class_names)}
    absent = {
        split: [class_names[int(i)] for i in np.flatnonzero(counts == 0)]
        for split, counts in per_split.items()
        if counts.any()
    }  # splits with masks read
    return pixels, frequency, absent


def fingerprint_lines(f: Fingerprint) -> list[str]:
    """The fingerprint as a short table: splits, sizes, class frequencies, intensities."""
    lines = [
        f"fingerprint of {f.name} ({f.kind}, {f.root}); pixels from {f.files_read} of {f.files_total} "
        f"{'pairs' if f.kind == 'slices' else 'cases'} ({f.sampling}):"
    ]
    lines.append(f"  {'split':<8}{'cases':>7}{'slices':>10}")
    for split, c in f.splits.items():
        lines.append(f"  {split:<8}{c['cases']:>7}{c['slices']:>10}")
    if f.image_sizes:
        lines.append(
            "  sizes: " + ", ".join(f"{k} ({n})" for k, n in sorted(f.image_sizes.items(), key=lambda kv: -kv[1]))
        )
    lines.append("  class pixels:")
    for name in f.class_names:
        lines.append(
            f"    {name:<18}{f.class_pixels.get(name, 0):>14,}  {100 * f.class_frequency.get(name, 0.0):9.4f} %"
        )
    absent = {s: names for s, names in f.classes_absent.items() if names}
    if absent:
        lines.append("  classes absent: " + "; ".join(f"{s}: {', '.join(n)}" for s, n in absent.items()))
    i = f.intensity
    if i.mean is not None:
        pct = ", ".join(f"{k} {v:g}" for k, v in i.percentiles.items())
        lines.append(f"  intensity ({i.unit}): mean {i.mean:g}, std {i.std:g}, min {i.min:g}, max {i.max:g}")
        lines.append(f"    percentiles: {pct}")
    return lines
