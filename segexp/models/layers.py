"""Layers shared by the networks."""

from __future__ import annotations

from typing import Any

import keras
from keras import layers, ops

from segexp.config.options import Norm, expected
from segexp.data.io.intensity import UINT8_ENCODING, InputEncoding


def norm_layer(norm: str, groups: int, name: str) -> layers.Layer | None:
    """The normalisation layer of ``model.norm``, or None for ``none``.

    ``instance``: :class:`InstanceNormalization` (statistics per sample and channel, Ulyanov et al.
    2016, as MONAI's and nnU-Net's default); ``group``: ``groups`` groups (Wu & He 2018);
    ``batch``: BatchNormalization (statistics over the batch).
    """
    if norm == "none":
        return None
    if norm == "batch":
        return layers.BatchNormalization(name=name)
    if norm == "instance":
        return InstanceNormalization(name=name)
    if norm == "group":
        return layers.GroupNormalization(groups=groups, name=name)
    raise ValueError(expected("model.norm", norm, Norm))


@keras.saving.register_keras_serializable(package="segexp")
class InstanceNormalization(layers.Layer):
    """Instance norm (Ulyanov et al. 2016) of NHWC maps: ``y = gamma * (x - mu) / sqrt(var + epsilon) + beta``,
    ``mu`` and ``var`` (biased) per sample and channel over height and width, ``gamma``, ``beta`` per channel.

    ``epsilon`` 1e-3, Keras' ``GroupNormalization`` default, which this layer replaced and the plan's measurements
    used (PyTorch's ``InstanceNorm2d``: 1e-5). Statistics in float32 under every precision.
    Two implementations of the same formula, chosen by speed (``scripts/bench.py --only peer``): bfloat16 on
    a CPU goes through TensorFlow's fused batch-norm kernel (oneDNN) on the ``[1, H*W, 1, N*C]`` view of the
    batch, whose channels are the (sample, channel) pairs: the planned ResUNet's step 0.441 s against 0.477 s
    with Keras' ``GroupNormalization(groups=-1)`` (256x256, batch 8, Xeon with AMX, 2 cores). Elsewhere
    (float32, where XLA fuses the plain formula: 0.505 s against 0.56 s fused, and GPUs) the plain formula.
    """

    def __init__(self, epsilon: float = 1e-3, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.epsilon = float(epsilon)

    def build(self, input_shape: Any) -> None:
        channels = input_shape[-1]
        self.gamma = self.add_weight(shape=(channels,), initializer="ones", name="gamma")
        self.beta = self.add_weight(shape=(channels,), initializer="zeros", name="beta")

    def call(self, inputs: Any) -> Any:
        if keras.backend.standardize_dtype(inputs.dtype) == "bfloat16" and _fused_on_cpu():
            return _instance_norm_fused(inputs, self.gamma, self.beta, self.epsilon)
        x = ops.cast(inputs, "float32")
        mean, variance = ops.moments(x, axes=[1, 2], keepdims=True)
        scale = ops.rsqrt(variance + self.epsilon) * ops.cast(self.gamma, "float32")
        shift = ops.cast(self.beta, "float32") - mean * scale
        return ops.cast(x * scale + shift, inputs.dtype)

    def compute_output_shape(self, input_shape: Any) -> Any:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "epsilon": self.epsilon}


def _fused_on_cpu() -> bool:
    """The fused route's condition: the TensorFlow backend on a machine without GPUs."""
    if keras.backend.backend() != "tensorflow":
        return False
    import tensorflow as tf

    return not tf.config.list_logical_devices("GPU")


def _instance_norm_fused(x: Any, gamma: Any, beta: Any, epsilon: float) -> Any:
    """:class:`InstanceNormalization` by ``FusedBatchNormV3`` in training mode: batch norm of the ``[1, H*W, 1,
    N*C]`` view (one transpose each way) normalises each (sample, channel) pair over its H*W pixels; gamma and beta
    tiled over the samples. Keras has no fused instance norm, hence TensorFlow here."""
    import tensorflow as tf

    shape = tf.shape(x)
    n, h, w, c = shape[0], shape[1], shape[2], shape[3]
    view = tf.reshape(tf.transpose(tf.reshape(x, [n, h * w, c]), [1, 0, 2]), [1, h * w, 1, n * c])
    scale = tf.tile(tf.cast(gamma, tf.float32), [n])
    offset = tf.tile(tf.cast(beta, tf.float32), [n])
    y, _, _ = tf.compat.v1.nn.fused_batch_norm(view, scale, offset, epsilon=epsilon, is_training=True)
    return tf.reshape(tf.transpose(tf.reshape(y, [h * w, n, c]), [1, 0, 2]), shape)


def conv_norm_relu(x: Any, filters: int, norm: str, groups: int, name: str) -> Any:
    """3x3 conv (bias only without a norm) -> ``model.norm`` -> ReLU, the layers named ``{name}_conv|_norm|_relu``."""
    x = layers.Conv2D(filters, 3, padding="same", use_bias=norm == "none", name=f"{name}_conv")(x)
    normalise = norm_layer(norm, groups, f"{name}_norm")
    if normalise is not None:
        x = normalise(x)
    return layers.Activation("relu", name=f"{name}_relu")(x)


def double_conv(x: Any, filters: int, norm: str, groups: int, dropout: float, name: str) -> Any:
    """The U-Net level: two :func:`conv_norm_relu` (``{name}_1``, ``{name}_2``), dropout between them when > 0."""
    x = conv_norm_relu(x, filters, norm, groups, f"{name}_1")
    if dropout > 0:
        x = layers.Dropout(dropout, name=f"{name}_dropout")(x)
    return conv_norm_relu(x, filters, norm, groups, f"{name}_2")


def image_input(
    height: int, width: int, channels: int, encoding: InputEncoding = UINT8_ENCODING, gain: float = 1.0
) -> tuple[Any, Any]:
    """``(inputs, x)``: the stored image input every network takes (``encoding.dtype``: uint8, or uint16 for
    16-bit slices) and it decoded, ``x = (stored * encoding.scale + encoding.offset) * gain``
    (:class:`~segexp.data.io.intensity.InputEncoding`: 8-bit slices ``stored / 255``; decoding is part of the
    model, so loaders, evaluation and inference feed the file's pixels). ``gain`` 255 gives a backbone that
    rescales by 1/255 itself (EfficientNet) the 8-bit values. The decoding of 16-bit input stays float32
    under mixed precision (:func:`segexp.models.precision.apply_precision`): bfloat16 would round stored
    values above 256."""
    inputs = keras.Input((height, width, channels), dtype=encoding.dtype, name="image")
    rescale = layers.Rescaling(encoding.scale * gain, offset=encoding.offset * gain, name=RESCALE)
    return inputs, rescale(inputs)


#: The name of the input's decoding layer (:func:`image_input`).
RESCALE = "rescale"


def probability_head(inputs: Any, logits: Any, num_classes: int, name: str) -> keras.Model:
    """The model from ``inputs`` to class probabilities: softmax over ``logits``, or sigmoid for one class,
    in float32 under every precision (the losses and metrics read probabilities)."""
    activation = "sigmoid" if num_classes == 1 else "softmax"
    outputs = layers.Activation(activation, dtype="float32", name="head")(logits)
    return keras.Model(inputs, outputs, name=name)


def check_divisible(height: int, width: int, factor: int, what: str) -> None:
    """A builder's own guard (the config rules say it first, naming the key): the size must divide by ``factor``."""
    if height % factor or width % factor:
        raise ValueError(f"image size {height}x{width} must be divisible by {what} = {factor}")
