"""The dataset fingerprint the plan is read from (nnU-Net's "dataset fingerprint", for 2D slices).

:func:`read_fingerprint` measures an opened :class:`~segexp.data.runtime.dataset.SliceDataset` with
segexp's own readers: image size and channels, spacing where a ``dataset.json`` beside the
data knows it, intensity statistics, cases and slices per split, class pixel frequencies and
per-slice class presence over the train split. Counts are exact; pixel statistics come from
:func:`segexp.data.prepare.check.dataset_fingerprint` (a bounded, evenly spaced sample); presence is
read from every train mask once and cached (:func:`segexp.data.runtime.sampling.cached_class_presence`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from segexp.data.io.slices import DataError, read_image_file, same_channels
from segexp.data.prepare.check import dataset_fingerprint
from segexp.data.runtime.dataset import SliceDataset
from segexp.data.runtime.sampling import cached_class_presence

#: Train images read to tell grey from colour slices.
CHANNEL_SAMPLE = 16


@dataclass(frozen=True)
class DataFingerprint:
    """What the plan's rules read. Sizes in pixels (height, width); spacing in mm (row, column).

    ``class_frequency[c]`` = pixels of class c / all pixels over the sampled train masks;
    ``slice_presence[c]`` = share of the train slices whose mask holds class c (all slices).
    """

    name: str
    image_size: tuple[int, int]
    channels: int
    spacing_mm: tuple[float, float] | None
    intensity_mean: float | None
    intensity_std: float | None
    cases: dict[str, int]
    slices: dict[str, int]
    class_names: tuple[str, ...]
    class_frequency: dict[str, float]
    slice_presence: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def median_size(sizes: dict[str, int]) -> tuple[int, int]:
    """The median (height, width) of ``{"<w>x<h>": count}`` (count-weighted, per axis)."""
    heights, widths = [], []
    for key, count in sizes.items():
        w, h = (int(v) for v in key.split("x"))
        heights += [h] * count
        widths += [w] * count
    if not heights:
        raise DataError("dataset: no image could be read to measure the slice size")
    return int(np.median(heights)), int(np.median(widths))


def image_channels(dataset: SliceDataset, sample: int = CHANNEL_SAMPLE) -> int:
    """The stored channels where ``dataset.json`` says (segexp-prepare: 1, or the stacked windows), else 1 when
    every sampled train image is grey (or colour with three equal channels), else 3."""
    if dataset.channels is not None:
        return dataset.channels
    pairs = dataset.pairs["train"]
    picks = np.unique(np.linspace(0, len(pairs) - 1, min(sample, len(pairs))).round().astype(int))
    for i in picks:
        try:
            image = read_image_file(pairs[i].image, cv2.IMREAD_COLOR)
        except DataError:
            continue  # the check and the loader report bad files
        if not same_channels(image):
            return 3
    return 1


def manifest_spacing(root: Path) -> tuple[float, float] | None:
    """In-plane spacing (mm) from a ``dataset.json`` beside the slices: segexp-prepare's per-case
    ``stored_spacing_mm`` (the stored pixels, ``(row, col)``: after its resampling), else its ``spacing_mm``
    (in-plane = the two finest axes), the median over the cases; or a top-level ``spacing``."""
    path = Path(root) / "dataset.json"
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # the class table reader reports a broken dataset.json
    cases = manifest.get("cases") or {}
    entries = [c for c in (cases.values() if isinstance(cases, dict) else cases) if isinstance(c, dict)]
    stored = [c["stored_spacing_mm"] for c in entries if c.get("stored_spacing_mm")]
    if stored:
        row, col = np.median(np.asarray(stored, float), axis=0)
        return round(float(row), 4), round(float(col), 4)
    spacings = [c["spacing_mm"] for c in entries if c.get("spacing_mm")]
    if not spacings and isinstance(manifest.get("spacing"), list):
        spacings = [manifest["spacing"]]
    if not spacings:
        return None
    finest = np.sort(np.asarray(spacings, float), axis=1)[:, :2]
    row, col = np.median(finest, axis=0)
    return round(float(row), 4), round(float(col), 4)


def read_fingerprint(dataset: SliceDataset, cache_dir: Path | None, workers: int = 1) -> DataFingerprint:
    """Measure ``dataset`` (see the module docstring); class presence is cached under ``cache_dir``."""
    channels = image_channels(dataset)
    report = dataset_fingerprint(dataset, channels)
    f = report.fingerprint
    presence = cached_class_presence(dataset.pairs["train"], dataset.decoder, cache_dir, workers=workers)
    share = presence.mean(axis=0) if len(presence) else np.zeros(len(dataset.class_names))
    names = tuple(dataset.class_names)
    return DataFingerprint(
        name=dataset.name,
        image_size=median_size(f.image_sizes),
        channels=channels,
        spacing_mm=manifest_spacing(dataset.root),
        intensity_mean=f.intensity.mean,
        intensity_std=f.intensity.std,
        cases={s: c["cases"] for s, c in f.splits.items()},
        slices={s: c["slices"] for s, c in f.splits.items()},
        class_names=names,
        class_frequency={n: float(f.class_frequency.get(n, 0.0)) for n in names},
        slice_presence={n: round(float(share[i]), 4) for i, n in enumerate(names) if i < len(share)},
    )
