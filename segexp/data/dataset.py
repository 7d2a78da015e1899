"""A configured dataset: its folder, its slice pairs per split, its mask decoder and colours.

:func:`open_dataset` turns the validated ``dataset`` config group into a
:class:`SliceDataset`, generating the built-in phantom first when configured.
It lists files only (no image is read), so it is cheap to call at start-up.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from segexp.data.layout import resolved_section
from segexp.data.phantom import ensure_phantom_slices
from segexp.data.rgb_map import default_palette
from segexp.data.slices import (
    IMAGE_SUFFIXES,
    DataError,
    MaskDecoder,
    SlicePair,
    split_pairs,
)


@dataclass
class SliceDataset:
    """Slice pairs of each split plus everything needed to read and draw their masks."""

    name: str
    root: Path
    class_names: list[str]
    decoder: MaskDecoder
    colours: np.ndarray
    pairs: dict[str, list[SlicePair]] = field(default_factory=dict)

    def cases(self, split: str) -> list[str]:
        """Sorted patient ids of ``split``."""
        return sorted({p.case for p in self.pairs.get(split, [])})


def mask_decoder(d: Mapping[str, Any]) -> tuple[MaskDecoder, np.ndarray]:
    """The mask decoder of dataset config ``d`` and the class colours ``(C, 3) uint8`` (rgb_map or a palette)."""
    class_names = list(d["class_names"])
    colours = (
        np.asarray(list(d["rgb_map"].values()), np.uint8)
        if d.get("rgb_map") is not None
        else default_palette(len(class_names))
    )
    decoder = MaskDecoder(
        d["mask_format"],
        num_classes=len(class_names),
        colours=colours if d["mask_format"] == "rgb" else None,
        threshold=d["binary_threshold"],
    )
    return decoder, colours


def open_dataset(d: Mapping[str, Any], num_classes: int) -> SliceDataset:
    """List the train/valid/test pairs of dataset config ``d`` and check patients do not leak.

    Raises :class:`DataError` naming the key or file for a missing folder, an unpaired
    file, or a case found in two splits.
    """
    root = Path(d["root"]).expanduser()
    ensure_phantom_slices(root, d.get("phantom"))
    if not root.is_dir():
        raise DataError(f"dataset.root: folder {root} does not exist")
    d = resolved_section(d)  # layout auto / flat without cases: the same split the run config records
    class_names = list(d["class_names"])
    decoder, colours = mask_decoder(d)
    dataset = SliceDataset(d["name"], root, class_names, decoder, colours)
    for split in ("train", "valid", "test"):
        if d["layout"] == "splits" and split == "test" and not _has_images(root / d["splits"][split] / d["images_dir"]):
            dataset.pairs[split] = []  # a test split is optional for training
            continue
        try:
            dataset.pairs[split] = split_pairs(
                root,
                split,
                layout=d["layout"],
                splits=d["splits"],
                cases=d["cases"],
                case_pattern=d["case_pattern"],
                images_dir=d["images_dir"],
                masks_dir=d["masks_dir"],
            )
        except DataError as err:
            raise DataError(f"dataset split {split!r}: {err}") from err
    for split in ("train", "valid"):
        if not dataset.pairs[split]:
            raise DataError(f"dataset split {split!r} under {root} has no slices")
    _check_no_patient_leak(dataset)
    return dataset


def _has_images(folder: Path) -> bool:
    return folder.is_dir() and any(p.suffix.lower() in IMAGE_SUFFIXES for p in folder.iterdir())


def leaked_cases(pairs: Mapping[str, Sequence[SlicePair]]) -> list[tuple[str, str, str]]:
    """``(case, first split, other split)`` for every patient whose slices are in two splits."""
    seen: dict[str, str] = {}
    leaks = []
    for split in ("train", "valid", "test"):
        for case in sorted({p.case for p in pairs.get(split, [])}):
            if case in seen:
                leaks.append((case, seen[case], split))
            seen.setdefault(case, split)
    return leaks


def _check_no_patient_leak(dataset: SliceDataset) -> None:
    for case, first, split in leaked_cases(dataset.pairs)[:1]:
        raise DataError(
            f"case {case!r} has slices in both the {first!r} and {split!r} splits of "
            f"{dataset.root}: split by patient, never by slice"
        )
