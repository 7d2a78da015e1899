"""Seeded synthetic cardiac-CT phantom: the built-in default dataset.

A fresh machine has no downloaded data, so segexp ships a generator of small,
cardiac-CT-like volumes. Each volume is built in 3D from analytic shapes on
coordinate grids (vectorised numpy, no per-voxel Python loops):

* air outside the patient (-1000 HU), a body ellipse with a subcutaneous fat rim
  (~-100 HU) around soft tissue (~40 HU), liver (~60 HU) below the diaphragm;
* two lungs (~-850 HU, with small vessel dots), ribs, sternum and a spine
  (vertebral body with a cortical rim ~700 HU, discs, spinal canal, arch);
* the heart inside epicardial fat: LV blood pool with contrast (~350 HU) in a
  myocardial shell (~110 HU, a few px thick), an unlabelled RV (~190 HU), LA
  (~330 HU) next to the LV base, ascending and descending aorta (~380 HU) as tubes
  along z, and one or two coronary arteries (~320 HU, radius ~1.5-2.5 px) running
  in the fat on the heart surface.

Every case draws its own centre offsets, radii, axes, rotation, tilt along z,
heart orientation and contrast level from ``numpy.random.default_rng(seed)``.
Foreground structures occupy only part of the z range, so the first and last
slices of a volume contain background only. The image (not the labels) is
blurred slightly (partial volume) and gets smoothed Gaussian noise (15-25 HU).

Conventions: arrays are indexed ``(x, y, z)``; x runs to the patient's left
(image right), y runs posterior (image down), z runs superior -- the DICOM
patient axes LPS, see :func:`phantom_affine`. An axial slice as
an image is ``volume[:, :, z].T`` (rows = y). Lengths are designed for
``size=128`` and scale with ``size``; the stack always covers the same anatomy
(``0.55 * size`` in-plane pixels of height), so ``num_slices`` sets the slice
spacing, see :func:`phantom_spacing`.

Writers (both reuse a folder generated with the same parameters, regenerate
only their own files when the parameters change, refuse a non-empty folder they
did not write, and never delete files they did not write):

* :func:`write_phantom_dataset` writes the slice-folder layout used by the
  training code (``<root>/<split>/{images,masks}/<case>_<slice>.png``, HU windowed
  with :data:`PHANTOM_WINDOW` by :func:`segexp.data.intensity.window_to_uint8`,
  re-exported here) plus a manifest ``phantom.json``;
* :func:`write_phantom_volumes` writes 3D NIfTI volumes
  ``<out_dir>/<case>_image.nii.gz`` (int16 HU) and ``<case>_label.nii.gz`` (uint8
  classes) as from a DICOM conversion, with the affine :func:`phantom_affine`
  (orientation LPS, spacing :func:`phantom_spacing`), plus a manifest
  ``phantom_volumes.json`` -- the input of ``segexp-prepare``.

Case ``phantom001`` gets the same seed, hence the same anatomy, in both writers.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, cast

import cv2
import nibabel as nib
import numpy as np

from segexp.core.files import staging_folder
from segexp.data.intensity import window_to_uint8
from segexp.data.rgb_map import encode_rgb_mask

__all__ = [  # window_to_uint8 is re-exported: it lived here before segexp.data.intensity
    "AO",
    "BACKGROUND",
    "CORONARY",
    "DEFAULT_PHANTOM_CASES",
    "LA",
    "LV",
    "MYOCARDIUM",
    "PHANTOM_CLASSES",
    "PHANTOM_CLASS_NAMES",
    "PHANTOM_COLOURS",
    "PHANTOM_MANIFEST",
    "PHANTOM_VERSION",
    "PHANTOM_VOLUMES_MANIFEST",
    "PHANTOM_WINDOW",
    "ensure_phantom_slices",
    "ensure_phantom_volumes",
    "make_phantom_volume",
    "phantom_affine",
    "phantom_spacing",
    "save_nifti",
    "window_to_uint8",
    "write_phantom_dataset",
    "write_phantom_volumes",
]

PHANTOM_VERSION = "segexp-phantom-1"
"""Bump whenever the generated content changes, so cached datasets regenerate."""

PHANTOM_CLASSES: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("background", (0, 0, 0)),
    ("LV", (255, 255, 0)),
    ("Myocardium", (255, 0, 0)),
    ("LA", (0, 255, 0)),
    ("AO", (0, 0, 255)),
    ("Coronary", (255, 0, 255)),
)
"""``(name, (r, g, b))`` per class; the class index is the position."""

PHANTOM_CLASS_NAMES: tuple[str, ...] = tuple(name for name, _ in PHANTOM_CLASSES)
PHANTOM_COLOURS: tuple[tuple[int, int, int], ...] = tuple(rgb for _, rgb in PHANTOM_CLASSES)

BACKGROUND, LV, MYOCARDIUM, LA, AO, CORONARY = range(len(PHANTOM_CLASSES))

PHANTOM_WINDOW: tuple[float, float] = (200.0, 800.0)
"""Default ``(level, width)`` in HU: a CTA window, -200..600 HU mapped to 0..255."""

PHANTOM_MANIFEST = "phantom.json"
PHANTOM_GENERATOR = "segexp.data.phantom"

PHANTOM_VOLUMES_MANIFEST = "phantom_volumes.json"
PHANTOM_VOLUMES_GENERATOR = "segexp.data.phantom.volumes"
PHANTOM_VOLUMES_FORMAT = "segexp-phantom-volumes-1"
"""Bump whenever the NIfTI files change (affine, header), so cached volume folders regenerate."""

DEFAULT_PHANTOM_CASES: Mapping[str, int] = MappingProxyType({"train": 8, "valid": 2, "test": 2})

_FOV_MM = 360.0  # in-plane field of view of the phantom, mm
_Z_EXTENT = 0.55  # stack height as a fraction of ``size`` (in-plane px units)
_CV_CHANNEL_CHUNK = 128  # cv2 filters accept a limited channel count
# Where the phantom's field of view sits in DICOM patient coordinates (LPS, mm), see phantom_affine.
_FOV_CENTRE_LPS_MM = (0.0, 30.0, -150.0)
_VOLUME_FILE = re.compile(r"phantom\d{3,}_(image|label)\.nii\.gz")


def phantom_spacing(size: int = 128, num_slices: int = 32) -> tuple[float, float, float]:
    """Voxel spacing ``(x, y, z)`` in mm: ``360 / size`` in-plane, ``0.55 * 360 / num_slices`` along z."""
    pixel = _FOV_MM / size
    return (pixel, pixel, _Z_EXTENT * size * pixel / num_slices)


def phantom_affine(size: int = 128, num_slices: int = 32) -> np.ndarray:
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
    _check_args(0, size, num_slices)
    spacing = np.array(phantom_spacing(size, num_slices), dtype=np.float64)
    extent = np.array([size - 1, size - 1, num_slices - 1], dtype=np.float64)
    origin_lps = np.array(_FOV_CENTRE_LPS_MM, dtype=np.float64) - extent / 2.0 * spacing
    lps_to_ras = np.array([-1.0, -1.0, 1.0])
    affine = np.eye(4)
    affine[:3, :3] = np.diag(lps_to_ras * spacing)
    affine[:3, 3] = lps_to_ras * origin_lps
    return affine


# --------------------------------------------------------------------------- geometry


def _rotation_with_axis(axis: np.ndarray, hint: np.ndarray) -> np.ndarray:
    """Rows: unit ``axis``, the part of ``hint`` orthogonal to it, and their cross product."""
    e0 = axis / np.linalg.norm(axis)
    e1 = hint - np.dot(hint, e0) * e0
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(e0, e1)
    return np.stack([e0, e1, e2])


class _Frame:
    """Anatomical coordinates (px) of every voxel: u (left), v (posterior), w (superior)."""

    def __init__(self, u: np.ndarray, v: np.ndarray, w: np.ndarray) -> None:
        self.u, self.v, self.w = u, v, w

    def q(self, centre: np.ndarray, axes: np.ndarray, rot: np.ndarray | None = None) -> np.ndarray:
        """Ellipsoid form ``sum(((R (p - c)) / axes)^2)``; the ellipsoid is ``q <= 1``."""
        # Python floats keep the float32 grids in float32 (numpy scalars would upcast).
        c = [float(value) for value in centre]
        du, dv, dw = self.u - c[0], self.v - c[1], self.w - c[2]
        if rot is None:
            squares = ((d / float(ax)) ** 2 for d, ax in zip((du, dv, dw), axes, strict=True))
            return cast(np.ndarray, sum(squares, np.float32(0)))  # a float32 scalar plus the grids: a grid
        total = np.zeros(du.shape, dtype=np.float32)
        for row, ax in zip(rot, axes, strict=True):
            r0, r1, r2, a = float(row[0]), float(row[1]), float(row[2]), float(ax)
            total += ((r0 * du + r1 * dv + r2 * dw) / a) ** 2
        return total

    def ellipse(self, cu: float, cv: float, au: float, av: float) -> np.ndarray:
        """In-plane ellipse form (an elliptic cylinder along w); inside is ``<= 1``."""
        cu, cv, au, av = float(cu), float(cv), float(au), float(av)
        return ((self.u - cu) / au) ** 2 + ((self.v - cv) / av) ** 2

    def tube(self, points: np.ndarray, radii: np.ndarray) -> np.ndarray:
        """Boolean mask of voxels within ``radii[i]`` px of some centreline point ``points[i]``.

        ``points`` must be sampled densely (spacing well below the radius).
        """
        reach = float(radii.max()) + 1.0
        lo, hi = points.min(axis=0) - reach, points.max(axis=0) + reach
        box = (
            (self.u >= lo[0])
            & (self.u <= hi[0])
            & (self.v >= lo[1])
            & (self.v <= hi[1])
            & (self.w >= lo[2])
            & (self.w <= hi[2])
        )
        idx = np.nonzero(box)
        out = np.zeros(box.shape, dtype=bool)
        if idx[0].size == 0:
            return out
        coords = np.stack([self.u[idx], self.v[idx], self.w[idx]], axis=1)
        best = np.full(coords.shape[0], np.inf, dtype=np.float32)
        for start in range(0, len(points), 64):
            p, r = points[start : start + 64], radii[start : start + 64]
            dist = np.sqrt(((coords[:, None, :] - p[None, :, :]) ** 2).sum(axis=-1)) - r[None, :]
            best = np.minimum(best, dist.min(axis=1))
        out[idx] = best <= 0.0
        return out


def _resample_polyline(nodes: np.ndarray, step: float) -> np.ndarray:
    """Points every ``step`` px along the polyline through ``nodes`` (N, 3)."""
    seg = np.linalg.norm(np.diff(nodes, axis=0), axis=1)
    arc = np.concatenate([[0.0], np.cumsum(seg)])
    samples = np.linspace(0.0, arc[-1], max(2, int(np.ceil(arc[-1] / step)) + 1))
    return np.stack([np.interp(samples, arc, nodes[:, k]) for k in range(3)], axis=1)


def _blur(vol: np.ndarray, sigma_xy: float, sigma_z: float) -> np.ndarray:
    """Separable Gaussian blur: ``sigma_xy`` px in-plane (cv2), ``sigma_z`` slices along z."""
    out = np.empty_like(vol, dtype=np.float32)
    for start in range(0, vol.shape[2], _CV_CHANNEL_CHUNK):
        chunk = np.ascontiguousarray(vol[:, :, start : start + _CV_CHANNEL_CHUNK], dtype=np.float32)
        blurred = cv2.GaussianBlur(chunk, (0, 0), sigma_xy, borderType=cv2.BORDER_REFLECT)
        out[:, :, start : start + chunk.shape[2]] = blurred.reshape(chunk.shape)
    if sigma_z > 0 and vol.shape[2] > 1:
        radius = max(1, int(np.ceil(3 * sigma_z)))
        kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma_z) ** 2)
        kernel /= kernel.sum()
        padded = np.pad(out, ((0, 0), (0, 0), (radius, radius)), mode="edge")
        nz = vol.shape[2]
        out = sum(k * padded[:, :, i : i + nz] for i, k in enumerate(kernel)).astype(np.float32)
    return out


# --------------------------------------------------------------------------- volume


def _check_args(seed: int, size: int, num_slices: int) -> None:
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if not isinstance(size, (int, np.integer)) or size < 32:
        raise ValueError(f"size must be an integer >= 32 px, got {size!r}")
    if not isinstance(num_slices, (int, np.integer)) or num_slices < 1:
        raise ValueError(f"num_slices must be an integer >= 1, got {num_slices!r}")


@dataclass
class _Draw:
    """What the steps of :func:`make_phantom_volume` share: the random stream, the frame, the arrays."""

    rng: np.random.Generator
    s: float  # scale: lengths below are px at size 128
    f: _Frame
    hu: np.ndarray
    labels: np.ndarray
    z_extent: float

    def jit(self, value: float, rel: float) -> float:
        """``value`` jittered by a relative ``±rel`` (one draw)."""
        return float(value * (1.0 + self.rng.uniform(-rel, rel)))


def _place_patient(rng: np.random.Generator, size: int, num_slices: int, z_extent: float) -> _Frame:
    """Offset, in-plane rotation and tilt along z (obliquity): the patient's frame ``(u, v, w)`` per voxel."""
    s = size / 128.0
    dz = z_extent / num_slices  # slice spacing in in-plane px units
    centre_x = size / 2 + rng.uniform(-4, 4) * s
    centre_y = size / 2 + rng.uniform(-3, 3) * s
    theta = np.deg2rad(rng.uniform(-8, 8))
    tilt_x, tilt_y = rng.uniform(-0.08, 0.08), rng.uniform(-0.06, 0.06)
    x = np.arange(size, dtype=np.float32)[:, None, None]
    y = np.arange(size, dtype=np.float32)[None, :, None]
    w = ((np.arange(num_slices, dtype=np.float32) + 0.5) * dz - z_extent / 2)[None, None, :]
    du = x - (centre_x + tilt_x * w)
    dv = y - (centre_y + tilt_y * w)
    u = (np.cos(theta) * du + np.sin(theta) * dv).astype(np.float32)
    v = (-np.sin(theta) * du + np.cos(theta) * dv).astype(np.float32)
    return _Frame(u, v, np.broadcast_to(w, u.shape).astype(np.float32))


def _paint_thorax(d: _Draw) -> dict[str, Any]:
    """Body (fat rim), liver, lungs with vessel dots, ribs and sternum; returns the geometry later steps use."""
    rng, s, f, hu = d.rng, d.s, d.f, d.hu
    shape = hu.shape
    body_a, body_b = d.jit(54 * s, 0.07), d.jit(40 * s, 0.07)
    fat = d.jit(3.5 * s, 0.3)
    body = f.ellipse(0, 0, body_a, body_b) <= 1
    inner = f.ellipse(0, 0, body_a - fat, body_b - fat) <= 1
    hu[body] = -100.0
    hu[inner] = 40.0
    liver = (f.q(np.array([-14 * s, 4 * s, -40 * s]), np.array([32 * s, 26 * s, 22 * s])) <= 1) & inner
    hu[liver] = 60.0
    lung_w = d.jit(13 * s, 0.3)  # lungs shrink towards the bottom (diaphragm)
    lungs = np.zeros(shape, dtype=bool)
    for cu, au in ((-25 * s, 17 * s), (26 * s, 15 * s)):  # patient right, left
        centre = np.array([d.jit(cu, 0.08), d.jit(2 * s, 0.5), lung_w])
        axes = np.array([d.jit(au, 0.1), d.jit(27 * s, 0.08), d.jit(46 * s, 0.06)])
        lungs |= f.q(centre, axes) <= 1
    lungs &= f.ellipse(0, 0, body_a - fat - 5 * s, body_b - fat - 5 * s) <= 1
    texture = _blur(rng.standard_normal(shape).astype(np.float32), 1.2 * s, 0.6)
    texture /= texture.std() + 1e-6
    hu[lungs] = -850.0 + 25.0 * texture[lungs]
    hu[lungs & (texture > 1.8)] = -20.0
    for k in range(12):  # ribs, present in bands along z
        ang = np.deg2rad(180.0 + 30.0 * k + rng.uniform(-6, 6) + 15.0)
        ru, rv = (body_a - fat - 3 * s) * np.cos(ang), (body_b - fat - 3 * s) * np.sin(ang)
        if abs(np.cos(ang)) < 0.3 and np.sin(ang) > 0:  # no ribs next to the spine
            continue
        phase = rng.uniform(0, 2 * np.pi)
        band = np.cos(2 * np.pi * f.w / (11 * s) + phase) > -0.1
        hu[(f.ellipse(ru, rv, 3.0 * s, 2.2 * s) <= 1) & band] = 550.0
    sternum = (f.ellipse(0, -(body_b - fat - 2.5 * s), 5 * s, 2.4 * s) <= 1) & (f.w > -18 * s)
    hu[sternum] = 450.0
    return {"inner": inner, "sternum": sternum}


def _heart_frame(d: _Draw, thorax: dict[str, Any]) -> dict[str, Any]:
    """LV centre and axes (row 0 of ``rot`` points to the apex); paints mediastinum and epicardial fat."""
    rng, s, f, hu = d.rng, d.s, d.f, d.hu
    heart_c = np.array([d.jit(9 * s, 0.25), d.jit(-7 * s, 0.25), d.jit(-6 * s, 0.4)])
    az = np.deg2rad(-40 + rng.uniform(-12, 12))
    el = np.deg2rad(35 + rng.uniform(-10, 10))
    long_dir = np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), -np.sin(el)])
    rot = _rotation_with_axis(long_dir, np.array([0.0, -1.0, 0.0]))  # rows: apex, anterior, cross
    lv_axes = np.array([d.jit(17 * s, 0.12), d.jit(10 * s, 0.12), d.jit(10 * s, 0.12)])
    myo_t = d.jit(3.2 * s, 0.2)
    peri_axes = lv_axes + np.array([4.0, 10.0, 11.0]) * s
    peri_c = heart_c + (3.0 * rot[1] + 4.0 * rot[2] - 2.0 * long_dir) * s
    mediastinum = (f.q(peri_c, peri_axes + 2.5 * s, rot) <= 1) | (
        (f.ellipse(0, 8 * s, 9 * s, 16 * s) <= 1) & (f.w > -30 * s)
    )
    hu[mediastinum & thorax["inner"] & ~thorax["sternum"]] = 40.0
    hu[(f.q(peri_c, peri_axes, rot) <= 1) & thorax["inner"]] = -90.0
    return {"heart_c": heart_c, "long_dir": long_dir, "rot": rot, "lv_axes": lv_axes, "myo_t": myo_t}


def _paint_spine(d: _Draw, inner: np.ndarray) -> tuple[float, float]:
    """Vertebral body (cortex, cancellous bone, discs), canal, arch, spinous process; returns (centre v, radius)."""
    rng, s, f, hu = d.rng, d.s, d.f, d.hu
    vb_v, vb_r = d.jit(21 * s, 0.06), d.jit(7.0 * s, 0.1)
    disc = np.mod(f.w + rng.uniform(0, 10 * s), 10 * s) < 1.8 * s
    vb = f.ellipse(0, vb_v, vb_r, vb_r * 0.9) <= 1
    hu[vb] = 700.0
    hu[(f.ellipse(0, vb_v, vb_r - 1.4 * s, vb_r * 0.9 - 1.4 * s) <= 1)] = 250.0
    hu[vb & disc] = 80.0
    canal_v = vb_v + vb_r * 0.9 + 3.2 * s
    hu[(f.ellipse(0, canal_v, 5.8 * s, 5.5 * s) <= 1) & ~vb] = 600.0
    hu[(f.ellipse(0, canal_v + 7 * s, 1.8 * s, 4.5 * s) <= 1) & inner] = 600.0
    hu[f.ellipse(0, canal_v, 3.3 * s, 3.0 * s) <= 1] = 15.0
    return vb_v, vb_r


def _structures(d: _Draw, heart: dict[str, Any], spine: tuple[float, float]) -> dict[int | str, Any]:
    """Masks of the labelled structures (and the unlabelled RV, painted here) inside the cardiac z range;
    ``"range"``: that range ``(w_lo, w_hi)``, ``"contrast"``: the contrast factor."""
    rng, s, f, hu = d.rng, d.s, d.f, d.hu
    u, v, w = f.u, f.v, f.w
    heart_c, long_dir, rot, lv_axes, myo_t = (heart[k] for k in ("heart_c", "long_dir", "rot", "lv_axes", "myo_t"))
    vb_v, vb_r = spine
    w_lo = -d.z_extent / 2 + rng.uniform(0.12, 0.2) * d.z_extent  # the first/last slices stay background
    w_hi = d.z_extent / 2 - rng.uniform(0.08, 0.14) * d.z_extent
    contrast = rng.uniform(0.85, 1.15)
    da_r = d.jit(5.0 * s, 0.15)  # descending aorta next to the spine
    da_u = d.jit(10 * s, 0.12) + 0.08 * w
    da_v = vb_v - vb_r - da_r * 0.4 + rng.uniform(-1.0, 1.0) * s
    desc = (((u - da_u) ** 2 + (v - da_v) ** 2) <= da_r**2) & (w >= w_lo) & (w <= w_hi)
    lv = f.q(heart_c, lv_axes, rot) <= 1
    myo = (f.q(heart_c, lv_axes + myo_t, rot) <= 1) & ~lv
    base = heart_c - long_dir * lv_axes[0] * 0.75
    # RV: anterior (rot[1]) and to the patient's right (rot[2]) of the LV, unlabelled
    rv_c = heart_c + rot[1] * d.jit(9 * s, 0.15) + rot[2] * d.jit(6 * s, 0.3) - long_dir * 3 * s
    rv = (f.q(rv_c, np.array([lv_axes[0] * 0.9, 8 * s, 12 * s]), rot) <= 1) & ~lv & ~myo
    hu[rv] = 190.0 * contrast
    la_c = base + np.array([d.jit(-3 * s, 0.5), d.jit(10 * s, 0.2), d.jit(6 * s, 0.3)])
    la_angle = rng.uniform(-0.6, 0.6)  # in-plane orientation of the LA's long axis, rad
    la_rot = _rotation_with_axis(np.array([np.cos(la_angle), np.sin(la_angle), 0.0]), np.array([0.0, 0.0, 1.0]))
    la = f.q(la_c, np.array([d.jit(13 * s, 0.15), d.jit(9 * s, 0.15), d.jit(9 * s, 0.15)]), la_rot) <= 1
    aa_r = d.jit(5.5 * s, 0.15)
    aa_start = base + rot[1] * 3.5 * s - rot[2] * 3 * s + np.array([-2 * s, 0.0, 0.0])
    aa_du, aa_dv = rng.uniform(-0.15, 0.05), rng.uniform(-0.1, 0.15)
    aa_u = aa_start[0] + aa_du * (w - aa_start[2])
    aa_v = aa_start[1] + aa_dv * (w - aa_start[2])
    asc = (((u - aa_u) ** 2 + (v - aa_v) ** 2) <= aa_r**2) & (w >= aa_start[2]) & (w <= w_hi)
    coronary = _coronaries(d, heart, lv_axes + myo_t) & (w >= w_lo) & (w <= w_hi)
    return {
        CORONARY: coronary,
        LA: la,
        AO: desc | asc,
        MYOCARDIUM: myo,
        LV: lv,
        "range": (w_lo, w_hi),
        "contrast": contrast,
    }


def _coronaries(d: _Draw, heart: dict[str, Any], outer: np.ndarray) -> np.ndarray:
    """LAD (and, 3 times in 4, a circumflex) as tubes on the heart surface, in the epicardial fat."""
    rng, s, f = d.rng, d.s, d.f
    heart_c, rot = heart["heart_c"], heart["rot"]

    def surface_point(l0: float, psi: float, off: float) -> np.ndarray:
        frac = np.sqrt(max(1.0 - (l0 / outer[0]) ** 2, 0.05))
        local = np.array([l0, (outer[1] * frac + off) * np.cos(psi), (outer[2] * frac + off) * np.sin(psi)])
        return heart_c + rot.T @ local

    cor_r = rng.uniform(1.6, 2.4) * s
    coronary = np.zeros(d.hu.shape, dtype=bool)
    t = np.linspace(0.0, 1.0, 24)
    psi0 = np.deg2rad(rng.uniform(-50, -10))
    branches = [np.stack([surface_point(outer[0] * (-0.72 + 1.62 * ti), psi0 + 0.3 * ti, cor_r + 0.6 * s) for ti in t])]
    if rng.random() < 0.75:  # circumflex in the AV groove towards the lateral/posterior wall
        psi1 = np.deg2rad(rng.uniform(20, 50))
        sweep = np.deg2rad(rng.uniform(70, 120))
        branches.append(
            np.stack([surface_point(outer[0] * (-0.7 + 0.15 * ti), psi1 + sweep * ti, cor_r + 0.6 * s) for ti in t])
        )
    for nodes in branches:
        pts = _resample_polyline(nodes, 0.4 * s)
        radii = cor_r * (1.0 - 0.4 * np.linspace(0.0, 1.0, len(pts)))
        coronary |= f.tube(pts, np.maximum(radii, 1.0 * s))
    return coronary


def make_phantom_volume(seed: int, size: int = 128, num_slices: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Generate one synthetic cardiac CT volume.

    Returns ``(hu, labels)``, both shaped ``(size, size, num_slices)`` and indexed
    ``(x, y, z)``: ``hu`` int16 Hounsfield-unit-like intensities (-1000 air ..
    ~700 bone, contrast blood 300-400), ``labels`` uint8 class indices into
    :data:`PHANTOM_CLASSES`. The same ``seed`` always gives the same arrays (the steps
    below draw from one random stream in a fixed order).
    """
    _check_args(seed, size, num_slices)
    rng = np.random.default_rng(int(seed))
    z_extent = _Z_EXTENT * size
    f = _place_patient(rng, size, num_slices, z_extent)
    shape = f.u.shape
    d = _Draw(
        rng, size / 128.0, f, np.full(shape, -1000.0, dtype=np.float32), np.zeros(shape, dtype=np.uint8), z_extent
    )
    thorax = _paint_thorax(d)
    heart = _heart_frame(d, thorax)
    spine = _paint_spine(d, thorax["inner"])
    masks = _structures(d, heart, spine)
    labels, hu = d.labels, d.hu
    for cls in (CORONARY, LA, AO, MYOCARDIUM, LV):  # paint in increasing priority (later wins)
        labels[masks[cls]] = cls
    contrast = masks["contrast"]
    for cls, value in ((CORONARY, 320.0), (LA, 330.0), (AO, 380.0), (LV, 350.0)):  # the image follows the labels
        hu[labels == cls] = value * contrast
    hu[labels == MYOCARDIUM] = 110.0
    w_lo, w_hi = masks["range"]
    labels[(f.w < w_lo) | (f.w > w_hi)] = BACKGROUND  # annotation covers the cardiac range only
    hu = _blur(hu, d.jit(0.7, 0.2) * d.s, 0.35)  # partial volume blur and smoothed noise (image only)
    noise = _blur(rng.standard_normal(shape).astype(np.float32), 0.6, 0.0)
    noise *= rng.uniform(15.0, 25.0) / (noise.std() + 1e-6)
    return np.clip(np.rint(hu + noise), -1024, 3071).astype(np.int16), labels


# --------------------------------------------------------------------------- shared by the writers


def _case_seed(seed: int, case_number: int) -> int:
    """Per-case seed derived from the dataset ``seed`` and the 1-based case number."""
    return int(np.random.SeedSequence([int(seed), int(case_number)]).generate_state(1, dtype=np.uint32)[0])


def _case_id(case_number: int) -> str:
    """``phantom001`` for case number 1; the same id means the same anatomy in both writers."""
    return f"phantom{case_number:03d}"


def _read_manifest(
    root: Path, name: str = PHANTOM_MANIFEST, generator: str = PHANTOM_GENERATOR
) -> dict[str, Any] | None:
    """The manifest ``root/name`` written by ``generator``, or ``None`` if there is none or it is not ours."""
    path = root / name
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("generator") != generator:
        return None
    return manifest


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Write JSON atomically (temporary file in the same folder, then rename)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _inspect_root(root: Path, manifest_name: str, generator: str, what: str) -> dict[str, Any] | None:
    """Before writing into ``root``: its manifest if the folder is ours, ``None`` if absent or empty.

    Raises :class:`FileExistsError` naming ``root`` for a file, or a non-empty folder
    without our manifest (nothing is touched then).
    """
    if not root.exists():
        return None
    if not root.is_dir():
        raise FileExistsError(f"{root} exists and is not a folder, so it is not a segexp {what} folder")
    manifest = _read_manifest(root, manifest_name, generator)
    if manifest is None and any(root.iterdir()):
        raise FileExistsError(
            f"{root} is not empty and has no {manifest_name}, so it is not a segexp {what} folder; "
            "refusing to write into it (choose another folder or empty it)"
        )
    return manifest


def _reusable(manifest: Mapping[str, Any], params: Mapping[str, Any], complete: Callable[[], bool]) -> bool:
    """The folder holds a complete dataset generated with exactly ``params``."""
    return manifest.get("complete") is True and manifest.get("params") == params and complete()


def _check_no_clash(root: Path, new_entries: Sequence[str], owned: Sequence[str] | None) -> None:
    """Refuse to replace an entry of ``root`` that the old manifest does not list as ours."""
    if owned is None:  # root absent or empty
        return
    mine = set(owned)
    for entry in new_entries:
        path = root / entry
        if entry not in mine and (path.exists() or path.is_symlink()):
            raise FileExistsError(
                f"{path} exists but was not written by the segexp phantom generator; "
                "refusing to replace it (move it away or choose another folder)"
            )


def _remove(path: Path, what: str) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            path.unlink(missing_ok=True)
        except OSError:
            pass
    if path.exists() or path.is_symlink():
        raise OSError(f"could not remove old phantom {what} {path}")


def _install(
    tmp: Path,
    root: Path,
    *,
    manifest_name: str,
    manifest: Mapping[str, Any],
    entries_key: str,
    old_entries: Sequence[str] | None,
    what: str,
) -> None:
    """Move the generated entries ``manifest[entries_key]`` and the manifest from ``tmp`` into ``root``.

    ``old_entries is None`` (``root`` absent or empty): one rename of ``tmp``. Otherwise
    ``root`` holds our old dataset: its manifest is first rewritten as incomplete,
    owning the old and the new entries, so an interruption below leaves a folder that
    is recognised and regenerated; then the old entries are deleted (nothing else),
    the new ones moved in, and the complete manifest replaces the old one last.
    """
    new_entries = [str(e) for e in manifest[entries_key]]
    if old_entries is None:
        try:
            if root.exists():
                root.rmdir()
            tmp.rename(root)
        except OSError:
            # Another process (a parallel sweep job) installed the same dataset first: keep theirs.
            try:
                same = json.loads((root / manifest_name).read_text()) == json.loads((tmp / manifest_name).read_text())
            except (OSError, ValueError):
                same = False
            if not same:
                raise
            shutil.rmtree(tmp)
        return
    owned = list(dict.fromkeys([*old_entries, *new_entries]))
    _write_json(root / manifest_name, {**manifest, "complete": False, entries_key: owned})
    for entry in owned:
        _remove(root / entry, what)
    for entry in new_entries:
        (tmp / entry).rename(root / entry)
    os.replace(tmp / manifest_name, root / manifest_name)
    tmp.rmdir()


# --------------------------------------------------------------------------- slice dataset


def _params(cases: Mapping[str, int], num_slices: int, size: int, seed: int) -> dict[str, Any]:
    return {
        "version": PHANTOM_VERSION,
        "seed": int(seed),
        "size": int(size),
        "num_slices": int(num_slices),
        # A list keeps the order, which decides the case numbering.
        "cases": [[str(split), int(n)] for split, n in cases.items()],
        "window": [float(PHANTOM_WINDOW[0]), float(PHANTOM_WINDOW[1])],
        "class_names": list(PHANTOM_CLASS_NAMES),
        "colours": [list(c) for c in PHANTOM_COLOURS],
    }


def _case_plan(cases: Mapping[str, int], seed: int) -> list[dict[str, Any]]:
    plan, number = [], 0
    for split, count in cases.items():
        for _ in range(count):
            number += 1
            plan.append({"id": _case_id(number), "split": split, "seed": _case_seed(seed, number)})
    return plan


def _is_complete(root: Path, manifest: Mapping[str, Any]) -> bool:
    """All slice files the manifest lists are present."""
    try:
        num_slices = int(manifest["params"]["num_slices"])
        by_split: dict[str, set[str]] = {}
        for case in manifest["cases"]:
            names = by_split.setdefault(case["split"], set())
            names.update(f"{case['id']}_{z:03d}.png" for z in range(num_slices))
        for split in manifest["splits"]:
            for sub in ("images", "masks"):
                folder = root / split / sub
                if not folder.is_dir() or not by_split.get(split, set()) <= set(os.listdir(folder)):
                    return False
    except (KeyError, TypeError, ValueError, OSError):
        return False
    return True


def _imwrite(path: Path, image: np.ndarray) -> None:
    if not cv2.imwrite(str(path), image):
        raise OSError(f"could not write {path}")


def _check_split_name(split: str) -> None:
    if not isinstance(split, str) or not split or split in {".", ".."} or any(c in split for c in "/\\"):
        raise ValueError(f"split names must be plain folder names, got {split!r}")
    if split == PHANTOM_MANIFEST or split.startswith("."):
        raise ValueError(f"split name {split!r} is reserved")


def write_phantom_dataset(
    root: Path,
    *,
    cases: Mapping[str, int] = DEFAULT_PHANTOM_CASES,
    num_slices: int = 24,
    size: int = 128,
    seed: int = 0,
) -> Path:
    """Write (or reuse) a phantom dataset in the slice-folder layout and return ``root``.

    Layout: ``<root>/<split>/images/<case>_<zzz>.png`` (8-bit grayscale, HU windowed
    with :data:`PHANTOM_WINDOW`) and ``<root>/<split>/masks/<case>_<zzz>.png`` (RGB
    colours of :data:`PHANTOM_COLOURS`), one axial slice per file
    (``volume[:, :, z].T``), cases ``phantom001, phantom002, ...`` numbered in the
    order of ``cases``; each case seed is derived from ``seed`` and its number. A
    manifest ``<root>/phantom.json`` records all parameters.

    * ``root`` holds a complete dataset with the same parameters: nothing is written.
    * ``root`` holds a phantom dataset with other parameters: the split folders and
      manifest it wrote are deleted and regenerated; other files are left alone (a
      new split folder whose name is taken by a folder we did not write:
      :class:`FileExistsError`).
    * ``root`` is non-empty without a phantom manifest: :class:`FileExistsError`.

    The dataset is generated in a temporary sibling folder and moved into place at
    the end; the manifest is marked complete only once all files are in place.
    """
    root = Path(root)
    cases = dict(cases)
    for split, count in cases.items():
        _check_split_name(split)
        if int(count) != count or count < 0:
            raise ValueError(f"case count for split {split!r} must be a non-negative integer, got {count!r}")
    _check_args(seed, size, num_slices)
    params = _params(cases, num_slices, size, seed)

    old_splits: list[str] | None = None  # None: root is absent or empty
    manifest = _inspect_root(root, PHANTOM_MANIFEST, PHANTOM_GENERATOR, "phantom")
    if manifest is not None:
        if _reusable(manifest, params, lambda: _is_complete(root, manifest)):
            return root
        old_splits = [str(s) for s in manifest.get("splits", []) if isinstance(s, str)]
        for split in old_splits:
            _check_split_name(split)
    _check_no_clash(root, list(cases), old_splits)

    with staging_folder(root) as tmp:
        plan = _case_plan(cases, seed)
        for split in cases:
            (tmp / split / "images").mkdir(parents=True)
            (tmp / split / "masks").mkdir(parents=True)
        for case in plan:
            hu, labels = make_phantom_volume(case["seed"], size=size, num_slices=num_slices)
            image = window_to_uint8(hu, *PHANTOM_WINDOW)
            for z in range(num_slices):
                name = f"{case['id']}_{z:03d}.png"
                _imwrite(tmp / case["split"] / "images" / name, np.ascontiguousarray(image[:, :, z].T))
                rgb = encode_rgb_mask(np.ascontiguousarray(labels[:, :, z].T), PHANTOM_COLOURS)
                _imwrite(tmp / case["split"] / "masks" / name, np.ascontiguousarray(rgb[:, :, ::-1]))
        new_manifest = {
            "generator": PHANTOM_GENERATOR,
            "complete": True,
            "params": params,
            "splits": list(cases),
            "spacing_mm": list(phantom_spacing(size, num_slices)),
            "classes": [{"index": i, "name": n, "colour": list(c)} for i, (n, c) in enumerate(PHANTOM_CLASSES)],
            "cases": plan,
        }
        _write_json(tmp / PHANTOM_MANIFEST, new_manifest)
        _install(
            tmp,
            root,
            manifest_name=PHANTOM_MANIFEST,
            manifest=new_manifest,
            entries_key="splits",
            old_entries=old_splits,
            what="split folder",
        )
        return root


# --------------------------------------------------------------------------- NIfTI volumes


def _volume_names(case_id: str) -> tuple[str, str]:
    return f"{case_id}_image.nii.gz", f"{case_id}_label.nii.gz"


def _volume_params(num_cases: int, size: int, num_slices: int, seed: int) -> dict[str, Any]:
    return {
        "version": PHANTOM_VERSION,
        "format": PHANTOM_VOLUMES_FORMAT,
        "seed": int(seed),
        "size": int(size),
        "num_slices": int(num_slices),
        "num_cases": int(num_cases),
        "class_names": list(PHANTOM_CLASS_NAMES),
    }


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


def write_phantom_volumes(
    out_dir: Path,
    *,
    num_cases: int = 12,
    size: int = 128,
    num_slices: int = 32,
    seed: int = 0,
) -> list[tuple[Path, Path]]:
    """Write (or reuse) phantom CT volumes as NIfTI and return ``[(image, label), ...]`` per case.

    Files ``<out_dir>/phantom001_image.nii.gz`` (int16 HU) and
    ``<out_dir>/phantom001_label.nii.gz`` (uint8 class indices into
    :data:`PHANTOM_CLASSES`, intent ``label``) for cases 1..``num_cases``, arrays
    ``(size, size, num_slices)`` from :func:`make_phantom_volume`, affine
    :func:`phantom_affine` (orientation LPS), units mm, qform code scanner and sform
    code aligned. The case seeds are derived as in :func:`write_phantom_dataset`, so
    ``phantom001`` is the same anatomy in both writers (for the same ``seed``,
    ``size`` and ``num_slices``). A manifest ``<out_dir>/phantom_volumes.json``
    records the parameters, files and case seeds.

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
    _check_args(seed, size, num_slices)
    params = _volume_params(num_cases, size, num_slices, seed)
    ids = [_case_id(number) for number in range(1, int(num_cases) + 1)]
    pairs = [(out_dir / image, out_dir / label) for image, label in map(_volume_names, ids)]
    files = [name for case_id in ids for name in _volume_names(case_id)]

    old_files: list[str] | None = None  # None: out_dir is absent or empty
    manifest = _inspect_root(out_dir, PHANTOM_VOLUMES_MANIFEST, PHANTOM_VOLUMES_GENERATOR, "phantom volume")
    if manifest is not None:
        if _reusable(manifest, params, lambda: _volumes_complete(out_dir, manifest)):
            return pairs
        raw = manifest.get("files", [])
        old_files = [str(name) for name in raw if isinstance(name, str)] if isinstance(raw, list) else []
        for name in old_files:
            _check_volume_file_name(name)
    _check_no_clash(out_dir, files, old_files)

    affine = phantom_affine(size, num_slices)
    with staging_folder(out_dir) as tmp:
        cases = []
        for number, case_id in enumerate(ids, start=1):
            case_seed = _case_seed(seed, number)
            hu, labels = make_phantom_volume(case_seed, size=size, num_slices=num_slices)
            image_name, label_name = _volume_names(case_id)
            save_nifti(tmp / image_name, hu, affine, description=f"segexp phantom {case_id} HU", label=False)
            save_nifti(tmp / label_name, labels, affine, description=f"segexp phantom {case_id} labels", label=True)
            cases.append({"id": case_id, "seed": case_seed, "image": image_name, "label": label_name})
        new_manifest = {
            "generator": PHANTOM_VOLUMES_GENERATOR,
            "complete": True,
            "params": params,
            "files": files,
            "shape": [int(size), int(size), int(num_slices)],
            "spacing_mm": list(phantom_spacing(size, num_slices)),
            "orientation": "LPS",
            "affine": affine.tolist(),
            "classes": [{"index": i, "name": n} for i, n in enumerate(PHANTOM_CLASS_NAMES)],
            "cases": cases,
        }
        _write_json(tmp / PHANTOM_VOLUMES_MANIFEST, new_manifest)
        _install(
            tmp,
            out_dir,
            manifest_name=PHANTOM_VOLUMES_MANIFEST,
            manifest=new_manifest,
            entries_key="files",
            old_entries=old_files,
            what="volume file",
        )
        return pairs


def ensure_phantom_slices(root: Path, spec: Mapping[str, Any] | None) -> None:
    """Write the phantom slice dataset of ``dataset.phantom`` (``spec``) into ``root`` unless it is there.

    The one place a slice config's phantom is materialised (training, evaluation, ``segexp-check``);
    nothing happens when ``spec`` is None (a real dataset).
    """
    if spec is not None:
        write_phantom_dataset(
            Path(root), cases=dict(spec["cases"]), num_slices=spec["num_slices"], size=spec["size"], seed=spec["seed"]
        )


def ensure_phantom_volumes(source: Path, spec: Mapping[str, Any] | None) -> None:
    """Write the phantom NIfTI volumes of ``volumes.phantom`` (``spec``) into ``source`` unless they are there.

    The one place a volume config's phantom is materialised (``segexp-prepare``, ``segexp-check``).
    """
    if spec is not None:
        write_phantom_volumes(Path(source), **dict(spec))
