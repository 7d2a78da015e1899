"""Swin-Unet: a U-shaped network of Swin Transformer blocks, with patch merging down and patch expanding up.

Cao et al. 2021, "Swin-Unet: Unet-like Pure Transformer for Medical Image Segmentation"
(arXiv 2105.05537), section 3 and Fig. 1; the block is Liu et al. 2021, "Swin Transformer:
Hierarchical Vision Transformer using Shifted Windows" (ICCV; arXiv 2103.14030), section 3.
Tokens are kept as ``(B, h, w, C)`` grids; ``Dense`` and ``LayerNormalization`` act per token.
Choices, following the papers (and the authors' code where the papers are silent):

- *Patch embedding*: a ``patch_size`` x ``patch_size`` conv with stride ``patch_size`` to
  ``C = model.embed_dim`` channels, then LayerNorm (the reference's ``patch_norm``); no
  absolute position embedding (Swin-Unet's ``ape=False``); dropout ``model.dropout_rate``.
- *Stages*: stage ``i`` (``i = 0 .. S-1``, ``S = len(model.depths)``) works on the grid
  ``(H, W) / (patch_size * 2**i)`` with ``C * 2**i`` channels and ``model.num_heads[i]``
  heads; ``depths[i]`` Swin blocks, alternating regular (W-MSA) and shifted (SW-MSA)
  windows. The last stage is the bottleneck, followed by LayerNorm.
- *Swin block* (Liu et al. eq. 3): ``x + DropPath(proj(WMSA(LN(x))))``, then
  ``x + DropPath(MLP(LN(x)))`` with MLP ``Dense(mlp_ratio * C)`` -> GELU (exact) -> Dense.
  W-MSA: ``softmax(Q K^T / sqrt(d) + B) V`` per ``M x M`` window and head, ``B`` gathered
  from a learned ``(2M-1)^2 x heads`` relative position bias table by the relative offset of
  the two tokens (eq. 4). SW-MSA shifts the grid by ``-M // 2`` cyclically (``roll``), masks
  attention between tokens that were not neighbours before the shift (``-100`` added to
  their logits, the reference's value) and rolls back. LayerNorm epsilon 1e-5 (PyTorch's).
- *Window size*: ``M = model.window_size`` where the stage's grid is larger; a grid whose
  smaller side is ``<= M`` gets one window of that side and no shift (the reference's
  clipping: a shift inside a single window is meaningless). Every stage's grid must be a
  multiple of its window (:func:`swin_unet_rules`).
- *Patch merging* (down, Liu et al. 3.1): the 2x2 neighbours concatenated (order (0,0), (1,0),
  (0,1), (1,1) as the reference), LayerNorm over ``4C``, ``Dense(2C)`` without bias.
- *Patch expanding* (up, Cao et al. 3.3): ``Dense(2C)`` without bias, rearranged to a grid
  twice as fine with ``C/2`` channels (depth-to-space), LayerNorm.
- *Decoder*: the bottleneck is expanded; decoder stage ``i`` (``S-2 .. 0``) concatenates the
  skip (``[up, skip]``), applies ``Dense(C_i)`` (with bias, the paper's "linear layer" keeping
  the upsampled width), ``depths[i]`` Swin blocks with ``num_heads[i]`` (mirroring the encoder)
  and, except at stage 0, a patch expanding. Skips are each encoder stage's output after its
  Swin blocks (before patch merging), as Fig. 1 draws them; the reference code takes each
  stage's *input* instead (the same parameters).
- *Head*: LayerNorm, the final patch expanding ``Dense(patch_size**2 * C)`` without bias ->
  depth-to-space by ``patch_size`` -> LayerNorm (the reference's "x4" for patch size 4), a
  1x1 conv to the classes without bias (as the reference), softmax (sigmoid for
  ``num_classes == 1``) in float32.
- *Regularisation*: ``model.dropout_rate`` on the attention weights, after the attention
  projection, after each MLP layer and after the patch embedding (the reference's
  ``drop_rate`` and ``attn_drop_rate`` in one key, 0 in the paper); stochastic depth
  (Huang et al. 2016) with rate rising linearly from 0 to ``model.drop_path`` over the
  encoder's blocks, each decoder block taking the rate of its mirrored encoder block (the
  reference's rule); it is a ``Dropout`` whose noise shape is one value per sample.
- Initialisation: Dense kernels and the bias table truncated normal with std 0.02, biases 0.
- ``model.norm``: the Swin blocks, merging and expanding always use LayerNorm and there is no
  conv to normalise, so only ``none`` is accepted; ``model.norm_groups`` is unused.
- Input: the stored image decoded inside the model (``input_encoding``; 8 bit: 1/255).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import keras
import numpy as np
from keras import layers, ops
from omegaconf import MISSING

from segexp.data.io.intensity import UINT8_ENCODING, InputEncoding
from segexp.models.layers import image_input, probability_head
from segexp.models.registry import ModelParams, Network

#: Logit added where shifted windows join tokens that were not neighbours (the reference's value).
MASK_VALUE = -100.0
#: LayerNorm epsilon of the reference (PyTorch's default).
EPSILON = 1e-5
#: A ``(B, H, W, C)`` input shape of these layers: only the batch may be unknown (the model's grid is static).
_StaticGrid = tuple[int | None, int, int, int]


@dataclass
class SwinUNetParams(ModelParams):
    """``model=swin_unet`` keys (``conf/model/swin_unet.yaml``)."""

    patch_size: int = MISSING  # pixels per side of a patch (token)
    embed_dim: int = MISSING  # channels C of the first stage; stage i has C * 2**i
    depths: list[int] = MISSING  # Swin blocks per encoder stage, the last is the bottleneck; the decoder mirrors
    num_heads: list[int] = MISSING  # attention heads per stage
    window_size: int = MISSING  # window side M in tokens
    mlp_ratio: float = MISSING  # MLP hidden width / channels
    drop_path: float = MISSING  # stochastic depth rate of the deepest encoder block


def stage_window(grid_h: int, grid_w: int, window: int) -> tuple[int, int]:
    """``(window, shift)`` of a stage's grid: ``window`` and ``window // 2``, or, when the grid's smaller side is
    ``<= window``, one window of that side and no shift (the reference's clipping)."""
    side = min(grid_h, grid_w)
    if side <= window:
        return side, 0
    return window, window // 2


def stage_grids(height: int, width: int, patch: int, stages: int) -> list[tuple[int, int]]:
    """Token grid of every stage: ``(H, W) / (patch * 2**i)``."""
    return [(height // (patch * 2**i), width // (patch * 2**i)) for i in range(stages)]


def windows_fit(grids: Sequence[tuple[int, int]], window: int) -> bool:
    """Whether every grid is a multiple of its (clipped) window of side ``window``."""
    return all(gh % w == 0 and gw % w == 0 for gh, gw in grids for w in [stage_window(gh, gw, window)[0]])


def swin_unet_rules(m: Any) -> list[str]:
    """Start-up rules of Swin-Unet's keys (each problem names its ``model.<key>``)."""
    errors = []
    depths, heads = list(m.depths), list(m.num_heads)
    if len(depths) < 2 or min(depths) < 1:
        errors.append(f"model.depths: expected at least two stages of >= 1 blocks like [2, 2, 2, 2], got {depths}")
    for key in ("patch_size", "embed_dim", "window_size"):
        if m[key] < 1:
            errors.append(f"model.{key}: must be >= 1, got {m[key]}")
    if len(heads) != len(depths) or (heads and min(heads) < 1):
        errors.append(
            f"model.num_heads: expected one head count >= 1 per stage ({len(depths)}, as model.depths), got {heads}"
        )
    elif m.embed_dim >= 1:
        widths = [m.embed_dim * 2**i for i in range(len(depths))]
        bad = [f"{w} % {h}" for w, h in zip(widths, heads) if w % h]
        if bad:
            errors.append(
                f"model.num_heads: stage i's width embed_dim * 2**i = {widths} must divide by its head "
                f"count, got {heads} ({', '.join(bad)} != 0)"
            )
    if m.mlp_ratio <= 0 or (m.embed_dim >= 1 and int(m.embed_dim * m.mlp_ratio) < 1):
        errors.append(f"model.mlp_ratio: must be > 0 with int(embed_dim * mlp_ratio) >= 1, got {m.mlp_ratio}")
    for key in ("dropout_rate", "drop_path"):
        if not 0.0 <= m[key] < 1.0:
            errors.append(f"model.{key}: must lie in [0, 1), got {m[key]}")
    if m.norm != "none":
        errors.append(
            f"model.norm: swin_unet has no conv to normalise (its Swin blocks, patch merging and "
            f"expanding always use LayerNorm); set model.norm=none, got {m.norm!r}"
        )
    if errors or len(depths) < 2:
        return errors
    factor = m.patch_size * 2 ** (len(depths) - 1)
    errors += [
        f"model.{key}: {m[key]} is not divisible by patch_size * 2**(len(depths)-1) = {factor} "
        f"(patch_size={m.patch_size}, {len(depths)} stages); use a multiple of {factor}"
        for key in ("image_height", "image_width")
        if m[key] % factor
    ]
    if errors:
        return errors
    grids = stage_grids(m.image_height, m.image_width, m.patch_size, len(depths))
    for i, (gh, gw) in enumerate(grids):
        window, _ = stage_window(gh, gw, m.window_size)
        if gh % window or gw % window:
            fitting = [w for w in range(1, max(grids[0]) + 1) if windows_fit(grids, w)]
            errors.append(
                f"model.window_size: stage {i}'s token grid {gh}x{gw} (image / (patch_size * 2**{i})) is "
                f"not a multiple of its window {window} (window_size={m.window_size}; the window shrinks "
                f"to a grid whose smaller side is <= window_size); every stage's grid must be a multiple "
                f"of its window: window sizes that fit grids {grids}: {fitting}"
            )
            break
    return errors


def relative_position_index(window: int) -> np.ndarray:
    """``(M*M, M*M)`` int32: row of the ``(2M-1)^2`` bias table for each pair of tokens in an ``M x M`` window
    (Liu et al. eq. 4): ``(dy + M - 1) * (2M - 1) + (dx + M - 1)`` for the offset ``(dy, dx)``."""
    coords = np.stack(np.meshgrid(np.arange(window), np.arange(window), indexing="ij")).reshape(2, -1)
    offsets = coords[:, :, None] - coords[:, None, :] + (window - 1)  # (2, N, N), each in [0, 2M-2]
    return (offsets[0] * (2 * window - 1) + offsets[1]).astype(np.int32)


def shift_mask(height: int, width: int, window: int, shift: int) -> np.ndarray:
    """``(windows, M*M, M*M)`` float32: 0 between tokens of the same region of the shifted grid, -100 otherwise.

    After rolling by ``-shift`` the last window row/column joins pixels from the grid's opposite edge;
    labelling the three bands per axis (``[0, -M)``, ``[-M, -shift)``, ``[-shift, end)``) finds them.
    """
    regions = np.zeros((height, width), np.float32)
    bands = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    label = 0
    for rows in bands:
        for cols in bands:
            regions[rows, cols] = label
            label += 1
    windows: np.ndarray = regions.reshape(height // window, window, width // window, window).transpose(0, 2, 1, 3)
    windows = windows.reshape(-1, window * window)
    return np.where(windows[:, None, :] != windows[:, :, None], MASK_VALUE, 0.0).astype(np.float32)


def window_partition(x: Any, window: int) -> Any:
    """``(B, H, W, C)`` -> ``(B * H/M * W/M, M*M, C)``: the non-overlapping windows, row-major."""
    _, height, width, channels = x.shape
    x = ops.reshape(x, (-1, height // window, window, width // window, window, channels))
    x = ops.transpose(x, (0, 1, 3, 2, 4, 5))
    return ops.reshape(x, (-1, window * window, channels))


def window_merge(windows: Any, height: int, width: int, window: int) -> Any:
    """The inverse of :func:`window_partition`: ``(B * H/M * W/M, M*M, C)`` -> ``(B, H, W, C)``."""
    channels = windows.shape[-1]
    x = ops.reshape(windows, (-1, height // window, width // window, window, window, channels))
    x = ops.transpose(x, (0, 1, 3, 2, 4, 5))
    return ops.reshape(x, (-1, height, width, channels))


@keras.saving.register_keras_serializable(package="segexp")
class WindowAttention(layers.Layer):
    """(Shifted) window multi-head self-attention with relative position bias, on ``(B, H, W, 3C)`` q|k|v.

    Input: the concatenated queries, keys and values of every token (the block's ``Dense(3C)``,
    per token, so it commutes with the shift and the partition); output ``(B, H, W, C)``: each
    head's ``softmax(q k^T / sqrt(C/heads) + bias [+ mask]) v``, heads concatenated, before the
    output projection. Owns the ``((2M-1)^2, heads)`` bias table; the index and the shift mask
    are constants of the (static) grid size.
    """

    def __init__(
        self,
        num_heads: int,
        window_size: int,
        shift_size: int = 0,
        attention_dropout: float = 0.0,
        seed: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not 0 <= shift_size < window_size:
            raise ValueError(f"shift_size must lie in [0, window_size={window_size}), got {shift_size}")
        self.num_heads = num_heads
        self.window_size = window_size
        self.shift_size = shift_size
        self.attention_dropout = attention_dropout
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        _, height, width, channels3 = cast(_StaticGrid, input_shape)
        m = self.window_size
        if height % m or width % m or channels3 % (3 * self.num_heads):
            raise ValueError(
                f"{self.name}: grid {height}x{width} must be a multiple of the window {m} and the "
                f"{channels3} q|k|v channels a multiple of 3 * num_heads = {3 * self.num_heads}"
            )
        self.bias_table = self.add_weight(
            shape=((2 * m - 1) ** 2, self.num_heads),
            name="relative_position_bias_table",
            initializer=keras.initializers.TruncatedNormal(stddev=0.02),
        )
        self._index = relative_position_index(m).reshape(-1)
        self._mask = shift_mask(height, width, m, self.shift_size) if self.shift_size else None

    def call(self, qkv: Any, training: bool | None = None) -> Any:
        _, height, width, channels3 = qkv.shape
        m, s, heads = self.window_size, self.shift_size, self.num_heads
        channels, tokens = channels3 // 3, m * m
        head_dim = channels // heads
        if s:
            qkv = ops.roll(qkv, shift=(-s, -s), axis=(1, 2))
        windows = ops.reshape(window_partition(qkv, m), (-1, tokens, 3, heads, head_dim))
        q, k, v = (windows[:, :, j] for j in range(3))  # each (B', N, heads, d)
        q = ops.transpose(q, (0, 2, 1, 3)) * ops.cast(head_dim**-0.5, q.dtype)
        k = ops.transpose(k, (0, 2, 3, 1))  # (B', heads, d, N)
        v = ops.transpose(v, (0, 2, 1, 3))
        logits = ops.matmul(q, k)  # (B', heads, N, N)
        bias = ops.take(self.bias_table, ops.convert_to_tensor(self._index), axis=0)  # (N*N, heads)
        bias = ops.transpose(ops.reshape(bias, (tokens, tokens, heads)), (2, 0, 1))
        logits = logits + ops.cast(bias, logits.dtype)[None]
        if self._mask is not None:
            count = self._mask.shape[0]
            mask = ops.convert_to_tensor(self._mask[:, None], dtype=logits.dtype)  # (windows, 1, N, N)
            logits = ops.reshape(
                ops.reshape(logits, (-1, count, heads, tokens, tokens)) + mask, (-1, heads, tokens, tokens)
            )
        weights = ops.softmax(logits, axis=-1)
        if training and self.attention_dropout > 0:
            weights = keras.random.dropout(weights, self.attention_dropout, seed=self.seed_generator)
        out = ops.transpose(ops.matmul(weights, v), (0, 2, 1, 3))  # (B', N, heads, d)
        out = window_merge(ops.reshape(out, (-1, tokens, channels)), height, width, m)
        if s:
            out = ops.roll(out, shift=(s, s), axis=(1, 2))
        return out

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return (*input_shape[:-1], cast(int, input_shape[-1]) // 3)  # q|k|v channels are static

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "num_heads": self.num_heads,
            "window_size": self.window_size,
            "shift_size": self.shift_size,
            "attention_dropout": self.attention_dropout,
            "seed": self.seed,
        }


@keras.saving.register_keras_serializable(package="segexp")
class PatchMerge(layers.Layer):
    """``(B, H, W, C)`` -> ``(B, H/2, W/2, 4C)``: each 2x2 neighbourhood's tokens concatenated, in the order
    (row, col) = (0,0), (1,0), (0,1), (1,1) (the reference's); patch merging's LayerNorm and linear follow."""

    def call(self, x: Any) -> Any:
        _, height, width, channels = x.shape
        x = ops.reshape(x, (-1, height // 2, 2, width // 2, 2, channels))  # (B, h, row, w, col, C)
        x = ops.transpose(x, (0, 1, 3, 4, 2, 5))  # (B, h, w, col, row, C)
        return ops.reshape(x, (-1, height // 2, width // 2, 4 * channels))

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        b, h, w, c = cast(_StaticGrid, input_shape)
        return (b, h // 2, w // 2, 4 * c)


@keras.saving.register_keras_serializable(package="segexp")
class PatchExpand(layers.Layer):
    """``(B, H, W, s*s*C)`` -> ``(B, s*H, s*W, C)``: depth-to-space with channels ordered (row, col, C)
    (the reference's ``b h w (p1 p2 c) -> b (h p1) (w p2) c``); patch expanding's linear precedes it."""

    def __init__(self, scale: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.scale = scale

    def call(self, x: Any) -> Any:
        _, height, width, channels = x.shape
        s = self.scale
        x = ops.reshape(x, (-1, height, width, s, s, channels // (s * s)))
        x = ops.transpose(x, (0, 1, 3, 2, 4, 5))
        return ops.reshape(x, (-1, height * s, width * s, channels // (s * s)))

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        b, h, w, c = cast(_StaticGrid, input_shape)
        return (b, h * self.scale, w * self.scale, c // self.scale**2)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "scale": self.scale}


def _dense(units: int, name: str, use_bias: bool = True, activation: str | None = None) -> layers.Dense:
    return layers.Dense(
        units,
        activation=activation,
        use_bias=use_bias,
        name=name,
        kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.02),
    )


def _norm(name: str) -> layers.LayerNormalization:
    return layers.LayerNormalization(epsilon=EPSILON, name=name)


def _regularise(x: Any, dropout: float, drop_path: float, name: str) -> Any:
    """Dropout, then stochastic depth (one keep/drop per sample, survivors scaled by 1/(1-rate))."""
    if dropout > 0:
        x = layers.Dropout(dropout, name=f"{name}_dropout")(x)
    if drop_path > 0:
        x = layers.Dropout(drop_path, noise_shape=(None, 1, 1, 1), name=f"{name}_drop_path")(x)
    return x


def swin_block(
    x: Any, heads: int, window: int, shift: int, mlp_ratio: float, dropout: float, drop_path: float, name: str
) -> Any:
    """One Swin Transformer block on ``(B, H, W, C)`` (Liu et al. eq. 3; W-MSA if ``shift == 0``, else SW-MSA)."""
    channels = x.shape[-1]
    y = _dense(3 * channels, f"{name}_qkv")(_norm(f"{name}_norm1")(x))
    y = WindowAttention(heads, window, shift, dropout, name=f"{name}_attention")(y)
    y = _regularise(_dense(channels, f"{name}_proj")(y), dropout, drop_path, f"{name}_attention")
    x = layers.Add(name=f"{name}_add1")([x, y])
    y = _dense(int(channels * mlp_ratio), f"{name}_fc1", activation="gelu")(_norm(f"{name}_norm2")(x))
    if dropout > 0:
        y = layers.Dropout(dropout, name=f"{name}_fc1_dropout")(y)
    y = _regularise(_dense(channels, f"{name}_fc2")(y), dropout, drop_path, f"{name}_mlp")
    return layers.Add(name=f"{name}_add2")([x, y])


def swin_stage(
    x: Any,
    depth: int,
    heads: int,
    window_size: int,
    mlp_ratio: float,
    dropout: float,
    drop_paths: Sequence[float],
    name: str,
) -> Any:
    """``depth`` Swin blocks, even ones regular, odd ones shifted by half a window (none where clipped)."""
    window, shift = stage_window(x.shape[1], x.shape[2], window_size)
    for j in range(depth):
        x = swin_block(x, heads, window, shift if j % 2 else 0, mlp_ratio, dropout, drop_paths[j], f"{name}_block{j}")
    return x


def build_swin_unet(
    *,
    image_height: int,
    image_width: int,
    image_channels: int,
    num_classes: int,
    patch_size: int = 4,
    embed_dim: int = 96,
    depths: Sequence[int] = (2, 2, 2, 2),
    num_heads: Sequence[int] = (3, 6, 12, 24),
    window_size: int = 7,
    mlp_ratio: float = 4.0,
    dropout_rate: float = 0.0,
    drop_path: float = 0.1,
    name: str = "swin_unet",
    input_encoding: InputEncoding = UINT8_ENCODING,
) -> keras.Model:
    """Build Swin-Unet taking stored ``(H, W, C)`` images and giving ``(H, W, num_classes)`` float32 probabilities.

    Height and width must be divisible by ``patch_size * 2**(len(depths)-1)`` and every stage's token grid
    a multiple of its window (:func:`swin_unet_rules` says which key to change).
    """
    depths, num_heads = [int(d) for d in depths], [int(h) for h in num_heads]
    stages = len(depths)
    factor = patch_size * 2 ** (stages - 1)
    if stages < 2 or len(num_heads) != stages:
        raise ValueError(f"depths and num_heads need the same number (>= 2) of stages, got {depths} and {num_heads}")
    if image_height % factor or image_width % factor:
        raise ValueError(
            f"image size {image_height}x{image_width} must be divisible by patch_size * 2**(len(depths)-1) = {factor}"
        )
    rates = np.linspace(0.0, drop_path, sum(depths)).tolist()
    stage_rates = [rates[sum(depths[:i]) : sum(depths[: i + 1])] for i in range(stages)]

    inputs, x = image_input(image_height, image_width, image_channels, input_encoding)
    x = layers.Conv2D(embed_dim, patch_size, strides=patch_size, name="patch_embed")(x)
    x = _norm("patch_embed_norm")(x)
    if dropout_rate > 0:
        x = layers.Dropout(dropout_rate, name="patch_embed_dropout")(x)
    skips = []
    for i in range(stages):
        x = swin_stage(x, depths[i], num_heads[i], window_size, mlp_ratio, dropout_rate, stage_rates[i], f"enc{i}")
        if i < stages - 1:
            skips.append(x)
            x = _dense(2 * x.shape[-1], f"enc{i}_merge", use_bias=False)(
                _norm(f"enc{i}_merge_norm")(PatchMerge(name=f"enc{i}_merge_patches")(x))
            )
    x = _norm("bottleneck_norm")(x)
    for i in reversed(range(stages - 1)):
        width = embed_dim * 2**i
        x = PatchExpand(2, name=f"dec{i}_expand_patches")(_dense(2 * x.shape[-1], f"dec{i}_expand", use_bias=False)(x))
        x = _norm(f"dec{i}_expand_norm")(x)
        x = layers.Concatenate(name=f"dec{i}_concat")([x, skips[i]])
        x = _dense(width, f"dec{i}_concat_linear")(x)
        x = swin_stage(x, depths[i], num_heads[i], window_size, mlp_ratio, dropout_rate, stage_rates[i], f"dec{i}")
    x = _norm("decoder_norm")(x)
    x = _dense(patch_size**2 * embed_dim, "final_expand", use_bias=False)(x)
    x = _norm("final_expand_norm")(PatchExpand(patch_size, name="final_expand_patches")(x))
    logits = layers.Conv2D(num_classes, 1, use_bias=False, name="logits")(x)
    return probability_head(inputs, logits, num_classes, name)


#: ``model.name=swin_unet`` (``conf/model/swin_unet.yaml``): found by :func:`segexp.models.registry.networks`.
NETWORK = Network("swin_unet", build_swin_unet, SwinUNetParams, swin_unet_rules)
