"""Dataset check: every problem of a slice dataset or a volume folder (any format), and its fingerprint.

The reporting shell over the readers training and ``segexp-prepare`` use, given a problem
collector (:mod:`segexp.data.io.problems`) so that nothing stops at the first problem:
:func:`check_slice_dataset` lists the pairs with :func:`segexp.data.runtime.dataset.list_split_pairs`
and reads them with ``read_image`` and ``MaskDecoder``, so a dataset that passes the check
trains without a file error; :func:`check_volume_folder` reads a volume folder with the
readers of :mod:`segexp.data.io.volumes`. Each bad file, missing partner, size or channel
mismatch, unknown colour or label value and class never present is one
:class:`~segexp.data.io.problems.Problem` (``<file>: <cause>``) in the :class:`CheckReport`.

The :class:`~segexp.data.prepare.fingerprint.Fingerprint` summarises the data; volume
percentiles come from a seeded sample of at most :data:`VOXEL_SAMPLE` voxels per case.
:func:`dataset_fingerprint` is the cheap variant for the start of training: file counts
per split are exact, pixel statistics come from :data:`TRAIN_SAMPLE_PER_SPLIT` evenly
spaced pairs per split (nothing is cached). :meth:`CheckReport.to_dict` is JSON-serialisable.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from segexp.data.io.problems import Problem, Problems
from segexp.data.io.slices import DataError, MaskDecoder, SlicePair, check_same_size, read_image
from segexp.data.io.volumes import VolumeCase, find_volume_cases, header_slices, open_case, read_label, read_voxels
from segexp.data.phantom import ensure_phantom_slices
from segexp.data.prepare.fingerprint import Fingerprint, FloatStats, Uint8Stats, class_summary, fingerprint_lines
from segexp.data.runtime.class_table import ClassTable, class_names_given, resolve_class_table
from segexp.data.runtime.dataset import SliceDataset, dataset_storage, list_split_pairs, mask_decoder

TRAIN_SAMPLE_PER_SPLIT = 32
"""Pairs per split whose pixels enter the fingerprint logged at the start of training."""
VOXEL_SAMPLE = 200_000
"""Voxels per volume (seeded random sample) behind the HU percentiles of a volume folder."""

log = logging.getLogger(__name__)


@dataclass
class CheckReport:
    """All problems found and the fingerprint; ``ok`` when there is no error.

    ``class_table``: the class table resolved from the data when the config gave none
    (:mod:`segexp.data.runtime.class_table`), else ``None``.
    """

    problems: list[Problem]
    fingerprint: Fingerprint
    class_table: ClassTable | None = None

    @property
    def ok(self) -> bool:
        return all(p.severity != "error" for p in self.problems)

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-serialisable data (``problems`` as ``{file, cause, severity}`` records)."""
        return {"ok": self.ok, "num_problems": len(self.problems), **asdict(self)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def lines(self, max_problems: int | None = None) -> list[str]:
        """Human-readable report: one line per problem, the resolved class table (if any), then the fingerprint."""
        table = self.class_table.lines() if self.class_table is not None else []
        return problem_lines(self.problems, max_problems) + table + fingerprint_lines(self.fingerprint)


# --------------------------------------------------------------------------- slice datasets


@dataclass
class _PairsRead:
    """What reading pairs found: class pixels per split, intensities, image sizes, pairs read."""

    per_split: dict[str, np.ndarray]
    stats: Uint8Stats = field(default_factory=Uint8Stats)  # Uint8Stats(16) for 16-bit slices
    sizes: dict[str, int] = field(default_factory=dict)
    read: int = 0


def _sample(pairs: Sequence[SlicePair], limit: int | None) -> list[SlicePair]:
    if limit is None or len(pairs) <= limit:
        return list(pairs)
    picks = np.unique(np.linspace(0, len(pairs) - 1, limit).round().astype(int))
    return [pairs[i] for i in picks]


def _try_read(read: Any, path: Path, problems: Problems) -> np.ndarray | None:
    """``read(path)``, or None with the :class:`DataError` recorded as a problem of ``path``."""
    try:
        return read(path)
    except DataError as err:
        problems.add(Problem.from_error(err, path))
        return None


def _read_pair(
    pair: SlicePair,
    decoder: MaskDecoder | None,
    channels: int,
    size: tuple[int, ...] | None,
    found: _PairsRead,
    problems: Problems,
    dtype: np.dtype | type | str = np.uint8,
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Image (stored as ``dtype``) and mask of one pair (None where unreadable or mismatched); sizes counted, size
    problems recorded."""
    image = _try_read(lambda p: read_image(p, channels, dtype), pair.image, problems)
    mask = _try_read(decoder, pair.mask, problems) if decoder is not None else None
    if image is not None:
        key = f"{image.shape[1]}x{image.shape[0]}"
        found.sizes[key] = found.sizes.get(key, 0) + 1
        if size is not None and image.shape[:2] != tuple(size):
            cause = f"size {key} (width x height), expected {size[1]}x{size[0]} (image_size)"
            problems.add(Problem(str(pair.image), cause))
    if image is not None and mask is not None:
        try:
            check_same_size(pair, image, mask)
        except DataError as err:
            problems.add(Problem.from_error(err, pair.image))
            return None, None
    return image, mask


def _read_pairs(
    pairs: dict[str, list[SlicePair]],
    decoder: MaskDecoder | None,
    num_classes: int,
    channels: int,
    size: tuple[int, ...] | None,  # (height, width)
    limit: int | None,
    problems: Problems,
    progress: bool = False,
    dtype: np.dtype | type | str = np.uint8,
) -> _PairsRead:
    """Read every (or a sample of) pair, the images stored as ``dtype`` (the dataset's storage); without a
    ``decoder`` (no class table) only the images."""
    bits = np.dtype(dtype).itemsize * 8
    found = _PairsRead({split: np.zeros(num_classes, np.int64) for split in pairs}, Uint8Stats(bits))
    todo = {split: _sample(split_pairs, limit) for split, split_pairs in pairs.items()}
    total = sum(map(len, todo.values()))
    with tqdm(total=total, desc="pairs", unit="pair", file=sys.stderr, disable=None if progress else True) as bar:
        for split, split_pairs in todo.items():
            for pair in split_pairs:
                found.read += 1
                bar.update()
                image, mask = _read_pair(pair, decoder, channels, size, found, problems, dtype)
                if image is None or (decoder is not None and mask is None):
                    continue
                found.stats.add(image)
                if mask is not None:
                    found.per_split[split] += np.bincount(mask.ravel(), minlength=num_classes)[:num_classes]
    return found


def _slice_fingerprint(
    name: str, root: Path, pairs: dict[str, list[SlicePair]], names: list[str], found: _PairsRead, sampling: str
) -> Fingerprint:
    pixels, frequency, absent = class_summary(names, found.per_split)
    return Fingerprint(
        kind="slices",
        name=name,
        root=str(root),
        splits={s: {"cases": len({p.case for p in v}), "slices": len(v)} for s, v in pairs.items()},
        class_names=names,
        class_pixels=pixels,
        class_frequency=frequency,
        classes_absent=absent,
        intensity=found.stats.result(),
        image_sizes=found.sizes,
        files_read=found.read,
        files_total=sum(len(v) for v in pairs.values()),
        sampling=sampling,
    )


def _class_table(
    d: Mapping[str, Any], pairs: dict[str, list[SlicePair]], problems: Problems
) -> tuple[ClassTable | None, list[str], MaskDecoder | None]:
    """The class table resolved from the data (when the config gives none), the class names and the decoder."""
    table = None
    if not class_names_given(d) and pairs["train"]:
        try:
            table = resolve_class_table(d, pairs=pairs)
        except DataError as err:
            problems.add(Problem("dataset.class_names", f"no class table from the data: {err}"))
        else:
            d = {**dict(d), **table.to_dataset_overrides()}
    if not class_names_given(d):
        return table, [], None
    return table, list(d["class_names"]), mask_decoder(d)[0]


def check_slice_dataset(
    d: Mapping[str, Any],
    channels: int,
    *,
    size: Sequence[int] | None = None,
    max_pairs_per_split: int | None = None,
) -> CheckReport:
    """Check slice dataset config ``d`` (the ``dataset`` group) completely; never raises for data problems.

    ``channels`` is the training's ``model.image_channels`` (1: a colour image is a
    problem); ``size`` ``[height, width]`` requires every image to have that size.
    With ``max_pairs_per_split`` only that many evenly spaced pairs per split are read
    (listing problems are still all found). A class with no pixel in the train masks
    is a problem when every train mask was read.

    Without ``class_names`` (null) the class table is resolved from the data
    (:func:`segexp.data.runtime.class_table.resolve_class_table`: dataset.json, else the masks)
    and returned in :attr:`CheckReport.class_table`; when it cannot be, the reason is a
    problem and only the images are read.
    """
    problems = Problems()
    root = Path(d["root"]).expanduser()
    ensure_phantom_slices(root, d.get("phantom"))
    pairs = list_split_pairs(d, problems)
    table, names, decoder = _class_table(d, pairs, problems)
    shape = tuple(size) if size is not None else None
    encoding = dataset_storage(root).encoding
    found = _read_pairs(
        pairs, decoder, len(names), channels, shape, max_pairs_per_split, problems, True, encoding.dtype
    )
    sampling = "all pairs"
    if max_pairs_per_split is not None:
        sampling = f"at most {max_pairs_per_split} evenly spaced pairs per split"
    fingerprint = _slice_fingerprint(str(d["name"]), root, pairs, names, found, sampling)
    complete_train = max_pairs_per_split is None or len(pairs["train"]) <= max_pairs_per_split
    if complete_train and pairs["train"]:
        for name in fingerprint.classes_absent.get("train", []):
            problems.add(Problem(str(root), f"class {name!r} never appears in the {len(pairs['train'])} train masks"))
    return CheckReport(problems.items, fingerprint, table)


def dataset_fingerprint(
    dataset: SliceDataset, channels: int, max_pairs_per_split: int = TRAIN_SAMPLE_PER_SPLIT
) -> CheckReport:
    """Fingerprint of an opened dataset for the start of training (bounded sample, no cache).

    Counts per split are exact; pixel statistics and problems cover at most
    ``max_pairs_per_split`` evenly spaced pairs per split. Never raises for a bad file.
    """
    problems = Problems()
    names = list(dataset.class_names)
    found = _read_pairs(
        dataset.pairs,
        dataset.decoder,
        len(names),
        channels,
        None,
        max_pairs_per_split,
        problems,
        dtype=dataset.encoding.dtype,
    )
    sampling = f"at most {max_pairs_per_split} evenly spaced pairs per split"
    return CheckReport(
        problems.items, _slice_fingerprint(dataset.name, dataset.root, dataset.pairs, names, found, sampling)
    )


# --------------------------------------------------------------------------- volume folders


@dataclass
class _VolumesRead:
    """What reading the cases found: label value counts, intensities, per-case facts, sizes, slices, cases read."""

    stats: FloatStats
    counts: dict[int, int] = field(default_factory=dict)
    cases: dict[str, dict[str, Any]] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)
    slices: int = 0
    read: int = 0


def _read_case(case: VolumeCase, allowed: list[int] | None, axis: str, found: _VolumesRead, problems: Problems) -> None:
    """Headers, image intensities and label values of one case into ``found``; each problem recorded."""
    info: dict[str, Any] = {"image": case.image.name, "label": case.label.name if case.label else None}
    found.cases[case.case] = info
    opened = open_case(case, problems)
    if opened is None:
        return
    h = opened.header
    info.update(shape=list(h.shape), spacing_mm=[round(v, 4) for v in h.spacing], orientation=h.orientation)
    key = "x".join(map(str, h.shape))
    found.sizes[key] = found.sizes.get(key, 0) + 1
    found.slices += header_slices(h, axis)
    voxels = read_voxels(opened, "image", np.float32, problems)
    if voxels is not None:
        found.stats.add(voxels)
        found.read += 1
    del voxels  # one volume in memory at a time
    label = read_label(opened, allowed, problems)
    if label is None:
        return
    counts = np.bincount(label.ravel(), minlength=256)
    info["label_values"] = [int(v) for v in np.flatnonzero(counts)]
    for v in info["label_values"]:
        found.counts[v] = found.counts.get(v, 0) + int(counts[v])


def _volume_class_summary(
    classes: Mapping[str, Sequence[int]] | None, counts: Mapping[int, int], lut_names: Mapping[int, str]
) -> tuple[list[str], dict[str, int]]:
    """Class names and pixel counts: the configured classes, or one ``label_<v>`` per value found."""
    if classes is not None:
        names = list(classes)
        return names, {name: sum(n for v, n in counts.items() if lut_names.get(v) == name) for name in names}
    return [f"label_{v}" for v in sorted(counts)], {f"label_{v}": n for v, n in sorted(counts.items())}


def check_volume_folder(
    source: Path,
    pattern: str,
    classes: Mapping[str, Sequence[int]] | None,
    *,
    axis: str = "axial",
    voxel_sample: int = VOXEL_SAMPLE,
    seed: int = 0,
) -> CheckReport:
    """Check a volume folder with ``segexp-prepare``'s readers; every problem is collected, never raised.

    ``classes``: class name -> label values (``volumes.classes``); a label value outside
    it, a non-integer label, an image/label shape or affine mismatch, an unreadable or
    truncated file and a missing partner are problems. With ``classes=None`` every value
    found becomes a class ``label_<v>``. One volume is in memory at a time.
    """
    source = Path(source).expanduser()
    problems = Problems()
    lut_names = {int(v): name for name, values in (classes or {}).items() for v in values}
    allowed = sorted(lut_names) if classes is not None else None
    found = _VolumesRead(FloatStats("HU", voxel_sample, seed))
    cases = find_volume_cases(source, pattern, problems=problems)
    for case in cases:
        _read_case(case, allowed, axis, found, problems)
    class_names, pixels = _volume_class_summary(classes, found.counts, lut_names)
    total = sum(pixels.values())
    absent = [name for name, n in pixels.items() if n == 0]
    if classes is not None and found.read:
        for name in absent:
            problems.add(
                Problem(str(source), f"class {name!r} (labels {list(classes[name])}) never appears in any label")
            )
    fingerprint = Fingerprint(
        kind="volumes",
        name=source.name,
        root=str(source),
        splits={"all": {"cases": len(found.cases), "slices": found.slices}},
        class_names=class_names,
        class_pixels=pixels,
        class_frequency={name: (round(n / total, 8) if total else 0.0) for name, n in pixels.items()},
        classes_absent={"all": absent},
        intensity=found.stats.result(),
        image_sizes=found.sizes,
        files_read=found.read,
        files_total=len(cases),
        sampling=f"all volumes; {axis} slices after reorientation to RAS",
        cases=found.cases,
    )
    return CheckReport(problems.items, fingerprint)


# --------------------------------------------------------------------------- text and training


def problem_lines(problems: Sequence[Problem], max_problems: int | None = None) -> list[str]:
    """``PROBLEMS (n):`` then one ``<file>: <cause>`` line each (at most ``max_problems``)."""
    if not problems:
        return ["problems: none"]
    shown = problems if max_problems is None else problems[:max_problems]
    lines = [f"PROBLEMS ({len(problems)}):"] + [f"  {p}" for p in shown]
    if len(shown) < len(problems):
        lines.append(f"  ... and {len(problems) - len(shown)} more (all of them are in the JSON report)")
    return lines


def log_fingerprint(dataset: SliceDataset, channels: int, run_dir: Path, tracker: Any) -> CheckReport:
    """At the start of training: write ``<run_dir>/dataset_fingerprint.json`` and log it to MLflow.

    ``tracker`` is a :class:`segexp.tracking.tracker.Tracker`: the JSON becomes the artifact
    ``dataset_fingerprint.json``, :meth:`~segexp.data.prepare.fingerprint.Fingerprint.params` become params
    (``dataset.num_slices.train`` ...). Bad files found in the sample are logged as
    warnings here; they fail (or are skipped) when the loader meets them.
    """
    report = dataset_fingerprint(dataset, channels)
    path = Path(run_dir) / "dataset_fingerprint.json"
    path.write_text(report.to_json())
    for problem in report.problems:
        log.warning("dataset check: %s", problem)
    f = report.fingerprint
    log.info(
        "dataset fingerprint: %s; intensity mean %s std %s (%s)",
        ", ".join(f"{s} {c['slices']} slices/{c['cases']} cases" for s, c in f.splits.items()),
        f.intensity.mean,
        f.intensity.std,
        f.sampling,
    )
    tracker.log_params(f.params())
    tracker.log_artifact(path)
    return report
