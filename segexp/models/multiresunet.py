"""MultiResUNet: a U-Net with MultiRes blocks and residual skip paths (ResPaths).

Ibtehaz & Rahman 2020, "MultiResUNet: Rethinking the U-Net architecture for multimodal
biomedical image segmentation" (Neural Networks 121; arXiv 1902.04049), sections 3.1-3.3,
Fig. 3-5 and Table 1. Choices, following the paper:

- *conv unit*: conv (no bias) -> ``model.norm`` -> activation (ReLU, or none for the 1x1
  shortcuts).
- *MultiRes block* with ``W = alpha * U`` (``alpha`` 1.67, ``U`` = ``filters[i]``, the width
  of a plain U-Net level): three chained 3x3 conv units of ``int(W/6)``, ``int(W/3)``,
  ``int(W/2)`` filters (the chain approximates 3x3, 5x5 and 7x7 receptive fields), their
  outputs concatenated and normalised, plus a 1x1 conv unit shortcut of the same total
  width, added, ReLU, normalised. (The paper's 0.167/0.333/0.5 fractions; ``int`` as in its
  reference code, so the widths match its Table 1.)
- *ResPath* at encoder level ``i`` of ``n`` pooled levels: ``n - i`` residual units (3x3 conv
  unit + 1x1 conv unit shortcut, added, ReLU, normalised) with ``filters[i]`` channels, so
  the shallow, semantically distant skips get the most processing.
- Down: 2x2 max pooling; up: 2x2 stride-2 transposed conv to ``filters[i]``, concatenated
  with the ResPath output, then a MultiRes block.
- ``model.dropout_rate``: dropout on the bottleneck block's output.
- Input: the stored image decoded inside the model (``input_encoding``; 8 bit: 1/255); head: 1x1 conv, softmax
  over the classes (sigmoid for ``num_classes == 1``), float32. (The original tool's version
  always emits one channel.)
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
    image_input,
    norm_layer,
    probability_head,
)
from segexp.models.registry import ModelParams, Network, divisible_size_rules


@dataclass
class MultiResUNetParams(ModelParams):
    """``model=multiresunet`` keys (``conf/model/multiresunet.yaml``)."""

    filters: list[int] = MISSING  # U of each level, top to bottom (a plain U-Net's widths)
    alpha: float = MISSING  # W = alpha * U: the MultiRes block's width multiplier


def multires_widths(filters: int, alpha: float) -> tuple[int, int, int]:
    """Widths of the three chained 3x3 convs of a MultiRes block: ``int(W*0.167), int(W*0.333), int(W*0.5)``."""
    w = alpha * filters
    return int(w * 0.167), int(w * 0.333), int(w * 0.5)


def multiresunet_rules(m: Any) -> list[str]:
    """Start-up rules of MultiResUNet's keys (each problem names its ``model.<key>``)."""
    filters = list(m.filters)
    if len(filters) < 2 or min(filters) < 1:
        return [f"model.filters: expected at least two positive widths like [32, 64, 128, 256, 512], got {filters}"]
    errors = []
    if m.alpha <= 0:
        errors.append(f"model.alpha: must be > 0, got {m.alpha}")
    elif min(min(multires_widths(f, m.alpha)) for f in filters) < 1:
        errors.append(
            f"model.alpha: alpha * filters / 6 must be >= 1 at every level (the block's first conv), "
            f"got alpha {m.alpha} with filters {filters}"
        )
    if not 0.0 <= m.dropout_rate < 1.0:
        errors.append(f"model.dropout_rate: must lie in [0, 1), got {m.dropout_rate}")
    if m.norm == "group":
        errors.append(
            "model.norm: group is not available for multiresunet (its block widths, e.g. int(1.67*32/6) = 8, "
            "9, 26, are not multiples of a common group count); use batch (the paper), instance or none"
        )
    return errors + divisible_size_rules(m, len(filters), "len(filters)")


class _Units:
    """Conv units named ``<kind>_<n>`` in build order, with the network's normalisation."""

    def __init__(self, norm: str, groups: int) -> None:
        self.norm, self.groups, self.count = norm, groups, 0

    def name(self, kind: str) -> str:
        self.count += 1
        return f"{kind}_{self.count}"

    def normalise(self, x: Any) -> Any:
        layer = norm_layer(self.norm, self.groups, self.name("norm"))
        return x if layer is None else layer(x)

    def conv(self, x: Any, filters: int, kernel: int, activation: str | None) -> Any:
        x = layers.Conv2D(filters, kernel, padding="same", use_bias=self.norm == "none", name=self.name("conv"))(x)
        x = self.normalise(x)
        return x if activation is None else layers.Activation(activation, name=self.name(activation))(x)

    def add_relu_norm(self, a: Any, b: Any) -> Any:
        x = layers.Add(name=self.name("add"))([a, b])
        return self.normalise(layers.Activation("relu", name=self.name("relu"))(x))


def multires_block(x: Any, filters: int, alpha: float, units: _Units) -> Any:
    """MultiRes block: three chained 3x3 conv units concatenated, plus a 1x1 shortcut (section 3.2)."""
    widths = multires_widths(filters, alpha)
    shortcut = units.conv(x, sum(widths), 1, None)
    a = units.conv(x, widths[0], 3, "relu")
    b = units.conv(a, widths[1], 3, "relu")
    c = units.conv(b, widths[2], 3, "relu")
    chain = units.normalise(layers.Concatenate(name=units.name("concat"))([a, b, c]))
    return units.add_relu_norm(shortcut, chain)


def res_path(x: Any, filters: int, length: int, units: _Units) -> Any:
    """ResPath: ``length`` residual units of a 3x3 conv unit and a 1x1 shortcut (section 3.3)."""
    for _ in range(length):
        shortcut = units.conv(x, filters, 1, None)
        x = units.add_relu_norm(shortcut, units.conv(x, filters, 3, "relu"))
    return x


def build_multiresunet(
    *,
    image_height: int,
    image_width: int,
    image_channels: int,
    num_classes: int,
    filters: Sequence[int] = (32, 64, 128, 256, 512),
    alpha: float = 1.67,
    norm: str = "batch",
    norm_groups: int = 8,
    dropout_rate: float = 0.0,
    name: str = "multiresunet",
    input_encoding: InputEncoding = UINT8_ENCODING,
) -> keras.Model:
    """Build a MultiResUNet taking stored ``(H, W, C)`` images and giving ``(H, W, num_classes)`` float32 probabilities.

    ``len(filters) - 1`` poolings, so height and width must be divisible by ``2 ** (len(filters) - 1)``.
    """
    filters = [int(f) for f in filters]
    check_divisible(image_height, image_width, 2 ** (len(filters) - 1), "2**(len(filters)-1)")
    units = _Units(norm, norm_groups)
    inputs, x = image_input(image_height, image_width, image_channels, input_encoding)
    skips = []
    levels = len(filters) - 1
    for level in range(levels):
        x = multires_block(x, filters[level], alpha, units)
        skips.append(res_path(x, filters[level], levels - level, units))
        x = layers.MaxPooling2D(2, name=f"pool{level}")(x)
    x = multires_block(x, filters[-1], alpha, units)
    if dropout_rate > 0:
        x = layers.Dropout(dropout_rate, name="bottleneck_dropout")(x)
    for level in reversed(range(levels)):
        x = layers.Conv2DTranspose(filters[level], 2, strides=2, name=f"up{level}")(x)
        x = layers.Concatenate(name=f"skip{level}")([x, skips[level]])
        x = multires_block(x, filters[level], alpha, units)
    logits = layers.Conv2D(num_classes, 1, name="logits")(x)
    return probability_head(inputs, logits, num_classes, name)


#: ``model.name=multiresunet`` (``conf/model/multiresunet.yaml``): found by :func:`segexp.models.registry.networks`.
NETWORK = Network("multiresunet", build_multiresunet, MultiResUNetParams, multiresunet_rules)
