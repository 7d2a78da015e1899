"""The phantom as NIfTI volumes, as from a DICOM conversion: the input of ``segexp-prepare``.

Files ``<out_dir>/<case>_image.nii.gz`` (int16 HU) and ``<case>_label.nii.gz`` (uint8 classes)
with the affine :func:`~segexp.data.phantom.geometry.phantom_affine` (orientation LPS), plus the
manifest ``phantom_volumes.json``, cached by :mod:`segexp.data.phantom.cache`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from segexp.data.phantom.anatomy import PHANTOM_VERSION, check_args, make_phantom_volume
from segexp.data.phantom.cache import GeneratedFolder, ensure_generated
from segexp.data.phantom.cases import case_id, case_seed
from segexp.data.phantom.classes import PHANTOM_CLASS_NAMES
from segexp.data.phantom.geometry import FOV_MM, phantom_affine, phantom_spacing

__all__ = [
    "PHANTOM_VOLUMES_FORMAT",
    "PHANTOM_VOLUMES_GENERATOR",
    "PHANTOM_VOLUMES_MANIFEST",
    "VOLUME_FOLDER",
    "ensure_phantom_volumes",
    "save_nifti",
    "volume_params",
    "write_phantom_volumes",
    "write_volumes",
]

PHANTOM_VOLUMES_MANIFEST = "phantom_volumes.json"
PHANTOM_VOLUMES_GENERATOR = "segexp.data.phantom.volumes"
"""The manifest's ``generator``: a stored value (kept when modules move), not a module name."""
PHANTOM_VOLUMES_FORMAT = "segexp-phantom-volumes-1"
"""Bump whenever the NIfTI files change (affine, header), so cached volume folders regenerate."""

_VOLUME_FILE = re.compile(r"phantom\d{3,}_(image|label)\.nii\.gz")


def _volume_names(case: str) -> tuple[str, str]:
    """``(<case>_image.nii.gz, <case>_label.nii.gz)``."""
    return f"{case}_image.nii.gz", f"{case}_label.nii.gz"


def _check_volume_file_name(name: str) -> None:
    if not isinstance(name, str) or not _VOLUME_FILE.fullmatch(name):
        raise ValueError(f"{PHANTOM_VOLUMES_MANIFEST} lists {name!r}, which is not a phantom volume file name")


def _volumes_complete(root: Path, manifest: Mapping[str, Any]) -> bool:
    """All files the manifest lists are present."""
    try:
        files = manifest["files"]
        return isinstance(files, list) and all((root / str(name)).is_file() for name in files)
    except (KeyError, TypeError, OSError):
        return False


VOLUME_FOLDER = GeneratedFolder(
    manifest=PHANTOM_VOLUMES_MANIFEST,
    generator=PHANTOM_VOLUMES_GENERATOR,
    entries_key="files",
    what="phantom volume",
    complete=_volumes_complete,
    check_entry=_check_volume_file_name,
)
"""The volume folder as a generated folder: ``phantom_volumes.json`` owns the NIfTI files."""


def volume_params(
    num_cases: int, size: int, num_slices: int, seed: int, fovs_mm: Sequence[float] | None = None
) -> dict[str, Any]:
    """The manifest's ``params``: a folder with other params is regenerated."""
    fovs = {} if fovs_mm is None else {"fovs_mm": [float(f) for f in fovs_mm]}  # absent: the params of old folders
    return {
        "version": PHANTOM_VERSION,
        "format": PHANTOM_VOLUMES_FORMAT,
        "seed": int(seed),
        "size": int(size),
        "num_slices": int(num_slices),
        "num_cases": int(num_cases),
        "class_names": list(PHANTOM_CLASS_NAMES),
        **fovs,
    }


#: The smallest plane the phantom's anatomy is drawn on (:func:`~segexp.data.phantom.geometry.check_grid`).
MIN_GRID = 32


def fov_grid(size: int, fov_mm: float | None) -> int:
    """The plane the anatomy is drawn on for an in-plane field of view of ``fov_mm`` at ``size`` pixels:
    ``round(size * 360 / fov_mm)`` (the anatomy scales with the plane, so it keeps its size in mm; the pixels
    are ``360 / grid`` mm). None: ``size`` (the 360 mm field of view)."""
    return int(size) if fov_mm is None else int(round(size * FOV_MM / float(fov_mm)))


def centre_crop_or_pad(volume: np.ndarray, size: int, fill: float) -> np.ndarray:
    """``volume`` ``(g, g, z)`` centred in ``(size, size, z)``: cropped, or padded with ``fill``."""
    g = volume.shape[0]
    if g >= size:
        start = (g - size) // 2
        return np.ascontiguousarray(volume[start : start + size, start : start + size])
    out = np.full((size, size, volume.shape[2]), fill, volume.dtype)
    start = (size - g) // 2
    out[start : start + g, start : start + g] = volume
    return out


def save_nifti(path: Path, data: np.ndarray, affine: np.ndarray, *, description: str, label: bool) -> None:
    """Write NIfTI-1 as DICOM converters do: mm units, qform code scanner, sform code aligned (the phantom's files)."""
    image = nib.Nifti1Image(data, affine)
    header = image.header
    header.set_data_dtype(data.dtype)
    header.set_xyzt_units(xyz="mm", t="sec")
    header["descrip"] = description.encode("ascii")[:79]
    if label:
        header.set_intent("label")
    image.set_qform(affine, code="scanner")
    image.set_sform(affine, code="aligned")
    nib.save(image, str(path))


def write_volumes(
    folder: Path, num_cases: int, size: int, num_slices: int, seed: int, fovs_mm: Sequence[float] | None = None
) -> dict[str, Any]:
    """Write the NIfTI pairs of cases 1..``num_cases`` into ``folder`` (no cache); returns the manifest
    fields after ``files``. ``fovs_mm``: case ``i`` (from 1) gets the field of view ``fovs_mm[(i - 1) % n]``
    (:func:`fov_grid`: the same anatomy in mm at another in-plane spacing, cropped or padded with air to
    ``size``), as scans reconstructed with different fields of view; each case records its spacing."""
    cases = []
    for number in range(1, int(num_cases) + 1):
        case, seed_n = case_id(number), case_seed(seed, number)
        fov = None if not fovs_mm else float(fovs_mm[(number - 1) % len(fovs_mm)])
        grid = fov_grid(size, fov)
        hu, labels = make_phantom_volume(seed_n, size=grid, num_slices=num_slices)
        if grid != size:
            hu, labels = centre_crop_or_pad(hu, size, -1000), centre_crop_or_pad(labels, size, 0)
        affine = phantom_affine(size, num_slices, None if grid == size else grid)
        image_name, label_name = _volume_names(case)
        save_nifti(folder / image_name, hu, affine, description=f"segexp phantom {case} HU", label=False)
        save_nifti(folder / label_name, labels, affine, description=f"segexp phantom {case} labels", label=True)
        entry = {"id": case, "seed": seed_n, "image": image_name, "label": label_name}
        if fov is not None:
            entry["spacing_mm"] = list(phantom_spacing(size, num_slices, grid))
        cases.append(entry)
    return {
        "shape": [int(size), int(size), int(num_slices)],
        "spacing_mm": list(phantom_spacing(size, num_slices)),
        "orientation": "LPS",
        "affine": phantom_affine(size, num_slices).tolist(),
        "classes": [{"index": i, "name": n} for i, n in enumerate(PHANTOM_CLASS_NAMES)],
        "cases": cases,
    }


def write_phantom_volumes(
    out_dir: Path,
    *,
    num_cases: int = 12,
    size: int = 128,
    num_slices: int = 32,
    seed: int = 0,
    fovs_mm: Sequence[float] | None = None,
) -> list[tuple[Path, Path]]:
    """Write (or reuse) phantom CT volumes as NIfTI and return ``[(image, label), ...]`` per case.

    Files ``<out_dir>/phantom001_image.nii.gz`` (int16 HU) and
    ``<out_dir>/phantom001_label.nii.gz`` (uint8 class indices into
    :data:`~segexp.data.phantom.classes.PHANTOM_CLASSES`, intent ``label``) for cases
    1..``num_cases``, arrays ``(size, size, num_slices)`` from
    :func:`~segexp.data.phantom.anatomy.make_phantom_volume`, affine
    :func:`~segexp.data.phantom.geometry.phantom_affine` (orientation LPS), units mm, qform code
    scanner and sform code aligned; with ``fovs_mm`` the cases cycle through those in-plane fields of view
    (:func:`write_volumes`, each anatomy drawn on a plane of >= 32 pixels). The case seeds are derived as in
    :func:`~segexp.data.phantom.slices.write_phantom_dataset`, so ``phantom001`` is the same
    anatomy in both writers (for the same ``seed``, ``size`` and ``num_slices``). A manifest
    ``<out_dir>/phantom_volumes.json`` records the parameters, files and case seeds.

    * ``out_dir`` holds complete volumes with the same parameters: nothing is written.
    * ``out_dir`` holds phantom volumes with other parameters: the files its manifest
      lists are deleted and regenerated; other files are left alone.
    * ``out_dir`` is non-empty without that manifest: :class:`FileExistsError`.

    The files are generated in a temporary sibling folder and moved into place at
    the end; the manifest is marked complete only once all files are in place.
    """
    out_dir = Path(out_dir)
    if isinstance(num_cases, bool) or not isinstance(num_cases, (int, np.integer)) or num_cases < 1:
        raise ValueError(f"num_cases must be an integer >= 1, got {num_cases!r}")
    check_args(seed, size, num_slices)
    for fov in fovs_mm or ():
        if not float(fov) > 0 or fov_grid(size, fov) < MIN_GRID:
            largest = size * FOV_MM / MIN_GRID
            raise ValueError(
                f"fovs_mm: a field of view must lie in (0, size * 360 / {MIN_GRID}] = (0, {largest:g}] mm "
                f"(its anatomy is drawn on >= {MIN_GRID} px), got {fov!r}"
            )
    names = [_volume_names(case_id(number)) for number in range(1, int(num_cases) + 1)]
    params = volume_params(num_cases, size, num_slices, seed, fovs_mm)
    files = [name for pair in names for name in pair]
    ensure_generated(
        VOLUME_FOLDER,
        out_dir,
        params,
        files,
        lambda tmp: write_volumes(tmp, num_cases, size, num_slices, seed, fovs_mm),
    )
    return [(out_dir / image, out_dir / label) for image, label in names]


def ensure_phantom_volumes(source: Path, spec: Mapping[str, Any] | None) -> None:
    """Write the phantom NIfTI volumes of ``volumes.phantom`` (``spec``) into ``source`` unless they are there.

    The one place a volume config's phantom is materialised (``segexp-prepare``, ``segexp-check``).
    """
    if spec is not None:
        write_phantom_volumes(Path(source), **dict(spec))
