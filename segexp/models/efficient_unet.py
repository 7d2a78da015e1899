"""EfficientUNet: an EfficientNet-B0...B7 encoder from ``keras.applications`` with a U-Net decoder.

Encoder: Tan & Le 2019, "EfficientNet: Rethinking Model Scaling for Convolutional Neural
Networks" (ICML; arXiv 1905.11946), built by ``keras.applications.EfficientNetB<k>`` with
``weights=None`` (nothing is downloaded). ``model.encoder_weights`` may name a local
``.weights.h5`` file of that encoder (e.g. saved once from ImageNet weights with
``EfficientNetB0(include_top=False, weights="imagenet").save_weights(...)`` on a machine with
internet); it is loaded into the encoder at build time and a missing file is refused at start.
Keras' EfficientNet rescales by 1/255 and normalises inside, so it receives the raw pixel
values (cast to float).

Decoder: the U-Net decoder used with EfficientNet encoders in segmentation (Ronneberger et
al. 2015; the "segmentation_models" layout): skips at strides 2, 4, 8, 16 from the encoder's
``block2a/3a/4a/6a_expand_activation`` layers and the stride-32 ``top_activation``; each of
the five decoder levels upsamples x2 (bilinear), concatenates the skip of that stride (none
at stride 1) and applies two 3x3 convs with ``model.norm`` and ReLU, widths
``model.decoder_filters`` (256, 128, 64, 32, 16). ``model.norm`` applies to the decoder; the
encoder keeps its batch norm. ``model.dropout_rate`` applies dropout to the stride-32
features. Head: 1x1 conv, softmax (sigmoid for ``num_classes == 1``), float32.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
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

#: keras.applications builders by ``model.variant``.
VARIANTS = {f"b{k}": getattr(keras.applications, f"EfficientNetB{k}") for k in range(8)}
#: Encoder layers giving the skips at strides 2, 4, 8, 16 and the stride-32 features.
SKIPS = (
    "block2a_expand_activation",
    "block3a_expand_activation",
    "block4a_expand_activation",
    "block6a_expand_activation",
)
TOP = "top_activation"


@dataclass
class EfficientUNetParams(ModelParams):
    """``model=efficient_unet`` keys (``conf/model/efficient_unet.yaml``)."""

    variant: str = MISSING  # b0 ... b7
    encoder_weights: Any = MISSING  # null, or a local .weights.h5 file of the encoder
    decoder_filters: list[int] = MISSING  # widths of the five decoder levels, stride 16 to 1


def efficient_unet_rules(m: Any) -> list[str]:
    """Start-up rules of EfficientUNet's keys (each problem names its ``model.<key>``)."""
    errors = []
    if m.variant not in VARIANTS:
        errors.append(f"model.variant: expected one of {list(VARIANTS)}, got {m.variant!r}")
    if m.encoder_weights is not None:
        path = Path(str(m.encoder_weights)).expanduser()
        if not str(path).endswith(".weights.h5"):
            errors.append(f"model.encoder_weights: expected a .weights.h5 file or null, got {str(path)!r}")
        elif not path.is_file():
            errors.append(
                f"model.encoder_weights: {path} does not exist (nothing is downloaded: save the encoder's "
                f"weights there first, or use null for random initialisation)"
            )
    filters = list(m.decoder_filters)
    if len(filters) != 5 or min(filters) < 1:
        errors.append(
            f"model.decoder_filters: expected five positive widths like [256, 128, 64, 32, 16], got {filters}"
        )
    elif m.norm == "group" and any(f % m.norm_groups for f in filters):
        errors.append(
            f"model.norm_groups: must divide every width in model.decoder_filters {filters}, got {m.norm_groups}"
        )
    if not 0.0 <= m.dropout_rate < 1.0:
        errors.append(f"model.dropout_rate: must lie in [0, 1), got {m.dropout_rate}")
    errors += [
        f"model.{key}: {m[key]} is not a multiple of 32 (the encoder halves the image five times)"
        for key in ("image_height", "image_width")
        if m[key] % 32
    ]
    return errors


def _conv(x: Any, filters: int, norm: str, groups: int, name: str) -> Any:
    x = layers.Conv2D(filters, 3, padding="same", use_bias=norm == "none", name=f"{name}_conv")(x)
    normalise = norm_layer(norm, math.gcd(groups, filters), f"{name}_norm")
    if normalise is not None:
        x = normalise(x)
    return layers.Activation("relu", name=f"{name}_relu")(x)


def build_efficient_unet(
    *,
    image_height: int,
    image_width: int,
    image_channels: int,
    num_classes: int,
    variant: str = "b0",
    encoder_weights: str | None = None,
    decoder_filters: Sequence[int] = (256, 128, 64, 32, 16),
    norm: str = "batch",
    norm_groups: int = 8,
    dropout_rate: float = 0.0,
    name: str = "efficient_unet",
    input_encoding: InputEncoding = UINT8_ENCODING,
) -> keras.Model:
    """Build an EfficientUNet taking stored ``(H, W, C)`` images, giving ``(H, W, num_classes)`` probabilities."""
    check_divisible(image_height, image_width, 32, "32")
    inputs, pixels = image_input(
        image_height, image_width, image_channels, input_encoding, gain=255.0
    )  # EfficientNet rescales itself
    encoder = VARIANTS[variant](
        include_top=False, weights=None, input_shape=(image_height, image_width, image_channels)
    )
    if encoder_weights is not None:
        encoder.load_weights(str(Path(encoder_weights).expanduser()))
    features = keras.Model(encoder.input, [encoder.get_layer(n).output for n in (*SKIPS, TOP)], name="encoder")
    *skips, x = features(pixels)
    if dropout_rate > 0:
        x = layers.Dropout(dropout_rate, name="encoder_dropout")(x)
    for level, filters in enumerate(decoder_filters):
        x = layers.UpSampling2D(2, interpolation="bilinear", name=f"up{level}")(x)
        skip = skips[len(skips) - 1 - level] if level < len(skips) else None
        if skip is not None:
            x = layers.Concatenate(name=f"skip{level}")([x, skip])
        x = _conv(x, int(filters), norm, norm_groups, f"dec{level}_1")
        x = _conv(x, int(filters), norm, norm_groups, f"dec{level}_2")
    logits = layers.Conv2D(num_classes, 1, name="logits")(x)
    return probability_head(inputs, logits, num_classes, name)


#: ``model.name=efficient_unet`` (``conf/model/efficient_unet.yaml``): found by :func:`segexp.models.registry.networks`.
NETWORK = Network("efficient_unet", build_efficient_unet, EfficientUNetParams, efficient_unet_rules)
