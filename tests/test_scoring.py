"""segexp.evaluation.scoring against hand-computed values and a brute-force HD95."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from segexp.evaluation.scoring import (
    METRICS,
    ClassScore,
    aggregate,
    assd,
    class_tolerances,
    dice_including_background,
    hd95,
    nsd,
    score_class,
    score_classes,
    surface,
    to_json_safe,
)


# ---------------------------------------------------------------- helpers
def square(shape, rows, cols):
    m = np.zeros(shape, bool)
    m[rows[0] : rows[1], cols[0] : cols[1]] = True
    return m


def brute_surface(mask: np.ndarray) -> np.ndarray:
    """Mask voxels with a background (or out-of-array) voxel among their 2*ndim
    face neighbours (MONAI's edges), checked one neighbour at a time."""
    padded = np.pad(mask, 1, constant_values=False)
    has_bg_neighbour = np.zeros(mask.shape, bool)
    for axis in range(mask.ndim):
        for step in (-1, 1):
            offset = [0] * mask.ndim
            offset[axis] = step
            window = tuple(slice(1 + o, 1 + o + n) for o, n in zip(offset, mask.shape))
            has_bg_neighbour |= ~padded[window]
    return mask & has_bg_neighbour


def brute_hd95(a: np.ndarray, b: np.ndarray, spacing) -> float:
    """All pairwise distances between surface points; max of the two directed 95th percentiles."""
    pa = np.argwhere(brute_surface(a)) * np.asarray(spacing, float)
    pb = np.argwhere(brute_surface(b)) * np.asarray(spacing, float)
    d = np.sqrt(((pa[:, None, :] - pb[None, :, :]) ** 2).sum(-1))
    return float(max(np.percentile(d.min(axis=1), 95), np.percentile(d.min(axis=0), 95)))


def cs(dice=math.nan, iou=math.nan, precision=math.nan, recall=math.nan, hd95=math.nan):
    """A ClassScore with given float scores (counts irrelevant for aggregation)."""
    return ClassScore(dice, iou, precision, recall, hd95, 0, 0, 0, 0, 0)


# ---------------------------------------------------------------- score_class
def test_perfect_prediction():
    m = square((16, 16), (3, 9), (4, 12))
    s = score_class(m, m.copy())
    assert (s.dice, s.iou, s.precision, s.recall, s.hd95) == (1.0, 1.0, 1.0, 1.0, 0.0)
    assert (s.tp, s.fp, s.fn, s.n_truth, s.n_pred) == (48, 0, 0, 48, 48)


def test_absent_in_both_is_nan_not_free_one():
    empty = np.zeros((8, 8), bool)
    s = score_class(empty, empty)
    for metric in METRICS:
        assert math.isnan(getattr(s, metric)), metric
    assert (s.tp, s.fp, s.fn, s.n_truth, s.n_pred) == (0, 0, 0, 0, 0)


def test_disjoint_masks():
    t = square((10, 10), (0, 3), (0, 3))
    p = square((10, 10), (6, 9), (6, 9))
    s = score_class(t, p)
    assert (s.dice, s.iou, s.precision, s.recall) == (0.0, 0.0, 0.0, 0.0)
    assert (s.tp, s.fp, s.fn) == (0, 9, 9)
    # both non-empty: a real distance, not the penalty. Nearest surface corners
    # (2,2) and (6,6) are 4*sqrt(2) apart; the 95th percentile is larger.
    assert s.hd95 == pytest.approx(brute_hd95(t, p, (1, 1)))
    assert 4 * math.sqrt(2) < s.hd95 < math.hypot(10, 10)


def test_missed_structure():
    t = square((4, 4), (1, 3), (1, 3))
    s = score_class(t, np.zeros_like(t))
    assert (s.dice, s.iou, s.recall) == (0.0, 0.0, 0.0)
    assert math.isnan(s.precision)  # 0/0: nothing predicted
    assert s.hd95 == pytest.approx(math.sqrt(4**2 + 4**2))  # field-of-view diagonal, pixels
    assert (s.tp, s.fp, s.fn, s.n_truth, s.n_pred) == (0, 0, 4, 4, 0)
    # with spacing the penalty is the diagonal in mm: sqrt((4*2.0)^2 + (4*0.5)^2)
    s_mm = score_class(t, np.zeros_like(t), spacing=(2.0, 0.5))
    assert s_mm.hd95 == pytest.approx(math.sqrt(8.0**2 + 2.0**2))


def test_hallucinated_structure():
    p = square((4, 6), (0, 2), (0, 2))
    s = score_class(np.zeros_like(p), p)
    assert (s.dice, s.iou, s.precision) == (0.0, 0.0, 0.0)
    assert math.isnan(s.recall)  # 0/0: absent in truth
    assert s.hd95 == pytest.approx(math.sqrt(4**2 + 6**2))


def test_counted_4x4_example():
    t = np.array(
        [[1, 1, 1, 0],
         [1, 1, 1, 0],
         [0, 0, 0, 0],
         [0, 0, 0, 0]], bool)  # fmt: skip
    p = np.array(
        [[0, 0, 0, 0],
         [0, 1, 1, 0],
         [0, 1, 1, 0],
         [0, 0, 0, 0]], bool)  # fmt: skip
    s = score_class(t, p)
    # TP = (1,1),(1,2) = 2; FP = (2,1),(2,2) = 2; FN = row 0 (3) + (1,0) = 4
    assert (s.tp, s.fp, s.fn, s.n_truth, s.n_pred) == (2, 2, 4, 6, 4)
    assert s.dice == pytest.approx(2 * 2 / (2 * 2 + 2 + 4))  # 0.4
    assert s.iou == pytest.approx(2 / (2 + 2 + 4))  # 0.25
    assert s.precision == pytest.approx(2 / 4)
    assert s.recall == pytest.approx(2 / 6)
    assert s.hd95 == pytest.approx(brute_hd95(t, p, (1, 1)))


def test_integer_01_masks_accepted_and_other_values_refused():
    t = square((6, 6), (1, 4), (1, 4))
    assert score_class(t.astype(np.uint8), t.astype(np.uint8)).dice == 1.0
    with pytest.raises(ValueError, match="0/1"):
        score_class(t.astype(np.uint8) * 2, t)
    with pytest.raises(ValueError, match=r"\(6, 6\).*\(6, 7\)"):
        score_class(t, np.zeros((6, 7), bool))
    with pytest.raises(ValueError, match="spacing"):
        score_class(t, t, spacing=(1.0,))
    with pytest.raises(ValueError, match="spacing"):
        score_class(t, t, spacing=(1.0, 0.0))


# ---------------------------------------------------------------- surfaces and HD95
def test_surface_uses_face_connectivity_and_array_border():
    # MONAI's edges: a voxel is surface iff one of its 2*ndim FACE neighbours is
    # background; diagonal background neighbours do not count (scipy's default
    # erosion). Before the fix segexp used the full 3^d - 1 neighbourhood.
    block = square((5, 5), (1, 4), (1, 4))
    expected = block.copy()
    expected[2, 2] = False  # the only voxel whose 4 face neighbours are all inside
    np.testing.assert_array_equal(surface(block), expected)
    plus = np.zeros((5, 5), bool)
    plus[2, 1:4] = plus[1:4, 2] = True
    # the centre's 4 face neighbours are the arms: not surface, although its
    # diagonal neighbours are background (with full connectivity it was surface)
    arms = plus.copy()
    arms[2, 2] = False
    np.testing.assert_array_equal(surface(plus), arms)
    full = np.ones((4, 4), bool)
    ring = full.copy()
    ring[1:3, 1:3] = False  # border voxels count as surface (border_value=0)
    np.testing.assert_array_equal(surface(full), ring)


def test_surface_of_a_diagonal_staircase():
    stairs = np.array(
        [[0, 0, 0, 0, 0, 0, 0],
         [0, 1, 0, 0, 0, 0, 0],
         [0, 1, 1, 0, 0, 0, 0],
         [0, 1, 1, 1, 0, 0, 0],
         [0, 1, 1, 1, 1, 0, 0],
         [0, 1, 1, 1, 1, 1, 0],
         [0, 0, 0, 0, 0, 0, 0]], bool)  # fmt: skip
    # Face-interior: (3,2), (4,2), (4,3) (up, down, left, right all inside).
    # (3,2) and (4,3) touch the staircase diagonally ((2,3) and (3,4) are
    # background), so full connectivity also called them surface; only (4,2)
    # was interior there.
    expected = stairs.copy()
    expected[3, 2] = expected[4, 2] = expected[4, 3] = False
    np.testing.assert_array_equal(surface(stairs), expected)
    np.testing.assert_array_equal(brute_surface(stairs), expected)


def test_surface_3d_face_neighbours_only():
    # 3x3x3 cube inside a 5x5x5 array: only its centre has all 6 face neighbours
    # inside (same in both conventions); removing one corner (1,1,1) exposes no
    # new face of the centre, which stays interior (with 26-connectivity the
    # centre would become surface, its diagonal neighbour being background).
    cube = np.zeros((5, 5, 5), bool)
    cube[1:4, 1:4, 1:4] = True
    cube[1, 1, 1] = False
    expected = cube.copy()
    expected[2, 2, 2] = False
    np.testing.assert_array_equal(surface(cube), expected)


def test_hd95_2d_plus_face_connectivity_by_hand():
    # A = plus centred at (3,3): arms (2,3), (4,3), (3,2), (3,4) and the centre.
    # B = the two diagonal pixels (2,2) and (4,4).
    # Face-connected surfaces: A -> the 4 arms (the centre is interior), B -> both.
    #   d(A->B): (2,3)->(2,2) 1, (3,2)->(2,2) 1, (4,3)->(4,4) 1, (3,4)->(4,4) 1
    #            -> [1, 1, 1, 1], percentile 95 = 1
    #   d(B->A): (2,2)->(2,3) 1, (4,4)->(4,3) 1 -> 1
    #   HD95 = 1.0 exactly.
    # With full connectivity the centre was surface too: d(A->B) gained
    # |(3,3)-(2,2)| = sqrt(2), percentile 95 of [1, 1, 1, 1, sqrt 2] at index
    # 0.95 * 4 = 3.8 is 1 + 0.8 (sqrt 2 - 1) = 1.331: the old, wrong value.
    a = np.zeros((7, 7), bool)
    a[3, 2:5] = a[2:5, 3] = True
    b = np.zeros((7, 7), bool)
    b[2, 2] = b[4, 4] = True
    assert hd95(a, b) == 1.0
    assert hd95(b, a) == 1.0
    assert score_class(a, b).hd95 == 1.0
    assert brute_hd95(a, b, (1, 1)) == 1.0


def test_hd95_3d_cross_anisotropic_spacing_by_hand():
    # A = 3D cross centred at c = (2,2,2): c and its 6 face neighbours (7 voxels);
    # B = the single voxel (1,2,2) (A's arm at z - 1). Spacing (3.0, 0.8, 0.8) mm
    # (z, y, x), the anisotropic CT case of the issue.
    # Face-connected surface of A = the 6 arms; the centre is interior.
    #   d(A->B): (1,2,2) -> 0; (3,2,2) -> 2 slices = 6.0;
    #            the 4 in-plane arms -> sqrt(3.0^2 + 0.8^2) = sqrt(9.64) (x4).
    #   sorted [0, r, r, r, r, 6] (r = sqrt 9.64 = 3.1048), percentile 95 at
    #   index 0.95 * 5 = 4.75: r + 0.75 (6 - r) = 4.5 + 0.25 r = 5.2762
    #   d(B->A) = [0] (B's voxel is an arm of A).
    # Full connectivity (old) added the centre (3.0 from B): 7 values, index
    # 5.7: r + 0.7 (6 - r) = 5.1315.
    a = np.zeros((5, 5, 5), bool)
    a[1:4, 2, 2] = a[2, 1:4, 2] = a[2, 2, 1:4] = True
    b = np.zeros((5, 5, 5), bool)
    b[1, 2, 2] = True
    spacing = (3.0, 0.8, 0.8)
    expected = 4.5 + 0.25 * math.sqrt(9.64)
    assert hd95(a, b, spacing) == pytest.approx(expected, rel=1e-12)
    assert hd95(b, a, spacing) == pytest.approx(expected, rel=1e-12)
    assert brute_hd95(a, b, spacing) == pytest.approx(expected, rel=1e-12)
    assert hd95(a, b, spacing) != pytest.approx(4.2 + 0.3 * math.sqrt(9.64))  # old value


def test_hd95_squares_offset_by_3_px():
    # A: rows 2..7, cols 2..7; B = A shifted by +3 columns. Each surface is a
    # ring of 6*6 - 4*4 = 20 pixels. Translating a point of ring A by (0, 3)
    # lands on ring B, so every directed distance is <= 3. The 6 pixels of A's
    # left edge (col 2) are >= 3 from any pixel of B (cols >= 5), so exactly 3.
    # Sorted A->B distances end with six 3s; percentile 95 of 20 values
    # interpolates between sorted[18] and sorted[19] (0.95 * 19 = 18.05), both 3.
    # B->A is the mirror image (B's right edge). HD95 = 3.0 exactly.
    a = square((12, 14), (2, 8), (2, 8))
    b = square((12, 14), (2, 8), (5, 11))
    assert hd95(a, b) == 3.0
    assert score_class(a, b).hd95 == 3.0
    assert brute_hd95(a, b, (1, 1)) == 3.0


def test_hd95_anisotropic_spacing_scales_distance():
    # Same squares, column spacing 2.0 mm: the same argument gives 3 * 2.0 = 6.0 mm.
    a = square((12, 14), (2, 8), (2, 8))
    b = square((12, 14), (2, 8), (5, 11))
    assert score_class(a, b, spacing=(1.0, 2.0)).hd95 == pytest.approx(6.0)
    # spacing along the other axis does not change an offset along columns
    assert score_class(a, b, spacing=(0.5, 1.0)).hd95 == pytest.approx(3.0)


def test_hd95_3d_cubes_shifted_along_z():
    # 4^3 cubes, the second shifted by 2 slices; spacing (2.5, 1, 1) mm.
    # Surface = 64 - 8 = 56 voxels. Translation gives distances <= 2 * 2.5 = 5;
    # the 16 voxels of A's bottom face are >= 2 slices from B, i.e. >= 5 mm,
    # so the top 16 of 56 sorted distances are 5 and the 95th percentile
    # (0.95 * 55 = 52.25) is 5.0. Symmetric for B->A.
    a = np.zeros((10, 8, 8), bool)
    b = np.zeros((10, 8, 8), bool)
    a[2:6, 2:6, 2:6] = True
    b[4:8, 2:6, 2:6] = True
    assert score_class(a, b, spacing=(2.5, 1.0, 1.0)).hd95 == pytest.approx(5.0)
    assert score_class(a, b).hd95 == pytest.approx(2.0)


def test_hd95_ignores_a_single_outlier_voxel():
    # 20x20 square vs. the same square plus one stray voxel 30 px away:
    # Hausdorff distance ~30, HD95 0 (1 of 77 surface points is beyond the 95th percentile).
    t = square((64, 64), (2, 22), (2, 22))
    p = t.copy()
    p[52, 52] = True
    assert score_class(t, p).hd95 == 0.0


@pytest.mark.parametrize("ndim", [2, 3])
def test_hd95_matches_brute_force_on_random_masks(ndim):
    rng = np.random.default_rng(1234 + ndim)
    shape = (9, 11) if ndim == 2 else (5, 7, 6)
    checked = 0
    for _ in range(25):
        a = rng.random(shape) < rng.uniform(0.1, 0.6)
        b = rng.random(shape) < rng.uniform(0.1, 0.6)
        if not a.any() or not b.any():
            continue
        spacing = tuple(rng.uniform(0.3, 3.0, ndim))
        expected = brute_hd95(a, b, spacing)
        assert score_class(a, b, spacing=spacing).hd95 == pytest.approx(expected, rel=1e-9)
        np.testing.assert_array_equal(surface(a), brute_surface(a))
        # NSD and ASSD from the same brute-force distances; tolerance 1.3 first spacings (no extra draw, and
        # not a grid distance: at a tie the two float computations may fall on either side of it)
        tol = 1.3 * spacing[0]
        s = score_class(a, b, spacing=spacing, nsd_tolerance_mm=tol)
        assert s.nsd == pytest.approx(brute_nsd(a, b, spacing, tol), rel=1e-12)
        assert s.assd == pytest.approx(brute_assd(a, b, spacing), rel=1e-9)
        checked += 1
    assert checked >= 20


def random_blob(rng, shape, reach_border: bool) -> np.ndarray:
    """Union of 1-3 random ellipsoids (in voxel units). With ``reach_border``
    the centres may lie anywhere up to just outside the array, so most blobs
    are cut by its border; otherwise the centres stay in the central half and
    the blob is cleared within 2 voxels of the border."""
    grid = np.indices(shape).astype(float)
    blob = np.zeros(shape, bool)
    for _ in range(rng.integers(1, 4)):
        if reach_border:
            centre = [rng.uniform(-0.5, n - 0.5) for n in shape]
        else:
            centre = [rng.uniform(n / 4, 3 * n / 4) for n in shape]
        radii = [rng.uniform(1.0, max(1.5, n / 3)) for n in shape]
        blob |= sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) <= 1.0
    if not reach_border:
        inner = blob[tuple(slice(2, n - 2) for n in shape)].copy()
        blob[...] = False
        blob[tuple(slice(2, n - 2) for n in shape)] = inner
    return blob


def blob_cases():
    """20 seeded (truth, prediction, spacing) triples: 5 each of 2D / 3D,
    isotropic / anisotropic (0.7 x 1.3 mm in 2D, 3.0 x 0.8 x 0.8 mm in 3D).
    Prediction: an independent blob, or the truth shifted by 0-2 voxels per
    axis, sometimes plus a spurious blob (the realistic, overlapping case)."""
    rng = np.random.default_rng(20240695)
    groups = [
        ((24, 28), (1.0, 1.0)),
        ((24, 28), (0.7, 1.3)),
        ((10, 16, 16), (1.0, 1.0, 1.0)),
        ((10, 16, 16), (3.0, 0.8, 0.8)),
    ]
    cases = []
    for shape, spacing in groups:
        for i in range(5):
            reach = i in (1, 2, 4)  # cases 0 and 3 stay clear of the border
            while True:
                a = random_blob(rng, shape, reach_border=reach)
                if i % 2:
                    b = random_blob(rng, shape, reach_border=reach)
                else:
                    shift = tuple(int(k) for k in rng.integers(-2, 3, len(shape)))
                    b = np.roll(a, shift, axis=tuple(range(len(shape))))
                    if rng.random() < 0.5:
                        b |= random_blob(rng, shape, reach_border=False)
                if a.any() and b.any():
                    break
            cases.append((a, b, spacing))
    return cases


def touches_border(mask: np.ndarray) -> bool:
    return any(mask.take(0, axis=ax).any() or mask.take(-1, axis=ax).any() for ax in range(mask.ndim))


def test_hd95_matches_brute_force_on_random_blobs():
    # Independent reference: surfaces from the 2*ndim face neighbours checked
    # one by one (brute_surface), distances from all pairwise Euclidean
    # distances in mm (brute_hd95), np.percentile; no erosion, no distance
    # transform, no cropping.
    cases = blob_cases()
    assert len(cases) == 20
    border = [touches_border(a) or touches_border(b) for a, b, _ in cases]
    assert sum(border) == 12  # and 8 pairs clear of the border
    for a, b, spacing in cases:
        np.testing.assert_array_equal(surface(a), brute_surface(a))
        np.testing.assert_array_equal(surface(b), brute_surface(b))
        expected = brute_hd95(a, b, spacing)
        assert hd95(a, b, spacing) == pytest.approx(expected, rel=1e-9)
        assert hd95(b, a, spacing) == pytest.approx(expected, rel=1e-9)
        assert score_class(a, b, spacing=spacing).hd95 == pytest.approx(expected, rel=1e-9)


def test_hd95_matches_monai_if_installed():
    # MONAI and torch are not segexp dependencies: run only where both import.
    torch = pytest.importorskip("torch")
    monai_metrics = pytest.importorskip("monai.metrics")
    for a, b, spacing in blob_cases():
        y_pred = torch.as_tensor(b[None, None].astype(np.float32))
        y = torch.as_tensor(a[None, None].astype(np.float32))
        reference = monai_metrics.compute_hausdorff_distance(
            y_pred, y, include_background=True, percentile=95, spacing=[float(s) for s in spacing]
        )
        # MONAI's distances are float32
        assert hd95(a, b, spacing) == pytest.approx(float(reference[0, 0]), rel=1e-5, abs=1e-5)


def test_hd95_crop_does_not_change_result_near_border():
    # structures touching the array border: the border voxels stay surface after cropping
    a = square((10, 10), (0, 4), (0, 10))
    b = square((10, 10), (2, 10), (3, 7))
    assert score_class(a, b).hd95 == pytest.approx(brute_hd95(a, b, (1, 1)))


# ---------------------------------------------------------------- NSD and ASSD
def brute_distances(a: np.ndarray, b: np.ndarray, spacing) -> tuple[np.ndarray, np.ndarray]:
    """Directed surface distances (A->B, B->A) from all pairwise distances between brute-force surfaces."""
    pa = np.argwhere(brute_surface(a)) * np.asarray(spacing, float)
    pb = np.argwhere(brute_surface(b)) * np.asarray(spacing, float)
    d = np.sqrt(((pa[:, None, :] - pb[None, :, :]) ** 2).sum(-1))
    return d.min(axis=1), d.min(axis=0)


def brute_nsd(a, b, spacing, tolerance) -> float:
    d_ab, d_ba = brute_distances(a, b, spacing)
    return float(((d_ab <= tolerance).sum() + (d_ba <= tolerance).sum()) / (d_ab.size + d_ba.size))


def brute_assd(a, b, spacing) -> float:
    return float(np.concatenate(brute_distances(a, b, spacing)).mean())


def test_nsd_assd_squares_offset_by_1_px_by_hand():
    # A: rows 2..7, cols 2..7; B = A shifted by +1 column. Each surface is a ring of 20 px.
    # d(A->B): top and bottom rows: cols 3..7 lie on B's ring (0, x10), col 2 is 1 from (r, 3) (x2);
    # left column rows 3..6: 1 from B's left column (x4); right column rows 3..6 (inside B): 1 from
    # B's right column (x4). So ten 0s and ten 1s, and B->A is the mirror image.
    #   NSD(tau=0) = 20 / 40 = 0.5, NSD(tau=1) = 40 / 40 = 1, NSD(tau=0.99) = 0.5, ASSD = 20 / 40 = 0.5.
    a = square((12, 14), (2, 8), (2, 8))
    b = square((12, 14), (2, 8), (3, 9))
    assert nsd(a, b, tolerance_mm=0.0) == 0.5
    assert nsd(a, b, tolerance_mm=1.0) == 1.0  # d <= tau counts (MONAI's <=)
    assert nsd(a, b, tolerance_mm=0.99) == 0.5
    assert nsd(b, a, tolerance_mm=0.0) == 0.5  # symmetric
    assert assd(a, b) == 0.5 and assd(b, a) == 0.5
    s = score_class(a, b, nsd_tolerance_mm=0.0)
    assert (s.nsd, s.assd, s.hd95) == (0.5, 0.5, 1.0)
    assert score_class(a, b).nsd == 1.0  # default tolerance 1
    assert brute_nsd(a, b, (1, 1), 0.0) == 0.5 and brute_assd(a, b, (1, 1)) == 0.5


def test_nsd_assd_anisotropic_spacing_by_hand():
    # The same squares, columns 2.0 mm apart (rows 1.0 mm): the offset is now 2 mm.
    # d(A->B): ten 0s; col 2 of the top/bottom rows 2 mm (x2); left column 2 mm (x4); right column
    # rows 3..6 (inside B): min(2 mm to B's right column, rows to B's top/bottom row) = 1, 2, 2, 1.
    # Sum 4 + 8 + 6 = 18 over 20 surface voxels; B->A is the mirror image.
    #   ASSD = 36 / 40 = 0.9 mm; NSD(1 mm) = (10 + 2) * 2 / 40 = 0.6; NSD(2 mm) = 1; NSD(0) = 0.5.
    a = square((12, 14), (2, 8), (2, 8))
    b = square((12, 14), (2, 8), (3, 9))
    sp = (1.0, 2.0)
    assert assd(a, b, sp) == pytest.approx(0.9)
    assert nsd(a, b, sp, 1.0) == pytest.approx(0.6)
    assert nsd(a, b, sp, 2.0) == 1.0
    assert nsd(a, b, sp, 0.0) == 0.5
    assert brute_assd(a, b, sp) == pytest.approx(0.9) and brute_nsd(a, b, sp, 1.0) == pytest.approx(0.6)
    # rows 2 mm apart instead: the column offset stays 1 mm, every nonzero distance is 1 mm
    assert assd(a, b, (2.0, 1.0)) == pytest.approx(0.5)
    assert nsd(a, b, (2.0, 1.0), 1.0) == 1.0


def test_assd_pools_both_directions_not_the_mean_of_means():
    # A: 5x5 square (rows/cols 1..5), surface ring of 16; B: its centre pixel (3, 3), surface 1.
    # d(A->B): 4 corners sqrt(8), 4 edge midpoints 2, 8 others sqrt(5); d(B->A) = [2].
    # MONAI's symmetric ASSD concatenates both: (4 sqrt 8 + 8 + 8 sqrt 5 + 2) / 17 = 2.3060;
    # the mean of the two directed means would be 2.1626.
    a = square((7, 7), (1, 6), (1, 6))
    b = np.zeros((7, 7), bool)
    b[3, 3] = True
    total_ab = 4 * math.sqrt(8) + 4 * 2 + 8 * math.sqrt(5)
    assert assd(a, b) == pytest.approx((total_ab + 2) / 17, rel=1e-12)
    assert assd(a, b) != pytest.approx((total_ab / 16 + 2) / 2)
    # NSD: tau 2 -> 4 midpoints + B's pixel = 5 / 17; tau 2.5 -> 12 + 1 = 13 / 17; tau 3 -> 1
    assert nsd(a, b, tolerance_mm=2.0) == pytest.approx(5 / 17)
    assert nsd(a, b, tolerance_mm=2.5) == pytest.approx(13 / 17)
    assert nsd(a, b, tolerance_mm=3.0) == 1.0


def test_nsd_assd_3d_cubes_shifted_along_z_by_hand():
    # 4^3 cubes at z 2..5 and 4..7, spacing (2.5, 1, 1) mm; 56 surface voxels each.
    # d(A->B): A's z=2 face (16) is 2 slices from B's z=4 face: 5 mm; A's z=3 ring (12): 2.5 mm to B's
    # z=4 face; A's z=4 ring (12) lies on B's z=4 face: 0; A's z=5 face: its 12 ring voxels are on B's
    # z=5 ring (0), its 4 inner voxels are 1 mm from that ring (2.5 mm from B's z=4 face): 1.
    # Sum 80 + 30 + 4 = 114 over 56; B->A is the mirror image.
    #   ASSD = 114 / 56 mm; NSD(1 mm) = 28 / 56 = 0.5; NSD(2.5 mm) = 40 / 56; NSD(5 mm) = 1.
    a = np.zeros((10, 8, 8), bool)
    b = np.zeros((10, 8, 8), bool)
    a[2:6, 2:6, 2:6] = True
    b[4:8, 2:6, 2:6] = True
    sp = (2.5, 1.0, 1.0)
    assert assd(a, b, sp) == pytest.approx(114 / 56, rel=1e-12)
    assert nsd(a, b, sp, 1.0) == 0.5
    assert nsd(a, b, sp, 2.5) == pytest.approx(40 / 56)
    assert nsd(a, b, sp, 5.0) == 1.0
    s = score_classes(a.astype(np.uint8), b.astype(np.uint8), 2, spacing=sp, nsd_tolerance_mm={1: 2.5})[1]
    assert s.nsd == pytest.approx(40 / 56) and s.assd == pytest.approx(114 / 56) and s.hd95 == pytest.approx(5.0)


def test_nsd_assd_empty_mask_conventions():
    empty = np.zeros((4, 6), bool)
    p = square((4, 6), (0, 2), (0, 2))
    # absent from both: NaN (not applicable, left out of means; MONAI: NaN too)
    assert math.isnan(nsd(empty, empty)) and math.isnan(assd(empty, empty))
    # present in exactly one: NSD 0 (as MONAI), ASSD the field-of-view diagonal as HD95 (MONAI: inf)
    for t_mask, p_mask in ((empty, p), (p, empty)):
        assert nsd(t_mask, p_mask, tolerance_mm=100.0) == 0.0
        assert assd(t_mask, p_mask) == pytest.approx(math.hypot(4, 6))
        assert assd(t_mask, p_mask, (2.0, 0.5)) == pytest.approx(math.hypot(8, 3))
        s = score_class(t_mask, p_mask)
        assert s.nsd == 0.0 and s.assd == s.hd95 == pytest.approx(math.hypot(4, 6))
    m = square((8, 8), (2, 5), (2, 6))
    assert (nsd(m, m, tolerance_mm=0.0), assd(m, m)) == (1.0, 0.0)  # perfect


def test_nsd_tolerance_checked():
    m = square((6, 6), (1, 4), (1, 4))
    for bad in (-1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="tolerance"):
            nsd(m, m, tolerance_mm=bad)
        with pytest.raises(ValueError, match="tolerance"):
            score_class(m, m, nsd_tolerance_mm=bad)
    with pytest.raises(TypeError, match="tolerance"):
        nsd(m, m, tolerance_mm="1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"classes \[2\]"):
        score_classes(m.astype(np.uint8), m.astype(np.uint8), 3, nsd_tolerance_mm={1: 1.0})


def test_class_tolerances():
    names = ["background", "LV", "Coronary", "LA"]
    assert class_tolerances(2.0, names) == {1: 2.0, 2: 2.0, 3: 2.0}
    assert class_tolerances({"default": 1.5, "Coronary": 0.5}, names) == {1: 1.5, 2: 0.5, 3: 1.5}
    assert class_tolerances({"LV": 1, "Coronary": 2, "LA": 3}, names) == {1: 1.0, 2: 2.0, 3: 3.0}
    with pytest.raises(ValueError, match="background"):
        class_tolerances({"background": 1.0, "default": 1.0}, names)  # not a foreground class
    with pytest.raises(ValueError, match="'LA'.*default"):
        class_tolerances({"LV": 1.0, "Coronary": 1.0}, names)
    with pytest.raises(ValueError, match="tolerance"):
        class_tolerances({"default": -1.0}, names)


def test_per_class_tolerance_in_score_classes():
    truth = np.zeros((12, 24), np.uint8)
    truth[2:8, 2:8] = 1
    truth[2:8, 14:20] = 2
    pred = np.roll(truth, 1, axis=1)  # both structures one column off: NSD 0.5 at tau 0, 1 at tau 1
    scores = score_classes(
        truth, pred, 3, nsd_tolerance_mm=class_tolerances({"default": 0.0, "b": 1.0}, ["bg", "a", "b"])
    )
    assert (scores[1].nsd, scores[2].nsd) == (0.5, 1.0)
    assert scores[1].assd == scores[2].assd == 0.5


def test_nsd_assd_match_brute_force_on_random_blobs():
    for a, b, spacing in blob_cases():
        assert assd(a, b, spacing) == pytest.approx(brute_assd(a, b, spacing), rel=1e-9)
        assert assd(b, a, spacing) == pytest.approx(brute_assd(a, b, spacing), rel=1e-9)
        for tol in (0.0, 1.0, 2.5):
            assert nsd(a, b, spacing, tol) == pytest.approx(brute_nsd(a, b, spacing, tol), rel=1e-12)


def test_nsd_assd_match_monai_if_installed():
    # MONAI and torch are not segexp dependencies: run only where both import (as the HD95 check).
    torch = pytest.importorskip("torch")
    monai_metrics = pytest.importorskip("monai.metrics")
    for a, b, spacing in blob_cases():
        y_pred = torch.as_tensor(b[None, None].astype(np.float32))
        y = torch.as_tensor(a[None, None].astype(np.float32))
        sp = [float(s) for s in spacing]
        reference = monai_metrics.compute_average_surface_distance(
            y_pred, y, include_background=True, symmetric=True, spacing=sp
        )
        # MONAI's distances are float32
        assert assd(a, b, spacing) == pytest.approx(float(reference[0, 0]), rel=1e-5, abs=1e-5)
        # 0: shared surface voxels; 1.0 is a distance only on the unit grid, exact in float32 too; 2.5 is no distance
        # of these spacings, so float32 (MONAI) and float64 (segexp) agree on every comparison
        for tol in (0.0, 1.0, 2.5):
            reference = monai_metrics.compute_surface_dice(
                y_pred, y, class_thresholds=[tol], include_background=True, spacing=sp
            )
            assert nsd(a, b, spacing, tol) == pytest.approx(float(reference[0, 0]), rel=1e-6, abs=1e-6)


# ---------------------------------------------------------------- score_classes
def test_score_classes_per_class_background_excluded():
    truth = np.zeros((8, 8), np.uint8)
    pred = np.zeros((8, 8), np.uint8)
    truth[1:4, 1:4] = 1
    pred[1:4, 1:4] = 1  # class 1 perfect
    truth[5:7, 5:7] = 2  # class 2 missed
    # class 3: absent in both
    scores = score_classes(truth, pred, num_classes=4)
    assert sorted(scores) == [1, 2, 3]  # no background key
    assert scores[1].dice == 1.0 and scores[1].hd95 == 0.0
    assert scores[2].dice == 0.0 and scores[2].recall == 0.0 and math.isnan(scores[2].precision)
    assert scores[2].hd95 == pytest.approx(math.hypot(8, 8))
    assert all(math.isnan(getattr(scores[3], m)) for m in METRICS)
    for k in (1, 2, 3):  # same as scoring each binary structure on its own
        single = score_class(truth == k, pred == k)
        assert to_json_safe(single) == to_json_safe(scores[k])


def test_score_classes_3d_volume_with_spacing():
    truth = np.zeros((10, 8, 8), np.uint8)
    pred = np.zeros((10, 8, 8), np.uint8)
    truth[2:6, 2:6, 2:6] = 1
    pred[4:8, 2:6, 2:6] = 1
    s = score_classes(truth, pred, 2, spacing=(2.5, 1.0, 1.0))[1]
    assert s.hd95 == pytest.approx(5.0)
    assert (s.tp, s.fp, s.fn) == (32, 32, 32)
    assert s.dice == pytest.approx(0.5)


def test_score_classes_validates_inputs():
    with pytest.raises(ValueError, match=r"truth \(4, 4\).*prediction \(4, 5\)"):
        score_classes(np.zeros((4, 4), np.uint8), np.zeros((4, 5), np.uint8), 3)
    bad = np.zeros((4, 4), np.uint8)
    bad[0, 0] = 3
    with pytest.raises(ValueError, match=r"prediction has class values \[3\]"):
        score_classes(np.zeros((4, 4), np.uint8), bad, 3)
    with pytest.raises(ValueError, match=r"truth has class values \[3\]"):
        score_classes(bad, np.zeros((4, 4), np.uint8), 3)
    with pytest.raises(ValueError, match="num_classes"):
        score_classes(bad, bad, 1)


# ---------------------------------------------------------------- aggregate
def test_aggregate_ignores_nan_and_counts_n():
    names = ["background", "LV", "Coronary", "LA"]
    cases = [
        {1: cs(1.0, 1.0, 1.0, 1.0, 0.0), 2: cs(0.5, 1 / 3, 0.5, 0.5, 4.0), 3: cs()},
        {1: cs(0.5, 1 / 3, 1.0, 1 / 3, 2.0), 2: cs(), 3: cs()},
        {1: cs(), 2: cs(0.0, 0.0, math.nan, 0.0, 10.0), 3: cs()},
    ]
    out = aggregate(cases, names)
    json.dumps(out, allow_nan=False)  # plain JSON, NaN -> None
    assert out["n_cases"] == 3
    assert set(out["per_class"]) == {"LV", "Coronary", "LA"}  # background never reported
    lv = out["per_class"]["LV"]
    assert lv["dice"] == {"mean": 0.75, "std": 0.25, "median": 0.75, "n": 2}
    assert lv["hd95"] == {"mean": 1.0, "std": 1.0, "median": 1.0, "n": 2}
    cor = out["per_class"]["Coronary"]
    assert cor["dice"]["n"] == 2 and cor["dice"]["mean"] == pytest.approx(0.25)
    assert cor["precision"] == {"mean": 0.5, "std": 0.0, "median": 0.5, "n": 1}
    assert cor["recall"]["n"] == 2
    la = out["per_class"]["LA"]
    assert la["dice"] == {"mean": None, "std": None, "median": None, "n": 0}
    # foreground mean: mean of LV and Coronary class means; LA (NaN everywhere) ignored
    fg = out["foreground_mean"]
    assert fg["dice"] == pytest.approx((0.75 + 0.25) / 2)
    assert fg["iou"] == pytest.approx(((1 + 1 / 3) / 2 + (1 / 3 + 0) / 2) / 2)
    assert fg["hd95"] == pytest.approx((1.0 + 7.0) / 2)
    assert set(fg) == set(METRICS)


def test_aggregate_all_nan_and_errors():
    out = aggregate([{1: cs()}], ["background", "LV"])
    assert out["foreground_mean"]["dice"] is None
    with pytest.raises(ValueError, match="same classes"):
        aggregate([{1: cs()}, {1: cs(), 2: cs()}], ["bg", "a", "b"])
    with pytest.raises(ValueError, match="background"):
        aggregate([{0: cs()}], ["bg", "a"])
    with pytest.raises(ValueError, match="at least one case"):
        aggregate([], ["bg", "a"])


def test_aggregate_of_score_classes_end_to_end():
    truth = np.zeros((2, 16, 16), np.uint8)
    truth[:, 2:8, 2:8] = 1
    pred = truth.copy()
    pred[1] = 0  # second slice: class 1 missed
    cases = [score_classes(truth[i], pred[i], 3) for i in range(2)]
    out = aggregate(cases, ["background", "A", "B"])
    assert out["per_class"]["A"]["dice"] == {"mean": 0.5, "std": 0.5, "median": 0.5, "n": 2}
    assert out["per_class"]["A"]["hd95"]["mean"] == pytest.approx(math.hypot(16, 16) / 2)
    assert out["per_class"]["B"]["dice"]["n"] == 0
    assert out["foreground_mean"]["dice"] == 0.5


def test_to_json_safe():
    obj = {
        np.int64(1): [np.float32(0.5), math.nan, math.inf, (np.bool_(True), 2)],
        "a": np.array([1.0, np.nan]),
        "s": cs(dice=0.25),
    }
    out = to_json_safe(obj)
    assert out[1] == [0.5, None, None, [True, 2]]
    assert out["a"] == [1.0, None]
    assert out["s"]["dice"] == 0.25 and out["s"]["iou"] is None and out["s"]["tp"] == 0
    json.dumps(out, allow_nan=False)
    assert ClassScore(1.0, 1.0, 1.0, 1.0, 0.0, 3, 0, 0, 3, 3).as_dict()["n_pred"] == 3


# ---------------------------------------------------------------- original score
def test_dice_including_background_hides_missed_structures():
    truth = np.zeros((64, 64), np.uint8)
    truth[10:14, 10:14] = 1  # 16 px
    truth[40:42, 40:42] = 2  # 4 px
    pred = np.zeros_like(truth)  # the network found nothing
    incl_bg = dice_including_background(truth, pred, 3)
    # one-hot over all classes: 2 * (4096 - 20) / (4096 + 4096)
    assert incl_bg == pytest.approx((4096 - 20) / 4096)
    assert incl_bg > 0.9
    scores = score_classes(truth, pred, 3)
    assert all(s.dice == 0.0 for s in scores.values())
    assert aggregate([scores], ["background", "a", "b"])["foreground_mean"]["dice"] == 0.0


def test_dice_including_background_matches_one_hot_formula():
    rng = np.random.default_rng(0)
    t = rng.integers(0, 4, (6, 7)).astype(np.uint8)
    p = rng.integers(0, 4, (6, 7)).astype(np.uint8)
    ot, op = np.eye(4)[t], np.eye(4)[p]
    expected = 2 * (ot * op).sum() / (ot.sum() + op.sum())
    assert dice_including_background(t, p, 4) == pytest.approx(expected)
    assert dice_including_background(t, t, 4) == 1.0
