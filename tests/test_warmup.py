"""The training step traced before fit leaves the whole training state as it was."""

from __future__ import annotations

import keras
import numpy as np

from segexp.models import build_model
from segexp.models.losses import build_loss
from segexp.training.warmup import state_variables, trace_train_step

from .conftest import random_batch


def _model() -> keras.Model:
    model = build_model("flexunet", image_height=32, image_width=32, image_channels=1, num_classes=3,
                        base_filters=4, num_layers=2, base_kernels=[3, 3], dilation=[1, 1], dropout_rate=0.3,
                        norm="batch")
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=build_loss("dice_ce", 3))
    return model


def test_traced_step_restores_weights_norm_statistics_seeds_and_optimizer() -> None:
    keras.utils.set_random_seed(0)
    model = _model()
    images, masks = random_batch(4, 32, 32, 1, 3)
    trace_train_step(model, images, masks)  # builds the optimizer, traces, runs one step, restores
    before = [keras.ops.convert_to_numpy(v).copy() for v in state_variables(model)]
    assert model.train_function is not None  # traced
    assert int(model.optimizer.iterations.numpy()) == 0
    kinds = {v.path.split("/")[-1] for v in state_variables(model)}
    assert {"moving_mean", "seed_generator_state", "iteration"} <= kinds  # BN statistics, dropout seeds, optimizer
    trace_train_step(model, images, masks)
    after = [keras.ops.convert_to_numpy(v) for v in state_variables(model)]
    assert all(np.array_equal(a, b) for a, b in zip(before, after))


def test_a_step_after_the_trace_equals_a_step_without_it() -> None:
    images, masks = random_batch(4, 32, 32, 1, 3, seed=1)
    keras.utils.set_random_seed(0)
    plain = _model()
    plain.train_on_batch(images, masks)
    keras.utils.set_random_seed(0)
    traced = _model()
    trace_train_step(traced, images, masks)
    traced.train_on_batch(images, masks)
    for a, b in zip(state_variables(plain), state_variables(traced)):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b), rtol=1e-6, atol=1e-7)
