"""Colour <-> class-index codec for segmentation masks.

Inside segexp a mask is always a ``uint8`` array of class indices (H, W). Colours
exist only at the file boundary: a colour mask is decoded through an ``rgb_map``
(class index ``i`` has colour ``colours[i]``) and encoded back the same way.
Both directions are vectorised through a 24-bit lookup (no per-pixel Python).
"""

from __future__ import annotations

import colorsys
import functools
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from segexp.core.errors import MaskColourError

#: An rgb_map's colours, class index -> ``[r, g, b]``: nested sequences or a ``(C, 3)`` array.
Colours = Sequence[Sequence[int]] | np.ndarray


def colour_table(colours: Colours) -> np.ndarray:
    """Return the rgb_map as a ``(num_classes, 3) uint8`` array, checking each colour."""
    table = np.asarray(colours, dtype=np.int64)
    if table.ndim != 2 or table.shape[1] != 3:
        raise ValueError(f"rgb_map colours must be [r, g, b] triples, got {list(colours)!r}")
    if table.min() < 0 or table.max() > 255:
        raise ValueError(f"rgb_map colours must lie in 0..255, got {list(colours)!r}")
    packed = _pack(table)
    if len(np.unique(packed)) != len(packed):
        raise ValueError(f"rgb_map colours must be distinct, got {list(colours)!r}")
    return table.astype(np.uint8)


def _pack(rgb: np.ndarray) -> np.ndarray:
    """Pack ``[..., 3]`` RGB values into one int per pixel: ``r << 16 | g << 8 | b``."""
    rgb = rgb.astype(np.int64)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def decode_rgb_mask(rgb: np.ndarray, colours: Colours, source: str | Path = "<array>") -> np.ndarray:
    """Map an ``(H, W, 3)`` RGB mask to ``(H, W) uint8`` class indices.

    Colours must match the rgb_map exactly; any other colour raises
    :class:`MaskColourError` naming ``source`` and the unknown colours.
    """
    table = colour_table(colours)
    if rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise MaskColourError(f"{source}: expected an RGB mask (H, W, 3), got shape {rgb.shape}")
    if len(table) < _UNKNOWN:
        # One gather through a 2^24-entry table (16 MiB, built once per rgb_map and process):
        # ~4x faster than a sorted search, and this runs for every mask the loader reads.
        rgb32 = rgb.astype(np.int32)
        packed = (rgb32[..., 0] << 16) | (rgb32[..., 1] << 8) | rgb32[..., 2]
        index = _colour_lut(table.tobytes())[packed]
        if (index == _UNKNOWN).any():
            _raise_unknown(_pack(rgb), index != _UNKNOWN, table, source)
        return index
    packed = _pack(rgb)
    keys = _pack(table)
    order = np.argsort(keys)
    sorted_keys = keys[order]
    pos = np.clip(np.searchsorted(sorted_keys, packed), 0, len(keys) - 1)
    found = sorted_keys[pos] == packed
    if not found.all():
        _raise_unknown(packed, found, table, source)
    return order[pos].astype(np.uint8)


#: Lookup-table value of a colour that is not in the rgb_map.
_UNKNOWN = 255


@functools.lru_cache(maxsize=8)
def _colour_lut(table_bytes: bytes) -> np.ndarray:
    """``lut[r << 16 | g << 8 | b]`` = class index, or :data:`_UNKNOWN`, for an rgb_map given as bytes."""
    table = np.frombuffer(table_bytes, np.uint8).reshape(-1, 3)
    lut = np.full(1 << 24, _UNKNOWN, np.uint8)
    lut[_pack(table)] = np.arange(len(table), dtype=np.uint8)
    lut.flags.writeable = False
    return lut


def _raise_unknown(packed: np.ndarray, found: np.ndarray, table: np.ndarray, source: str | Path) -> None:
    """Raise :class:`MaskColourError` naming ``source`` and the colours of the pixels not ``found``."""
    bad = np.unique(packed[~found])
    shown = ", ".join(f"({v >> 16}, {(v >> 8) & 255}, {v & 255})" for v in bad[:8])
    more = f" and {len(bad) - 8} more" if len(bad) > 8 else ""
    raise MaskColourError(
        f"{source}: {int((~found).sum())} pixels have colours not in the rgb_map: "
        f"{shown}{more}; known colours are {table.tolist()}"
    )


def encode_rgb_mask(mask: np.ndarray, colours: Colours) -> np.ndarray:
    """Map ``(H, W)`` class indices to an ``(H, W, 3) uint8`` RGB mask."""
    table = colour_table(colours)
    if mask.size and int(mask.max()) >= len(table):
        raise ValueError(f"mask holds class {int(mask.max())} but the rgb_map has {len(table)} colours")
    return table[mask]


# Hand-picked, mutually distinct colours for the first classes (after black background).
_BASE_COLOURS = (
    (230, 25, 75),  # red
    (60, 180, 75),  # green
    (0, 130, 200),  # blue
    (255, 225, 25),  # yellow
    (245, 130, 48),  # orange
    (145, 30, 180),  # purple
    (70, 240, 240),  # cyan
    (240, 50, 230),  # magenta
    (210, 245, 60),  # lime
    (250, 190, 212),  # pink
    (0, 128, 128),  # teal
    (170, 110, 40),  # brown
)


def default_palette(num_classes: int) -> np.ndarray:
    """Return a ``(num_classes, 3) uint8`` palette: class 0 black, the others distinct colours.

    The first 12 foreground classes use a fixed hand-picked set; further classes get
    hues spread by the golden ratio so neighbouring indices stay distinguishable.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    palette = np.zeros((num_classes, 3), dtype=np.uint8)
    for cls in range(1, num_classes):
        k = cls - 1
        if k < len(_BASE_COLOURS):
            palette[cls] = _BASE_COLOURS[k]
        else:
            hue = (k * 0.618033988749895) % 1.0
            sat = 0.65 + 0.35 * ((k // 7) % 2)
            r, g, b = colorsys.hsv_to_rgb(hue, sat, 0.95)
            palette[cls] = (round(r * 255), round(g * 255), round(b * 255))
    return palette


def class_colours(class_names: Sequence[str], rgb_map: Mapping[str, Sequence[int]] | None) -> np.ndarray:
    """``(num_classes, 3) uint8`` colours of the classes: the dataset's ``rgb_map`` when it has one (colour masks),
    else :func:`default_palette`."""
    if rgb_map:
        return np.asarray(list(rgb_map.values()), np.uint8)
    return default_palette(len(class_names))
