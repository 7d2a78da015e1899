"""Tests for segexp.evaluation.inference: batched prediction, flip TTA, sliding-window blending."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from segexp.evaluation.inference import (
    gaussian_importance_map,
    predict_batches,
    predict_images,
    probabilities_to_classes,
    sliding_window_predict,
    tile_origins,
)
from segexp.models.flexunet import build_flexunet

TINY = dict(
    image_height=32,
    image_width=32,
    image_channels=1,
    num_classes=3,
    base_filters=4,
    base_kernels=[3, 3],
    num_layers=3,
    dropout_rate=0.0,
    dilation=[1, 1],
)


@pytest.fixture(scope="module")
def unet() -> keras.Model:
    keras.utils.set_random_seed(0)
    return build_flexunet(**TINY)


def local_model(height: int | None, width: int | None, layers_=None, num_classes: int = 3):
    """A per-pixel model: uint8 -> Rescaling -> 1x1 Conv2D -> softmax (layers shared if given)."""
    if layers_ is None:
        layers_ = (
            keras.layers.Rescaling(1.0 / 255),
            keras.layers.Conv2D(num_classes, 1, activation="softmax", dtype="float32"),
        )
    inputs = keras.Input((height, width, 1), dtype="uint8")
    x = inputs
    for layer in layers_:
        x = layer(x)
    return keras.Model(inputs, x), layers_


def random_images(n: int, h: int, w: int, c: int = 1, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, c), dtype=np.uint8)


def test_probabilities_to_classes():
    probs = np.array([[[0.1, 0.7, 0.2], [0.5, 0.2, 0.3]]], np.float32)
    np.testing.assert_array_equal(probabilities_to_classes(probs), [[1, 0]])
    assert probabilities_to_classes(probs).dtype == np.uint8
    sig = np.array([[[0.2], [0.5], [0.9]]], np.float32)
    np.testing.assert_array_equal(probabilities_to_classes(sig), [[0, 1, 1]])


@pytest.mark.parametrize("n", [8, 11])  # full batches; a partial last batch
def test_batched_equals_one_by_one(unet, n):
    images = random_images(n, 32, 32)
    batched = predict_batches(unet, images, batch_size=4)
    single = np.concatenate([unet.predict(images[i : i + 1], verbose=0) for i in range(n)])
    assert batched.shape == (n, 32, 32, 3) and batched.dtype == np.float32
    np.testing.assert_allclose(batched, single, atol=1e-5)
    np.testing.assert_allclose(batched.sum(-1), 1.0, atol=1e-5)


def test_batch_smaller_than_batch_size_and_empty(unet):
    images = random_images(3, 32, 32, seed=1)
    np.testing.assert_allclose(
        predict_batches(unet, images, batch_size=8), predict_batches(unet, images, batch_size=1), atol=1e-5
    )
    assert predict_batches(unet, images[:0]).shape == (0, 32, 32, 3)


def test_flip_tta_is_the_average_of_the_flipped_predictions(unet):
    images = random_images(5, 32, 32, seed=2)
    tta = predict_batches(unet, images, batch_size=4, flip_tta=True)
    manual = np.mean(
        [
            unet.predict(images, verbose=0),
            unet.predict(images[:, :, ::-1], verbose=0)[:, :, ::-1],
            unet.predict(images[:, ::-1, :], verbose=0)[:, ::-1, :],
            unet.predict(images[:, ::-1, ::-1], verbose=0)[:, ::-1, ::-1],
        ],
        axis=0,
    )
    np.testing.assert_allclose(tta, manual, atol=1e-5)
    # The tiny U-Net is not flip-equivariant, so TTA really changes something.
    assert np.abs(tta - predict_batches(unet, images)).max() > 1e-4


def test_flip_tta_on_a_flip_symmetric_model_is_the_plain_prediction():
    keras.utils.set_random_seed(1)
    model, _ = local_model(16, 16)
    images = random_images(3, 16, 16, seed=3)
    np.testing.assert_array_equal(
        predict_batches(model, images, batch_size=2, flip_tta=True), predict_batches(model, images, batch_size=2)
    )


@pytest.mark.parametrize("tile", [(32, 32), (31, 20), (1, 7)])
def test_gaussian_importance_map(tile):
    g = gaussian_importance_map(tile)
    assert g.shape == tile and g.dtype == np.float32
    assert g.max() == pytest.approx(1.0) and g.min() > 0
    np.testing.assert_array_equal(g, g[::-1, :])
    np.testing.assert_array_equal(g, g[:, ::-1])
    if tile == (32, 32):
        np.testing.assert_array_equal(g, g.T)
        assert g[0, 0] < 1e-3  # borders weigh little
    # A tiny sigma underflows at the borders: the floor keeps every weight > 0.
    assert gaussian_importance_map((64, 64), sigma_scale=0.01).min() > 0


@pytest.mark.parametrize(
    "size,tile,overlap", [(80, 32, 0.5), (56, 32, 0.5), (32, 32, 0.5), (20, 32, 0.5), (100, 32, 0.0), (97, 16, 0.25)]
)
def test_tile_origins_cover_and_are_flush(size, tile, overlap):
    origins = tile_origins(size, tile, overlap)
    if size <= tile:
        assert origins == [0]
        return
    assert origins[0] == 0 and origins[-1] == size - tile
    assert origins == sorted(set(origins))
    steps = np.diff(origins)
    assert steps.max() <= max(1, round(tile * (1 - overlap)))  # at least the requested overlap
    covered = np.zeros(size, bool)
    for o in origins:
        covered[o : o + tile] = True
    assert covered.all()


def test_tile_origins_examples():
    assert tile_origins(80, 32, 0.5) == [0, 16, 32, 48]
    assert tile_origins(64, 32, 0.0) == [0, 32]
    with pytest.raises(ValueError):
        tile_origins(64, 32, 1.0)


def test_sliding_window_on_the_model_size_equals_whole_image_prediction(unet):
    image = random_images(1, 32, 32, seed=4)[0]
    tiled = sliding_window_predict(unet, image, batch_size=4)
    whole = predict_batches(unet, image[None], batch_size=4)[0]
    np.testing.assert_allclose(tiled, whole, rtol=0, atol=1e-6)


def test_sliding_window_on_a_large_image(unet):
    image = random_images(1, 80, 56, seed=5)[0]
    probs = sliding_window_predict(unet, image, overlap=0.5, batch_size=4)
    assert probs.shape == (80, 56, 3) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    assert np.all(probs >= 0)


def test_sliding_window_with_a_local_model_is_exact():
    """Per-pixel model: every tile predicts the same value for a pixel, so blending must
    give the direct prediction (to float rounding: TensorFlow may split the sums across
    threads differently for a 16x16 and an 80x56 input); a misplaced tile or weight would show."""
    keras.utils.set_random_seed(2)
    small, shared = local_model(16, 16)
    image = random_images(1, 80, 56, seed=6)[0]
    big, _ = local_model(80, 56, shared)
    direct = big.predict_on_batch(image[None])[0]
    for overlap in (0.5, 0.3, 0.0):
        tiled = sliding_window_predict(small, image, overlap=overlap, batch_size=3)
        np.testing.assert_allclose(tiled, direct, rtol=0, atol=1e-6)
    tiled = sliding_window_predict(small, image, overlap=0.5, batch_size=3, flip_tta=True)
    np.testing.assert_allclose(tiled, direct, rtol=0, atol=1e-6)


def test_small_image_is_padded_and_cropped_back(unet):
    keras.utils.set_random_seed(3)
    small_image = random_images(1, 20, 20, seed=7)[0]
    probs = sliding_window_predict(unet, small_image)
    assert probs.shape == (20, 20, 3)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    # The padding is centred: same as predicting the image padded by 6 on each side.
    padded = np.zeros((32, 32, 1), np.uint8)
    padded[6:26, 6:26] = small_image
    np.testing.assert_allclose(probs, predict_batches(unet, padded[None])[0][6:26, 6:26], atol=1e-6)
    # And with a local model, exact per-pixel agreement.
    local, shared = local_model(32, 32)
    direct, _ = local_model(20, 20, shared)
    np.testing.assert_array_equal(
        sliding_window_predict(local, small_image), direct.predict_on_batch(small_image[None])[0]
    )


def test_predict_images_mixes_fast_path_and_tiles(unet):
    images = [
        random_images(1, 32, 32, seed=8)[0],
        random_images(1, 80, 56, seed=9)[0],
        random_images(1, 32, 32, seed=10)[0][..., 0],  # (H, W) grey is accepted
        random_images(1, 20, 20, seed=11)[0],
    ]
    out = predict_images(unet, images, batch_size=4)
    assert [p.shape for p in out] == [(32, 32, 3), (80, 56, 3), (32, 32, 3), (20, 20, 3)]
    both = predict_batches(unet, np.stack([images[0], images[2][..., None]]), batch_size=4)
    np.testing.assert_allclose(out[0], both[0], atol=1e-6)
    np.testing.assert_allclose(out[2], both[1], atol=1e-6)
    np.testing.assert_allclose(out[1], sliding_window_predict(unet, images[1], batch_size=4), atol=1e-6)
    assert predict_images(unet, []) == []


def test_predict_images_errors(unet):
    good = random_images(1, 32, 32)[0]
    with pytest.raises(ValueError, match=r"image 1: got 3 channels, the model expects 1"):
        predict_images(unet, [good, np.zeros((32, 32, 3), np.uint8)])
    with pytest.raises(ValueError, match=r"image 2: size 40x32 differs from the model input size 32x32"):
        predict_images(unet, [good, good, np.zeros((40, 32, 1), np.uint8)], tiled=False)
    with pytest.raises(ValueError, match="tiled"):
        predict_images(unet, [good], tiled="yes")
    with pytest.raises(ValueError, match="do not fit the model input"):
        predict_batches(unet, np.zeros((2, 40, 32, 1), np.uint8))
    with pytest.raises(TypeError, match="uint8"):
        predict_batches(unet, np.zeros((2, 32, 32, 1), np.float32))


def test_predict_function_is_traced_once():
    """Fixed batch shape: any number of images, in any number of calls, is one trace."""
    keras.utils.set_random_seed(4)
    model = build_flexunet(**TINY)
    for n in (3, 11, 5, 1):
        predict_batches(model, random_images(n, 32, 32, seed=n), batch_size=4)
    sliding_window_predict(model, random_images(1, 80, 56, seed=12)[0], batch_size=4, flip_tta=True)
    count = getattr(model.predict_function, "experimental_get_tracing_count", None)
    if count is None:
        pytest.skip("tracing count is only exposed by tf.function (TensorFlow backend)")
    assert count() == 1
