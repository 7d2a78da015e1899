"""Drawing primitives of the phantom: analytic shapes on per-voxel coordinate grids, and the blur.

Everything is vectorised numpy on float32 grids (no per-voxel Python loops); lengths are px.
"""

from __future__ import annotations

from typing import cast

import cv2
import numpy as np

__all__ = ["Frame", "blur", "resample_polyline", "rotation_with_axis"]

_CV_CHANNEL_CHUNK = 128  # cv2 filters accept a limited channel count


def rotation_with_axis(axis: np.ndarray, hint: np.ndarray) -> np.ndarray:
    """Rows: unit ``axis``, the part of ``hint`` orthogonal to it, and their cross product."""
    e0 = axis / np.linalg.norm(axis)
    e1 = hint - np.dot(hint, e0) * e0
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(e0, e1)
    return np.stack([e0, e1, e2])


class Frame:
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


def resample_polyline(nodes: np.ndarray, step: float) -> np.ndarray:
    """Points every ``step`` px along the polyline through ``nodes`` (N, 3)."""
    seg = np.linalg.norm(np.diff(nodes, axis=0), axis=1)
    arc = np.concatenate([[0.0], np.cumsum(seg)])
    samples = np.linspace(0.0, arc[-1], max(2, int(np.ceil(arc[-1] / step)) + 1))
    return np.stack([np.interp(samples, arc, nodes[:, k]) for k in range(3)], axis=1)


def blur(vol: np.ndarray, sigma_xy: float, sigma_z: float) -> np.ndarray:
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
