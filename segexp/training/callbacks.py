"""Keras callbacks of a training run: best checkpoint, per-epoch MLflow metrics, inference
images, an Optuna sweep job's pruning, and the epoch clock (time budget and fixed per-epoch cost), plus the
``callbacks`` group.

:data:`CALLBACKS` is every callback segexp builds, in the order they run: one factory each,
named after the ``training.<key>`` section that sets it where it has one, taking the typed
training section and the run's parts (:class:`RunParts`) and returning what it builds (nothing
when its section turns it off). The optional ones (:class:`EarlyStopping`, :class:`ReduceLROnPlateau`,
the user's) are entries of the top-level ``callbacks`` group (``conf/callbacks/<name>.yaml``, one
``_target_`` entry each), all built by :func:`configured_callbacks`. A callback whose counters must survive
a resume names them in a ``resume_state`` class attribute (:func:`segexp.training.checkpoint.state_attributes`):
the stateful ones here do, as any of the user's may. Adding an optional callback is its class and one YAML in
``conf/callbacks/``; segexp's own run callbacks (always on) are their class and factory in :data:`CALLBACKS`.

Epochs are numbered from 1 in file names and MLflow steps (``epoch_003`` is the
third epoch), matching the "Epoch 3/12" that Keras prints.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import keras
import numpy as np

from segexp.config.schema import DatasetConfig, EpochImagesConfig, TrackingConfig, TrainingConfig
from segexp.core.errors import ConfigError
from segexp.core.files import atomic_write_path
from segexp.data.io.slices import find_pairs
from segexp.data.runtime.dataset import SliceDataset
from segexp.data.runtime.loader import SliceLoader
from segexp.evaluation.inference import probabilities_to_classes
from segexp.evaluation.viz import image_truth_prediction, save_png
from segexp.models.metrics import metric_safe_name
from segexp.models.registry import ModelParams
from segexp.models.saving import save_keras_model
from segexp.tracking.tracker import Tracker
from segexp.training.pruning import TrialPruning

log = logging.getLogger(__name__)


def metric_key(keras_name: str, class_names: Sequence[str]) -> str:
    """MLflow name of a Keras log key: ``val_dice_LV`` -> ``val/dice/LV``, ``loss`` -> ``train/loss``."""
    split, name = ("val", keras_name[4:]) if keras_name.startswith("val_") else ("train", keras_name)
    if name == "learning_rate":
        return name
    if name.startswith("dice_") and name[5:] in {metric_safe_name(c) for c in class_names}:
        name = f"dice/{name[5:]}"
    return f"{split}/{name}"


def on_interval(epoch: int, every_n_epochs: int, last_epoch: int | None = None) -> bool:
    """Whether something done every n-th epoch happens after ``epoch`` (0-based): epochs
    ``n, 2n, ...`` (from 1) and the ``last_epoch`` (from 1)."""
    return (epoch + 1) % every_n_epochs == 0 or epoch + 1 == last_epoch


class BestCheckpoint(keras.callbacks.Callback):
    """Keeps the model of the best epoch by ``monitor`` (``mode`` max or min) and writes it to ``path``.

    Written by hand rather than ``keras.callbacks.ModelCheckpoint`` for two reasons. The
    best epoch's weights are kept in memory (a copy costs ~10 ms; writing the ``.keras``
    file 0.35 s for a 1.6 M-parameter ResUNet on 2 cores, a quarter of a small epoch's
    fixed cost) and written by :meth:`flush`: when the resume checkpoint commits (so the
    two always agree), at the end of the fit, and by ``segexp-train`` when a run is
    interrupted. And the file is replaced atomically (a new file renamed over the old
    one): a kill never leaves half a model, and the resume checkpoint hard-links it
    instead of writing the model twice. Epochs without ``monitor`` (no validation) are
    skipped; a NaN never counts as an improvement. :attr:`saved_epoch` is the epoch
    (from 1) whose model ``path`` holds.
    """

    resume_state = ("best", "saved_epoch")  # restored by a resumed run

    def __init__(self, path: Path, monitor: str, mode: str) -> None:
        super().__init__()
        if mode not in ("min", "max"):
            raise ValueError(f"mode: expected 'min' or 'max', got {mode!r}")
        self.path, self.monitor, self.mode = Path(path), monitor, mode
        self.best: float | None = None
        self.saved_epoch: int | None = None
        self._pending: tuple[int, list[np.ndarray]] | None = None  # (epoch from 1, weights) not yet written

    def improves(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.best is None:
            return True
        return value > self.best if self.mode == "max" else value < self.best

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        value = (logs or {}).get(self.monitor)
        if value is None or not self.improves(float(value)):
            return
        self.best = float(value)
        self._pending = (epoch + 1, self.model.get_weights())

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        self.flush()

    def flush(self) -> None:
        """Write the best epoch's model to :attr:`path` if it is not there yet (the current optimizer state with it)."""
        if self._pending is None:
            return
        epoch, weights = self._pending
        current = self.model.get_weights()
        self.model.set_weights(weights)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_write_path(self.path) as tmp:
                save_keras_model(self.model, tmp)
        finally:
            self.model.set_weights(current)
        self._pending = None
        self.saved_epoch = epoch


class ReduceLROnPlateau(keras.callbacks.ReduceLROnPlateau):
    """Keras' ``ReduceLROnPlateau`` (``conf/callbacks/reduce_lr.yaml``), its counters restored by a resumed run."""

    resume_state = ("best", "wait", "cooldown_counter")


class EarlyStopping(keras.callbacks.EarlyStopping):
    """Keras' ``EarlyStopping`` (``conf/callbacks/early_stopping.yaml``), its counters restored by a resumed run
    (the best weights come back from the checkpoint of their epoch:
    :func:`segexp.training.checkpoint.restore_callbacks`)."""

    resume_state = ("best", "wait", "stopped_epoch", "best_epoch")


def current_learning_rate(model: keras.Model) -> float:
    """The optimizer's learning rate now (after schedules and ReduceLROnPlateau)."""
    return float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))


def predict_classes(model: keras.Model, images: np.ndarray, batch_size: int = 8) -> np.ndarray:
    """Class-index predictions ``(N, H, W) uint8``: argmax of softmax, or sigmoid >= 0.5."""
    return probabilities_to_classes(model.predict(images, batch_size=batch_size, verbose=0))


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
        every_n_epochs: int = 1,
        last_epoch: int | None = None,
    ) -> None:
        super().__init__()
        self.images, self.masks, self.names = images, masks, list(names)
        self.colours = colours
        self.out_dir = out_dir
        self.tracker = tracker
        self.every_n_epochs, self.last_epoch = every_n_epochs, last_epoch

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if not on_interval(epoch, self.every_n_epochs, self.last_epoch):
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        predictions = predict_classes(self.model, self.images)
        for image, truth, pred, name in zip(self.images, self.masks, predictions, self.names):
            figure = image_truth_prediction(image, truth, pred, self.colours)
            save_png(self.out_dir / f"epoch_{epoch + 1:03d}_{name}.png", figure)
            self.tracker.log_image(f"epoch_images/{name}", figure, step=epoch + 1)


class EpochClock(keras.callbacks.Callback):
    """Times every epoch and ends the run cleanly once a time budget is spent.

    Place it last: an epoch's time runs from its first hook to its last callback.
    ``train_s`` is the time until the last training step ended; the rest of the epoch
    (validation, checkpoints, images, logging) is its fixed cost, logged to MLflow as
    ``time/epoch_s``, ``time/fixed_s`` and ``time/fixed_fraction`` = fixed / epoch.
    With ``max_time_s`` the fit stops after the epoch in which the time since the fit
    began reaches it (``model.stop_training``); what follows the fit runs as usual.
    """

    def __init__(self, tracker: Tracker, max_time_s: float | None = None) -> None:
        super().__init__()
        self.tracker, self.max_time_s = tracker, max_time_s
        self.fit_start = self.epoch_start = self.last_step_end = 0.0
        self.budget_spent = False
        self.times: list[dict[str, float]] = []

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self.fit_start = time.perf_counter()

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.epoch_start = self.last_step_end = time.perf_counter()

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self.last_step_end = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        now = time.perf_counter()
        epoch_s, train_s = now - self.epoch_start, self.last_step_end - self.epoch_start
        times = {
            "time/epoch_s": epoch_s,
            "time/fixed_s": epoch_s - train_s,
            "time/fixed_fraction": (epoch_s - train_s) / epoch_s if epoch_s > 0 else 0.0,
        }
        self.times.append(times)
        self.tracker.log_metrics(times, step=epoch + 1)
        log.info(
            "epoch %d: %.1f s, of which %.1f s (%.0f %%) outside the training steps (validation, checkpoints, "
            "images, logging)",
            epoch + 1,
            epoch_s,
            epoch_s - train_s,
            100 * times["time/fixed_fraction"],
        )
        if self.max_time_s is not None and now - self.fit_start >= self.max_time_s:
            self.budget_spent = True
            self.model.stop_training = True
            log.info(
                "training.max_time: %.1f min reached after epoch %d; ending the run", self.max_time_s / 60, epoch + 1
            )


# --------------------------------------------------------------------------- the run's callbacks


@dataclass(frozen=True)
class RunParts:
    """What the callbacks of :data:`CALLBACKS` are built from besides the training section."""

    run_dir: Path  # the run folder
    tracker: Tracker  # the run's MLflow tracker (disabled: logs nothing)
    dataset: SliceDataset  # the opened dataset
    model: ModelParams  # the typed ``model`` section
    data: DatasetConfig  # the typed ``dataset`` section
    tracking: TrackingConfig  # the typed ``tracking`` section
    callbacks: Mapping[str, Any]  # the typed ``callbacks`` group: name -> a ``_target_`` entry or None (off)
    trial: Any = None  # a sweep job's Optuna trial (segexp.training.pruning.open_trial), else None


def epoch_image_set(
    m: ModelParams, e: EpochImagesConfig, d: DatasetConfig, dataset: SliceDataset
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The fixed images predicted after every epoch: evenly spaced over ``e.dir`` (laid out as dataset ``d``'s
    folders) or the valid split."""
    if e.dir is not None:
        root = Path(e.dir)
        pairs = find_pairs(root / d.images_dir, root / d.masks_dir, d.case_pattern, strict=False)
    else:
        pairs = dataset.pairs["valid"]
    picks = np.unique(np.linspace(0, len(pairs) - 1, min(e.num, len(pairs))).round().astype(int))
    reader = SliceLoader(
        pairs,
        dataset.decoder,
        image_size=(m.image_height, m.image_width),
        channels=m.image_channels,
        batch_size=1,
        on_bad_file=d.on_bad_file,
        dtype=dataset.encoding.dtype,
    )  # skip: a bad pick is replaced
    loaded = [reader.load_sample(int(i), 0) for i in picks]
    images = (
        np.stack([im for im, _ in loaded])
        if loaded
        else np.zeros((0, m.image_height, m.image_width, m.image_channels), dataset.encoding.dtype)
    )
    masks = np.stack([mk for _, mk in loaded]) if loaded else np.zeros((0, m.image_height, m.image_width), np.uint8)
    return images, masks, [pairs[i].name for i in picks]


def best_checkpoint(t: TrainingConfig, run: RunParts) -> list[keras.callbacks.Callback]:
    """``checkpoints/best.keras``: the best epoch by ``training.monitor`` / ``monitor_mode``."""
    return [BestCheckpoint(run.run_dir / "checkpoints" / "best.keras", monitor=t.monitor, mode=t.monitor_mode)]


def history_csv(t: TrainingConfig, run: RunParts) -> list[keras.callbacks.Callback]:
    """``history.csv``: every epoch's logs."""
    return [keras.callbacks.CSVLogger(str(run.run_dir / "history.csv"))]


def mlflow_metrics(t: TrainingConfig, run: RunParts) -> list[keras.callbacks.Callback]:
    """Every epoch's metrics and learning rate in the MLflow run."""
    return [MlflowEpochLogger(run.tracker, run.dataset.class_names)]


def epoch_images(t: TrainingConfig, run: RunParts) -> list[keras.callbacks.Callback]:
    """``training.epoch_images``: image | truth | prediction of ``num`` fixed images every n-th epoch (in MLflow
    with ``tracking.log_epoch_images``), when ``num`` > 0."""
    e = t.epoch_images
    if e.num <= 0:
        return []
    images, masks, names = epoch_image_set(run.model, e, run.data, run.dataset)
    tracker = run.tracker if run.tracking.log_epoch_images else Tracker(None)
    return [
        EpochImages(
            images,
            masks,
            names,
            run.dataset.colours,
            run.run_dir / "epoch_images",
            tracker,
            every_n_epochs=e.every_n_epochs,
            last_epoch=t.epochs,
        )
    ]


def configured_callbacks(t: TrainingConfig, run: RunParts) -> list[keras.callbacks.Callback]:
    """The ``callbacks`` group (``conf/callbacks/``): each named entry a Keras callback built from its
    ``_target_`` (null: off), in the order given: segexp's :class:`EarlyStopping` and :class:`ReduceLROnPlateau`
    (``callbacks=early_stopping``, ``callbacks=[early_stopping,reduce_lr]``) as the user's. A callback whose
    counters must survive a resume lists them in a ``resume_state`` class attribute
    (:func:`segexp.training.checkpoint.state_attributes`)."""
    built = []
    for name, spec in run.callbacks.items():
        if spec is None:
            continue
        try:
            callback = hydra.utils.instantiate(spec)
        except Exception as err:  # noqa: BLE001 - any failure to build it is the user's entry
            raise ConfigError(f"callbacks.{name}: cannot build {spec.get('_target_')!r}: {err}") from err
        if not isinstance(callback, keras.callbacks.Callback):
            raise ConfigError(
                f"callbacks.{name}: {spec.get('_target_')!r} built a {type(callback).__name__}, "
                "expected a keras.callbacks.Callback"
            )
        built.append(callback)
    return built


def trial_pruning(t: TrainingConfig, run: RunParts) -> list[keras.callbacks.Callback]:
    """An Optuna sweep job: ``training.monitor`` reported to its trial after each validated epoch, the fit stopped
    when the study prunes it (:mod:`segexp.training.pruning`)."""
    return [] if run.trial is None else [TrialPruning(run.trial, t.monitor)]


def epoch_clock(t: TrainingConfig, run: RunParts) -> list[keras.callbacks.Callback]:
    """``training.max_time``: the epoch clock (last: it times the whole epoch)."""
    return [EpochClock(run.tracker, None if t.max_time is None else 60.0 * t.max_time)]


#: Every callback of a run, in the order they run, by name (that of its ``training.<key>`` section where it has
#: one; ``callbacks``: the whole ``callbacks`` group) -> its factory.
CALLBACKS: dict[str, Callable[[TrainingConfig, RunParts], list[keras.callbacks.Callback]]] = {
    "best_checkpoint": best_checkpoint,
    "history_csv": history_csv,
    "mlflow_metrics": mlflow_metrics,
    "epoch_images": epoch_images,
    "callbacks": configured_callbacks,
    "trial_pruning": trial_pruning,
    "epoch_clock": epoch_clock,
}


def build_run_callbacks(t: TrainingConfig, run: RunParts) -> list[keras.callbacks.Callback]:
    """The callbacks of :data:`CALLBACKS` that ``t`` turns on, in order."""
    return [callback for build in CALLBACKS.values() for callback in build(t, run)]
