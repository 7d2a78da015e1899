"""Training, evaluation and prediction feed a model the same pixels (one reader, one resize, one window)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from segexp.data.io import intensity
from segexp.data.io.slices import MaskDecoder, SlicePair
from segexp.data.runtime.loader import SliceLoader
from segexp.evaluation import prediction, reports

MODEL_SIZE = 64


def write_pair(folder: Path, name: str, shape: tuple[int, ...]) -> SlicePair:
    rng = np.random.default_rng(len(name))
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    image, mask = folder / "images" / f"{name}.png", folder / "masks" / f"{name}.png"
    cv2.imwrite(str(image), rng.integers(0, 256, shape, dtype=np.uint8))
    cv2.imwrite(str(mask), rng.integers(0, 2, shape[:2], dtype=np.uint8))
    return SlicePair(name, image, mask, "case0")


@pytest.mark.parametrize(
    "shape", [(40, 48), (100, 90), (64, 64), (50, 80, 3)], ids=["enlarge", "shrink", "same", "grey-rgb"]
)
@pytest.mark.parametrize("channels", [1, 3])
def test_training_loader_evaluation_and_infer_give_identical_model_inputs(
    tmp_path: Path, monkeypatch, shape, channels
) -> None:
    if len(shape) == 3:  # a grey image stored as RGB (three equal channels)
        grey = np.random.default_rng(1).integers(0, 256, shape[:2], dtype=np.uint8)
        pair = write_pair(tmp_path, "x", shape[:2])
        cv2.imwrite(str(pair.image), np.repeat(grey[..., None], 3, axis=-1))
    else:
        pair = write_pair(tmp_path, "x", shape)
    decoder = MaskDecoder("index", 2)
    loader = SliceLoader([pair], decoder, image_size=(MODEL_SIZE, MODEL_SIZE), channels=channels, batch_size=1)
    trained_on, _ = loader.load_sample(0, 0)

    seen: list[np.ndarray] = []

    def record(model, batch, batch_size=8, flip_tta=False):
        seen.extend(np.asarray(batch))
        return np.zeros((len(batch), MODEL_SIZE, MODEL_SIZE, 2), np.float32)

    model = SimpleNamespace(
        input_shape=(None, MODEL_SIZE, MODEL_SIZE, channels), output_shape=(None, MODEL_SIZE, MODEL_SIZE, 2)
    )
    monkeypatch.setattr(prediction, "predict_batches", record)
    failures = prediction.predict_png_files(
        model,
        [pair.image],
        tmp_path / "out",
        np.array([[0, 0, 0], [255, 0, 0]], np.uint8),
        batch_size=1,
        flip_tta=False,
        large_images="resize",
        overlap=0.0,
    )
    assert failures == []
    monkeypatch.setattr(reports, "predict_batches", record)
    reports._predict_case(model, SimpleNamespace(decoder=decoder), [pair], (MODEL_SIZE, MODEL_SIZE), channels, 1, False)
    evaluated = seen[1]

    assert trained_on.dtype == np.uint8 and trained_on.shape == (MODEL_SIZE, MODEL_SIZE, channels)
    np.testing.assert_array_equal(seen[0], trained_on)  # segexp-infer
    np.testing.assert_array_equal(evaluated, trained_on)  # segexp-evaluate


def test_prepare_and_infer_window_a_volume_alike() -> None:
    volume = np.random.default_rng(0).normal(100, 400, (8, 16, 16)).astype(np.float32)
    for window in (
        {"mode": "fixed", "level": 300.0, "width": 800.0},
        {"mode": "percentile", "low_percentile": 1.0, "high_percentile": 99.0},
    ):
        prepared, _ = intensity.window_volume(volume, **window)
        np.testing.assert_array_equal(prediction.window_like_training(volume, window), prepared)


def test_prepare_and_infer_normalise_a_volume_alike() -> None:
    """The field's normalisations (16-bit z-scores, stacked windows): one function in segexp-prepare and -infer."""
    volume = np.random.default_rng(0).normal(100, 400, (8, 16, 16)).astype(np.float32)
    foreground = {"mean": 120.0, "std": 90.0, "low": -50.0, "high": 480.0}
    stack = [
        {"name": "cardiac_cta", "level": 300.0, "width": 800.0},
        {"name": "lung", "level": -600.0, "width": 1500.0},
    ]
    for window in (
        {"mode": "ct_zscore", "foreground": foreground},
        {"mode": "zscore"},
        {"mode": "stack", "windows": stack},
    ):
        prepared = intensity.normalise_volume(volume, window).stored
        np.testing.assert_array_equal(prediction.window_like_training(volume, window), prepared)


@pytest.mark.parametrize(("channels", "suffix"), [(1, ".png"), (3, ".png"), (2, ".npy")])
def test_sixteen_bit_and_stacked_slices_reach_the_model_alike(tmp_path: Path, monkeypatch, channels, suffix) -> None:
    """16-bit PNG and ``.npy`` slices: the loader, segexp-evaluate and segexp-infer feed the same stored pixels."""
    from segexp.data.io.slices import write_image

    dtype = np.uint16 if suffix == ".png" else np.uint8
    pair = write_pair(tmp_path, "x", (50, 40))
    image = np.random.default_rng(5).integers(0, np.iinfo(dtype).max, (50, 40, channels), dtype=dtype)
    stored = pair.image.with_suffix(suffix)
    pair.image.unlink()
    write_image(stored, image)
    pair = SlicePair("x", stored, pair.mask, "case0")
    decoder = MaskDecoder("index", 2)
    loader = SliceLoader(
        [pair], decoder, image_size=(MODEL_SIZE, MODEL_SIZE), channels=channels, batch_size=1, dtype=dtype
    )
    trained_on, _ = loader.load_sample(0, 0)
    seen: list[np.ndarray] = []

    def record(model, batch, batch_size=8, flip_tta=False):
        seen.extend(np.asarray(batch))
        return np.zeros((len(batch), MODEL_SIZE, MODEL_SIZE, 2), np.float32)

    model = SimpleNamespace(
        inputs=[SimpleNamespace(dtype=np.dtype(dtype).name)],
        input_shape=(None, MODEL_SIZE, MODEL_SIZE, channels),
        output_shape=(None, MODEL_SIZE, MODEL_SIZE, 2),
    )
    monkeypatch.setattr(prediction, "predict_batches", record)
    assert (
        prediction.predict_png_files(
            model,
            [stored],
            tmp_path / "out",
            np.array([[0, 0, 0], [255, 0, 0]], np.uint8),
            batch_size=1,
            flip_tta=False,
            large_images="resize",
            overlap=0.0,
        )
        == []
    )
    monkeypatch.setattr(reports, "predict_batches", record)
    size = (MODEL_SIZE, MODEL_SIZE)
    reports._predict_case(model, SimpleNamespace(decoder=decoder), [pair], size, channels, 1, False, dtype=dtype)
    assert trained_on.dtype == dtype and trained_on.shape == (MODEL_SIZE, MODEL_SIZE, channels)
    np.testing.assert_array_equal(seen[0], trained_on)  # segexp-infer
    np.testing.assert_array_equal(seen[1], trained_on)  # segexp-evaluate
