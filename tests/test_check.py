"""segexp-check and dataset.on_bad_file: a fixed corpus of broken files, each named with its cause."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import cv2
import nibabel as nib
import numpy as np
import pytest

from segexp.cli.check import run_check
from segexp.config.schema import ConfigError, validate_train_config
from segexp.data.io.slices import DataError, MaskDecoder, find_pairs, load_pair, read_image
from segexp.data.io.volumes import CASE_DIR_PATTERN, CASE_PATTERN
from segexp.data.prepare.check import check_slice_dataset, check_volume_folder
from segexp.data.runtime.loader import SliceLoader
from segexp.data.runtime.sampling import EpochSampler

from .conftest import (
    HOCM_MINI,
    SHARED_DATA,
    TINY_COLOURS,
    TINY_DATASET_OVERRIDES,
    compose_config,
    write_tiny_dataset,
)

THORAX = SHARED_DATA / "thorax_cta"
TINY_KEYS = (
    "dataset=folder",
    "dataset.class_names=[background,square,disc]",
    "dataset.rgb_map={background:[0,0,0],square:[255,0,0],disc:[0,255,0]}",
)


def _tiny_cfg(root: Path):
    return compose_config([*TINY_KEYS, f"dataset.root={root}"]).dataset


def break_dataset(root: Path) -> dict[str, str]:
    """Damage a tiny dataset in every way at once; returns {file name: expected cause (regex)}."""
    tr, va = root / "train", root / "valid"
    img = tr / "images" / "case0_000.png"
    img.write_bytes(img.read_bytes()[: img.stat().st_size // 2])  # truncated PNG
    (tr / "masks" / "case0_001.png").write_bytes(b"")  # zero-byte file
    (tr / "images" / "case0_002.png").write_text("this is not an image\n")  # text named .png
    mask = cv2.imread(str(tr / "masks" / "case0_003.png"))
    mask[3, 4] = (56, 34, 12)  # stray colour (BGR)
    cv2.imwrite(str(tr / "masks" / "case0_003.png"), mask)
    cv2.imwrite(str(tr / "images" / "case0_004.png"), np.zeros((48, 40), np.uint8))  # image of wrong size
    cv2.imwrite(str(tr / "masks" / "case0_005.png"), np.zeros((16, 16, 3), np.uint8))  # mask of wrong size
    colour = np.zeros((32, 32, 3), np.uint8)
    colour[..., 2] = 200  # RGB image, grayscale dataset
    cv2.imwrite(str(tr / "images" / "case0_006.png"), colour)
    cv2.imwrite(str(va / "images" / "case1_099.png"), np.zeros((32, 32), np.uint8))  # image without mask
    cv2.imwrite(str(va / "masks" / "case1_098.png"), np.zeros((32, 32, 3), np.uint8))  # mask without image
    return {
        "train/images/case0_000.png": r"truncated PNG",
        "train/masks/case0_001.png": r"empty file, 0 bytes",
        "train/images/case0_002.png": r"not an image file",
        "train/masks/case0_003.png": r"1 pixels have colours not in the rgb_map: \(12, 34, 56\)",
        "train/images/case0_004.png": r"is 40x48 but its mask .*case0_004.png is 32x32",
        "train/images/case0_005.png": r"is 32x32 but its mask .*case0_005.png is 16x16",
        "train/images/case0_006.png": r"colour image \(3 different channels\) in a grayscale dataset",
        "valid/images/case1_099.png": r"image without a mask",
        "valid/masks/case1_098.png": r"mask without an image",
    }


def test_every_broken_file_is_one_problem_line(tmp_path: Path) -> None:
    root = write_tiny_dataset(tmp_path / "d")
    expected = break_dataset(root)
    report = check_slice_dataset(_tiny_cfg(root), channels=1)
    lines = [str(p) for p in report.problems]
    assert not report.ok
    for name, cause in expected.items():
        hits = [line for line in lines if line.startswith(str(root / name) + ": ")]
        assert len(hits) == 1, (name, lines)
        assert __import__("re").search(cause, hits[0]), (hits[0], cause)
    assert len(lines) == len(expected), lines
    json.dumps(report.to_dict())  # plain data
    f = report.fingerprint
    assert f.splits["train"] == {"cases": 1, "slices": 8} and f.splits["valid"] == {"cases": 1, "slices": 4}
    assert f.files_read == 14


def test_grayscale_rgb_and_size_options(tmp_path: Path) -> None:
    root = write_tiny_dataset(tmp_path / "d", {"train": 2, "valid": 1})
    colour = np.zeros((32, 32, 3), np.uint8)
    colour[..., 1] = 90
    cv2.imwrite(str(root / "train" / "images" / "case0_000.png"), colour)
    assert not check_slice_dataset(_tiny_cfg(root), channels=1).ok
    report = check_slice_dataset(_tiny_cfg(root), channels=3)  # an RGB dataset takes colour and grey images
    assert report.ok, report.problems
    sized = check_slice_dataset(_tiny_cfg(root), channels=3, size=[64, 64])
    assert len(sized.problems) == 3 and all("expected 64x64 (image_size)" in str(p) for p in sized.problems)


def test_fingerprint_of_a_good_dataset(tmp_path: Path) -> None:
    root = write_tiny_dataset(tmp_path / "d")
    report = check_slice_dataset(_tiny_cfg(root), channels=1)
    assert report.ok, report.problems
    f = report.fingerprint
    assert f.splits == {
        "train": {"cases": 1, "slices": 8},
        "valid": {"cases": 1, "slices": 4},
        "test": {"cases": 1, "slices": 2},
    }
    assert set(f.class_pixels) == {"background", "square", "disc"} and sum(f.class_pixels.values()) == 14 * 32 * 32
    assert sum(f.class_frequency.values()) == pytest.approx(1.0)
    assert f.image_sizes == {"32x32": 14}
    i = f.intensity
    assert i.unit == "uint8" and i.count == 14 * 32 * 32 and 0 <= i.min <= i.percentiles["p50"] <= i.max <= 255
    images = np.stack([cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in sorted(root.glob("*/images/*.png"))])
    assert i.mean == pytest.approx(images.mean(), abs=1e-3) and i.std == pytest.approx(images.std(), abs=1e-3)
    assert i.percentiles["p50"] == np.percentile(images, 50, method="inverted_cdf")


def test_class_never_present_and_case_leak(tmp_path: Path) -> None:
    root = write_tiny_dataset(tmp_path / "d", {"train": 2, "valid": 2})
    cfg = compose_config(
        [
            "dataset=folder",
            f"dataset.root={root}",
            "dataset.class_names=[background,square,disc,extra]",
            "dataset.rgb_map={background:[0,0,0],square:[255,0,0],disc:[0,255,0],extra:[0,0,255]}",
        ]
    ).dataset
    for sub in ("images", "masks"):
        (root / "valid" / sub / "case1_000.png").rename(root / "valid" / sub / "case0_050.png")
    lines = [str(p) for p in check_slice_dataset(cfg, channels=1).problems]
    assert any("class 'extra' never appears in the 2 train masks" in line for line in lines), lines
    assert any("case 'case0' has slices in both the 'train' and 'valid' splits" in line for line in lines), lines


# --------------------------------------------------------------------------- reading and the loader


def test_read_errors_name_file_and_cause_without_opencv_traceback(tmp_path: Path) -> None:
    root = write_tiny_dataset(tmp_path / "d", {"train": 8})
    broken = break_dataset_train(root)
    decoder = MaskDecoder("rgb", 3, TINY_COLOURS)
    pairs = {p.name: p for p in find_pairs(root / "train" / "images", root / "train" / "masks", r"^(?P<case>.+)_\d+$")}
    for name, cause in broken.items():
        with pytest.raises(DataError, match=cause) as info:
            load_pair(pairs[name], decoder, 1, 32, 32)
        assert name in str(info.value)
    jpeg = tmp_path / "x.jpg"
    cv2.imwrite(str(jpeg), np.full((16, 16), 100, np.uint8))
    jpeg.write_bytes(jpeg.read_bytes()[:-40])
    with pytest.raises(DataError, match=r"x\.jpg: cannot read image \(truncated JPEG"):
        read_image(jpeg, 1)
    with pytest.raises(DataError, match=r"nope\.png: cannot read image \(file does not exist\)"):
        read_image(tmp_path / "nope.png", 1)
    deep = tmp_path / "deep.png"
    cv2.imwrite(str(deep), np.full((8, 8), 1000, np.uint16))
    with pytest.raises(DataError, match=r"deep\.png: 16-bit PNG; segexp reads 8-bit images"):
        read_image(deep, 1)


def break_dataset_train(root: Path) -> dict[str, str]:
    """The train-split damage of :func:`break_dataset`, by pair name -> cause."""
    (root / "valid" / "images").mkdir(parents=True, exist_ok=True)
    (root / "valid" / "masks").mkdir(parents=True, exist_ok=True)
    return {Path(k).stem: v for k, v in break_dataset(root).items() if k.startswith("train/")}


def _loader(root: Path, shuffle: bool = False, **kw) -> SliceLoader:
    pairs = find_pairs(root / "train" / "images", root / "train" / "masks", r"^(?P<case>.+)_\d+$")
    sampler = EpochSampler(len(pairs), 4, seed=kw.get("seed", 0)) if shuffle else None  # one shuffled pass
    return SliceLoader(
        pairs, MaskDecoder("rgb", 3, TINY_COLOURS), image_size=(32, 32), channels=1, batch_size=4, sampler=sampler, **kw
    )


def test_loader_on_bad_file_error_names_the_file(tmp_path: Path) -> None:
    root = write_tiny_dataset(tmp_path / "d", {"train": 8})
    (root / "train" / "images" / "case0_005.png").write_bytes(b"")
    loader = _loader(root)
    loader[0]
    with pytest.raises(DataError, match=r"case0_005\.png: cannot read image \(empty file, 0 bytes\)"):
        loader[1]


def test_loader_on_bad_file_skip_replaces_and_counts(tmp_path: Path, caplog) -> None:
    from segexp.data.runtime.augment import Augmenter

    root = write_tiny_dataset(tmp_path / "d", {"train": 12})
    bad = break_dataset_train(root)
    augmenter = Augmenter(compose_config(["augmentation=full"]).augmentation.transforms)
    with caplog.at_level(logging.WARNING, logger="segexp.data.runtime.loader"):
        a = _loader(root, on_bad_file="skip", shuffle=True, seed=1, augmenter=augmenter)
        batches = [a[i] for i in range(len(a))]
    assert all(x.shape == (4, 32, 32, 1) and y.shape == (4, 32, 32) for x, y in batches)
    assert sorted(Path(p).stem for p in a.skipped) == sorted(bad)
    for name in bad:
        assert sum(name in r.getMessage() for r in caplog.records) == 1, name  # warned once per file
    b = _loader(root, on_bad_file="skip", shuffle=True, seed=1, augmenter=augmenter)
    again = [b[i] for i in reversed(range(len(b)))][::-1]  # other order of requests: same batches
    assert all(np.array_equal(u[0], v[0]) and np.array_equal(u[1], v[1]) for u, v in zip(batches, again))
    a.on_epoch_end()
    a[0]  # bad files are remembered: no new warning, still full batches
    assert len(a.skipped) == len(bad)


def test_loader_skip_with_only_bad_files_fails_clearly(tmp_path: Path) -> None:
    root = write_tiny_dataset(tmp_path / "d", {"train": 2})
    for p in (root / "train" / "images").iterdir():
        p.write_bytes(b"")
    with pytest.raises(DataError, match="every one of the 2 samples of this split is unreadable"):
        _loader(root, on_bad_file="skip")[0]


def test_on_bad_file_is_validated() -> None:
    cfg = compose_config(["dataset.on_bad_file=ignore"])
    with pytest.raises(ConfigError, match=r"dataset\.on_bad_file: expected one of \['error', 'skip'\], got 'ignore'"):
        validate_train_config(cfg)
    assert validate_train_config(compose_config([])).dataset.on_bad_file == "error"


# --------------------------------------------------------------------------- NIfTI volumes


def _nifti(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    nib.save(nib.Nifti1Image(data, np.diag([1.5, 1.5, 2.0, 1.0]) if affine is None else affine), str(path))
    return path


def test_broken_volumes_are_each_one_problem(tmp_path: Path) -> None:
    src = tmp_path / "vol"
    src.mkdir()
    rng = np.random.default_rng(0)
    image = rng.integers(-1000, 1000, (12, 10, 8)).astype(np.int16)
    label = np.zeros((12, 10, 8), np.uint8)
    label[3:6, 3:6, 2:5] = 1
    for case in ("a", "b", "c", "d"):
        _nifti(src / f"{case}_image.nii.gz", image)
    _nifti(src / "a_label.nii.gz", label)
    raw = (src / "b_image.nii.gz").read_bytes()
    (src / "b_image.nii.gz").write_bytes(raw[: len(raw) // 2])  # truncated .nii.gz
    _nifti(src / "b_label.nii.gz", label)
    _nifti(src / "c_label.nii.gz", label[:, :, :6])  # shape mismatch
    bad_values = label.copy()
    bad_values[0, 0, 0] = 7
    _nifti(src / "d_label.nii.gz", bad_values)  # label value not in the class table
    _nifti(src / "e_image.nii.gz", image)  # image without label
    (src / "notes.nii").write_text("x")  # name outside the pattern
    report = check_volume_folder(src, CASE_PATTERN, {"background": [0], "fg": [1], "other": [2]})
    lines = [str(p) for p in report.problems]
    expected = {
        "b_image.nii.gz": "cannot read the voxel data, truncated or corrupt",
        "c_label.nii.gz": r"label shape (12, 10, 6) != image shape (12, 10, 8)",
        "d_label.nii.gz": "label values [7] are not in volumes.classes",
        "e_image.nii.gz": "image without a label",
        "notes.nii": "name does not match volumes.pattern",
    }
    for name, cause in expected.items():
        hits = [line for line in lines if line.startswith(str(src / name) + ": ")]
        assert len(hits) == 1 and cause in hits[0], (name, lines)
    assert any("class 'other' (labels [2]) never appears" in line for line in lines)
    assert len(lines) == len(expected) + 1, lines
    f = report.fingerprint
    assert f.kind == "volumes" and f.splits["all"]["cases"] == 5 and f.intensity.unit == "HU"
    assert f.class_pixels["fg"] == 3 * 27 and f.cases["a"]["label_values"] == [0, 1]
    json.dumps(report.to_dict())


@pytest.mark.skipif(not THORAX.is_dir(), reason="../shared/data/thorax_cta is absent")
def test_real_thorax_cta_volumes_are_readable() -> None:
    """Both cases read; their label sets differ (pulmonary: 0-2, aorta: 0-6)."""
    report = check_volume_folder(THORAX, CASE_DIR_PATTERN, None)
    assert report.ok, report.problems
    f = report.fingerprint
    assert f.cases["case_pulmonary"]["label_values"] == [0, 1, 2]
    assert f.cases["case_aorta"]["label_values"] == [0, 1, 2, 3, 4, 5, 6]
    assert f.cases["case_aorta"]["shape"] == [120, 126, 164] and f.cases["case_pulmonary"]["orientation"] == "LPS"
    assert -1100 <= f.intensity.min < f.intensity.percentiles["p50"] < f.intensity.max
    # A class table made for the pulmonary case flags the aorta case's extra labels.
    narrow = check_volume_folder(THORAX, CASE_DIR_PATTERN, {"background": [0], "heart": [1], "PA": [2]})
    assert [p.file for p in narrow.problems] == [str(THORAX / "case_aorta" / "label.nii.gz")]
    assert "label values [3, 4, 5, 6]" in narrow.problems[0].cause


# --------------------------------------------------------------------------- real slices, CLI, training


@pytest.mark.skipif(not HOCM_MINI.is_dir(), reason="../shared/data/hocmvalves_mini is absent")
def test_real_hocmvalves_mini_passes_with_its_fingerprint() -> None:
    report = run_check(compose_config(["dataset=hocmvalves_mini", f"dataset.root={HOCM_MINI}"], config_name="check"))
    assert report.ok, report.problems
    f = report.fingerprint
    assert f.splits["train"] == {"cases": 1, "slices": 14} and f.splits["valid"] == {"cases": 1, "slices": 22}
    assert f.image_sizes == {"512x512": 36} and len(f.class_names) == 8
    # README of the data: LA 191k, Myo 132k, LV 64k, AO 59k, MV 3.0k, AV 2.3k, excised 2.1k pixels.
    assert round(f.class_pixels["LA"], -3) == 191_000 and round(f.class_pixels["Myocardium"], -3) == 132_000
    assert min(f.class_pixels[c] for c in f.class_names[1:]) > 2000
    assert f.intensity.min == 0 and f.intensity.max == 255


def test_cli_exit_status_and_file_names(tmp_path: Path) -> None:
    root = write_tiny_dataset(tmp_path / "d")
    base = [sys.executable, "-m", "segexp.cli.check", f"paths.root={tmp_path}", *TINY_KEYS]
    ok = subprocess.run([*base, f"dataset.root={root}"], capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "problems: none" in ok.stdout and "square" in ok.stdout and "intensity (uint8)" in ok.stdout
    expected = break_dataset(root)
    bad = subprocess.run([*base, f"dataset.root={root}"], capture_output=True, text=True, timeout=300)
    output = bad.stdout + bad.stderr
    assert bad.returncode == 1 and "Traceback" not in output
    assert f"PROBLEMS ({len(expected)}):" in output
    for name in expected:
        assert str(root / name) in output, name
    reports = list((tmp_path / "outputs" / "check" / "runs").glob("*/*/check_report.json"))
    assert len(reports) == 2
    assert max(json.loads(r.read_text())["num_problems"] for r in reports) == len(expected)
    wrong = subprocess.run(
        [*base, f"dataset.root={root}", "image_channels=0"], capture_output=True, text=True, timeout=300
    )
    assert wrong.returncode == 2 and "image_channels: must be >= 1" in wrong.stdout + wrong.stderr


def test_cli_checks_volumes(tmp_path: Path) -> None:
    src = tmp_path / "vol"
    src.mkdir()
    label = np.zeros((8, 8, 4), np.uint8)
    label[2:5, 2:5, 1:3] = 1
    label[0, :4, 0] = [2, 3, 4, 5]  # every class of the phantom's class table
    _nifti(src / "p1_image.nii.gz", np.full((8, 8, 4), 40, np.int16))
    _nifti(src / "p1_label.nii.gz", label)
    cmd = [
        sys.executable,
        "-m",
        "segexp.cli.check",
        f"paths.root={tmp_path}",
        "volumes=phantom",
        "volumes.phantom=null",
        f"volumes.source={src}",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "problems: none" in result.stdout and "intensity (HU): mean 40" in result.stdout
    (src / "p1_label.nii.gz").unlink()
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and f"{src / 'p1_image.nii.gz'}: image without a label (case p1)" in result.stdout


def test_training_logs_the_fingerprint_and_honours_on_bad_file(
    compose_train, tiny_dataset: Path, tmp_path: Path
) -> None:
    """``error`` stops at the bad file naming it; ``skip`` trains and logs the fingerprint (params + JSON artifact)."""
    import mlflow
    from mlflow import MlflowClient

    from segexp.training.loop import train

    (tiny_dataset / "train" / "images" / "case0_005.png").write_bytes(b"not a png")
    overrides = (
        *TINY_DATASET_OVERRIDES,
        f"dataset.root={tiny_dataset}",
        "training.epochs=1",
        "training.epoch_images.num=0",
        "tracking.log_model=false",
        "training.evaluate_after=false",
    )
    with pytest.raises(DataError, match=r"case0_005\.png: cannot read image \(not an image file"):
        train(compose_train(*overrides, "tracking.enabled=false"), tmp_path / "a")
    (tiny_dataset / "valid" / "masks" / "case1_000.png").write_bytes(b"")  # also the first epoch image
    objective = train(
        compose_train(*overrides, "dataset.on_bad_file=skip", "training.epoch_images.num=2"), tmp_path / "run"
    )
    assert np.isfinite(objective) or np.isnan(objective)

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/outputs/mlflow.db")
    client = MlflowClient()
    run = client.search_runs([client.get_experiment_by_name("segexp").experiment_id])[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["dataset.num_slices.train"] == "8" and run.data.params["dataset.num_cases.valid"] == "1"
    assert "dataset.intensity_mean" in run.data.params
    assert "dataset_fingerprint.json" in [a.path for a in client.list_artifacts(run.info.run_id)]
    saved = json.loads((tmp_path / "run" / "dataset_fingerprint.json").read_text())
    assert saved["fingerprint"]["splits"]["train"] == {"cases": 1, "slices": 8}
    assert set(saved["fingerprint"]["class_pixels"]) == {"background", "square", "disc"}
    assert sorted(Path(p["file"]).name for p in saved["problems"]) == ["case0_005.png", "case1_000.png"]
    assert len(list((tmp_path / "run" / "epoch_images").glob("*.png"))) == 2
    # the postprocessing is chosen on the valid slices that could be read (the bad one left out, as in training)
    assert (tmp_path / "run" / "postprocessing.json").is_file()
