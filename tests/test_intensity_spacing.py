"""Spacing-aware preparation and the field's intensity normalisations (issue 30, deliverables 2 and 3).

segexp-prepare resamples slices in-plane to a target spacing (``spacing=auto``: the median, as nnU-Net) and
records it; segexp-infer resamples a volume the same way and its prediction back onto the volume's own grid.
Intensities: nnU-Net's CT normalisation (foreground statistics of the non-test cases, 16-bit slices), a
per-image z-score and several HU windows stacked as channels, each applied identically by segexp-prepare and
segexp-infer and decoded by the model's input layer.
"""

from __future__ import annotations

import json
from pathlib import Path

import keras
import nibabel as nib
import numpy as np
import pytest
from omegaconf import OmegaConf

from segexp.config.schema import ConfigError
from segexp.data.io import intensity
from segexp.data.io.intensity import UINT8_ENCODING, InputEncoding, normalise_volume, window_encoding
from segexp.data.io.resample import resample_labels, slice_grid
from segexp.data.io.slices import DataError, MaskDecoder, SlicePair, read_image, write_image
from segexp.data.io.volumes import VolumeCase, load_case, slice_pixel_spacing, volume_slice
from segexp.data.prepare.volumes_to_slices import prepare
from segexp.data.runtime.loader import SliceLoader
from segexp.evaluation.prediction import infer
from segexp.evaluation.reports import case_spacing
from segexp.models import build_model
from segexp.tracking.runs import BEST_MODEL, open_run

from .conftest import compose_config
from .test_prepare import compose_prepare

#: Three fields of view at 64 pixels: the same anatomy at 4.2, 5.6 and 7.5 mm pixels.
MIXED_FOVS = "volumes.phantom.fovs_mm=[270,360,480]"
MIXED = ("volumes.phantom.num_cases=6", "volumes.phantom.size=64", "volumes.phantom.num_slices=8", MIXED_FOVS)

#: One epoch of two steps of a 2-level ResUNet at 32x32, untracked: the end-to-end chains' training.
TINY_RESUNET = (
    "model=resunet",
    "model.image_height=32",
    "model.image_width=32",
    "model.channels=[4,8]",
    "model.num_res_units=1",
    "training.batch_size=4",
    "training.steps_per_epoch=2",
    "training.epochs=1",
    "training.epoch_images.num=1",
    "training.loader.workers=0",
    "training.jit_compile=false",
    "training.verbose=0",
    "tracking.enabled=false",
)


def manifest(out: Path) -> dict:
    return json.loads((out / "dataset.json").read_text())


def learning_cases(m: dict) -> list[str]:
    return [*m["splits"]["train"], *m["splits"]["valid"]]


# --------------------------------------------------------------------------- spacing


def test_phantom_fields_of_view_give_mixed_spacings(tmp_path: Path) -> None:
    out = prepare(compose_prepare(tmp_path, *MIXED, "spacing=null", "canvas=null", small=False))
    spacings = {c: tuple(v["slice_spacing_mm"]) for c, v in manifest(out)["cases"].items()}
    assert {round(s[0], 3) for s in spacings.values()} == {round(360 / g, 3) for g in (85, 64, 48)}
    assert manifest(out)["spacing"]["target_mm"] is None  # spacing=null: each case's own pixels
    assert all(v["stored_shape"] == [64, 64] for v in manifest(out)["cases"].values())
    # the default (spacing=auto canvas=auto): every case at the median spacing on one canvas
    default = manifest(prepare(compose_prepare(tmp_path, *MIXED, f"out_dir={tmp_path / 'default'}", small=False)))
    assert default["spacing"]["setting"] == "auto" and default["spacing"]["canvas"] is not None
    assert {tuple(v["stored_shape"]) for v in default["cases"].values()} == {tuple(default["spacing"]["canvas"])}


def test_spacing_auto_is_the_median_and_slices_are_resampled_to_it(tmp_path: Path) -> None:
    out = prepare(compose_prepare(tmp_path, *MIXED, "spacing=auto", "canvas=null", small=False))
    m = manifest(out)
    rows = [m["cases"][c]["slice_spacing_mm"][0] for c in learning_cases(m)]
    cols = [m["cases"][c]["slice_spacing_mm"][1] for c in learning_cases(m)]
    target = m["spacing"]["target_mm"]
    assert target == pytest.approx([float(np.median(rows)), float(np.median(cols))])  # non-test cases only
    for case, info in m["cases"].items():
        n, s = info["slice_shape"], info["slice_spacing_mm"]
        expected = [round(n[0] * s[0] / target[0]), round(n[1] * s[1] / target[1])]
        assert info["stored_shape"] == expected
        # the stored pixels keep the field of view: within half a pixel of the target
        assert info["stored_spacing_mm"] == pytest.approx([n[i] * s[i] / expected[i] for i in (0, 1)])
        assert abs(info["stored_spacing_mm"][0] - target[0]) <= target[0] / (2 * expected[0]) + 1e-9
        files = sorted((out / info["split"] / "images").glob(f"{case}_*.png"))
        assert files and all(read_image(f, 1).shape[:2] == tuple(expected) for f in files)
        through, row, col = case_spacing(out, case)  # scores in mm use the resampled spacing
        assert (row, col) == tuple(info["stored_spacing_mm"]) and through == info["through_spacing_mm"]


def test_canvas_pads_or_crops_every_case_to_one_shape(tmp_path: Path) -> None:
    out = prepare(compose_prepare(tmp_path, *MIXED, "spacing=auto", "canvas=auto", small=False))
    m = manifest(out)
    canvas = m["spacing"]["canvas"]
    assert all(v["stored_shape"] == canvas for v in m["cases"].values())
    assert len({tuple(v["stored_spacing_mm"]) for v in m["cases"].values()}) == 3  # each case's own, near target


def test_labels_resample_by_class_fractions() -> None:
    mask = np.zeros((8, 8), np.uint8)
    mask[2:6, 2:6] = 3
    mask[0, 0] = 1  # one pixel: outvoted when halving, as area averaging does
    halved = resample_labels(mask, 4, 4)
    assert halved.tolist() == [[0, 0, 0, 0], [0, 3, 3, 0], [0, 3, 3, 0], [0, 0, 0, 0]]
    assert np.array_equal(resample_labels(halved, 8, 8)[2:6, 2:6], mask[2:6, 2:6])
    assert resample_labels(mask, 8, 8) is mask  # the same grid: untouched


def test_label_volume_round_trip_through_the_grid() -> None:
    """resample -> back (the inference path: probabilities linear, then argmax) reproduces a label slice."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:90, :120]
    mask = ((yy - 45) ** 2 + (xx - 60) ** 2 < 30**2).astype(np.uint8) + ((yy - 40) ** 2 + (xx - 70) ** 2 < 10**2)
    for target, canvas in (((0.6, 0.6), None), ((1.3, 0.9), None), ((0.8, 0.8), (70, 80))):
        grid = slice_grid(mask.shape, (0.7, 0.7), target, canvas)
        stored = grid.labels(mask)
        probs = np.eye(3, dtype=np.float32)[stored]
        back = np.argmax(grid.probabilities(probs, np.eye(3, dtype=np.float32)[0]), axis=-1)
        assert back.shape == mask.shape
        inside = np.ones_like(mask, bool) if canvas is None else np.zeros_like(mask, bool)
        if canvas is not None:  # the canvas crops 90x120 at 0.8 mm (79x105) to 70x80: the rim comes back empty
            inside[5:85, 13:107] = True
        assert (back[inside] == mask[inside]).mean() > 0.97
        assert not back[~inside].any()
    same = slice_grid(mask.shape, (0.7, 0.7), (0.7, 0.7))
    assert np.array_equal(same.labels(mask), mask) and same.stored == mask.shape
    del rng


def oracle(channels: int = 1, size: int = 32, classes: int = 3, encoding: InputEncoding = UINT8_ENCODING):
    """Softmax over -(x - c_k)^2 of the first channel's decoded value x, centres c = 0, 0.5, 1 (x4 classes)."""
    c = np.linspace(0.0, 1.0, classes).astype(np.float32)
    inputs = keras.Input((size, size, channels), dtype=encoding.dtype)
    x = keras.layers.Rescaling(encoding.scale, offset=encoding.offset)(inputs)
    conv = keras.layers.Conv2D(classes, 1, activation="softmax", dtype="float32")
    out = conv(x)
    kernel = np.zeros((1, 1, channels, classes), np.float32)
    kernel[0, 0, 0] = 200 * 2 * c
    conv.set_weights([kernel, -200 * c**2])
    return keras.Model(inputs, out)


def make_run(tmp_path: Path, model: keras.Model, root: Path, channels: int = 1) -> Path:
    run = tmp_path / "run"
    cfg = compose_config(
        [
            "model.image_height=32",
            "model.image_width=32",
            "model.num_layers=3",
            "model.num_classes=3",
            f"model.image_channels={channels}",
            "dataset=folder",
            f"dataset.root={root}",
            "dataset.class_names=[a,b,c]",
            "dataset.mask_format=index",
        ]
    )
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    (run / BEST_MODEL).parent.mkdir(parents=True)
    model.save(run / BEST_MODEL)
    return run


def phantom_volume(tmp_path: Path, fov: float | None = None) -> Path:
    from segexp.data.phantom import write_phantom_volumes

    fovs = None if fov is None else [fov]
    ((image, _),) = write_phantom_volumes(tmp_path / "vol", num_cases=1, size=48, num_slices=6, fovs_mm=fovs)
    return image


def test_infer_on_a_resampled_dataset_returns_the_input_geometry(tmp_path: Path) -> None:
    image = phantom_volume(tmp_path)
    source = nib.load(image)
    window = {"mode": "fixed", "level": 300.0, "width": 800.0}
    root = tmp_path / "data"
    root.mkdir()
    run = open_run(str(make_run(tmp_path, oracle(), root)))
    windowed = intensity.window_to_uint8(np.asarray(source.dataobj, np.float32), 300.0, 800.0) / 255.0
    expected = np.argmin(np.abs(windowed[..., None] - np.array([0.0, 0.5, 1.0])), axis=-1)
    preds = {}
    for target, canvas in ((None, None), (7.5, None), (7.5, [40, 40]), (15.0, None)):
        (root / "dataset.json").write_text(
            json.dumps({"window": window, "axis": "axial", "spacing": {"target_mm": target, "canvas": canvas}})
        )
        out = tmp_path / f"out_{target}_{canvas}"
        assert infer(run, image, out) == []
        pred = nib.load(out / "phantom001_image_pred.nii.gz")
        assert pred.shape == source.shape and np.allclose(pred.affine, source.affine)  # exactly overlays
        preds[(target, str(canvas))] = np.asarray(pred.dataobj)
    spacing = source.header.get_zooms()[0]
    assert spacing == pytest.approx(7.5)
    # 48 px at 7.5 mm is 48 px at the target 7.5 (the model's 32 px input either way): identical
    assert np.array_equal(preds[(7.5, "None")], preds[(None, "None")])
    assert (preds[(None, "None")] == expected).mean() > 0.9  # the oracle through a 48 -> 32 -> 48 resize
    assert (preds[(15.0, "None")] == expected).mean() > 0.85  # coarser: 24 px, up to 32, back to 48
    assert (preds[(7.5, "[40, 40]")] == expected).mean() > 0.7  # canvas 40 of 48: the rim predicted background


# --------------------------------------------------------------------------- intensities


def two_cases(tmp_path: Path) -> Path:
    """Three NIfTI cases: foreground (label 1) intensities known, background wild; case c is the test case."""
    folder = tmp_path / "volumes"
    folder.mkdir()
    rng = np.random.default_rng(0)
    affine = np.diag([0.8, 0.8, 2.0, 1.0])
    for name, (mean, std) in {"a": (100.0, 20.0), "b": (300.0, 50.0), "c": (2000.0, 5.0)}.items():
        label = np.zeros((24, 24, 4), np.uint8)
        label[6:18, 6:18] = 1
        hu = rng.normal(-3000.0, 900.0, label.shape)
        hu[label == 1] = rng.normal(mean, std, int(label.sum()))
        nib.save(nib.Nifti1Image(np.rint(hu).astype(np.int16), affine), str(folder / f"{name}_image.nii.gz"))
        nib.save(nib.Nifti1Image(label, affine), str(folder / f"{name}_label.nii.gz"))
    return folder


def compose_cases(tmp_path: Path, folder: Path, *overrides: str):
    return compose_prepare(
        tmp_path,
        f"volumes.source={folder}",
        "volumes.phantom=null",
        "volumes.name=cases",
        "~volumes.classes",
        "+volumes.classes={background:{labels:[0]},fg:{labels:[1],rgb:[255,0,0]}}",
        "split.cases={train:[a],valid:[b],test:[c]}",
        "empty_fraction=1",
        *overrides,
        small=False,
    )


def test_ct_zscore_statistics_come_from_the_foreground_of_the_non_test_cases(tmp_path: Path) -> None:
    folder = two_cases(tmp_path)
    out = prepare(compose_cases(tmp_path, folder, "window=ct_zscore"))
    m = manifest(out)
    fg = m["window"]["foreground"]
    values = np.concatenate(
        [
            np.asarray(nib.load(folder / f"{c}_image.nii.gz").dataobj, np.float64)[
                np.asarray(nib.load(folder / f"{c}_label.nii.gz").dataobj) == 1
            ]
            for c in ("a", "b")  # the test case c (mean 2000) never counts
        ]
    )
    assert fg["cases"] == ["a", "b"] and fg["voxels"] == values.size
    assert fg["mean"] == pytest.approx(values.mean()) and fg["std"] == pytest.approx(values.std())
    assert [fg["low"], fg["high"]] == pytest.approx(np.percentile(values, [0.5, 99.5]).tolist())
    storage = m["storage"]
    assert storage["dtype"] == "uint16" and storage["channels"] == 1 and storage["format"] == "png"
    # prepare and infer map a volume alike, and the model's input layer decodes the nnU-Net z-score
    loaded = load_case(VolumeCase("a", folder / "a_image.nii.gz", None), image_dtype=None)
    stored = normalise_volume(loaded.image, m["window"]).stored
    from segexp.evaluation.prediction import window_like_training

    assert np.array_equal(window_like_training(loaded.image, m["window"]), stored)
    png = read_image(out / "train" / "images" / "a_002.png", 1, np.uint16)
    assert np.array_equal(png[..., 0], volume_slice(stored, "axial", 2))
    encoding = InputEncoding.from_dict(storage)
    z = (np.clip(loaded.image.astype(np.float64), fg["low"], fg["high"]) - fg["mean"]) / fg["std"]
    step = (fg["high"] - fg["low"]) / 65535 / fg["std"]
    assert np.abs(encoding.decode(stored) - z).max() <= step / 2 + 1e-5
    model = build_model(
        "resunet",
        input_encoding=encoding,
        image_height=24,
        image_width=24,
        image_channels=1,
        num_classes=2,
        channels=[4, 8],
        num_res_units=1,
        norm="instance",
        norm_groups=1,
        dropout_rate=0.0,
    )
    decode = keras.Model(model.inputs, model.get_layer("rescale").output)
    batch = np.stack([volume_slice(stored, "axial", k) for k in range(4)])[..., None]
    assert np.allclose(decode.predict(batch, verbose=0)[..., 0], encoding.decode(batch)[..., 0], atol=1e-5)


def test_zscore_is_per_image() -> None:
    rng = np.random.default_rng(1)
    volume = rng.normal(400.0, 150.0, (16, 16, 6))
    low, high = normalise_volume(volume, {"mode": "zscore"}), normalise_volume(3 * volume + 50, {"mode": "zscore"})
    assert low.encoding == high.encoding == window_encoding({"mode": "zscore"})  # one map for every image
    z = (volume - volume.mean()) / volume.std()
    assert np.abs(low.encoding.decode(low.stored) - z).max() < 32 / 65535
    assert np.abs(low.stored.astype(int) - high.stored.astype(int)).max() <= 1  # invariant to the scale


def test_sixteen_bit_slices_round_trip(tmp_path: Path) -> None:
    grey = np.random.default_rng(2).integers(0, 65536, (9, 7, 1), dtype=np.uint16)
    colour = np.random.default_rng(3).integers(0, 65536, (9, 7, 3), dtype=np.uint16)
    five = np.random.default_rng(4).integers(0, 256, (9, 7, 5), dtype=np.uint8)
    for name, image in (("g.png", grey), ("c.png", colour), ("f.npy", five)):
        write_image(tmp_path / name, image)
        assert np.array_equal(read_image(tmp_path / name, image.shape[2], image.dtype), image)
    with pytest.raises(DataError, match=r"g\.png: 16-bit PNG; segexp reads 8-bit images"):
        read_image(tmp_path / "g.png", 1)
    with pytest.raises(DataError, match=r"f\.npy: 5-channel slice in a dataset of 3-channel slices"):
        read_image(tmp_path / "f.npy", 3, np.uint8)
    with pytest.raises(ValueError, match="written as .npy"):
        write_image(tmp_path / "f.png", five)


def test_stacked_windows_are_channels_through_the_loader(tmp_path: Path) -> None:
    from segexp.data.runtime.augment import Augmenter

    out = prepare(
        compose_prepare(tmp_path, "windows=[cardiac_cta,lung]", "split.ratios={train:0.6,valid:0.2,test:0.2}")
    )
    m = manifest(out)
    assert m["storage"] == {**m["storage"], "channels": 2, "format": "npy", "dtype": "uint8"}
    assert m["window"]["windows"][1] == {"name": "lung", "level": -600.0, "width": 1500.0}
    image = sorted((out / "train" / "images").glob("*.npy"))[0]
    pair = SlicePair(image.stem, image, out / "train" / "masks" / f"{image.stem}.png", image.stem.rsplit("_", 1)[0])
    decoder = MaskDecoder("rgb", 6, colours=np.asarray(list(m["rgb_map"].values()), np.uint8))
    flips = Augmenter({"h": {"_target_": "albumentations.HorizontalFlip", "p": 1.0}})
    loader = SliceLoader([pair], decoder, image_size=(16, 16), channels=2, batch_size=1, augmenter=flips)
    images, masks = loader[0]
    assert images.shape == (1, 16, 16, 2) and images.dtype == np.uint8 and masks.shape == (1, 16, 16)
    # channel 0 is the cardiac window, channel 1 the lung window: air is 0 in the first, > 0 in the second
    stored = read_image(image, 2)
    assert stored[0, 0, 0] == 0 and stored[0, 0, 1] > 0


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (("spacing=-1",), "spacing"),
        (("spacing=[1,2,3]",), "spacing"),
        (("spacing=fine",), "spacing"),
        (("spacing=null", "canvas=auto"), "canvas"),  # without spacing
        (("spacing=auto", "canvas=[0,5]"), "canvas"),
        (("windows=[nope]",), r"windows\[0\]"),
        (("windows=[cardiac_cta,{level:0,width:0}]",), r"windows\[1\]\.width"),
        (("window.mode=zscores",), "window.mode"),
        (("volumes.phantom.fovs_mm=[1000]",), "fovs_mm"),
    ],
)
def test_bad_settings_name_the_key(tmp_path: Path, overrides: tuple[str, ...], key: str) -> None:
    with pytest.raises((ConfigError, ValueError), match=key):
        prepare(compose_prepare(tmp_path, *overrides))


def test_infer_refuses_a_ct_zscore_window_without_statistics() -> None:
    from segexp.config.commands import validate_infer_config

    cfg = compose_config(["run=x", "input=y", "window=ct_zscore"], config_name="infer")
    with pytest.raises(ConfigError, match="window: ct_zscore needs the training foreground's statistics"):
        validate_infer_config(cfg)


# --------------------------------------------------------------------------- end to end


def test_stacked_windows_and_ct_zscore_train_evaluate_and_infer(tmp_path: Path, compose_train) -> None:
    """Three stacked windows (3 channels, resampled, canvas) and nnU-Net's CT z-score (16 bit): 1 epoch each at
    32x32, then segexp-evaluate and segexp-infer on a volume (its exact shape and geometry back)."""
    from segexp.evaluation.reports import evaluate_run
    from segexp.training.loop import train

    volume = phantom_volume(tmp_path / "new", fov=270.0)
    source = nib.load(volume)
    cases = ("split.ratios={train:0.6,valid:0.2,test:0.2}", "overwrite=true")
    for name, prep, channels, dtype in (
        ("stack", ("windows=[cardiac_cta,mediastinal,lung]", "spacing=auto", "canvas=auto"), 3, "uint8"),
        ("ctz", ("window=ct_zscore",), 1, "uint16"),
    ):
        out = prepare(compose_prepare(tmp_path, *cases, *prep, f"out_dir={tmp_path / name}"))
        assert manifest(out)["storage"]["channels"] == channels
        base = ("dataset=phantom_prepared", f"dataset.root={out}", *TINY_RESUNET)
        with pytest.raises(ConfigError, match=f"model.image_channels: .* carry {channels} channel"):
            train(compose_train(*base, f"model.image_channels={channels + 1}"), tmp_path / f"{name}_bad")
        run_dir = tmp_path / f"{name}_run"
        cfg = compose_train(*base, f"model.image_channels={channels}")
        (run_dir / ".hydra").mkdir(parents=True)
        (run_dir / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
        train(cfg, run_dir)
        run = open_run(str(run_dir))
        model = keras.models.load_model(run_dir / BEST_MODEL, compile=False)
        assert str(model.inputs[0].dtype) == dtype and model.input_shape[-1] == channels
        summary = evaluate_run(run, tmp_path / f"{name}_eval", log_to_run=False)
        assert summary["hd95_units"] == "mm"
        assert infer(run, volume, tmp_path / f"{name}_out") == []
        pred = nib.load(tmp_path / f"{name}_out" / "phantom001_image_pred.nii.gz")
        assert pred.shape == source.shape and np.allclose(pred.affine, source.affine)
        spacing = slice_pixel_spacing(load_case(VolumeCase("p", volume, None)).spacing, "axial")
        assert spacing == pytest.approx((270 / 48, 270 / 48), rel=0.02)


def test_the_plan_and_the_check_read_the_storage(tmp_path: Path) -> None:
    """The plan's fingerprint takes the stored channels and the resampled spacing; segexp-check reads 16 bits."""
    from segexp.config.schema import to_dict
    from segexp.data.prepare.check import check_slice_dataset
    from segexp.data.runtime.dataset import open_dataset
    from segexp.planning.fingerprint import image_channels, manifest_spacing

    ratios = "split.ratios={train:0.6,valid:0.2,test:0.2}"
    for name, overrides, channels, dtype in (
        ("ctz", ("window=ct_zscore", "spacing=5.0"), 1, "uint16"),
        ("stack", ("windows=[cardiac_cta,mediastinal,lung]",), 3, "uint8"),
    ):
        out = prepare(compose_prepare(tmp_path, ratios, *overrides, f"out_dir={tmp_path / name}"))
        cfg = compose_config([f"paths.root={tmp_path}", "dataset=phantom_prepared", f"dataset.root={out}"])
        dataset = open_dataset(cfg.dataset, 6)
        assert (dataset.encoding.dtype, dataset.channels, image_channels(dataset)) == (dtype, channels, channels)
        stored = [c["stored_spacing_mm"] for c in manifest(out)["cases"].values()]
        assert manifest_spacing(out) == pytest.approx(tuple(np.median(stored, axis=0)), abs=1e-4)
        report = check_slice_dataset(to_dict(cfg.dataset, resolve=True), channels)
        assert report.ok, report.lines()
        assert report.fingerprint.intensity.unit == dtype
    assert manifest_spacing(tmp_path / "ctz") == pytest.approx((5.0, 5.0), abs=0.2)
