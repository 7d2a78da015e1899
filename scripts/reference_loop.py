#!/usr/bin/env python
"""A plain Keras 3 reference for segexp: MONAI's UNet recipe, trained for a fixed wall time.

    python scripts/reference_loop.py --seconds 300 --split test --out outputs/reference experiment=hvsmr_mini

The trailing arguments are ``segexp-train`` overrides. They are used only to *read the
data the way segexp does*: the dataset (``open_dataset``: pairs per split, mask decoder)
and the input size and channels (``model.image_height``, ``model.image_width``,
``model.image_channels``), read through :func:`segexp.data.slices.load_pair`, so both
systems see identical pixels. Nothing of segexp's training recipe (FlexUNet, its loss,
callbacks, loader, augmentation) is used; ``seed`` is.

The recipe, standard choices written out as a reference:

* **Network**: ``monai.networks.nets.UNet(spatial_dims=2, channels=(16, 32, 64, 128, 256),
  strides=(2, 2, 2, 2), num_res_units=2)`` with its defaults (kernel 3, up-kernel 3,
  ``act=PReLU``, ``norm=INSTANCE``, ``adn_ordering="NDA"``, no dropout, conv bias),
  replicated layer by layer from MONAI's ``monai/networks/nets/unet.py`` (``UNet._create_block``,
  ``_get_down_layer``, ``_get_bottom_layer``, ``_get_up_layer``) and
  ``monai/networks/blocks/convolutions.py`` (``Convolution``, ``ResidualUnit``), read at
  Project-MONAI/MONAI commit d388d1c6fec8cb3a0eebee5b5a0b9776ca59ca83:

  - a *Convolution* is conv -> instance norm -> PReLU. Instance norm is PyTorch's
    ``InstanceNorm2d`` default, without affine parameters, eps 1e-5:
    ``keras.layers.GroupNormalization(groups=-1, center=False, scale=False, epsilon=1e-5)``;
    PReLU is ``nn.PReLU()``: one slope for the whole layer, initialised to 0.25.
    A stride-2 conv pads 1 on every side (PyTorch ``padding=1``), not TensorFlow's
    asymmetric ``same``; the stride-2 transposed conv (``padding=1, output_padding=1``) is a
    ``valid`` ``Conv2DTranspose`` cropped by one row and column at the start: the same
    output grid as PyTorch's.
  - a *ResidualUnit* (``subunits`` Convolutions, the first with the stride) adds a residual
    path: identity, a 1x1 conv when only the channels change, or a 3x3 conv with the stride.
  - level ``i`` (top first): down = ResidualUnit(stride 2, 2 subunits); the level below it
    (or, at the last level, the bottom ResidualUnit(stride 1, 2 subunits) to 256 channels)
    runs on the result, and the two are concatenated (MONAI's ``SkipConnection``, ``cat``);
    up = transposed Convolution(stride 2) + ResidualUnit(1 subunit), whose last conv is a
    plain conv at the top level (the output logits). Four stride-2 levels: the input side
    must be a multiple of 16.

  Input: the raw uint8 image rescaled by 1/255 (a layer of the model, as in segexp, so
  segexp's evaluation feeds it unchanged); head: softmax over the classes (float32).
* **Loss**: MONAI ``DiceCELoss(to_onehot_y=True, softmax=True)`` with its defaults: soft Dice
  with the background included, per sample and class (``batch=False``), smooth 1e-5 in
  numerator and denominator, averaged over samples and classes, plus the mean pixel
  cross-entropy, weights 1 and 1.
* **Optimiser**: Adam, learning rate 1e-3, constant.
* **Augmentation**: random horizontal and vertical flips, each with probability 0.5.
* **Loop**: batch 8 (the last batch of an epoch may be smaller); one epoch = one shuffled
  pass over the training slices, held in memory; after each epoch the foreground Dice on
  the validation split (per case on the stacked slices, mean over cases per class, then
  over classes, background excluded) and the best weights are kept; training stops after
  the epoch at which the wall-time budget (``--seconds``, counted from the first step and
  including validation) is reached. Seeded (``seed`` of the config).

Outputs in ``--out``: ``reference.json`` (epochs, optimiser steps, training seconds, the
per-epoch history, the parameter count) and ``evaluation/`` with segexp's reports of the
best weights on ``--split`` (:func:`segexp.evaluation.reports.evaluate_split`, :func:`write_reports`).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from bench import compose

MONAI_COMMIT = "d388d1c6fec8cb3a0eebee5b5a0b9776ca59ca83"
CHANNELS = (16, 32, 64, 128, 256)
NUM_RES_UNITS = 2
LEARNING_RATE = 1e-3
BATCH_SIZE = 8
SMOOTH = 1e-5  # MONAI DiceLoss smooth_nr = smooth_dr


# ----------------------------------------------------------------------------- network
# Written apart from segexp/models/resunet.py on purpose: a reference shares no code with the
# system it is compared with (and it keeps MONAI's non-affine instance norm exactly).


def _conv(x: Any, filters: int, stride: int, *, transposed: bool = False, conv_only: bool = False) -> Any:
    """MONAI ``Convolution`` (kernel 3): (transposed) conv, then instance norm and PReLU unless ``conv_only``."""
    from keras import initializers, layers

    if transposed:  # PyTorch padding=1, output_padding=stride-1: the valid output, less 1 first and 2-stride last
        x = layers.Conv2DTranspose(filters, 3, strides=stride, padding="valid")(x)
        x = layers.Cropping2D(((1, 2 - stride), (1, 2 - stride)))(x)
    elif stride == 1:
        x = layers.Conv2D(filters, 3, padding="same")(x)
    else:
        x = layers.Conv2D(filters, 3, strides=stride, padding="valid")(layers.ZeroPadding2D(1)(x))
    if conv_only:
        return x
    x = layers.GroupNormalization(groups=-1, center=False, scale=False, epsilon=1e-5)(x)
    return layers.PReLU(alpha_initializer=initializers.Constant(0.25), shared_axes=[1, 2, 3])(x)


def _residual_unit(x: Any, filters: int, stride: int, subunits: int, last_conv_only: bool = False) -> Any:
    """MONAI ``ResidualUnit``: ``subunits`` Convolutions (the first strided) plus the residual path."""
    from keras import layers

    in_channels = x.shape[-1]
    if stride != 1:
        residual = layers.Conv2D(filters, 3, strides=stride, padding="valid")(layers.ZeroPadding2D(1)(x))
    elif in_channels != filters:
        residual = layers.Conv2D(filters, 1)(x)
    else:
        residual = x
    y = x
    for unit in range(max(1, subunits)):
        y = _conv(y, filters, stride if unit == 0 else 1, conv_only=last_conv_only and unit == subunits - 1)
    return layers.Add()([y, residual])


def _block(x: Any, out_channels: int, channels: Sequence[int], is_top: bool) -> Any:
    """MONAI ``UNet._create_block``: down, the level below (or the bottom) concatenated with it, up."""
    from keras import layers

    down = _residual_unit(x, channels[0], 2, NUM_RES_UNITS)
    if len(channels) > 2:
        below = _block(down, channels[0], channels[1:], False)
    else:
        below = _residual_unit(down, channels[1], 1, NUM_RES_UNITS)  # the bottom layer
    x = layers.Concatenate()([down, below])  # SkipConnection(mode="cat"): [input, submodule(input)]
    x = _conv(x, out_channels, 2, transposed=True)
    return _residual_unit(x, out_channels, 1, 1, last_conv_only=is_top)


def build_reference_unet(height: int, width: int, channels: int, num_classes: int) -> Any:
    """MONAI's 2D UNet (16-256 channels, 2 residual units) for ``(H, W, C) uint8`` -> softmax ``(H, W, K)``."""
    import keras
    from keras import layers

    depth = 2 ** (len(CHANNELS) - 1)
    if height % depth or width % depth:
        raise ValueError(f"the reference UNet needs a size divisible by {depth}, got {height}x{width}")
    inputs = keras.Input((height, width, channels), dtype="uint8", name="image")
    x = layers.Rescaling(1.0 / 255, name="rescale")(inputs)
    logits = _block(x, num_classes, CHANNELS, True)
    outputs = layers.Activation("softmax", dtype="float32", name="probabilities")(logits)
    return keras.Model(inputs, outputs, name="reference_monai_unet")


# ----------------------------------------------------------------------------- loss


def dice_ce_loss(y_true: Any, y_pred: Any) -> Any:
    """MONAI ``DiceCELoss(to_onehot_y=True, softmax=True)`` defaults, per sample: Dice (with background) + CE."""
    from keras import ops

    num_classes = y_pred.shape[-1]
    onehot = ops.one_hot(ops.cast(y_true, "int32"), num_classes, dtype=y_pred.dtype)
    intersection = ops.sum(onehot * y_pred, axis=(1, 2))
    denominator = ops.sum(onehot, axis=(1, 2)) + ops.sum(y_pred, axis=(1, 2))
    dice = 1.0 - (2.0 * intersection + SMOOTH) / (denominator + SMOOTH)  # (B, K)
    log_p = ops.log(ops.clip(y_pred, 1e-7, 1.0))
    cross_entropy = -ops.mean(ops.sum(onehot * log_p, axis=-1), axis=(1, 2))  # (B,)
    return ops.mean(dice, axis=-1) + cross_entropy


# ----------------------------------------------------------------------------- data


@dataclass
class Split:
    """A split held in memory: uint8 images ``(N, H, W, C)``, class-index masks ``(N, H, W)``, case per slice."""

    images: np.ndarray
    masks: np.ndarray
    cases: list[str]


def load_split(dataset: Any, split: str, height: int, width: int, channels: int) -> Split:
    """Every slice of ``split``, read and resized by segexp's own reader (:func:`load_pair`)."""
    from segexp.data.slices import load_pair

    pairs = dataset.pairs[split]
    loaded = [load_pair(p, dataset.decoder, channels, height, width) for p in pairs]
    return Split(np.stack([im for im, _ in loaded]), np.stack([m for _, m in loaded]), [p.case for p in pairs])


def random_flips(images: np.ndarray, masks: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Flip each sample left-right and (independently) up-down with probability 0.5."""
    images, masks = images.copy(), masks.copy()
    for i in range(len(images)):
        if rng.random() < 0.5:
            images[i], masks[i] = images[i][:, ::-1], masks[i][:, ::-1]
        if rng.random() < 0.5:
            images[i], masks[i] = images[i][::-1], masks[i][::-1]
    return images, masks


def foreground_dice(truth: np.ndarray, pred: np.ndarray, cases: Sequence[str], num_classes: int) -> float:
    """Hard Dice per case (stacked slices) and foreground class; mean over cases per class, then over classes.

    A class absent from truth and prediction of a case is left out for that case (NaN), as in segexp's scorer.
    Only the confusion counts: :func:`segexp.evaluation.scoring.score_classes` also computes HD95, which takes
    seconds per epoch on the noisy predictions of the first epochs (time taken from the budget).
    """
    cases = np.asarray(cases)
    per_class: list[list[float]] = [[] for _ in range(num_classes)]
    for case in np.unique(cases):
        t, p = truth[cases == case].ravel(), pred[cases == case].ravel()
        confusion = np.bincount(t.astype(np.intp) * num_classes + p, minlength=num_classes**2).reshape(num_classes, -1)
        for k in range(1, num_classes):
            denominator = confusion[k].sum() + confusion[:, k].sum()
            if denominator:
                per_class[k].append(2.0 * confusion[k, k] / denominator)
    means = [np.mean(v) for v in per_class[1:] if v]
    return float(np.mean(means)) if means else float("nan")


# ----------------------------------------------------------------------------- loop


@dataclass
class ReferenceResult:
    """What the loop did: epochs, optimiser steps, seconds, the best epoch and the per-epoch history."""

    epochs: int = 0
    steps: int = 0
    train_seconds: float = 0.0
    budget_seconds: float = 0.0
    best_epoch: int = 0
    best_val_dice_fg_mean: float = float("nan")
    history: list[dict[str, float]] = field(default_factory=list)


def train_reference(model: Any, train: Split, valid: Split, budget_s: float, *, seed: int,
                    batch_size: int = BATCH_SIZE, max_epochs: int | None = None) -> ReferenceResult:
    """Adam 1e-3, DiceCE, flips; keep the best validation weights; stop after the epoch reaching ``budget_s``."""
    import keras

    from segexp.evaluation.inference import predict_batches, probabilities_to_classes

    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    model.compile(optimizer=keras.optimizers.Adam(LEARNING_RATE), loss=dice_ce_loss)
    num_classes = model.output_shape[-1]
    result = ReferenceResult(budget_seconds=float(budget_s))
    best_weights = None
    start = time.perf_counter()
    while max_epochs is None or result.epochs < max_epochs:
        order = rng.permutation(len(train.images))
        losses = []
        for first in range(0, len(order), batch_size):
            batch = order[first : first + batch_size]
            x, y = random_flips(train.images[batch], train.masks[batch], rng)
            losses.append(float(model.train_on_batch(x, y)))
            result.steps += 1
        result.epochs += 1
        pred = probabilities_to_classes(predict_batches(model, valid.images, batch_size=batch_size))
        dice = foreground_dice(valid.masks, pred, valid.cases, num_classes)
        elapsed = time.perf_counter() - start
        result.history.append({"epoch": result.epochs, "loss": float(np.mean(losses)),
                               "val_dice_fg_mean": dice, "seconds": elapsed})
        print(f"epoch {result.epochs}: loss {np.mean(losses):.4f}, val foreground Dice {dice:.4f}, {elapsed:.1f} s",
              flush=True)
        if best_weights is None or (math.isfinite(dice) and not dice <= result.best_val_dice_fg_mean):
            best_weights, result.best_epoch, result.best_val_dice_fg_mean = model.get_weights(), result.epochs, dice
        if elapsed >= budget_s:
            break
    result.train_seconds = time.perf_counter() - start
    model.set_weights(best_weights)
    return result


def run(overrides: Sequence[str], seconds: float, out_dir: Path, split: str = "test",
        max_epochs: int | None = None) -> dict[str, Any]:
    """Compose the config of ``overrides``, train the reference for ``seconds``, score ``split``; returns reference.json."""
    from segexp.config.schema import validate_train_config
    from segexp.data.dataset import open_dataset
    from segexp.evaluation.reports import evaluate_split, write_reports

    cfg = validate_train_config(compose([o for o in overrides if not o.lstrip("~+").startswith("hydra.")]))
    m = cfg.model
    dataset = open_dataset(cfg.dataset, m.num_classes)
    if not dataset.pairs.get(split):
        raise SystemExit(f"dataset {dataset.name}: split {split!r} has no slices to evaluate")
    size = (m.image_height, m.image_width)
    train, valid = (load_split(dataset, s, *size, m.image_channels) for s in ("train", "valid"))
    model = build_reference_unet(*size, m.image_channels, len(dataset.class_names))
    print(f"reference UNet (MONAI recipe): {model.count_params():,} parameters; dataset {dataset.name}: "
          f"{len(train.images)} train, {len(valid.images)} valid slices at {size[0]}x{size[1]}; budget {seconds:.1f} s",
          flush=True)
    result = train_reference(model, train, valid, seconds, seed=cfg.seed, max_epochs=max_epochs)
    evaluation = evaluate_split(model, dataset, split, image_size=size, channels=m.image_channels,
                                case_pattern=cfg.dataset.case_pattern, batch_size=BATCH_SIZE)
    write_reports(evaluation, out_dir / "evaluation")
    report = {**asdict(result), "split": split, "num_params": int(model.count_params()), "dataset": dataset.name,
              "image_size": list(size), "batch_size": BATCH_SIZE, "learning_rate": LEARNING_RATE,
              "monai_commit": MONAI_COMMIT, "overrides": list(overrides)}
    (out_dir / "reference.json").write_text(json.dumps(report, indent=2))
    fg = evaluation.summary["mean"]["foreground_mean"]["dice"]
    print(f"reference: {result.epochs} epochs, {result.steps} steps, {result.train_seconds:.1f} s; "
          f"{split} foreground Dice {fg}", flush=True)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, required=True, help="training wall-time budget (stops after the epoch reaching it)")
    parser.add_argument("--out", required=True, help="output folder (reference.json, evaluation/)")
    parser.add_argument("--split", default="test", help="split scored with segexp's evaluate_split (default test)")
    parser.add_argument("--max-epochs", type=int, default=None, help="stop after this many epochs at the latest")
    parser.add_argument("overrides", nargs="*", help="segexp-train overrides choosing the dataset and input size")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    run(args.overrides, args.seconds, out, args.split, args.max_epochs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
