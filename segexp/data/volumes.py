"""3D CT volumes (NIfTI): finding cases, headers, canonical orientation, slicing.

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

Files: a case is ``<case>_image.nii[.gz]`` + ``<case>_label.nii[.gz]`` by
default (:data:`CASE_PATTERN`), or one folder per case with
``<case>/image.nii[.gz]`` + ``<case>/label.nii[.gz]`` (:data:`CASE_DIR_PATTERN`).
Files pair by the ``case`` parsed from the name, never by sort position.
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import nibabel as nib
import numpy as np
from nibabel.affines import voxel_sizes
from nibabel.orientations import apply_orientation, inv_ornt_aff, io_orientation
from nibabel.spatialimages import SpatialImage

from segexp.core.errors import VolumeError

CASE_PATTERN = r"^(?P<case>.+)_(?P<kind>image|label)\.nii(\.gz)?$"
"""Default file-name pattern: ``<case>_image.nii.gz`` / ``<case>_label.nii.gz``."""

CASE_DIR_PATTERN = r"^(?P<case>[^/]+)/(?P<kind>image|label)\.nii(\.gz)?$"
"""One folder per case: ``<case>/image.nii.gz`` / ``<case>/label.nii.gz`` (relative paths)."""

NIFTI_GLOB = "*.nii*"
"""Files that look like NIfTI; every one of them must match the case pattern."""

SLICE_AXES: dict[str, int] = {"sagittal": 0, "coronal": 1, "axial": 2}
"""Slicing direction -> canonical array axis (RAS+: x=R, y=A, z=S)."""

CANONICAL_ORIENTATION = "RAS"

_AFFINE_ATOL_MM = 1e-3
_HASH_CHUNK = 1 << 20


# --------------------------------------------------------------------------- finding cases


@dataclass(frozen=True)
class VolumeCase:
    """One patient: image file and (optionally, for inference) label file."""

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


def list_nifti_files(folder: Path, recursive: bool) -> list[Path]:
    """``*.nii*`` files in (``recursive``: or below) ``folder``, hidden files and folders (``.*``) left out, sorted."""
    candidates = folder.rglob(NIFTI_GLOB) if recursive else folder.glob(NIFTI_GLOB)
    return sorted(
        p
        for p in candidates
        if p.is_file()
        and fnmatch.fnmatch(p.name, NIFTI_GLOB)
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def group_by_case(
    files: Sequence[Path], folder: Path, regex: re.Pattern[str]
) -> tuple[dict[str, dict[str, list[Path]]], list[tuple[Path, str]]]:
    """``(case -> {"image": [...], "label": [...]}, [(file, why it matches no case)])`` for NIfTI ``files``.

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


def _pairing_problems(found: Mapping[str, Mapping[str, list[Path]]], folder: Path, require_labels: bool) -> list[str]:
    """Cases found twice, images without labels (when required), labels without images."""
    problems = []
    duplicates = [
        f"{case} {kind}: {', '.join(p.relative_to(folder).as_posix() for p in paths)}"
        for case, kinds in sorted(found.items())
        for kind, paths in kinds.items()
        if len(paths) > 1
    ]
    if duplicates:
        problems.append(f"case found more than once: {'; '.join(duplicates)}")
    no_label = sorted(c for c, k in found.items() if k["image"] and not k["label"])
    no_image = sorted(c for c, k in found.items() if k["label"] and not k["image"])
    if no_label and require_labels:
        problems.append(f"image(s) without label for case(s): {', '.join(no_label)}")
    if no_image:
        problems.append(f"label(s) without image for case(s): {', '.join(no_image)}")
    return problems


def find_volume_cases(
    folder: Path,
    pattern: str = CASE_PATTERN,
    require_labels: bool = True,
    *,
    recursive: bool | None = None,
) -> list[VolumeCase]:
    """Image/label NIfTI pairs in ``folder``, paired by case id, sorted by case id.

    Every file whose name matches ``*.nii*`` (hidden files, ``.*``, are ignored)
    must match ``pattern``, a regular expression with the named groups ``case``
    and ``kind`` (``kind`` is ``image`` or ``label``). It is matched against the
    path relative to ``folder`` with ``/`` separators. ``recursive`` (default:
    whether ``pattern`` contains ``/``) also searches subfolders, e.g.
    ``find_volume_cases(root, CASE_DIR_PATTERN)`` for ``<case>/image.nii.gz``.

    With ``require_labels=False`` an image without a label gives ``label=None``
    (inference inputs). Raises :class:`VolumeError` listing all problems at once:
    missing folder, no NIfTI files, files not matching the pattern, a case twice
    (e.g. ``.nii`` and ``.nii.gz``), images without label, labels without image.
    """
    folder = Path(folder)
    regex = compile_case_pattern(pattern)
    if not folder.is_dir():
        raise VolumeError(f"volume folder {folder} does not exist or is not a folder")
    recursive = "/" in pattern if recursive is None else recursive
    files = list_nifti_files(folder, recursive)
    if not files:
        raise VolumeError(f"no NIfTI files ({NIFTI_GLOB}) {'in or below' if recursive else 'in'} {folder}")
    found, rejected = group_by_case(files, folder, regex)
    unmatched = [p.relative_to(folder).as_posix() for p, why in rejected if why.startswith("does not match")]
    bad_kind = [
        f"{p.relative_to(folder).as_posix()} ({why.split(' is ')[0]})"
        for p, why in rejected
        if not why.startswith("does not match")
    ]
    problems: list[str] = []
    if unmatched:
        problems.append(f"{len(unmatched)} file(s) do not match the case pattern {pattern!r}: {', '.join(unmatched)}")
    if bad_kind:
        problems.append(f"the pattern's 'kind' group must be 'image' or 'label': {', '.join(bad_kind)}")
    problems += _pairing_problems(found, folder, require_labels)
    if problems:
        raise VolumeError(f"volume folder {folder}:\n  " + "\n  ".join(problems))
    return [
        VolumeCase(case=case, image=kinds["image"][0], label=kinds["label"][0] if kinds["label"] else None)
        for case, kinds in sorted(found.items())
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


def orientation_code(affine: np.ndarray) -> str:
    return "".join(str(c) for c in nib.aff2axcodes(affine))


def voxel_spacing(affine: np.ndarray) -> tuple[float, float, float]:
    s = voxel_sizes(affine)
    return (float(s[0]), float(s[1]), float(s[2]))


def _load_nifti(case: str, path: Path, kind: str) -> SpatialImage:
    try:
        return cast(SpatialImage, nib.load(str(path)))  # NIfTI files: a SpatialImage (Nifti1Image/Nifti2Image)
    except FileNotFoundError as err:
        raise VolumeError(f"case {case}: {kind} file {path} does not exist") from err
    except Exception as exc:  # nibabel raises several types for corrupt files
        raise VolumeError(f"case {case}: cannot read {kind} file {path}: {exc}") from exc


def _shape3(case: str, path: Path, kind: str, shape: tuple[int, ...]) -> tuple[int, int, int]:
    dims = tuple(int(d) for d in shape)
    if len(dims) == 4 and dims[3] == 1:
        dims = dims[:3]
    if len(dims) != 3:
        raise VolumeError(
            f"case {case}: {kind} {path} must be a 3D volume (or 4D with a trailing dimension of 1), got shape {dims}"
        )
    return dims


def describe_affine(affine: np.ndarray) -> str:
    sp = ", ".join(f"{s:.4g}" for s in voxel_spacing(affine))
    origin = ", ".join(f"{v:.4g}" for v in affine[:3, 3])
    return f"orientation {orientation_code(affine)}, spacing ({sp}) mm, origin ({origin}) mm"


def _read_header(case: VolumeCase) -> tuple[CaseHeader, SpatialImage, SpatialImage | None]:
    img = _load_nifti(case.case, case.image, "image")
    shape = _shape3(case.case, case.image, "image", img.shape)
    affine = np.asarray(img.affine, dtype=np.float64)
    header = CaseHeader(
        case=case.case,
        shape=shape,
        affine=affine,
        spacing=voxel_spacing(affine),
        orientation=orientation_code(affine),
    )
    if case.label is None:
        return header, img, None
    lab = _load_nifti(case.case, case.label, "label")
    lab_shape = _shape3(case.case, case.label, "label", lab.shape)
    if lab_shape != shape:
        raise VolumeError(
            f"case {case.case}: label shape {lab_shape} ({case.label.name}) != image shape {shape} ({case.image.name})"
        )
    lab_affine = np.asarray(lab.affine, dtype=np.float64)
    if not np.allclose(lab_affine, affine, rtol=0.0, atol=_AFFINE_ATOL_MM):
        raise VolumeError(
            f"case {case.case}: label affine differs from image affine (tolerance {_AFFINE_ATOL_MM} mm):\n"
            f"  image {case.image.name}: {describe_affine(affine)}\n"
            f"  label {case.label.name}: {describe_affine(lab_affine)}\n"
            f"  image affine:\n{np.array2string(affine, precision=4)}\n"
            f"  label affine:\n{np.array2string(lab_affine, precision=4)}"
        )
    return header, img, lab


def read_header(case: VolumeCase) -> CaseHeader:
    """Image geometry from the headers only (no voxel data is read).

    Checks that the image is 3D (4D with a trailing singleton dimension is
    accepted as 3D) and, when the case has a label, that the label has the same
    shape and the same affine (``np.allclose``, atol 1e-3 mm). ``spacing`` is the
    voxel size from the affine (column norms, mm) in file axis order;
    ``orientation`` the file's axis codes (e.g. ``"LPS"``).
    """
    return _read_header(case)[0]


# --------------------------------------------------------------------------- loading


@dataclass
class LoadedCase:
    """A case in canonical RAS+ orientation (see the module docstring).

    ``image`` float32 HU and ``label`` uint8 class indices (``None`` without a
    label file) share shape ``(nx, ny, nz)`` and ``affine``; ``spacing`` is in
    the canonical axis order. ``original_*`` describe the file as stored, to write
    predictions back in the original geometry.
    """

    case: str
    image: np.ndarray
    label: np.ndarray | None
    affine: np.ndarray
    spacing: tuple[float, float, float]
    original_orientation: str
    original_shape: tuple[int, ...]
    original_affine: np.ndarray


def _summarise(values: np.ndarray, limit: int = 10) -> str:
    shown = ", ".join(f"{v:g}" for v in values[:limit])
    more = f", ... ({values.size} distinct)" if values.size > limit else ""
    return f"[{shown}{more}]"


def _label_to_uint8(case: VolumeCase, data: np.ndarray, allowed_labels: Collection[int] | None) -> np.ndarray:
    name = case.label.name if case.label is not None else "label"
    if not (np.issubdtype(data.dtype, np.integer) or np.issubdtype(data.dtype, np.bool_)):
        finite = np.isfinite(data)
        if not finite.all():
            raise VolumeError(f"case {case.case}: label {name} contains NaN or infinite values")
        fractional = data != np.round(data)
        if fractional.any():
            bad = np.unique(data[fractional])
            raise VolumeError(
                f"case {case.case}: label {name} must hold integer class indices; non-integer values {_summarise(bad)}"
            )
    lo, hi = data.min(), data.max()
    if lo < 0 or hi > 255:
        bad = np.unique(data[(data < 0) | (data > 255)])
        raise VolumeError(
            f"case {case.case}: label {name} values must be class indices in 0..255; got {_summarise(bad)}"
        )
    label = data.astype(np.uint8, copy=False)
    if allowed_labels is not None:
        allowed = sorted({int(v) for v in allowed_labels})
        present = np.flatnonzero(np.bincount(label.ravel(), minlength=256))
        unexpected = np.setdiff1d(present, allowed)
        if unexpected.size:
            raise VolumeError(
                f"case {case.case}: label {name} has unexpected values {_summarise(unexpected)}; allowed: {allowed}"
            )
    return label


def load_case(
    case: VolumeCase, allowed_labels: Collection[int] | None = None, image_dtype: type | None = np.float32
) -> LoadedCase:
    """Load a case's image (float32 HU) and label (uint8), reoriented to RAS+.

    Runs the :func:`read_header` checks first. The reorientation is that of
    ``nib.as_closest_canonical`` (permutations and flips only, views where
    possible), applied to the float32 image so that no wider copy of the volume
    is made. Labels must be integer-valued (a float label file is accepted only
    if every value is an integer), within 0..255 and, when ``allowed_labels`` is
    given, a subset of it; otherwise :class:`VolumeError` naming the case and the
    offending values. One volume at a time: memory is about one float32 image
    plus the label and its native-dtype read. ``image_dtype=None`` keeps the image as
    stored (e.g. int16 HU; float only where the header scales it), for windowing
    through a lookup table without a float copy.
    """
    header, img, lab = _read_header(case)
    ornt = io_orientation(header.affine)
    canonical_affine = header.affine @ inv_ornt_aff(ornt, header.shape)

    try:
        data = img.dataobj if image_dtype is None else np.asarray(img.dataobj, dtype=image_dtype)
        image = np.asanyarray(data).reshape(header.shape)
    except Exception as exc:
        raise VolumeError(f"case {case.case}: cannot read image data from {case.image}: {exc}") from exc
    image = apply_orientation(image, ornt)

    label = None
    if lab is not None:
        try:
            raw = np.asanyarray(lab.dataobj).reshape(header.shape)
        except Exception as exc:
            raise VolumeError(f"case {case.case}: cannot read label data from {case.label}: {exc}") from exc
        label = apply_orientation(_label_to_uint8(case, raw, allowed_labels), ornt)

    return LoadedCase(
        case=case.case,
        image=image,
        label=label,
        affine=canonical_affine,
        spacing=voxel_spacing(canonical_affine),
        original_orientation=header.orientation,
        original_shape=tuple(int(d) for d in img.shape),
        original_affine=header.affine,
    )


# --------------------------------------------------------------------------- slicing


def _slice_axis(axis: str) -> int:
    try:
        return SLICE_AXES[axis]
    except KeyError as err:
        raise ValueError(f"slice axis must be one of {sorted(SLICE_AXES)}, got {axis!r}") from err


def _check_volume(volume: np.ndarray) -> np.ndarray:
    arr = np.asanyarray(volume)
    if arr.ndim != 3:
        raise ValueError(f"expected a 3D volume (x, y, z), got shape {arr.shape}")
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
    axial ``(ny, nx)``, coronal ``(nz, nx)``, sagittal ``(nz, ny)``.
    """
    arr = _check_volume(volume)
    ax = _slice_axis(axis)
    n = arr.shape[ax]
    if not 0 <= index < n:
        raise IndexError(f"{axis} slice index {index} out of range 0..{n - 1}")
    plane = arr[(slice(None),) * ax + (index,)]  # a view: the two remaining axes in order
    return np.ascontiguousarray(plane[::-1, ::-1].T)


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


def slice_pixel_spacing(spacing: Sequence[float], axis: str) -> tuple[float, float]:
    """``(row, column)`` pixel size in mm of :func:`volume_slice` images, from canonical ``spacing``."""
    ax = _slice_axis(axis)
    a, b = (i for i in range(3) if i != ax)
    return float(spacing[b]), float(spacing[a])


# --------------------------------------------------------------------------- checksums


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()
