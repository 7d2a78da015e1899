"""Layers shared by the networks."""

from __future__ import annotations

from typing import Any

import keras
from keras import layers

from segexp.config.options import Norm, expected
from segexp.data.io.intensity import UINT8_ENCODING, InputEncoding


def norm_layer(norm: str, groups: int, name: str) -> layers.Layer | None:
    """The normalisation layer of ``model.norm``, or None for ``none``.

    ``instance``: ``GroupNormalization(groups=-1)`` (one group per channel, i.e. instance
    norm, Ulyanov et al. 2016, as MONAI's and nnU-Net's default); ``group``: ``groups`` groups
    (Wu & He 2018); ``batch``: BatchNormalization (statistics over the batch).
    """
    if norm == "none":
        return None
    if norm == "batch":
        return layers.BatchNormalization(name=name)
    if norm == "instance":
        return layers.GroupNormalization(groups=-1, name=name)
    if norm == "group":
        return layers.GroupNormalization(groups=groups, name=name)
    raise ValueError(expected("model.norm", norm, Norm))


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
