"""UNet 3+: a U-Net whose every decoder stage draws on every scale (full-scale skip connections).

Huang et al. 2020, "UNet 3+: A Full-Scale Connected UNet for Medical Image Segmentation"
(ICASSP 2020; arXiv 2004.08790), section 2, Fig. 1-2 and eq. 1. Choices, following the paper:

- *Encoder*: a plain U-Net encoder, two 3x3 convs per level, each followed by
  ``model.norm`` and ReLU, ``filters[i]`` channels at level ``i`` (``len(filters)`` levels, the
  last the bottleneck ``X_En^N``), 2x2 max pooling down.
- *Full-scale skip connections* (eq. 1): decoder stage ``i`` gathers one map from every level,
  each brought to stage ``i``'s grid and through a 3x3 conv to ``model.skip_filters`` channels
  (the paper's 64), each conv followed by norm and ReLU: the finer encoder levels ``k < i``
  by non-overlapping ``2**(i-k)`` max pooling, the same-level encoder map as it is, and the
  coarser *decoder* stages ``k > i`` (the bottleneck being the coarsest) by bilinear
  ``2**(k-i)`` upsampling. The ``len(filters)`` maps are concatenated (``len(filters) *
  skip_filters`` channels: the paper's 5 x 64 = 320) and aggregated by a 3x3 conv of the same
  width, norm and ReLU (the paper's "feature aggregation mechanism" H).
- ``model.dropout_rate``: dropout between the two convs of the bottleneck.
- Input: the stored image decoded inside the model (``input_encoding``; 8 bit: 1/255). Head: the paper's side
  output of the top stage, a 3x3 conv to ``num_classes``, softmax over the classes (sigmoid for
  ``num_classes == 1``; the original tool's version always emits one sigmoid channel), float32.
- *Full-scale deep supervision* (``model.deep_supervision``, section 2.2): every other decoder
  stage and the bottleneck get a side output, a plain 3x3 conv to ``num_classes`` then bilinear
  upsampling to the input size and softmax/sigmoid, supervised by the same ground truth. The
  training loss is ``L(main) + sum_k w_k L(side_k)`` with ``L`` the run's ``loss`` and
  ``w_k = model.aux_weights[k]`` (stage 1 first, the bottleneck last; the paper weighs them
  equally, ``w = 1``). The network is then wrapped in :class:`DeepSupervision`, whose output
  outside training is the main head alone: metrics, checkpoints, evaluation, inference and
  the MLflow model see a single-output network like every other.
- Not implemented: the paper's hybrid loss (focal + MS-SSIM + IoU; segexp's loss is
  the ``loss`` group) and its classification-guided module (an image-level organ/no-organ branch).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import keras
from keras import layers, ops
from omegaconf import MISSING

from segexp.data.io.intensity import UINT8_ENCODING, InputEncoding
from segexp.models.layers import (
    check_divisible,
    conv_norm_relu,
    double_conv,
    image_input,
    probability_head,
)
from segexp.models.registry import ModelParams, Network, divisible_size_rules


@dataclass
class UNet3PlusParams(ModelParams):
    """``model=unet3plus`` keys (``conf/model/unet3plus.yaml``)."""

    filters: list[int] = MISSING  # encoder width of each level, top to bottom (the last is the bottleneck)
    skip_filters: int = MISSING  # width of each full-scale skip conv; decoder stages have len(filters) * skip_filters
    deep_supervision: bool = MISSING  # side outputs of the other decoder stages and the bottleneck, in the loss
    aux_weights: list[float] = MISSING  # loss weight of each side output, stage 1 first, bottleneck last


def unet3plus_rules(m: Any) -> list[str]:
    """Start-up rules of UNet 3+'s keys (each problem names its ``model.<key>``)."""
    filters = list(m.filters)
    if len(filters) < 2 or min(filters) < 1:
        return [f"model.filters: expected at least two positive widths like [16, 32, 64, 128, 256], got {filters}"]
    errors = []
    if m.skip_filters < 1:
        errors.append(f"model.skip_filters: must be >= 1 (the paper's 64), got {m.skip_filters}")
    weights = list(m.aux_weights)
    if m.deep_supervision and len(weights) != len(filters) - 1:
        errors.append(
            f"model.aux_weights: expected len(filters)-1 = {len(filters) - 1} weights (one per side "
            f"output: decoder stages 1...{len(filters) - 2} and the bottleneck), got {weights}"
        )
    if any(w < 0 for w in weights):
        errors.append(f"model.aux_weights: every weight must be >= 0, got {weights}")
    if not 0.0 <= m.dropout_rate < 1.0:
        errors.append(f"model.dropout_rate: must lie in [0, 1), got {m.dropout_rate}")
    if m.norm == "group" and any(f % m.norm_groups for f in [*filters, m.skip_filters]):
        errors.append(
            f"model.norm_groups: must divide every width in model.filters {filters} and "
            f"model.skip_filters {m.skip_filters}, got {m.norm_groups}"
        )
    return errors + divisible_size_rules(m, len(filters), "len(filters)")


@keras.saving.register_keras_serializable(package="segexp")
class DeepSupervision(keras.Model):
    """A multi-output network trained on a weighted sum of losses, seen from outside as its first output.

    ``network`` gives ``[main probabilities, side logits...]``, every one full size. In
    training (``training=True``) the model returns ``(main, *side probabilities)`` and
    :meth:`compute_loss` adds ``aux_weights[k] * loss(y, side_k)`` to the compiled loss of the
    main output, ``loss`` being the compiled one (``compile(loss=...)``); the metrics read the
    main output. Otherwise (validation, ``predict``, evaluation, inference) it returns the main
    output alone, and ``input_shape``, ``output_shape``, ``inputs`` and ``outputs`` are those of
    a single-output model. The side heads' softmax/sigmoid is applied here in float32 (the
    network's side outputs are logits), so it keeps float32 under every precision.
    Saved whole (weights, side heads, optimizer) as a registered class: it reloads in safe mode.
    """

    def __init__(self, network: keras.Model, aux_weights: Sequence[float], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if len(network.outputs) != len(aux_weights) + 1:
            raise ValueError(
                f"aux_weights: expected {len(network.outputs) - 1} weights (one per side output), "
                f"got {list(aux_weights)}"
            )
        self.network = network
        self.aux_weights = [float(w) for w in aux_weights]
        self.sigmoid = network.output_shape[0][-1] == 1
        self.built = True  # the network is

    # The single-output model's view, read by evaluation, inference, the MLflow signature and apply_precision.
    @property
    def inputs(self) -> list[Any]:
        return self.network.inputs

    @property
    def outputs(self) -> list[Any]:
        return self.network.outputs[:1]

    @property
    def input_shape(self) -> tuple[int | None, ...]:
        return self.network.input_shape

    @property
    def output_shape(self) -> tuple[int | None, ...]:
        return self.network.output_shape[0]

    def call(self, inputs: Any, training: bool | None = None) -> Any:
        main, *sides = self.network(inputs, training=training)
        if not training:
            return main
        activation = ops.sigmoid if self.sigmoid else ops.softmax
        return (main, *(activation(ops.cast(side, "float32")) for side in sides))

    def side_loss(self, y: Any, side: Any, sample_weight: Any) -> Any:
        """The compiled loss of one side output (a loss given by name or as a function: its batch mean, unweighted)."""
        loss = keras.losses.get(self.loss)
        if isinstance(loss, keras.losses.Loss):
            return loss(y, side, sample_weight)
        return ops.mean(loss(y, side))

    def compute_loss(
        self, x: Any = None, y: Any = None, y_pred: Any = None, sample_weight: Any = None, training: bool = True
    ) -> Any:
        if not isinstance(y_pred, (tuple, list)):
            return super().compute_loss(x, y, y_pred, sample_weight, training)
        main, *sides = y_pred
        total = super().compute_loss(x, y, main, sample_weight, training)
        for weight, side in zip(self.aux_weights, sides):
            if weight:
                total = total + weight * self.side_loss(y, side, sample_weight)
        return total

    def compute_metrics(self, x: Any, y: Any, y_pred: Any, sample_weight: Any = None) -> dict[str, Any]:
        main = y_pred[0] if isinstance(y_pred, (tuple, list)) else y_pred
        return super().compute_metrics(x, y, main, sample_weight)

    def get_config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "trainable": self.trainable,
            "network": keras.saving.serialize_keras_object(self.network),
            "aux_weights": self.aux_weights,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any], custom_objects: Any = None) -> DeepSupervision:
        config = dict(config)
        network = keras.saving.deserialize_keras_object(config.pop("network"), custom_objects=custom_objects)
        return cls(network, **config)


def full_scale_stage(
    encoders: Sequence[Any], decoders: dict[int, Any], level: int, skip_filters: int, norm: str, groups: int
) -> Any:
    """Decoder stage ``level`` (eq. 1): every scale resampled to its grid, each through a 3x3 conv of
    ``skip_filters`` (norm, ReLU), concatenated, aggregated by a 3x3 conv of ``len(encoders) * skip_filters``.

    ``encoders``: the encoder maps of every level (the last the bottleneck); ``decoders``: the decoder
    stages coarser than ``level`` by level (the bottleneck included as its own decoder stage).
    """
    name = f"dec{level}"
    parts = []
    for k in range(len(encoders)):
        source = encoders[k] if k <= level else decoders[k]
        kind = "enc" if k <= level else "dec"
        if k < level:
            source = layers.MaxPooling2D(2 ** (level - k), name=f"{name}_from_{kind}{k}_pool")(source)
        elif k > level:
            source = layers.UpSampling2D(2 ** (k - level), interpolation="bilinear", name=f"{name}_from_{kind}{k}_up")(
                source
            )
        parts.append(conv_norm_relu(source, skip_filters, norm, groups, f"{name}_from_{kind}{k}"))
    x = layers.Concatenate(name=f"{name}_concat")(parts)
    return conv_norm_relu(x, len(encoders) * skip_filters, norm, groups, f"{name}_aggregate")


def side_output(x: Any, level: int, num_classes: int) -> Any:
    """Side output of level ``level`` (section 2.2): 3x3 conv to the classes, bilinear upsampling to full size
    (logits; :class:`DeepSupervision` applies softmax/sigmoid)."""
    x = layers.Conv2D(num_classes, 3, padding="same", name=f"side{level}_conv")(x)
    return layers.UpSampling2D(2**level, interpolation="bilinear", name=f"side{level}_up")(x)


def build_unet3plus(
    *,
    image_height: int,
    image_width: int,
    image_channels: int,
    num_classes: int,
    filters: Sequence[int] = (16, 32, 64, 128, 256),
    skip_filters: int = 16,
    deep_supervision: bool = False,
    aux_weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
    norm: str = "batch",
    norm_groups: int = 8,
    dropout_rate: float = 0.0,
    name: str = "unet3plus",
    input_encoding: InputEncoding = UINT8_ENCODING,
) -> keras.Model:
    """Build UNet 3+ taking stored ``(H, W, C)`` images and giving ``(H, W, num_classes)`` float32 probabilities.

    ``len(filters) - 1`` poolings, so height and width must be divisible by ``2 ** (len(filters) - 1)``.
    With ``deep_supervision`` the model is a :class:`DeepSupervision` over the network with side outputs.
    """
    filters = [int(f) for f in filters]
    check_divisible(image_height, image_width, 2 ** (len(filters) - 1), "2**(len(filters)-1)")
    inputs, x = image_input(image_height, image_width, image_channels, input_encoding)
    bottom = len(filters) - 1
    encoders = []
    for level, width in enumerate(filters):
        if level:
            x = layers.MaxPooling2D(2, name=f"pool{level - 1}")(x)
        dropout = dropout_rate if level == bottom else 0.0
        x = double_conv(x, width, norm, norm_groups, dropout, "bottleneck" if level == bottom else f"enc{level}")
        encoders.append(x)
    decoders = {bottom: encoders[bottom]}
    for level in reversed(range(bottom)):
        decoders[level] = full_scale_stage(encoders, decoders, level, skip_filters, norm, norm_groups)
    logits = layers.Conv2D(num_classes, 3, padding="same", name="logits")(decoders[0])
    model = probability_head(inputs, logits, num_classes, name)
    if not deep_supervision:
        return model
    sides = [side_output(decoders[level], level, num_classes) for level in range(1, bottom + 1)]
    network = keras.Model(inputs, [model.outputs[0], *sides], name=f"{name}_network")
    return DeepSupervision(network, aux_weights, name=name)


#: ``model.name=unet3plus`` (``conf/model/unet3plus.yaml``): found by :func:`segexp.models.registry.networks`.
NETWORK = Network("unet3plus", build_unet3plus, UNet3PlusParams, unet3plus_rules)
