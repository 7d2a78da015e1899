"""Image / mask visualisation helpers (numpy + OpenCV only, no matplotlib).

Conventions (as everywhere in segexp): images are ``uint8`` ``(H, W)`` grayscale or
``(H, W, 3)`` RGB; masks are ``uint8`` ``(H, W)`` class indices with 0 = background.
Everything returned here is RGB ``uint8``; :func:`save_png` takes care of OpenCV's BGR
order when writing to disk.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from segexp.core.files import atomic_write_path

_TITLE_FONT = cv2.FONT_HERSHEY_SIMPLEX
_TITLE_SCALE = 0.45
_TITLE_THICKNESS = 1
_TITLE_HEIGHT = 20
_GAP_VALUE = 255  # white gaps between panels


def to_rgb(image: np.ndarray) -> np.ndarray:
    """Return ``image`` as an ``(H, W, 3) uint8`` RGB array for display (grayscale is replicated).

    A stored slice of other than one or three channels (stacked windows) shows its first channel; a 16-bit
    slice its high byte (``stored >> 8``: the 16-bit range on 0..255).
    """
    image = np.asarray(image)
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 (or uint16) image, got dtype {image.dtype}")
    if image.ndim == 2:
        return np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim == 3 and image.shape[2] == 3:
        return image.copy()
    if image.ndim == 3 and image.shape[2] >= 1:
        return np.repeat(image[:, :, :1], 3, axis=2)
    raise ValueError(f"expected an (H, W) or (H, W, C) image, got shape {image.shape}")


def _check_mask(mask: np.ndarray, shape: tuple[int, int], colours: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim == 3 and mask.shape[2] == 1:
        mask = mask[:, :, 0]
    if mask.ndim != 2 or mask.shape != shape:
        raise ValueError(f"mask shape {mask.shape} does not match image shape {shape}")
    if mask.size and int(mask.max()) >= len(colours):
        raise ValueError(f"mask holds class {int(mask.max())} but only {len(colours)} colours were given")
    if mask.size and int(mask.min()) < 0:
        raise ValueError("mask holds negative class indices")
    return mask.astype(np.intp, copy=False)


def overlay_mask(image: np.ndarray, mask: np.ndarray, colours: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Blend class colours over ``image`` where ``mask > 0`` and outline each class.

    Returns an RGB ``(H, W, 3) uint8`` array. Background pixels (mask 0) keep the image
    value (grayscale replicated to RGB); foreground pixels are
    ``(1 - alpha) * image + alpha * colour``; the 1-pixel inner contour of every class
    region is drawn in the full class colour.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    rgb = to_rgb(image)
    colours = np.asarray(colours, dtype=np.uint8).reshape(-1, 3)
    labels = _check_mask(mask, rgb.shape[:2], colours)
    fg = labels > 0
    if not fg.any():
        return rgb
    out = rgb.astype(np.float32)
    col = colours[labels].astype(np.float32)
    out[fg] = (1.0 - alpha) * out[fg] + alpha * col[fg]
    out = np.clip(np.rint(out), 0, 255).astype(np.uint8)

    # 1-px contour: pixels of class c with a 4-neighbour of another class.
    kernel = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
    for cls in np.unique(labels[fg]):
        region = (labels == cls).astype(np.uint8)
        inner = cv2.erode(region, kernel, borderType=cv2.BORDER_REPLICATE)
        edge = (region > 0) & (inner == 0)
        out[edge] = colours[cls]
    return out


def _title_strip(text: str, width: int) -> np.ndarray:
    strip = np.zeros((_TITLE_HEIGHT, width, 3), dtype=np.uint8)
    if not text or width < 8:
        return strip
    # Shrink the font (down to 0.3) and then truncate so the title fits the panel.
    scale = _TITLE_SCALE
    (tw, th), _ = cv2.getTextSize(text, _TITLE_FONT, scale, _TITLE_THICKNESS)
    while tw > width - 4 and scale > 0.3:
        scale -= 0.05
        (tw, th), _ = cv2.getTextSize(text, _TITLE_FONT, scale, _TITLE_THICKNESS)
    while tw > width - 4 and len(text) > 2:
        text = text[:-3] + ".."
        (tw, th), _ = cv2.getTextSize(text, _TITLE_FONT, scale, _TITLE_THICKNESS)
    x = max(2, (width - tw) // 2)
    y = (_TITLE_HEIGHT + th) // 2
    cv2.putText(strip, text, (x, y), _TITLE_FONT, scale, (255, 255, 255), _TITLE_THICKNESS, cv2.LINE_AA)
    return strip


def hstack_panels(panels: Sequence[np.ndarray], titles: Sequence[str] | None = None, gap: int = 4) -> np.ndarray:
    """Lay panels side by side (RGB ``uint8``), separated by ``gap`` white pixels.

    Grayscale panels are converted to RGB; shorter panels are padded with black at the
    bottom. With ``titles`` each panel gets a black title strip on top (text drawn with
    ``cv2.putText``, clipped to the panel width).
    """
    if not panels:
        raise ValueError("hstack_panels needs at least one panel")
    if gap < 0:
        raise ValueError(f"gap must be >= 0, got {gap}")
    if titles is not None and len(titles) != len(panels):
        raise ValueError(f"got {len(titles)} titles for {len(panels)} panels")
    rgbs = [to_rgb(p) for p in panels]
    height = max(p.shape[0] for p in rgbs)
    columns = []
    for i, panel in enumerate(rgbs):
        if panel.shape[0] < height:
            pad = np.zeros((height - panel.shape[0], panel.shape[1], 3), dtype=np.uint8)
            panel = np.concatenate([panel, pad], axis=0)
        if titles is not None:
            panel = np.concatenate([_title_strip(str(titles[i]), panel.shape[1]), panel], axis=0)
        columns.append(panel)
        if gap and i < len(rgbs) - 1:
            columns.append(np.full((panel.shape[0], gap, 3), _GAP_VALUE, dtype=np.uint8))
    return np.concatenate(columns, axis=1)


def vstack_rows(rows: Sequence[np.ndarray], gap: int = 4) -> np.ndarray:
    """Stack RGB rows vertically with ``gap`` white pixels between them (right-padded black)."""
    if not rows:
        raise ValueError("vstack_rows needs at least one row")
    rgbs = [to_rgb(r) for r in rows]
    width = max(r.shape[1] for r in rgbs)
    parts = []
    for i, row in enumerate(rgbs):
        if row.shape[1] < width:
            pad = np.zeros((row.shape[0], width - row.shape[1], 3), dtype=np.uint8)
            row = np.concatenate([row, pad], axis=1)
        parts.append(row)
        if gap and i < len(rgbs) - 1:
            parts.append(np.full((gap, width, 3), _GAP_VALUE, dtype=np.uint8))
    return np.concatenate(parts, axis=0)


def image_truth_prediction(
    image: np.ndarray, truth: np.ndarray, prediction: np.ndarray, colours: np.ndarray
) -> np.ndarray:
    """Return the 3-panel ``image | ground truth | prediction`` RGB figure."""
    return hstack_panels(
        [to_rgb(image), overlay_mask(image, truth, colours), overlay_mask(image, prediction, colours)],
        titles=["image", "ground truth", "prediction"],
    )


def save_png(path: str | Path, rgb: np.ndarray) -> Path:
    """Write an RGB (or grayscale) ``uint8`` array to ``path`` as PNG; creates parent folders."""
    path = Path(path)
    arr = np.asarray(rgb)
    if arr.dtype != np.uint8:
        raise ValueError(f"save_png expects uint8, got {arr.dtype}")
    if arr.ndim == 3 and arr.shape[2] == 3:
        arr = cv2.cvtColor(arr, cv2.COLOR_RGB2BGR)
    elif arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    elif arr.ndim != 2:
        raise ValueError(f"save_png expects (H, W) or (H, W, 3), got shape {arr.shape}")
    path.parent.mkdir(parents=True, exist_ok=True)

    with atomic_write_path(path) as tmp:  # complete or absent, never half a file
        if not cv2.imwrite(str(tmp), arr):
            raise OSError(f"could not write PNG {path}")
    return path
