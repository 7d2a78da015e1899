"""The phantom as a slice-folder dataset: one PNG image and one RGB mask per axial slice.

Layout: ``<root>/<split>/{images,masks}/<case>_<zzz>.png`` plus the manifest ``phantom.json``,
cached by :mod:`segexp.data.phantom.cache` (regenerated only when the parameters change).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import cv2
import numpy as np

from segexp.data.io.intensity import window_to_uint8
from segexp.data.io.rgb_map import encode_rgb_mask
from segexp.data.phantom.anatomy import PHANTOM_VERSION, check_args, make_phantom_volume
from segexp.data.phantom.cache import GeneratedFolder, ensure_generated
from segexp.data.phantom.cases import case_plan
from segexp.data.phantom.classes import PHANTOM_CLASS_NAMES, PHANTOM_CLASSES, PHANTOM_COLOURS
from segexp.data.phantom.geometry import phantom_spacing

__all__ = [
    "DEFAULT_PHANTOM_CASES",
    "PHANTOM_GENERATOR",
    "PHANTOM_MANIFEST",
    "PHANTOM_WINDOW",
    "SLICE_FOLDER",
    "ensure_phantom_slices",
    "slice_params",
    "write_phantom_dataset",
    "write_slices",
]

PHANTOM_WINDOW: tuple[float, float] = (200.0, 800.0)
"""Default ``(level, width)`` in HU: a CTA window, -200..600 HU mapped to 0..255."""

PHANTOM_MANIFEST = "phantom.json"
PHANTOM_GENERATOR = "segexp.data.phantom"
"""The manifest's ``generator``: a stored value (kept when modules move), not a module name."""

DEFAULT_PHANTOM_CASES: Mapping[str, int] = MappingProxyType({"train": 8, "valid": 2, "test": 2})


def _check_split_name(split: str) -> None:
    if not isinstance(split, str) or not split or split in {".", ".."} or any(c in split for c in "/\\"):
        raise ValueError(f"split names must be plain folder names, got {split!r}")
    if split == PHANTOM_MANIFEST or split.startswith("."):
        raise ValueError(f"split name {split!r} is reserved")


def _is_complete(root: Path, manifest: Mapping[str, Any]) -> bool:
    """All slice files the manifest lists are present."""
    try:
        num_slices = int(manifest["params"]["num_slices"])
        by_split: dict[str, set[str]] = {}
        for case in manifest["cases"]:
            names = by_split.setdefault(case["split"], set())
            names.update(f"{case['id']}_{z:03d}.png" for z in range(num_slices))
        for split in manifest["splits"]:
            for sub in ("images", "masks"):
                folder = root / split / sub
                if not folder.is_dir() or not by_split.get(split, set()) <= set(os.listdir(folder)):
                    return False
    except (KeyError, TypeError, ValueError, OSError):
        return False
    return True


SLICE_FOLDER = GeneratedFolder(
    manifest=PHANTOM_MANIFEST,
    generator=PHANTOM_GENERATOR,
    entries_key="splits",
    what="phantom",
    complete=_is_complete,
    check_entry=_check_split_name,
)
"""The slice dataset as a generated folder: ``phantom.json`` owns the split folders."""


def slice_params(cases: Mapping[str, int], num_slices: int, size: int, seed: int) -> dict[str, Any]:
    """The manifest's ``params``: a dataset with other params is regenerated."""
    return {
        "version": PHANTOM_VERSION,
        "seed": int(seed),
        "size": int(size),
        "num_slices": int(num_slices),
        # A list keeps the order, which decides the case numbering.
        "cases": [[str(split), int(n)] for split, n in cases.items()],
        "window": [float(PHANTOM_WINDOW[0]), float(PHANTOM_WINDOW[1])],
        "class_names": list(PHANTOM_CLASS_NAMES),
        "colours": [list(c) for c in PHANTOM_COLOURS],
    }


def _imwrite(path: Path, image: np.ndarray) -> None:
    if not cv2.imwrite(str(path), image):
        raise OSError(f"could not write {path}")


def write_slices(folder: Path, cases: Mapping[str, int], num_slices: int, size: int, seed: int) -> dict[str, Any]:
    """Write the split folders into the empty ``folder`` (no cache); returns the manifest fields after ``splits``."""
    plan = case_plan(cases, seed)
    for split in cases:
        (folder / split / "images").mkdir(parents=True)
        (folder / split / "masks").mkdir(parents=True)
    for case in plan:
        hu, labels = make_phantom_volume(case["seed"], size=size, num_slices=num_slices)
        image = window_to_uint8(hu, *PHANTOM_WINDOW)
        for z in range(num_slices):
            name = f"{case['id']}_{z:03d}.png"
            _imwrite(folder / case["split"] / "images" / name, np.ascontiguousarray(image[:, :, z].T))
            rgb = encode_rgb_mask(np.ascontiguousarray(labels[:, :, z].T), PHANTOM_COLOURS)
            _imwrite(folder / case["split"] / "masks" / name, np.ascontiguousarray(rgb[:, :, ::-1]))
    return {
        "spacing_mm": list(phantom_spacing(size, num_slices)),
        "classes": [{"index": i, "name": n, "colour": list(c)} for i, (n, c) in enumerate(PHANTOM_CLASSES)],
        "cases": plan,
    }


def write_phantom_dataset(
    root: Path,
    *,
    cases: Mapping[str, int] = DEFAULT_PHANTOM_CASES,
    num_slices: int = 24,
    size: int = 128,
    seed: int = 0,
) -> Path:
    """Write (or reuse) a phantom dataset in the slice-folder layout and return ``root``.

    Layout: ``<root>/<split>/images/<case>_<zzz>.png`` (8-bit grayscale, HU windowed
    with :data:`PHANTOM_WINDOW`) and ``<root>/<split>/masks/<case>_<zzz>.png`` (RGB
    colours of :data:`~segexp.data.phantom.classes.PHANTOM_COLOURS`), one axial slice per file
    (``volume[:, :, z].T``), cases ``phantom001, phantom002, ...`` numbered in the
    order of ``cases``; each case seed is derived from ``seed`` and its number. A
    manifest ``<root>/phantom.json`` records all parameters.

    * ``root`` holds a complete dataset with the same parameters: nothing is written.
    * ``root`` holds a phantom dataset with other parameters: the split folders and
      manifest it wrote are deleted and regenerated; other files are left alone (a
      new split folder whose name is taken by a folder we did not write:
      :class:`FileExistsError`).
    * ``root`` is non-empty without a phantom manifest: :class:`FileExistsError`.

    The dataset is generated in a temporary sibling folder and moved into place at
    the end; the manifest is marked complete only once all files are in place.
    """
    root = Path(root)
    cases = dict(cases)
    for split, count in cases.items():
        _check_split_name(split)
        if int(count) != count or count < 0:
            raise ValueError(f"case count for split {split!r} must be a non-negative integer, got {count!r}")
    check_args(seed, size, num_slices)
    params = slice_params(cases, num_slices, size, seed)
    ensure_generated(
        SLICE_FOLDER, root, params, list(cases), lambda tmp: write_slices(tmp, cases, num_slices, size, seed)
    )
    return root


def ensure_phantom_slices(root: Path, spec: Mapping[str, Any] | None) -> None:
    """Write the phantom slice dataset of ``dataset.phantom`` (``spec``) into ``root`` unless it is there.

    The one place a slice config's phantom is materialised (training, evaluation, ``segexp-check``);
    nothing happens when ``spec`` is None (a real dataset).
    """
    if spec is not None:
        write_phantom_dataset(
            Path(root), cases=dict(spec["cases"]), num_slices=spec["num_slices"], size=spec["size"], seed=spec["seed"]
        )
