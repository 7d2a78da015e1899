"""Tests for the FlexUNet builder, the model registry and the model presets."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest
from omegaconf import OmegaConf

from segexp.models import build_model, networks
from segexp.models.flexunet import build_flexunet, level_dilation, level_kernel
from segexp.models.layers import InstanceNormalization

from .conftest import compose_config

CONF_MODEL = Path(__file__).resolve().parents[1] / "conf" / "model"
PRESET_KEYS = {
    "name",
    "image_height",
    "image_width",
    "image_channels",
    "num_classes",
    "base_filters",
    "base_kernels",
    "num_layers",
    "dropout_rate",
    "dilation",
    "norm",
    "norm_groups",
    "residual",
    "activation",
}

# A small model with non-square kernels and dilations, so that the per-axis
# formulas and the clamps are both exercised.
SMALL = dict(
    image_height=32,
    image_width=16,
    image_channels=3,
    num_classes=4,
    base_filters=4,
    base_kernels=[7, 5],
    num_layers=4,
    dropout_rate=0.1,
    dilation=[3, 2],
)


def small(**overrides) -> keras.Model:
    return build_flexunet(**{**SMALL, **overrides})


def preset(name: str) -> dict:
    """The model group of the composed train config with ``model=<name>`` (interpolations resolved)."""
    return OmegaConf.to_container(compose_config([f"model={name}"]).model, resolve=True)


def random_images(n: int, h: int, w: int, c: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, h, w, c), dtype=np.uint8)


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(1234)


@pytest.mark.parametrize("name", ["flexunet", "flexunet_hocm"])
def test_presets_have_exactly_the_builder_keys(name):
    cfg = preset(name)
    assert set(cfg) == PRESET_KEYS
    assert cfg["name"] in networks()


def test_hocm_preset_has_the_original_parameter_count():
    cfg = preset("flexunet_hocm")
    model = build_model(**cfg)
    assert model.count_params() == 126_809_320


def test_default_preset_builds_and_predicts():
    cfg = preset("flexunet")
    model = build_model(**cfg)
    out = model.predict(random_images(1, 128, 128, 1), verbose=0)
    assert out.shape == (1, 128, 128, 6)


def test_level_helpers():
    assert [level_kernel([11, 11], i) for i in range(8)] == [
        (11, 11),
        (9, 9),
        (7, 7),
        (5, 5),
        (3, 3),
        (3, 3),
        (3, 3),
        (3, 3),
    ]
    assert [level_kernel([7, 5], i) for i in range(4)] == [(7, 5), (5, 3), (3, 3), (3, 3)]
    assert [level_dilation([3, 2], i) for i in range(4)] == [(3, 2), (2, 1), (1, 1), (1, 1)]
    assert [level_dilation([1, 1], i) for i in range(3)] == [(1, 1)] * 3


def test_per_level_filters_kernels_and_dilations():
    model = small()
    convs = [layer for layer in model.layers if type(layer) is keras.layers.Conv2D]
    # 2 per encoder level, 2 per decoder level, 1 head.
    assert len(convs) == 2 * 4 + 2 * 3 + 1
    levels = {0: ((7, 5), (3, 2)), 1: ((5, 3), (2, 1)), 2: ((3, 3), (1, 1)), 3: ((3, 3), (1, 1))}
    for i, (kernel, dilation) in levels.items():
        parts = ["enc"] + (["dec"] if i < 3 else [])
        for part in parts:
            for conv in (f"{part}{i}_conv1", f"{part}{i}_conv2"):
                layer = model.get_layer(conv)
                assert layer.filters == 4 * 2**i, conv
                assert tuple(layer.kernel_size) == kernel, conv
                assert tuple(layer.dilation_rate) == dilation, conv
                assert layer.padding == "same"
        if i < 3:
            up = model.get_layer(f"dec{i}_up")
            assert isinstance(up, keras.layers.Conv2DTranspose)
            assert up.filters == 4 * 2**i
            assert (tuple(up.kernel_size), tuple(up.strides)) == ((2, 2), (2, 2))
            # The decoder's first conv sees the upsampled map concatenated with the skip.
            assert model.get_layer(f"dec{i}_conv1").kernel.shape[2] == 2 * 4 * 2**i
    pools = [layer for layer in model.layers if isinstance(layer, keras.layers.MaxPooling2D)]
    assert len(pools) == 3
    head = model.get_layer("head")
    assert (head.filters, tuple(head.kernel_size)) == (4, (1, 1))
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in model.layers)


def test_dropout_rate_per_level():
    model = small()
    dropouts = {layer.name: layer.rate for layer in model.layers if isinstance(layer, keras.layers.Dropout)}
    expected = {f"enc{i}_dropout": 0.1 * i for i in range(4)}
    expected |= {f"dec{i}_dropout": 0.1 * i for i in range(3)}
    assert dropouts == pytest.approx(expected)


def test_uint8_input_and_softmax_output():
    model = small()
    assert model.inputs[0].dtype == "uint8"
    out = model.predict(random_images(2, 32, 16, 3), verbose=0)
    assert out.shape == (2, 32, 16, 4)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out.sum(axis=-1), 1.0, atol=1e-5)


def test_single_class_uses_sigmoid():
    model = small(num_classes=1)
    assert model.get_layer("head").activation is keras.activations.sigmoid
    out = model.predict(random_images(2, 32, 16, 3), verbose=0)
    assert out.shape == (2, 32, 16, 1)
    assert np.all((out >= 0) & (out <= 1))


def test_batch_norm_follows_every_conv():
    model = small(norm="batch")
    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(bns) == 2 * 4 + 2 * 3


@pytest.mark.parametrize("norm", ["instance", "group"])
def test_instance_and_group_norm_follow_every_conv(norm):
    model = small(norm=norm, norm_groups=2)
    kind = InstanceNormalization if norm == "instance" else keras.layers.GroupNormalization
    norms = [layer for layer in model.layers if isinstance(layer, kind)]
    assert len(norms) == 2 * 4 + 2 * 3
    for layer in norms:
        assert norm == "instance" or layer.groups == 2
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in model.layers)


def test_residual_units_add_a_projected_shortcut():
    plain, residual = small(), small(residual=True)
    adds = [layer for layer in residual.layers if isinstance(layer, keras.layers.Add)]
    assert len(adds) == 4 + 3  # one per encoder and decoder level
    # 1x1 shortcut convs where the channel count changes: every level (input 3 -> 4, and
    # the decoder's concatenations 2f -> f), so the parameter difference is their weights.
    shortcuts = [layer for layer in residual.layers if layer.name.endswith("_shortcut")]
    assert len(shortcuts) == 7
    assert residual.count_params() - plain.count_params() == sum(layer.count_params() for layer in shortcuts)


def test_unknown_norm_is_refused_by_name():
    with pytest.raises(ValueError, match=r"model\.norm: expected one of .*'layer'"):
        small(norm="layer")


def test_head_stays_float32_under_mixed_precision():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = small()
    finally:
        keras.config.set_dtype_policy(previous)
    assert model.get_layer("enc0_conv1").compute_dtype == "float16"
    assert model.outputs[0].dtype == "float32"


@pytest.mark.parametrize("options", [dict(norm="batch"), dict(norm="instance", residual=True)])
def test_keras_save_and_load_round_trip(tmp_path, options):
    model = small(**options)
    images = random_images(2, 32, 16, 3, seed=7)
    expected = model.predict(images, verbose=0)
    path = tmp_path / "flexunet.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.inputs[0].dtype == "uint8"
    assert loaded.count_params() == model.count_params()
    np.testing.assert_array_equal(loaded.predict(images, verbose=0), expected)


def test_unknown_model_name():
    expected = r"model\.name: unknown model 'nope'; available: .*flexunet"
    with pytest.raises(ValueError, match=expected):
        build_model("nope", **SMALL)


def test_size_not_divisible_by_the_pooling_factor():
    with pytest.raises(ValueError, match=r"divisible by 2\*\*\(num_layers-1\) = 8"):
        small(image_height=36)
    with pytest.raises(ValueError, match="divisible"):
        small(image_width=20)
