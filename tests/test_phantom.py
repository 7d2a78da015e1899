"""Tests for the synthetic cardiac-CT phantom (segexp.data.phantom)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import nibabel as nib
import numpy as np
import pytest

from segexp.data.io.rgb_map import decode_rgb_mask
from segexp.data.phantom import (
    AO,
    CORONARY,
    LA,
    LV,
    MYOCARDIUM,
    PHANTOM_CLASS_NAMES,
    PHANTOM_CLASSES,
    PHANTOM_COLOURS,
    PHANTOM_MANIFEST,
    PHANTOM_VOLUMES_MANIFEST,
    PHANTOM_WINDOW,
    cache,
    make_phantom_volume,
    phantom_affine,
    phantom_spacing,
    slices,
    window_to_uint8,
    write_phantom_dataset,
    write_phantom_volumes,
)

SMALL = {"train": 2, "valid": 1, "test": 1}


@pytest.fixture(scope="module")
def volume() -> tuple[np.ndarray, np.ndarray]:
    return make_phantom_volume(0)


def _mtimes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in sorted(root.rglob("*"))}


def test_classes_constants() -> None:
    assert PHANTOM_CLASS_NAMES == ("background", "LV", "Myocardium", "LA", "AO", "Coronary")
    assert PHANTOM_COLOURS[0] == (0, 0, 0)
    assert PHANTOM_COLOURS[CORONARY] == (255, 0, 255)
    assert [name for name, _ in PHANTOM_CLASSES] == list(PHANTOM_CLASS_NAMES)
    assert (LV, MYOCARDIUM, LA, AO, CORONARY) == (1, 2, 3, 4, 5)


def test_shapes_and_dtypes(volume: tuple[np.ndarray, np.ndarray]) -> None:
    hu, labels = volume
    assert hu.shape == labels.shape == (128, 128, 32)
    assert hu.dtype == np.int16 and labels.dtype == np.uint8
    assert int(labels.max()) < len(PHANTOM_CLASSES)
    hu2, labels2 = make_phantom_volume(3, size=64, num_slices=10)
    assert hu2.shape == labels2.shape == (64, 64, 10)


def test_deterministic_per_seed(volume: tuple[np.ndarray, np.ndarray]) -> None:
    hu, labels = volume
    hu_again, labels_again = make_phantom_volume(0)
    np.testing.assert_array_equal(hu, hu_again)
    np.testing.assert_array_equal(labels, labels_again)
    hu_other, labels_other = make_phantom_volume(1)
    assert not np.array_equal(labels, labels_other)
    assert not np.array_equal(hu, hu_other)


def test_all_classes_present_in_sensible_order(volume: tuple[np.ndarray, np.ndarray]) -> None:
    _, labels = volume
    counts = np.bincount(labels.ravel(), minlength=len(PHANTOM_CLASSES))
    assert (counts > 0).all(), counts
    assert counts[0] > counts[1:].sum()  # background dominates
    for big in (LV, LA, MYOCARDIUM, AO):
        assert counts[big] > 3 * counts[CORONARY], counts


@pytest.mark.parametrize("seed", [1, 2, 5, 11])
def test_every_seed_has_every_class(seed: int) -> None:
    _, labels = make_phantom_volume(seed, num_slices=24)
    assert set(np.unique(labels).tolist()) == set(range(len(PHANTOM_CLASSES)))


def test_structures_appear_along_z(volume: tuple[np.ndarray, np.ndarray]) -> None:
    _, labels = volume
    per_slice = [set(np.unique(labels[:, :, z]).tolist()) for z in range(labels.shape[2])]
    empty = [z for z, classes in enumerate(per_slice) if classes == {0}]
    assert empty and 0 in empty and labels.shape[2] - 1 in empty  # both ends have no foreground
    assert len(empty) < labels.shape[2] // 2
    # Not every foreground slice holds every structure.
    assert any(LV in c and LA not in c for c in per_slice)
    assert any(LA in c and LV not in c for c in per_slice) or any(AO in c and LV not in c for c in per_slice)


def test_intensities(volume: tuple[np.ndarray, np.ndarray]) -> None:
    hu, labels = volume
    mean = {c: float(hu[labels == c].mean()) for c in range(len(PHANTOM_CLASSES))}
    assert mean[LV] > 250 and mean[LA] > 250 and mean[AO] > 250
    assert mean[LV] - mean[MYOCARDIUM] > 150
    assert 60 < mean[MYOCARDIUM] < 160
    assert mean[CORONARY] > mean[MYOCARDIUM] + 50  # visible despite partial volume
    assert hu.min() >= -1024 and hu.max() > 500  # bone
    assert float(hu[0, 0, :].mean()) < -900  # air in the corner
    # Lungs: a large dark region inside the body on a mid slice.
    mid = hu[:, :, hu.shape[2] // 2]
    lung_like = mid < -500
    assert lung_like.sum() > 0.1 * mid.size
    assert float(mid[lung_like].mean()) < -700


def test_noise_present(volume: tuple[np.ndarray, np.ndarray]) -> None:
    hu, labels = volume
    inside = hu[(labels == LV)]
    assert 8 < float(inside.std()) < 60


def test_windowed_classes_differ(volume: tuple[np.ndarray, np.ndarray]) -> None:
    hu, labels = volume
    img = window_to_uint8(hu, *PHANTOM_WINDOW).astype(np.float64)
    mean = {c: img[labels == c].mean() for c in range(len(PHANTOM_CLASSES))}
    assert mean[LV] - mean[MYOCARDIUM] > 30
    assert mean[MYOCARDIUM] - mean[0] > 20
    assert mean[CORONARY] - mean[MYOCARDIUM] > 15
    # Image and labels line up: the LV is brighter than its own dilation ring.
    lv = labels == LV
    ring = np.zeros_like(lv)
    for z in range(lv.shape[2]):
        dil = cv2.dilate(lv[:, :, z].astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool)
        ring[:, :, z] = dil & ~lv[:, :, z]
    assert img[lv].mean() - img[ring].mean() > 30


def test_window_to_uint8_formula() -> None:
    hu = np.array([-1000, -200, 0, 200, 600, 601, 3000], dtype=np.int16)
    out = window_to_uint8(hu, level=200, width=800)
    assert out.dtype == np.uint8
    # clip((hu - (200 - 400)) / 800, 0, 1) * 255
    assert out.tolist() == [0, 0, 64, 128, 255, 255, 255]
    assert window_to_uint8(np.array([40.0]), 40, 400).tolist() == [128]
    assert window_to_uint8(np.array([-159.0]), 40, 400).tolist() == [1]  # 0.6375 rounds up
    with pytest.raises(ValueError):
        window_to_uint8(hu, 0, 0)


def test_spacing() -> None:
    sx, sy, sz = phantom_spacing(128, 32)
    assert sx == sy == pytest.approx(360 / 128)
    assert sz == pytest.approx(0.55 * 360 / 32)


def test_write_layout_and_masks_roundtrip(tmp_path: Path) -> None:
    root = tmp_path / "phantom"
    out = write_phantom_dataset(root, cases=SMALL, num_slices=6, size=64, seed=3)
    assert out == root
    manifest = json.loads((root / PHANTOM_MANIFEST).read_text())
    assert manifest["complete"] is True
    assert manifest["params"]["seed"] == 3 and manifest["params"]["num_slices"] == 6
    assert manifest["params"]["class_names"] == list(PHANTOM_CLASS_NAMES)
    assert [tuple(c) for c in manifest["params"]["colours"]] == list(PHANTOM_COLOURS)
    assert "version" in manifest["params"]
    ids = [c["id"] for c in manifest["cases"]]
    assert ids == ["phantom001", "phantom002", "phantom003", "phantom004"]
    assert [c["split"] for c in manifest["cases"]] == ["train", "train", "valid", "test"]
    assert sorted(p.name for p in root.iterdir()) == sorted([PHANTOM_MANIFEST, "train", "valid", "test"])
    assert not list(tmp_path.glob(".phantom*"))  # no temporary folder left behind

    seen: set[str] = set()
    for split, n in SMALL.items():
        images = sorted(p.name for p in (root / split / "images").iterdir())
        masks = sorted(p.name for p in (root / split / "masks").iterdir())
        assert images == masks and len(images) == n * 6
        cases = {name.rsplit("_", 1)[0] for name in images}
        assert not cases & seen  # every case in exactly one split
        seen |= cases
    assert (root / "train" / "images" / "phantom001_005.png").is_file()

    for case in manifest["cases"]:
        hu, labels = make_phantom_volume(case["seed"], size=64, num_slices=6)
        image = window_to_uint8(hu, *PHANTOM_WINDOW)
        for z in range(6):
            name = f"{case['id']}_{z:03d}.png"
            img = cv2.imread(str(root / case["split"] / "images" / name), cv2.IMREAD_UNCHANGED)
            assert img.dtype == np.uint8 and img.shape == (64, 64)
            np.testing.assert_array_equal(img, image[:, :, z].T)
            bgr = cv2.imread(str(root / case["split"] / "masks" / name), cv2.IMREAD_UNCHANGED)
            assert bgr.shape == (64, 64, 3)
            decoded = decode_rgb_mask(bgr[:, :, ::-1], PHANTOM_COLOURS, source=name)
            np.testing.assert_array_equal(decoded, labels[:, :, z].T)


def test_mask_colour_channel_order(tmp_path: Path) -> None:
    root = write_phantom_dataset(tmp_path / "p", cases={"train": 1}, num_slices=32, size=64, seed=0)
    manifest = json.loads((root / PHANTOM_MANIFEST).read_text())
    _, labels = make_phantom_volume(manifest["cases"][0]["seed"], size=64, num_slices=32)
    z = int(np.argmax((labels == LV).sum(axis=(0, 1))))
    bgr = cv2.imread(str(root / "train" / "masks" / f"phantom001_{z:03d}.png"), cv2.IMREAD_COLOR)
    lv_pixels = bgr[labels[:, :, z].T == LV]
    assert (lv_pixels == [0, 255, 255]).all()  # LV is (255, 255, 0) RGB -> BGR on disk


def test_case_seeds_depend_on_dataset_seed(tmp_path: Path) -> None:
    a = write_phantom_dataset(tmp_path / "a", cases={"train": 2}, num_slices=4, size=64, seed=0)
    b = write_phantom_dataset(tmp_path / "b", cases={"train": 2}, num_slices=4, size=64, seed=1)
    seeds_a = [c["seed"] for c in json.loads((a / PHANTOM_MANIFEST).read_text())["cases"]]
    seeds_b = [c["seed"] for c in json.loads((b / PHANTOM_MANIFEST).read_text())["cases"]]
    assert len(set(seeds_a)) == 2 and not set(seeds_a) & set(seeds_b)


def test_rerun_same_params_is_noop(tmp_path: Path) -> None:
    root = tmp_path / "phantom"
    write_phantom_dataset(root, cases=SMALL, num_slices=4, size=64, seed=0)
    before = _mtimes(root)
    assert write_phantom_dataset(root, cases=dict(SMALL), num_slices=4, size=64, seed=0) == root
    assert _mtimes(root) == before


def test_different_params_regenerate(tmp_path: Path) -> None:
    root = tmp_path / "phantom"
    write_phantom_dataset(root, cases=SMALL, num_slices=4, size=64, seed=0)
    (root / "notes.txt").write_text("user file")
    old = cv2.imread(str(root / "train" / "images" / "phantom001_001.png"), cv2.IMREAD_UNCHANGED)

    write_phantom_dataset(root, cases={"train": 1, "test": 1}, num_slices=5, size=64, seed=7)
    manifest = json.loads((root / PHANTOM_MANIFEST).read_text())
    assert manifest["params"]["seed"] == 7 and manifest["complete"] is True
    assert not (root / "valid").exists()  # old split removed
    assert (root / "notes.txt").read_text() == "user file"  # not ours: kept
    assert sorted(p.name for p in (root / "train" / "images").iterdir()) == [
        f"phantom001_{z:03d}.png" for z in range(5)
    ]
    new = cv2.imread(str(root / "train" / "images" / "phantom001_001.png"), cv2.IMREAD_UNCHANGED)
    assert not np.array_equal(old, new)
    assert not list(tmp_path.glob(".phantom*"))


def test_incomplete_dataset_is_regenerated(tmp_path: Path) -> None:
    root = tmp_path / "phantom"
    write_phantom_dataset(root, cases=SMALL, num_slices=4, size=64, seed=0)
    victim = root / "valid" / "masks" / "phantom003_002.png"
    victim.unlink()
    write_phantom_dataset(root, cases=SMALL, num_slices=4, size=64, seed=0)
    assert victim.is_file()


def test_empty_existing_folder_is_used(tmp_path: Path) -> None:
    root = tmp_path / "phantom"
    root.mkdir()
    write_phantom_dataset(root, cases={"train": 1}, num_slices=3, size=64)
    assert (root / PHANTOM_MANIFEST).is_file()


def test_foreign_folder_refused_and_untouched(tmp_path: Path) -> None:
    root = tmp_path / "mydata"
    (root / "train" / "images").mkdir(parents=True)
    (root / "train" / "images" / "scan.png").write_bytes(b"not ours")
    (root / "readme.txt").write_text("hello")
    before = _mtimes(root)
    with pytest.raises(FileExistsError, match="not a segexp phantom folder") as info:
        write_phantom_dataset(root, cases={"train": 1}, num_slices=3, size=64)
    assert str(root) in str(info.value)
    assert _mtimes(root) == before
    assert (root / "train" / "images" / "scan.png").read_bytes() == b"not ours"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mydata"]  # no temp folder left


def test_invalid_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        write_phantom_dataset(tmp_path / "x", cases={"../evil": 1}, num_slices=2, size=64)
    with pytest.raises(ValueError):
        write_phantom_dataset(tmp_path / "x", cases={"train": -1}, num_slices=2, size=64)
    with pytest.raises(ValueError):
        write_phantom_dataset(tmp_path / "x", cases={"train": 1}, num_slices=0, size=64)
    with pytest.raises(ValueError):
        make_phantom_volume(-1)
    with pytest.raises(ValueError):
        make_phantom_volume(0, size=16)
    assert not (tmp_path / "x").exists()


# --------------------------------------------------------------------------- NIfTI volumes

VOL = {"num_cases": 3, "size": 48, "num_slices": 6, "seed": 2}


def test_window_to_uint8_is_the_intensity_one() -> None:
    from segexp.data import phantom
    from segexp.data.io import intensity

    assert phantom.window_to_uint8 is intensity.window_to_uint8


@pytest.mark.parametrize(("size", "num_slices"), [(128, 32), (64, 10), (48, 1)])
def test_phantom_affine(size: int, num_slices: int) -> None:
    affine = phantom_affine(size, num_slices)
    assert affine.shape == (4, 4) and affine.dtype == np.float64
    assert nib.aff2axcodes(affine) == ("L", "P", "S")
    np.testing.assert_allclose(nib.affines.voxel_sizes(affine), phantom_spacing(size, num_slices))
    np.testing.assert_array_equal(affine[3], [0, 0, 0, 1])
    # Voxel (0, 0, 0) is at the patient's right, anterior, inferior corner (RAS: x, y > 0 for L/P axes).
    first, last = affine @ [0, 0, 0, 1], affine @ [size - 1, size - 1, num_slices - 1, 1]
    assert first[0] > last[0] and first[1] > last[1] and (num_slices == 1 or first[2] < last[2])
    # The volume centre sits at LPS (0, 30, -150) mm, i.e. RAS (0, -30, -150).
    centre = affine @ [(size - 1) / 2, (size - 1) / 2, (num_slices - 1) / 2, 1]
    np.testing.assert_allclose(centre[:3], [0.0, -30.0, -150.0], atol=1e-9)


def test_write_volumes_files_and_headers(tmp_path: Path) -> None:
    out = tmp_path / "vols"
    pairs = write_phantom_volumes(out, **VOL)
    ids = ["phantom001", "phantom002", "phantom003"]
    assert pairs == [(out / f"{i}_image.nii.gz", out / f"{i}_label.nii.gz") for i in ids]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [PHANTOM_VOLUMES_MANIFEST] + [p.name for pair in pairs for p in pair]
    )
    assert not list(tmp_path.glob(".vols*"))  # no temporary folder left behind
    manifest = json.loads((out / PHANTOM_VOLUMES_MANIFEST).read_text())
    assert manifest["complete"] is True and manifest["orientation"] == "LPS"
    assert manifest["params"]["num_cases"] == 3 and manifest["params"]["seed"] == 2
    assert [c["id"] for c in manifest["cases"]] == ids

    affine = phantom_affine(48, 6)
    for case, (image_path, label_path) in zip(manifest["cases"], pairs, strict=True):
        hu_ref, labels_ref = make_phantom_volume(case["seed"], size=48, num_slices=6)
        image, label = nib.load(image_path), nib.load(label_path)
        for img in (image, label):
            assert isinstance(img, nib.Nifti1Image)
            assert img.shape == (48, 48, 6)
            np.testing.assert_allclose(img.affine, affine, atol=1e-5)
            assert nib.aff2axcodes(img.affine) == ("L", "P", "S")
            np.testing.assert_allclose(img.header.get_zooms(), phantom_spacing(48, 6), rtol=1e-6)
            assert img.header.get_xyzt_units()[0] == "mm"
            assert int(img.header["qform_code"]) == 1 and int(img.header["sform_code"]) == 2
        assert image.get_data_dtype() == np.int16 and label.get_data_dtype() == np.uint8
        assert label.header.get_intent()[0] == "label"
        hu = np.asanyarray(image.dataobj)
        labels = np.asanyarray(label.dataobj)
        assert hu.dtype == np.int16 and labels.dtype == np.uint8
        np.testing.assert_array_equal(hu, hu_ref)
        np.testing.assert_array_equal(labels, labels_ref)


def test_volumes_and_slices_share_case_seeds(tmp_path: Path) -> None:
    write_phantom_volumes(tmp_path / "v", num_cases=2, size=32, num_slices=2, seed=5)
    root = write_phantom_dataset(tmp_path / "s", cases={"train": 1, "test": 1}, num_slices=2, size=32, seed=5)
    vol = json.loads((tmp_path / "v" / PHANTOM_VOLUMES_MANIFEST).read_text())["cases"]
    sl = json.loads((root / PHANTOM_MANIFEST).read_text())["cases"]
    assert [(c["id"], c["seed"]) for c in vol] == [(c["id"], c["seed"]) for c in sl]
    # ... so the slice PNGs are the windowed volume slices.
    hu = np.asanyarray(nib.load(tmp_path / "v" / "phantom002_image.nii.gz").dataobj)
    png = cv2.imread(str(root / "test" / "images" / "phantom002_001.png"), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(png, window_to_uint8(hu, *PHANTOM_WINDOW)[:, :, 1].T)


def test_volumes_rerun_same_params_is_noop(tmp_path: Path) -> None:
    out = tmp_path / "vols"
    first = write_phantom_volumes(out, **VOL)
    before = _mtimes(out)
    assert write_phantom_volumes(out, **VOL) == first
    assert _mtimes(out) == before


def test_volumes_different_params_regenerate_own_files_only(tmp_path: Path) -> None:
    out = tmp_path / "vols"
    write_phantom_volumes(out, **VOL)
    (out / "notes.txt").write_text("user file")
    old = np.asanyarray(nib.load(out / "phantom001_label.nii.gz").dataobj)

    pairs = write_phantom_volumes(out, num_cases=2, size=32, num_slices=4, seed=9)
    manifest = json.loads((out / PHANTOM_VOLUMES_MANIFEST).read_text())
    assert manifest["complete"] is True and manifest["params"]["seed"] == 9
    assert (out / "notes.txt").read_text() == "user file"  # not ours: kept
    assert not (out / "phantom003_image.nii.gz").exists()  # ours, no longer wanted: removed
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["notes.txt", PHANTOM_VOLUMES_MANIFEST] + [p.name for pair in pairs for p in pair]
    )
    new = nib.load(out / "phantom001_label.nii.gz")
    assert new.shape == (32, 32, 4) and new.shape != old.shape
    assert not list(tmp_path.glob(".vols*"))


def test_volumes_missing_file_is_regenerated(tmp_path: Path) -> None:
    out = tmp_path / "vols"
    write_phantom_volumes(out, **VOL)
    victim = out / "phantom002_label.nii.gz"
    victim.unlink()
    write_phantom_volumes(out, **VOL)
    assert victim.is_file()


def test_volumes_foreign_folder_refused_and_untouched(tmp_path: Path) -> None:
    out = tmp_path / "scans"
    out.mkdir()
    (out / "case1_image.nii.gz").write_bytes(b"not ours")
    before = _mtimes(out)
    with pytest.raises(FileExistsError, match="not a segexp phantom volume folder") as info:
        write_phantom_volumes(out, **VOL)
    assert str(out) in str(info.value)
    assert _mtimes(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scans"]  # no temp folder left


def test_volumes_refuse_slice_dataset_folder_and_vice_versa(tmp_path: Path) -> None:
    root = write_phantom_dataset(tmp_path / "s", cases={"train": 1}, num_slices=2, size=32)
    with pytest.raises(FileExistsError, match=PHANTOM_VOLUMES_MANIFEST):
        write_phantom_volumes(root, num_cases=1, size=32, num_slices=2)
    write_phantom_volumes(tmp_path / "v", num_cases=1, size=32, num_slices=2)
    with pytest.raises(FileExistsError, match=PHANTOM_MANIFEST):
        write_phantom_dataset(tmp_path / "v", cases={"train": 1}, num_slices=2, size=32)


def test_volumes_never_replace_an_unowned_file(tmp_path: Path) -> None:
    out = tmp_path / "vols"
    write_phantom_volumes(out, num_cases=1, size=32, num_slices=2)
    user = out / "phantom002_image.nii.gz"  # a user's file where a new case would go
    user.write_bytes(b"mine")
    with pytest.raises(FileExistsError, match="phantom002_image.nii.gz"):
        write_phantom_volumes(out, num_cases=2, size=32, num_slices=2)
    assert user.read_bytes() == b"mine"
    assert json.loads((out / PHANTOM_VOLUMES_MANIFEST).read_text())["params"]["num_cases"] == 1


def test_volumes_empty_existing_folder_is_used(tmp_path: Path) -> None:
    out = tmp_path / "vols"
    out.mkdir()
    write_phantom_volumes(out, num_cases=1, size=32, num_slices=2)
    assert (out / PHANTOM_VOLUMES_MANIFEST).is_file()


def test_volumes_invalid_arguments(tmp_path: Path) -> None:
    for bad in ({"num_cases": 0}, {"num_cases": 1.5}, {"size": 16}, {"num_slices": 0}, {"seed": -1}):
        with pytest.raises(ValueError):
            write_phantom_volumes(tmp_path / "x", **{"num_cases": 1, "size": 32, "num_slices": 2, **bad})
    assert not (tmp_path / "x").exists()


def test_tampered_volume_manifest_never_deletes_outside(tmp_path: Path) -> None:
    out = tmp_path / "vols"
    write_phantom_volumes(out, num_cases=1, size=32, num_slices=2)
    (tmp_path / "precious.txt").write_text("keep")
    path = out / PHANTOM_VOLUMES_MANIFEST
    manifest = json.loads(path.read_text())
    path.write_text(json.dumps({**manifest, "files": [*manifest["files"], "../precious.txt"]}))
    with pytest.raises(ValueError, match="precious"):
        write_phantom_volumes(out, num_cases=2, size=32, num_slices=2)
    assert (tmp_path / "precious.txt").read_text() == "keep"


def test_new_split_never_replaces_an_unowned_folder(tmp_path: Path) -> None:
    root = write_phantom_dataset(tmp_path / "p", cases={"train": 1}, num_slices=2, size=32)
    (root / "test").mkdir()
    (root / "test" / "mine.png").write_bytes(b"mine")
    with pytest.raises(FileExistsError, match="test"):
        write_phantom_dataset(root, cases={"train": 1, "test": 1}, num_slices=2, size=32)
    assert (root / "test" / "mine.png").read_bytes() == b"mine"


def _lose_the_race(root: Path, theirs: dict, mine: dict) -> list[Path]:
    """A sweep job finds ``root`` absent and builds ``mine``; meanwhile another job installs ``theirs`` there.

    Returns the listing of ``root`` as the other job left it.
    """
    left: list[Path] = []

    def build(staging: Path) -> dict:
        write_phantom_dataset(root, **theirs)  # the other job finishes first
        left.extend(sorted(p.relative_to(root) for p in root.rglob("*")))
        return slices.write_slices(staging, **mine)

    params = slices.slice_params(mine["cases"], mine["num_slices"], mine["size"], mine["seed"])
    assert cache.ensure_generated(slices.SLICE_FOLDER, root, params, list(mine["cases"]), build)
    return left


def test_parallel_writers_of_the_same_phantom_do_not_fail(tmp_path: Path) -> None:
    """Two sweep jobs generating the same phantom at once: the one that loses the rename keeps the winner's copy."""
    root = tmp_path / "phantom"
    kwargs = dict(cases={"train": 1, "valid": 1}, num_slices=4, size=32, seed=3)
    # The second job checked the folder while it was still absent, then lost the race.
    before = _lose_the_race(root, theirs=kwargs, mine=kwargs)
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before
    assert not [p for p in tmp_path.iterdir() if p.name != "phantom"]  # no temporary folder left
    with pytest.raises(OSError):  # a different dataset in its place is still an error
        _lose_the_race(tmp_path / "other", theirs=kwargs, mine={**kwargs, "seed": 4})


def test_the_cache_is_generic(tmp_path: Path) -> None:
    """Any generator can use the cache: built once, reused, rebuilt for other params without touching others' files."""
    notes = cache.GeneratedFolder(
        manifest="notes.json",
        generator="test.notes",
        entries_key="files",
        what="notes",
        complete=lambda root, manifest: all((root / name).is_file() for name in manifest["files"]),
        check_entry=lambda name: None,
    )

    def ensure(text: str) -> bool:
        def build(staging: Path) -> dict:
            (staging / f"{text}.txt").write_text(text)
            return {"length": len(text)}

        return cache.ensure_generated(notes, tmp_path / "notes", {"text": text}, [f"{text}.txt"], build)

    assert ensure("a") and not ensure("a")
    (tmp_path / "notes" / "user.txt").write_text("keep")
    assert ensure("bb")
    assert sorted(p.name for p in (tmp_path / "notes").iterdir()) == ["bb.txt", "notes.json", "user.txt"]
    manifest = json.loads((tmp_path / "notes" / "notes.json").read_text())
    assert manifest == {
        "generator": "test.notes",
        "complete": True,
        "params": {"text": "bb"},
        "files": ["bb.txt"],
        "length": 2,
    }
