"""Losses and metrics against hand-computed / numpy reference values."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest

from segexp.config.schema import loss_names
from segexp.models.losses import (
    BCEDiceLoss,
    CrossEntropyLoss,
    DiceCELoss,
    SoftDiceLoss,
    build_loss,
)
from segexp.models.metrics import (
    ClassDice,
    ForegroundMeanDice,
    OriginalDiceCoefMulticlass,
    build_metrics,
    metric_safe_name,
)

EPS = keras.config.epsilon()


# ---------------------------------------------------------------- helpers
def onehot_probs(labels: np.ndarray, num_classes: int, on: float = 1.0) -> np.ndarray:
    """Probabilities with ``on`` on the given label and the rest spread evenly."""
    off = (1.0 - on) / (num_classes - 1)
    p = np.full(labels.shape + (num_classes,), off, dtype=np.float32)
    np.put_along_axis(p, labels[..., None].astype(np.int64), on, axis=-1)
    return p


def np_soft_dice_loss(y, p, num_classes, include_background=False, smooth=1e-5):
    if num_classes == 1:
        g = (y == 1).astype(np.float64)[..., None]
        p = p.astype(np.float64)
        if include_background:
            g = np.concatenate([1 - g, g], -1)
            p = np.concatenate([1 - p, p], -1)
    else:
        g = np.eye(num_classes)[y]
        p = p.astype(np.float64)
        if not include_background:
            g, p = g[..., 1:], p[..., 1:]
    axes = tuple(range(p.ndim - 1))
    dice = (2 * (p * g).sum(axes) + smooth) / (p.sum(axes) + g.sum(axes) + smooth)
    return 1 - dice.mean()


def np_ce(y, p, num_classes):
    p = np.clip(p.astype(np.float64), EPS, 1 - EPS)
    if num_classes == 1:
        g = (y == 1).astype(np.float64)
        q = np.clip(p[..., 0], EPS, 1 - EPS)
        return float(np.mean(-(g * np.log(q) + (1 - g) * np.log(1 - q))))
    pt = np.take_along_axis(p, y[..., None].astype(np.int64), -1)[..., 0]
    return float(np.mean(-np.log(pt)))


def np_hard_dice(y, p, k, num_classes):
    pred = (p[..., 0] > 0.5).astype(int) if num_classes == 1 else p.argmax(-1)
    tp = np.sum((pred == k) & (y == k))
    fp = np.sum((pred == k) & (y != k))
    fn = np.sum((pred != k) & (y == k))
    return math.nan if 2 * tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)


def np_original(y, p, num_classes):
    if num_classes == 1:
        g = (y == 1).astype(np.float64)[..., None]
        g, p = np.concatenate([1 - g, g], -1), np.concatenate([1 - p, p], -1)
    else:
        g = np.eye(num_classes)[y]
    return (2 * (g * p).sum() + 1e-6) / (g.sum() + p.sum() + 1e-6)


def value(x) -> float:
    return float(keras.ops.convert_to_numpy(x))


def metric_value(metric, y, p, sample_weight=None) -> float:
    metric.reset_state()
    metric.update_state(y, p, sample_weight=sample_weight)
    return value(metric.result())


# 4x4 example with hand-counted TP/FP/FN.
Y44 = np.array([[0, 0, 1, 1], [0, 1, 1, 1], [0, 0, 2, 2], [0, 0, 2, 2]], dtype=np.uint8)[None]
P44_LABELS = np.array([[0, 1, 1, 1], [0, 0, 1, 1], [0, 0, 2, 0], [0, 2, 2, 2]], dtype=np.uint8)[None]
# class 1: TP=4, FP=1 (0,1), FN=1 (1,1) -> 8/10; class 2: TP=3, FP=1 (3,1), FN=1 (2,3) -> 6/8
DICE44 = {1: 0.8, 2: 0.75}


# ---------------------------------------------------------------- losses
def test_losses_perfect_prediction_is_zero():
    y = np.random.default_rng(0).integers(0, 3, size=(2, 8, 8)).astype(np.uint8)
    p = onehot_probs(y, 3)
    assert value(SoftDiceLoss(3)(y, p)) == pytest.approx(0.0, abs=1e-6)
    assert value(CrossEntropyLoss(3)(y, p)) == pytest.approx(0.0, abs=1e-5)
    assert value(DiceCELoss(3)(y, p)) == pytest.approx(0.0, abs=1e-5)


def test_losses_match_numpy_on_4x4_example():
    p = onehot_probs(P44_LABELS, 3, on=0.7)
    for include_bg in (False, True):
        got = value(SoftDiceLoss(3, include_background=include_bg)(Y44, p))
        assert got == pytest.approx(np_soft_dice_loss(Y44, p, 3, include_bg), rel=1e-5)
    ce = np_ce(Y44, p, 3)
    assert value(CrossEntropyLoss(3)(Y44, p)) == pytest.approx(ce, rel=1e-5)
    want = 0.5 * np_soft_dice_loss(Y44, p, 3) + 2.0 * ce
    got = value(DiceCELoss(3, dice_weight=0.5, ce_weight=2.0)(Y44, p))
    assert got == pytest.approx(want, rel=1e-5)


def test_dice_loss_is_batch_dice_not_mean_of_images():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, size=(3, 6, 6)).astype(np.uint8)
    p = rng.dirichlet(np.ones(3), size=(3, 6, 6)).astype(np.float32)
    batch = value(SoftDiceLoss(3)(y, p))
    assert batch == pytest.approx(np_soft_dice_loss(y, p, 3), rel=1e-5)
    per_image = np.mean([np_soft_dice_loss(y[i : i + 1], p[i : i + 1], 3) for i in range(3)])
    assert batch != pytest.approx(per_image, rel=1e-4)


@pytest.mark.parametrize("include_background", [False, True])
def test_dice_loss_per_image_is_monai_batch_false(include_background):
    """``batch=False``: one Dice per image and class, then their mean (MONAI ``DiceLoss(batch=False)``);
    an image without a class still counts that class (Dice ~1 when predicted absent, ~0 when not)."""
    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, size=(3, 6, 6)).astype(np.uint8)
    y[1][y[1] == 2] = 0  # class 2 absent from image 1
    p = rng.dirichlet(np.ones(3), size=(3, 6, 6)).astype(np.float32)
    per_image = np.mean([np_soft_dice_loss(y[i : i + 1], p[i : i + 1], 3, include_background) for i in range(3)])
    got = value(SoftDiceLoss(3, include_background=include_background, batch=False)(y, p))
    assert got == pytest.approx(per_image, rel=1e-5)
    loss = build_loss("dice_ce", 3, batch=False, include_background=include_background)
    assert loss._dice.batch is False and loss._dice.include_background is include_background
    assert value(loss(y, p)) == pytest.approx(per_image + np_ce(y, p, 3), rel=1e-5)


def test_disjoint_prediction_dice_loss_near_one_and_ce_finite():
    y = np.zeros((1, 4, 4), np.uint8)
    y[0, :2] = 1
    pred = np.where(y == 1, 2, 1).astype(np.uint8)  # every pixel wrong, never right
    p = onehot_probs(pred, 3)
    assert value(SoftDiceLoss(3)(y, p)) == pytest.approx(1.0, abs=1e-6)
    ce = value(CrossEntropyLoss(3)(y, p))
    assert np.isfinite(ce) and ce == pytest.approx(-math.log(EPS), rel=1e-3)


def test_losses_accept_channel_last_y_and_float16_predictions():
    p = onehot_probs(P44_LABELS, 3, on=0.7)
    want = value(DiceCELoss(3)(Y44, p))
    got = DiceCELoss(3)(Y44[..., None], p.astype(np.float16))
    assert keras.backend.standardize_dtype(got.dtype) == "float32"
    assert value(got) == pytest.approx(want, rel=1e-3)


def test_binary_losses_match_numpy():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, size=(2, 5, 5)).astype(np.uint8)
    p = rng.uniform(0.01, 0.99, size=(2, 5, 5, 1)).astype(np.float32)
    assert value(SoftDiceLoss(1)(y, p)) == pytest.approx(np_soft_dice_loss(y, p, 1), rel=1e-5)
    assert value(SoftDiceLoss(1, include_background=True)(y, p)) == pytest.approx(
        np_soft_dice_loss(y, p, 1, True), rel=1e-5
    )
    assert value(CrossEntropyLoss(1)(y, p)) == pytest.approx(np_ce(y, p, 1), rel=1e-5)
    bce_dice = build_loss("bce_dice", 1)
    assert isinstance(bce_dice, DiceCELoss) and isinstance(bce_dice, BCEDiceLoss)
    assert value(bce_dice(y, p)) == pytest.approx(np_soft_dice_loss(y, p, 1) + np_ce(y, p, 1), rel=1e-5)
    # perfect binary prediction
    perfect = y[..., None].astype(np.float32)
    assert value(bce_dice(y, perfect)) == pytest.approx(0.0, abs=1e-5)


def test_build_loss_types():
    assert isinstance(build_loss("categorical_crossentropy", 4), CrossEntropyLoss)
    assert isinstance(build_loss("dice", 4), SoftDiceLoss)
    assert isinstance(build_loss("dice_ce", 4), DiceCELoss)
    assert set(loss_names()) == {"categorical_crossentropy", "dice", "dice_ce", "bce_dice"}


def test_bce_dice_guard_for_multiclass():
    with pytest.raises(ValueError) as err:
        build_loss("bce_dice", 8)
    assert str(err.value) == (
        "loss: 'bce_dice' is for binary tasks (model.num_classes == 1), got num_classes=8; use loss=dice_ce"
    )


def test_unknown_loss_error():
    with pytest.raises(ValueError) as err:
        build_loss("focal", 3)
    msg = str(err.value)
    assert "loss" in msg and "'focal'" in msg
    for name in loss_names():
        assert name in msg


# ---------------------------------------------------------------- metrics
def test_metrics_4x4_known_counts():
    p = onehot_probs(P44_LABELS, 3, on=0.6)
    for k, want in DICE44.items():
        assert metric_value(ClassDice(k, 3), Y44, p) == pytest.approx(want, abs=1e-6)
        assert np_hard_dice(Y44, p, k, 3) == pytest.approx(want)
    m = ClassDice(1, 3)
    m.update_state(Y44, p)
    assert [value(v) for v in (m.tp, m.fp, m.fn)] == [4.0, 1.0, 1.0]
    assert metric_value(ForegroundMeanDice(3), Y44, p) == pytest.approx(0.775, abs=1e-6)


def test_metrics_perfect_and_disjoint():
    y = np.random.default_rng(3).integers(0, 3, size=(2, 8, 8)).astype(np.uint8)
    perfect = onehot_probs(y, 3, on=0.9)
    assert metric_value(ClassDice(1, 3), y, perfect) == pytest.approx(1.0)
    assert metric_value(ForegroundMeanDice(3), y, perfect) == pytest.approx(1.0)
    wrong = onehot_probs(((y.astype(int) + 1) % 3).astype(np.uint8), 3, on=0.9)
    assert metric_value(ClassDice(1, 3), y, wrong) == 0.0
    assert metric_value(ClassDice(2, 3), y, wrong) == 0.0
    assert metric_value(ForegroundMeanDice(3), y, wrong) == 0.0
    # empty prediction (all background) with foreground in the truth -> 0, not NaN
    empty = onehot_probs(np.zeros_like(y), 3)
    assert metric_value(ForegroundMeanDice(3), y, empty) == 0.0


def test_class_absent_in_truth_and_prediction_is_nan_and_skipped():
    p = onehot_probs(P44_LABELS, 4, on=0.7)  # class 3 never predicted, never true
    assert math.isnan(metric_value(ClassDice(3, 4), Y44, p))
    assert math.isnan(np_hard_dice(Y44, p, 3, 4))
    assert metric_value(ForegroundMeanDice(4), Y44, p) == pytest.approx(0.775, abs=1e-6)
    # every foreground class absent -> NaN
    bg = np.zeros((1, 4, 4), np.uint8)
    assert math.isnan(metric_value(ForegroundMeanDice(4), bg, onehot_probs(bg, 4)))
    # predicted but absent in truth -> 0 (false positives are not forgiven)
    p_fp = onehot_probs(np.full((1, 4, 4), 3, np.uint8), 4)
    assert metric_value(ClassDice(3, 4), bg, p_fp) == 0.0


def test_accumulation_is_dataset_level():
    # batch A: class 1 large and perfect; batch B: class 1 tiny and missed.
    ya = np.zeros((1, 8, 8), np.uint8)
    ya[0, :4] = 1
    pa = onehot_probs(ya, 3)
    yb = np.zeros((1, 8, 8), np.uint8)
    yb[0, 0, 0] = 1
    yb[0, 5:, 5:] = 2
    pb = onehot_probs(np.where(yb == 2, 2, 0).astype(np.uint8), 3)
    y, p = np.concatenate([ya, yb]), np.concatenate([pa, pb])
    for make in (lambda: ClassDice(1, 3), lambda: ClassDice(2, 3), lambda: ForegroundMeanDice(3)):
        acc = make()
        acc.update_state(ya, pa)
        acc.update_state(yb, pb)
        assert value(acc.result()) == pytest.approx(metric_value(make(), y, p), abs=1e-6)
    d1 = 2 * 32 / (2 * 32 + 1)  # TP=32, FN=1 over the concatenation
    acc = ClassDice(1, 3)
    acc.update_state(ya, pa)
    acc.update_state(yb, pb)
    assert value(acc.result()) == pytest.approx(d1, abs=1e-6)
    assert d1 != pytest.approx((1.0 + 0.0) / 2)  # not the mean of batch Dice values
    acc.reset_state()
    assert math.isnan(value(acc.result()))


def test_sample_weight_zero_drops_a_sample():
    y = np.stack([Y44[0], np.ones((4, 4), np.uint8)])
    p = np.concatenate([onehot_probs(P44_LABELS, 3), onehot_probs(np.zeros((1, 4, 4), np.uint8), 3)])
    got = metric_value(ClassDice(1, 3), y, p, sample_weight=np.array([1.0, 0.0]))
    assert got == pytest.approx(DICE44[1], abs=1e-6)


def test_original_metric_includes_background():
    y = np.zeros((2, 32, 32), np.uint8)
    y[:, 10:14, 10:14] = 1  # 16 of 1024 pixels foreground
    all_bg = onehot_probs(np.zeros_like(y), 2)
    orig = metric_value(OriginalDiceCoefMulticlass(2), y, all_bg)
    assert orig > 0.9
    assert orig == pytest.approx(np_original(y, all_bg, 2), rel=1e-6)
    assert orig == pytest.approx(1008 / 1024, rel=1e-5)
    assert metric_value(ForegroundMeanDice(2), y, all_bg) == 0.0
    assert metric_value(ClassDice(1, 2), y, all_bg) == 0.0


def test_original_metric_is_mean_over_batches():
    rng = np.random.default_rng(4)
    ys = [rng.integers(0, 3, size=(n, 6, 6)).astype(np.uint8) for n in (1, 3)]
    ps = [rng.dirichlet(np.ones(3), size=(n, 6, 6)).astype(np.float32) for n in (1, 3)]
    m = OriginalDiceCoefMulticlass(3)
    for y, p in zip(ys, ps):
        m.update_state(y, p)
    want = np.mean([np_original(y, p, 3) for y, p in zip(ys, ps)])
    assert value(m.result()) == pytest.approx(want, rel=1e-5)


def test_binary_metrics():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, size=(2, 6, 6)).astype(np.uint8)
    p = rng.uniform(0, 1, size=(2, 6, 6, 1)).astype(np.float32)
    want = np_hard_dice(y, p, 1, 1)
    assert metric_value(ClassDice(1, 1), y, p) == pytest.approx(want, abs=1e-6)
    assert metric_value(ForegroundMeanDice(1), y, p) == pytest.approx(want, abs=1e-6)
    assert metric_value(OriginalDiceCoefMulticlass(1), y, p) == pytest.approx(np_original(y, p, 1), rel=1e-5)
    perfect = y[..., None].astype(np.float32)
    assert metric_value(ClassDice(1, 1), y[..., None], perfect) == pytest.approx(1.0)
    ms = build_metrics(["background", "tumour"], 1)
    assert [m.name for m in ms] == ["dice_tumour", "dice_fg_mean", "dice_incl_bg_original"]


def test_build_metrics_names_and_validation():
    names = ["BG", "AV", "Myocardium", "LV cavity", "RA/LA"]
    ms = build_metrics(names, 5)
    assert [m.name for m in ms] == [
        "dice_AV",
        "dice_Myocardium",
        "dice_LV_cavity",
        "dice_RA_LA",
        "dice_fg_mean",
        "dice_incl_bg_original",
    ]
    assert [m.class_index for m in ms[:4]] == [1, 2, 3, 4]
    assert metric_safe_name("a b/c\\d") == "a_b_c_d"
    with pytest.raises(ValueError, match="num_classes"):
        build_metrics(["bg", "a"], 3)
    with pytest.raises(ValueError, match="binary"):
        build_metrics(["fg"], 1)
    with pytest.raises(ValueError, match="clash"):
        build_metrics(["bg", "a b", "a/b"], 3)


# ---------------------------------------------------------------- serialization
@pytest.mark.parametrize(
    "obj",
    [
        SoftDiceLoss(3, include_background=True, smooth=1e-3),
        CrossEntropyLoss(1),
        DiceCELoss(4, dice_weight=0.3, ce_weight=0.7),
        DiceCELoss(4, include_background=True, batch=False),
        ClassDice(2, 3, name="dice_Myocardium"),
        ForegroundMeanDice(3),
        OriginalDiceCoefMulticlass(3),
    ],
    ids=lambda o: type(o).__name__,
)
def test_config_round_trip(obj):
    config = obj.get_config()
    clone = type(obj).from_config(config)
    assert clone.get_config() == config
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(obj))
    assert type(restored) is type(obj) and restored.get_config() == config


@pytest.mark.parametrize(
    "num_classes,loss_name,class_names",
    [(3, "dice_ce", ["background", "LV cavity", "Myocardium"]), (1, "bce_dice", ["bg", "fg"])],
)
def test_compiled_model_fit_save_load(tmp_path, num_classes, loss_name, class_names):
    rng = np.random.default_rng(6)
    x = rng.normal(size=(4, 8, 8, 1)).astype(np.float32)
    y = rng.integers(0, max(num_classes, 2), size=(4, 8, 8)).astype(np.uint8)
    activation = "sigmoid" if num_classes == 1 else "softmax"
    inputs = keras.Input((8, 8, 1))
    outputs = keras.layers.Conv2D(num_classes, 1, activation=activation)(inputs)
    model = keras.Model(inputs, outputs)
    model.compile(
        optimizer="adam",
        loss=build_loss(loss_name, num_classes),
        metrics=build_metrics(class_names, num_classes),
    )
    hist = model.fit(x, y, batch_size=4, epochs=1, validation_data=(x, y), verbose=0)
    fg = [f"dice_{metric_safe_name(n)}" for n in class_names[1:]]
    for name in ["loss", *fg, "dice_fg_mean", "dice_incl_bg_original"]:
        assert name in hist.history and f"val_{name}" in hist.history
    before = model.evaluate(x, y, verbose=0, return_dict=True)

    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded.loss) is type(model.loss)
    after = loaded.evaluate(x, y, verbose=0, return_dict=True)
    assert set(after) == set(before)
    for key, val in before.items():
        assert after[key] == pytest.approx(val, rel=1e-5, nan_ok=True)
