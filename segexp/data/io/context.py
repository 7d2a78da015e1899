"""2.5D context: a slice with its ``k`` neighbours on each side as input channels.

A 2D network sees one slice; its neighbours along the slicing axis are the cheapest 3D context it can get
(the nnU-Net maintainers' suggestion for 2D networks on 3D data, MIC-DKFZ/nnUNet#690). Sample ``i`` of a
volume with ``n`` slices becomes the channel stack of slices

    ``clip(i - k, 0, n - 1), ..., i, ..., clip(i + k, 0, n - 1)``

(offset-major: the ``C`` channels of slice ``i - k`` first), so an edge slice repeats the border slice and
every sample has ``(2k + 1) * C`` channels. segexp-prepare stacks them when it cuts the training slices
(``context_slices``, recorded in ``dataset.json``'s ``storage``) and segexp-infer / segexp-evaluate stack
them the same way from the volume: one function, :func:`context_stack`, for both.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def context_indices(index: int, count: int, k: int) -> list[int]:
    """Slice indices ``index - k .. index + k`` clipped to ``0 .. count - 1`` (the border slice repeats)."""
    if k < 0:
        raise ValueError(f"context_slices must be >= 0, got {k}")
    if not 0 <= index < count:
        raise IndexError(f"slice {index} of a volume of {count} slices")
    return [min(max(index + offset, 0), count - 1) for offset in range(-k, k + 1)]


def context_stack(slice_at: Callable[[int], np.ndarray], index: int, count: int, k: int) -> np.ndarray:
    """Slice ``index`` with ``k`` neighbours per side as one ``(H, W, (2k + 1) * C)`` array; ``slice_at(j)`` is
    slice ``j`` as ``(H, W)`` or ``(H, W, C)``."""
    parts = []
    for j in context_indices(index, count, k):
        part = slice_at(j)
        parts.append(part if part.ndim == 3 else part[..., None])
    return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=2)
