"""Where the phantom sits in the scanner: grid size, voxel spacing and the NIfTI affine.

Arrays are indexed ``(x, y, z)``: x runs to the patient's left (image right), y posterior
(image down), z superior -- the DICOM patient axes LPS. An axial slice as an image is
``volume[:, :, z].T`` (rows = y). The in-plane field of view is 360 mm over ``size`` px; the
stack always covers ``0.55 * size`` in-plane px of height, so ``num_slices`` sets the slice
spacing.
"""

from __future__ import annotations

import numpy as np

__all__ = ["FOV_MM", "Z_EXTENT", "check_grid", "phantom_affine", "phantom_spacing"]

FOV_MM = 360.0
"""In-plane field of view of the phantom, mm."""

Z_EXTENT = 0.55
"""Stack height as a fraction of ``size`` (in-plane px units)."""

_FOV_CENTRE_LPS_MM = (0.0, 30.0, -150.0)  # centre of the field of view in DICOM patient coordinates


def check_grid(size: int, num_slices: int) -> None:
    """Raise :class:`ValueError` unless ``size >= 32`` px and ``num_slices >= 1`` are integers."""
    if not isinstance(size, (int, np.integer)) or size < 32:
        raise ValueError(f"size must be an integer >= 32 px, got {size!r}")
    if not isinstance(num_slices, (int, np.integer)) or num_slices < 1:
        raise ValueError(f"num_slices must be an integer >= 1, got {num_slices!r}")


def phantom_spacing(size: int = 128, num_slices: int = 32, grid: int | None = None) -> tuple[float, float, float]:
    """Voxel spacing ``(x, y, z)`` in mm: ``360 / size`` in-plane, ``0.55 * 360 / num_slices`` along z.

    ``grid``: the anatomy was drawn on a ``grid`` x ``grid`` plane (then cropped or padded to ``size``), so a
    pixel is ``360 / grid`` mm in-plane (a field of view of ``size * 360 / grid`` mm); z is unchanged.
    """
    drawn = grid or size
    pixel = FOV_MM / drawn
    return (pixel, pixel, Z_EXTENT * drawn * pixel / num_slices)


def phantom_affine(size: int = 128, num_slices: int = 32, grid: int | None = None) -> np.ndarray:
    """NIfTI voxel-to-world affine (RAS+ mm, 4x4 float64) of a phantom volume.

    As a DICOM-derived NIfTI of an axial chest CT written without reorientation
    (e.g. by ITK/SimpleITK): the array axes follow the DICOM patient axes LPS,
    matching the phantom's array convention (x to the patient's left, y posterior,
    z superior), so ``nibabel.aff2axcodes(phantom_affine(...)) == ("L", "P", "S")``.
    DICOM position ``p_LPS = origin + (i*sx, j*sy, k*sz)`` for voxel ``(i, j, k)``
    with spacing :func:`phantom_spacing`; NIfTI world is RAS, so

    ``affine = [[-sx, 0, 0, -ox], [0, -sy, 0, -oy], [0, 0, sz, oz], [0, 0, 0, 1]]``.

    The origin ``(ox, oy, oz)`` (the DICOM ImagePositionPatient of the first slice)
    puts the centre of the volume at LPS ``(0, 30, -150)`` mm: the 360 mm field of
    view centred left-right on the isocentre, its centre 30 mm posterior of it (the
    patient lies on the table below the gantry centre), and the stack centred at
    table position z = -150 mm. These numbers are illustrative, not from a scanner.
    """
    check_grid(size, num_slices)
    spacing = np.array(phantom_spacing(size, num_slices, grid), dtype=np.float64)
    extent = np.array([size - 1, size - 1, num_slices - 1], dtype=np.float64)
    origin_lps = np.array(_FOV_CENTRE_LPS_MM, dtype=np.float64) - extent / 2.0 * spacing
    lps_to_ras = np.array([-1.0, -1.0, 1.0])
    affine = np.eye(4)
    affine[:3, :3] = np.diag(lps_to_ras * spacing)
    affine[:3, 3] = lps_to_ras * origin_lps
    return affine
