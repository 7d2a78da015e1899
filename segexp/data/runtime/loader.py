"""Streaming batches of (image, mask) for Keras: a ``keras.utils.PyDataset``.

Each ``__getitem__`` reads its files, decodes masks to class indices, resizes and
augments. Read-and-resized pairs (before augmentation) are kept in memory up to
``cache_mb`` (MONAI's ``CacheDataset`` idea, bounded): with steps drawn with
replacement the same slices come back every epoch, and decoding a 512x512 PNG pair
costs as much as a training step's share of the CPU on a small machine. Beyond the
bound, pairs stream from disk; memory stays flat whatever the dataset's size. Batches
are ``(images (B, H, W, C) as stored (uint8, or uint16 for 16-bit slices), uint8 class-index masks
(B, H, W))``; the model scales images itself (its input layer decodes the dataset's
:class:`~segexp.data.io.intensity.InputEncoding`) and the losses one-hot the masks on the device.

Reproducibility: which slices epoch ``e`` trains on comes from an
:class:`~segexp.data.runtime.sampling.EpochSampler` (seeded by ``(seed, e, position)``) and
each augmented sample is seeded by ``(seed, e, position in the epoch)``, so a batch
does not depend on which worker built it, in which order, or on a resume.

Bad files (``on_bad_file``): a file that cannot be read or decoded, a mask colour
not in the rgb_map, an image/mask size mismatch or a colour image in a grayscale
dataset raises :class:`~segexp.data.io.slices.DataError` naming the file (``error``,
the default) or, with ``skip``, is replaced by the next valid sample of the split
(positions ``index+1, index+2, ...`` in ``pairs``, wrapping around), augmented with
the seed of the slot it fills; a warning names the file once and
:attr:`SliceLoader.skipped` counts it. The replacement depends only on the files,
so batches stay reproducible and keep their shape.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence

import keras
import numpy as np

from segexp.config.options import OnBadFile, expected
from segexp.config.schema import LoaderConfig
from segexp.data.io.slices import DataError, MaskDecoder, SlicePair, load_pair
from segexp.data.runtime.augment import sample_seed
from segexp.data.runtime.sampling import EpochSampler

log = logging.getLogger(__name__)

#: The loader settings of a reader without ``training.loader``: main thread, no cache (validation pictures, tests).
MAIN_THREAD = LoaderConfig(workers=0, use_multiprocessing=False, max_queue_size=10, cache_mb=0.0)

#: ``augmenter(image, mask, seed) -> (image, mask)``, e.g. :class:`segexp.data.runtime.augment.Augmenter`.
AugmentFn = Callable[[np.ndarray, np.ndarray, int], tuple[np.ndarray, np.ndarray]]


class SliceLoader(keras.utils.PyDataset):
    """Batches of slice pairs, read from disk on demand (optionally augmented).

    ``loader`` (``training.loader``; default :data:`MAIN_THREAD`): ``workers`` > 1 (or > 0 with
    ``use_multiprocessing``) read batches in parallel threads/processes ahead of the model,
    ``max_queue_size`` batches deep; ``cache_mb`` MiB of read-and-resized pairs are kept.
    Without a ``sampler`` every epoch is one pass in file order (validation). Pass
    ``shuffle=False`` to ``model.fit``: the sampler orders the samples itself, seeded.
    :func:`~segexp.training.fit_loop.fit_epochs` trains epoch ``e`` on the sampler's epoch ``e``.
    """

    def __init__(
        self,
        pairs: Sequence[SlicePair],
        decoder: MaskDecoder,
        *,
        image_size: tuple[int, int],
        channels: int,
        batch_size: int,
        augmenter: AugmentFn | None = None,
        sampler: EpochSampler | None = None,
        seed: int = 0,
        loader: LoaderConfig | None = None,
        on_bad_file: str = "error",
        dtype: np.dtype | type | str = np.uint8,
    ) -> None:
        loader = loader or MAIN_THREAD
        super().__init__(
            workers=loader.workers, use_multiprocessing=loader.use_multiprocessing, max_queue_size=loader.max_queue_size
        )
        if not pairs:
            raise ValueError("SliceLoader needs at least one slice pair")
        bad_file_error = expected("on_bad_file", on_bad_file, OnBadFile)
        if bad_file_error is not None:
            raise ValueError(bad_file_error)
        self.on_bad_file = on_bad_file
        #: read-and-resized pairs by position, up to ``cache_mb`` MiB (dict writes are atomic across threads)
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._cache_left = int(loader.cache_mb * 2**20)
        #: ``skip`` mode: bad files met so far (image path -> cause); per process with multiprocessing.
        self.skipped: dict[str, str] = {}  # one dict assignment per bad file: safe across loader threads
        self.pairs = list(pairs)
        self.decoder = decoder
        self.height, self.width = image_size
        self.channels = channels
        self.dtype = np.dtype(dtype)  # the stored images' (dataset.json's storage): a file of another depth is bad
        self.batch_size = batch_size
        self.augmenter = augmenter
        if sampler is not None and sampler.num_slices != len(self.pairs):
            raise ValueError(f"sampler is for {sampler.num_slices} slices, the loader has {len(self.pairs)}")
        self.sampler = sampler
        self.seed = seed
        self.epoch = 0
        self._order = self._epoch_order(0)

    def _epoch_order(self, epoch: int) -> np.ndarray:
        return np.arange(len(self.pairs)) if self.sampler is None else self.sampler.epoch(epoch)

    def __len__(self) -> int:
        return math.ceil(len(self._order) / self.batch_size)

    def load_sample(self, index: int, epoch: int, position: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Slice ``index`` (position in ``pairs``) as sample ``position`` of ``epoch`` sees it.

        The augmentation is seeded by ``(seed, epoch, position)`` (``position`` defaults to
        ``index``), so a slice drawn twice in one epoch is augmented twice differently.

        A bad file raises :class:`DataError` naming it (``on_bad_file: error``) or, with
        ``skip``, is replaced by the next valid pair (see the module docstring).
        """
        image, mask = self._read_valid(index)
        if self.augmenter is not None:
            slot = index if position is None else position
            image, mask = self.augmenter(image, mask, sample_seed(self.seed, epoch, slot))
            if image.ndim == 2:
                image = image[..., None]
            if image.shape != (self.height, self.width, self.channels) or mask.shape != (self.height, self.width):
                raise ValueError(
                    f"augmentation changed the shape of {self.pairs[index].name} to {image.shape}/{mask.shape}; "
                    f"expected {(self.height, self.width, self.channels)} (add a Resize or PadIfNeeded transform)"
                )
        return image, mask

    def _read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        cached = self._cache.get(index)
        if cached is not None:  # copies: an augmentation may write into its input
            return cached[0].copy(), cached[1].copy()
        image, mask = load_pair(self.pairs[index], self.decoder, self.channels, self.height, self.width, self.dtype)
        size = image.nbytes + mask.nbytes
        if size <= self._cache_left:
            self._cache_left -= size  # a race between two threads only misjudges the bound by one pair
            self._cache[index] = (image.copy(), mask.copy())
        return image, mask

    def _read_valid(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Pair ``index`` read and resized, or in ``skip`` mode the first valid pair after it."""
        if self.on_bad_file == "error":
            return self._read(index)
        n = len(self.pairs)
        for step in range(n):
            candidate = (index + step) % n
            if str(self.pairs[candidate].image) in self.skipped:
                continue
            try:
                return self._read(candidate)
            except DataError as err:
                self.skipped[str(self.pairs[candidate].image)] = str(err)
                log.warning("skipping a bad sample (dataset.on_bad_file=skip): %s", err)
        raise DataError(
            f"every one of the {n} samples of this split is unreadable (dataset.on_bad_file=skip), e.g. "
            + next(iter(self.skipped.values()))
        )

    def __getitem__(self, batch_index: int) -> tuple[np.ndarray, np.ndarray]:
        if not 0 <= batch_index < len(self):
            raise IndexError(batch_index)
        start = batch_index * self.batch_size
        indices = self._order[start : start + self.batch_size]
        images = np.empty((len(indices), self.height, self.width, self.channels), self.dtype)
        masks = np.empty((len(indices), self.height, self.width), np.uint8)
        for row, index in enumerate(indices):
            images[row], masks[row] = self.load_sample(int(index), self.epoch, start + row)
        return images, masks

    def set_epoch(self, epoch: int) -> None:
        """Continue at ``epoch`` (a resumed run): the next batches are those of that epoch."""
        self.epoch = epoch
        self._order = self._epoch_order(epoch)

    def on_epoch_end(self) -> None:
        self.set_epoch(self.epoch + 1)
