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

``training.loss`` names an entry of :data:`LOSSES` (its keys are exactly the option set
:class:`segexp.config.options.Loss`, checked on import), or is a mapping with a ``_target_``:
a loss of the user's. Adding a built-in loss is its class here (or in a module of its own), a
member of ``Loss`` and one :data:`LOSSES` entry saying whether it has a Dice term and which
``num_classes`` it refuses.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import keras
from keras import ops

from segexp.config.options import Loss, values
from segexp.config.schema import TrainingConfig
from segexp.core.errors import ConfigError

__all__ = [
    "LOSSES",
    "CrossEntropyLoss",
    "DiceCELoss",
    "LossKind",
    "SoftDiceLoss",
    "build_loss",
    "check_loss_config",
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


def _any_classes(name: str, num_classes: int) -> str | None:
    return None


def binary_only(name: str, num_classes: int) -> str | None:
    """The rule of a loss for binary tasks: a sigmoid head (``model.num_classes == 1``)."""
    if num_classes == 1:
        return None
    return (
        f"training.loss: {name!r} is for binary tasks (model.num_classes == 1), "
        f"got num_classes={num_classes}; use 'dice_ce'"
    )


@dataclass(frozen=True)
class LossKind:
    """One built-in ``training.loss``: the class built and what it asks of the config."""

    loss: type[keras.losses.Loss]  # called with num_classes, name and (dice=True) the Dice options
    dice: bool = True  # has a Dice term: training.dice sets it (without one, changing training.dice is an error)
    rule: Callable[[str, int], str | None] = _any_classes  # (name, num_classes) -> the problem, or None


def _every_option(table: dict[str, LossKind]) -> dict[str, LossKind]:
    """``table``, refused unless it has exactly one entry per member of :class:`Loss`, in its order."""
    if list(table) != list(Loss):
        raise RuntimeError(
            f"segexp.models.losses.LOSSES: {list(map(str, table))} must be the Loss options {values(Loss)}"
        )
    return table


#: ``training.loss`` name -> what it builds; keyed by :class:`segexp.config.options.Loss`, every member once.
LOSSES: dict[str, LossKind] = _every_option(
    {
        Loss.categorical_crossentropy: LossKind(CrossEntropyLoss, dice=False),
        Loss.dice: LossKind(SoftDiceLoss),
        Loss.dice_ce: LossKind(DiceCELoss),
        Loss.bce_dice: LossKind(DiceCELoss, rule=binary_only),
    }
)


def _and(names: list[str]) -> str:
    return ", ".join(names[:-1]) + f" and {names[-1]}" if len(names) > 1 else "".join(names)


def check_loss_config(t: TrainingConfig, num_classes: int | None) -> list[str]:
    """Problems of ``training.loss`` with ``training.dice`` and ``model.num_classes`` (None: the model section has
    problems of its own) by its :data:`LOSSES` entry; a name outside the table is the schema's to report, a
    user's loss its own."""
    kind = LOSSES.get(t.loss) if isinstance(t.loss, str) else None
    if kind is None:
        return []
    problem = None if num_classes is None else kind.rule(t.loss, num_classes)
    problems = [] if problem is None else [problem]
    if not kind.dice and (t.dice.batch is not True or t.dice.include_background is not False):
        # Compared with conf/training/default.yaml's values, the only way to tell an override of an inert
        # key (tests/test_recipe.py composes the defaults with such a loss, so a drift fails there).
        problems.append(
            f"training.dice: sets the Dice term of {_and([str(n) for n, k in LOSSES.items() if k.dice])}; "
            f"training.loss={t.loss} has none, so dice.batch={str(t.dice.batch).lower()} dice.include_background="
            f"{str(t.dice.include_background).lower()} would be ignored; drop the override or choose a Dice loss"
        )
    return problems


def build_loss(
    name: str | Mapping[str, Any], num_classes: int, batch_dice: bool = True, include_background: bool = False
) -> keras.losses.Loss:
    """Build the loss selected by config key ``training.loss`` (Dice options: ``training.dice``).

    A name is an entry of :data:`LOSSES`: ``categorical_crossentropy`` -> :class:`CrossEntropyLoss` (BCE when
    binary), ``dice`` -> :class:`SoftDiceLoss`, ``dice_ce`` -> :class:`DiceCELoss`, ``bce_dice`` ->
    :class:`DiceCELoss` for binary tasks only (``num_classes == 1``); ``batch_dice`` and ``include_background``
    set the Dice term. A mapping with a ``_target_`` is a loss of the user's: the target is called with the
    mapping's other keys and ``num_classes`` and must return a ``keras.losses.Loss``.
    """
    num_classes = _check_num_classes(num_classes)
    if not isinstance(name, str):
        return _user_loss(name, num_classes)
    kind = LOSSES.get(name)
    if kind is None:
        raise ValueError(f"training.loss: unknown loss {name!r}; expected one of " + ", ".join(map(repr, values(Loss))))
    problem = kind.rule(name, num_classes)
    if problem is not None:
        raise ValueError(problem)
    dice = {"batch": batch_dice, "include_background": include_background} if kind.dice else {}
    return kind.loss(num_classes, name=name, **dice)


def _user_loss(spec: Mapping[str, Any], num_classes: int) -> keras.losses.Loss:
    import hydra

    target = spec.get("_target_")
    try:
        loss = hydra.utils.instantiate(spec, num_classes=num_classes)
    except Exception as err:  # noqa: BLE001 - any failure to build it is the user's entry
        raise ConfigError(f"training.loss: cannot build {target!r} with num_classes={num_classes}: {err}") from err
    if not isinstance(loss, keras.losses.Loss):
        raise ConfigError(f"training.loss: {target!r} built a {type(loss).__name__}, expected a keras.losses.Loss")
    return loss
