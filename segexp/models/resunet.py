"""ResUNet: MONAI's residual U-Net (``monai.networks.nets.UNet``) rebuilt with Keras 3 layers.

Kerfoot et al. 2018, "Left-ventricle quantification using residual U-Net" (STACOM, LNCS
11395), as implemented by MONAI's ``UNet`` (``monai/networks/nets/unet.py``) with
``num_res_units`` residual units, read at Project-MONAI/MONAI commit d388d1c6. Unlike
FlexUNet there is no full-resolution double conv: the first residual unit already
downsamples (stride 2), so a level costs about a quarter of FlexUNet's at the same width.

Structure (``channels = (c_0, ..., c_n)``, every stride 2):

- *Convolution*: 3x3 conv (bias) -> norm -> PReLU (one slope per layer, initialised 0.25)
  [-> dropout], MONAI's ``ADN`` order "NDA" with its defaults.
- *ResidualUnit(c, stride, k)*: ``k`` Convolutions (the first with the stride) plus a
  residual path: identity, a 1x1 conv when only the channels change, or a 3x3 conv with
  the stride.
- level ``i``: down = ResidualUnit(c_i, 2, num_res_units); the level below (the bottom
  ResidualUnit(c_n, 1, num_res_units) under the last) runs on it; both are concatenated;
  up = 3x3 stride-2 transposed Convolution to the level's output width (c_{i-1}, or the
  classes at the top) + ResidualUnit(1 subunit) whose last conv is plain at the top level.
- Input: the stored image decoded inside the model (``input_encoding``; 8 bit: 1/255); head: softmax over the
  classes (sigmoid for ``num_classes == 1``), float32.

Two choices differ from PyTorch's layer-for-layer: stride-2 convs use symmetric zero
padding (PyTorch ``padding=1``) rather than TensorFlow's ``same``, and the transposed conv
is cropped to PyTorch's output grid, so feature maps align as in MONAI; ``norm`` is one of
segexp's norms (:func:`segexp.models.layers.norm_layer`; MONAI's default instance norm
has no affine parameters, segexp's has).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import keras
from keras import initializers, layers
from omegaconf import MISSING

from segexp.data.io.intensity import UINT8_ENCODING, InputEncoding
from segexp.models.layers import (
    check_divisible,
    image_input,
    norm_layer,
    probability_head,
)
from segexp.models.registry import ModelParams, Network, divisible_size_rules


class _Namer:
    """Layer names ``<prefix>_<n>`` in build order (stable across rebuilds, readable in summaries)."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, kind: str) -> str:
        self.count += 1
        return f"{kind}_{self.count}"


def _convolution(
    x: Any,
    filters: int,
    stride: int,
    norm: str,
    groups: int,
    dropout: float,
    name: _Namer,
    *,
    transposed: bool = False,
    conv_only: bool = False,
) -> Any:
    """MONAI ``Convolution`` (kernel 3): (transposed) conv, then norm, dropout and PReLU unless ``conv_only``."""
    if transposed:  # PyTorch padding=1, output_padding=stride-1: the valid output less 1 first and 2-stride last
        x = layers.Conv2DTranspose(filters, 3, strides=stride, padding="valid", name=name("upconv"))(x)
        x = layers.Cropping2D(((1, 2 - stride), (1, 2 - stride)), name=name("crop"))(x)
    elif stride == 1:
        x = layers.Conv2D(filters, 3, padding="same", name=name("conv"))(x)
    else:
        x = layers.ZeroPadding2D(1, name=name("pad"))(x)
        x = layers.Conv2D(filters, 3, strides=stride, padding="valid", name=name("conv"))(x)
    if conv_only:
        return x
    # group norm: at most gcd(groups, filters) groups, so the class-count conv of the top level fits too
    normalise = norm_layer(norm, math.gcd(groups, filters), name("norm"))
    if normalise is not None:
        x = normalise(x)
    if dropout > 0:
        x = layers.Dropout(dropout, name=name("dropout"))(x)
    return layers.PReLU(alpha_initializer=initializers.Constant(0.25), shared_axes=[1, 2, 3], name=name("prelu"))(x)


def _residual_unit(
    x: Any,
    filters: int,
    stride: int,
    subunits: int,
    norm: str,
    groups: int,
    dropout: float,
    name: _Namer,
    last_conv_only: bool = False,
) -> Any:
    """MONAI ``ResidualUnit``: ``subunits`` Convolutions (the first strided) plus the residual path."""
    if stride != 1:
        residual = layers.ZeroPadding2D(1, name=name("pad"))(x)
        residual = layers.Conv2D(filters, 3, strides=stride, padding="valid", name=name("residual"))(residual)
    elif x.shape[-1] != filters:
        residual = layers.Conv2D(filters, 1, name=name("residual"))(x)
    else:
        residual = x
    y = x
    for unit in range(subunits):
        y = _convolution(
            y,
            filters,
            stride if unit == 0 else 1,
            norm,
            groups,
            dropout,
            name,
            conv_only=last_conv_only and unit == subunits - 1,
        )
    return layers.Add(name=name("add"))([y, residual])


@dataclass
class ResUNetParams(ModelParams):
    """``model=resunet`` keys (``conf/model/resunet.yaml``)."""

    channels: list[int] = MISSING  # width of each level, top to bottom
    num_res_units: int = MISSING  # convolutions per residual unit


def resunet_rules(m: Any) -> list[str]:
    """Start-up rules of ResUNet's keys (each problem names its ``model.<key>``)."""
    errors = []
    channels = list(m.channels)
    if len(channels) < 2 or min(channels) < 1:
        return [f"model.channels: expected at least two positive widths like [16, 32, 64, 128, 256], got {channels}"]
    if m.num_res_units < 1:
        errors.append(f"model.num_res_units: must be >= 1, got {m.num_res_units}")
    if not 0.0 <= m.dropout_rate < 1.0:
        errors.append(f"model.dropout_rate: must lie in [0, 1), got {m.dropout_rate}")
    if m.norm == "group" and any(c % m.norm_groups for c in channels):
        errors.append(f"model.norm_groups: must divide every width in model.channels {channels}, got {m.norm_groups}")
    return errors + divisible_size_rules(m, len(channels), "len(channels)")


def build_resunet(
    *,
    image_height: int,
    image_width: int,
    image_channels: int,
    num_classes: int,
    channels: Sequence[int] = (16, 32, 64, 128, 256),
    num_res_units: int = 2,
    norm: str = "instance",
    norm_groups: int = 8,
    dropout_rate: float = 0.0,
    name: str = "resunet",
    input_encoding: InputEncoding = UINT8_ENCODING,
) -> keras.Model:
    """Build a ResUNet taking stored ``(H, W, C)`` images and giving ``(H, W, num_classes)`` float32 probabilities.

    ``len(channels) - 1`` stride-2 levels, so height and width must be divisible by
    ``2 ** (len(channels) - 1)``; ``num_res_units`` (>= 1) Convolutions per residual unit.
    """
    if num_res_units < 1:
        raise ValueError(f"model.num_res_units: must be >= 1, got {num_res_units}")
    channels = [int(c) for c in channels]
    if len(channels) < 2:
        raise ValueError(f"model.channels: need at least two levels, got {channels}")
    check_divisible(image_height, image_width, 2 ** (len(channels) - 1), "2**(len(channels)-1)")
    namer = _Namer()
    args = (norm, norm_groups, dropout_rate, namer)

    def block(x: Any, out_channels: int, level_channels: Sequence[int], is_top: bool) -> Any:
        """MONAI ``UNet._create_block``: down, the level below (or the bottom) concatenated with it, up."""
        down = _residual_unit(x, level_channels[0], 2, num_res_units, *args)
        if len(level_channels) > 2:
            below = block(down, level_channels[0], level_channels[1:], False)
        else:
            below = _residual_unit(down, level_channels[1], 1, num_res_units, *args)  # the bottom
        x = layers.Concatenate(name=namer("concat"))([down, below])
        x = _convolution(x, out_channels, 2, *args, transposed=True)
        return _residual_unit(x, out_channels, 1, 1, *args, last_conv_only=is_top)

    inputs, x = image_input(image_height, image_width, image_channels, input_encoding)
    logits = block(x, num_classes, channels, True)
    return probability_head(inputs, logits, num_classes, name)


#: ``model.name=resunet`` (``conf/model/resunet.yaml``): found by :func:`segexp.models.registry.networks`.
NETWORK = Network("resunet", build_resunet, ResUNetParams, resunet_rules)
