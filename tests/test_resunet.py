"""ResUNet (MONAI's residual U-Net in Keras 3): size, shapes, options, saving, config rules."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from omegaconf import OmegaConf

from segexp.config.schema import ConfigError
from segexp.models import build_model
from segexp.models.layers import InstanceNormalization
from segexp.models.resunet import build_resunet
from segexp.training.loop import validate_run_config

from .conftest import compose_config


def _images(n: int, size: int, channels: int = 1, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, channels), dtype=np.uint8)


def test_parameter_count_is_monais_plus_the_affine_norm() -> None:
    """MONAI's UNet(2, 1, 9, (16, 32, 64, 128, 256), (2, 2, 2, 2), num_res_units=2) has 1,627,884
    parameters (counted from MONAI's source, and by scripts/reference_loop.py's layer-by-layer
    replica). segexp's instance norm is affine (scale and offset per channel), MONAI's is not:
    + 2 x the channels of every norm = 2 x 1,225 = 2,450."""
    model = build_resunet(image_height=256, image_width=256, image_channels=1, num_classes=9)
    norms = [layer for layer in model.layers if isinstance(layer, InstanceNormalization)]
    affine = sum(layer.count_params() for layer in norms)
    assert affine == 2_450
    assert model.count_params() == 1_627_884 + affine


@pytest.mark.parametrize("channels, size", [(1, 32), (3, 64)])
def test_output_is_class_probabilities_in_float32(channels: int, size: int) -> None:
    model = build_resunet(
        image_height=size, image_width=size, image_channels=channels, num_classes=4, channels=(4, 8, 16)
    )
    assert model.input.dtype == "uint8"
    probs = model.predict(_images(2, size, channels), verbose=0)
    assert probs.shape == (2, size, size, 4) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    binary = build_resunet(image_height=32, image_width=32, image_channels=1, num_classes=1, channels=(4, 8))
    out = binary.predict(_images(1, 32), verbose=0)
    assert out.shape == (1, 32, 32, 1) and np.all((out >= 0) & (out <= 1))


def test_levels_halve_the_size_and_only_the_head_runs_at_full_resolution() -> None:
    model = build_resunet(image_height=32, image_width=32, image_channels=1, num_classes=3, channels=(4, 8, 16))
    convs = [layer for layer in model.layers if type(layer) is keras.layers.Conv2D]
    assert {layer.output.shape[1] for layer in convs} == {32, 16, 8}  # two stride-2 levels
    # at 32x32 only the last (output) conv of the top up-path runs, with one filter per class
    assert [layer.filters for layer in convs if layer.output.shape[1] == 32] == [3]


@pytest.mark.parametrize("norm", ["batch", "group", "none"])
def test_norm_options(norm: str) -> None:
    model = build_resunet(
        image_height=32, image_width=32, image_channels=1, num_classes=3, channels=(8, 16), norm=norm, norm_groups=4
    )
    kinds = {type(layer).__name__ for layer in model.layers}
    assert ("BatchNormalization" in kinds) == (norm == "batch")
    assert ("GroupNormalization" in kinds) == (norm == "group")
    assert "InstanceNormalization" not in kinds


def test_one_training_step_and_safe_reload(tmp_path) -> None:
    from segexp.models.losses import build_loss

    model = build_model(
        name="resunet",
        image_height=32,
        image_width=32,
        image_channels=1,
        num_classes=3,
        channels=[4, 8, 16],
        num_res_units=1,
        norm="instance",
        norm_groups=8,
        dropout_rate=0.1,
    )
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=build_loss("dice_ce", 3))
    masks = np.random.default_rng(1).integers(0, 3, (2, 32, 32)).astype(np.uint8)
    assert np.isfinite(float(model.train_on_batch(_images(2, 32), masks)))
    path = tmp_path / "resunet.keras"
    model.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    np.testing.assert_array_equal(
        loaded.predict(_images(2, 32, seed=3), verbose=0), model.predict(_images(2, 32, seed=3), verbose=0)
    )


def test_preset_composes_and_builds() -> None:
    cfg = validate_run_config(compose_config(["model=resunet"]))
    model = build_model(**OmegaConf.to_container(cfg.model))
    assert model.name == "resunet" and model.output_shape == (None, 128, 128, 6)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["model=resunet", "model.image_height=100"],
            "model.image_height: 100 is not divisible by 2**(len(channels)-1) = 16",
        ),
        (["model=resunet", "model.channels=[16]"], "model.channels: expected at least two positive widths"),
        (["model=resunet", "model.num_res_units=0"], "model.num_res_units: must be >= 1, got 0"),
        (["model=resunet", "+model.base_filters=8"], "model.base_filters: unknown key for model resunet"),
        (["model=resunet", "model.norm=group", "model.norm_groups=5"], "model.norm_groups: must divide every width"),
    ],
)
def test_bad_parameters_are_refused_by_name(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        validate_run_config(compose_config(overrides))
    assert message in str(err.value)
