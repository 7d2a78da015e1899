"""3D CT volumes (NIfTI, MHA/MHD, NRRD, DICOM series): finding cases, headers, canonical orientation, slicing.

Conventions (everything downstream of :func:`load_case` relies on them):

* **Canonical orientation RAS+.** :func:`load_case` reorients image and label to
  the closest canonical orientation, exactly as ``nib.as_closest_canonical``
  (``io_orientation`` -> ``apply_orientation`` -> ``affine @ inv_ornt_aff``): only
  axis permutations and flips, no resampling. Afterwards voxel axis 0 (x) points
  to the patient's Right, axis 1 (y) to Anterior, axis 2 (z) to Superior, i.e.
  ``nib.aff2axcodes(affine) == ('R', 'A', 'S')``, and the canonical affine maps
  voxel ``(i, j, k)`` to the same world (scanner RAS+, mm) point as before.
  An oblique acquisition stays oblique (closest axes, affine not diagonal).
* **Indexing** ``volume[x, y, z]`` (nibabel order), shape ``(nx, ny, nz)``;
  :attr:`LoadedCase.spacing` is in the same canonical order.
* **Units:** image in Hounsfield units (float32, after the file's
  ``scl_slope``/``scl_inter``), lengths in mm. Labels are class indices (uint8).
* **2D slices** (:func:`volume_slice`) in radiological display convention, the
  same fixed in-plane orientation for every case:

  ======== ========== ==================================== ================================
  axis     array axis rows (top -> bottom)                 columns (left -> right)
  ======== ========== ==================================== ================================
  sagittal 0 (x)      superior -> inferior                 anterior -> posterior
  coronal  1 (y)      superior -> inferior                 patient right -> patient left
  axial    2 (z)      anterior -> posterior                patient right -> patient left
  ======== ========== ==================================== ================================

  i.e. the patient's right is on the image left (as when facing the patient)
  and, in axial slices, anterior is up. On the canonical array every axis is the
  same operation: take the plane of the two remaining axes ``(a, b)``, flip both
  and transpose (``plane[::-1, ::-1].T``), so rows follow ``b`` and columns
  ``a``. Axial slice index ``k`` runs inferior -> superior, coronal ``j``
  posterior -> anterior, sagittal ``i`` left -> right. This is the same picture as
  the phantom's convention (``volume[:, :, z].T`` on its LPS-style array).
  :func:`stack_slices` is the exact inverse.

Files: a case is ``<case>_image.<ext>`` + ``<case>_label.<ext>`` by default
(:data:`CASE_PATTERN`; ``<ext>`` any of ``nii``, ``nii.gz``, ``mha``, ``mhd``, ``nrrd``, ``nhdr``, and the two
may differ), or one folder per case with ``<case>/image.<ext>`` + ``<case>/label.<ext>``
(:data:`CASE_DIR_PATTERN`). A folder of DICOM files is one volume, matched by its name without an ending
(``<case>_image/``, ``<case>/image/``). Files pair by the ``case`` parsed from the name, never by sort
position. Every format is read by :mod:`segexp.data.io.volume_files` into the same RAS+ affine and
``(x, y, z)`` voxel order, so nothing below depends on the format.

Every reader here (:func:`find_volume_cases`, :func:`open_case`, :func:`read_voxels`,
:func:`read_label`) takes an optional problem collector (:mod:`segexp.data.io.problems`):
strict without one (``segexp-prepare``, prediction), tolerant with one (``segexp-check``).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import nibabel as nib
import numpy as np
from nibabel.affines import voxel_sizes
from nibabel.orientations import apply_orientation, inv_ornt_aff, io_orientation

from segexp.core.errors import VolumeError
from segexp.data.io.problems import Problem, Problems, report
from segexp.data.io.volume_files import (
    VolumeFile,
    VolumeFileError,
    list_volume_entries,
    open_volume_file,
    volume_checksum,
)

VOLUME_EXTENSIONS = r"(?:\.nii|\.nii\.gz|\.mha|\.mhd|\.nrrd|\.nhdr)?"
"""The optional ending of the default patterns: every volume file format; none for a DICOM folder."""

CASE_PATTERN = rf"^(?P<case>.+)_(?P<kind>image|label){VOLUME_EXTENSIONS}$"
"""Default pattern: ``<case>_image.<ext>`` / ``<case>_label.<ext>`` (any volume format, the two may differ),
``<case>_image/`` a folder of DICOM files."""

CASE_DIR_PATTERN = rf"^(?P<case>[^/]+)/(?P<kind>image|label){VOLUME_EXTENSIONS}$"
"""One folder per case: ``<case>/image.<ext>`` / ``<case>/label.<ext>`` or a DICOM folder ``<case>/image/``
(relative paths)."""

VOLUME_KINDS = "NIfTI .nii/.nii.gz, MetaImage .mha/.mhd, NRRD .nrrd/.nhdr, folders of DICOM files"
"""What :func:`find_volume_cases` lists; every one of them must match the case pattern."""

SLICE_AXES: dict[str, int] = {"sagittal": 0, "coronal": 1, "axial": 2}
"""Slicing direction -> canonical array axis (RAS+: x=R, y=A, z=S)."""

CANONICAL_ORIENTATION = "RAS"

_AFFINE_ATOL_MM = 1e-3


# --------------------------------------------------------------------------- finding cases


@dataclass(frozen=True)
class VolumeCase:
    """One patient: image and (optionally, for inference) label, each a volume file or a DICOM folder."""

    case: str
    image: Path
    label: Path | None


def compile_case_pattern(pattern: str) -> re.Pattern[str]:
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise VolumeError(f"case pattern {pattern!r} is not a valid regular expression: {exc}") from exc
    missing = {"case", "kind"} - set(regex.groupindex)
    if missing:
        raise VolumeError(
            f"case pattern {pattern!r} must have the named groups (?P<case>...) and (?P<kind>...); "
            f"missing: {sorted(missing)}"
        )
    return regex


def group_by_case(
    files: Sequence[Path], folder: Path, regex: re.Pattern[str]
) -> tuple[dict[str, dict[str, list[Path]]], list[tuple[Path, str]]]:
    """``(case -> {"image": [...], "label": [...]}, [(file, why it matches no case)])`` for volume ``files``.

    ``regex`` (:func:`compile_case_pattern`) is matched against the path relative to ``folder``.
    """
    found: dict[str, dict[str, list[Path]]] = {}
    rejected: list[tuple[Path, str]] = []
    for path in files:
        m = regex.fullmatch(path.relative_to(folder).as_posix())
        if m is None or not m.group("case"):
            rejected.append((path, "does not match the case pattern"))
        elif m.group("kind") not in ("image", "label"):
            rejected.append((path, f"kind {m.group('kind')!r} is not image or label"))
        else:
            found.setdefault(m.group("case"), {"image": [], "label": []})[m.group("kind")].append(path)
    return found, rejected


def _file_problems(
    found: Mapping[str, Mapping[str, list[Path]]],
    rejected: Sequence[tuple[Path, str]],
    pattern: str,
    require_labels: bool,
) -> list[Problem]:
    """One problem per file: outside the pattern, a case's second image or label, a missing partner."""
    out = [
        Problem(str(path), f"name does not match volumes.pattern {pattern!r} (groups case, and kind = image or label)")
        for path, _ in rejected
    ]
    for case, kinds in sorted(found.items()):
        for kind, paths in kinds.items():
            out += [
                Problem(str(extra), f"case {case} has more than one {kind} (also {paths[0].name})")
                for extra in paths[1:]
            ]
        if kinds["image"] and not kinds["label"] and require_labels:
            out.append(Problem(str(kinds["image"][0]), f"image without a label (case {case})"))
        if kinds["label"] and not kinds["image"]:
            out.append(Problem(str(kinds["label"][0]), f"label without an image (case {case})"))
    return out


def _folder_summary(
    folder: Path,
    found: Mapping[str, Mapping[str, list[Path]]],
    rejected: Sequence[tuple[Path, str]],
    pattern: str,
    require_labels: bool,
) -> str:
    """The strict error of :func:`find_volume_cases`: the same problems, grouped by kind."""

    def rel(p: Path) -> str:
        return p.relative_to(folder).as_posix()

    unmatched = [rel(p) for p, why in rejected if why.startswith("does not match")]
    bad_kind = [f"{rel(p)} ({why.split(' is ')[0]})" for p, why in rejected if not why.startswith("does not match")]
    duplicates = [
        f"{case} {kind}: {', '.join(rel(p) for p in paths)}"
        for case, kinds in sorted(found.items())
        for kind, paths in kinds.items()
        if len(paths) > 1
    ]
    no_label = sorted(c for c, k in found.items() if k["image"] and not k["label"]) if require_labels else []
    no_image = sorted(c for c, k in found.items() if k["label"] and not k["image"])
    lines = [
        *(
            [f"{len(unmatched)} file(s) do not match the case pattern {pattern!r}: {', '.join(unmatched)}"]
            if unmatched
            else []
        ),
        *([f"the pattern's 'kind' group must be 'image' or 'label': {', '.join(bad_kind)}"] if bad_kind else []),
        *([f"case found more than once: {'; '.join(duplicates)}"] if duplicates else []),
        *([f"image(s) without label for case(s): {', '.join(no_label)}"] if no_label else []),
        *([f"label(s) without image for case(s): {', '.join(no_image)}"] if no_image else []),
    ]
    return f"volume folder {folder}:\n  " + "\n  ".join(lines)


def find_volume_cases(
    folder: Path,
    pattern: str = CASE_PATTERN,
    require_labels: bool = True,
    *,
    recursive: bool | None = None,
    problems: Problems | None = None,
) -> list[VolumeCase]:
    """Image/label volume pairs in ``folder``, paired by case id, sorted by case id.

    Every volume file (an ending of :data:`~segexp.data.io.volume_files.VOLUME_SUFFIXES`) and every folder of
    DICOM files (hidden names, ``.*``, are ignored) must match ``pattern``, a regular expression with the
    named groups ``case`` and ``kind`` (``kind`` is ``image`` or ``label``). It is matched against the
    path relative to ``folder`` with ``/`` separators (a DICOM folder: its path, no trailing ``/``).
    ``recursive`` (default: whether ``pattern`` contains ``/``) also searches subfolders, e.g.
    ``find_volume_cases(root, CASE_DIR_PATTERN)`` for ``<case>/image.nii.gz``.

    With ``require_labels=False`` an image without a label gives ``label=None``
    (inference inputs). Problems: missing folder, no volume files, files not matching
    the pattern, a case twice (e.g. ``.nii`` and ``.nii.gz``), images without label,
    labels without image. Strict, one :class:`VolumeError` lists them all; with
    ``problems`` each file is one problem, and a case keeps its first image (and label).
    """
    folder = Path(folder)
    try:
        regex = compile_case_pattern(pattern)
    except VolumeError as err:
        report(problems, Problem("volumes.pattern", str(err)), str(err), VolumeError)
        return []
    if not folder.is_dir():
        report(problems, Problem(str(folder), "volume folder does not exist or is not a folder"), error=VolumeError)
        return []
    recursive = "/" in pattern if recursive is None else recursive
    files = list_volume_entries(folder, recursive)
    if not files:
        where = "in or below it" if recursive else "in it"
        report(problems, Problem(str(folder), f"no volume files ({VOLUME_KINDS}) {where}"), error=VolumeError)
        return []
    found, rejected = group_by_case(files, folder, regex)
    report(
        problems,
        _file_problems(found, rejected, pattern, require_labels),
        _folder_summary(folder, found, rejected, pattern, require_labels),
        VolumeError,
    )
    return [
        VolumeCase(case=case, image=kinds["image"][0], label=kinds["label"][0] if kinds["label"] else None)
        for case, kinds in sorted(found.items())
        if kinds["image"]
    ]


# --------------------------------------------------------------------------- headers


@dataclass
class CaseHeader:
    """Geometry of a case's image, from the header only (file orientation, not canonical)."""

    case: str
    shape: tuple[int, int, int]
    affine: np.ndarray
    spacing: tuple[float, float, float]
    orientation: str


@dataclass
class OpenedCase:
    """A case with its headers read (no voxels yet): the image's geometry, image and label files."""

    case: VolumeCase
    header: CaseHeader
    image: VolumeFile
    label: VolumeFile | None


def orientation_code(affine: np.ndarray) -> str:
    return "".join(str(c) for c in nib.aff2axcodes(affine))


def voxel_spacing(affine: np.ndarray) -> tuple[float, float, float]:
    s = voxel_sizes(affine)
    return (float(s[0]), float(s[1]), float(s[2]))


def describe_affine(affine: np.ndarray) -> str:
    sp = ", ".join(f"{s:.4g}" for s in voxel_spacing(affine))
    origin = ", ".join(f"{v:.4g}" for v in affine[:3, 3])
    return f"orientation {orientation_code(affine)}, spacing ({sp}) mm, origin ({origin}) mm"


def _case_problem(problems: Problems | None, case: str, path: Path, cause: str) -> None:
    """A problem of file ``path`` of ``case``: recorded, or raised as ``case <case>: <cause> (file <path>)``."""
    report(problems, Problem(str(path), cause), f"case {case}: {cause} (file {path})", VolumeError)


def _shape3(shape: Sequence[int]) -> tuple[int, int, int] | None:
    """The 3D shape, a trailing dimension of 1 dropped; None when not a volume."""
    dims = tuple(int(d) for d in shape)
    dims = dims[:3] if len(dims) == 4 and dims[3] == 1 else dims
    return (dims[0], dims[1], dims[2]) if len(dims) == 3 else None


def open_volume(case: str, path: Path, kind: str, problems: Problems | None = None) -> VolumeFile | None:
    """The header of ``case``'s ``kind`` (image or label) volume, any format
    (:func:`~segexp.data.io.volume_files.open_volume_file`), a 3D volume (4D with a trailing 1 accepted)."""
    if not Path(path).exists():
        _case_problem(problems, case, path, f"{kind} file does not exist")
        return None
    try:
        img = open_volume_file(path)
    except VolumeFileError as err:
        _case_problem(problems, case, path, f"{kind}: {err.cause}" if err.path == Path(path) else str(err))
        return None
    except Exception as exc:  # a reader's own error on a corrupt file
        _case_problem(problems, case, path, f"cannot read the {kind}'s header ({type(exc).__name__}: {exc})")
        return None
    if _shape3(img.shape) is None:
        shape = tuple(int(d) for d in img.shape)
        _case_problem(problems, case, path, f"{kind} is not a 3D volume (or 4D with a trailing 1): shape {shape}")
        return None
    return img


def _matching_label(
    case: VolumeCase, header: CaseHeader, lab: VolumeFile, problems: Problems | None
) -> VolumeFile | None:
    """``lab`` when its grid is the image's: a shape mismatch drops it, an affine mismatch is a problem only."""
    label_path = cast(Path, case.label)
    lab_shape = _shape3(lab.shape)
    if lab_shape != header.shape:
        cause = f"label shape {lab_shape} != image shape {header.shape} ({case.image.name})"
        _case_problem(problems, case.case, label_path, cause)
        return None
    lab_affine = np.asarray(lab.affine, dtype=np.float64)
    if not np.allclose(lab_affine, header.affine, rtol=0.0, atol=_AFFINE_ATOL_MM):
        cause = (
            f"label affine differs from the image's (tolerance {_AFFINE_ATOL_MM} mm): "
            f"label {describe_affine(lab_affine)}; image {describe_affine(header.affine)} ({case.image.name})"
        )
        _case_problem(problems, case.case, label_path, cause)
    return lab


def open_case(case: VolumeCase, problems: Problems | None = None) -> OpenedCase | None:
    """Read the headers of ``case`` (no voxel data): image and label 3D, same shape and affine (atol 1e-3 mm).

    ``spacing`` is the voxel size from the affine (column norms, mm) in file axis order;
    ``orientation`` the file's axis codes (e.g. ``"LPS"``). Strict, the first problem raises
    :class:`VolumeError`; with ``problems``: None when the image does not open, the label
    left out (``None``) when it does not open or differs in shape, kept when only its affine differs.
    """
    img = open_volume(case.case, case.image, "image", problems)
    lab = open_volume(case.case, case.label, "label", problems) if case.label is not None else None
    if img is None:
        return None
    affine = np.asarray(img.affine, dtype=np.float64)
    shape = cast(tuple[int, int, int], _shape3(img.shape))
    header = CaseHeader(case.case, shape, affine, voxel_spacing(affine), orientation_code(affine))
    return OpenedCase(case, header, img, _matching_label(case, header, lab, problems) if lab is not None else None)


def read_header(case: VolumeCase) -> CaseHeader:
    """Image geometry from the headers only, strict (:func:`open_case`)."""
    return cast(OpenedCase, open_case(case)).header


def header_slices(header: CaseHeader, axis: str) -> int:
    """Number of 2D slices along ``axis`` once the case is reoriented to RAS+ (from the header alone)."""
    ornt = io_orientation(header.affine)
    return int(header.shape[int(np.flatnonzero(ornt[:, 0] == _slice_axis(axis))[0])])


# --------------------------------------------------------------------------- loading


@dataclass
class LoadedCase:
    """A case in canonical RAS+ orientation (see the module docstring).

    ``image`` float32 HU and ``label`` uint8 class indices (``None`` without a
    label file) share shape ``(nx, ny, nz)`` and ``affine``; ``spacing`` is in
    the canonical axis order. ``original_*`` describe the file as stored, and ``source``
    is the opened image file (its format and geometry as stored), to write predictions
    back in the original geometry and format.
    """

    case: str
    image: np.ndarray
    label: np.ndarray | None
    affine: np.ndarray
    spacing: tuple[float, float, float]
    original_orientation: str
    original_shape: tuple[int, ...]
    original_affine: np.ndarray
    source: VolumeFile


def _summarise(values: np.ndarray, limit: int = 10) -> str:
    shown = ", ".join(f"{v:g}" for v in values[:limit])
    more = f", ... ({values.size} distinct)" if values.size > limit else ""
    return f"[{shown}{more}]"


def read_voxels(
    opened: OpenedCase, kind: str, dtype: type | None = np.float32, problems: Problems | None = None
) -> np.ndarray | None:
    """The voxels of the opened image (or label: ``kind``), file orientation, as ``dtype`` (None: as stored)."""
    img, path = (opened.image, opened.case.image) if kind == "image" else (opened.label, opened.case.label)
    try:
        return cast(VolumeFile, img).read(dtype).reshape(opened.header.shape)
    except Exception as exc:  # a truncated .nii.gz raises EOFError, zlib.error, ValueError ...
        cause = f"cannot read the voxel data, truncated or corrupt ({type(exc).__name__}: {exc})"
        _case_problem(problems, opened.case.case, cast(Path, path), cause)
        return None


def read_label(
    opened: OpenedCase, allowed_labels: Collection[int] | None = None, problems: Problems | None = None
) -> np.ndarray | None:
    """The label voxels as uint8 class indices (file orientation), None without a readable label.

    Labels must be integer-valued (a float label only if every value is an integer) and
    within 0..255; values outside ``allowed_labels`` (when given) are a problem that
    keeps the label.
    """
    if opened.label is None:
        return None
    data = read_voxels(opened, "label", None, problems)
    if data is None:
        return None
    case, path = opened.case.case, cast(Path, opened.case.label)
    if not (np.issubdtype(data.dtype, np.integer) or np.issubdtype(data.dtype, np.bool_)):
        if not np.isfinite(data).all():
            _case_problem(problems, case, path, "label contains NaN or infinite values")
            return None
        fractional = data != np.round(data)
        if fractional.any():
            bad = _summarise(np.unique(data[fractional]))
            _case_problem(problems, case, path, f"label must hold integer class indices; non-integer values {bad}")
            return None
    if data.min() < 0 or data.max() > 255:
        bad = _summarise(np.unique(data[(data < 0) | (data > 255)]))
        _case_problem(problems, case, path, f"label values must be class indices in 0..255; got {bad}")
        return None
    label = data.astype(np.uint8, copy=False)
    if allowed_labels is not None:
        allowed = sorted({int(v) for v in allowed_labels})
        unexpected = np.setdiff1d(np.flatnonzero(np.bincount(label.ravel(), minlength=256)), allowed)
        if unexpected.size:
            bad = _summarise(unexpected)
            cause = f"label values {bad} are not in volumes.classes (unexpected values {bad}; allowed: {allowed})"
            _case_problem(problems, case, path, cause)
    return label


def load_case(
    case: VolumeCase, allowed_labels: Collection[int] | None = None, image_dtype: type | None = np.float32
) -> LoadedCase:
    """Load a case's image (float32 HU) and label (uint8), reoriented to RAS+; strict.

    Runs the :func:`open_case` checks first and :func:`read_label`'s on the label. The
    reorientation is that of ``nib.as_closest_canonical`` (permutations and flips only,
    views where possible), applied to the float32 image so that no wider copy of the
    volume is made. Every problem raises :class:`VolumeError` naming the case, the file
    and the offending values. One volume at a time: memory is about one float32 image
    plus the label and its native-dtype read. ``image_dtype=None`` keeps the image as
    stored (e.g. int16 HU; float only where the header scales it), for windowing
    through a lookup table without a float copy.
    """
    opened = cast(OpenedCase, open_case(case))
    header = opened.header
    ornt = io_orientation(header.affine)
    canonical_affine = header.affine @ inv_ornt_aff(ornt, header.shape)
    image = apply_orientation(cast(np.ndarray, read_voxels(opened, "image", image_dtype)), ornt)
    label = read_label(opened, allowed_labels)
    return LoadedCase(
        case=case.case,
        image=image,
        label=None if label is None else apply_orientation(label, ornt),
        affine=canonical_affine,
        spacing=voxel_spacing(canonical_affine),
        original_orientation=header.orientation,
        original_shape=tuple(int(d) for d in opened.image.shape),
        original_affine=header.affine,
        source=opened.image,
    )


# --------------------------------------------------------------------------- slicing


def _slice_axis(axis: str) -> int:
    try:
        return SLICE_AXES[axis]
    except KeyError as err:
        raise ValueError(f"slice axis must be one of {sorted(SLICE_AXES)}, got {axis!r}") from err


def _check_volume(volume: np.ndarray) -> np.ndarray:
    arr = np.asanyarray(volume)
    if arr.ndim not in (3, 4):
        raise ValueError(f"expected a 3D volume (x, y, z) or one with channels (x, y, z, C), got shape {arr.shape}")
    return arr


def num_slices(volume: np.ndarray, axis: str) -> int:
    """Number of 2D slices of a canonical ``(x, y, z)`` volume along ``axis``."""
    return int(_check_volume(volume).shape[_slice_axis(axis)])


def volume_slice(volume: np.ndarray, axis: str, index: int) -> np.ndarray:
    """2D slice ``index`` of a canonical RAS+ ``(x, y, z)`` volume, in display orientation.

    ``axial`` (fixed z): rows anterior -> posterior, columns patient right -> left;
    ``coronal`` (fixed y): rows superior -> inferior, columns right -> left;
    ``sagittal`` (fixed x): rows superior -> inferior, columns anterior -> posterior.
    Returns a C-contiguous array of the volume's dtype, shape ``(rows, cols)``:
    axial ``(ny, nx)``, coronal ``(nz, nx)``, sagittal ``(nz, ny)``; a volume with channels
    ``(x, y, z, C)`` gives ``(rows, cols, C)``.
    """
    arr = _check_volume(volume)
    ax = _slice_axis(axis)
    n = arr.shape[ax]
    if not 0 <= index < n:
        raise IndexError(f"{axis} slice index {index} out of range 0..{n - 1}")
    plane = arr[(slice(None),) * ax + (index,)]  # a view: the two remaining axes in order (then channels)
    return np.ascontiguousarray(np.swapaxes(plane[::-1, ::-1], 0, 1))


def stack_slices(slices: Sequence[np.ndarray] | np.ndarray, axis: str) -> np.ndarray:
    """Inverse of :func:`volume_slice`: display-oriented 2D slices -> canonical ``(x, y, z)`` volume.

    ``slices[i]`` becomes slice ``i`` along ``axis``, so
    ``stack_slices([volume_slice(v, axis, i) for i in range(num_slices(v, axis))], axis)``
    equals ``v``. All slices must be 2D with the same shape.
    """
    ax = _slice_axis(axis)
    if len(slices) == 0:
        raise ValueError("stack_slices needs at least one slice")
    arrays = [np.asanyarray(s) for s in slices]
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1 or arrays[0].ndim != 2:
        raise ValueError(f"stack_slices needs 2D slices of one shape, got shapes {sorted(shapes)}")
    planes = [a.T[::-1, ::-1] for a in arrays]
    return np.ascontiguousarray(np.stack(planes, axis=ax))


def canonical_grid(header: CaseHeader) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    """``(shape, spacing)`` of the case once reoriented to RAS+ (:func:`load_case`), from the header alone."""
    ornt = io_orientation(header.affine)
    shape = tuple(int(header.shape[int(np.flatnonzero(ornt[:, 0] == ax)[0])]) for ax in range(3))
    return cast(tuple[int, int, int], shape), voxel_spacing(header.affine @ inv_ornt_aff(ornt, header.shape))


def slice_shape(shape: Sequence[int], axis: str) -> tuple[int, int]:
    """``(rows, cols)`` of :func:`volume_slice` images of a canonical volume of ``shape``."""
    ax = _slice_axis(axis)
    a, b = (i for i in range(3) if i != ax)
    return int(shape[b]), int(shape[a])


def slice_pixel_spacing(spacing: Sequence[float], axis: str) -> tuple[float, float]:
    """``(row, column)`` pixel size in mm of :func:`volume_slice` images, from canonical ``spacing``."""
    ax = _slice_axis(axis)
    a, b = (i for i in range(3) if i != ax)
    return float(spacing[b]), float(spacing[a])


# --------------------------------------------------------------------------- checksums


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a volume file, or of a DICOM folder's files
    (:func:`~segexp.data.io.volume_files.volume_checksum`)."""
    return volume_checksum(path)
