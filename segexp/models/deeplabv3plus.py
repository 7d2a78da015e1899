"""DeepLabV3+: a ResNet-50 encoder, atrous spatial pyramid pooling and a light decoder.

Chen et al. 2018, "Encoder-Decoder with Atrous Separable Convolution for Semantic Image
Segmentation" (ECCV; arXiv 1802.02611), section 3 and Fig. 2. Choices:

- *Encoder*: ResNet-50 from ``keras.applications`` with ``weights=None`` (nothing is
  downloaded; He et al. 2016), its own BatchNormalization kept. Keras' ResNet-50 has no
  dilated variant, so output stride 16 (the paper's setting for training) is reached by
  taking the stage-4 output (``conv4_block6_out``, stride 16, 1024 channels) and leaving out
  stage 5 instead of dilating it: 8.6 M fewer parameters, the same resolution at the ASPP.
- *ASPP* (section 3.1, DeepLabV3's Fig. 5): a 1x1 conv, three 3x3 atrous convs at
  ``model.atrous_rates`` (the paper: 6, 12, 18 at output stride 16) and image pooling
  (global average -> 1x1 conv with bias -> ReLU -> bilinear back; no norm there, since one
  value per feature map would be zeroed by instance norm and is noisy in a small batch),
  each ``model.aspp_filters`` wide (256), the others with norm + ReLU; concatenated, a 1x1 conv,
  norm, ReLU and dropout (``model.dropout_rate``, the reference code's 0.1). Plain (not
  depthwise-separable) convs, as in the paper's ResNet-101 variant.
- *Decoder* (section 3.1): the ASPP output upsampled x4 bilinearly, concatenated with the
  stride-4 low-level features (``conv2_block3_out``) projected by a 1x1 conv to
  ``model.low_level_filters`` (48), two 3x3 convs of ``model.aspp_filters``, a 1x1 conv to
  the classes and x4 bilinear upsampling to the input size.
- ``model.norm`` applies to the ASPP and the decoder; the ResNet keeps batch norm.
- Input: the stored image decoded inside the model (``input_encoding``; 8 bit: 1/255); head: softmax over the
  classes (sigmoid for ``num_classes == 1``), float32.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import keras
from keras import layers
from omegaconf import MISSING

from segexp.data.io.intensity import UINT8_ENCODING, InputEncoding
from segexp.models.layers import (
    check_divisible,
    image_input,
    norm_layer,
    probability_head,
)
from segexp.models.registry import ModelParams, Network

#: ResNet-50 layers read by the ASPP (stride 16) and the decoder (stride 4).
HIGH_LEVEL, LOW_LEVEL = "conv4_block6_out", "conv2_block3_out"


@dataclass
class DeepLabV3PlusParams(ModelParams):
    """``model=deeplabv3plus`` keys (``conf/model/deeplabv3plus.yaml``)."""

    atrous_rates: list[int] = MISSING  # dilation of the three 3x3 ASPP convs
    aspp_filters: int = MISSING  # width of every ASPP branch and the decoder convs
    low_level_filters: int = MISSING  # width of the projected stride-4 features


def deeplabv3plus_rules(m: Any) -> list[str]:
    """Start-up rules of DeepLabV3+'s keys (each problem names its ``model.<key>``)."""
    errors = []
    rates = list(m.atrous_rates)
    if len(rates) != 3 or min(rates) < 1:
        errors.append(f"model.atrous_rates: expected three dilation rates >= 1 like [6, 12, 18], got {rates}")
    for key in ("aspp_filters", "low_level_filters"):
        if m[key] < 1:
            errors.append(f"model.{key}: must be >= 1, got {m[key]}")
    if m.norm == "group" and (m.aspp_filters % m.norm_groups or m.low_level_filters % m.norm_groups):
        errors.append(
            f"model.norm_groups: must divide model.aspp_filters and model.low_level_filters, got {m.norm_groups}"
        )
    if not 0.0 <= m.dropout_rate < 1.0:
        errors.append(f"model.dropout_rate: must lie in [0, 1), got {m.dropout_rate}")
    errors += [
        f"model.{key}: {m[key]} is not a multiple of 32 (ResNet-50 halves the image five times "
        f"before its stage-4 output at stride 16); use a multiple of 32"
        for key in ("image_height", "image_width")
        if m[key] % 32
    ]
    return errors


def _conv(x: Any, filters: int, kernel: int, norm: str, groups: int, name: str, rate: int = 1) -> Any:
    x = layers.Conv2D(
        filters, kernel, padding="same", dilation_rate=rate, use_bias=norm == "none", name=f"{name}_conv"
    )(x)
    normalise = norm_layer(norm, math.gcd(groups, filters), f"{name}_norm")
    if normalise is not None:
        x = normalise(x)
    return layers.Activation("relu", name=f"{name}_relu")(x)


def aspp(x: Any, rates: Sequence[int], filters: int, norm: str, groups: int, dropout: float) -> Any:
    """Atrous spatial pyramid pooling: 1x1, three atrous 3x3 and image pooling, fused by a 1x1 conv."""
    height, width = x.shape[1], x.shape[2]
    branches = [_conv(x, filters, 1, norm, groups, "aspp_1x1")]
    branches += [_conv(x, filters, 3, norm, groups, f"aspp_rate{r}", rate=r) for r in rates]
    pooled = layers.GlobalAveragePooling2D(keepdims=True, name="aspp_pool")(x)
    pooled = _conv(pooled, filters, 1, "none", groups, "aspp_pool")  # one value per map: instance norm would zero it
    branches.append(layers.UpSampling2D((height, width), interpolation="bilinear", name="aspp_pool_up")(pooled))
    y = layers.Concatenate(name="aspp_concat")(branches)
    y = _conv(y, filters, 1, norm, groups, "aspp_project")
    return layers.Dropout(dropout, name="aspp_dropout")(y) if dropout > 0 else y


def build_deeplabv3plus(
    *,
    image_height: int,
    image_width: int,
    image_channels: int,
    num_classes: int,
    atrous_rates: Sequence[int] = (6, 12, 18),
    aspp_filters: int = 256,
    low_level_filters: int = 48,
    norm: str = "batch",
    norm_groups: int = 8,
    dropout_rate: float = 0.1,
    name: str = "deeplabv3plus",
    input_encoding: InputEncoding = UINT8_ENCODING,
) -> keras.Model:
    """Build DeepLabV3+ taking stored ``(H, W, C)`` images and giving ``(H, W, num_classes)`` float32 probabilities.

    Height and width must be multiples of 32.
    """
    check_divisible(image_height, image_width, 32, "32")
    inputs, x = image_input(image_height, image_width, image_channels, input_encoding)
    resnet = keras.applications.ResNet50(include_top=False, weights=None, input_tensor=x)
    high, low = resnet.get_layer(HIGH_LEVEL).output, resnet.get_layer(LOW_LEVEL).output
    y = aspp(high, [int(r) for r in atrous_rates], aspp_filters, norm, norm_groups, dropout_rate)
    y = layers.UpSampling2D(4, interpolation="bilinear", name="decoder_up4")(y)
    low = _conv(low, low_level_filters, 1, norm, norm_groups, "decoder_low_level")
    y = layers.Concatenate(name="decoder_concat")([y, low])
    y = _conv(y, aspp_filters, 3, norm, norm_groups, "decoder_1")
    y = _conv(y, aspp_filters, 3, norm, norm_groups, "decoder_2")
    logits = layers.Conv2D(num_classes, 1, name="logits")(y)
    logits = layers.UpSampling2D(4, interpolation="bilinear", name="logits_up4")(logits)
    return probability_head(inputs, logits, num_classes, name)


#: ``model.name=deeplabv3plus`` (``conf/model/deeplabv3plus.yaml``): found by :func:`segexp.models.registry.networks`.
NETWORK = Network("deeplabv3plus", build_deeplabv3plus, DeepLabV3PlusParams, deeplabv3plus_rules)
