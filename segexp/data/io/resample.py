"""In-plane resampling of slices to a target spacing, and back: segexp-prepare's ``spacing`` and ``canvas``.

A slice of ``(rows, cols)`` pixels of ``(row, col)`` mm covers ``rows * row`` x ``cols * col`` mm. Resampling to a
target spacing ``t`` keeps that extent (the field of view) and changes the pixel count:
``n' = round(n * s / t)`` per axis (:func:`resampled_shape`), so the pixels written are
``s * n / n'`` mm, within half a pixel's extent of ``t`` (recorded, not ``t``, in ``dataset.json``).
The image and label use OpenCV's half-pixel-centred resize (the one of :func:`~segexp.data.io.slices.resize_image`):

* **image**: area averaging when shrinking (every source pixel contributes, no aliasing), linear when
  enlarging (nnU-Net resamples images with cubic splines; linear never overshoots the stored range);
* **labels**: each class's indicator resampled the same way, then the argmax (:func:`resample_labels`):
  nnU-Net's per-class linear resampling of segmentations. Nearest neighbour would shift boundaries by up
  to half a source pixel and drop thin structures when shrinking; the argmax of the class fractions keeps
  each output pixel's majority class.

``canvas`` (optional) then pads or crops the resampled slice, centred, to one shape for every case, so
that the loader's resize to the model input scales every case alike (without it the loader maps each
case's field of view, not its spacing, onto the input). :class:`SliceGrid` holds one case's steps and
their inverse for predicted probabilities (linear, then the argmax: :mod:`segexp.evaluation.prediction`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from segexp.data.io.slices import resize_image

Shape = tuple[int, int]
#: A value per channel (or one for all): canvas padding, or the probabilities of cropped-away margins.
Fill = Sequence[float] | np.ndarray


def resampled_shape(shape: Sequence[int], spacing: Sequence[float], target: Sequence[float]) -> Shape:
    """``(rows, cols)`` covering the extent ``shape * spacing`` mm at ``target`` mm: ``max(1, round(n * s / t))``."""
    rows, cols = (max(1, int(round(n * float(s) / float(t)))) for n, s, t in zip(shape, spacing, target))
    return rows, cols


def resample_labels(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """Class indices ``(H, W)`` to ``(height, width)``: each present class's indicator resized as the image
    (:func:`~segexp.data.io.slices.resize_image`), then per pixel the class of the largest fraction (ties: the
    lower index)."""
    if mask.shape[:2] == (height, width):
        return mask
    present = np.unique(mask)
    if present.size == 1:
        return np.full((height, width), present[0], mask.dtype)
    indicators = (mask[..., None] == present).astype(np.float32)
    fractions = resize_image(indicators, height, width)
    return present[np.argmax(fractions, axis=-1)].astype(mask.dtype)


def resize_linear(values: np.ndarray, height: int, width: int) -> np.ndarray:
    """``(h, w, K)`` float values (probabilities) to ``(height, width, K)``, linear, channel-wise."""
    if values.shape[:2] == (height, width):
        return values
    out = cv2.resize(values, (width, height), interpolation=cv2.INTER_LINEAR)
    return out.reshape(height, width, values.shape[-1])


def _placement(n: int, target: int) -> tuple[int, int, int]:
    """``(pad before, pad after, crop start)`` that centre ``n`` pixels in ``target``."""
    if target >= n:
        before = (target - n) // 2
        return before, target - n - before, 0
    return 0, 0, (n - target) // 2


def canvas_fill(stored: np.ndarray, stacked: int = 1) -> list[float]:
    """The canvas padding of a volume as stored ``(x, y, z[, C])``: its lowest value per channel (air, below any
    window), repeated for each of the ``stacked`` slices a 2.5D sample holds (:mod:`segexp.data.io.context`).
    segexp-prepare and segexp-infer pad with it alike."""
    lows = stored.min(axis=(0, 1, 2)) if stored.ndim == 4 else [stored.min()]
    return [float(v) for v in lows] * stacked


def fit_canvas(image: np.ndarray, shape: Shape, fill: float | Fill = 0) -> np.ndarray:
    """``image`` ``(h, w[, C])`` centred in ``shape``: padded with ``fill`` (per channel) or cropped, per axis."""
    (top, bottom, row0), (left, right, col0) = (_placement(n, t) for n, t in zip(image.shape[:2], shape))
    cropped = image[row0 : row0 + min(image.shape[0], shape[0]), col0 : col0 + min(image.shape[1], shape[1])]
    if not (top or bottom or left or right):
        return np.ascontiguousarray(cropped)
    out = np.empty((*shape, *image.shape[2:]), image.dtype)
    out[...] = np.asarray(fill, image.dtype)
    out[top : top + cropped.shape[0], left : left + cropped.shape[1]] = cropped
    return out


def unfit_canvas(values: np.ndarray, shape: Shape, fill: Fill) -> np.ndarray:
    """The inverse of :func:`fit_canvas` for ``(H, W, K)`` values on the canvas: back to ``shape``, the padding
    dropped and the cropped margins filled with ``fill`` (e.g. probability 1 for the background)."""
    (top, _, row0), (left, _, col0) = (_placement(n, t) for n, t in zip(shape, values.shape[:2]))
    rows, cols = min(shape[0], values.shape[0]), min(shape[1], values.shape[1])
    out = np.empty((*shape, values.shape[2]), values.dtype)
    out[...] = np.asarray(fill, values.dtype)
    out[row0 : row0 + rows, col0 : col0 + cols] = values[top : top + rows, left : left + cols]
    return out


@dataclass(frozen=True)
class SliceGrid:
    """One case's way from its volume's slices ``shape`` to the stored slices, and back.

    Steps: resample to ``resampled`` (the target spacing; ``== shape`` when off), pad/crop to ``canvas``
    (optional), resize to ``size`` (segexp-prepare's ``size``, optional). All but the canvas keep the field
    of view.
    """

    shape: Shape
    resampled: Shape
    canvas: Shape | None = None
    size: Shape | None = None

    @property
    def stored(self) -> Shape:
        """``(rows, cols)`` of the stored slices."""
        return self.size or self.canvas or self.resampled

    def image(self, image: np.ndarray, fill: float | Fill = 0) -> np.ndarray:
        """A slice ``(rows, cols, C)`` (stored dtype) on the stored grid; canvas padding is ``fill``."""
        out = resize_image(image, *self.resampled)
        if self.canvas is not None:
            out = fit_canvas(out, self.canvas, fill)
        return out if self.size is None else resize_image(out, *self.size)

    def labels(self, mask: np.ndarray) -> np.ndarray:
        """Class indices ``(rows, cols)`` on the stored grid (:func:`resample_labels`; ``size``: nearest, as
        :func:`~segexp.data.io.slices.resize_pair`); canvas padding is background (0)."""
        out = resample_labels(mask, *self.resampled)
        if self.canvas is not None:
            out = fit_canvas(out, self.canvas, 0)
        if self.size is None or out.shape == self.size:
            return out
        return cv2.resize(out, (self.size[1], self.size[0]), interpolation=cv2.INTER_NEAREST)

    def probabilities(self, values: np.ndarray, background: Fill) -> np.ndarray:
        """Probabilities ``(h, w, K)`` of a stored slice (at any size, e.g. the model's) back on the volume's
        slice ``shape``, linearly: one resize (every step keeps the field of view) or, with a canvas,
        resize to the canvas, undo it (``background`` in cropped margins), resize to ``shape``."""
        if self.canvas is None:
            return resize_linear(values, *self.shape)
        on_canvas = resize_linear(values, *self.canvas)
        return resize_linear(unfit_canvas(on_canvas, self.resampled, background), *self.shape)

    def pixel_spacing(self, spacing: Sequence[float]) -> tuple[float, float]:
        """``(row, col)`` mm of the stored pixels, from the volume's slice ``spacing``: ``s * n / n'`` after
        resampling, then times ``canvas or resampled`` / ``size`` when resized."""
        row, col = (float(s) * n / m for s, n, m in zip(spacing, self.shape, self.resampled))
        if self.size is not None:
            base = self.canvas or self.resampled
            row, col = row * base[0] / self.size[0], col * base[1] / self.size[1]
        return row, col


def slice_grid(
    shape: Sequence[int],
    spacing: Sequence[float],
    target: Sequence[float] | None = None,
    canvas: Sequence[int] | None = None,
    size: Sequence[int] | None = None,
) -> SliceGrid:
    """The :class:`SliceGrid` of slices ``shape`` at ``spacing`` (row, col mm) for a ``target`` spacing (None:
    none), a ``canvas`` and a ``size`` (``(rows, cols)``, None: none)."""
    rows, cols = (int(n) for n in shape)
    resampled = resampled_shape((rows, cols), spacing, target) if target is not None else (rows, cols)
    return SliceGrid((rows, cols), resampled, _shape(canvas), _shape(size))


def _shape(value: Sequence[int] | None) -> Shape | None:
    return None if value is None else (int(value[0]), int(value[1]))
