"""Reopening a resumed run's MLflow run: complete what the interruption left out, and mark it resumed.

Between the last checkpoint and the interruption a run may have lost the last epoch's image files,
its metrics or its images in MLflow. Everything here goes through the :class:`Tracker` (and so its
outbox): the run is read back with :meth:`Tracker.metric_steps` and :meth:`Tracker.logged_image_steps`
and tagged with :meth:`Tracker.mark_resumed`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import keras
import numpy as np

from segexp.evaluation.viz import image_truth_prediction, save_png
from segexp.tracking.tracker import Tracker
from segexp.training.callbacks import EpochImages, epoch_metrics, predict_classes
from segexp.training.resume import Resume

log = logging.getLogger(__name__)

#: The metric whose logged steps tell which epochs reached MLflow.
EPOCH_MARKER_METRIC = "train/loss"


def reopen_run(
    tracker: Tracker,
    resume: Resume,
    model: keras.Model,
    callbacks: Sequence[keras.callbacks.Callback],
    class_names: Sequence[str],
) -> None:
    """Complete what an interruption left out after the last checkpoint, and tag the reopened MLflow run.

    The last checkpointed epoch's images are drawn again (with that epoch's model) when their
    files are missing; its metrics and images are logged to MLflow when they are not there.
    """
    images = next((c for c in callbacks if isinstance(c, EpochImages)), None)
    if images is not None:
        redraw_epoch_images(images, model, resume.epoch)
    if not tracker.enabled:
        return
    tracker.mark_resumed(resume.epoch)
    log_missing_metrics(tracker, resume.history(), class_names)
    if images is not None and images.tracker.enabled and images.out_dir.is_dir():
        log_missing_images(tracker, resume.epoch, images.out_dir)


def log_missing_metrics(tracker: Tracker, history: Sequence[Mapping[str, float]], class_names: Sequence[str]) -> None:
    """Log the metrics of every checkpointed epoch (``history``, from 1) that MLflow does not hold."""
    present = tracker.metric_steps(EPOCH_MARKER_METRIC)
    for step, logs in enumerate(history, start=1):
        if step not in present:
            values = dict(logs)
            tracker.log_metrics(epoch_metrics(values, values.pop("learning_rate"), class_names), step=step)
            log.info("MLflow: logged the metrics of epoch %d, which the interruption had left out", step)


def log_missing_images(tracker: Tracker, epochs: int, folder: Path) -> None:
    """Log the epoch image files of ``folder`` (epochs 1 to ``epochs``) that MLflow does not hold."""
    logged = tracker.logged_image_steps()
    for step in range(1, epochs + 1):
        for png in sorted(folder.glob(f"epoch_{step:03d}_*.png")):
            key = f"epoch_images/{png.stem[len(f'epoch_{step:03d}_') :]}"
            image = None if step in logged.get(key, set()) else read_png(png)
            if image is not None:
                tracker.log_image(key, image, step=step)


def read_png(path: Path) -> np.ndarray | None:
    """RGB ``uint8`` image of ``path``, or None if it is missing or cut short."""
    import cv2

    image = cv2.imread(str(path), cv2.IMREAD_COLOR) if path.is_file() else None
    return None if image is None else image[..., ::-1].copy()


def redraw_epoch_images(callback: EpochImages, model: keras.Model, epoch: int) -> None:
    """Write the image | truth | prediction files of ``epoch`` (from 1) that are missing or unreadable."""
    paths = [callback.out_dir / f"epoch_{epoch:03d}_{name}.png" for name in callback.names]
    missing = [i for i, path in enumerate(paths) if read_png(path) is None]
    if not missing:
        return
    predictions = predict_classes(model, callback.images[missing])
    for i, prediction in zip(missing, predictions):
        save_png(paths[i], image_truth_prediction(callback.images[i], callback.masks[i], prediction, callback.colours))
    log.info("drew the %d image(s) of epoch %d that the interruption had left out", len(missing), epoch)
