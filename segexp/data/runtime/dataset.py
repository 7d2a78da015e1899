"""A configured dataset: its folder, its slice pairs per split, its mask decoder and colours.

:func:`open_dataset` turns the validated ``dataset`` config group into a
:class:`SliceDataset`, generating the built-in phantom first when configured.
It lists files only (no image is read), so it is cheap to call at start-up.
:func:`list_split_pairs` is the one listing of a dataset's splits: strict for
training, tolerant (a problem collector) for ``segexp-check``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from segexp.core.errors import ConfigError
from segexp.data.io.intensity import UINT8_ENCODING, InputEncoding
from segexp.data.io.layout import resolved_section
from segexp.data.io.problems import Problem, Problems, report
from segexp.data.io.rgb_map import default_palette
from segexp.data.io.slices import IMAGE_SUFFIXES, DataError, MaskDecoder, SlicePair, split_pairs
from segexp.data.io.splits import SPLITS
from segexp.data.phantom import ensure_phantom_slices


@dataclass(frozen=True)
class SliceStorage:
    """How a dataset's images are stored: the model input's ``encoding``, the ``channels`` (None: unknown,
    plain image files) and the 2.5D ``context_slices`` per side each image carries
    (:mod:`segexp.data.io.context`)."""

    encoding: InputEncoding = UINT8_ENCODING
    channels: int | None = None
    context_slices: int = 0


@dataclass
class SliceDataset:
    """Slice pairs of each split plus everything needed to read and draw their masks, and how its images are
    stored (``storage``: :func:`dataset_storage`)."""

    name: str
    root: Path
    class_names: list[str]
    decoder: MaskDecoder
    colours: np.ndarray
    pairs: dict[str, list[SlicePair]] = field(default_factory=dict)
    storage: SliceStorage = field(default_factory=SliceStorage)

    @property
    def encoding(self) -> InputEncoding:
        """How the model's input layer decodes the stored images."""
        return self.storage.encoding

    @property
    def channels(self) -> int | None:
        """The stored channels where ``dataset.json`` says, else None."""
        return self.storage.channels

    @property
    def context_slices(self) -> int:
        """The 2.5D neighbours per side each image carries."""
        return self.storage.context_slices

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
    """List the train/valid/test pairs of dataset config ``d`` (:func:`list_split_pairs`, strict).

    Raises :class:`DataError` naming the key or file for a missing folder, an unpaired
    file, or a case found in two splits.
    """
    root = Path(d["root"]).expanduser()
    ensure_phantom_slices(root, d.get("phantom"))
    pairs = list_split_pairs(d)
    decoder, colours = mask_decoder(d)
    storage = dataset_storage(root)
    check_context_slices(d.get("context_slices"), storage, root)
    return SliceDataset(d["name"], root, list(d["class_names"]), decoder, colours, pairs, storage)


def dataset_storage(root: Path) -> SliceStorage:
    """How the images under ``root`` are stored: ``dataset.json``'s ``storage`` (segexp-prepare; the stored
    dtype, the model input's ``value = stored * scale + offset``, the channels and the 2.5D context), else
    8-bit images decoded by 1/255 with their channels unknown and no context. A ``storage`` that is not one
    raises :class:`DataError`."""
    try:
        manifest = json.loads((Path(root) / "dataset.json").read_text())
    except (OSError, ValueError):
        return SliceStorage()  # no dataset.json (or the class table reader reports a broken one)
    storage = manifest.get("storage") if isinstance(manifest, dict) else None
    if storage is None:
        return SliceStorage()
    try:
        context = int(storage.get("context_slices", 0))
        if context < 0:
            raise ValueError(f"context_slices {context} < 0")
        return SliceStorage(InputEncoding.from_dict(storage), int(storage["channels"]), context)
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise DataError(f"{root}/dataset.json: storage is not a slice storage entry ({err})") from err


def check_context_slices(wanted: int | None, storage: SliceStorage, root: Path) -> None:
    """``dataset.context_slices`` must be what the slices carry (null: whatever they carry): a
    :class:`~segexp.core.errors.ConfigError` naming the key, the stored value and the command that makes it."""
    if wanted is None or int(wanted) == storage.context_slices:
        return
    held = (
        f"carry {storage.context_slices} neighbour(s) per side (dataset.json's storage)"
        if storage.context_slices
        else "carry no neighbouring slices (plain slices)"
    )
    raise ConfigError(
        f"dataset.context_slices={wanted}: the slices in {root} {held}; prepare them with "
        f"`segexp-prepare context_slices={wanted} out_dir=<new folder>` and train on that folder, or set "
        f"dataset.context_slices={storage.context_slices if storage.context_slices else 'null'}"
    )


def list_split_pairs(d: Mapping[str, Any], problems: Problems | None = None) -> dict[str, list[SlicePair]]:
    """The slice pairs of every split of dataset config ``d``: what training reads and ``segexp-check`` checks.

    Problems: a missing ``dataset.root``, each listing problem of a split
    (:func:`segexp.data.io.slices.split_pairs`), an empty ``train`` or ``valid`` split and a
    case in two splits; a ``test`` split without images is allowed. Strict without
    ``problems`` (:class:`DataError` at the first), else recorded (:mod:`segexp.data.io.problems`).
    """
    root = Path(d["root"]).expanduser()
    pairs: dict[str, list[SlicePair]] = {split: [] for split in SPLITS}
    if not root.is_dir():
        report(problems, Problem("dataset.root", f"folder {root} does not exist"))
        return pairs
    try:
        d = resolved_section(d)  # layout auto / a flat folder without cases: the split the run config records
    except DataError as err:
        if problems is None:
            raise
        report(problems, Problem("dataset.layout", str(err)))
        return pairs
    for split in SPLITS:
        if _absent_test_split(d, root, split):
            continue  # a test split is optional
        try:
            pairs[split] = split_pairs(
                root,
                split,
                layout=d["layout"],
                splits=d["splits"],
                cases=d["cases"],
                case_pattern=d["case_pattern"],
                images_dir=d["images_dir"],
                masks_dir=d["masks_dir"],
                problems=problems,
            )
        except DataError as err:
            raise DataError(f"dataset split {split!r}: {err}") from err
    for split in ("train", "valid"):
        if not pairs[split]:
            report(problems, Problem(str(root), f"the {split!r} split has no slices"))
    leaks = [
        Problem(
            str(root),
            f"case {case!r} has slices in both the {first!r} and {split!r} splits: split by patient, never by slice",
        )
        for case, first, split in leaked_cases(pairs)
    ]
    report(problems, leaks)
    return pairs


def _absent_test_split(d: Mapping[str, Any], root: Path, split: str) -> bool:
    """Whether ``split`` is a ``test`` split folder without images (layout ``splits``)."""
    if d["layout"] != "splits" or split != "test":
        return False
    folder = root / d["splits"][split] / d["images_dir"]
    return not (folder.is_dir() and any(p.suffix.lower() in IMAGE_SUFFIXES for p in folder.iterdir()))


def leaked_cases(pairs: Mapping[str, Sequence[SlicePair]]) -> list[tuple[str, str, str]]:
    """``(case, first split, other split)`` for every patient whose slices are in two splits."""
    seen: dict[str, str] = {}
    leaks = []
    for split in SPLITS:
        for case in sorted({p.case for p in pairs.get(split, [])}):
            if case in seen:
                leaks.append((case, seen[case], split))
            seen.setdefault(case, split)
    return leaks
