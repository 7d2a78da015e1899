"""segexp's instance norm: the formula, its fused bfloat16 route on CPUs, gradients, XLA and saving."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from segexp.models import layers as model_layers
from segexp.models.layers import InstanceNormalization


def reference(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, epsilon: float = 1e-3) -> np.ndarray:
    """Per sample and channel over H x W, biased variance (PyTorch's InstanceNorm2d, affine)."""
    mean = x.mean(axis=(1, 2), keepdims=True)
    var = x.var(axis=(1, 2), keepdims=True)
    return gamma * (x - mean) / np.sqrt(var + epsilon) + beta


def batch(shape: tuple[int, ...] = (3, 8, 6, 4), seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # each channel its own mean and spread, so statistics over the wrong axes would show
    return (rng.normal(size=shape) * rng.uniform(0.5, 4, shape[-1]) + rng.uniform(-3, 3, shape[-1])).astype("float32")


def with_affine(layer: InstanceNormalization, channels: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    gamma, beta = rng.uniform(0.5, 2, channels).astype("float32"), rng.normal(size=channels).astype("float32")
    if not layer.built:
        layer.build((None, None, None, channels))
    layer.gamma.assign(gamma)
    layer.beta.assign(beta)
    return gamma, beta


def test_float32_is_the_formula() -> None:
    x = batch()
    layer = InstanceNormalization()
    gamma, beta = with_affine(layer, x.shape[-1])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(x)), reference(x, gamma, beta), atol=2e-5)


@pytest.mark.skipif(bool(tf.config.list_logical_devices("GPU")), reason="the fused route is the CPU's")
def test_bfloat16_on_cpu_takes_the_fused_kernel_and_matches(monkeypatch) -> None:
    fused = []
    original = model_layers._instance_norm_fused
    monkeypatch.setattr(model_layers, "_instance_norm_fused", lambda *a: fused.append(1) or original(*a))
    x = batch()
    layer = InstanceNormalization(dtype="mixed_bfloat16")
    gamma, beta = with_affine(layer, x.shape[-1])
    y = layer(x)
    assert fused and keras.backend.standardize_dtype(y.dtype) == "bfloat16"
    # bfloat16 keeps 8 bits of mantissa: outputs of magnitude ~3 within 2 %
    np.testing.assert_allclose(np.asarray(tf.cast(y, tf.float32)), reference(x, gamma, beta), atol=0.05)


def test_fused_gradients_match_the_float32_formula() -> None:
    x = tf.Variable(batch())
    weights = tf.constant(np.random.default_rng(2).normal(size=x.shape).astype("float32"))
    grads = []
    for policy in ("float32", "mixed_bfloat16"):
        layer = InstanceNormalization(dtype=policy)
        with_affine(layer, x.shape[-1])
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.cast(layer(x), tf.float32) * weights)
        grads.append([np.asarray(g, dtype="float32") for g in tape.gradient(loss, [x, layer.gamma, layer.beta])])
    for exact, fused in zip(*grads):
        np.testing.assert_allclose(fused, exact, atol=0.01 * np.abs(exact).max())


def test_bfloat16_under_xla_and_a_batch_size_known_only_at_run_time() -> None:
    x = batch((5, 8, 8, 2))
    layer = InstanceNormalization(dtype="mixed_bfloat16")
    gamma, beta = with_affine(layer, 2)
    compiled = tf.function(layer.__call__, jit_compile=True, input_signature=[tf.TensorSpec((None, 8, 8, 2))])
    y = np.asarray(tf.cast(compiled(x), tf.float32))
    np.testing.assert_allclose(y, reference(x, gamma, beta), atol=0.05)


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"])
def test_saved_and_loaded_in_a_model(tmp_path, policy: str) -> None:
    inputs = keras.Input((8, 8, 3))
    outputs = InstanceNormalization(epsilon=1e-5, dtype=policy, name="norm")(inputs)
    model = keras.Model(inputs, outputs)
    with_affine(model.get_layer("norm"), 3)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert loaded.get_layer("norm").epsilon == 1e-5
    x = batch((2, 8, 8, 3))
    np.testing.assert_allclose(
        np.asarray(tf.cast(loaded(x), tf.float32)), np.asarray(tf.cast(model(x), tf.float32)), atol=1e-6
    )


def test_same_outputs_as_the_keras_group_norm_it_replaced() -> None:
    """Models trained before keep their meaning: Keras' GroupNormalization(groups=-1) with the same weights."""
    x = batch()
    ours, theirs = InstanceNormalization(), keras.layers.GroupNormalization(groups=-1)
    gamma, beta = with_affine(ours, x.shape[-1])
    theirs.build(x.shape)
    theirs.set_weights([gamma, beta])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(ours(x)), keras.ops.convert_to_numpy(theirs(x)), atol=2e-5)
