#!/usr/bin/env python
"""MONAI itself, in PyTorch: the peer of segexp in scripts/accuracy.py.

    outputs/venvs/monai/bin/python scripts/monai_loop.py --data input.npz --out outputs/monai --seconds 300
    outputs/venvs/monai/bin/python scripts/monai_loop.py --data input.npz --out outputs/monai --steps 160
    outputs/venvs/monai/bin/python scripts/monai_loop.py --step-time 256 256 1 9 --steps 5   # scripts/bench.py

Runs in its own virtual environment (torch, monai and numpy only; ``scripts/accuracy.py``
builds it): nothing of segexp, TensorFlow or Keras is imported. The pixels come from
``--data``, a ``.npz`` that ``accuracy.py`` writes with segexp's own reader, so both systems
see identical pixels:

* ``train_images`` ``(N, H, W, C) uint8``, ``train_masks`` ``(N, H, W) uint8`` class indices,
  ``valid_images``, ``valid_masks``, ``valid_cases`` (the case of every slice, strings),
* ``score_images`` (the split scored afterwards by segexp's scorer) and ``score_cases``,
* ``num_classes`` and ``seed`` (scalars).

The recipe, MONAI's own classes with their defaults unless written here:

* **Network**: ``monai.networks.nets.UNet(spatial_dims=2, in_channels=C, out_channels=K,
  channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2), num_res_units=2, norm="instance")``
  (kernel 3, PReLU, no dropout): 4 stride-2 levels, so sides that are not multiples of 16 are
  zero-padded to the next one as MONAI's ``DivisiblePad(16)`` does (masks with background) and the
  predictions cropped back. Input: intensities ``x / 255`` as float32 ``(B, C, H, W)``.
* **Loss**: ``monai.losses.DiceCELoss(softmax=True, to_onehot_y=True)`` on the logits:
  soft Dice per sample and class (background included, smooth 1e-5) plus the pixel cross-entropy.
* **Optimiser**: ``torch.optim.Adam``, learning rate 1e-3, constant.
* **Augmentation**: each sample flipped left-right and, independently, up-down with probability
  0.5 (image and mask alike).
* **Loop**: batch 8 (the last batch of an epoch may be smaller); an epoch is one shuffled pass
  over the training slices. After every epoch the foreground Dice on the validation slices:
  hard Dice per case on its stacked slices and class, mean over cases per class, then over the
  foreground classes (background excluded; a class absent from a case's truth and prediction is
  left out for that case). The weights of the best validation epoch are kept.
* **Stop**: after the epoch at which ``--seconds`` is reached, counted from this script's start
  (start-up, imports and validation included, as segexp's whole process time is), or exactly at
  optimiser step ``--steps`` (mid-epoch; validated there), whichever comes first.
* **Seeded**: ``torch.manual_seed(seed)`` (weights), ``numpy.random.default_rng(seed)`` (order, flips).
* **Threads**: ``torch.set_num_threads(--threads or os.cpu_count())``.

Outputs in ``--out``: ``monai.json`` (epochs, optimiser steps, seconds, the per-epoch history,
the parameter count, torch and MONAI versions) and ``predictions.npz`` (``predictions``: argmax
class indices ``(N, H, W) uint8`` of the best weights for ``score_images``).
"""

from __future__ import annotations

import time

START = time.perf_counter()  # the budget counts the start-up: torch and MONAI imports included

import argparse  # noqa: E402
import copy  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from dataclasses import asdict, dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

CHANNELS = (16, 32, 64, 128, 256)
STRIDES = (2, 2, 2, 2)
NUM_RES_UNITS = 2
LEARNING_RATE = 1e-3
BATCH_SIZE = 8


@dataclass
class Split:
    """Slices in memory: uint8 images ``(N, H, W, C)``, class-index masks ``(N, H, W)``, case per slice."""

    images: np.ndarray
    masks: np.ndarray
    cases: list[str]


@dataclass
class Inputs:
    """What ``accuracy.py`` exported: the train and valid splits, the images to predict, classes, seed."""

    train: Split
    valid: Split
    score_images: np.ndarray
    num_classes: int
    seed: int


def load_inputs(path: Path) -> Inputs:
    """Read and check the ``.npz`` of ``accuracy.py`` (uint8 images ``(N, H, W, C)``, masks ``(N, H, W)``)."""
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    missing = {
        "train_images",
        "train_masks",
        "valid_images",
        "valid_masks",
        "valid_cases",
        "score_images",
        "num_classes",
        "seed",
    } - set(arrays)
    if missing:
        raise SystemExit(f"{path}: missing arrays {sorted(missing)}")
    for name in ("train_images", "valid_images", "score_images"):
        a = arrays[name]
        if a.dtype != np.uint8 or a.ndim != 4:
            raise SystemExit(f"{path}: {name} must be uint8 (N, H, W, C), got {a.dtype} {a.shape}")
    for split in ("train", "valid"):
        images, masks = arrays[f"{split}_images"], arrays[f"{split}_masks"]
        if masks.shape != images.shape[:3]:
            raise SystemExit(f"{path}: {split}_masks {masks.shape} do not match {split}_images {images.shape}")
        if not len(images):
            raise SystemExit(f"{path}: no {split} slices")
    cases = [str(c) for c in arrays["valid_cases"]]
    if len(cases) != len(arrays["valid_images"]):
        raise SystemExit(f"{path}: {len(cases)} valid_cases for {len(arrays['valid_images'])} valid slices")
    return Inputs(
        Split(arrays["train_images"], arrays["train_masks"], []),
        Split(arrays["valid_images"], arrays["valid_masks"], cases),
        arrays["score_images"],
        int(arrays["num_classes"]),
        int(arrays["seed"]),
    )


def divisible_padding(height: int, width: int, k: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """``((top, bottom), (left, right))`` zeros that make ``height`` and ``width`` multiples of ``k``, split
    evenly with the odd pixel at the end: MONAI's ``DivisiblePad(k, method="symmetric")``."""

    def split(n: int) -> tuple[int, int]:
        extra = -n % k
        return extra // 2, extra - extra // 2

    return split(height), split(width)


def pad_inputs(inputs: Inputs, pads: tuple[tuple[int, int], tuple[int, int]]) -> Inputs:
    """Every image and mask zero-padded by ``pads`` (background in the masks); predictions are cropped back."""
    if not any(sum(p) for p in pads):
        return inputs
    image_pad, mask_pad = (*pads, (0, 0)), pads

    def split(part: Split) -> Split:
        return Split(np.pad(part.images, ((0, 0), *image_pad)), np.pad(part.masks, ((0, 0), *mask_pad)), part.cases)

    return Inputs(
        split(inputs.train),
        split(inputs.valid),
        np.pad(inputs.score_images, ((0, 0), *image_pad)),
        inputs.num_classes,
        inputs.seed,
    )


def build_unet(in_channels: int, num_classes: int) -> Any:
    """MONAI's 2D UNet, 16-256 channels, 4 stride-2 levels, 2 residual units, instance norm; logits out."""
    from monai.networks.nets import UNet

    return UNet(
        spatial_dims=2,
        in_channels=in_channels,
        out_channels=num_classes,
        channels=CHANNELS,
        strides=STRIDES,
        num_res_units=NUM_RES_UNITS,
        norm="instance",
    )


def to_tensor(images: np.ndarray) -> Any:
    """uint8 ``(B, H, W, C)`` -> float32 ``(B, C, H, W)`` in [0, 1] (``x / 255``)."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).float().div_(255.0)


def random_flips(images: np.ndarray, masks: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Flip each sample left-right and (independently) up-down with probability 0.5, image and mask alike."""
    images, masks = images.copy(), masks.copy()
    for i in range(len(images)):
        if rng.random() < 0.5:
            images[i], masks[i] = images[i][:, ::-1], masks[i][:, ::-1]
        if rng.random() < 0.5:
            images[i], masks[i] = images[i][::-1], masks[i][::-1]
    return images, masks


def predict(model: Any, images: np.ndarray, batch_size: int = BATCH_SIZE) -> np.ndarray:
    """Argmax class indices ``(N, H, W) uint8`` of ``model`` (eval mode, no gradients) for uint8 images."""
    import torch

    model.eval()
    out = np.empty(images.shape[:3], np.uint8)
    with torch.no_grad():
        for first in range(0, len(images), batch_size):
            logits = model(to_tensor(images[first : first + batch_size]))
            out[first : first + batch_size] = logits.argmax(dim=1).numpy().astype(np.uint8)
    return out


def foreground_dice(truth: np.ndarray, pred: np.ndarray, cases: Sequence[str], num_classes: int) -> float:
    """Hard Dice ``2 TP / (|T| + |P|)`` per case (stacked slices) and foreground class; mean over cases per
    class, then over classes. A class absent from truth and prediction of a case is left out for that case."""
    cases_arr = np.asarray(cases)
    per_class: list[list[float]] = [[] for _ in range(num_classes)]
    for case in np.unique(cases_arr):
        t, p = truth[cases_arr == case].ravel(), pred[cases_arr == case].ravel()
        confusion = np.bincount(t.astype(np.intp) * num_classes + p, minlength=num_classes**2).reshape(num_classes, -1)
        for k in range(1, num_classes):
            denominator = confusion[k].sum() + confusion[:, k].sum()
            if denominator:
                per_class[k].append(2.0 * confusion[k, k] / denominator)
    means = [np.mean(v) for v in per_class[1:] if v]
    return float(np.mean(means)) if means else float("nan")


@dataclass
class Result:
    """What the loop did; seconds count from the script's start (``train_seconds``) or the first step."""

    epochs: int = 0
    steps: int = 0
    train_seconds: float = 0.0  # script start -> end of the last validation (what --seconds bounds)
    loop_seconds: float = 0.0  # first step -> end of the last validation
    startup_seconds: float = 0.0  # script start -> first step (imports, data, network)
    budget_seconds: float | None = None
    budget_steps: int | None = None
    stopped_by: str = ""
    best_epoch: int = 0
    best_val_dice_fg_mean: float = float("nan")
    history: list[dict[str, float]] = field(default_factory=list)


def train(
    model: Any,
    inputs: Inputs,
    *,
    seconds: float | None,
    steps: int | None,
    max_epochs: int | None = None,
    batch_size: int = BATCH_SIZE,
) -> Result:
    """DiceCE, Adam 1e-3, flips; validate after every epoch, keep the best weights; stop on time or steps."""
    import torch
    from monai.losses import DiceCELoss

    rng = np.random.default_rng(inputs.seed)
    loss_fn = DiceCELoss(softmax=True, to_onehot_y=True)
    optimiser = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    train_split, valid = inputs.train, inputs.valid
    result = Result(budget_seconds=seconds, budget_steps=steps)
    best_state = None
    first_step = time.perf_counter()
    result.startup_seconds = first_step - START
    while True:
        model.train()
        order = rng.permutation(len(train_split.images))
        losses = []
        for first in range(0, len(order), batch_size):
            batch = order[first : first + batch_size]
            x, y = random_flips(train_split.images[batch], train_split.masks[batch], rng)
            optimiser.zero_grad(set_to_none=True)
            loss = loss_fn(model(to_tensor(x)), torch.from_numpy(y[:, None].astype(np.int64)))
            loss.backward()
            optimiser.step()
            losses.append(float(loss.detach()))
            result.steps += 1
            if steps is not None and result.steps >= steps:
                break
        result.epochs += 1
        dice = foreground_dice(valid.masks, predict(model, valid.images, batch_size), valid.cases, inputs.num_classes)
        now = time.perf_counter()
        result.history.append(
            {
                "epoch": result.epochs,
                "steps": result.steps,
                "loss": float(np.mean(losses)),
                "val_dice_fg_mean": dice,
                "seconds": now - START,
            }
        )
        print(
            f"epoch {result.epochs}: {result.steps} steps, loss {np.mean(losses):.4f}, "
            f"val foreground Dice {dice:.4f}, {now - START:.1f} s",
            flush=True,
        )
        if best_state is None or (math.isfinite(dice) and not dice <= result.best_val_dice_fg_mean):
            best_state, result.best_epoch, result.best_val_dice_fg_mean = (
                copy.deepcopy(model.state_dict()),
                result.epochs,
                dice,
            )
        if steps is not None and result.steps >= steps:
            result.stopped_by = "steps"
        elif seconds is not None and now - START >= seconds:
            result.stopped_by = "seconds"
        elif max_epochs is not None and result.epochs >= max_epochs:
            result.stopped_by = "max_epochs"
        if result.stopped_by:
            break
    result.train_seconds, result.loop_seconds = now - START, now - first_step
    model.load_state_dict(best_state)
    return result


def step_time(
    height: int, width: int, channels: int, num_classes: int, *, steps: int, repeats: int, threads: int | None = None
) -> dict[str, Any]:
    """Seconds per optimiser step of :func:`train`'s step (DiceCE, Adam) on one fixed random batch of 8.

    For ``scripts/bench.py``: the first step (one warm-up, as PyTorch has no graph to compile, only
    allocations) is reported apart, then the median over ``repeats`` timings of ``steps`` steps.
    """
    import torch
    from monai.losses import DiceCELoss

    torch.set_num_threads(threads or os.cpu_count() or 1)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = build_unet(channels, num_classes)
    model.train()
    loss_fn = DiceCELoss(softmax=True, to_onehot_y=True)
    optimiser = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    x = rng.integers(0, 256, (BATCH_SIZE, height, width, channels), dtype=np.uint8)
    y = torch.from_numpy(rng.integers(0, num_classes, (BATCH_SIZE, 1, height, width)).astype(np.int64))

    def one_step() -> None:
        optimiser.zero_grad(set_to_none=True)
        loss = loss_fn(model(to_tensor(x)), y)
        loss.backward()
        optimiser.step()

    start = time.perf_counter()
    one_step()
    first = time.perf_counter() - start
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            one_step()
        seconds.append((time.perf_counter() - start) / steps)
    return {
        "step_s": float(np.median(seconds)),
        "step_s_all": seconds,
        "first_step_s": first,
        "params": int(sum(p.numel() for p in model.parameters())),
        "batch": BATCH_SIZE,
        "threads": torch.get_num_threads(),
        "versions": versions(),
    }


def versions() -> dict[str, str]:
    """torch, MONAI and numpy versions of this environment."""
    import monai
    import torch

    return {"torch": torch.__version__, "monai": monai.__version__, "numpy": np.__version__}


def run(
    data: Path,
    out: Path,
    *,
    seconds: float | None,
    steps: int | None,
    threads: int | None = None,
    max_epochs: int | None = None,
) -> dict[str, Any]:
    """Train MONAI's UNet on ``data``; write ``monai.json`` and ``predictions.npz`` in ``out``; returns monai.json."""
    import torch

    threads = threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    inputs = load_inputs(data)
    torch.manual_seed(inputs.seed)
    height, width, channels = inputs.train.images.shape[1:]
    pads = divisible_padding(height, width, 2 ** len(STRIDES))
    inputs = pad_inputs(inputs, pads)
    model = build_unet(channels, inputs.num_classes)
    num_params = sum(p.numel() for p in model.parameters())
    print(
        f"MONAI UNet: {num_params:,} parameters; {len(inputs.train.images)} train, {len(inputs.valid.images)} valid "
        f"slices at {height}x{width}; budget {seconds if seconds is not None else '-'} s, "
        f"{steps if steps is not None else '-'} steps; {threads} threads",
        flush=True,
    )
    result = train(model, inputs, seconds=seconds, steps=steps, max_epochs=max_epochs)
    out.mkdir(parents=True, exist_ok=True)
    (top, bottom), (left, right) = pads
    predictions = predict(model, inputs.score_images)[:, top : top + height, left : left + width]
    np.savez_compressed(out / "predictions.npz", predictions=predictions)
    report = {
        **asdict(result),
        "num_params": int(num_params),
        "threads": threads,
        "batch_size": BATCH_SIZE,
        "learning_rate": LEARNING_RATE,
        "image_size": [int(height), int(width)],
        "seed": inputs.seed,
        "versions": versions(),
    }
    (out / "monai.json").write_text(json.dumps(report, indent=2))
    steps_per_s = result.steps / result.loop_seconds if result.loop_seconds > 0 else float("nan")
    print(
        f"MONAI: {result.epochs} epochs, {result.steps} steps, {result.train_seconds:.1f} s from start "
        f"({result.startup_seconds:.1f} s start-up, {steps_per_s:.2f} steps/s with validation); "
        f"best epoch {result.best_epoch}, val foreground Dice {result.best_val_dice_fg_mean:.4f}",
        flush=True,
    )
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help=".npz written by scripts/accuracy.py")
    parser.add_argument("--out", help="output folder (monai.json, predictions.npz)")
    parser.add_argument(
        "--step-time",
        nargs=4,
        type=int,
        metavar=("H", "W", "C", "K"),
        help="only time --steps training steps on a random batch of 8 HxWxC images, K classes "
        "(median of --repeats); prints one JSON line",
    )
    parser.add_argument("--repeats", type=int, default=3, help="--step-time: timed repetitions")
    parser.add_argument(
        "--seconds",
        type=float,
        default=None,
        help="wall-time budget from the script's start; stops after the epoch that reaches it",
    )
    parser.add_argument("--steps", type=int, default=None, help="stop exactly after this many optimiser steps")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: os.cpu_count())")
    parser.add_argument("--max-epochs", type=int, default=None, help="stop after this many epochs at the latest")
    args = parser.parse_args(argv)
    if args.step_time:
        result = step_time(*args.step_time, steps=args.steps or 3, repeats=args.repeats, threads=args.threads)
        print("STEP_TIME " + json.dumps(result), flush=True)
        return 0
    if not args.data or not args.out:
        parser.error("give --data and --out (or --step-time)")
    if args.seconds is None and args.steps is None and args.max_epochs is None:
        parser.error("give --seconds, --steps or --max-epochs")
    if args.steps is not None and args.steps < 1:
        parser.error("--steps must be >= 1")
    run(
        Path(args.data),
        Path(args.out),
        seconds=args.seconds,
        steps=args.steps,
        threads=args.threads,
        max_epochs=args.max_epochs,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
