"""XLA only for the training step: validation and prediction are built without it."""

from __future__ import annotations

import keras
import numpy as np

from segexp.models.xla import xla_for_training_only


def _model(jit: bool) -> keras.Model:
    inputs = keras.Input((8, 8, 1))
    model = keras.Model(inputs, keras.layers.Conv2D(2, 3, padding="same")(inputs))
    model.compile(optimizer="adam", loss="mse", jit_compile=jit)
    return model


def test_forward_functions_without_xla_training_step_with(monkeypatch) -> None:
    import tensorflow as tf

    built = []
    real = tf.function

    def spy(*args, **kwargs):  # Keras' TensorFlow trainer wraps each step in tf.function(jit_compile=...)
        built.append(kwargs.get("jit_compile"))
        return real(*args, **kwargs)

    model = _model(jit=True)
    if not model.jit_compile:  # Keras refused XLA here (an earlier test's distribution strategy): nothing to split
        assert xla_for_training_only(model).test_function is None
        return
    monkeypatch.setattr(tf, "function", spy)
    model = xla_for_training_only(model)
    assert built and True not in built  # test and predict steps: no XLA
    assert model.jit_compile is True
    forward = len(built)
    model.make_train_function()
    assert True in built[forward:]  # the training step keeps it
    test, predict = model.test_function, model.predict_function
    x, y = np.zeros((2, 8, 8, 1), "float32"), np.zeros((2, 8, 8, 2), "float32")
    model.train_on_batch(x, y)
    model.test_on_batch(x, y)
    model.evaluate(x, y, verbose=0)
    assert model.predict(x, verbose=0).shape == (2, 8, 8, 2)
    assert model.test_function is test and model.predict_function is predict  # reused, not rebuilt with XLA


def test_models_without_xla_or_uncompiled_are_unchanged() -> None:
    model = _model(jit=False)
    assert xla_for_training_only(model) is model and model.test_function is None
    uncompiled = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    assert xla_for_training_only(uncompiled) is uncompiled
