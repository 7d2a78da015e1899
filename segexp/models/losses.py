"""Segmentation losses (backend-agnostic, ``keras.ops`` only).

Conventions (shared with :mod:`segexp.models.metrics`):

* ``y_true``: class-index masks ``(B, H, W)`` (any int/float dtype, typically
  ``uint8``), NOT one-hot. A trailing singleton channel ``(B, H, W, 1)`` is
  accepted and squeezed.
* ``y_pred``: probabilities ``(B, H, W, C)``. ``C == num_classes`` softmax
  channels, or, for a binary task (``num_classes == 1``), a single sigmoid
  channel holding P(foreground) with ``y_true`` in {0, 1}.
* Class 0 is background.

All losses compute in float32 (``y_pred`` is cast inside ``call``), so they are
safe under a ``mixed_float16`` / ``mixed_bfloat16`` dtype policy.

The run's loss is the top-level ``loss`` group: one YAML per loss in ``conf/loss/`` (``loss=dice_ce``, the
default), each a ``_target_`` entry with the loss's keys, built by :func:`build_loss` with ``num_classes``. A
loss states its own rules in its constructor (:class:`BCEDiceLoss` refuses several classes; a loss without a
Dice term takes no Dice keys), and start-up validation builds it once (:func:`check_loss_config`). Adding a
loss is its class (here or in a module of the user's) and one YAML in ``conf/loss/``; every list of losses
(``${losses:}`` in Optuna searches, docs and tests) is read from that folder.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import keras
from hydra.utils import get_object
from keras import ops
from omegaconf import DictConfig, OmegaConf

from segexp.config.schema import LOSS_DIR, loss_names
from segexp.core.errors import ConfigError

__all__ = [
    "BCEDiceLoss",
    "CrossEntropyLoss",
    "DiceCELoss",
    "SoftDiceLoss",
    "build_loss",
    "check_loss_config",
    "loss_config",
]


def _check_num_classes(num_classes) -> int:
    if isinstance(num_classes, bool) or int(num_classes) != num_classes or num_classes < 1:
        raise ValueError(f"num_classes must be an integer >= 1, got {num_classes!r}")
    return int(num_classes)


def _prepare(y_true, y_pred):
    """Return ``(labels int32 (B, H, W), probs float32 (B, H, W, C))``."""
    y_pred = ops.cast(y_pred, "float32")
    if len(y_true.shape) == len(y_pred.shape):
        # (B, H, W, 1) class-index mask -> (B, H, W)
        y_true = ops.squeeze(y_true, axis=-1)
    labels = ops.cast(y_true, "int32")
    return labels, y_pred


def _channels(labels, probs, num_classes, include_background):
    """Ground truth one-hot and probabilities of the classes Dice is taken over.

    Returns ``(g, p)``, both float32 ``(B, H, W, K)``.
    """
    if num_classes == 1:
        p_fg = probs[..., 0:1]
        g_fg = ops.expand_dims(ops.cast(ops.equal(labels, 1), "float32"), -1)
        if include_background:
            return (
                ops.concatenate([1.0 - g_fg, g_fg], axis=-1),
                ops.concatenate([1.0 - p_fg, p_fg], axis=-1),
            )
        return g_fg, p_fg
    g = ops.one_hot(labels, num_classes, dtype="float32")
    if not include_background:
        g = g[..., 1:]
        probs = probs[..., 1:]
    return g, probs


def _base_kwargs(kwargs, default_name):
    kwargs.setdefault("name", default_name)
    # Losses run in float32 even under a mixed-precision global policy.
    if kwargs.get("dtype") is None:
        kwargs["dtype"] = "float32"
    return kwargs


@keras.saving.register_keras_serializable(package="segexp")
class SoftDiceLoss(keras.losses.Loss):
    """Soft Dice loss (Milletari et al. 2016, V-Net), batch or per-image.

    ``loss = 1 - mean_{k[,b]} (2 * sum(p_k * g_k) + smooth) / (sum(p_k) + sum(g_k) + smooth)``

    where ``p_k`` are the predicted probabilities of class ``k`` and ``g_k`` the
    one-hot ground truth. With ``batch=True`` (nnU-Net's ``batch_dice``) the sums run over
    the batch AND all pixels: one Dice per class for the whole batch, stable for small
    structures absent from some images. With ``batch=False`` (MONAI ``DiceLoss(batch=False)``,
    its default) they run over each image's pixels, and the mean over images and classes.
    The mean runs over the foreground classes ``1..C-1`` unless ``include_background``
    (MONAI's default includes it). For ``num_classes == 1`` the single sigmoid channel is the
    foreground (with ``include_background`` the background channel ``1 - p`` is added).

    The loss is one value per batch (shape ``(1,)``, so Keras scales it by
    ``1 / replicas`` under a distribution strategy; with several replicas the
    batch is each replica's share): per-sample ``sample_weight`` has no
    per-sample meaning for a batch Dice and only scales the value.
    """

    def __init__(self, num_classes, include_background=False, smooth=1e-5, batch=True, **kwargs):
        super().__init__(**_base_kwargs(kwargs, "soft_dice_loss"))
        self.num_classes = _check_num_classes(num_classes)
        self.include_background = bool(include_background)
        self.smooth = float(smooth)
        self.batch = bool(batch)

    def call(self, y_true, y_pred):
        labels, probs = _prepare(y_true, y_pred)
        g, p = _channels(labels, probs, self.num_classes, self.include_background)
        axes = tuple(range(0 if self.batch else 1, len(p.shape) - 1))  # (batch +) spatial
        intersection = ops.sum(p * g, axis=axes)
        denominator = ops.sum(p, axis=axes) + ops.sum(g, axis=axes)
        dice = (2.0 * intersection + self.smooth) / (denominator + self.smooth)
        # shape (1,), not (): Keras scales a reduced loss by 1/replicas under a tf.distribute strategy,
        # but returns a 0-d value unscaled (keras.src.losses.loss.reduce_values), N times too big on N replicas
        return ops.reshape(1.0 - ops.mean(dice), (1,))

    def get_config(self):
        config = super().get_config()
        config.update(
            num_classes=self.num_classes,
            include_background=self.include_background,
            smooth=self.smooth,
            batch=self.batch,
        )
        return config


@keras.saving.register_keras_serializable(package="segexp")
class CrossEntropyLoss(keras.losses.Loss):
    """Pixel-wise cross-entropy from class indices and probabilities.

    Softmax (``num_classes >= 2``): ``CE = -log(p_{y})`` (sparse categorical
    cross-entropy). Sigmoid (``num_classes == 1``):
    ``BCE = -(y log p + (1 - y) log(1 - p))``. Probabilities are clipped to
    ``[eps, 1 - eps]`` (``eps = keras.config.epsilon()``) so the log is finite.
    ``call`` returns the per-pixel map ``(B, H, W)``; the default reduction
    averages it over batch and pixels (per-pixel or per-sample
    ``sample_weight`` therefore works as in Keras' built-in losses).
    """

    def __init__(self, num_classes, **kwargs):
        super().__init__(**_base_kwargs(kwargs, "cross_entropy_loss"))
        self.num_classes = _check_num_classes(num_classes)

    def call(self, y_true, y_pred):
        labels, probs = _prepare(y_true, y_pred)
        eps = keras.config.epsilon()
        if self.num_classes == 1:
            p = ops.clip(probs[..., 0], eps, 1.0 - eps)
            y = ops.cast(ops.equal(labels, 1), "float32")
            return -(y * ops.log(p) + (1.0 - y) * ops.log(1.0 - p))
        # Probability of the true class (one log per pixel instead of C).
        g = ops.one_hot(labels, self.num_classes, dtype="float32")
        p_true = ops.clip(ops.sum(g * probs, axis=-1), eps, 1.0 - eps)
        return -ops.log(p_true)

    def get_config(self):
        config = super().get_config()
        config.update(num_classes=self.num_classes)
        return config


@keras.saving.register_keras_serializable(package="segexp")
class DiceCELoss(keras.losses.Loss):
    """Weighted sum of soft Dice and cross-entropy (as in nnU-Net / MONAI ``DiceCELoss``).

    ``loss = dice_weight * SoftDiceLoss + ce_weight * mean(CrossEntropyLoss)``

    With ``num_classes == 1`` the CE term is binary cross-entropy (the
    ``bce_dice`` loss). Returns a scalar per batch.
    """

    def __init__(
        self,
        num_classes,
        dice_weight=1.0,
        ce_weight=1.0,
        include_background=False,
        smooth=1e-5,
        batch=True,
        **kwargs,
    ):
        super().__init__(**_base_kwargs(kwargs, "dice_ce_loss"))
        self.num_classes = _check_num_classes(num_classes)
        self.dice_weight = float(dice_weight)
        self.ce_weight = float(ce_weight)
        self.include_background = bool(include_background)
        self.smooth = float(smooth)
        self.batch = bool(batch)
        self._dice = SoftDiceLoss(
            self.num_classes, include_background=self.include_background, smooth=self.smooth, batch=self.batch
        )
        self._ce = CrossEntropyLoss(self.num_classes)

    def call(self, y_true, y_pred):
        dice = self._dice.call(y_true, y_pred)
        ce = ops.mean(self._ce.call(y_true, y_pred))
        return self.dice_weight * dice + self.ce_weight * ce

    def get_config(self):
        config = super().get_config()
        config.update(
            num_classes=self.num_classes,
            dice_weight=self.dice_weight,
            ce_weight=self.ce_weight,
            include_background=self.include_background,
            smooth=self.smooth,
            batch=self.batch,
        )
        return config


@keras.saving.register_keras_serializable(package="segexp")
class BCEDiceLoss(DiceCELoss):
    """:class:`DiceCELoss` for binary tasks (``loss=bce_dice``): soft Dice plus binary cross-entropy on a sigmoid
    head. Its rule: ``model.num_classes == 1``; any other count is refused with a :class:`ConfigError` naming it
    (a multi-class head takes ``loss=dice_ce``, the same sum with a softmax cross-entropy)."""

    def __init__(self, num_classes, **kwargs):
        kwargs.setdefault("name", "bce_dice")
        if _check_num_classes(num_classes) != 1:
            raise ConfigError(
                f"loss: {kwargs['name']!r} is for binary tasks (model.num_classes == 1), "
                f"got num_classes={num_classes}; use loss=dice_ce"
            )
        super().__init__(num_classes, **kwargs)


def loss_config(name: str) -> DictConfig:
    """The entry of the loss ``name`` of the ``loss`` group (``conf/loss/<name>.yaml``), as ``loss=<name>``
    composes it."""
    if name not in loss_names():
        raise ConfigError(f"loss: unknown loss {name!r}; expected one of {', '.join(map(repr, loss_names()))}")
    return cast(DictConfig, OmegaConf.load(LOSS_DIR / f"{name}.yaml"))  # a mapping: a _target_ entry


def build_loss(spec: str | Mapping[str, Any], num_classes: int, **keys: Any) -> keras.losses.Loss:
    """The loss of the ``loss`` entry ``spec`` (a mapping with a ``_target_``, or the name of a ``conf/loss/``
    YAML: ``"dice_ce"``) for a model of ``num_classes`` outputs; ``keys`` replace keys of the entry.

    The target is called with the entry's other keys and ``num_classes`` (``hydra.utils.instantiate``) and must
    return a ``keras.losses.Loss``. A loss states its own rules in its constructor: a :class:`ConfigError` it
    raises (``bce_dice`` with several classes) is raised as it is; anything else that stops it (a key it does
    not take) becomes one naming ``loss``.
    """
    import hydra

    num_classes = _check_num_classes(num_classes)
    entry = loss_config(spec) if isinstance(spec, str) else spec
    target = entry.get("_target_")
    try:
        loss = hydra.utils.instantiate(entry, num_classes=num_classes, **keys)
    except Exception as err:  # noqa: BLE001 - any failure to build it is the entry's
        cause = err.__cause__ or err  # hydra wraps what the target raised
        if isinstance(cause, ConfigError):
            raise cause from None
        given = sorted(({str(k) for k in entry} | set(keys)) - {"_target_"})
        raise ConfigError(
            f"loss: cannot build {target!r} with num_classes={num_classes} and the keys {given}: "
            f"{type(cause).__name__}: {cause} (a loss of yours with keys of its own: ~loss "
            "'+loss={_target_:my_pkg.MyLoss,...}' or a YAML of yours in conf/loss/)"
        ) from err
    if not isinstance(loss, keras.losses.Loss):
        raise ConfigError(f"loss: {target!r} built a {type(loss).__name__}, expected a keras.losses.Loss")
    return loss


def check_loss_config(loss: Any, num_classes: int | None) -> list[str]:
    """Problems of the ``loss`` entry with ``model.num_classes`` (None: the model section has problems of its own,
    the loss waits for them): the loss is built once, so what it refuses is reported at start-up, before any
    data is read. An entry without a ``_target_`` that imports is the schema's to report."""
    if num_classes is None or not isinstance(loss, Mapping) or "_target_" not in loss:
        return []
    try:
        get_object(loss["_target_"])
    except Exception:  # noqa: BLE001 - reported by segexp.config.schema._check_loss
        return []
    try:
        build_loss(loss, num_classes)
    except ConfigError as err:
        return [str(err)]
    return []
