"""Volume files on disk, any format: NIfTI, MetaImage (MHA/MHD), NRRD and DICOM series folders.

One reader (:func:`open_volume_file` -> :class:`VolumeFile`, voxels on demand by :meth:`VolumeFile.read`)
and one writer (:func:`write_label_volume`) for every format, so that the rest of segexp (pairing, RAS
reorientation and slicing in :mod:`segexp.data.io.volumes`) sees one kind of volume:

* **Voxel order** ``(x, y, z)`` = the file's ``(i, j, k)`` (nibabel's order). SimpleITK's arrays are
  ``(z, y, x)``; they are transposed (a view, no copy).
* **Geometry** one 4x4 affine per volume, voxel -> world in mm, world **RAS+** (NIfTI's convention).
  ITK and DICOM store LPS+ (origin, spacing, direction); with ``F = diag(-1, -1, 1)``::

      affine[:3, :3] = F @ direction @ diag(spacing)      affine[:3, 3] = F @ origin

  exactly (:func:`itk_to_affine`, inverse :func:`affine_to_itk`). Files read through SimpleITK also keep
  their ITK geometry as stored (:attr:`VolumeFile.itk`), so a prediction written back in their format has
  the very same origin, spacing and direction.
* **Formats** by name: ``.nii``/``.nii.gz`` (nibabel, as before), ``.mha``/``.mhd`` and ``.nrrd``/``.nhdr``
  (SimpleITK), a folder of DICOM files = one series (checked with pydicom, read with SimpleITK's
  ``ImageSeriesReader``), and a single DICOM file (``.dcm``: one slice, or a multi-frame volume).
* **DICOM series checks** (each an error naming the folder): no DICOM image files, several
  ``SeriesInstanceUID`` in one folder, differing orientation, size or pixel spacing, two slices at one
  position, a missing slice or unequal slice spacing (gaps along the slice normal compared with a
  tolerance of :data:`SPACING_RTOL` of the median gap, at least :data:`SPACING_ATOL_MM`), slices not
  stacked along their normal (gantry tilt).
* **Writing** (:func:`write_label_volume`): a label volume in the input's format and geometry; a DICOM
  input's prediction is NIfTI (or MHA, NRRD: ``output_format``). ``.mhd``/``.nhdr`` inputs are written as
  the one-file ``.mha``/``.nrrd`` of the same format (a detached header and its data file cannot be written
  atomically as one file).

Errors are :class:`VolumeFileError` (a :class:`~segexp.core.errors.VolumeError`): ``<path>: <cause>``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import nibabel as nib
import numpy as np
import pydicom
import SimpleITK as sitk
from nibabel.spatialimages import SpatialImage

from segexp.core.errors import VolumeError
from segexp.core.files import atomic_write_path

VolumeFormat = Literal["nifti", "mha", "nrrd", "dicom"]
"""The format of a volume on disk (MetaImage ``.mha``/``.mhd`` is ``mha``, ``.nrrd``/``.nhdr`` is ``nrrd``)."""

OutputFormat = Literal["auto", "nifti", "mha", "nrrd"]
"""What :func:`write_label_volume` writes: ``auto`` = the input's format (a DICOM input: NIfTI)."""

#: File name endings of the volume files, lower case -> format (a DICOM series is a folder).
VOLUME_SUFFIXES: dict[str, VolumeFormat] = {
    ".nii.gz": "nifti",
    ".nii": "nifti",
    ".mha": "mha",
    ".mhd": "mha",
    ".nrrd": "nrrd",
    ".nhdr": "nrrd",
}
#: The suffix of each written format.
WRITTEN_SUFFIX: dict[str, str] = {"nifti": ".nii.gz", "mha": ".mha", "nrrd": ".nrrd"}
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
"""Endings of DICOM files; files without an ending (or with a numeric one, as UIDs) are DICOM when they
carry the ``DICM`` preamble."""

SPACING_RTOL = 0.01
"""Slice gaps of a DICOM series may differ by this fraction of the median gap ..."""
SPACING_ATOL_MM = 0.01
"""... or by this many mm, whichever is larger."""
ORIENTATION_ATOL = 1e-3
"""Direction cosines (ImageOrientationPatient) of one series may differ by this much."""

_LPS = np.diag([-1.0, -1.0, 1.0])  # LPS <-> RAS (its own inverse)
_HASH_CHUNK = 1 << 20


class VolumeFileError(VolumeError):
    """A volume file or DICOM folder cannot be read as a volume: ``<path>: <cause>``."""

    def __init__(self, path: Path, cause: str) -> None:
        self.path = Path(path)
        self.cause = cause
        super().__init__(f"{path}: {cause}")


# --------------------------------------------------------------------------- formats and names


def is_dicom_file(path: Path) -> bool:
    """A DICOM file: named ``*.dcm``/``*.dicom``/``*.ima``, or named without (or with a numeric) ending and
    carrying the 128-byte preamble + ``DICM``. ``DICOMDIR`` (an index, no image) is not one."""
    name = path.name.lower()
    if name.startswith(".") or name == "dicomdir" or not path.is_file():
        return False
    if name.endswith(DICOM_SUFFIXES):
        return True
    suffix = path.suffix[1:]
    if suffix and not suffix.isdigit():
        return False
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def dicom_files(folder: Path) -> list[Path]:
    """The DICOM files directly in ``folder`` (:func:`is_dicom_file`), sorted by name."""
    return sorted(p for p in Path(folder).iterdir() if is_dicom_file(p))


def is_dicom_folder(folder: Path) -> bool:
    """``folder`` holds at least one DICOM file directly (stops at the first)."""
    folder = Path(folder)
    return folder.is_dir() and any(is_dicom_file(p) for p in folder.iterdir())


def volume_format(path: Path) -> VolumeFormat | None:
    """The format of ``path`` by its name (a folder: ``dicom`` when it holds DICOM files), None when it is
    no volume."""
    path = Path(path)
    if path.is_dir():
        return "dicom" if is_dicom_folder(path) else None
    name = path.name.lower()
    for suffix, fmt in VOLUME_SUFFIXES.items():
        if name.endswith(suffix):
            return fmt
    return "dicom" if name.endswith(DICOM_SUFFIXES) or is_dicom_file(path) else None


def volume_stem(path: Path) -> str:
    """The name of ``path`` without its volume ending (``case7_image.nii.gz`` -> ``case7_image``; a folder:
    its name)."""
    name = Path(path).name
    lower = name.lower()
    for suffix in (*VOLUME_SUFFIXES, *DICOM_SUFFIXES):
        if lower.endswith(suffix) and not Path(path).is_dir():
            return name[: -len(suffix)]
    return name


def list_volume_entries(folder: Path, recursive: bool) -> list[Path]:
    """Volume files (:data:`VOLUME_SUFFIXES`) and DICOM series folders in (``recursive``: or below)
    ``folder``, hidden names (``.*``) left out, sorted. A DICOM folder is one entry: nothing inside it is
    listed; ``folder`` itself is never an entry."""
    folder = Path(folder)
    found: list[Path] = []
    pending = [folder]
    while pending:
        current = pending.pop()
        for entry in current.iterdir():
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                if is_dicom_folder(entry):
                    found.append(entry)
                elif recursive:
                    pending.append(entry)
            elif entry.is_file() and entry.name.lower().endswith(tuple(VOLUME_SUFFIXES)):
                found.append(entry)
    return sorted(found)


# --------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class ItkGeometry:
    """ITK's geometry (LPS+, mm): ``origin`` of voxel (0, 0, 0), ``spacing`` per axis, ``direction`` the 3x3
    matrix of the axes' unit vectors as columns, row-major (SimpleITK's ``GetDirection()``)."""

    origin: tuple[float, float, float]
    spacing: tuple[float, float, float]
    direction: tuple[float, ...]

    def affine(self) -> np.ndarray:
        """The RAS+ voxel -> world affine (:func:`itk_to_affine`)."""
        return itk_to_affine(self.origin, self.spacing, self.direction)

    def apply(self, image: sitk.Image) -> sitk.Image:
        """``image`` with this geometry (in place; returned for chaining)."""
        image.SetOrigin(self.origin)
        image.SetSpacing(self.spacing)
        image.SetDirection(self.direction)
        return image


def itk_to_affine(origin: Sequence[float], spacing: Sequence[float], direction: Sequence[float]) -> np.ndarray:
    """RAS+ affine of an ITK (LPS+) geometry: ``[F D diag(s) | F o]`` with ``F = diag(-1, -1, 1)``."""
    affine = np.eye(4)
    d = np.asarray(direction, np.float64).reshape(3, 3)
    affine[:3, :3] = _LPS @ d @ np.diag(np.asarray(spacing, np.float64))
    affine[:3, 3] = _LPS @ np.asarray(origin, np.float64)
    return affine


def affine_to_itk(affine: np.ndarray) -> ItkGeometry:
    """The ITK (LPS+) geometry of a RAS+ affine; inverse of :func:`itk_to_affine`. The spacing is the columns'
    norms; the direction must be orthonormal (no shear), as ITK requires (checked by SimpleITK)."""
    a = np.asarray(affine, np.float64)
    spacing = np.linalg.norm(a[:3, :3], axis=0)
    direction = _LPS @ a[:3, :3] @ np.diag(1.0 / spacing)
    origin = _LPS @ a[:3, 3]
    return ItkGeometry(
        (float(origin[0]), float(origin[1]), float(origin[2])),
        (float(spacing[0]), float(spacing[1]), float(spacing[2])),
        tuple(float(v) for v in direction.ravel()),
    )


def _itk_geometry(image: sitk.Image | sitk.ImageFileReader, dimension: int) -> ItkGeometry:
    """The first three axes' geometry of an image (or a reader after ``ReadImageInformation``)."""
    origin, spacing = image.GetOrigin(), image.GetSpacing()
    d = np.asarray(image.GetDirection(), np.float64).reshape(dimension, dimension)[:3, :3]
    return ItkGeometry(
        (float(origin[0]), float(origin[1]), float(origin[2])),
        (float(spacing[0]), float(spacing[1]), float(spacing[2])),
        tuple(float(v) for v in d.ravel()),
    )


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True, eq=False)
class VolumeFile:
    """An opened volume: header read, voxels on demand (:meth:`read`).

    ``shape`` in ``(x, y, z)`` order (as nibabel: a 4th axis when the file has one; a multi-component
    ITK image adds its components last); ``affine`` RAS+ mm (module docstring). ``itk``: the geometry as
    stored by ITK/DICOM (None for NIfTI); ``nifti``: the nibabel image of a NIfTI file (its header is the
    template of predictions written back); ``files``: a DICOM series' files in slice order (ascending
    along the slice normal).
    """

    path: Path
    format: VolumeFormat
    shape: tuple[int, ...]
    affine: np.ndarray
    itk: ItkGeometry | None = None
    nifti: SpatialImage | None = field(default=None, repr=False)
    files: tuple[Path, ...] = ()

    def read(self, dtype: type | np.dtype | None = None) -> np.ndarray:
        """The voxels in ``(x, y, z)`` order as ``dtype`` (None: as stored, scaled where the file says:
        NIfTI ``scl_slope``, DICOM ``RescaleSlope``/``RescaleIntercept``)."""
        if self.nifti is not None:
            data = self.nifti.dataobj
            return np.asanyarray(data) if dtype is None else np.asarray(data, dtype=dtype)
        if self.format == "dicom" and len(self.files) > 1:
            image = _read_series(self)
        else:  # one file (a DICOM folder of one file: that file)
            image = sitk.ReadImage(str(self.files[0] if self.files else self.path))
        view = _xyz(sitk.GetArrayViewFromImage(image), image)  # valid while `image` lives
        array = _narrow(view)
        array = view.copy() if array is view else array
        return array if dtype is None else np.asarray(array, dtype=dtype)


def _xyz(array: np.ndarray, image: sitk.Image) -> np.ndarray:
    """SimpleITK's ``(z, y, x[, c])`` array as ``(x, y, z[, c])`` (a view)."""
    axes = list(range(image.GetDimension()))[::-1]
    if image.GetNumberOfComponentsPerPixel() > 1:
        axes.append(image.GetDimension())
    return array.transpose(axes)


def _narrow(array: np.ndarray) -> np.ndarray:
    """A 32/64-bit integer array whose values fit int16 as int16 (DICOM CT read by GDCM comes as int32; int16
    is what the file stores and what windowing looks up in a table)."""
    if array.dtype.kind in "iu" and array.dtype.itemsize > 2 and array.size:
        low, high = int(array.min()), int(array.max())
        if -(2**15) <= low and high < 2**15:
            return array.astype(np.int16)
    return array


def open_volume_file(path: Path) -> VolumeFile:
    """Open the volume at ``path`` (a file of :data:`VOLUME_SUFFIXES`, a ``.dcm`` file or a DICOM folder):
    header only, no voxels. Raises :class:`VolumeFileError` naming ``path`` and the problem."""
    path = Path(path)
    if not path.exists():
        raise VolumeFileError(path, "does not exist")
    fmt = volume_format(path)
    if fmt is None:
        what = "folder holds no DICOM files" if path.is_dir() else "is not a volume file"
        known = ", ".join([*VOLUME_SUFFIXES, *DICOM_SUFFIXES])
        raise VolumeFileError(path, f"{what} (volumes: {known}, or a folder of DICOM files)")
    if fmt == "nifti":
        return _open_nifti(path)
    if fmt == "dicom" and path.is_dir():
        return _open_dicom_folder(path)
    return _open_itk_file(path, fmt)


def _open_nifti(path: Path) -> VolumeFile:
    try:
        img = cast(SpatialImage, nib.load(str(path)))  # NIfTI files: a SpatialImage (Nifti1Image/Nifti2Image)
    except Exception as exc:  # nibabel raises several types for corrupt files
        raise VolumeFileError(path, f"cannot read the NIfTI header ({type(exc).__name__}: {exc})") from exc
    shape = tuple(int(d) for d in img.shape)
    return VolumeFile(path, "nifti", shape, np.asarray(img.affine, np.float64), nifti=img)


def _open_itk_file(path: Path, fmt: VolumeFormat) -> VolumeFile:
    """MHA/MHD, NRRD or one DICOM file, header only through SimpleITK's ``ReadImageInformation``."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise VolumeFileError(path, f"cannot read the {fmt.upper()} header ({first})") from exc
    dimension = reader.GetDimension()
    shape = tuple(int(s) for s in reader.GetSize())
    components = reader.GetNumberOfComponents()
    shape = (*shape, components) if components > 1 else shape
    geometry = _itk_geometry(reader, dimension) if dimension >= 3 else None
    affine = geometry.affine() if geometry is not None else np.eye(4)
    return VolumeFile(path, fmt, shape, affine, itk=geometry, files=(path,) if fmt == "dicom" else ())


# --------------------------------------------------------------------------- DICOM series


@dataclass(frozen=True)
class _Slice:
    path: Path
    series: str
    position: np.ndarray | None
    orientation: np.ndarray | None
    size: tuple[int, int]
    pixel_spacing: tuple[float, float] | None
    frames: int


def _floats(value: object, count: int) -> np.ndarray | None:
    try:
        out = np.asarray([float(v) for v in cast(Sequence[float], value)], np.float64)
    except (TypeError, ValueError):
        return None
    return out if out.shape == (count,) else None


def _read_slice(path: Path, folder: Path) -> _Slice | None:
    """The geometry tags of one DICOM file (no pixels); None for a DICOM object without an image."""
    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True, force=path.name.lower().endswith(DICOM_SUFFIXES))
    except Exception as exc:  # pydicom raises several types for a corrupt file
        cause = f"{path.name} is not a readable DICOM file ({type(exc).__name__}: {exc})"
        raise VolumeFileError(folder, cause) from exc
    if "Rows" not in ds or "Columns" not in ds:
        return None  # a report, a presentation state ...: no image in this series
    spacing = _floats(ds.get("PixelSpacing"), 2)
    return _Slice(
        path=path,
        series=str(ds.get("SeriesInstanceUID", "")),
        position=_floats(ds.get("ImagePositionPatient"), 3),
        orientation=_floats(ds.get("ImageOrientationPatient"), 6),
        size=(int(ds.Columns), int(ds.Rows)),
        pixel_spacing=None if spacing is None else (float(spacing[0]), float(spacing[1])),
        frames=int(ds.get("NumberOfFrames", 1) or 1),
    )


def _one_series(folder: Path, slices: list[_Slice]) -> None:
    """Several SeriesInstanceUIDs, multi-frame files among several, or differing size or pixel spacing: an error
    naming the folder."""
    series: dict[str, list[str]] = {}
    for s in slices:
        series.setdefault(s.series or "(none)", []).append(s.path.name)
    if len(series) > 1:
        listed = "; ".join(f"{uid} ({len(names)} files, e.g. {names[0]})" for uid, names in sorted(series.items()))
        raise VolumeFileError(
            folder, f"holds {len(series)} DICOM series (SeriesInstanceUID): {listed}; put each series in its own folder"
        )
    multi = [s.path.name for s in slices if s.frames > 1]
    if multi:
        raise VolumeFileError(folder, f"multi-frame DICOM files among several files: {', '.join(multi[:5])}")
    for what, values in (
        ("image size (columns, rows)", [s.size for s in slices]),
        ("pixel spacing", [s.pixel_spacing for s in slices]),
    ):
        if len(set(values)) > 1:
            raise VolumeFileError(folder, f"slices differ in {what}: {sorted(set(map(str, values)))}")


def _one_orientation(folder: Path, slices: list[_Slice]) -> tuple[np.ndarray, np.ndarray]:
    """The (row, column) direction cosines (unit vectors) the slices share; an error naming the folder when a
    slice has no position or orientation, or another orientation."""
    missing = [s.path.name for s in slices if s.position is None or s.orientation is None]
    if missing:
        raise VolumeFileError(
            folder, f"{len(missing)} file(s) without ImagePositionPatient/ImageOrientationPatient, e.g. {missing[0]}"
        )
    first = cast(np.ndarray, slices[0].orientation)
    other = next(
        (s for s in slices if not np.allclose(cast(np.ndarray, s.orientation), first, atol=ORIENTATION_ATOL)), None
    )
    if other is not None:
        raise VolumeFileError(
            folder,
            f"slices differ in orientation (ImageOrientationPatient): {slices[0].path.name} has "
            f"{np.round(first, 4).tolist()}, {other.path.name} has "
            f"{np.round(cast(np.ndarray, other.orientation), 4).tolist()}",
        )
    row, column = first[:3] / np.linalg.norm(first[:3]), first[3:] / np.linalg.norm(first[3:])
    return row, column


def _check_gaps(folder: Path, ordered: list[_Slice], normal: np.ndarray) -> float:
    """The slice gap (mm) of slices in order along ``normal``; an error for two slices at one position, a
    missing slice, unequal spacing, or positions off the normal."""
    positions = np.stack([cast(np.ndarray, s.position) for s in ordered])
    steps = np.diff(positions, axis=0)
    gaps = steps @ normal
    median = float(np.median(gaps))
    tol = max(SPACING_ATOL_MM, SPACING_RTOL * median)
    same = [(ordered[i].path.name, ordered[i + 1].path.name) for i in np.flatnonzero(gaps <= tol)]
    if same:
        a, b = same[0]
        raise VolumeFileError(
            folder, f"{len(same)} pair(s) of slices at the same position, e.g. {a} and {b}: several acquisitions?"
        )
    off = np.linalg.norm(steps - gaps[:, None] * normal, axis=1)
    if off.max() > tol:
        i = int(np.argmax(off))
        raise VolumeFileError(
            folder,
            f"slices are not stacked along their normal ({ordered[i + 1].path.name} is shifted {off[i]:.3g} mm "
            "in plane from the slice before): a tilted gantry or a sheared stack is not supported",
        )
    bad = np.flatnonzero(np.abs(gaps - median) > tol)
    if bad.size:
        i = int(bad[0])
        after = float(gaps[: i + 1].sum())
        where = f"between {ordered[i].path.name} and {ordered[i + 1].path.name} ({after:.4g} mm from the first slice)"
        ratio = gaps[i] / median
        if ratio > 1.5 and abs(ratio - round(ratio)) * median <= tol:
            cause = f"{int(round(ratio)) - 1} missing slice(s) {where}: gap {gaps[i]:.4g} mm, spacing {median:.4g} mm"
        else:
            shown = ", ".join(f"{g:.4g}" for g in np.unique(np.round(gaps, 4))[:8])
            cause = f"unequal slice spacing: gap {gaps[i]:.4g} mm {where}, median {median:.4g} mm (gaps: {shown} mm)"
        raise VolumeFileError(folder, f"{cause}; tolerance {tol:.3g} mm")
    return (float(positions[-1] @ normal) - float(positions[0] @ normal)) / (len(ordered) - 1)


def _open_dicom_folder(folder: Path) -> VolumeFile:
    """Check the DICOM files of ``folder`` as one series and derive its geometry (module docstring)."""
    found = [s for s in (_read_slice(p, folder) for p in dicom_files(folder)) if s is not None]
    if not found:
        raise VolumeFileError(folder, "holds no DICOM image files")
    _one_series(folder, found)
    if len(found) == 1:  # one slice, or one multi-frame file: SimpleITK knows its geometry
        single = _open_itk_file(found[0].path, "dicom")
        return VolumeFile(folder, "dicom", single.shape, single.affine, itk=single.itk, files=(found[0].path,))
    row, column = _one_orientation(folder, found)
    normal = np.cross(row, column)
    normal /= np.linalg.norm(normal)
    ordered = sorted(found, key=lambda s: float(cast(np.ndarray, s.position) @ normal))
    gap = _check_gaps(folder, ordered, normal)
    pixel = found[0].pixel_spacing
    if pixel is None:
        raise VolumeFileError(folder, f"{found[0].path.name} has no PixelSpacing")
    origin = cast(np.ndarray, ordered[0].position)
    geometry = ItkGeometry(
        (float(origin[0]), float(origin[1]), float(origin[2])),
        (pixel[1], pixel[0], gap),  # PixelSpacing is (between rows, between columns) = (y, x)
        tuple(float(v) for v in np.column_stack([row, column, normal]).ravel()),
    )
    shape = (found[0].size[0], found[0].size[1], len(ordered))
    return VolumeFile(folder, "dicom", shape, geometry.affine(), itk=geometry, files=tuple(s.path for s in ordered))


def _read_series(volume: VolumeFile) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(p) for p in volume.files])
    image = reader.Execute()
    if tuple(image.GetSize()) != volume.shape[:3]:
        raise VolumeFileError(volume.path, f"SimpleITK read size {image.GetSize()}, the headers say {volume.shape}")
    return image


# --------------------------------------------------------------------------- writing


def output_format_for(like: VolumeFile, output_format: str = "auto") -> str:
    """The format a prediction of ``like`` is written in: ``output_format``, or for ``auto`` ``like``'s (a
    DICOM input: NIfTI)."""
    if output_format == "auto":
        return "nifti" if like.format == "dicom" else like.format
    if output_format not in WRITTEN_SUFFIX:
        raise ValueError(f"output_format must be one of {['auto', *WRITTEN_SUFFIX]}, got {output_format!r}")
    return output_format


def nifti_like(data: np.ndarray, like: VolumeFile) -> nib.Nifti1Image:
    """``data`` (its first three axes ``like``'s) as NIfTI-1 in ``like``'s geometry: a NIfTI source's affine,
    qform, sform and units, else ``like.affine`` with qform/sform code scanner (1) and mm.

    A fresh header: the CT's scaling (scl_slope/inter) must not apply to class indices or probabilities."""
    out = nib.Nifti1Image(data, like.affine)
    if like.nifti is not None:
        source = cast(nib.Nifti1Header, like.nifti.header)  # NIfTI-1 or -2: the same fields
        out.header.set_xyzt_units(*source.get_xyzt_units())
        out.set_qform(like.affine, int(source["qform_code"]) or 1)
        out.set_sform(like.affine, int(source["sform_code"]) or 1)
    else:
        out.header.set_xyzt_units(xyz="mm")
        out.set_qform(like.affine, 1)
        out.set_sform(like.affine, 1)
    return out


def save_nifti(image: nib.Nifti1Image, target: Path) -> Path:
    """Write ``image`` to ``target`` whole or not at all."""
    with atomic_write_path(target) as tmp:
        nib.save(image, str(tmp))
    return target


def itk_like(data: np.ndarray, like: VolumeFile) -> sitk.Image:
    """``data`` ``(x, y, z)`` as a SimpleITK image in ``like``'s geometry: as stored when ``like`` was read by
    SimpleITK, else from its affine (:func:`affine_to_itk`)."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(data).transpose(2, 1, 0)))
    return (like.itk or affine_to_itk(like.affine)).apply(image)


def write_label_volume(labels: np.ndarray, like: VolumeFile, stem: Path, output_format: str = "auto") -> Path:
    """Write ``labels`` (uint8 class indices, ``(x, y, z)`` in ``like``'s file order and shape) to
    ``<stem><suffix>`` in :func:`output_format_for` ``(like, output_format)`` with ``like``'s geometry;
    returns the path. NIfTI ``.nii.gz`` (:func:`nifti_like`), MHA ``.mha`` and NRRD ``.nrrd`` (compressed,
    :func:`itk_like`). Written whole or not at all."""
    fmt = output_format_for(like, output_format)
    target = Path(f"{stem}{WRITTEN_SUFFIX[fmt]}")
    target.parent.mkdir(parents=True, exist_ok=True)
    data = np.asarray(labels, np.uint8).reshape(like.shape[:3])
    if fmt == "nifti":
        return save_nifti(nifti_like(data, like), target)
    with atomic_write_path(target) as tmp:
        sitk.WriteImage(itk_like(data, like), str(tmp), True)
    return target


# --------------------------------------------------------------------------- checksums


def _data_files(header: Path) -> list[Path]:
    """The data files a detached header (``.mhd`` ElementDataFile, ``.nhdr`` data file) names, when present."""
    try:
        text = header.read_text(errors="replace")
    except OSError:
        return []
    m = re.search(r"^(?:ElementDataFile\s*=|data ?file:)\s*(\S+)\s*$", text, re.MULTILINE | re.IGNORECASE)
    if m is None or m.group(1).upper() in ("LOCAL", "LIST"):
        return []
    data = header.parent / m.group(1)
    return [data] if data.is_file() else []


def _hash_into(digest: Any, path: Path) -> None:
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_HASH_CHUNK), b""):
            digest.update(chunk)


def volume_checksum(path: Path) -> str:
    """Hex SHA-256 of a volume: the file's bytes (``.mhd``/``.nhdr``: and its data file's); a DICOM folder:
    over its DICOM files' names and bytes in name order."""
    path = Path(path)
    digest = hashlib.sha256()
    if path.is_dir():
        for member in dicom_files(path):
            digest.update(member.name.encode() + b"\0")
            _hash_into(digest, member)
        return digest.hexdigest()
    _hash_into(digest, path)
    if path.name.lower().endswith((".mhd", ".nhdr")):
        for data in _data_files(path):
            _hash_into(digest, data)
    return digest.hexdigest()
