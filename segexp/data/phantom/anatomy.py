"""The synthetic cardiac-CT anatomy: one seeded volume of HU intensities and class labels.

Each volume is built in 3D from analytic shapes (:mod:`segexp.data.phantom.shapes`):

* air outside the patient (-1000 HU), a body ellipse with a subcutaneous fat rim
  (~-100 HU) around soft tissue (~40 HU), liver (~60 HU) below the diaphragm;
* two lungs (~-850 HU, with small vessel dots), ribs, sternum and a spine
  (vertebral body with a cortical rim ~700 HU, discs, spinal canal, arch);
* the heart inside epicardial fat: LV blood pool with contrast (~350 HU) in a
  myocardial shell (~110 HU, a few px thick), an unlabelled RV (~190 HU), LA
  (~330 HU) next to the LV base, ascending and descending aorta (~380 HU) as tubes
  along z, and one or two coronary arteries (~320 HU, radius ~1.5-2.5 px) running
  in the fat on the heart surface.

Every case draws its own centre offsets, radii, axes, rotation, tilt along z, heart
orientation and contrast level from ``numpy.random.default_rng(seed)``, in a fixed order.
Foreground structures occupy only part of the z range, so the first and last slices
contain background only. The image (not the labels) is blurred slightly (partial volume)
and gets smoothed Gaussian noise (15-25 HU). Lengths are px at ``size=128`` and scale
with ``size``; axes and spacing: :mod:`segexp.data.phantom.geometry`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from segexp.data.phantom.cases import check_seed
from segexp.data.phantom.classes import AO, BACKGROUND, CORONARY, LA, LV, MYOCARDIUM
from segexp.data.phantom.geometry import Z_EXTENT, check_grid
from segexp.data.phantom.shapes import Frame, blur, resample_polyline, rotation_with_axis

__all__ = ["PHANTOM_VERSION", "check_args", "make_phantom_volume"]

PHANTOM_VERSION = "segexp-phantom-1"
"""Bump whenever the generated content changes, so cached datasets regenerate."""


def check_args(seed: int, size: int, num_slices: int) -> None:
    """Raise :class:`ValueError` for a bad seed, then a bad grid (``size >= 32``, ``num_slices >= 1``)."""
    check_seed(seed)
    check_grid(size, num_slices)


@dataclass
class _Draw:
    """What the steps of :func:`make_phantom_volume` share: the random stream, the frame, the arrays."""

    rng: np.random.Generator
    s: float  # scale: lengths below are px at size 128
    f: Frame
    hu: np.ndarray
    labels: np.ndarray
    z_extent: float

    def jit(self, value: float, rel: float) -> float:
        """``value`` jittered by a relative ``±rel`` (one draw)."""
        return float(value * (1.0 + self.rng.uniform(-rel, rel)))


@dataclass(frozen=True)
class _Thorax:
    inner: np.ndarray  # inside the subcutaneous fat rim
    sternum: np.ndarray


@dataclass(frozen=True)
class _Heart:
    centre: np.ndarray  # LV centre, px
    long_dir: np.ndarray  # unit vector base -> apex
    rot: np.ndarray  # rows: apex, anterior, cross
    lv_axes: np.ndarray  # LV semi-axes along the rows of ``rot``, px
    myo_t: float  # myocardial thickness, px

    @property
    def base(self) -> np.ndarray:
        """The LV base: ``centre - long_dir * 0.75 * lv_axes[0]`` (towards the LA and the aortic root)."""
        return self.centre - self.long_dir * self.lv_axes[0] * 0.75


def _place_patient(rng: np.random.Generator, size: int, num_slices: int, z_extent: float) -> Frame:
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
    return Frame(u, v, np.broadcast_to(w, u.shape).astype(np.float32))


def _paint_thorax(d: _Draw) -> _Thorax:
    """Body (fat rim), liver, lungs with vessel dots, ribs and sternum."""
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
    texture = blur(rng.standard_normal(shape).astype(np.float32), 1.2 * s, 0.6)
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
    return _Thorax(inner=inner, sternum=sternum)


def _heart_frame(d: _Draw, thorax: _Thorax) -> _Heart:
    """LV centre and axes (row 0 of ``rot`` points to the apex); paints mediastinum and epicardial fat."""
    rng, s, f, hu = d.rng, d.s, d.f, d.hu
    heart_c = np.array([d.jit(9 * s, 0.25), d.jit(-7 * s, 0.25), d.jit(-6 * s, 0.4)])
    az = np.deg2rad(-40 + rng.uniform(-12, 12))
    el = np.deg2rad(35 + rng.uniform(-10, 10))
    long_dir = np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), -np.sin(el)])
    rot = rotation_with_axis(long_dir, np.array([0.0, -1.0, 0.0]))  # rows: apex, anterior, cross
    lv_axes = np.array([d.jit(17 * s, 0.12), d.jit(10 * s, 0.12), d.jit(10 * s, 0.12)])
    myo_t = d.jit(3.2 * s, 0.2)
    peri_axes = lv_axes + np.array([4.0, 10.0, 11.0]) * s
    peri_c = heart_c + (3.0 * rot[1] + 4.0 * rot[2] - 2.0 * long_dir) * s
    mediastinum = (f.q(peri_c, peri_axes + 2.5 * s, rot) <= 1) | (
        (f.ellipse(0, 8 * s, 9 * s, 16 * s) <= 1) & (f.w > -30 * s)
    )
    hu[mediastinum & thorax.inner & ~thorax.sternum] = 40.0
    hu[(f.q(peri_c, peri_axes, rot) <= 1) & thorax.inner] = -90.0
    return _Heart(centre=heart_c, long_dir=long_dir, rot=rot, lv_axes=lv_axes, myo_t=myo_t)


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


def _descending_aorta(d: _Draw, spine: tuple[float, float]) -> np.ndarray:
    """Tube next to the spine, radius ~5 px, drifting left along z (before clipping to the cardiac range)."""
    s, f = d.s, d.f
    vb_v, vb_r = spine
    da_r = d.jit(5.0 * s, 0.15)
    da_u = d.jit(10 * s, 0.12) + 0.08 * f.w
    da_v = vb_v - vb_r - da_r * 0.4 + d.rng.uniform(-1.0, 1.0) * s
    return ((f.u - da_u) ** 2 + (f.v - da_v) ** 2) <= da_r**2


def _chambers(d: _Draw, heart: _Heart, contrast: float) -> dict[int, np.ndarray]:
    """LV, myocardial shell and LA masks; paints the unlabelled RV (``190 * contrast`` HU)."""
    s, f = d.s, d.f
    lv = f.q(heart.centre, heart.lv_axes, heart.rot) <= 1
    myo = (f.q(heart.centre, heart.lv_axes + heart.myo_t, heart.rot) <= 1) & ~lv
    # RV: anterior (rot[1]) and to the patient's right (rot[2]) of the LV, unlabelled
    rv_c = heart.centre + heart.rot[1] * d.jit(9 * s, 0.15) + heart.rot[2] * d.jit(6 * s, 0.3) - heart.long_dir * 3 * s
    rv_axes = np.array([heart.lv_axes[0] * 0.9, 8 * s, 12 * s])
    d.hu[(f.q(rv_c, rv_axes, heart.rot) <= 1) & ~lv & ~myo] = 190.0 * contrast
    la_c = heart.base + np.array([d.jit(-3 * s, 0.5), d.jit(10 * s, 0.2), d.jit(6 * s, 0.3)])
    la_angle = d.rng.uniform(-0.6, 0.6)  # in-plane orientation of the LA's long axis, rad
    la_rot = rotation_with_axis(np.array([np.cos(la_angle), np.sin(la_angle), 0.0]), np.array([0.0, 0.0, 1.0]))
    la = f.q(la_c, np.array([d.jit(13 * s, 0.15), d.jit(9 * s, 0.15), d.jit(9 * s, 0.15)]), la_rot) <= 1
    return {LV: lv, MYOCARDIUM: myo, LA: la}


def _ascending_aorta(d: _Draw, heart: _Heart, w_hi: float) -> np.ndarray:
    """Tube from the LV base up to ``w_hi``, radius ~5.5 px, slightly oblique."""
    s, f = d.s, d.f
    aa_r = d.jit(5.5 * s, 0.15)
    aa_start = heart.base + heart.rot[1] * 3.5 * s - heart.rot[2] * 3 * s + np.array([-2 * s, 0.0, 0.0])
    aa_du, aa_dv = d.rng.uniform(-0.15, 0.05), d.rng.uniform(-0.1, 0.15)
    aa_u = aa_start[0] + aa_du * (f.w - aa_start[2])
    aa_v = aa_start[1] + aa_dv * (f.w - aa_start[2])
    return (((f.u - aa_u) ** 2 + (f.v - aa_v) ** 2) <= aa_r**2) & (f.w >= aa_start[2]) & (f.w <= w_hi)


def _coronaries(d: _Draw, heart: _Heart) -> np.ndarray:
    """LAD (and, 3 times in 4, a circumflex) as tubes on the heart surface, in the epicardial fat."""
    rng, s, f = d.rng, d.s, d.f
    outer = heart.lv_axes + heart.myo_t

    def surface_point(l0: float, psi: float, off: float) -> np.ndarray:
        frac = np.sqrt(max(1.0 - (l0 / outer[0]) ** 2, 0.05))
        local = np.array([l0, (outer[1] * frac + off) * np.cos(psi), (outer[2] * frac + off) * np.sin(psi)])
        return heart.centre + heart.rot.T @ local

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
        pts = resample_polyline(nodes, 0.4 * s)
        radii = cor_r * (1.0 - 0.4 * np.linspace(0.0, 1.0, len(pts)))
        coronary |= f.tube(pts, np.maximum(radii, 1.0 * s))
    return coronary


def _paint_heart(d: _Draw, heart: _Heart, spine: tuple[float, float]) -> tuple[float, float]:
    """Labels and contrast HU of the cardiac structures within the cardiac z range; returns that range."""
    rng, f = d.rng, d.f
    w_lo = -d.z_extent / 2 + rng.uniform(0.12, 0.2) * d.z_extent  # the first/last slices stay background
    w_hi = d.z_extent / 2 - rng.uniform(0.08, 0.14) * d.z_extent
    in_range = (f.w >= w_lo) & (f.w <= w_hi)
    contrast = rng.uniform(0.85, 1.15)
    desc = _descending_aorta(d, spine) & in_range
    masks = _chambers(d, heart, contrast)
    masks[AO] = desc | _ascending_aorta(d, heart, w_hi)
    masks[CORONARY] = _coronaries(d, heart) & in_range
    for cls in (CORONARY, LA, AO, MYOCARDIUM, LV):  # paint in increasing priority (later wins)
        d.labels[masks[cls]] = cls
    for cls, value in ((CORONARY, 320.0), (LA, 330.0), (AO, 380.0), (LV, 350.0)):  # the image follows the labels
        d.hu[d.labels == cls] = value * contrast
    d.hu[d.labels == MYOCARDIUM] = 110.0
    return w_lo, w_hi


def make_phantom_volume(seed: int, size: int = 128, num_slices: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Generate one synthetic cardiac CT volume.

    Returns ``(hu, labels)``, both shaped ``(size, size, num_slices)`` and indexed
    ``(x, y, z)``: ``hu`` int16 Hounsfield-unit-like intensities (-1000 air ..
    ~700 bone, contrast blood 300-400), ``labels`` uint8 class indices into
    :data:`~segexp.data.phantom.classes.PHANTOM_CLASSES`. The same ``seed`` always gives
    the same arrays (the steps below draw from one random stream in a fixed order).
    """
    check_args(seed, size, num_slices)
    rng = np.random.default_rng(int(seed))
    z_extent = Z_EXTENT * size
    f = _place_patient(rng, size, num_slices, z_extent)
    shape = f.u.shape
    d = _Draw(
        rng, size / 128.0, f, np.full(shape, -1000.0, dtype=np.float32), np.zeros(shape, dtype=np.uint8), z_extent
    )
    thorax = _paint_thorax(d)
    heart = _heart_frame(d, thorax)
    spine = _paint_spine(d, thorax.inner)
    w_lo, w_hi = _paint_heart(d, heart, spine)
    d.labels[(f.w < w_lo) | (f.w > w_hi)] = BACKGROUND  # annotation covers the cardiac range only
    hu = blur(d.hu, d.jit(0.7, 0.2) * d.s, 0.35)  # partial volume blur and smoothed noise (image only)
    noise = blur(rng.standard_normal(shape).astype(np.float32), 0.6, 0.0)
    noise *= rng.uniform(15.0, 25.0) / (noise.std() + 1e-6)
    return np.clip(np.rint(hu + noise), -1024, 3071).astype(np.int16), d.labels
