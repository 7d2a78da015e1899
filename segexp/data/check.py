"""Dataset check: every problem of a slice dataset or a NIfTI volume folder, and its fingerprint.

:func:`check_slice_dataset` reads a slice dataset (the folders ``segexp-train``
reads) with the very functions the training loader uses (``read_image``,
``MaskDecoder``), so a dataset that passes the check trains without a file error.
:func:`check_volume_folder` reads a NIfTI folder as ``segexp-prepare`` does.
Neither stops at the first problem: each bad file, missing partner, size or
channel mismatch, unknown colour or label value and class never present is one
:class:`Problem` (``<file>: <cause>``) in the returned :class:`CheckReport`.

The :class:`Fingerprint` summarises the data: cases and slices per split, pixel
counts and frequencies per class (by name), image intensity statistics and image
sizes. Slice images are uint8, so their statistics come from an exact 256-bin
histogram (percentiles: nearest rank). Volume intensities are in HU: mean, std,
min and max are exact (float64 sums), percentiles are taken from a seeded random
sample of at most :data:`VOXEL_SAMPLE` voxels per case.

:func:`dataset_fingerprint` is the cheap variant for the start of training: file
counts per split are exact (file listing), pixel statistics come from a bounded
sample of :data:`TRAIN_SAMPLE_PER_SPLIT` evenly spaced pairs per split (nothing is
cached). A report is plain data: :meth:`CheckReport.to_dict` is JSON-serialisable.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
from nibabel.orientations import io_orientation
from tqdm import tqdm

from segexp.data.class_table import ClassTable, class_names_given, resolve_class_table
from segexp.data.dataset import SliceDataset, leaked_cases, mask_decoder
from segexp.data.layout import resolved_section
from segexp.data.phantom import ensure_phantom_slices
from segexp.data.slices import (
    DataError,
    MaskDecoder,
    SlicePair,
    case_id,
    check_same_size,
    image_files,
    read_image,
)
from segexp.data.splits import SPLITS
from segexp.data.volumes import (
    NIFTI_GLOB,
    SLICE_AXES,
    VolumeError,
    compile_case_pattern,
    describe_affine,
    group_by_case,
    list_nifti_files,
    orientation_code,
    voxel_spacing,
)

PERCENTILES = (0.5, 1.0, 5.0, 25.0, 50.0, 75.0, 95.0, 99.0, 99.5)
"""Intensity percentiles reported in the fingerprint (in %)."""
TRAIN_SAMPLE_PER_SPLIT = 32
"""Pairs per split whose pixels enter the fingerprint logged at the start of training."""
VOXEL_SAMPLE = 200_000
"""Voxels per volume (seeded random sample) behind the HU percentiles of a volume folder."""
_AFFINE_ATOL_MM = 1e-3
_CHUNK = 1 << 22


@dataclass
class Problem:
    """One problem: the file (or folder, or config key) it concerns and its cause."""

    file: str
    cause: str

    def __str__(self) -> str:
        return f"{self.file}: {self.cause}"


@dataclass
class IntensityStats:
    """Image intensities: ``unit`` ``uint8`` (slices) or ``HU`` (volumes); ``percentiles`` keyed ``p<q>``."""

    unit: str
    count: int = 0
    mean: float | None = None
    std: float | None = None
    min: float | None = None
    max: float | None = None
    percentiles: dict[str, float] = field(default_factory=dict)
    percentiles_from: str = ""


@dataclass
class Fingerprint:
    """What the data looks like: counts per split, class pixels by name, intensities, sizes.

    ``class_frequency[c] = class_pixels[c] / sum(class_pixels)`` over the masks read;
    ``classes_absent[split]`` lists the classes with no pixel in that split's masks read.
    ``files_read`` of ``files_total`` pairs (or cases) entered the pixel statistics.
    """

    kind: str
    name: str
    root: str
    splits: dict[str, dict[str, int]]
    class_names: list[str]
    class_pixels: dict[str, int]
    class_frequency: dict[str, float]
    classes_absent: dict[str, list[str]]
    intensity: IntensityStats
    image_sizes: dict[str, int]
    files_read: int
    files_total: int
    sampling: str
    cases: dict[str, dict[str, Any]] = field(default_factory=dict)

    def params(self) -> dict[str, str]:
        """A few flat MLflow params: ``dataset.num_slices.<split>``, ``dataset.num_cases.<split>``."""
        out = {}
        for split, counts in self.splits.items():
            out[f"dataset.num_slices.{split}"] = str(counts["slices"])
            out[f"dataset.num_cases.{split}"] = str(counts["cases"])
        if self.intensity.mean is not None:
            out["dataset.intensity_mean"] = f"{self.intensity.mean:.4g}"
            out["dataset.intensity_std"] = f"{self.intensity.std:.4g}"
        return out


@dataclass
class CheckReport:
    """All problems found and the fingerprint; ``ok`` when there is no problem.

    ``class_table``: the class table resolved from the data when the config gave none
    (:mod:`segexp.data.class_table`), else ``None``.
    """

    problems: list[Problem]
    fingerprint: Fingerprint
    class_table: ClassTable | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-serialisable data (``problems`` as ``{file, cause}`` records)."""
        return {"ok": self.ok, "num_problems": len(self.problems), **asdict(self)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def lines(self, max_problems: int | None = None) -> list[str]:
        """Human-readable report: one line per problem, the resolved class table (if any), then the fingerprint."""
        table = self.class_table.lines() if self.class_table is not None else []
        return problem_lines(self.problems, max_problems) + table + fingerprint_lines(self.fingerprint)


# --------------------------------------------------------------------------- statistics


class _Uint8Stats:
    """Exact statistics of uint8 pixels through a 256-bin histogram."""

    def __init__(self) -> None:
        self.hist = np.zeros(256, np.int64)

    def add(self, image: np.ndarray) -> None:
        self.hist += np.bincount(image.ravel(), minlength=256)

    def result(self) -> IntensityStats:
        n = int(self.hist.sum())
        if n == 0:
            return IntensityStats("uint8")
        values = np.arange(256, dtype=np.float64)
        mean = float((self.hist * values).sum() / n)
        var = float((self.hist * (values - mean) ** 2).sum() / n)
        nonzero = np.flatnonzero(self.hist)
        cum = np.cumsum(self.hist)
        pct = {f"p{q:g}": float(np.searchsorted(cum, max(1, int(np.ceil(q / 100 * n))))) for q in PERCENTILES}
        return IntensityStats(
            "uint8",
            n,
            round(mean, 4),
            round(var**0.5, 4),
            float(nonzero[0]),
            float(nonzero[-1]),
            pct,
            "all pixels read (exact, nearest rank)",
        )


class _FloatStats:
    """Exact mean/std/min/max of float voxels; percentiles from a seeded sample per volume."""

    def __init__(self, unit: str, sample: int, seed: int = 0) -> None:
        self.unit, self.sample, self.rng = unit, sample, np.random.default_rng(seed)
        self.n, self.total, self.total_sq = 0, 0.0, 0.0
        self.lo, self.hi = np.inf, -np.inf
        self.samples: list[np.ndarray] = []

    def add(self, data: np.ndarray) -> None:
        flat = data.ravel()
        if flat.size == 0:
            return
        self.n += flat.size
        for start in range(0, flat.size, _CHUNK):  # float64 sums chunk by chunk: no full-size temporary
            chunk = flat[start : start + _CHUNK].astype(np.float64)
            self.total += float(chunk.sum())
            self.total_sq += float(np.dot(chunk, chunk))
        self.lo, self.hi = min(self.lo, float(flat.min())), max(self.hi, float(flat.max()))
        take = flat if flat.size <= self.sample else flat[self.rng.choice(flat.size, self.sample, replace=False)]
        self.samples.append(np.asarray(take, np.float64))

    def result(self) -> IntensityStats:
        if self.n == 0:
            return IntensityStats(self.unit)
        mean = self.total / self.n
        std = max(self.total_sq / self.n - mean**2, 0.0) ** 0.5
        pooled = np.concatenate(self.samples)
        pct = {f"p{q:g}": round(float(np.percentile(pooled, q)), 4) for q in PERCENTILES}
        return IntensityStats(
            self.unit,
            self.n,
            round(mean, 4),
            round(std, 4),
            self.lo,
            self.hi,
            pct,
            f"a seeded sample of at most {self.sample} voxels per volume",
        )


def _class_summary(
    class_names: Sequence[str], per_split: Mapping[str, np.ndarray]
) -> tuple[dict[str, int], dict[str, float], dict[str, list[str]]]:
    total = sum(per_split.values(), np.zeros(len(class_names), np.int64))
    pixels = {name: int(total[i]) for i, name in enumerate(class_names)}
    n = int(total.sum())
    frequency = {name: (round(int(total[i]) / n, 8) if n else 0.0) for i, name in enumerate(class_names)}
    absent = {
        split: [class_names[int(i)] for i in np.flatnonzero(counts == 0)]
        for split, counts in per_split.items()
        if counts.any()
    }  # splits with masks read
    return pixels, frequency, absent


# --------------------------------------------------------------------------- slice datasets


def _pair_folders(images_dir: Path, masks_dir: Path, problems: list[Problem]) -> list[tuple[str, Path, Path]]:
    """``(stem, image, mask)`` for every paired file; each unpaired file is one problem."""
    found: list[tuple[Path, str]] = []
    images, masks = image_files(images_dir, found), image_files(masks_dir, found)
    problems += [Problem(str(path), cause) for path, cause in found]
    if not images_dir.is_dir() or not masks_dir.is_dir():
        return []
    for stem in sorted(set(images) - set(masks)):
        problems.append(Problem(str(images[stem]), f"image without a mask (no {stem}.* in {masks_dir})"))
    for stem in sorted(set(masks) - set(images)):
        problems.append(Problem(str(masks[stem]), f"mask without an image (no {stem}.* in {images_dir})"))
    return [(stem, images[stem], masks[stem]) for stem in sorted(set(images) & set(masks))]


def list_split_pairs(d: Mapping[str, Any], problems: list[Problem]) -> dict[str, list[SlicePair]]:
    """Pairs per split of dataset config ``d``, tolerant: every structural problem is appended to ``problems``.

    Mirrors :func:`segexp.data.slices.split_pairs` (layouts ``splits`` and ``flat``); an
    absent ``test`` folder is allowed, an empty ``train`` or ``valid`` split is a problem,
    and so is a case found in two splits.
    """
    root = Path(d["root"]).expanduser()
    pattern = d["case_pattern"]
    pairs: dict[str, list[SlicePair]] = {split: [] for split in SPLITS}
    if d["layout"] == "flat":
        found = _pair_folders(root / d["images_dir"], root / d["masks_dir"], problems)
        by_case: dict[str, list[SlicePair]] = {}
        for stem, image, mask in found:
            try:
                case = case_id(stem, pattern)
            except DataError:
                problems.append(Problem(str(image), f"name does not match dataset.case_pattern {pattern!r}"))
                continue
            by_case.setdefault(case, []).append(SlicePair(stem, image, mask, case))
        for split in SPLITS:
            for case in [str(c) for c in (d["cases"].get(split) or [])]:
                if case not in by_case:
                    problems.append(Problem(f"dataset.cases.{split}", f"no slices of case {case!r} in {root}"))
                pairs[split] += by_case.get(case, [])
    else:
        for split in SPLITS:
            base = root / d["splits"][split]
            if split == "test" and not base.is_dir():
                continue  # a test split is optional
            found = _pair_folders(base / d["images_dir"], base / d["masks_dir"], problems)
            pairs[split] += [
                SlicePair(stem, image, mask, case_id(stem, pattern, strict=False)) for stem, image, mask in found
            ]
    for split in ("train", "valid"):
        if not pairs[split]:
            problems.append(Problem(str(root), f"the {split!r} split has no slices"))
    for case, first, split in leaked_cases(pairs):
        problems.append(
            Problem(
                str(root),
                f"case {case!r} has slices in both the {first!r} and "
                f"{split!r} splits: split by patient, never by slice",
            )
        )
    return pairs


def _sample(pairs: Sequence[SlicePair], limit: int | None) -> list[SlicePair]:
    if limit is None or len(pairs) <= limit:
        return list(pairs)
    picks = np.unique(np.linspace(0, len(pairs) - 1, limit).round().astype(int))
    return [pairs[i] for i in picks]


def _read_pairs(
    pairs: dict[str, list[SlicePair]],
    decoder: MaskDecoder | None,
    num_classes: int,
    channels: int,
    size: tuple[int, ...] | None,  # (height, width)
    limit: int | None,
    problems: list[Problem],
    progress: bool = False,
) -> tuple[dict[str, np.ndarray], _Uint8Stats, dict[str, int], int]:
    """Read every (or a sample of) pair: per-split class pixel counts, intensities, sizes, pairs read.

    Without a ``decoder`` (no class table) only the images are read.
    """
    per_split = {split: np.zeros(num_classes, np.int64) for split in pairs}
    stats, read = _Uint8Stats(), 0
    sizes: dict[str, int] = {}
    todo = {split: _sample(split_pairs, limit) for split, split_pairs in pairs.items()}
    bar = tqdm(
        total=sum(map(len, todo.values())),
        desc="pairs",
        unit="pair",
        file=sys.stderr,
        disable=None if progress else True,
    )
    for split, split_pairs in todo.items():
        for pair in split_pairs:
            read += 1
            bar.update()
            image = mask = None
            try:
                image = read_image(pair.image, channels)
            except DataError as err:
                problems.append(_as_problem(err, pair.image))
            try:
                mask = decoder(pair.mask) if decoder is not None else None
            except DataError as err:
                problems.append(_as_problem(err, pair.mask))
            if image is not None:
                key = f"{image.shape[1]}x{image.shape[0]}"
                sizes[key] = sizes.get(key, 0) + 1
                if size is not None and image.shape[:2] != tuple(size):
                    problems.append(
                        Problem(
                            str(pair.image), f"size {key} (width x height), expected {size[1]}x{size[0]} (image_size)"
                        )
                    )
            if decoder is None and image is not None:
                stats.add(image)  # no class table: the images alone
                continue
            if image is None or mask is None:
                continue
            try:
                check_same_size(pair, image, mask)
            except DataError as err:
                problems.append(Problem(str(pair.image), str(err).replace(f"{pair.image} ", "", 1)))
                continue
            stats.add(image)
            per_split[split] += np.bincount(mask.ravel(), minlength=num_classes)[:num_classes]
    bar.close()
    return per_split, stats, sizes, read


def _as_problem(err: DataError, path: Path) -> Problem:
    """``DataError`` messages start with the path: split it off into :attr:`Problem.file`."""
    text = str(err)
    prefix = f"{path}: "
    return Problem(str(path), text[len(prefix) :] if text.startswith(prefix) else text)


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
    (:func:`segexp.data.class_table.resolve_class_table`: dataset.json, else the masks)
    and returned in :attr:`CheckReport.class_table`; when it cannot be, the reason is a
    problem and only the images are read.
    """
    problems: list[Problem] = []
    root = Path(d["root"]).expanduser()
    ensure_phantom_slices(root, d.get("phantom"))
    if not root.is_dir():
        problems.append(Problem(str(root), "folder does not exist (dataset.root)"))
        pairs: dict[str, list[SlicePair]] = {split: [] for split in SPLITS}
    else:
        try:
            d = resolved_section(d)  # layout auto / the automatic split by patient, as training reads it
        except DataError as err:
            problems.append(Problem("dataset.layout", str(err)))
        pairs = list_split_pairs(d, problems)
    table = None
    if not class_names_given(d) and pairs["train"]:
        try:
            table = resolve_class_table(d, pairs=pairs)
        except DataError as err:
            problems.append(Problem("dataset.class_names", f"no class table from the data: {err}"))
        else:
            d = {**dict(d), **table.to_dataset_overrides()}
    if class_names_given(d):
        class_names = list(d["class_names"])
        decoder: MaskDecoder | None = mask_decoder(d)[0]
    else:
        class_names, decoder = [], None
    per_split, stats, sizes, read = _read_pairs(
        pairs,
        decoder,
        len(class_names),
        channels,
        tuple(size) if size is not None else None,
        max_pairs_per_split,
        problems,
        progress=True,
    )
    pixels, frequency, absent = _class_summary(class_names, per_split)
    complete_train = max_pairs_per_split is None or len(pairs["train"]) <= max_pairs_per_split
    if complete_train and pairs["train"]:
        for name in absent.get("train", []):
            problems.append(
                Problem(str(root), f"class {name!r} never appears in the {len(pairs['train'])} train masks")
            )
    total = sum(len(v) for v in pairs.values())
    fingerprint = Fingerprint(
        kind="slices",
        name=str(d["name"]),
        root=str(root),
        splits={s: {"cases": len({p.case for p in v}), "slices": len(v)} for s, v in pairs.items()},
        class_names=class_names,
        class_pixels=pixels,
        class_frequency=frequency,
        classes_absent=absent,
        intensity=stats.result(),
        image_sizes=sizes,
        files_read=read,
        files_total=total,
        sampling="all pairs"
        if max_pairs_per_split is None
        else f"at most {max_pairs_per_split} evenly spaced pairs per split",
    )
    return CheckReport(problems, fingerprint, table)


def dataset_fingerprint(
    dataset: SliceDataset, channels: int, max_pairs_per_split: int = TRAIN_SAMPLE_PER_SPLIT
) -> CheckReport:
    """Fingerprint of an opened dataset for the start of training (bounded sample, no cache).

    Counts per split are exact; pixel statistics and problems cover at most
    ``max_pairs_per_split`` evenly spaced pairs per split. Never raises for a bad file.
    """
    problems: list[Problem] = []
    names = dataset.class_names
    per_split, stats, sizes, read = _read_pairs(
        dataset.pairs, dataset.decoder, len(names), channels, None, max_pairs_per_split, problems
    )
    pixels, frequency, absent = _class_summary(names, per_split)
    fingerprint = Fingerprint(
        kind="slices",
        name=dataset.name,
        root=str(dataset.root),
        splits={s: {"cases": len(dataset.cases(s)), "slices": len(v)} for s, v in dataset.pairs.items()},
        class_names=list(names),
        class_pixels=pixels,
        class_frequency=frequency,
        classes_absent=absent,
        intensity=stats.result(),
        image_sizes=sizes,
        files_read=read,
        files_total=sum(len(v) for v in dataset.pairs.values()),
        sampling=f"at most {max_pairs_per_split} evenly spaced pairs per split",
    )
    return CheckReport(problems, fingerprint)


# --------------------------------------------------------------------------- NIfTI volume folders


def _find_volume_files(folder: Path, pattern: str, problems: list[Problem]) -> dict[str, dict[str, list[Path]]]:
    """case -> {"image": [...], "label": [...]}, tolerant version of ``find_volume_cases``."""

    try:
        regex = compile_case_pattern(pattern)
    except VolumeError as err:
        problems.append(Problem("volumes.pattern", str(err)))
        return {}
    if not folder.is_dir():
        problems.append(Problem(str(folder), "volume folder does not exist"))
        return {}
    files = list_nifti_files(folder, "/" in pattern)
    if not files:
        problems.append(Problem(str(folder), f"no NIfTI files ({NIFTI_GLOB})"))
    found, rejected = group_by_case(files, folder, regex)
    problems += [
        Problem(str(path), f"name does not match volumes.pattern {pattern!r} (groups case, and kind = image or label)")
        for path, _ in rejected
    ]
    for case, kinds in sorted(found.items()):
        for kind, paths in kinds.items():
            for extra in paths[1:]:
                problems.append(Problem(str(extra), f"case {case} has more than one {kind} (also {paths[0].name})"))
        if kinds["image"] and not kinds["label"]:
            problems.append(Problem(str(kinds["image"][0]), f"image without a label (case {case})"))
        if kinds["label"] and not kinds["image"]:
            problems.append(Problem(str(kinds["label"][0]), f"label without an image (case {case})"))
    return found


def _load_nifti(path: Path, problems: list[Problem]) -> Any:
    import nibabel as nib

    try:
        img = cast(nib.Nifti1Image, nib.load(str(path)))  # a .nii[.gz] file (Nifti2Image subclasses it)
    except Exception as err:  # nibabel raises several types for corrupt files
        problems.append(Problem(str(path), f"cannot read the NIfTI header ({type(err).__name__}: {err})"))
        return None
    shape = tuple(int(v) for v in img.shape)
    if not (len(shape) == 3 or (len(shape) == 4 and shape[3] == 1)):
        problems.append(Problem(str(path), f"not a 3D volume: shape {shape}"))
        return None
    return img


def _voxels(img: Any, path: Path, dtype: Any, problems: list[Problem]) -> np.ndarray | None:
    try:
        return np.asarray(img.dataobj, dtype=dtype).reshape(img.shape[:3])
    except Exception as err:  # a truncated .nii.gz raises EOFError, zlib.error, ValueError ...
        problems.append(
            Problem(str(path), f"cannot read the voxel data, truncated or corrupt ({type(err).__name__}: {err})")
        )
        return None


def _slices_along(affine: np.ndarray, shape: Sequence[int], axis: str) -> int:
    """Slices along ``axis`` (axial/coronal/sagittal) after reorientation to RAS."""

    ornt = io_orientation(affine)
    return int(shape[int(np.flatnonzero(ornt[:, 0] == SLICE_AXES[axis])[0])])


def _label_values(lab: Any, label_path: Path, problems: list[Problem]) -> tuple[np.ndarray, np.ndarray] | None:
    """``(values, counts)`` of a label volume, or None (problem noted) when unreadable or not integer."""
    label = _voxels(lab, label_path, None, problems)
    if label is None:
        return None
    if not np.issubdtype(label.dtype, np.integer):
        if not np.isfinite(label).all() or (label != np.round(label)).any():
            problems.append(Problem(str(label_path), "label holds non-integer or non-finite values"))
            return None
        label = label.astype(np.int64)
    return np.unique(label, return_counts=True)


def _matching_label(img: Any, lab: Any, image_path: Path, label_path: Path, problems: list[Problem]) -> Any:
    """``lab`` when its grid matches the image's; None (a problem noted) for a shape mismatch."""
    shape, lab_shape = tuple(int(v) for v in img.shape[:3]), tuple(int(v) for v in lab.shape[:3])
    affine, lab_affine = np.asarray(img.affine, np.float64), np.asarray(lab.affine, np.float64)
    if lab_shape != shape:
        problems.append(Problem(str(label_path), f"label shape {lab_shape} != image shape {shape} ({image_path.name})"))
        return None
    if not np.allclose(lab_affine, affine, rtol=0.0, atol=_AFFINE_ATOL_MM):
        problems.append(
            Problem(
                str(label_path),
                f"label affine ({describe_affine(lab_affine)}) differs from the "
                f"image's ({describe_affine(affine)}, {image_path.name})",
            )
        )
    return lab


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
    """Check a NIfTI folder as ``segexp-prepare`` reads it; every problem is collected, never raised.

    ``classes``: class name -> label values (``volumes.classes``); a label value outside
    it, a non-integer label, an image/label shape or affine mismatch, an unreadable or
    truncated file and a missing partner are problems. With ``classes=None`` every value
    found becomes a class ``label_<v>``. One volume is in memory at a time.
    """
    source = Path(source).expanduser()
    problems: list[Problem] = []
    found = _find_volume_files(source, pattern, problems)
    lut_names = {int(v): name for name, values in (classes or {}).items() for v in values}
    counts: dict[int, int] = {}
    stats = _FloatStats("HU", voxel_sample, seed)
    cases: dict[str, dict[str, Any]] = {}
    sizes: dict[str, int] = {}
    slices = read = 0
    for case, kinds in sorted(found.items()):
        if not kinds["image"]:
            continue
        image_path = kinds["image"][0]
        label_path = kinds["label"][0] if kinds["label"] else None
        img = _load_nifti(image_path, problems)
        lab = _load_nifti(label_path, problems) if label_path is not None else None
        info: dict[str, Any] = {"image": image_path.name, "label": label_path.name if label_path else None}
        cases[case] = info
        if img is None:
            continue
        affine, shape = np.asarray(img.affine, np.float64), tuple(int(v) for v in img.shape[:3])
        info.update(
            shape=list(shape),
            spacing_mm=[round(v, 4) for v in voxel_spacing(affine)],
            orientation=orientation_code(affine),
        )
        sizes["x".join(map(str, shape))] = sizes.get("x".join(map(str, shape)), 0) + 1
        slices += _slices_along(affine, shape, axis)
        voxels = _voxels(img, image_path, np.float32, problems)
        if voxels is not None:
            stats.add(voxels)
            read += 1
        del voxels
        if lab is None or label_path is None:  # no label file, or one that does not load (lab is None then)
            continue
        lab = _matching_label(img, lab, image_path, label_path, problems)
        found_values = _label_values(lab, label_path, problems) if lab is not None else None
        if found_values is None:
            continue
        values, value_counts = found_values
        info["label_values"] = [int(v) for v in values]
        for v, n in zip(values, value_counts):
            counts[int(v)] = counts.get(int(v), 0) + int(n)
        unknown = [int(v) for v in values if int(v) not in lut_names]
        if classes is not None and unknown:
            problems.append(
                Problem(
                    str(label_path), f"label values {unknown} are not in volumes.classes (allowed: {sorted(lut_names)})"
                )
            )
    class_names, pixels = _volume_class_summary(classes, counts, lut_names)
    total = sum(pixels.values())
    absent = [name for name, n in pixels.items() if n == 0]
    if classes is not None and read:
        problems += [
            Problem(str(source), f"class {name!r} (labels {list(classes[name])}) never appears in any label")
            for name in absent
        ]
    fingerprint = Fingerprint(
        kind="volumes",
        name=source.name,
        root=str(source),
        splits={"all": {"cases": len(cases), "slices": slices}},
        class_names=class_names,
        class_pixels=pixels,
        class_frequency={name: (round(n / total, 8) if total else 0.0) for name, n in pixels.items()},
        classes_absent={"all": absent},
        intensity=stats.result(),
        image_sizes=sizes,
        files_read=read,
        files_total=len(found),
        sampling=f"all volumes; {axis} slices after reorientation to RAS",
        cases=cases,
    )
    return CheckReport(problems, fingerprint)


# --------------------------------------------------------------------------- text


def problem_lines(problems: Sequence[Problem], max_problems: int | None = None) -> list[str]:
    """``PROBLEMS (n):`` then one ``<file>: <cause>`` line each (at most ``max_problems``)."""
    if not problems:
        return ["problems: none"]
    shown = problems if max_problems is None else problems[:max_problems]
    lines = [f"PROBLEMS ({len(problems)}):"] + [f"  {p}" for p in shown]
    if len(shown) < len(problems):
        lines.append(f"  ... and {len(problems) - len(shown)} more (all of them are in the JSON report)")
    return lines


def fingerprint_lines(f: Fingerprint) -> list[str]:
    """The fingerprint as a short table: splits, sizes, class frequencies, intensities."""
    lines = [
        f"fingerprint of {f.name} ({f.kind}, {f.root}); pixels from {f.files_read} of {f.files_total} "
        f"{'pairs' if f.kind == 'slices' else 'cases'} ({f.sampling}):"
    ]
    lines.append(f"  {'split':<8}{'cases':>7}{'slices':>10}")
    for split, c in f.splits.items():
        lines.append(f"  {split:<8}{c['cases']:>7}{c['slices']:>10}")
    if f.image_sizes:
        lines.append(
            "  sizes: " + ", ".join(f"{k} ({n})" for k, n in sorted(f.image_sizes.items(), key=lambda kv: -kv[1]))
        )
    lines.append("  class pixels:")
    for name in f.class_names:
        lines.append(
            f"    {name:<18}{f.class_pixels.get(name, 0):>14,}  {100 * f.class_frequency.get(name, 0.0):9.4f} %"
        )
    absent = {s: names for s, names in f.classes_absent.items() if names}
    if absent:
        lines.append("  classes absent: " + "; ".join(f"{s}: {', '.join(n)}" for s, n in absent.items()))
    i = f.intensity
    if i.mean is not None:
        pct = ", ".join(f"{k} {v:g}" for k, v in i.percentiles.items())
        lines.append(f"  intensity ({i.unit}): mean {i.mean:g}, std {i.std:g}, min {i.min:g}, max {i.max:g}")
        lines.append(f"    percentiles: {pct}")
    return lines


# --------------------------------------------------------------------------- training


def log_fingerprint(dataset: SliceDataset, channels: int, run_dir: Path, tracker: Any) -> CheckReport:
    """At the start of training: write ``<run_dir>/dataset_fingerprint.json`` and log it to MLflow.

    ``tracker`` is a :class:`segexp.tracking.tracker.Tracker`: the JSON becomes the artifact
    ``dataset_fingerprint.json``, :meth:`Fingerprint.params` become params
    (``dataset.num_slices.train`` ...). Bad files found in the sample are logged as
    warnings here; they fail (or are skipped) when the loader meets them.
    """
    import logging

    report = dataset_fingerprint(dataset, channels)
    path = Path(run_dir) / "dataset_fingerprint.json"
    path.write_text(report.to_json())
    log = logging.getLogger(__name__)
    for problem in report.problems:
        log.warning("dataset check: %s", problem)
    splits = report.fingerprint.splits
    log.info(
        "dataset fingerprint: %s; intensity mean %s std %s (%s)",
        ", ".join(f"{s} {c['slices']} slices/{c['cases']} cases" for s, c in splits.items()),
        report.fingerprint.intensity.mean,
        report.fingerprint.intensity.std,
        report.fingerprint.sampling,
    )
    tracker.log_params(report.fingerprint.params())
    tracker.log_artifact(path)
    return report
