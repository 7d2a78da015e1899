"""XLA (``jit_compile``) for the training step only.

Keras builds the train, test and predict functions of a model with the one
``model.jit_compile`` flag. Measured in real ``segexp-train`` epochs (hvsmr_mini, the planned
ResUNet at 256x256, batch 8, 2 CPU cores): the XLA training step takes 0.95 s against 1.17 s
without, but the XLA forward pass gains nothing (a validation pass 0.41 s either way) and its
compilation costs 3-5 s for validation plus 3-5 s for prediction, in every process that
validates, draws epoch images, evaluates or infers. So forward passes are built without XLA.
"""

from __future__ import annotations

import keras


def xla_for_training_only(model: keras.Model) -> keras.Model:
    """Build ``model``'s test and predict functions without XLA (its training step keeps ``jit_compile``).

    Keras reuses a built function unless forced, so later ``evaluate``/``predict`` calls use these.
    A model that was compiled without XLA (or not compiled) is returned unchanged.
    """
    if not getattr(model, "compiled", False) or not model.jit_compile:
        return model
    model.jit_compile = False  # read by make_test_function / make_predict_function when they build
    try:
        model.make_test_function(force=True)
        model.make_predict_function(force=True)
    finally:
        model.jit_compile = True
    return model
