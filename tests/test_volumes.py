"""NIfTI volume cases: pairing, header checks, canonical RAS+ orientation, slicing, windowing."""

from __future__ import annotations

import hashlib
import itertools
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import segexp.config.schema
from segexp.data.io.intensity import (
    WINDOW_PRESETS,
    percentile_window,
    preset_window,
    window_to_uint8,
)
from segexp.data.io.volumes import (
    CASE_DIR_PATTERN,
    SLICE_AXES,
    VolumeCase,
    VolumeError,
    find_volume_cases,
    load_case,
    num_slices,
    read_header,
    sha256_file,
    slice_pixel_spacing,
    stack_slices,
    volume_slice,
)

THORAX_CTA = Path(segexp.config.schema.REPO_DIR).parent / "shared" / "data" / "thorax_cta"
THORAX_LABELS = {"case_aorta": set(range(7)), "case_pulmonary": {0, 1, 2}}

SHAPE = (16, 12, 8)
# LPS-style file (DICOM-like): i -> patient left, j -> posterior, k -> superior.
LPS_AFFINE = np.array([[-0.7, 0, 0, 120.0], [0, -0.7, 0, 95.0], [0, 0, 1.5, -310.0], [0, 0, 0, 1]])
# Permuted and flipped: i -> posterior, j -> left, k -> inferior ("PLI").
PLI_AFFINE = np.array([[0, -0.7, 0, 40.0], [-0.7, 0, 0, 60.0], [0, 0, -1.5, 20.0], [0, 0, 0, 1]])


def _save(path: Path, data: np.ndarray, affine: np.ndarray = LPS_AFFINE) -> Path:
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def _image(shape: tuple[int, ...] = SHAPE, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(-1024, 1500, size=shape).astype(np.int16)


def _label(shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    lab = np.zeros(shape, np.uint8)
    lab[2:6, 3:7, 1:4] = 1
    lab[8:12, 4:9, 3:7] = 2
    return lab


def _pair(folder: Path, case: str, affine: np.ndarray = LPS_AFFINE, ext: str = ".nii.gz") -> VolumeCase:
    folder.mkdir(parents=True, exist_ok=True)
    image = _save(folder / f"{case}_image{ext}", _image(), affine)
    label = _save(folder / f"{case}_label{ext}", _label(), affine)
    return VolumeCase(case, image, label)


def _touch(folder: Path, *names: str) -> None:
    for name in names:
        (folder / name).write_bytes(b"")


# --------------------------------------------------------------------------- finding cases


def test_find_pairs_by_case_id_not_position(tmp_path: Path) -> None:
    # Mixed extensions and underscores in case ids: sort position alone would mis-pair.
    _touch(
        tmp_path,
        "p_10_label.nii",
        "p_10_image.nii.gz",
        "p_2_image.nii",
        "A9_label.nii.gz",
        "p_2_label.nii.gz",
        "A9_image.nii",
        "notes.txt",
    )
    cases = find_volume_cases(tmp_path)
    assert [c.case for c in cases] == ["A9", "p_10", "p_2"]
    for c in cases:
        assert c.image.name.startswith(f"{c.case}_image.nii")
        assert c.label is not None and c.label.name.startswith(f"{c.case}_label.nii")


def test_find_all_problems_at_once(tmp_path: Path) -> None:
    _touch(
        tmp_path,
        "ok_image.nii.gz",
        "ok_label.nii.gz",
        "lonely1_image.nii.gz",
        "lonely2_image.nii",
        "orphan_label.nii.gz",
        "dup_image.nii",
        "dup_image.nii.gz",
        "dup_label.nii.gz",
        "scan01.nii.gz",
        "p3_mask.nii",
    )
    with pytest.raises(VolumeError) as info:
        find_volume_cases(tmp_path)
    msg = str(info.value)
    assert "image(s) without label for case(s): lonely1, lonely2" in msg
    assert "label(s) without image for case(s): orphan" in msg
    assert "more than once" in msg and "dup image: dup_image.nii, dup_image.nii.gz" in msg
    assert "scan01.nii.gz" in msg and "p3_mask.nii" in msg and "(?P<case>" in msg
    assert "ok_image" not in msg and "ok_label" not in msg


def test_find_without_labels_and_errors(tmp_path: Path) -> None:
    _touch(tmp_path, "a_image.nii.gz", "b_image.nii", "b_label.nii")
    cases = find_volume_cases(tmp_path, require_labels=False)
    assert [(c.case, c.label is None) for c in cases] == [("a", True), ("b", False)]

    with pytest.raises(VolumeError, match="does not exist"):
        find_volume_cases(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    _touch(empty, "readme.txt", ".hidden_image.nii.gz")
    with pytest.raises(VolumeError, match="no volume files"):
        find_volume_cases(empty)
    with pytest.raises(VolumeError, match="named groups"):
        find_volume_cases(tmp_path, pattern=r"^(?P<case>.+)\.nii\.gz$")
    with pytest.raises(VolumeError, match="not a valid regular expression"):
        find_volume_cases(tmp_path, pattern=r"^(?P<case>.+")


def test_find_one_folder_per_case(tmp_path: Path) -> None:
    for case in ("case_b", "case_a"):
        (tmp_path / case).mkdir()
        _touch(tmp_path / case, "image.nii.gz", "label.nii.gz")
    cases = find_volume_cases(tmp_path, CASE_DIR_PATTERN)
    assert [(c.case, c.image.parent.name, c.label.parent.name) for c in cases] == [  # type: ignore[union-attr]
        ("case_a", "case_a", "case_a"),
        ("case_b", "case_b", "case_b"),
    ]
    _touch(tmp_path / "case_a", "image.nii")
    with pytest.raises(VolumeError, match="case_a image: case_a/image.nii, case_a/image.nii.gz"):
        find_volume_cases(tmp_path, CASE_DIR_PATTERN)


# --------------------------------------------------------------------------- headers


def test_read_header(tmp_path: Path) -> None:
    case = _pair(tmp_path, "p1")
    h = read_header(case)
    assert h.case == "p1" and h.shape == SHAPE and h.orientation == "LPS"
    np.testing.assert_allclose(h.spacing, (0.7, 0.7, 1.5), rtol=1e-6)
    np.testing.assert_allclose(h.affine, LPS_AFFINE)


def test_header_shape_and_affine_mismatch(tmp_path: Path) -> None:
    image = _save(tmp_path / "p7_image.nii.gz", _image())
    label = _save(tmp_path / "p7_label.nii.gz", _label((16, 12, 9)))
    with pytest.raises(VolumeError, match=r"case p7: label shape \(16, 12, 9\).*image shape \(16, 12, 8\)"):
        read_header(VolumeCase("p7", image, label))

    shifted = LPS_AFFINE.copy()
    shifted[0, 3] += 0.5
    label = _save(tmp_path / "p7_label.nii.gz", _label(), shifted)
    with pytest.raises(VolumeError, match="case p7: label affine differs") as info:
        read_header(VolumeCase("p7", image, label))
    assert "origin (120" in str(info.value) and "origin (120.5" in str(info.value)
    assert "LPS" in str(info.value)

    tiny = LPS_AFFINE.copy()
    tiny[0, 3] += 1e-4  # within 1e-3 mm: same geometry
    label = _save(tmp_path / "p7_label.nii.gz", _label(), tiny)
    assert read_header(VolumeCase("p7", image, label)).shape == SHAPE


def test_header_dimensions(tmp_path: Path) -> None:
    image = _save(tmp_path / "q_image.nii.gz", _image()[..., None])  # 4D, trailing 1
    label = _save(tmp_path / "q_label.nii.gz", _label())
    assert read_header(VolumeCase("q", image, label)).shape == SHAPE
    loaded = load_case(VolumeCase("q", image, label))
    assert loaded.image.shape == SHAPE and loaded.label is not None and loaded.label.shape == SHAPE

    image4 = _save(tmp_path / "r_image.nii.gz", np.zeros((*SHAPE, 2), np.int16))
    with pytest.raises(VolumeError, match=r"case r: image .* 3D volume.*\(16, 12, 8, 2\)"):
        read_header(VolumeCase("r", image4, None))
    image2 = _save(tmp_path / "s_image.nii.gz", np.zeros((4, 4), np.int16))
    with pytest.raises(VolumeError, match="case s"):
        read_header(VolumeCase("s", image2, None))


# --------------------------------------------------------------------------- label values


def test_label_values(tmp_path: Path) -> None:
    image = _save(tmp_path / "c1_image.nii.gz", _image())

    lab = _label().astype(np.float32)
    lab[0, 0, 0] = 1.5
    lab[1, 0, 0] = 2.25
    label = _save(tmp_path / "c1_label.nii.gz", lab)
    with pytest.raises(VolumeError, match=r"case c1: .*non-integer values \[1\.5, 2\.25\]"):
        load_case(VolumeCase("c1", image, label))

    label = _save(tmp_path / "c1_label.nii.gz", _label().astype(np.float32))  # integer-valued floats are fine
    loaded = load_case(VolumeCase("c1", image, label), allowed_labels=[0, 1, 2])
    assert loaded.label is not None and loaded.label.dtype == np.uint8
    assert set(np.unique(loaded.label)) == {0, 1, 2}

    with pytest.raises(VolumeError, match=r"case c1: .*unexpected values \[2\]; allowed: \[0, 1\]"):
        load_case(VolumeCase("c1", image, label), allowed_labels=(1, 0))

    big = _label().astype(np.int16)
    big[0, 0, 0] = 300
    label = _save(tmp_path / "c1_label.nii.gz", big)
    with pytest.raises(VolumeError, match=r"case c1: .*0\.\.255.*\[300\]"):
        load_case(VolumeCase("c1", image, label))


def test_image_scaling_to_float32_hu(tmp_path: Path) -> None:
    raw = np.arange(np.prod(SHAPE), dtype=np.int16).reshape(SHAPE)
    img = nib.Nifti1Image(raw, LPS_AFFINE)
    img.header.set_slope_inter(2.0, -1024.0)
    path = tmp_path / "h_image.nii.gz"
    nib.save(img, str(path))
    loaded = load_case(VolumeCase("h", path, None))
    assert loaded.image.dtype == np.float32 and loaded.label is None
    expected = (raw.astype(np.float64) * 2 - 1024)[::-1, ::-1, :]  # LPS -> RAS flips x and y
    np.testing.assert_array_equal(loaded.image, expected.astype(np.float32))


# --------------------------------------------------------------------------- canonical orientation


def _world(affine: np.ndarray, ijk: tuple[int, ...]) -> np.ndarray:
    return (affine @ np.array([*ijk, 1.0]))[:3]


@pytest.mark.parametrize("affine", [LPS_AFFINE, PLI_AFFINE], ids=["LPS", "PLI"])
def test_canonical_reorientation_keeps_world_positions(tmp_path: Path, affine: np.ndarray) -> None:
    image = np.full(SHAPE, -1000, np.int16)
    label = np.zeros(SHAPE, np.uint8)
    marker = (13, 2, 6)  # asymmetric in every axis
    image[marker] = 1000
    label[marker] = 3
    case = VolumeCase(
        "m",
        _save(tmp_path / "m_image.nii.gz", image, affine),
        _save(tmp_path / "m_label.nii.gz", label, affine),
    )
    loaded = load_case(case, allowed_labels=[0, 3])
    assert nib.aff2axcodes(loaded.affine) == ("R", "A", "S")
    assert loaded.original_orientation == "".join(nib.aff2axcodes(affine))
    assert loaded.original_shape == SHAPE
    np.testing.assert_allclose(loaded.original_affine, affine)

    ijk = np.unravel_index(np.argmax(loaded.image), loaded.image.shape)
    np.testing.assert_allclose(_world(loaded.affine, ijk), _world(affine, marker), atol=1e-6)
    assert loaded.label is not None and loaded.label[ijk] == 3 and loaded.label.sum() == 3
    assert loaded.image.dtype == np.float32 and loaded.label.dtype == np.uint8

    # Same result as nibabel's own as_closest_canonical.
    ref = nib.as_closest_canonical(nib.load(str(case.image)))
    np.testing.assert_allclose(loaded.affine, ref.affine)
    np.testing.assert_array_equal(loaded.image, np.asanyarray(ref.dataobj))
    np.testing.assert_allclose(loaded.spacing, nib.affines.voxel_sizes(ref.affine), rtol=1e-6)


# --------------------------------------------------------------------------- slicing


def _corner(affine: np.ndarray, score: np.ndarray) -> tuple[int, int, int]:
    """The corner voxel of a SHAPE volume whose world position maximises ``score . xyz`` (RAS mm)."""
    corners = itertools.product(*[(0, n - 1) for n in SHAPE])
    return max(corners, key=lambda c: float(score @ _world(affine, c)))


# (axis, world direction of the marker in RAS+, expected (row, col) as fractions 0 = top/left, 1 = bottom/right)
_R, _A, _S = np.eye(3)
ORIENTATION_CASES = [
    ("axial", -_R * 1.0 + _A * 1.01, (0, 1)),  # patient left-anterior -> image top right
    ("axial", _R * 1.0 - _A * 1.01, (1, 0)),  # patient right-posterior -> bottom left
    ("coronal", -_R * 1.0 + _S * 1.01, (0, 1)),  # left-superior -> top right
    ("coronal", _R * 1.0 - _S * 1.01, (1, 0)),  # right-inferior -> bottom left
    ("sagittal", _A * 1.0 + _S * 1.01, (0, 0)),  # anterior-superior -> top left
    ("sagittal", -_A * 1.0 - _S * 1.01, (1, 1)),  # posterior-inferior -> bottom right
]


@pytest.mark.parametrize("affine", [LPS_AFFINE, PLI_AFFINE], ids=["LPS", "PLI"])
@pytest.mark.parametrize(("axis", "direction", "where"), ORIENTATION_CASES)
def test_volume_slice_display_orientation(
    tmp_path: Path, affine: np.ndarray, axis: str, direction: np.ndarray, where: tuple[int, int]
) -> None:
    image = np.zeros(SHAPE, np.int16)
    image[_corner(affine, direction)] = 1
    loaded = load_case(VolumeCase("o", _save(tmp_path / "o_image.nii.gz", image, affine), None))
    ijk = np.unravel_index(np.argmax(loaded.image), loaded.image.shape)
    sl = volume_slice(loaded.image, axis, int(ijk[SLICE_AXES[axis]]))
    assert sl.flags.c_contiguous and sl.dtype == np.float32
    rows, cols = sl.shape
    assert np.argwhere(sl == 1).tolist() == [[where[0] * (rows - 1), where[1] * (cols - 1)]]


def test_slice_shapes_and_round_trip() -> None:
    v = np.random.default_rng(1).integers(0, 255, size=(5, 4, 3)).astype(np.uint8)
    shapes = {"axial": (4, 5), "coronal": (3, 5), "sagittal": (3, 4)}
    for axis, ax in SLICE_AXES.items():
        n = num_slices(v, axis)
        assert n == v.shape[ax]
        slices = [volume_slice(v, axis, i) for i in range(n)]
        assert all(s.shape == shapes[axis] and s.flags.c_contiguous for s in slices)
        back = stack_slices(slices, axis)
        assert back.dtype == v.dtype and back.flags.c_contiguous
        np.testing.assert_array_equal(back, v)
    np.testing.assert_array_equal(volume_slice(v, "axial", 2), v[::-1, ::-1, 2].T)
    assert slice_pixel_spacing((0.7, 0.8, 1.5), "axial") == (0.8, 0.7)
    assert slice_pixel_spacing((0.7, 0.8, 1.5), "coronal") == (1.5, 0.7)
    assert slice_pixel_spacing((0.7, 0.8, 1.5), "sagittal") == (1.5, 0.8)
    with pytest.raises(ValueError, match="slice axis"):
        volume_slice(v, "transverse", 0)
    with pytest.raises(IndexError):
        volume_slice(v, "axial", 3)
    with pytest.raises(ValueError, match="one shape"):
        stack_slices([np.zeros((2, 2)), np.zeros((2, 3))], "axial")


# --------------------------------------------------------------------------- intensity


def test_window_to_uint8_hand_values() -> None:
    hu = np.array([-1000, -100, 300, 700, 701, 3000], dtype=np.int16)
    assert window_to_uint8(hu, *WINDOW_PRESETS["cardiac_cta"]).tolist() == [0, 0, 128, 255, 255, 255]
    assert window_to_uint8(np.array([0.0]), 300, 800).tolist() == [32]  # (0 + 100) / 800 * 255 = 31.875
    with pytest.raises(ValueError, match="window.width"):
        window_to_uint8(hu, 40, 0)
    assert WINDOW_PRESETS["cardiac_cta"] == (300.0, 800.0)
    level, width = WINDOW_PRESETS["mediastinal"]
    assert 30 <= level <= 60 and 350 <= width <= 600
    assert preset_window("mediastinal") == (level, width)
    with pytest.raises(ValueError, match="cardiac_cta"):
        preset_window("cardiac")


def test_percentile_window() -> None:
    vol = np.arange(101, dtype=np.float32).reshape(1, 1, 101)
    assert percentile_window(vol, 0, 100) == (50.0, 100.0)
    assert percentile_window(vol, 10, 90) == pytest.approx((50.0, 80.0))
    out = window_to_uint8(vol, *percentile_window(vol, 10, 90)).ravel()
    assert out[:11].tolist() == [0] * 11 and out[90:].tolist() == [255] * 11
    assert out[50] == 128
    assert percentile_window(np.full((3, 3, 3), -1000.0), 0.5, 99.5) == (-1000.0, 1.0)
    assert window_to_uint8(np.full(3, -1000.0), -1000.0, 1.0).tolist() == [128] * 3
    for low, high in [(50, 50), (-1, 50), (10, 101), (90, 10)]:
        with pytest.raises(ValueError, match="0 <= low < high <= 100"):
            percentile_window(vol, low, high)


def test_sha256_file(tmp_path: Path) -> None:
    data = np.random.default_rng(2).bytes(3 * (1 << 20) + 17)  # spans several chunks
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- real data


@pytest.mark.skipif(not THORAX_CTA.is_dir(), reason=f"real data not found at {THORAX_CTA}")
def test_real_thorax_cta_volumes() -> None:
    cases = find_volume_cases(THORAX_CTA, CASE_DIR_PATTERN)
    assert [c.case for c in cases] == ["case_aorta", "case_pulmonary"]
    expected_shapes = {"case_aorta": (120, 126, 164), "case_pulmonary": (122, 102, 112)}
    for case in cases:
        header = read_header(case)
        assert header.orientation == "LPS" and header.shape == expected_shapes[case.case]
        np.testing.assert_allclose(header.spacing, (1.5, 1.5, 1.5), rtol=1e-5)

        loaded = load_case(case, allowed_labels=THORAX_LABELS[case.case])
        assert loaded.original_orientation == "LPS"
        assert nib.aff2axcodes(loaded.affine) == ("R", "A", "S")
        # LPS -> RAS flips x and y only: same shape, same spacing.
        assert loaded.image.shape == header.shape == loaded.label.shape  # type: ignore[union-attr]
        np.testing.assert_allclose(loaded.spacing, (1.5, 1.5, 1.5), rtol=1e-5)
        assert loaded.image.dtype == np.float32 and loaded.label.dtype == np.uint8  # type: ignore[union-attr]
        assert -1100 <= loaded.image.min() <= -1000 and loaded.image.max() > 300
        present = set(np.unique(loaded.label).tolist())
        assert present <= THORAX_LABELS[case.case] and len(present) > 1
        # world position of the first voxel is preserved by the flips
        corner = np.array(header.shape) - 1
        np.testing.assert_allclose(
            _world(loaded.affine, (int(corner[0]), int(corner[1]), 0)), _world(header.affine, (0, 0, 0)), atol=1e-4
        )
        axial = volume_slice(loaded.image, "axial", num_slices(loaded.image, "axial") // 2)
        assert axial.shape == (header.shape[1], header.shape[0])
