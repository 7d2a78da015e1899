"""Streaming batches of (image, mask) for Keras: a ``keras.utils.PyDataset``.

Nothing is held in memory beyond the batches in flight: each ``__getitem__``
reads its files, decodes masks to class indices, resizes and augments. Batches
are ``(uint8 images (B, H, W, C), uint8 class-index masks (B, H, W))``; the model
scales images itself and the losses one-hot the masks on the device.

Reproducibility: the sample order of epoch ``e`` is a permutation seeded by
``(seed, e)`` and each augmented sample by ``(seed, e, sample index)``, so a
batch does not depend on which worker built it or in which order.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import keras
import numpy as np

from segexp.augment import sample_seed
from segexp.data.slices import MaskDecoder, SlicePair, load_pair

#: ``augmenter(image, mask, seed) -> (image, mask)``, e.g. :class:`segexp.augment.Augmenter`.
AugmentFn = Callable[[np.ndarray, np.ndarray, int], tuple[np.ndarray, np.ndarray]]


class SliceLoader(keras.utils.PyDataset):
    """Batches of slice pairs, read from disk on demand (optionally augmented).

    ``workers`` > 1 (or > 0 with ``use_multiprocessing``) reads batches in parallel
    threads/processes ahead of the model, ``max_queue_size`` batches deep.
    Pass ``shuffle=False`` to ``model.fit``: this loader shuffles itself, seeded.
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
        shuffle: bool = False,
        seed: int = 0,
        workers: int = 0,
        use_multiprocessing: bool = False,
        max_queue_size: int = 10,
    ) -> None:
        super().__init__(workers=workers, use_multiprocessing=use_multiprocessing, max_queue_size=max_queue_size)
        if not pairs:
            raise ValueError("SliceLoader needs at least one slice pair")
        self.pairs = list(pairs)
        self.decoder = decoder
        self.height, self.width = image_size
        self.channels = channels
        self.batch_size = batch_size
        self.augmenter = augmenter
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0
        self._order = self._epoch_order(0)

    def _epoch_order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(len(self.pairs))
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.pairs))

    def __len__(self) -> int:
        return math.ceil(len(self.pairs) / self.batch_size)

    def load_sample(self, index: int, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """Sample ``index`` (position in ``pairs``) as it is seen in ``epoch``."""
        image, mask = load_pair(self.pairs[index], self.decoder, self.channels, self.height, self.width)
        if self.augmenter is not None:
            image, mask = self.augmenter(image, mask, sample_seed(self.seed, epoch, index))
            if image.ndim == 2:
                image = image[..., None]
            if image.shape != (self.height, self.width, self.channels) or mask.shape != (self.height, self.width):
                raise ValueError(
                    f"augmentation changed the shape of {self.pairs[index].name} to {image.shape}/{mask.shape}; "
                    f"expected {(self.height, self.width, self.channels)} (add a Resize or PadIfNeeded transform)"
                )
        return image, mask

    def __getitem__(self, batch_index: int) -> tuple[np.ndarray, np.ndarray]:
        if not 0 <= batch_index < len(self):
            raise IndexError(batch_index)
        indices = self._order[batch_index * self.batch_size : (batch_index + 1) * self.batch_size]
        images = np.empty((len(indices), self.height, self.width, self.channels), np.uint8)
        masks = np.empty((len(indices), self.height, self.width), np.uint8)
        for row, index in enumerate(indices):
            images[row], masks[row] = self.load_sample(int(index), self.epoch)
        return images, masks

    def set_epoch(self, epoch: int) -> None:
        """Continue at ``epoch`` (a resumed run): the next batches are those of that epoch."""
        self.epoch = epoch
        self._order = self._epoch_order(epoch)

    def on_epoch_end(self) -> None:
        self.set_epoch(self.epoch + 1)
