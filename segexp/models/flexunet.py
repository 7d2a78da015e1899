"""FlexUNet: the U-Net of antillia's TensorFlow-FlexUNet, rebuilt with Keras 3 layers.

``num_layers`` levels, the last one being the bottleneck. Level ``i`` (0-based) uses
filters ``base_filters * 2**i``, kernel ``max(base_kernels[k] - 2*i, 3)`` and dilation
``max(dilation[k] - i, 1)`` on each axis ``k``, and dropout ``dropout_rate * i``; the
decoder step back to level ``i`` mirrors these. The model takes the stored images (uint8, or
``input_encoding``'s) and decodes them inside the graph (8 bit: by 1/255).
"""

# Checked against the original (TensorFlowFlexUNet.create_model): the HOCMvalves preset
# (512x512x3, 8 classes, base_filters 16, base_kernels (11, 11), 8 layers, dilation
# (1, 1)) has 126,809,320 parameters, the original's count, with the topology exactly as
# described above: the kernel clamp is per level (11, 9, 7, 5, 3, 3, 3, 3), the decoder
# convs use the mirrored level kernel/dilation, the transposed convs are always 2x2 with
# stride 2 whatever the level kernel, and the concatenation is [upsampled, skip]. With
# norm=batch, BN follows each conv (before the dropout), as the original's
# `normalization`; norm=none and residual=false is the original without it. One deliberate
# difference: the original unpacks `(k, k) = base_kernels` (likewise `dilation`), so it uses the second value on both
# axes; here each axis uses its own value. Square settings build the same model.

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import keras
from keras import layers
from omegaconf import MISSING

from segexp.config.options import Norm, expected
from segexp.data.io.intensity import UINT8_ENCODING, InputEncoding
from segexp.models.layers import image_input, norm_layer
from segexp.models.registry import ModelParams, Network, divisible_size_rules


@dataclass
class FlexUNetParams(ModelParams):
    """``model=flexunet`` keys (``conf/model/flexunet.yaml``)."""

    base_filters: int = MISSING  # filters at level 0; level i has base_filters * 2**i
    base_kernels: list[int] = MISSING  # odd kernel [h, w] at level 0; level i uses max(k - 2i, 3)
    num_layers: int = MISSING  # levels including the bottleneck
    dilation: list[int] = MISSING  # dilation at level 0; level i uses max(d - i, 1)
    residual: bool = MISSING  # residual units instead of plain double convs
    activation: str = MISSING  # Keras activation of the hidden convs


def flexunet_rules(m: Any) -> list[str]:
    """Start-up rules of FlexUNet's keys (each problem names its ``model.<key>``)."""
    errors = []
    for key in ("base_filters", "num_layers"):
        if m[key] < 1:
            errors.append(f"model.{key}: must be >= 1, got {m[key]}")
    kernels = list(m.base_kernels)
    if len(kernels) != 2 or any(k < 1 or k % 2 == 0 for k in kernels):
        errors.append(f"model.base_kernels: expected a pair of odd positive ints like [3, 3], got {kernels}")
    dilation = list(m.dilation)
    if len(dilation) != 2 or any(d < 1 for d in dilation):
        errors.append(f"model.dilation: expected a pair of ints >= 1 like [1, 1], got {dilation}")
    if not 0.0 <= m.dropout_rate <= 1.0:
        errors.append(f"model.dropout_rate: must lie in [0, 1], got {m.dropout_rate}")
    elif m.num_layers >= 1 and m.dropout_rate * (m.num_layers - 1) >= 1.0:
        errors.append(
            f"model.dropout_rate: level i drops dropout_rate*i, which must stay below 1 for "
            f"i = num_layers-1 = {m.num_layers - 1}; got {m.dropout_rate}"
        )
    if m.norm == "group" and m.base_filters % m.norm_groups:
        errors.append(
            f"model.norm_groups: must divide model.base_filters ({m.base_filters}) so that every "
            f"level's filters split into equal groups, got {m.norm_groups}"
        )
    return errors + divisible_size_rules(m, m.num_layers, "num_layers")


def level_kernel(base_kernels: Sequence[int], i: int) -> tuple[int, ...]:
    """Kernel size at level ``i``: ``max(base_kernels[k] - 2*i, 3)`` per axis."""
    return tuple(max(int(k) - 2 * i, 3) for k in base_kernels)


def level_dilation(dilation: Sequence[int], i: int) -> tuple[int, ...]:
    """Dilation rate at level ``i``: ``max(dilation[k] - i, 1)`` per axis."""
    return tuple(max(int(d) - i, 1) for d in dilation)


def _conv(x, filters, kernel, dilation, activation, norm, groups, name, act=True):
    """conv (activation inside, as the original) -> [norm]."""
    x = layers.Conv2D(
        filters,
        kernel,
        strides=(1, 1),
        padding="same",
        dilation_rate=dilation,
        activation=activation if act else None,
        kernel_initializer="he_normal",
        name=name,
    )(x)
    normalise = norm_layer(norm, groups, f"{name}_{'bn' if norm == 'batch' else 'norm'}")
    return x if normalise is None else normalise(x)


def _double_conv(x, filters, kernel, dilation, rate, activation, norm, groups, residual, prefix):
    """conv -> [norm] -> Dropout(rate) -> conv -> [norm], as in the original.

    ``residual``: a residual unit (He et al. 2016) instead: the second conv's activation
    moves after the sum ``act(norm(conv2(...)) + shortcut(x))``, the shortcut being a 1x1
    conv when the channel count changes (as MONAI's ``ResidualUnit``).
    """
    inputs = x
    x = _conv(x, filters, kernel, dilation, activation, norm, groups, f"{prefix}_conv1")
    x = layers.Dropout(rate, name=f"{prefix}_dropout")(x)
    x = _conv(x, filters, kernel, dilation, activation, norm, groups, f"{prefix}_conv2", act=not residual)
    if not residual:
        return x
    shortcut = inputs
    if inputs.shape[-1] != filters:
        shortcut = layers.Conv2D(filters, (1, 1), kernel_initializer="he_normal", name=f"{prefix}_shortcut")(inputs)
    x = layers.Add(name=f"{prefix}_add")([x, shortcut])
    return layers.Activation(activation, name=f"{prefix}_act")(x)


def build_flexunet(
    *,
    image_height: int,
    image_width: int,
    image_channels: int,
    num_classes: int,
    base_filters: int,
    base_kernels: Sequence[int],
    num_layers: int,
    dropout_rate: float,
    dilation: Sequence[int],
    norm: str = "none",
    norm_groups: int = 8,
    residual: bool = False,
    activation: str = "relu",
    name: str = "flexunet",
    input_encoding: InputEncoding = UINT8_ENCODING,
) -> keras.Model:
    """Build a FlexUNet taking stored ``(H, W, C)`` images and giving ``(H, W, num_classes)`` float32.

    Level ``i``: filters ``base_filters * 2**i``, kernel ``max(base_kernels[k] - 2*i, 3)``,
    dilation ``max(dilation[k] - i, 1)``, dropout ``dropout_rate * i``. The head is a 1x1
    conv with softmax, or sigmoid when ``num_classes == 1``, kept in float32.
    ``norm`` (:class:`~segexp.config.options.Norm`) follows every hidden conv; ``residual`` makes each level a
    residual unit. ``norm="none", residual=False`` is the original's topology.
    """
    norm_error = expected("model.norm", norm, Norm)
    if norm_error is not None:
        raise ValueError(norm_error)
    factor = 2 ** (num_layers - 1)
    if image_height % factor or image_width % factor:
        raise ValueError(
            f"image size {image_height}x{image_width} must be divisible by "
            f"2**(num_layers-1) = {factor} for num_layers={num_layers}"
        )

    inputs, x = image_input(image_height, image_width, image_channels, input_encoding)

    # Encoder; the last level is the bottleneck and is not pooled.
    def level(x, i: int, prefix: str):
        """The double conv (or residual unit) of level ``i``."""
        return _double_conv(
            x,
            base_filters * 2**i,
            level_kernel(base_kernels, i),
            level_dilation(dilation, i),
            dropout_rate * i,
            activation,
            norm,
            norm_groups,
            residual,
            f"{prefix}{i}",
        )

    skips = []
    for i in range(num_layers):
        x = level(x, i, "enc")
        skips.append(x)
        if i < num_layers - 1:
            x = layers.MaxPooling2D((2, 2), name=f"enc{i}_pool")(x)

    # Decoder, back up from level num_layers-2 to 0.
    for i in range(num_layers - 2, -1, -1):
        filters = base_filters * 2**i
        x = layers.Conv2DTranspose(filters, (2, 2), strides=(2, 2), padding="same", name=f"dec{i}_up")(x)
        x = layers.Concatenate(name=f"dec{i}_concat")([x, skips[i]])
        x = level(x, i, "dec")

    outputs = layers.Conv2D(
        num_classes,
        (1, 1),
        activation="sigmoid" if num_classes == 1 else "softmax",
        dtype="float32",
        name="head",
    )(x)
    return keras.Model(inputs=inputs, outputs=outputs, name=name)


#: ``model.name=flexunet`` (``conf/model/flexunet.yaml``): found by :func:`segexp.models.registry.networks`.
NETWORK = Network("flexunet", build_flexunet, FlexUNetParams, flexunet_rules)
