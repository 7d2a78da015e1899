"""Every common volume format through one reader/writer (segexp.data.io.volume_files): NIfTI, MHA/MHD, NRRD and
DICOM series folders read to the same RAS array and affine, predictions written back in the input's format with
its geometry, the pattern pairing mixed formats, segexp-prepare and segexp-infer on them, broken series named.

Data: pydicom's bundled test files (CT_small.dcm, the small series under dicomdirtests), series and files written
here by SimpleITK from the phantom, and ../shared/data/thorax_cta when present.
"""

from __future__ import annotations

import json
import locale
import shutil
from pathlib import Path

import cv2
import nibabel as nib
import numpy as np
import pydicom
import pydicom.data
import pytest
import SimpleITK as sitk
import yaml
from omegaconf import OmegaConf

import segexp.config.schema
from segexp.config.schema import CONF_DIR
from segexp.core.errors import DataError
from segexp.data.io.problems import Problems
from segexp.data.io.volume_files import (
    ItkGeometry,
    VolumeFileError,
    affine_to_itk,
    itk_to_affine,
    open_volume_file,
    volume_checksum,
    write_label_volume,
)
from segexp.data.io.volumes import (
    CASE_DIR_PATTERN,
    CASE_PATTERN,
    VolumeCase,
    VolumeError,
    find_volume_cases,
    load_case,
    open_case,
)
from segexp.data.phantom import write_phantom_volumes
from segexp.data.prepare.check import check_volume_folder
from segexp.data.prepare.volumes_to_slices import prepare
from segexp.evaluation.prediction import infer, list_inputs
from segexp.tracking.runs import open_run

from .test_evaluate_infer import make_run, oracle_model
from .test_intensity_spacing import TINY_RESUNET
from .test_prepare import compose_prepare

THORAX_CTA = Path(segexp.config.schema.REPO_DIR).parent / "shared" / "data" / "thorax_cta"
CT_SMALL = Path(pydicom.data.get_testdata_file("CT_small.dcm"))  # type: ignore[arg-type]
BUNDLED = CT_SMALL.parent / "dicomdirtests"  # pydicom's wheel ships these (no download)
CT5N = BUNDLED / "98892001" / "CT5N"  # one CT series: 5 slices of 16 x 16, 2.5 mm apart
WINDOW = {"mode": "fixed", "level": 300.0, "width": 800.0}
CENTRES = (0, 61, 122, 251)  # windowed intensities -> classes 0..3 of the oracle model


# --------------------------------------------------------------------------- writing test volumes


def phantom(folder: Path, cases: int = 1, slices: int = 12) -> list[tuple[Path, Path]]:
    """The phantom's NIfTI pairs (32 x 32 x ``slices``, LPS, int16 HU and uint8 labels)."""
    return write_phantom_volumes(folder, num_cases=cases, size=32, num_slices=slices)


def itk_from_nifti(path: Path) -> sitk.Image:
    """ITK's own reading of a NIfTI file (its own RAS -> LPS conversion): the independent side of the tests."""
    return sitk.ReadImage(str(path))


def write_dicom_series(image: sitk.Image, folder: Path, series_uid: str | None = None, first: int = 0) -> Path:
    """``image`` as a CT series of one file per slice (``<n>.dcm``), positions and orientation from its geometry."""
    folder.mkdir(parents=True, exist_ok=True)
    image = sitk.Cast(image, sitk.sitkInt16)
    series = series_uid or pydicom.uid.generate_uid()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    saved = locale.setlocale(locale.LC_ALL)  # GDCM's writer leaves the process in the "C" locale (ASCII text I/O)
    try:
        _write_slices(image, folder, writer, series, first)
    finally:
        locale.setlocale(locale.LC_ALL, saved)
    return folder


def _write_slices(image: sitk.Image, folder: Path, writer: sitk.ImageFileWriter, series: str, first: int) -> None:
    d = image.GetDirection()
    for k in range(image.GetDepth()):
        plane = image[:, :, k]
        tags = {
            "0008|0060": "CT",
            "0008|0018": pydicom.uid.generate_uid(),
            "0020|000d": "1.2.826.0.1.3680043.8.498.1",
            "0020|000e": series,
            "0020|0052": "1.2.826.0.1.3680043.8.498.2",  # frame of reference
            "0020|0013": str(first + k + 1),
            "0020|0037": "\\".join(f"{v:.10g}" for v in (d[0], d[3], d[6], d[1], d[4], d[7])),
            "0020|0032": "\\".join(f"{v:.10g}" for v in image.TransformIndexToPhysicalPoint((0, 0, k))),
            "0018|0050": f"{image.GetSpacing()[2]:.10g}",
        }
        for key, value in tags.items():
            plane.SetMetaData(key, value)
        writer.SetFileName(str(folder / f"{first + k:04d}.dcm"))
        writer.Execute(plane)


def itk_geometry_of(image: sitk.Image) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return np.array(image.GetOrigin()), np.array(image.GetSpacing()), np.array(image.GetDirection())


def assert_same_geometry(a: sitk.Image, b: sitk.Image, atol: float = 1e-9) -> None:
    for x, y in zip(itk_geometry_of(a), itk_geometry_of(b)):
        np.testing.assert_allclose(x, y, rtol=0, atol=atol)
    assert a.GetSize() == b.GetSize()


@pytest.fixture
def formats(tmp_path: Path) -> dict[str, Path]:
    """One phantom image as NIfTI, MHA, MHD (+ .raw), NRRD and a DICOM folder."""
    ((nifti, _),) = phantom(tmp_path / "nifti")
    itk = itk_from_nifti(nifti)
    out = tmp_path / "formats"
    out.mkdir()
    paths = {"nifti": nifti}
    for fmt, name in (("mha", "p_image.mha"), ("mhd", "p_image.mhd"), ("nrrd", "p_image.nrrd")):
        sitk.WriteImage(itk, str(out / name))
        paths[fmt] = out / name
    paths["dicom"] = write_dicom_series(itk, out / "p_image")
    return paths


# --------------------------------------------------------------------------- reading


def test_every_format_reads_the_same_ras_volume(formats: dict[str, Path]) -> None:
    reference = nib.load(formats["nifti"])
    expected = np.asarray(reference.dataobj)
    canonical = load_case(VolumeCase("p", formats["nifti"], None))
    for fmt, path in formats.items():
        volume = open_volume_file(path)
        assert volume.format == {"mhd": "mha"}.get(fmt, fmt) and volume.shape == (32, 32, 12)
        np.testing.assert_allclose(volume.affine, reference.affine, rtol=0, atol=1e-4, err_msg=fmt)
        data = volume.read()
        assert data.dtype == np.int16 and np.array_equal(data, expected), fmt
        loaded = load_case(VolumeCase("p", path, None))
        assert loaded.original_orientation == "LPS" and nib.aff2axcodes(loaded.affine) == ("R", "A", "S")
        assert np.array_equal(loaded.image, canonical.image), fmt
        np.testing.assert_allclose(loaded.affine, canonical.affine, rtol=0, atol=1e-4, err_msg=fmt)
        assert loaded.spacing == pytest.approx(canonical.spacing, abs=1e-5)


@pytest.mark.parametrize(
    "direction",
    [
        np.eye(3),  # LPS file axes
        np.array([[0, -1, 0], [1, 0, 0], [0, 0, -1.0]]),  # permuted and flipped
        np.array(
            [[np.cos(0.3), -np.sin(0.3), 0], [np.sin(0.3), np.cos(0.3), 0], [0, 0, 1.0]]
        ),  # oblique (30 degree in-plane)
    ],
    ids=["identity", "permuted", "oblique"],
)
def test_itk_geometry_and_ras_affine_agree_with_itk_reading_nifti(tmp_path: Path, direction: np.ndarray) -> None:
    """affine = diag(-1,-1,1) D diag(s) | diag(-1,-1,1) o, checked against ITK's own NIfTI reader."""
    geometry = ItkGeometry((12.5, -40.25, 300.0), (0.7, 0.9, 2.5), tuple(direction.ravel().tolist()))
    affine = geometry.affine()
    back = affine_to_itk(affine)
    np.testing.assert_allclose(back.origin, geometry.origin, atol=1e-12)
    np.testing.assert_allclose(back.spacing, geometry.spacing, atol=1e-12)
    np.testing.assert_allclose(back.direction, geometry.direction, atol=1e-12)
    path = tmp_path / "x.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((3, 4, 5), np.int16), affine), str(path))
    itk = sitk.ReadImage(str(path))
    itk_affine = itk_to_affine(itk.GetOrigin(), itk.GetSpacing(), itk.GetDirection())
    np.testing.assert_allclose(itk_affine, affine, atol=1e-4)  # NIfTI stores float32


def test_bundled_dicom_series_and_single_file() -> None:
    """pydicom's CT_small.dcm (one slice) and its five-slice CT series: voxels and geometry as SimpleITK has them."""
    single = open_volume_file(CT_SMALL)
    reference = sitk.ReadImage(str(CT_SMALL))
    assert single.format == "dicom" and single.shape == (128, 128, 1)
    np.testing.assert_allclose(single.affine, itk_to_affine(*itk_geometry_of(reference)), atol=1e-9)
    ds = pydicom.dcmread(CT_SMALL)
    hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    assert np.array_equal(single.read(np.float32)[:, :, 0], hu.T.astype(np.float32))  # rows = y, columns = x

    series = open_volume_file(CT5N)
    assert series.shape == (16, 16, 5) and series.itk is not None and series.itk.spacing[2] == pytest.approx(2.5)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(CT5N)))
    image = reader.Execute()
    np.testing.assert_allclose(series.affine, itk_to_affine(*itk_geometry_of(image)), atol=1e-6)
    assert np.array_equal(series.read(), sitk.GetArrayFromImage(image).transpose(2, 1, 0))
    # slice order: ascending along the normal, not by file name
    positions = [float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]) for p in series.files]
    assert positions == sorted(positions)


def test_dicom_file_without_ending_and_folder_of_one_file(tmp_path: Path) -> None:
    (tmp_path / "one").mkdir()
    shutil.copy(CT_SMALL, tmp_path / "one" / "IM0001")  # named as many scanners do: the DICM preamble tells
    expected = open_volume_file(CT_SMALL).read()
    for path in (tmp_path / "one", tmp_path / "one" / "IM0001"):
        volume = open_volume_file(path)
        assert volume.format == "dicom" and volume.shape == (128, 128, 1)
        assert np.array_equal(volume.read(), expected)


# --------------------------------------------------------------------------- writing


@pytest.mark.parametrize("fmt", ["nifti", "mha", "mhd", "nrrd"])
def test_prediction_round_trip_keeps_format_and_geometry(formats: dict[str, Path], tmp_path: Path, fmt: str) -> None:
    source = formats[fmt]
    like = open_volume_file(source)
    labels = (np.arange(32 * 32 * 12).reshape(32, 32, 12) % 5).astype(np.uint8)
    target = write_label_volume(labels, like, tmp_path / "out" / "p_pred")
    assert target.name == {"nifti": "p_pred.nii.gz", "mha": "p_pred.mha", "mhd": "p_pred.mha"}.get(fmt, "p_pred.nrrd")
    written, original = sitk.ReadImage(str(target)), sitk.ReadImage(str(source))
    assert_same_geometry(written, original, atol=1e-5 if fmt == "nifti" else 0.0)
    assert np.array_equal(sitk.GetArrayFromImage(written).transpose(2, 1, 0), labels)
    assert written.GetPixelID() == sitk.sitkUInt8
    back = open_volume_file(target)
    assert np.array_equal(back.read(), labels)
    np.testing.assert_allclose(back.affine, like.affine, atol=1e-5)


def test_dicom_prediction_is_nifti_or_mha(formats: dict[str, Path], tmp_path: Path) -> None:
    like = open_volume_file(formats["dicom"])
    labels = np.zeros(like.shape, np.uint8)
    labels[4:9, 10:20, 3:7] = 2
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(formats["dicom"])))
    series = reader.Execute()
    for output_format, suffix, atol in (("auto", ".nii.gz", 1e-4), ("nifti", ".nii.gz", 1e-4), ("mha", ".mha", 1e-9)):
        target = write_label_volume(labels, like, tmp_path / output_format / "p_pred", output_format)
        assert target.name == f"p_pred{suffix}"
        written = sitk.ReadImage(str(target))
        assert_same_geometry(written, series, atol=atol)
        assert np.array_equal(sitk.GetArrayFromImage(written).transpose(2, 1, 0), labels)
    with pytest.raises(ValueError, match="output_format must be one of"):
        write_label_volume(labels, like, tmp_path / "x", "dicom")


def test_nifti_prediction_as_mha_or_nrrd_keeps_an_oblique_geometry(tmp_path: Path) -> None:
    c, s = np.cos(0.3), np.sin(0.3)
    affine = np.eye(4)
    affine[:3, :3] = np.array([[0, -c, s], [0, s, c], [-1.0, 0, 0]]) @ np.diag([0.7, 0.8, 2.5])  # permuted, oblique
    affine[:3, 3] = [11.5, -20.25, 30.0]
    nib.save(nib.Nifti1Image(np.zeros((4, 5, 6), np.int16), affine), str(tmp_path / "x.nii.gz"))
    like = open_volume_file(tmp_path / "x.nii.gz")
    reference = sitk.ReadImage(str(tmp_path / "x.nii.gz"))  # ITK's own NIfTI reading
    labels = (np.arange(4 * 5 * 6).reshape(4, 5, 6) % 3).astype(np.uint8)
    for fmt in ("mha", "nrrd"):
        written = sitk.ReadImage(str(write_label_volume(labels, like, tmp_path / "x_pred", fmt)))
        assert_same_geometry(written, reference, atol=1e-5)
        assert np.array_equal(sitk.GetArrayFromImage(written).transpose(2, 1, 0), labels)


def test_checksum_covers_a_detached_header_and_a_dicom_folder(formats: dict[str, Path]) -> None:
    before = volume_checksum(formats["mhd"])
    raw = formats["mhd"].with_suffix(".raw")
    data = bytearray(raw.read_bytes())
    data[100] ^= 0xFF
    raw.write_bytes(bytes(data))
    assert volume_checksum(formats["mhd"]) != before
    folder = volume_checksum(formats["dicom"])
    first = sorted(formats["dicom"].iterdir())[0]
    first.write_bytes(first.read_bytes() + b"\0\0")
    assert volume_checksum(formats["dicom"]) != folder


# --------------------------------------------------------------------------- pairing


def test_default_pattern_pairs_mixed_formats_and_dicom_folders(formats: dict[str, Path], tmp_path: Path) -> None:
    label = nib.load(str(formats["nifti"]).replace("_image", "_label"))
    label_itk = itk_from_nifti(Path(str(formats["nifti"]).replace("_image", "_label")))
    src = tmp_path / "cases"
    src.mkdir()
    shutil.copy(formats["mha"], src / "a_image.mha")
    nib.save(label, str(src / "a_label.nii.gz"))  # an MHA image with a NIfTI label
    shutil.copytree(formats["dicom"], src / "b_image")  # a DICOM folder ...
    sitk.WriteImage(label_itk, str(src / "b_label.nrrd"))  # ... with an NRRD label
    sitk.WriteImage(itk_from_nifti(formats["nifti"]), str(src / "c_image.mhd"))  # c_image.raw is not a volume
    sitk.WriteImage(label_itk, str(src / "c_label.mha"))
    cases = find_volume_cases(src, CASE_PATTERN)
    assert [(c.case, c.image.name, c.label.name if c.label else None) for c in cases] == [
        ("a", "a_image.mha", "a_label.nii.gz"),
        ("b", "b_image", "b_label.nrrd"),
        ("c", "c_image.mhd", "c_label.mha"),
    ]
    expected = load_case(VolumeCase("p", formats["nifti"], Path(str(formats["nifti"]).replace("_image", "_label"))))
    for case in cases:  # image and label of different formats agree on the grid (affine within 1e-3 mm)
        loaded = load_case(case, allowed_labels=range(6))
        assert np.array_equal(loaded.image, expected.image) and np.array_equal(loaded.label, expected.label)  # type: ignore[arg-type]

    report = check_volume_folder(src, CASE_PATTERN, None)  # segexp-check reads them as segexp-prepare does
    assert report.problems == [] and report.fingerprint.splits["all"]["cases"] == 3

    per_case = tmp_path / "per_case"
    shutil.copytree(formats["dicom"], per_case / "d" / "image")
    nib.save(label, str(per_case / "d" / "label.nii.gz"))
    (case,) = find_volume_cases(per_case, CASE_DIR_PATTERN)
    assert case.image == per_case / "d" / "image" and case.label == per_case / "d" / "label.nii.gz"

    (src / "stray_folder").mkdir()
    shutil.copy(sorted(formats["dicom"].iterdir())[0], src / "stray_folder" / "x.dcm")
    with pytest.raises(VolumeError, match="stray_folder"):  # a DICOM folder outside the pattern is named
        find_volume_cases(src, CASE_PATTERN)


# --------------------------------------------------------------------------- segexp-prepare


def test_prepare_gives_the_same_slices_from_every_format(tmp_path: Path) -> None:
    pairs = phantom(tmp_path / "nifti", cases=3)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (i1, l1), (i2, l2), (i3, l3) = pairs
    sitk.WriteImage(itk_from_nifti(i1), str(mixed / "phantom001_image.mha"))
    sitk.WriteImage(itk_from_nifti(l1), str(mixed / "phantom001_label.mha"))
    sitk.WriteImage(itk_from_nifti(i2), str(mixed / "phantom002_image.nrrd"))
    shutil.copy(l2, mixed / "phantom002_label.nii.gz")
    write_dicom_series(itk_from_nifti(i3), mixed / "phantom003_image")
    sitk.WriteImage(itk_from_nifti(l3), str(mixed / "phantom003_label.nrrd"))
    split = "split.cases={train:[phantom001,phantom002],valid:[phantom003],test:[]}"
    common = ("volumes.phantom=null", split, "empty_fraction=1.0")
    a = prepare(compose_prepare(tmp_path / "a", f"volumes.source={tmp_path / 'nifti'}", *common))
    b = prepare(compose_prepare(tmp_path / "b", f"volumes.source={mixed}", *common))
    files_a = sorted(p.relative_to(a) for p in a.rglob("*.png"))
    assert files_a == sorted(p.relative_to(b) for p in b.rglob("*.png")) and len(files_a) == 2 * 3 * 12
    for rel in files_a:
        assert np.array_equal(cv2.imread(str(a / rel), cv2.IMREAD_UNCHANGED), cv2.imread(str(b / rel), -1)), rel
    ma, mb = (json.loads((x / "dataset.json").read_text()) for x in (a, b))
    for case in ("phantom001", "phantom002", "phantom003"):
        for key in ("shape", "spacing_mm", "orientation", "window", "slices_foreground"):
            assert ma["cases"][case][key] == mb["cases"][case][key], (case, key)
    assert mb["cases"]["phantom003"]["image"]["file"] == "phantom003_image"
    assert mb["cases"]["phantom003"]["image"]["sha256"] == volume_checksum(mixed / "phantom003_image")


# --------------------------------------------------------------------------- segexp-infer


def _oracle_run(tmp_path: Path):
    overrides = [
        "model.image_height=32",
        "model.image_width=32",
        "model.num_layers=3",
        "model.num_classes=4",
        "dataset=folder",
        "dataset.root=/unused",
        "dataset.class_names=[a,b,c,d]",
        "dataset.mask_format=index",
    ]
    return open_run(str(make_run(tmp_path / "run", oracle_model(CENTRES), overrides)))


def _expected_labels(hu: np.ndarray) -> np.ndarray:
    from segexp.data.io.intensity import window_to_uint8

    windowed = window_to_uint8(np.asarray(hu, np.float32), 300.0, 800.0).astype(np.float32)
    return np.argmin(np.abs(windowed[..., None] - np.asarray(CENTRES, np.float32)), axis=-1)


def test_infer_writes_mha_and_dicom_predictions_in_their_format_and_geometry(
    formats: dict[str, Path], tmp_path: Path
) -> None:
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    shutil.copy(formats["mha"], inputs / "p_image.mha")
    shutil.copytree(formats["dicom"], inputs / "series7")  # a folder of DICOM files among the inputs: one series
    assert [p.name for p in list_inputs(inputs)] == ["p_image.mha", "series7"]
    run = _oracle_run(tmp_path)
    assert infer(run, inputs, tmp_path / "out", window=WINDOW) == []
    expected = _expected_labels(np.asarray(nib.load(formats["nifti"]).dataobj))

    mha = sitk.ReadImage(str(tmp_path / "out" / "p_image_pred.mha"))
    assert_same_geometry(mha, sitk.ReadImage(str(formats["mha"])), atol=0.0)
    assert np.array_equal(sitk.GetArrayFromImage(mha).transpose(2, 1, 0), expected)

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(formats["dicom"])))
    series = reader.Execute()
    nifti = sitk.ReadImage(str(tmp_path / "out" / "series7_pred.nii.gz"))  # DICOM in: NIfTI out by default
    assert_same_geometry(nifti, series, atol=1e-4)
    assert np.array_equal(sitk.GetArrayFromImage(nifti).transpose(2, 1, 0), expected)
    assert (tmp_path / "out" / "series7_montage.png").is_file()

    # input = the DICOM folder itself (one series), MHA out, with the probabilities (NIfTI, same geometry)
    failures = infer(
        run, formats["dicom"], tmp_path / "out2", window=WINDOW, output_format="mha", save_probabilities=True
    )
    assert failures == []
    mha2 = sitk.ReadImage(str(tmp_path / "out2" / "p_image_pred.mha"))
    assert_same_geometry(mha2, series, atol=1e-9)
    assert np.array_equal(sitk.GetArrayFromImage(mha2).transpose(2, 1, 0), expected)
    probs = nib.load(tmp_path / "out2" / "p_image_probabilities.nii.gz")
    assert probs.shape == (32, 32, 12, 4)
    np.testing.assert_allclose(probs.affine, open_volume_file(formats["dicom"]).affine, atol=1e-4)


def test_infer_writes_dicom_seg_for_a_dicom_series(formats: dict[str, Path], tmp_path: Path) -> None:
    hd = pytest.importorskip("highdicom")  # the extra segexp[dicom-seg]
    inputs = tmp_path / "inputs"
    shutil.copytree(formats["dicom"], inputs / "series7")
    shutil.copy(formats["mha"], inputs / "p_image.mha")  # not DICOM: written in its own format
    assert infer(_oracle_run(tmp_path), inputs, tmp_path / "out", window=WINDOW, output_format="dicom_seg") == []
    assert (tmp_path / "out" / "p_image_pred.mha").is_file()
    seg = hd.seg.segread(str(tmp_path / "out" / "series7_pred.dcm"))
    assert [d.SegmentLabel for d in seg.SegmentSequence] == ["b", "c", "d"]  # the run's classes 1..3
    like = open_volume_file(inputs / "series7")
    uids = [pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in like.files]
    pixels = seg.get_pixels_by_source_instance(uids, combine_segments=True, skip_overlap_checks=True)
    expected = _expected_labels(np.asarray(nib.load(formats["nifti"]).dataobj))
    assert np.array_equal(pixels.transpose(2, 1, 0), expected)  # (frames, rows, columns) = (z, y, x)


def test_dicom_seg_without_highdicom_says_what_to_install(
    formats: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "highdicom", None)  # as if the extra were not installed
    run = _oracle_run(tmp_path)
    (failure,) = infer(run, formats["dicom"], tmp_path / "out", window=WINDOW, output_format="dicom_seg")
    assert str(formats["dicom"]) in failure and "pip install 'segexp[dicom-seg]'" in failure


def test_infer_input_folders(formats: dict[str, Path], tmp_path: Path) -> None:
    pngs = tmp_path / "pngs"
    pngs.mkdir()
    cv2.imwrite(str(pngs / "a_000.png"), np.zeros((8, 8), np.uint8))
    assert list_inputs(pngs) == [pngs / "a_000.png"]  # a folder of PNG stays a slice folder
    assert list_inputs(formats["dicom"]) == [formats["dicom"]]  # a folder of DICOM files is one series
    cv2.imwrite(str(formats["dicom"] / "stray.png"), np.zeros((8, 8), np.uint8))
    with pytest.raises(DataError, match=r"holds DICOM files \(one series\) and other images or volumes \(stray.png"):
        list_inputs(formats["dicom"])
    broken = tmp_path / "broken"
    shutil.copytree(CT5N, broken)
    (broken / "2693").unlink()  # the middle slice
    run = _oracle_run(tmp_path)
    (failure,) = infer(run, broken, tmp_path / "out", window=WINDOW)
    assert str(broken) in failure and "1 missing slice(s)" in failure


def test_infer_output_format_option() -> None:
    from segexp.config.commands import validate_infer_config
    from segexp.config.schema import ConfigError

    from .conftest import compose_config

    base = ["run=x", "input=y", "paths.root=/tmp"]
    assert validate_infer_config(compose_config(base, "infer")).output_format == "auto"
    assert validate_infer_config(compose_config([*base, "output_format=mha"], "infer")).output_format == "mha"
    choices = r"\['auto', 'nifti', 'mha', 'nrrd', 'dicom_seg'\]"
    with pytest.raises(ConfigError, match=rf"output_format: expected one of {choices}"):
        validate_infer_config(compose_config([*base, "output_format=dicom"], "infer"))


# --------------------------------------------------------------------------- broken series


def _series(tmp_path: Path, name: str = "s_image") -> Path:
    ((image, _),) = phantom(tmp_path / f"src_{name}", slices=6)
    return write_dicom_series(itk_from_nifti(image), tmp_path / name)


def test_missing_slice_is_named(tmp_path: Path) -> None:
    folder = _series(tmp_path)
    (folder / "0003.dcm").unlink()
    with pytest.raises(VolumeFileError, match=r"1 missing slice\(s\) between 0002.dcm and 0004.dcm") as info:
        open_volume_file(folder)
    assert str(info.value).startswith(f"{folder}: ")


def test_two_series_in_one_folder_are_listed(tmp_path: Path) -> None:
    folder = _series(tmp_path)
    other = write_dicom_series(
        itk_from_nifti(phantom(tmp_path / "other", slices=6)[0][0]), tmp_path / "o", "1.2.3.4.5", first=100
    )
    for f in other.iterdir():
        shutil.copy(f, folder / f.name)
    with pytest.raises(VolumeFileError, match=r"holds 2 DICOM series \(SeriesInstanceUID\): 1\.2\.3\.4\.5 \(6 files"):
        open_volume_file(folder)
    with pytest.raises(VolumeFileError, match="holds 3 DICOM series"):  # pydicom's own mixed folder
        open_volume_file(BUNDLED / "98892003" / "MR2")


def test_unequal_spacing_orientation_and_empty_folders_are_named(tmp_path: Path) -> None:
    folder = _series(tmp_path)
    moved = folder / "0002.dcm"
    ds = pydicom.dcmread(moved)
    ds.ImagePositionPatient = [*ds.ImagePositionPatient[:2], float(ds.ImagePositionPatient[2]) + 2.0]
    ds.save_as(moved)
    with pytest.raises(VolumeFileError, match=r"unequal slice spacing: gap .* between 0001.dcm and 0002.dcm") as info:
        open_volume_file(folder)
    assert str(folder) in str(info.value)
    ds.ImagePositionPatient = [*ds.ImagePositionPatient[:2], float(ds.ImagePositionPatient[2]) - 2.0]
    ds.ImageOrientationPatient = [0, 1, 0, 1, 0, 0]
    ds.save_as(moved)
    with pytest.raises(VolumeFileError, match=r"slices differ in orientation .*0002.dcm has \[0.0, 1.0"):
        open_volume_file(folder)
    with pytest.raises(VolumeFileError, match="slices differ in orientation"):
        open_volume_file(BUNDLED / "98892003" / "MR700")  # pydicom's: one series, seven orientations
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("x")
    with pytest.raises(VolumeFileError, match="folder holds no DICOM files"):
        open_volume_file(empty)


def test_broken_series_as_a_case_names_case_folder_and_problem(tmp_path: Path) -> None:
    folder = _series(tmp_path, "k_image")
    (folder / "0003.dcm").unlink()
    case = VolumeCase("k", folder, None)
    with pytest.raises(VolumeError, match=r"case k: image: 1 missing slice\(s\).*\(file .*k_image\)"):
        load_case(case)
    problems = Problems()
    assert open_case(case, problems) is None  # segexp-check: recorded, not raised
    assert problems.items[0].file == str(folder) and "missing slice" in problems.items[0].cause


# --------------------------------------------------------------------------- real data


@pytest.mark.skipif(not THORAX_CTA.is_dir(), reason=f"real data not found at {THORAX_CTA}")
def test_thorax_cta_as_a_dicom_series_keeps_its_geometry(tmp_path: Path) -> None:
    image, label = THORAX_CTA / "case_pulmonary" / "image.nii.gz", THORAX_CTA / "case_pulmonary" / "label.nii.gz"
    itk = itk_from_nifti(image)
    folder = write_dicom_series(itk, tmp_path / "case_pulmonary_image")
    volume = open_volume_file(folder)
    reference = nib.load(image)
    assert volume.shape == reference.shape == (122, 102, 112)
    np.testing.assert_allclose(volume.affine, reference.affine, rtol=0, atol=1e-4)
    assert volume.itk is not None
    np.testing.assert_allclose(volume.itk.spacing, (1.5, 1.5, 1.5), atol=1e-5)
    assert np.array_equal(volume.read(np.float32), np.asarray(reference.dataobj, np.float32))
    loaded = load_case(VolumeCase("case_pulmonary", folder, label), allowed_labels={0, 1, 2})
    canonical = load_case(VolumeCase("case_pulmonary", image, label), allowed_labels={0, 1, 2})
    assert np.array_equal(loaded.image, canonical.image) and np.array_equal(loaded.label, canonical.label)  # type: ignore[arg-type]
    assert loaded.original_orientation == "LPS"
    labels = np.asarray(nib.load(label).dataobj, np.uint8)
    written = sitk.ReadImage(str(write_label_volume(labels, volume, tmp_path / "pred", "mha")))
    assert_same_geometry(written, itk, atol=1e-4)


def test_every_volume_preset_uses_the_default_pattern() -> None:
    for preset in sorted((CONF_DIR / "volumes").glob("*.yaml")):
        assert yaml.safe_load(preset.read_text())["pattern"] == CASE_PATTERN, preset.name


# --------------------------------------------------------------------------- the whole chain


def test_mha_nrrd_and_dicom_go_through_prepare_train_evaluate_and_infer(tmp_path: Path, compose_train) -> None:
    """The README's chain on hospital formats: an MHA, an NRRD and a DICOM series folder are prepared (with 2.5D
    context, so the chain carries it too), a model trains one epoch on them, segexp-evaluate scores the
    held-out case, and segexp-infer predicts each input in its own format with its geometry."""
    from segexp.evaluation.reports import evaluate_run
    from segexp.training.loop import train

    (i1, l1), (i2, l2), (i3, l3) = phantom(tmp_path / "nifti", cases=3)
    source = tmp_path / "hospital"
    source.mkdir()
    sitk.WriteImage(itk_from_nifti(i1), str(source / "p1_image.mha"))
    sitk.WriteImage(itk_from_nifti(l1), str(source / "p1_label.mha"))
    sitk.WriteImage(itk_from_nifti(i2), str(source / "p2_image.nrrd"))
    sitk.WriteImage(itk_from_nifti(l2), str(source / "p2_label.nrrd"))
    write_dicom_series(itk_from_nifti(i3), source / "p3_image")
    shutil.copy(l3, source / "p3_label.nii.gz")
    out = prepare(
        compose_prepare(
            tmp_path,
            f"volumes.source={source}",
            "volumes.phantom=null",
            "split.cases={train:[p1],valid:[p2],test:[p3]}",
            "context_slices=1",
            f"out_dir={tmp_path / 'slices'}",
            small=False,
        )
    )
    assert json.loads((out / "dataset.json").read_text())["storage"]["channels"] == 3
    cfg = compose_train(
        "dataset=phantom_prepared",
        f"dataset.root={out}",
        "dataset.context_slices=1",
        "model.image_channels=3",
        *TINY_RESUNET,
    )
    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    train(cfg, run_dir)
    run = open_run(str(run_dir))
    summary = evaluate_run(run, tmp_path / "eval", log_to_run=False)
    assert summary["split"] == "test" and summary["hd95_units"] == "mm"
    for name, given, written in (
        ("p1_image", source / "p1_image.mha", "p1_image_pred.mha"),
        ("p2_image", source / "p2_image.nrrd", "p2_image_pred.nrrd"),
        ("p3_image", source / "p3_image", "p3_image_pred.nii.gz"),  # DICOM in: NIfTI out by default
    ):
        assert infer(run, given, tmp_path / "pred") == [], name
        reference = sitk.ReadImage(str(given)) if given.is_file() else series_image(given)
        prediction = sitk.ReadImage(str(tmp_path / "pred" / written))
        assert_same_geometry(prediction, reference, atol=1e-4)
        assert prediction.GetSize() == reference.GetSize()


def series_image(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()
