"""Swin-Unet (issue 14): builds, trains on every loss, saves, reloads safely, refuses bad parameters by name; its
window attention is local, shifted and masked as Liu et al. describe. Sizes are tiny (32x32, C = 8, two stages)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest

from segexp.config.schema import loss_names
from segexp.models import build_model
from segexp.models.losses import build_loss
from segexp.models.saving import load_keras_model, save_keras_model
from segexp.models.swin_unet import (
    WindowAttention,
    relative_position_index,
    shift_mask,
    stage_window,
)
from segexp.training.loop import validate_run_config

from .conftest import assert_model_key_refused, compose_config, random_batch

#: Two stages on a 32x32 image: grids 8x8 (window 4, shifted by 2) and 4x4 (one window, no shift).
TINY: dict[str, Any] = {
    "patch_size": 4,
    "embed_dim": 8,
    "depths": [2, 2],
    "num_heads": [1, 2],
    "window_size": 4,
    "mlp_ratio": 4.0,
    "norm": "none",
    "norm_groups": 1,
    "dropout_rate": 0.1,
    "drop_path": 0.1,
}


def tiny(height: int = 32, width: int = 32, channels: int = 1, classes: int = 3, **options: Any) -> keras.Model:
    return build_model(
        name="swin_unet",
        image_height=height,
        image_width=width,
        image_channels=channels,
        num_classes=classes,
        **{**TINY, **options},
    )


def expected_params(
    c_in: int,
    k: int,
    size: tuple[int, int],
    patch: int,
    c: int,
    depths: list[int],
    heads: list[int],
    window: int,
    ratio: int = 4,
) -> int:
    """Parameters by the reference implementation's layer list (HuCaoFighting/Swin-Unet, SwinTransformerSys):

    * patch embedding: conv ``p*p*c_in*C + C``, LayerNorm ``2C`` (LayerNorm: ``2d``, scale and offset);
    * Swin block of width ``d``, ``h`` heads, window ``m`` (clipped to the grid): LayerNorm ``2d``, qkv
      ``3d*d + 3d``, bias table ``(2m-1)^2 h``, projection ``d*d + d``, LayerNorm ``2d``, MLP
      ``d*rd + rd + rd*d + d``; i.e. ``12 d^2 + 13 d + (2m-1)^2 h`` for ``r = 4``;
    * patch merging after stage ``i < S-1``: LayerNorm ``2*4d``, linear ``4d*2d`` (no bias);
    * bottleneck LayerNorm ``2 d_last``;
    * decoder stage ``i`` (``S-2 .. 0``, ``d = C 2^i``): patch expanding ``2d * 4d`` (no bias) + LayerNorm
      ``2d``, concat linear ``2d*d + d``, ``depths[i]`` blocks as the encoder's stage ``i``;
    * head: LayerNorm ``2C``, final expanding ``C * p*p*C`` (no bias) + LayerNorm ``2C``, 1x1 conv ``C*K`` (no bias).
    """

    def block(d: int, h: int, m: int) -> int:
        return (
            2 * d
            + 3 * d * d
            + 3 * d
            + (2 * m - 1) ** 2 * h
            + d * d
            + d
            + 2 * d
            + d * ratio * d
            + ratio * d
            + ratio * d * d
            + d
        )

    stages = len(depths)
    grids = [(size[0] // (patch * 2**i), size[1] // (patch * 2**i)) for i in range(stages)]
    windows = [min(window, *g) for g in grids]
    blocks = [depths[i] * block(c * 2**i, heads[i], windows[i]) for i in range(stages)]
    total = patch * patch * c_in * c + c + 2 * c
    for i in range(stages):
        d = c * 2**i
        total += blocks[i] + (2 * 4 * d + 4 * d * 2 * d if i < stages - 1 else 0)
    total += 2 * c * 2 ** (stages - 1)
    for i in reversed(range(stages - 1)):
        d = c * 2**i
        total += 2 * d * 4 * d + 2 * d + 2 * d * d + d + blocks[i]
    return total + 2 * c + c * patch * patch * c + 2 * c + c * k


@pytest.mark.parametrize(("height", "width", "channels"), [(32, 32, 1), (64, 32, 3)])
def test_builds_at_two_sizes_with_one_or_three_channels(height: int, width: int, channels: int) -> None:
    model = tiny(height, width, channels)
    assert model.inputs[0].dtype == "uint8" and tuple(model.inputs[0].shape[1:]) == (height, width, channels)
    x, _ = random_batch(3, height, width, channels, 3)
    y = model.predict(x, verbose=0)
    assert y.shape == (3, height, width, 3) and y.dtype == np.float32
    np.testing.assert_allclose(y.sum(-1), 1.0, atol=1e-5)
    if channels == 3:  # the sigmoid head once (a Swin build and trace costs seconds)
        binary = tiny(height, width, channels, classes=1)
        p = binary.predict(x[:1], verbose=0)  # any batch size
        assert p.shape == (1, height, width, 1) and 0.0 <= p.min() and p.max() <= 1.0


def test_parameter_count_follows_the_reference_layer_list() -> None:
    """Tiny two-stage model (1 channel, 3 classes) and a three-stage one whose last grid (4x4 at 32x32 with patch 2)
    clips the window 8 to 4: its bias table is 7x7, not 15x15 (the formula is :func:`expected_params`)."""
    assert tiny().count_params() == expected_params(1, 3, (32, 32), 4, 8, [2, 2], [1, 2], 4) == 12944
    three = tiny(channels=3, classes=2, patch_size=2, embed_dim=4, depths=[2, 1, 1], num_heads=[1, 2, 4], window_size=8)
    assert three.count_params() == expected_params(3, 2, (32, 32), 2, 4, [2, 1, 1], [1, 2, 4], 8)


@pytest.mark.slow
def test_paper_and_preset_parameter_counts() -> None:
    """Swin-Unet as in the paper (224x224 RGB, C = 96, depths [2, 2, 2, 2], heads [3, 6, 12, 24], window 7,
    9 Synapse classes): 27,168,900 by the reference layer list (about 27.17 M); the preset (128x128 grey, C = 48,
    window 8, 6 classes): 6,823,716."""
    paper = build_model(
        name="swin_unet",
        image_height=224,
        image_width=224,
        image_channels=3,
        num_classes=9,
        patch_size=4,
        embed_dim=96,
        depths=[2, 2, 2, 2],
        num_heads=[3, 6, 12, 24],
        window_size=7,
    )
    assert paper.count_params() == expected_params(3, 9, (224, 224), 4, 96, [2] * 4, [3, 6, 12, 24], 7) == 27_168_900
    cfg = validate_run_config(compose_config(["model=swin_unet", "model.num_classes=6"])).model
    preset = build_model(**{k: cfg[k] for k in cfg})
    assert preset.count_params() == expected_params(1, 6, (128, 128), 4, 48, [2] * 4, [3, 6, 12, 24], 8) == 6_823_716


#: The first step traces forward and backward passes of every block (about 9 s of CPU with SGD; Adam's traced
#: per-variable update of the ~100 weights quadruples it, so the step uses SGD): one loss runs by default and the
#: others with the slow tests (`pytest -m slow`).
LOSSES = [
    "dice_ce",
    *(pytest.param(loss, marks=pytest.mark.slow) for loss in loss_names() if loss != "dice_ce"),  # conf/loss/
]


@pytest.mark.parametrize("loss", LOSSES)
def test_one_training_step_on_each_loss(loss: str) -> None:
    classes = 1 if loss == "bce_dice" else 3
    model = tiny(classes=classes)
    model.compile(optimizer="sgd", loss=build_loss(loss, classes))
    x, y = random_batch(2, 32, 32, 1, classes)
    before = [w.copy() for w in model.get_weights()]
    value = float(model.train_on_batch(x, y))
    assert np.isfinite(value)
    assert any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    table = model.get_layer("enc0_block1_attention").get_weights()[0]
    assert table.shape == (7 * 7, 1) and np.isfinite(table).all()


def test_save_safe_load_identical_predictions(tmp_path: Path) -> None:
    model = tiny(channels=3)
    x, _ = random_batch(2, 32, 32, 3, 3, seed=5)
    expected = model.predict(x, verbose=0)
    save_keras_model(model, tmp_path / "m.keras")
    loaded = load_keras_model(tmp_path / "m.keras")  # safe mode: every custom layer is registered, no Lambda
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), expected)
    assert loaded.get_layer("enc0_block1_attention").get_config()["shift_size"] == 2


def test_relative_position_index_and_shift_mask() -> None:
    index = relative_position_index(3)  # 9 tokens, offsets in [-2, 2]^2 -> rows 0..24
    assert index.shape == (9, 9) and index.min() == 0 and index.max() == 24
    assert (np.diag(index) == 12).all()  # offset (0, 0) is the table's centre
    assert index[0, 8] == 0 and index[8, 0] == 24  # token (0,0) vs (2,2): offset (-2,-2); the reverse (2,2)
    mask = shift_mask(8, 8, 4, 2)  # 4 windows of 16 tokens
    assert mask.shape == (4, 16, 16) and set(np.unique(mask)) == {0.0, -100.0}
    assert (mask[0] == 0).all()  # the top-left window holds one region
    assert (mask[3] < 0).sum() == 16 * 16 - 4 * 4 * 4  # the bottom-right one joins four 2x2 regions
    assert stage_window(8, 8, 4) == (4, 2) and stage_window(4, 8, 4) == (4, 0) and stage_window(2, 2, 8) == (2, 0)


@pytest.mark.parametrize(("shift", "far", "near"), [(0, (4, 4), (3, 3)), (2, (7, 7), (1, 1))])
def test_window_attention_is_local_and_the_shift_is_masked(shift: int, far: tuple, near: tuple) -> None:
    """Token (0, 0) of an 8x8 grid, window 4. Unshifted: it sees its window (3, 3) but not (4, 4). Shifted by 2:
    it lands in the bottom-right window of the rolled grid beside (7, 7), a token from the opposite edge that
    the mask hides; it still sees its true neighbour (1, 1)."""
    layer = WindowAttention(num_heads=2, window_size=4, shift_size=shift)
    qkv = np.random.default_rng(0).normal(size=(1, 8, 8, 3 * 4)).astype(np.float32)
    base = keras.ops.convert_to_numpy(layer(qkv))[0, 0, 0]
    for (r, c), changes in ((far, False), (near, True)):
        moved = qkv.copy()
        moved[0, r, c] += 5.0
        out = keras.ops.convert_to_numpy(layer(moved))[0, 0, 0]
        assert (not np.allclose(out, base, atol=1e-6)) == changes, (shift, (r, c))


@pytest.mark.parametrize("shift", [0, 2])
def test_window_attention_matches_a_direct_computation(shift: int) -> None:
    """Token by token on an 8x8 grid, window M = 4, 2 heads of 3 channels: p attends to q iff both fall in the same
    window of the grid rolled by -shift and the roll did not wrap between them; the logit is ``q_p . k_q / sqrt(3)``
    plus the table row of their offset ``(dy + M - 1) (2M - 1) + dx + M - 1`` (Liu et al. eq. 4)."""
    size, m, heads, d = 8, 4, 2, 3
    rng = np.random.default_rng(1)
    qkv = rng.normal(size=(1, size, size, 3 * heads * d)).astype(np.float32)
    layer = WindowAttention(num_heads=heads, window_size=m, shift_size=shift)
    layer.build(qkv.shape)
    table = rng.normal(size=((2 * m - 1) ** 2, heads)).astype(np.float32)
    layer.bias_table.assign(table)
    out = keras.ops.convert_to_numpy(layer(qkv))[0]
    q, k, v = (qkv[0, :, :, j * heads * d : (j + 1) * heads * d].reshape(size, size, heads, d) for j in range(3))
    expected = np.zeros((size, size, heads, d))
    for py, px in np.ndindex(size, size):
        ry, rx = (py - shift) % size, (px - shift) % size  # position in the rolled grid
        for h in range(heads):
            logits, values = [], []
            for qy, qx in np.ndindex(size, size):
                sy, sx = (qy - shift) % size, (qx - shift) % size
                same_window = (ry // m, rx // m) == (sy // m, sx // m)
                if not same_window or (ry - sy, rx - sx) != (py - qy, px - qx):
                    continue
                row = (ry - sy + m - 1) * (2 * m - 1) + (rx - sx + m - 1)
                logits.append(q[py, px, h] @ k[qy, qx, h] / np.sqrt(d) + table[row, h])
                values.append(v[qy, qx, h])
            weights = np.exp(np.array(logits) - max(logits))
            expected[py, px, h] = (weights / weights.sum()) @ np.array(values)
    np.testing.assert_allclose(out, expected.reshape(size, size, heads * d), atol=1e-5)


def test_drop_path_drops_whole_samples() -> None:
    layer = tiny().get_layer("enc0_block1_mlp_drop_path")
    out = keras.ops.convert_to_numpy(layer(np.ones((64, 2, 2, 3), np.float32), training=True))
    per_sample = out.reshape(64, -1)
    assert set(np.unique(per_sample.min(1) == per_sample.max(1))) == {True}  # one decision per sample
    kept = per_sample[:, 0] > 0
    assert 0 < layer.rate < 1 and kept.any()
    np.testing.assert_allclose(per_sample[kept], 1 / (1 - layer.rate), rtol=1e-6)  # survivors scaled by 1/(1-rate)


def test_preset_and_debug_fast_compose_and_validate(tmp_path: Path) -> None:
    for extra in ([], ["debug=fast"]):
        typed = validate_run_config(compose_config([f"paths.root={tmp_path}", "model=swin_unet", *extra]))
        assert typed.model.name == "swin_unet" and typed.model.window_size == 8


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("depths", [2], r"model\.depths: expected at least two stages"),
        ("num_heads", [3, 6, 12], r"model\.num_heads: expected one head count >= 1 per stage \(4"),
        ("num_heads", [3, 5, 12, 24], r"model\.num_heads: stage i's width .* must divide by its head count"),
        ("embed_dim", 0, r"model\.embed_dim: must be >= 1"),
        ("patch_size", 0, r"model\.patch_size: must be >= 1"),
        ("mlp_ratio", 0.0, r"model\.mlp_ratio: must be > 0"),
        ("dropout_rate", 1.0, r"model\.dropout_rate: must lie in \[0, 1\)"),
        ("drop_path", -0.1, r"model\.drop_path: must lie in \[0, 1\)"),
        ("norm", "batch", r"model\.norm: swin_unet has no conv to normalise .* set model\.norm=none"),
        (
            "image_height",
            112,
            r"model\.image_height: 112 is not divisible by patch_size \* 2\*\*\(len\(depths\)-1\) = 32",
        ),
        ("window_size", 12, r"model\.window_size: stage 0's token grid 32x32 .* is not a multiple of its window 12"),
        ("window_size", 7, r"model\.window_size: stage 0's token grid 32x32"),
        ("filters", [16], r"model\.filters: unknown key for model swin_unet"),
    ],
)
def test_bad_parameters_are_refused_by_name(tmp_path: Path, key: str, value: Any, message: str) -> None:
    assert_model_key_refused([f"paths.root={tmp_path}", "model=swin_unet"], key, value, message)
