"""Which slices an epoch trains on: fixed iterations, drawn with replacement, foreground oversampled.

nnU-Net's recipe (Isensee et al. 2021, *Nature Methods* 18:203): an epoch is a fixed
number of optimiser steps independent of the dataset's size, samples are drawn at
random with replacement, and a fraction of each batch (1/3 there) is forced to
contain foreground, the class chosen uniformly among the classes present, so rare
structures are seen every epoch. Here the unit is a whole 2D slice (no patch crop):
a forced sample is a slice that contains the chosen class.

Every draw is seeded by ``(seed, epoch, position in the epoch)``, so the samples of
epoch ``e`` do not depend on the loader workers, on a resume, or on earlier epochs.

Class presence (which classes each training slice contains) is read once from the
masks and cached in ``<cache_dir>/class_presence/<key>.npz``, the key hashing the mask
files (path, size, modification time) and the decoder settings.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segexp.data.io.slices import DataError, MaskDecoder, SlicePair

log = logging.getLogger(__name__)


def class_presence(pairs: Sequence[SlicePair], decoder: MaskDecoder, workers: int = 1) -> np.ndarray:
    """``(N, C) bool``: whether slice ``n``'s mask holds a pixel of class ``c`` (C = decoder classes).

    A mask that cannot be read counts as holding no class (the loader reports it when it meets it).
    """
    num_classes = max(decoder.num_classes, 2)

    def present(pair: SlicePair) -> np.ndarray:
        try:
            mask = decoder(pair.mask)
        except DataError:
            return np.zeros(num_classes, bool)
        return np.bincount(mask.ravel(), minlength=num_classes)[:num_classes] > 0

    with ThreadPoolExecutor(max(1, workers)) as pool:  # OpenCV decoding releases the GIL
        rows = list(pool.map(present, pairs))
    return np.stack(rows) if rows else np.zeros((0, num_classes), bool)


def _presence_key(pairs: Sequence[SlicePair], decoder: MaskDecoder) -> str:
    """Hash of the mask files (path, size, mtime) and of the decoder's settings."""
    digest = hashlib.sha256()
    colours = None if decoder.colours is None else np.asarray(decoder.colours).tolist()
    digest.update(json.dumps([decoder.mask_format, decoder.num_classes, colours, decoder.threshold]).encode())
    for pair in pairs:
        try:
            stat = pair.mask.stat()
            digest.update(f"{pair.mask.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(f"{pair.mask}\0missing\n".encode())
    return digest.hexdigest()[:32]


def cached_class_presence(
    pairs: Sequence[SlicePair], decoder: MaskDecoder, cache_dir: Path | None, workers: int = 1
) -> np.ndarray:
    """:func:`class_presence`, read from / written to ``cache_dir`` (None: no cache)."""
    if cache_dir is None:
        return class_presence(pairs, decoder, workers)
    path = Path(cache_dir) / "class_presence" / f"{_presence_key(pairs, decoder)}.npz"
    if path.is_file():
        try:
            with np.load(path) as data:
                presence = data["presence"]
            if presence.shape[0] == len(pairs):
                return presence
        except (OSError, ValueError, KeyError) as err:  # a cut-short cache file: compute again
            log.warning("class presence cache %s unreadable (%s): reading the masks again", path, err)
    presence = class_presence(pairs, decoder, workers)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez_compressed(tmp, presence=presence)
        tmp.replace(path)
    except OSError as err:  # a read-only output folder only costs the cache
        log.warning("class presence not cached in %s: %s", path.parent, err)
    return presence


@dataclass(frozen=True)
class EpochSampler:
    """The training samples of each epoch, as positions in the split's list of slices.

    ``steps_per_epoch=None``: one pass, a permutation seeded by ``(seed, epoch)``.
    Otherwise ``steps_per_epoch * batch_size`` draws with replacement; in every batch the
    last ``round(foreground_fraction * batch_size)`` slots are forced to contain a
    foreground class, chosen uniformly among the classes present in the split (nnU-Net's
    ``oversample_foreground_percent``), the others are uniform over all slices.
    ``presence`` is the ``(N, C)`` matrix of :func:`class_presence` (needed only to oversample).
    """

    num_slices: int
    batch_size: int
    seed: int = 0
    steps_per_epoch: int | None = None
    foreground_fraction: float = 0.0
    presence: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.num_slices < 1:
            raise ValueError("EpochSampler needs at least one slice")
        if self.presence is not None and self.presence.shape[0] != self.num_slices:
            raise ValueError(f"presence has {self.presence.shape[0]} rows for {self.num_slices} slices")

    def __len__(self) -> int:
        """Samples per epoch."""
        return self.num_slices if self.steps_per_epoch is None else self.steps_per_epoch * self.batch_size

    def _foreground_classes(self) -> list[np.ndarray]:
        """For each foreground class present in the split, the slices that contain it."""
        if self.presence is None:
            return []
        return [np.flatnonzero(column) for column in self.presence[:, 1:].T if column.any()]

    def forced_slots(self) -> int:
        """Slots per batch that must hold foreground."""
        return int(round(self.foreground_fraction * self.batch_size)) if self._foreground_classes() else 0

    def epoch(self, epoch: int) -> np.ndarray:
        """Slice positions of the samples of ``epoch`` (0-based), in training order."""
        if self.steps_per_epoch is None:
            return np.random.default_rng([self.seed, epoch]).permutation(self.num_slices)
        classes = self._foreground_classes()
        first_forced = self.batch_size - self.forced_slots()
        out = np.empty(len(self), np.int64)
        for position in range(len(out)):
            rng = np.random.default_rng([self.seed, epoch, position])
            if position % self.batch_size >= first_forced:
                slices = classes[rng.integers(len(classes))]
                out[position] = slices[rng.integers(len(slices))]
            else:
                out[position] = rng.integers(self.num_slices)
        return out
