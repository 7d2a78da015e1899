"""Segmentation metrics (backend-agnostic, ``keras.ops`` only).

Same conventions as :mod:`segexp.models.losses`: ``y_true`` is a class-index mask
``(B, H, W)`` (``(B, H, W, 1)`` accepted), ``y_pred`` holds probabilities
``(B, H, W, C)`` (softmax), or ``(B, H, W, 1)`` P(foreground) from a sigmoid
when ``num_classes == 1``. Class 0 is background.

The hard Dice metrics (:class:`ClassDice`, :class:`ForegroundMeanDice`) keep
true-positive / false-positive / false-negative pixel counts in metric
variables and compute ``Dice = 2 TP / (2 TP + FP + FN)`` from the counts
accumulated over every batch seen since the last ``reset_state()`` (Keras
resets at the start of each epoch and of each evaluation), i.e. a
dataset-level Dice, not a mean of per-batch Dice values.

A class that is absent from both prediction and ground truth over the whole
accumulation period has an undefined Dice: the result is NaN (the class is not
counted) rather than a free 1.0.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import keras
from keras import ops

__all__ = [
    "ClassDice",
    "ForegroundMeanDice",
    "OriginalDiceCoefMulticlass",
    "build_metrics",
    "metric_safe_name",
]

_NAN = math.nan


def _check_num_classes(num_classes) -> int:
    if isinstance(num_classes, bool) or int(num_classes) != num_classes or num_classes < 1:
        raise ValueError(f"num_classes must be an integer >= 1, got {num_classes!r}")
    return int(num_classes)


def _true_labels(y_true, y_pred):
    """Class-index mask as int32 ``(B, H, W)``."""
    if len(y_true.shape) == len(y_pred.shape):
        y_true = ops.squeeze(y_true, axis=-1)
    return ops.cast(y_true, "int32")


def _pred_labels(y_pred, num_classes):
    """Hard labels int32 ``(B, H, W)``: argmax, or ``P(fg) >= 0.5`` when binary (as ``probabilities_to_classes``)."""
    y_pred = ops.cast(y_pred, "float32")
    if num_classes == 1:
        return ops.cast(ops.greater_equal(y_pred[..., 0], 0.5), "int32")
    return ops.cast(ops.argmax(y_pred, axis=-1), "int32")


def _pixel_weights(sample_weight, labels):
    """Broadcast a per-sample ``(B,)`` or per-pixel ``(B, H, W[, 1])`` weight to ``labels``."""
    if sample_weight is None:
        return None
    w = ops.cast(ops.convert_to_tensor(sample_weight), "float32")
    if len(w.shape) == len(labels.shape) + 1:
        w = ops.squeeze(w, axis=-1)
    while len(w.shape) < len(labels.shape):
        w = ops.expand_dims(w, -1)
    return ops.broadcast_to(w, ops.shape(labels))


def _hard_labels(y_true, y_pred, sample_weight, num_classes):
    """``(true labels, predicted labels, pixel weights or None)`` of one batch, shared by the Dice metrics."""
    y_pred = ops.convert_to_tensor(y_pred)
    labels = _true_labels(ops.convert_to_tensor(y_true), y_pred)
    return labels, _pred_labels(y_pred, num_classes), _pixel_weights(sample_weight, labels)


def _counts(true_labels, pred_labels, class_index, weights):
    """``(tp, fp, fn)`` float32 scalars for one class (comparisons, no one-hot)."""
    t = ops.equal(true_labels, class_index)
    q = ops.equal(pred_labels, class_index)
    both = ops.logical_and(t, q)
    if weights is None:
        # Exact integer counts per batch, accumulated in float32.
        tp = ops.sum(ops.cast(both, "int32"))
        n_pred = ops.sum(ops.cast(q, "int32"))
        n_true = ops.sum(ops.cast(t, "int32"))
        tp, n_pred, n_true = (ops.cast(v, "float32") for v in (tp, n_pred, n_true))
    else:
        tp = ops.sum(weights * ops.cast(both, "float32"))
        n_pred = ops.sum(weights * ops.cast(q, "float32"))
        n_true = ops.sum(weights * ops.cast(t, "float32"))
    return tp, n_pred - tp, n_true - tp


def _dice_from_counts(tp, fp, fn):
    """``2 TP / (2 TP + FP + FN)``; NaN where the denominator is 0."""
    denom = 2.0 * tp + fp + fn
    dice = 2.0 * tp / ops.maximum(denom, 1e-12)
    return ops.where(ops.greater(denom, 0.0), dice, _NAN)


@keras.saving.register_keras_serializable(package="segexp")
class ClassDice(keras.metrics.Metric):
    """Hard Dice of one class, accumulated over all batches (dataset-level).

    ``Dice_k = 2 TP_k / (2 TP_k + FP_k + FN_k)`` with pixel counts of the hard
    prediction (``argmax`` over channels; ``P(fg) >= 0.5`` when
    ``num_classes == 1``) summed over every batch since the last reset.
    If class ``k`` is absent in both prediction and ground truth for the whole
    epoch the result is NaN: the class is not counted instead of being given a
    free 1.0. ``sample_weight`` (per sample or per pixel) weights the counts.
    """

    def __init__(self, class_index, num_classes, name=None, dtype=None):
        super().__init__(name=name or f"dice_class{int(class_index)}", dtype=dtype)
        self.num_classes = _check_num_classes(num_classes)
        self.class_index = int(class_index)
        n_labels = max(self.num_classes, 2)
        if not 0 <= self.class_index < n_labels:
            raise ValueError(
                f"class_index must be in [0, {n_labels - 1}] for num_classes={self.num_classes}, got {class_index!r}"
            )
        self.tp = self.add_variable(shape=(), initializer="zeros", dtype="float32", name="tp")
        self.fp = self.add_variable(shape=(), initializer="zeros", dtype="float32", name="fp")
        self.fn = self.add_variable(shape=(), initializer="zeros", dtype="float32", name="fn")

    def update_state(self, y_true, y_pred, sample_weight=None):
        labels, pred, weights = _hard_labels(y_true, y_pred, sample_weight, self.num_classes)
        tp, fp, fn = _counts(labels, pred, self.class_index, weights)
        self.tp.assign_add(tp)
        self.fp.assign_add(fp)
        self.fn.assign_add(fn)

    def result(self):
        return _dice_from_counts(self.tp, self.fp, self.fn)

    def get_config(self):
        config = super().get_config()
        config.update(class_index=self.class_index, num_classes=self.num_classes)
        return config


@keras.saving.register_keras_serializable(package="segexp")
class ForegroundMeanDice(keras.metrics.Metric):
    """Mean hard Dice over foreground classes, accumulated over all batches.

    ``mean_{k in fg, k present} 2 TP_k / (2 TP_k + FP_k + FN_k)`` with
    foreground classes ``1..C-1`` (the single sigmoid class when
    ``num_classes == 1``) and per-class counts summed over every batch since
    the last reset (as :class:`ClassDice`). Classes absent in both prediction
    and ground truth (NaN Dice) are left out of the mean; the result is NaN
    only if every foreground class is absent.
    """

    def __init__(self, num_classes, name="dice_fg_mean", dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.num_classes = _check_num_classes(num_classes)
        self.class_indices = [1] if self.num_classes == 1 else list(range(1, self.num_classes))
        k = len(self.class_indices)
        if k == 0:
            raise ValueError("ForegroundMeanDice needs at least one foreground class")
        self.tp = self.add_variable(shape=(k,), initializer="zeros", dtype="float32", name="tp")
        self.fp = self.add_variable(shape=(k,), initializer="zeros", dtype="float32", name="fp")
        self.fn = self.add_variable(shape=(k,), initializer="zeros", dtype="float32", name="fn")

    def update_state(self, y_true, y_pred, sample_weight=None):
        labels, pred, weights = _hard_labels(y_true, y_pred, sample_weight, self.num_classes)
        per_class = [_counts(labels, pred, k, weights) for k in self.class_indices]
        tp, fp, fn = (ops.stack(list(v)) for v in zip(*per_class))
        self.tp.assign_add(tp)
        self.fp.assign_add(fp)
        self.fn.assign_add(fn)

    def result(self):
        dice = _dice_from_counts(self.tp, self.fp, self.fn)
        present = ops.logical_not(ops.isnan(dice))
        n_present = ops.sum(ops.cast(present, "float32"))
        total = ops.sum(ops.where(present, dice, 0.0))
        return ops.where(ops.greater(n_present, 0.0), total / ops.maximum(n_present, 1.0), _NAN)

    def get_config(self):
        config = super().get_config()
        config.update(num_classes=self.num_classes)
        return config


@keras.saving.register_keras_serializable(package="segexp")
class OriginalDiceCoefMulticlass(keras.metrics.Metric):
    """The original tool's ``dice_coef_multiclass``; kept ONLY for comparison with it.

    WARNING: includes the background class, so on typical medical images it is
    dominated by background and stays high (> 0.9) even when every foreground
    structure is missed. Use :class:`ForegroundMeanDice` / :class:`ClassDice`
    to judge a model.

    Per batch, with soft probabilities ``p`` and one-hot ground truth ``g``
    over ALL classes (background included; for ``num_classes == 1`` the
    channels are ``[1 - p, p]``) and all pixels:
    ``d = (2 sum(g * p) + 1e-6) / (sum(g) + sum(p) + 1e-6)``.
    The result is the unweighted mean of ``d`` over batches (like
    ``keras.metrics.Mean``); ``sample_weight`` is ignored.
    """

    def __init__(self, num_classes, name="dice_incl_bg_original", dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.num_classes = _check_num_classes(num_classes)
        self.smooth = 1e-6
        self.total = self.add_variable(shape=(), initializer="zeros", dtype="float32", name="total")
        self.count = self.add_variable(shape=(), initializer="zeros", dtype="float32", name="count")

    def update_state(self, y_true, y_pred, sample_weight=None):
        del sample_weight  # the original metric is unweighted
        y_pred = ops.cast(ops.convert_to_tensor(y_pred), "float32")
        labels = _true_labels(ops.convert_to_tensor(y_true), y_pred)
        if self.num_classes == 1:
            p_fg = y_pred[..., 0:1]
            g_fg = ops.expand_dims(ops.cast(ops.equal(labels, 1), "float32"), -1)
            g = ops.concatenate([1.0 - g_fg, g_fg], axis=-1)
            p = ops.concatenate([1.0 - p_fg, p_fg], axis=-1)
        else:
            g = ops.one_hot(labels, self.num_classes, dtype="float32")
            p = y_pred
        dice = (2.0 * ops.sum(g * p) + self.smooth) / (ops.sum(g) + ops.sum(p) + self.smooth)
        self.total.assign_add(dice)
        self.count.assign_add(1.0)

    def result(self):
        return ops.where(ops.greater(self.count, 0.0), self.total / ops.maximum(self.count, 1.0), 0.0)

    def get_config(self):
        config = super().get_config()
        config.update(num_classes=self.num_classes)
        return config


_UNSAFE = re.compile(r"[^0-9A-Za-z_.\-]")


def metric_safe_name(name: str) -> str:
    """Replace characters unsafe in metric / TF scope names (spaces, slashes, ...) by ``_``."""
    return _UNSAFE.sub("_", str(name))


def build_metrics(class_names: Sequence[str], num_classes: int) -> list[keras.metrics.Metric]:
    """Metrics to compile a segmentation model with.

    One :class:`ClassDice` per foreground class named ``dice_<class name>``
    (characters other than letters, digits, ``_ . -`` replaced by ``_``), then
    :class:`ForegroundMeanDice` (``dice_fg_mean``) and
    :class:`OriginalDiceCoefMulticlass` (``dice_incl_bg_original``). For a
    binary task (``num_classes == 1``) ``class_names`` is
    ``[background, foreground]`` and there is one :class:`ClassDice`.
    """
    num_classes = _check_num_classes(num_classes)
    class_names = list(class_names)
    expected = 2 if num_classes == 1 else num_classes
    if len(class_names) != expected:
        raise ValueError(
            f"class_names has {len(class_names)} entries {class_names!r} but num_classes="
            f"{num_classes} needs {expected}"
            + (" ([background, foreground] for a binary task)" if num_classes == 1 else "")
        )
    metrics: list[keras.metrics.Metric] = [
        ClassDice(k, num_classes, name=f"dice_{metric_safe_name(class_names[k])}") for k in range(1, expected)
    ]
    metrics.append(ForegroundMeanDice(num_classes))
    metrics.append(OriginalDiceCoefMulticlass(num_classes))
    names = [m.name for m in metrics]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"metric names clash after sanitising class names {class_names!r}: {duplicates}")
    return metrics
