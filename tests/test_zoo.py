"""The networks beyond FlexUNet and ResUNet (issue 14): each builds, trains on every loss, saves, reloads
safely and refuses bad parameters by name. Sizes are tiny; parameter counts are derived by hand from
the paper's layer list (the formula is in each test)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest

from segexp.config.schema import loss_names
from segexp.core.errors import ConfigError
from segexp.models import build_model
from segexp.models.losses import build_loss
from segexp.models.saving import load_keras_model, save_keras_model
from segexp.training.loop import validate_run_config

from .conftest import assert_model_key_refused, compose_config, random_batch

#: Tiny parameters of each network (the preset's keys, small widths).
TINY: dict[str, dict[str, Any]] = {
    "attention_unet": dict(filters=[4, 8, 16], norm="batch", norm_groups=4, dropout_rate=0.1),
    "multiresunet": dict(filters=[8, 16, 32], alpha=1.67, norm="batch", norm_groups=4, dropout_rate=0.1),
    "efficient_unet": dict(
        variant="b0",
        encoder_weights=None,
        decoder_filters=[32, 16, 16, 8, 8],
        norm="batch",
        norm_groups=4,
        dropout_rate=0.1,
    ),
    "deeplabv3plus": dict(
        atrous_rates=[1, 2, 3], aspp_filters=16, low_level_filters=8, norm="batch", norm_groups=4, dropout_rate=0.1
    ),
}


#: Networks whose encoder is a keras.applications model (ResNet-50, EfficientNet): a step costs seconds, so the
#: loss-by-loss and two-size tests run with the slow ones (`pytest -m slow`); build, count, save and rules stay fast.
HEAVY = {"efficient_unet", "deeplabv3plus"}


def networks(heavy_slow: bool = True) -> list:
    return [pytest.param(n, marks=pytest.mark.slow) if heavy_slow and n in HEAVY else n for n in sorted(TINY)]


def tiny(name: str, height: int = 32, width: int = 32, channels: int = 1, classes: int = 3, **options) -> keras.Model:
    params = {**TINY[name], **options}
    return build_model(
        name=name, image_height=height, image_width=width, image_channels=channels, num_classes=classes, **params
    )


@pytest.mark.parametrize("name", networks())
@pytest.mark.parametrize(("height", "width", "channels"), [(32, 32, 1), (64, 32, 3)])
def test_builds_at_two_sizes_with_one_or_three_channels(name: str, height: int, width: int, channels: int) -> None:
    model = tiny(name, height, width, channels)
    assert model.inputs[0].dtype == "uint8" and tuple(model.inputs[0].shape[1:]) == (height, width, channels)
    x, _ = random_batch(2, height, width, channels, 3)
    y = model.predict(x, verbose=0)
    assert y.shape == (2, height, width, 3) and y.dtype == np.float32
    np.testing.assert_allclose(y.sum(-1), 1.0, atol=1e-5)
    binary = tiny(name, height, width, channels, classes=1)
    p = binary.predict(x, verbose=0)
    assert p.shape == (2, height, width, 1) and 0.0 <= p.min() and p.max() <= 1.0


@pytest.mark.parametrize("name", networks())
@pytest.mark.parametrize(
    "loss",
    [
        n if n == "dice_ce" else pytest.param(n, marks=pytest.mark.slow)  # the default loss;
        for n in loss_names()  # every conf/loss/ YAML
    ],
)  # the rest: slow
def test_one_training_step_on_each_loss(name: str, loss: str) -> None:
    classes = 1 if loss == "bce_dice" else 3
    model = tiny(name, classes=classes)
    model.compile(optimizer="adam", loss=build_loss(loss, classes))
    x, y = random_batch(2, 32, 32, 1, classes)
    before = [w.copy() for w in model.get_weights()]
    value = float(model.train_on_batch(x, y))
    assert np.isfinite(value)
    assert any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights()))


@pytest.mark.parametrize("name", networks(heavy_slow=False))
def test_save_safe_load_identical_predictions(name: str, tmp_path: Path) -> None:
    model = tiny(name, channels=3)
    x, _ = random_batch(2, 32, 32, 3, 3, seed=5)
    expected = model.predict(x, verbose=0)
    save_keras_model(model, tmp_path / "m.keras")
    loaded = load_keras_model(tmp_path / "m.keras")  # safe mode
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), expected)


def test_every_preset_composes_and_validates(tmp_path: Path) -> None:
    for name in TINY:
        typed = validate_run_config(compose_config([f"paths.root={tmp_path}", f"model={name}"]))
        assert typed.model.name == name


def test_attention_unet_parameter_count_follows_the_paper() -> None:
    """Levels f = [4, 8, 16], 1 input channel, 3 classes, batch norm (4 numbers per channel), convs
    before a norm without bias. Encoder level: 9*c_in*f + 4f + 9*f*f + 4f. Gate at level i (F = f_i // 2,
    gating width g = f_{i+1}): theta 2*2*f_i*F (no bias) + phi g*F + F + psi F + 1. Up: 2*2*g*f_i + f_i.
    Decoder double conv on the concatenation: 9*2f_i*f_i + 4f_i + 9*f_i*f_i + 4f_i. Head: f_0*K + K."""
    f, c_in, k = [4, 8, 16], 1, 3

    def double(c: int, out: int) -> int:
        return 9 * c * out + 4 * out + 9 * out * out + 4 * out

    total = double(c_in, f[0]) + double(f[0], f[1]) + double(f[1], f[2])
    for i in (1, 0):
        inter, g = f[i] // 2, f[i + 1]
        total += 4 * f[i] * inter + g * inter + inter + inter + 1  # the gate
        total += 4 * g * f[i] + f[i] + double(2 * f[i], f[i])  # up and the decoder level
    total += f[0] * k + k
    assert tiny("attention_unet").count_params() == total == 7901


def test_attention_gate_is_one_coefficient_per_pixel() -> None:
    model = tiny("attention_unet")
    for level in (0, 1):
        assert model.get_layer(f"gate{level}_psi").output.shape[-1] == 1


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("filters", [4], r"model\.filters: expected at least two widths"),
        ("dropout_rate", 1.5, r"model\.dropout_rate: must lie in \[0, 1\)"),
        ("image_height", 36, r"model\.image_height: 36 is not divisible by 2\*\*\(len\(filters\)-1\) = 16"),
        ("norm_groups", 3, r"model\.norm_groups: must divide every width"),
        ("depth", 3, r"model\.depth: unknown key for model attention_unet"),
    ],
)
def test_attention_unet_bad_parameters_are_refused_by_name(tmp_path: Path, key: str, value: Any, message: str) -> None:
    assert_model_key_refused(
        [f"paths.root={tmp_path}", "model=attention_unet", "model.norm=group"], key, value, message
    )


def test_multiresunet_parameter_count_follows_the_paper() -> None:
    """U = [8, 16, 32], alpha 1.67, 1 input channel, 3 classes, batch norm (4 numbers per channel), convs
    before a norm without bias. Block(c_in, U) with (a, b, c) = int(1.67U * (0.167, 0.333, 0.5)), s = a+b+c:
    1x1 shortcut c_in*s + 4s; chain 9*c_in*a + 4a + 9ab + 4b + 9bc + 4c; norms 4s + 4s. ResPath unit
    (c_in -> f): 1x1 c_in*f + 4f, 3x3 9*c_in*f + 4f, norm 4f; level i of 2 has 2 - i units. Up: 4*c_in*U + U."""
    u, alpha, c_in, k = [8, 16, 32], 1.67, 1, 3

    def widths(f: int) -> tuple[int, int, int]:
        w = alpha * f
        return int(w * 0.167), int(w * 0.333), int(w * 0.5)

    def block(c: int, f: int) -> tuple[int, int]:
        a, b, cc = widths(f)
        s = a + b + cc
        return c * s + 4 * s + 9 * c * a + 4 * a + 9 * a * b + 4 * b + 9 * b * cc + 4 * cc + 8 * s, s

    def res_path(c: int, f: int, length: int) -> int:
        return sum(
            (c if i == 0 else f) * f + 4 * f + 9 * (c if i == 0 else f) * f + 4 * f + 4 * f for i in range(length)
        )

    total, c, outs = 0, c_in, []
    for level in range(2):
        n, c = block(c, u[level])
        total += n + res_path(c, u[level], 2 - level)
        outs.append(u[level])
    n, c = block(c, u[2])
    total += n
    for level in (1, 0):
        total += 4 * c * u[level] + u[level]  # transposed conv
        n, c = block(u[level] + outs[level], u[level])
        total += n
    total += c * k + k
    assert widths(8) == (2, 4, 6) and widths(32) == (8, 17, 26)
    assert tiny("multiresunet").count_params() == total


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("alpha", 0.0, r"model\.alpha: must be > 0"),
        ("alpha", 0.1, r"model\.alpha: alpha \* filters / 6 must be >= 1"),
        ("norm", "group", r"model\.norm: group is not available for multiresunet"),
        ("filters", [32], r"model\.filters: expected at least two"),
    ],
)
def test_multiresunet_bad_parameters_are_refused_by_name(tmp_path: Path, key: str, value: Any, message: str) -> None:
    assert_model_key_refused([f"paths.root={tmp_path}", "model=multiresunet"], key, value, message)


def test_deeplabv3plus_parameter_count() -> None:
    """Reference: Keras' ResNet-50 up to ``conv4_block6_out`` (built by ``keras.applications``). The rest by the
    paper's layer list, A = 16 ASPP filters, L = 8 low-level filters, K = 3 classes, batch norm (4 per channel),
    convs before a norm without bias: ASPP 1x1 1024*A + 4A; three atrous 3x3 3*(9*1024*A + 4A); image pooling
    1024*A + A (bias, no norm); projection 5A*A + 4A; low-level 1x1 256*L + 4L; decoder 9(A+L)A + 4A + 9A*A + 4A;
    head A*K + K."""
    resnet = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(32, 32, 1))
    encoder = keras.Model(resnet.input, resnet.get_layer("conv4_block6_out").output).count_params()
    a, low, k = 16, 8, 3
    rest = (
        1024 * a
        + 4 * a
        + 3 * (9 * 1024 * a + 4 * a)
        + 1024 * a
        + a
        + 5 * a * a
        + 4 * a
        + 256 * low
        + 4 * low
        + 9 * (a + low) * a
        + 4 * a
        + 9 * a * a
        + 4 * a
        + a * k
        + k
    )
    assert tiny("deeplabv3plus").count_params() == encoder + rest


def test_efficient_unet_parameter_count() -> None:
    """Reference: Keras' EfficientNet-B0 without top (``keras.applications``). Decoder by its layer list: level i
    upsamples, concatenates the skip (672, 240, 144, 96 channels at strides 16...2; none at stride 1) and applies
    two 3x3 convs of f_i: 9*c_in*f + 4f + 9*f*f + 4f (batch norm, no bias); head f_4*K + K."""
    encoder = keras.applications.EfficientNetB0(include_top=False, weights=None, input_shape=(32, 32, 1)).count_params()
    filters, skips, k = [32, 16, 16, 8, 8], [672, 240, 144, 96, 0], 3
    total, c = encoder, 1280
    for f, skip in zip(filters, skips):
        total += 9 * (c + skip) * f + 4 * f + 9 * f * f + 4 * f
        c = f
    total += c * k + k
    assert tiny("efficient_unet").count_params() == total


def test_efficient_unet_loads_local_encoder_weights(tmp_path: Path) -> None:
    encoder = keras.applications.EfficientNetB0(include_top=False, weights=None, input_shape=(32, 32, 1))
    encoder.save_weights(tmp_path / "b0.weights.h5")
    model = tiny("efficient_unet", encoder_weights=str(tmp_path / "b0.weights.h5"))
    np.testing.assert_array_equal(
        model.get_layer("encoder").get_layer("stem_conv").get_weights()[0],
        encoder.get_layer("stem_conv").get_weights()[0],
    )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["model.encoder_weights=/nonexistent/b0.weights.h5"],
            r"model\.encoder_weights: /nonexistent/b0\.weights\.h5 does not exist",
        ),
        (["model.encoder_weights=/tmp/b0.h5"], r"model\.encoder_weights: expected a \.weights\.h5 file"),
        (["model.variant=b9"], r"model\.variant: expected one of"),
        (["model.image_height=100"], r"model\.image_height: 100 is not a multiple of 32"),
        (["model.decoder_filters=[64,32]"], r"model\.decoder_filters: expected five"),
    ],
)
def test_efficient_unet_bad_parameters_are_refused_by_name(tmp_path: Path, overrides, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        validate_run_config(compose_config([f"paths.root={tmp_path}", "model=efficient_unet", *overrides]))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.atrous_rates=[6,12]"], r"model\.atrous_rates: expected three"),
        (["model.aspp_filters=0"], r"model\.aspp_filters: must be >= 1"),
        (["model.image_width=48"], r"model\.image_width: 48 is not a multiple of 32"),
    ],
)
def test_deeplabv3plus_bad_parameters_are_refused_by_name(tmp_path: Path, overrides, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        validate_run_config(compose_config([f"paths.root={tmp_path}", "model=deeplabv3plus", *overrides]))
