"""Zero-config class tables: ``dataset.class_names`` / ``rgb_map`` from the config, a ``dataset.json`` or the masks.

:func:`resolve_class_table` finds the class table of a dataset config section, first
match wins:

1. **the config**: ``dataset.class_names`` (with ``rgb_map`` as given), or, with only
   ``dataset.rgb_map`` given, its keys in order;
2. **a ``dataset.json`` beside the data** (``<dataset.root>/dataset.json``):

   * nnU-Net v2 ``{"labels": {"background": 0, "LV": 1}}`` (name -> value),
   * nnU-Net v1 ``{"labels": {"0": "background", "1": "LV"}}`` (value -> name),
   * segexp-prepare's manifest ``{"class_names": [...], "rgb_map": {...}}``;

   names are ordered by value, and the values must be ``0 .. n-1`` (0 the background).
   Colours for ``mask_format: rgb`` come from an optional name -> ``[r, g, b]`` map under
   ``"rgb_map"``, ``"colors"``, ``"colours"`` or ``"rgb"``; without one the colours are
   discovered from the masks (below), must be exactly ``n``, and are assigned to the
   values in sorted order (black first, then by ``r << 16 | g << 8 | b``) — an assumption
   recorded in :attr:`ClassTable.notes`;
3. **the train masks** (every mask of the train split, read in a thread pool):

   * ``rgb``: the exact set of colours; black ``(0, 0, 0)`` must be there and is the
     background, the others become ``class_1``, ``class_2`` ... in order of packed value;
   * ``index``: the pixel values, which must be ``0 .. max`` without gaps (segexp decodes
     the value as the class index); ``0`` is ``background``, value ``v`` is ``class_<v>``;
   * ``binary``: ``[background, foreground]`` (nothing is read).

   The valid and test masks are read too: a colour or value found only there is an error
   (it would have no class). Masks that look anti-aliased or blended are an error: more
   than :data:`MAX_COLOURS` colours (values), or more than :data:`MANY_COLOURS` of them
   with one covering less than :data:`RARE_FRACTION` of the train mask pixels.

Masks are read with :func:`segexp.data.io.slices.read_image_file` (rgb) and
:class:`segexp.data.io.slices.MaskDecoder` (index), the readers of training; nothing is
cached. Every failure raises :class:`ClassTableError` (a :class:`DataError`) naming the
file, colours or values. :func:`with_class_table` fills a config section in.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict, read_write

from segexp.config.resolvers import usable_cores
from segexp.data.io.slices import DataError, MaskDecoder, SlicePair, read_image_file
from segexp.data.io.splits import SPLITS
from segexp.data.runtime.dataset import list_split_pairs

DATASET_JSON = "dataset.json"
#: Keys of a dataset.json that may hold the class colours (name -> [r, g, b]).
COLOUR_KEYS = ("rgb_map", "colors", "colours", "rgb")
#: More distinct colours (index values) than this in the masks: anti-aliased or blended.
MAX_COLOURS = 32
#: More colours than this, one of them rarer than :data:`RARE_FRACTION`: anti-aliased or blended.
MANY_COLOURS = 16
#: A colour covering less than this fraction of all train mask pixels is rare.
RARE_FRACTION = 1e-4
#: Class indices are uint8: at most 256 classes.
MAX_CLASSES = 256
_SHOWN = 8  # colours / values named in one message
_FILES = 3  # files named per colour / value


class ClassTableError(DataError):
    """No class table can be resolved from the data; the message names the file, colours or values."""


@dataclass
class ClassTable:
    """Class names (index = position, 0 the background), their colours and where they came from.

    ``colours``: the exact mask colour ``[r, g, b]`` of each class in index order (rgb masks;
    ``None`` when no colour is known, e.g. index masks). ``source``: ``config``,
    ``dataset.json <path>`` or ``masks (<n> train masks)`` (``mask_format binary`` for binary
    masks). ``notes``: assumptions made and things worth a look, for the log.
    """

    names: list[str]
    colours: list[list[int]] | None
    source: str
    notes: list[str] = field(default_factory=list)

    def to_dataset_overrides(self) -> dict[str, Any]:
        """``{'class_names': [...], 'rgb_map': {name: [r, g, b]} | None}`` for the ``dataset`` section."""
        rgb_map = None if self.colours is None else {n: list(c) for n, c in zip(self.names, self.colours)}
        return {"class_names": list(self.names), "rgb_map": rgb_map}

    def lines(self) -> list[str]:
        """``class table from <source>: background (0,0,0), class_1 (255,0,255), ...`` plus one line per note."""
        if self.colours is not None:
            entries = [f"{n} {_fmt(c)}" for n, c in zip(self.names, self.colours)]
        else:
            entries = [f"{n} = {i}" for i, n in enumerate(self.names)]
        return [f"class table from {self.source}: " + ", ".join(entries)] + [f"  note: {n}" for n in self.notes]


# --------------------------------------------------------------------------- entry points


def resolve_class_table(
    d: Mapping[str, Any],
    pairs: Mapping[str, Sequence[SlicePair]] | None = None,
    workers: int | None = None,
) -> ClassTable:
    """The class table of dataset config section ``d`` (dict or DictConfig): config, else dataset.json, else masks.

    ``d['class_names']`` may be ``None`` or missing (``???``), ``d['rgb_map']`` ``None``.
    ``pairs`` (split -> pairs) replaces the listing of the splits (``segexp-check`` passes its
    own, tolerant listing; else :func:`segexp.data.runtime.dataset.list_split_pairs`); ``workers``
    threads read the masks (default: up to 8 cores).
    Raises :class:`ClassTableError` (or :class:`DataError` for the folder listing).
    """
    names, rgb_map = _value(d, "class_names"), _value(d, "rgb_map")
    if names is not None:
        colours = None if rgb_map is None else [list(c) for c in rgb_map.values()]
        return ClassTable([str(n) for n in names], colours, "config")
    if rgb_map is not None:
        return ClassTable(
            [str(n) for n in rgb_map], [list(c) for c in rgb_map.values()], "config (dataset.rgb_map keys)"
        )
    fmt = d["mask_format"]
    if fmt not in ("rgb", "index", "binary"):
        raise ClassTableError(f"dataset.mask_format: expected rgb, index or binary, got {fmt!r}")
    root = Path(str(d["root"])).expanduser()
    if not root.is_dir():
        raise DataError(f"dataset.root: folder {root} does not exist")
    scanner = _Scanner(d, root, pairs, workers)
    manifest = root / DATASET_JSON
    if manifest.is_file():
        return _from_dataset_json(manifest, fmt, scanner)
    if fmt == "binary":
        return ClassTable(["background", "foreground"], None, "mask_format binary")
    scan = scanner.scan(fmt)
    source = f"masks ({scan.num_train} train masks)"
    if fmt == "rgb":
        colours = _discovered_colours(scan)
        names = ["background"] + [f"class_{i}" for i in range(1, len(colours))]
        return ClassTable(names, colours, source, scan.notes + _rare_notes(scan, names))
    values = _discovered_values(scan)
    names = ["background"] + [f"class_{v}" for v in values[1:]]
    return ClassTable(names, None, source, scan.notes + _rare_notes(scan, names))


def with_class_table(
    d: DictConfig, pairs: Mapping[str, Sequence[SlicePair]] | None = None, workers: int | None = None
) -> tuple[DictConfig, ClassTable]:
    """A copy of dataset section ``d`` with ``class_names`` and ``rgb_map`` filled in, and the table.

    A table given in the config leaves the copy as it is. The copy keeps ``d``'s flags
    (struct, readonly) and its parent, so its interpolations still resolve; assign it back
    (``cfg.dataset = section``) before the config is validated.
    """
    table = resolve_class_table(d, pairs, workers)
    section = copy.deepcopy(d)
    if table.source != "config":
        with read_write(section), open_dict(section):
            for key, value in table.to_dataset_overrides().items():
                section[key] = value
    return section, table


# --------------------------------------------------------------------------- dataset.json


def _from_dataset_json(path: Path, fmt: str, scanner: _Scanner) -> ClassTable:
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as err:
        raise ClassTableError(f"{path}: cannot read it ({err})") from err
    except ValueError as err:
        raise ClassTableError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(manifest, dict):
        raise ClassTableError(f"{path}: expected a JSON object, got {type(manifest).__name__}")
    if "labels" in manifest:
        by_value = _nnunet_labels(path, manifest["labels"])
    elif isinstance(manifest.get("class_names"), list):  # segexp-prepare's manifest
        by_value = {i: str(n) for i, n in enumerate(manifest["class_names"])}
    else:
        raise ClassTableError(
            f'{path}: no class table in it: expected nnU-Net\'s "labels" ({{"background": 0, "LV": 1}}) or '
            'segexp-prepare\'s "class_names"; fix it, or give dataset.class_names (and dataset.rgb_map)'
        )
    values = sorted(by_value)
    if values != list(range(len(values))):
        raise ClassTableError(
            f"{path}: label values must be 0..n-1 without gaps (0 the background), got {values}; segexp reads the "
            "value as the class index"
        )
    names = [by_value[v] for v in values]
    if len(set(names)) != len(names):
        raise ClassTableError(f"{path}: label names must be unique, got {names}")
    if len(names) < 2:
        raise ClassTableError(f"{path}: need background plus at least one class, got {names}")
    if len(names) > MAX_CLASSES:
        raise ClassTableError(f"{path}: {len(names)} labels, but segexp holds at most {MAX_CLASSES} classes (uint8)")
    if fmt == "binary" and len(names) != 2:
        raise ClassTableError(f"{path}: dataset.mask_format binary has 2 classes, but the file lists {names}")
    source = f"dataset.json {path}"
    colours = _json_colours(path, manifest, names)
    if colours is not None or fmt != "rgb":
        return ClassTable(names, colours, source)
    scan = scanner.scan("rgb")
    found = _discovered_colours(scan, expected=len(names), manifest=path)
    note = (
        f"{path} gives no colours: the {len(found)} mask colours, sorted (black first, then by r<<16|g<<8|b), "
        f"were assigned to the labels in value order: {', '.join(f'{n} {_fmt(c)}' for n, c in zip(names, found))}; "
        f'if that is wrong, add "colors": {{name: [r, g, b]}} to it or give dataset.rgb_map'
    )
    return ClassTable(names, found, source, scan.notes + [note] + _rare_notes(scan, names))


def _nnunet_labels(path: Path, labels: Any) -> dict[int, str]:
    """Value -> name of nnU-Net's ``labels``: v2 ``{name: value}`` or v1 ``{"value": name}``."""
    if not isinstance(labels, dict) or not labels:
        raise ClassTableError(f'{path}: "labels" must be a non-empty object, got {labels!r}')
    if all(isinstance(k, str) and k.strip().isdigit() and isinstance(v, str) for k, v in labels.items()):
        return {int(k): v for k, v in labels.items()}  # nnU-Net v1
    by_value: dict[int, str] = {}
    for name, value in labels.items():
        if isinstance(value, (list, tuple)):
            raise ClassTableError(f"{path}: label {name!r} is a region ({value}); segexp reads one value per class")
        if isinstance(value, bool) or not isinstance(value, int):
            raise ClassTableError(
                f"{path}: label {name!r} has value {value!r}; expected nnU-Net v2 {{name: integer value}} "
                'or v1 {"value": name}'
            )
        if value in by_value:
            raise ClassTableError(f"{path}: labels {by_value[value]!r} and {name!r} share the value {value}")
        by_value[value] = name
    return by_value


def _json_colours(path: Path, manifest: dict[str, Any], names: list[str]) -> list[list[int]] | None:
    key = next((k for k in COLOUR_KEYS if isinstance(manifest.get(k), dict)), None)
    if key is None:
        return None
    table = manifest[key]
    if set(table) != set(names):
        raise ClassTableError(f'{path}: "{key}" must give a colour for each label {names}, got {list(table)}')
    colours = []
    for name in names:
        c = table[name]
        if (
            not isinstance(c, list)
            or len(c) != 3
            or any(isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 255 for v in c)
        ):
            raise ClassTableError(f'{path}: "{key}".{name} must be [r, g, b] in 0..255, got {c!r}')
        colours.append(list(c))
    if len({tuple(c) for c in colours}) != len(colours):
        raise ClassTableError(f'{path}: "{key}" colours must be distinct, got {colours}')
    return colours


# --------------------------------------------------------------------------- reading the masks


@dataclass
class _Scan:
    """Colours (packed ``r << 16 | g << 8 | b``) or index values found per split."""

    kind: str  # "rgb" | "index"
    values: dict[str, np.ndarray]  # split -> sorted distinct values
    pixels: dict[str, np.ndarray]  # split -> pixels of each value
    per_file: dict[str, list[tuple[Path, np.ndarray]]]  # split -> (mask, its distinct values)
    num_train: int
    notes: list[str]

    def files_with(self, split: str, value: int) -> list[Path]:
        return [p for p, vals in self.per_file[split] if value in vals][:_FILES]

    def describe(self, value: int) -> str:
        return _fmt(_unpack(value)) if self.kind == "rgb" else str(value)


class _Scanner:
    """Lists the splits (lazily) and reads their masks in a thread pool, once."""

    def __init__(
        self, d: Mapping[str, Any], root: Path, pairs: Mapping[str, Sequence[SlicePair]] | None, workers: int | None
    ) -> None:
        self.d, self.root, self.pairs, self.workers = d, root, pairs, workers or usable_cores(8)
        self.result: _Scan | None = None

    def _pairs(self) -> dict[str, list[SlicePair]]:
        if self.pairs is not None:
            return {s: list(self.pairs.get(s, [])) for s in SPLITS}
        return list_split_pairs(self.d)

    def scan(self, kind: str) -> _Scan:
        if self.result is not None:
            return self.result
        pairs = self._pairs()
        if not pairs["train"]:
            raise ClassTableError(f"dataset split 'train' under {self.root} has no slices to find the classes in")
        read = _read_rgb if kind == "rgb" else _read_index
        values, pixels, per_file, failed = {}, {}, {}, []
        with ThreadPoolExecutor(max(1, self.workers)) as pool:  # OpenCV decoding releases the GIL
            for split, split_pairs_ in pairs.items():
                results = list(pool.map(lambda p: _try(read, p.mask), split_pairs_))
                ok = [(p.mask, r) for p, r in zip(split_pairs_, results) if not isinstance(r, DataError)]
                failed += [(split, r) for r in results if isinstance(r, DataError)]
                per_file[split] = [(path, vals) for path, (vals, _) in ok]
                values[split], pixels[split] = _merge([r for _, r in ok])
        train_failed = [err for split, err in failed if split == "train"]
        if len(train_failed) == len(pairs["train"]):
            raise ClassTableError(f"no train mask could be read to find the classes; the first: {train_failed[0]}")
        notes = []
        if failed:
            notes.append(
                f"{len(failed)} masks could not be read and were left out of the class table "
                f"(the first: {failed[0][1]})"
            )
        self.result = _Scan(kind, values, pixels, per_file, len(pairs["train"]) - len(train_failed), notes)
        return self.result


def _try(read: Any, path: Path) -> Any:
    try:
        return read(path)
    except DataError as err:
        return err


def _read_rgb(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Distinct packed colours of a colour mask and their pixel counts."""
    bgr = read_image_file(path, cv2.IMREAD_COLOR, "mask").astype(np.int32)
    return np.unique((bgr[..., 2] << 16) | (bgr[..., 1] << 8) | bgr[..., 0], return_counts=True)


_INDEX_READER = MaskDecoder("index", num_classes=MAX_CLASSES)  # every uint8 value is a class index


def _read_index(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Distinct values of a class-index mask (single channel, else :class:`DataError`) and their pixel counts."""
    return np.unique(_INDEX_READER(path), return_counts=True)


def _merge(results: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    if not results:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    values = np.concatenate([v for v, _ in results]).astype(np.int64)
    counts = np.concatenate([c for _, c in results]).astype(np.int64)
    distinct, inverse = np.unique(values, return_inverse=True)
    totals = np.zeros(len(distinct), np.int64)
    np.add.at(totals, inverse, counts)
    return distinct, totals


def _unpack(packed: int) -> list[int]:
    return [(int(packed) >> 16) & 255, (int(packed) >> 8) & 255, int(packed) & 255]


def _fmt(colour: Sequence[int]) -> str:
    return "(" + ",".join(str(int(v)) for v in colour) + ")"


# --------------------------------------------------------------------------- discovery rules


def _check_scan(scan: _Scan) -> None:
    """Blended masks and colours (values) missing from the train masks raise :class:`ClassTableError`."""
    what = "colours" if scan.kind == "rgb" else "values"
    train, pixels = scan.values["train"], scan.pixels["train"]
    fraction = pixels / max(1, int(pixels.sum()))
    rare = np.argsort(fraction, kind="stable")[:_SHOWN]
    if len(train) > MAX_COLOURS or (len(train) > MANY_COLOURS and fraction.min() < RARE_FRACTION):
        rarest = "; ".join(
            f"{scan.describe(train[i])} {int(pixels[i])} px in "
            f"{', '.join(map(str, scan.files_with('train', train[i])))}"
            for i in rare[:3]
        )
        fix = "dataset.rgb_map" if scan.kind == "rgb" else "dataset.class_names"
        raise ClassTableError(
            f"the {scan.num_train} train masks look anti-aliased/blended: {len(train)} {what}, the rarest: {rarest}; "
            f"save masks without interpolation (nearest neighbour, PNG not JPEG) or give {fix}"
        )
    for split in ("valid", "test"):
        extra = np.setdiff1d(scan.values[split], train)
        if len(extra):
            shown = "; ".join(
                f"{scan.describe(v)} in {', '.join(map(str, scan.files_with(split, v)))}" for v in extra[:_SHOWN]
            )
            more = f" and {len(extra) - _SHOWN} more" if len(extra) > _SHOWN else ""
            raise ClassTableError(
                f"{split} masks hold {what} that no train mask has, so they would have no class: {shown}{more}; "
                f"fix those masks, move such cases to train, or give the class table (dataset.class_names"
                f"{', dataset.rgb_map' if scan.kind == 'rgb' else ''})"
            )


def _discovered_colours(scan: _Scan, expected: int | None = None, manifest: Path | None = None) -> list[list[int]]:
    """The train colours, black first then by packed value (black must be there)."""
    _check_scan(scan)
    train = scan.values["train"]
    colours = [_unpack(v) for v in train]
    shown = ", ".join(_fmt(c) for c in colours[:_SHOWN]) + (
        f" and {len(colours) - _SHOWN} more" if len(colours) > _SHOWN else ""
    )
    if expected is not None and len(colours) != expected:
        raise ClassTableError(
            f"{manifest} lists {expected} labels but the {scan.num_train} train masks hold {len(colours)} colours "
            f'({shown}); add "colors": {{name: [r, g, b]}} to it or give dataset.rgb_map'
        )
    if len(train) == 0 or train[0] != 0:
        raise ClassTableError(
            f"no black (0,0,0) background in the {scan.num_train} train masks (colours found: {shown}); segexp "
            "discovers class 0 as black: give dataset.class_names and dataset.rgb_map"
        )
    if len(colours) < 2:
        raise ClassTableError(f"the {scan.num_train} train masks are all black (0,0,0): no class to segment")
    return colours


def _discovered_values(scan: _Scan) -> list[int]:
    """The train index values, which must be 0..max without a gap."""
    _check_scan(scan)
    values = [int(v) for v in scan.values["train"]]
    missing = sorted(set(range(max(values) + 1)) - set(values))
    if missing:
        hint = " (0 and 255 only: a binary mask? use dataset.mask_format=binary)" if values == [0, 255] else ""
        raise ClassTableError(
            f"the {scan.num_train} train masks hold index values {values}{hint}, without {missing[:_SHOWN]}"
            f"{' ...' if len(missing) > _SHOWN else ''}; segexp reads the pixel value as the class index, so "
            "the values must be 0..n-1: renumber the masks or give dataset.class_names"
        )
    if len(values) < 2:
        raise ClassTableError(
            f"the {scan.num_train} train masks hold only the value 0 (background): no class to segment"
        )
    return values


def _rare_notes(scan: _Scan, names: Sequence[str]) -> list[str]:
    """A note for each class rarer than :data:`RARE_FRACTION` (a stray colour passes for a class)."""
    train, pixels = scan.values["train"], scan.pixels["train"]
    total = max(1, int(pixels.sum()))
    return [
        f"{names[i]} {scan.describe(train[i])} covers only {int(pixels[i])} of {total} train pixels "
        f"(in {', '.join(map(str, scan.files_with('train', train[i])))}): a real class, or a stray "
        f"{'colour' if scan.kind == 'rgb' else 'value'}?"
        for i in range(len(train))
        if i < len(names) and pixels[i] / total < RARE_FRACTION
    ]


# --------------------------------------------------------------------------- config values


def class_names_given(d: Mapping[str, Any]) -> bool:
    """Whether dataset section ``d`` names its classes (``class_names`` set: not absent, null or ``???``)."""
    return _value(d, "class_names") is not None


def _value(d: Mapping[str, Any], key: str) -> Any:
    """``d[key]`` as plain data; ``None`` when absent, null or missing (``???``)."""
    if isinstance(d, DictConfig):
        if key not in d or OmegaConf.is_missing(d, key):
            return None
        value = d[key]
        return OmegaConf.to_container(value, resolve=True) if isinstance(value, (DictConfig, ListConfig)) else value
    value = d.get(key)
    return None if value == "???" else value
