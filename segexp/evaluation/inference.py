"""Prediction with a segmentation model: batched, flip TTA, and Gaussian-blended sliding windows.

Everything here is numpy in, numpy out. The model (a saved segexp model takes raw
``uint8`` images ``(B, H, W, C)`` and gives float32 probabilities ``(B, H, W, K)``,
softmax, or one sigmoid channel when ``K == 1``) is only ever called on whole batches
of one fixed shape ``(batch_size, H, W, C)`` through ``model.predict_on_batch``,
whose compiled predict function Keras caches on the model: the last partial batch is
padded with black images and the padding dropped, so the function is traced once,
however many images or calls there are. ``model.predict`` per image, as the original
tool did, builds a data adapter and a progress loop for every image.

Images larger or smaller than the model input go through :func:`sliding_window_predict`,
the scheme of nnU-Net (Isensee et al., Nature Methods 2021,
``nnunetv2/inference/sliding_window_prediction.py``): the image is zero-padded to at
least the tile size, tiles overlap by ``overlap`` of the tile, each tile's
probabilities are weighted by a Gaussian importance map (centre pixels trusted more
than border pixels, which lack context) and the blended result is
``sum_t(w_t * p_t) / sum_t(w_t)`` per pixel.

Only ``keras`` and numpy are used here (no backend imports).
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np

__all__ = [
    "gaussian_importance_map",
    "model_input_size",
    "predict_batches",
    "predict_images",
    "probabilities_to_classes",
    "sliding_window_predict",
    "tile_origins",
]


def probabilities_to_classes(probs: np.ndarray) -> np.ndarray:
    """Class indices ``(..., )`` uint8 from probabilities ``(..., K)``.

    ``argmax`` over the last axis, or ``p >= 0.5`` for a single sigmoid channel (K == 1).
    """
    probs = np.asarray(probs)
    if probs.ndim < 1 or probs.shape[-1] < 1:
        raise ValueError(f"probabilities need a class axis last, got shape {probs.shape}")
    if probs.shape[-1] == 1:
        return (probs[..., 0] >= 0.5).astype(np.uint8)
    if probs.shape[-1] > 256:
        raise ValueError(f"{probs.shape[-1]} classes do not fit in uint8 class indices")
    return np.argmax(probs, axis=-1).astype(np.uint8)


def model_input_size(model: keras.Model) -> tuple[int | None, int | None, int | None]:
    """``(height, width, channels)`` of the model's single image input (``None`` = any)."""
    shape = model.input_shape
    if isinstance(shape, list) or len(shape) != 4:
        raise ValueError(f"expected one image input (B, H, W, C), the model has {shape}")
    return shape[1], shape[2], shape[3]


def _num_outputs(model: keras.Model) -> int:
    shape = model.output_shape
    if isinstance(shape, list) or len(shape) != 4 or shape[-1] is None:
        raise ValueError(f"expected one output (B, H, W, K), the model has {shape}")
    return int(shape[-1])


def _check_uint8(images: np.ndarray) -> None:
    """Images must be as stored, uint8 (or uint16 for 16-bit slices): the model's input layer decodes them."""
    if images.dtype not in (np.uint8, np.uint16):
        raise TypeError(f"images must be uint8 or uint16 as stored (the model decodes them), got {images.dtype}")


def _predict_fixed(model: keras.Model, images: np.ndarray, batch_size: int, num_classes: int) -> np.ndarray:
    """Probabilities for ``images`` in batches of exactly ``batch_size`` (last one zero-padded)."""
    n = len(images)
    out = np.empty((n, *images.shape[1:3], num_classes), np.float32)
    for start in range(0, n, batch_size):
        chunk = images[start : start + batch_size]
        k = len(chunk)
        if k < batch_size:
            pad = np.zeros((batch_size - k, *chunk.shape[1:]), chunk.dtype)
            chunk = np.concatenate([chunk, pad], axis=0)
        probs = model.predict_on_batch(np.ascontiguousarray(chunk))
        out[start : start + k] = np.asarray(probs, dtype=np.float32)[:k]
    return out


def predict_batches(
    model: keras.Model,
    images: np.ndarray,
    batch_size: int = 8,
    flip_tta: bool = False,
) -> np.ndarray:
    """Probabilities ``(N, H, W, K)`` float32 for stored images ``(N, H, W, C)`` (uint8 or uint16) of the model's
    input size.

    The model is called through ``model.predict_on_batch`` on batches of exactly
    ``batch_size`` images (the last partial batch is padded with black images, whose
    predictions are dropped), so Keras traces its predict function for one shape only.
    Batch elements do not interact in inference mode (batch norm uses its moving
    statistics), so the result equals predicting the images one by one, up to float
    round-off.

    ``flip_tta``: test-time augmentation by flips, as nnU-Net's mirroring. Each image is
    also predicted flipped horizontally (width axis), vertically (height axis) and both;
    each prediction is flipped back and the four are averaged (summed in float64,
    then divided by 4)::

        p = (f(x) + F_w(f(F_w x)) + F_h(f(F_h x)) + F_hw(f(F_hw x))) / 4

    For a model that commutes with flips the result equals the plain prediction.
    Costs four forward passes.
    """
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"images must be (N, H, W, C), got shape {images.shape}")
    _check_uint8(images)
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    batch_size = int(batch_size)
    expected = model_input_size(model)
    for axis, (got, want) in enumerate(zip(images.shape[1:], expected)):
        if want is not None and got != want:
            raise ValueError(
                f"images of shape {tuple(images.shape[1:])} do not fit the model input "
                f"{tuple(expected)} ({('height', 'width', 'channels')[axis]} {got} != {want}); "
                "use sliding_window_predict or predict_images for other sizes"
            )
    num_classes = _num_outputs(model)
    if len(images) == 0:
        return np.zeros((0, *images.shape[1:3], num_classes), np.float32)
    if not flip_tta:
        return _predict_fixed(model, images, batch_size, num_classes)

    total = np.zeros((*images.shape[:3], num_classes), np.float64)
    for axes in ((), (2,), (1,), (1, 2)):  # identity, horizontal, vertical, both
        flipped = np.flip(images, axis=axes) if axes else images
        probs = _predict_fixed(model, flipped, batch_size, num_classes)
        total += np.flip(probs, axis=axes) if axes else probs
    return (total / 4.0).astype(np.float32)


def gaussian_importance_map(tile: tuple[int, int], sigma_scale: float = 0.125) -> np.ndarray:
    """Blending weights ``(h, w)`` float32 for one tile, as nnU-Net's ``compute_gaussian``.

    ``g(y, x) = exp(-((y - cy)^2 / (2 sy^2) + (x - cx)^2 / (2 sx^2)))`` with the centre
    ``(cy, cx) = ((h - 1) / 2, (w - 1) / 2)`` (so the map is symmetric under flips) and
    ``s = sigma_scale * tile size`` per axis, normalised to a maximum of 1. Values that
    underflow to 0 are raised to the smallest non-zero value, so no pixel of a tile ever
    gets weight 0 (the weight sum is a divisor).
    """
    h, w = (int(t) for t in tile)
    if h < 1 or w < 1:
        raise ValueError(f"tile must be positive, got {tile}")
    if not sigma_scale > 0:
        raise ValueError(f"sigma_scale must be > 0, got {sigma_scale}")
    yy = (np.arange(h, dtype=np.float64) - (h - 1) / 2.0) / (sigma_scale * h)
    xx = (np.arange(w, dtype=np.float64) - (w - 1) / 2.0) / (sigma_scale * w)
    g = np.exp(-0.5 * (yy[:, None] ** 2 + xx[None, :] ** 2))
    g = (g / g.max()).astype(np.float32)
    nonzero = g[g > 0]
    g[g == 0] = nonzero.min()
    return g


def tile_origins(size: int, tile: int, overlap: float) -> list[int]:
    """Start offsets of tiles covering ``[0, size)``, as nnU-Net's ``compute_steps_for_sliding_window``.

    The target step is ``tile * (1 - overlap)`` (at least 1); the number of tiles is the
    fewest that cover the axis with steps no longer than that, and the origins are spread
    evenly from 0 to ``size - tile`` (the last tile is flush with the end), so the actual
    overlap is at least ``overlap``. ``size <= tile`` gives ``[0]`` (the image is padded to
    the tile size).
    """
    size, tile = int(size), int(tile)
    if tile < 1 or size < 1:
        raise ValueError(f"size and tile must be positive, got size={size}, tile={tile}")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if size <= tile:
        return [0]
    target_step = max(1, int(round(tile * (1.0 - overlap))))
    num = int(np.ceil((size - tile) / target_step)) + 1
    step = (size - tile) / (num - 1)
    return [int(round(i * step)) for i in range(num)]


def _as_hwc(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 2:
        return image[..., None]
    if image.ndim != 3:
        raise ValueError(f"an image must be (H, W) or (H, W, C), got shape {image.shape}")
    return image


def sliding_window_predict(
    model: keras.Model,
    image: np.ndarray,
    tile: tuple[int, int] | None = None,
    overlap: float = 0.5,
    batch_size: int = 8,
    flip_tta: bool = False,
    sigma_scale: float = 0.125,
) -> np.ndarray:
    """Probabilities ``(H, W, K)`` float32 for one uint8 image ``(H, W, C)`` of any size.

    1. Zero-pad (black, the CT background) the image to at least ``tile`` on each axis,
       split evenly before and after.
    2. Cut tiles at :func:`tile_origins` on each axis (tiles overlap by at least
       ``overlap``; the last one is flush with the border).
    3. Predict the tiles with :func:`predict_batches` (``batch_size``, ``flip_tta``).
    4. Blend: ``p = sum_t(g * p_t) / sum_t(g)`` with ``g`` the
       :func:`gaussian_importance_map` (accumulated in float64), then crop the padding away.

    ``tile`` defaults to the model's input size; a model with a fixed input size only
    accepts that tile. An image of exactly the tile size is one tile, and the result
    equals ``predict_batches`` on it.
    """
    image = _as_hwc(image)
    _check_uint8(image)
    mh, mw, mc = model_input_size(model)
    if mc is not None and image.shape[2] != mc:
        raise ValueError(f"image has {image.shape[2]} channels, the model expects {mc}")
    if tile is None:
        tile = (mh if mh is not None else image.shape[0], mw if mw is not None else image.shape[1])
    th, tw = (int(t) for t in tile)
    if (mh is not None and th != mh) or (mw is not None and tw != mw):
        raise ValueError(f"tile {th}x{tw} differs from the model input size {mh}x{mw}")

    h, w = image.shape[:2]
    ph, pw = max(h, th), max(w, tw)
    top, left = (ph - h) // 2, (pw - w) // 2
    if (ph, pw) != (h, w):
        padded = np.zeros((ph, pw, image.shape[2]), image.dtype)
        padded[top : top + h, left : left + w] = image
    else:
        padded = image

    origins = [(y, x) for y in tile_origins(ph, th, overlap) for x in tile_origins(pw, tw, overlap)]
    tiles = np.stack([padded[y : y + th, x : x + tw] for y, x in origins])
    probs = predict_batches(model, tiles, batch_size=batch_size, flip_tta=flip_tta)

    weight = gaussian_importance_map((th, tw), sigma_scale).astype(np.float64)
    acc = np.zeros((ph, pw, probs.shape[-1]), np.float64)
    wsum = np.zeros((ph, pw, 1), np.float64)
    for (y, x), p in zip(origins, probs):
        acc[y : y + th, x : x + tw] += weight[..., None] * p
        wsum[y : y + th, x : x + tw, 0] += weight
    blended = acc / wsum
    return blended[top : top + h, left : left + w].astype(np.float32)


def predict_images(
    model: keras.Model,
    images: Sequence[np.ndarray],
    batch_size: int = 8,
    flip_tta: bool = False,
    tiled: bool | str = "auto",
    overlap: float = 0.5,
) -> list[np.ndarray]:
    """Probabilities ``(H_i, W_i, K)`` float32 for each uint8 image ``(H_i, W_i, C)`` (or ``(H_i, W_i)``).

    Images of the model's input size are stacked and predicted together with
    :func:`predict_batches` (the fast path). Others go through
    :func:`sliding_window_predict` when ``tiled`` is ``True`` or ``"auto"``; with
    ``tiled=False`` they are an error. (For a model with free spatial input dimensions,
    images are grouped by size and predicted whole.)

    Raises ``ValueError`` naming the image index for a channel count other than the
    model's, or a size other than the model's with ``tiled=False``.
    """
    if tiled not in (True, False, "auto"):
        raise ValueError(f"tiled must be True, False or 'auto', got {tiled!r}")
    mh, mw, mc = model_input_size(model)
    arrays = [_as_hwc(im) for im in images]
    groups: dict[tuple[int, int], list[int]] = {}
    windowed: list[int] = []
    for i, im in enumerate(arrays):
        _check_uint8(im)
        h, w, c = im.shape
        if mc is not None and c != mc:
            raise ValueError(f"image {i}: got {c} channels, the model expects {mc}")
        fits = (mh is None or h == mh) and (mw is None or w == mw)
        if fits:
            groups.setdefault((h, w), []).append(i)
        elif tiled is False:
            raise ValueError(
                f"image {i}: size {h}x{w} differs from the model input size {mh}x{mw} "
                "(use tiled='auto' for sliding-window prediction)"
            )
        else:
            windowed.append(i)

    results: list[np.ndarray | None] = [None] * len(arrays)
    for indices in groups.values():
        probs = predict_batches(model, np.stack([arrays[i] for i in indices]), batch_size, flip_tta)
        for i, p in zip(indices, probs):
            results[i] = p
    for i in windowed:
        results[i] = sliding_window_predict(model, arrays[i], overlap=overlap, batch_size=batch_size, flip_tta=flip_tta)
    return results  # type: ignore[return-value]
