"""Keras callbacks of a training run: per-epoch MLflow metrics and inference images.

Epochs are numbered from 1 in file names and MLflow steps (``epoch_003`` is the
third epoch), matching the "Epoch 3/12" that Keras prints.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np

from segexp.tracking import Tracker, metric_key
from segexp.viz import image_truth_prediction, save_png


def current_learning_rate(model: keras.Model) -> float:
    """The optimizer's learning rate now (after schedules and ReduceLROnPlateau)."""
    return float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))


def predict_classes(model: keras.Model, images: np.ndarray, batch_size: int = 8) -> np.ndarray:
    """Class-index predictions ``(N, H, W) uint8``: argmax of softmax, or sigmoid >= 0.5."""
    probs = model.predict(images, batch_size=batch_size, verbose=0)
    if probs.shape[-1] == 1:
        return (probs[..., 0] >= 0.5).astype(np.uint8)
    return np.argmax(probs, axis=-1).astype(np.uint8)


def epoch_metrics(logs: dict[str, Any], learning_rate: float, class_names: Sequence[str]) -> dict[str, float]:
    """MLflow metrics of one epoch: its Keras logs renamed (``val/dice/<class>``) and the learning rate used."""
    metrics = {metric_key(k, class_names): float(v) for k, v in logs.items()}
    metrics["learning_rate"] = float(learning_rate)
    return metrics


class MlflowEpochLogger(keras.callbacks.Callback):
    """Logs every epoch's Keras logs and the learning rate to MLflow, step = epoch (from 1).

    Names follow ``train/…`` and ``val/…``, per-class Dice as ``val/dice/<class>``.
    The learning rate is the one the epoch trained with (read when it began, so a
    reduction at its end by ReduceLROnPlateau shows from the next step on).
    """

    def __init__(self, tracker: Tracker, class_names: Sequence[str]) -> None:
        super().__init__()
        self.tracker = tracker
        self.class_names = list(class_names)
        self.learning_rate = float("nan")

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.learning_rate = current_learning_rate(self.model)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.tracker.log_metrics(epoch_metrics(logs or {}, self.learning_rate, self.class_names), step=epoch + 1)


class EpochImages(keras.callbacks.Callback):
    """Predicts a fixed set of images after each epoch and saves image | truth | prediction.

    Files: ``<out_dir>/epoch_003_<name>.png``; MLflow: ``log_image(key="epoch_images/<name>",
    step=epoch)`` so the UI's image view slides through the epochs.
    """

    def __init__(
        self,
        images: np.ndarray,
        masks: np.ndarray,
        names: Sequence[str],
        colours: np.ndarray,
        out_dir: Path,
        tracker: Tracker,
    ) -> None:
        super().__init__()
        self.images, self.masks, self.names = images, masks, list(names)
        self.colours = colours
        self.out_dir = out_dir
        self.tracker = tracker

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        predictions = predict_classes(self.model, self.images)
        for image, truth, pred, name in zip(self.images, self.masks, predictions, self.names):
            figure = image_truth_prediction(image, truth, pred, self.colours)
            save_png(self.out_dir / f"epoch_{epoch + 1:03d}_{name}.png", figure)
            self.tracker.log_image(f"epoch_images/{name}", figure, step=epoch + 1)
