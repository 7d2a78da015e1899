"""FlexUNet: the U-Net of antillia's TensorFlow-FlexUNet, rebuilt with Keras 3 layers.

``num_layers`` levels, the last one being the bottleneck. Level ``i`` (0-based) uses
filters ``base_filters * 2**i``, kernel ``max(base_kernels[k] - 2*i, 3)`` and dilation
``max(dilation[k] - i, 1)`` on each axis ``k``, and dropout ``dropout_rate * i``; the
decoder step back to level ``i`` mirrors these. The model takes raw ``uint8`` images
and rescales them by 1/255 inside the graph.
"""

# Checked against the original (TensorFlowFlexUNet.create_model): the HOCMvalves preset
# (512x512x3, 8 classes, base_filters 16, base_kernels (11, 11), 8 layers, dilation
# (1, 1)) has 126,809,320 parameters, the original's count, with the topology exactly as
# described above: the kernel clamp is per level (11, 9, 7, 5, 3, 3, 3, 3), the decoder
# convs use the mirrored level kernel/dilation, the transposed convs are always 2x2 with
# stride 2 whatever the level kernel, and the concatenation is [upsampled, skip]. With
# norm=batch, BN follows each conv (before the dropout), as the original's
# `normalization`; norm=none and residual=false is the original without it. One deliberate difference: the original unpacks
# `(k, k) = base_kernels` (likewise `dilation`), so it uses the second value on both
# axes; here each axis uses its own value. Square settings build the same model.

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import layers

from segexp.config import NORMS  # ``model.norm`` values: the layer after every hidden conv


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
    raise ValueError(f"model.norm: expected one of {list(NORMS)}, got {norm!r}")


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
) -> keras.Model:
    """Build a FlexUNet taking ``(H, W, C) uint8`` and giving ``(H, W, num_classes)`` float32.

    Level ``i``: filters ``base_filters * 2**i``, kernel ``max(base_kernels[k] - 2*i, 3)``,
    dilation ``max(dilation[k] - i, 1)``, dropout ``dropout_rate * i``. The head is a 1x1
    conv with softmax, or sigmoid when ``num_classes == 1``, kept in float32.
    ``norm`` (:data:`NORMS`) follows every hidden conv; ``residual`` makes each level a
    residual unit. ``norm="none", residual=False`` is the original's topology.
    """
    if norm not in NORMS:
        raise ValueError(f"model.norm: expected one of {list(NORMS)}, got {norm!r}")
    factor = 2 ** (num_layers - 1)
    if image_height % factor or image_width % factor:
        raise ValueError(
            f"image size {image_height}x{image_width} must be divisible by "
            f"2**(num_layers-1) = {factor} for num_layers={num_layers}"
        )

    inputs = keras.Input((image_height, image_width, image_channels), dtype="uint8", name="image")
    x = layers.Rescaling(1.0 / 255, name="rescale")(inputs)

    # Encoder; the last level is the bottleneck and is not pooled.
    skips = []
    for i in range(num_layers):
        x = _double_conv(
            x,
            base_filters * 2**i,
            level_kernel(base_kernels, i),
            level_dilation(dilation, i),
            dropout_rate * i,
            activation,
            norm,
            norm_groups,
            residual,
            f"enc{i}",
        )
        skips.append(x)
        if i < num_layers - 1:
            x = layers.MaxPooling2D((2, 2), name=f"enc{i}_pool")(x)

    # Decoder, back up from level num_layers-2 to 0.
    for i in range(num_layers - 2, -1, -1):
        filters = base_filters * 2**i
        x = layers.Conv2DTranspose(
            filters, (2, 2), strides=(2, 2), padding="same", name=f"dec{i}_up"
        )(x)
        x = layers.Concatenate(name=f"dec{i}_concat")([x, skips[i]])
        x = _double_conv(
            x,
            filters,
            level_kernel(base_kernels, i),
            level_dilation(dilation, i),
            dropout_rate * i,
            activation,
            norm,
            norm_groups,
            residual,
            f"dec{i}",
        )

    outputs = layers.Conv2D(
        num_classes,
        (1, 1),
        activation="sigmoid" if num_classes == 1 else "softmax",
        dtype="float32",
        name="head",
    )(x)
    return keras.Model(inputs=inputs, outputs=outputs, name=name)
