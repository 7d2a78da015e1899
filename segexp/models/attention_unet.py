"""Attention U-Net: a U-Net whose skip connections pass through additive attention gates.

Oktay et al. 2018, "Attention U-Net: Learning Where to Look for the Pancreas" (MIDL; arXiv
1804.03999), section 2 and Fig. 2. Choices, following the paper:

- *Encoder/decoder levels*: two 3x3 convs, each followed by ``model.norm`` and ReLU, with
  ``filters[i]`` channels at level ``i`` (``len(filters)`` levels incl. the bottleneck);
  2x2 max pooling down; 2x2 stride-2 transposed conv up to the level's width.
- *Attention gate* on each skip ``x`` (level ``i``) with the gating signal ``g`` (the
  coarser decoder feature, level ``i+1``): ``q = psi(relu(W_x x + W_g g + b))``, ``alpha =
  sigmoid(q)``, output ``alpha * x``. ``W_x`` is a 2x2 stride-2 conv (no bias), so the sum
  runs on ``g``'s grid as in the paper, ``W_g`` a 1x1 conv with bias, both to
  ``F_int = filters[i] // 2`` channels; ``psi`` is a 1x1 conv to **one** channel, so
  ``alpha`` is one coefficient per pixel shared by every channel of the skip (the paper's
  "single scalar attention value for each pixel vector"; the original tool's gate is per
  channel). ``alpha`` is resampled to ``x``'s grid by bilinear upsampling.
- ``model.dropout_rate``: dropout between the two convs of the bottleneck only.
- Input: the stored image decoded inside the model (``input_encoding``; 8 bit: 1/255); head: 1x1 conv, softmax
  over the classes (sigmoid for ``num_classes == 1``), float32.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import keras
from keras import layers
from omegaconf import MISSING

from segexp.data.io.intensity import UINT8_ENCODING, InputEncoding
from segexp.models.layers import (
    check_divisible,
    double_conv,
    image_input,
    probability_head,
)
from segexp.models.registry import ModelParams, Network, divisible_size_rules


@dataclass
class AttentionUNetParams(ModelParams):
    """``model=attention_unet`` keys (``conf/model/attention_unet.yaml``)."""

    filters: list[int] = MISSING  # width of each level, top to bottom (the last is the bottleneck)


def attention_unet_rules(m: Any) -> list[str]:
    """Start-up rules of the Attention U-Net's keys (each problem names its ``model.<key>``)."""
    filters = list(m.filters)
    if len(filters) < 2 or min(filters) < 2:
        return [f"model.filters: expected at least two widths >= 2 like [16, 32, 64, 128, 256], got {filters}"]
    errors = []
    if not 0.0 <= m.dropout_rate < 1.0:
        errors.append(f"model.dropout_rate: must lie in [0, 1), got {m.dropout_rate}")
    if m.norm == "group" and any(f % m.norm_groups for f in filters):
        errors.append(f"model.norm_groups: must divide every width in model.filters {filters}, got {m.norm_groups}")
    return errors + divisible_size_rules(m, len(filters), "len(filters)")


def attention_gate(x: Any, g: Any, inter_channels: int, name: str) -> Any:
    """Oktay et al.'s additive gate: ``x * sigmoid(psi(relu(W_x x + W_g g)))``, one coefficient per pixel.

    ``x``: the skip ``(H, W, C)``; ``g``: the gating signal ``(H/2, W/2, C_g)``.
    """
    theta = layers.Conv2D(inter_channels, 2, strides=2, use_bias=False, name=f"{name}_theta_x")(x)
    phi = layers.Conv2D(inter_channels, 1, name=f"{name}_phi_g")(g)
    q = layers.Activation("relu", name=f"{name}_relu")(layers.Add(name=f"{name}_add")([theta, phi]))
    alpha = layers.Conv2D(1, 1, activation="sigmoid", name=f"{name}_psi")(q)
    alpha = layers.UpSampling2D(2, interpolation="bilinear", name=f"{name}_resample")(alpha)
    return layers.Multiply(name=f"{name}_gated")([x, alpha])  # (H, W, 1) broadcasts over the channels


def build_attention_unet(
    *,
    image_height: int,
    image_width: int,
    image_channels: int,
    num_classes: int,
    filters: Sequence[int] = (16, 32, 64, 128, 256),
    norm: str = "batch",
    norm_groups: int = 8,
    dropout_rate: float = 0.0,
    name: str = "attention_unet",
    input_encoding: InputEncoding = UINT8_ENCODING,
) -> keras.Model:
    """Build an Attention U-Net taking stored ``(H, W, C)`` images, giving ``(H, W, num_classes)`` probabilities.

    ``len(filters) - 1`` poolings, so height and width must be divisible by ``2 ** (len(filters) - 1)``.
    """
    filters = [int(f) for f in filters]
    check_divisible(image_height, image_width, 2 ** (len(filters) - 1), "2**(len(filters)-1)")
    inputs, x = image_input(image_height, image_width, image_channels, input_encoding)
    skips = []
    for level, width in enumerate(filters[:-1]):
        x = double_conv(x, width, norm, norm_groups, 0.0, f"enc{level}")
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"pool{level}")(x)
    x = double_conv(x, filters[-1], norm, norm_groups, dropout_rate, "bottleneck")
    for level in reversed(range(len(filters) - 1)):
        width = filters[level]
        gated = attention_gate(skips[level], x, max(1, width // 2), f"gate{level}")
        x = layers.Conv2DTranspose(width, 2, strides=2, name=f"up{level}")(x)
        x = layers.Concatenate(name=f"concat{level}")([gated, x])
        x = double_conv(x, width, norm, norm_groups, 0.0, f"dec{level}")
    logits = layers.Conv2D(num_classes, 1, name="logits")(x)
    return probability_head(inputs, logits, num_classes, name)


#: ``model.name=attention_unet`` (``conf/model/attention_unet.yaml``): found by :func:`segexp.models.registry.networks`.
NETWORK = Network("attention_unet", build_attention_unet, AttentionUNetParams, attention_unet_rules)
