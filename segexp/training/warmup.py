"""Trace the training step on a real batch before ``model.fit``, leaving the training state untouched.

Why (measured, TensorFlow 2.21 / Keras 3.15 on CPU): when ``model.fit`` on a
``keras.utils.PyDataset`` is the first to trace the training step, every later step runs
about 1.3x slower than when the step was first traced on a concrete batch
(``train_on_batch``): ResUNet at 256x256, batch 8, 2 cores, 2.3 vs 1.8 s per step,
same kernels (oneDNN reports the same primitive calls), the difference persisting for the
whole process. The fix is to trace first on one batch of the run's own training data and
then put every variable back, so the run is exactly what it would have been: one extra
step of compute, no extra tracing (``fit`` reuses the step). BENCHMARKS.md ("Precision and
the fit loop") has the figures, measured in alternating fresh processes; ``scripts/bench.py
--only fit`` compares ``fit`` with ``train_on_batch`` inside one process and cannot show it.
"""

from __future__ import annotations

import logging
import time

import keras
import numpy as np

log = logging.getLogger(__name__)


def state_variables(model: keras.Model) -> list[keras.Variable]:
    """Everything one training step changes: the model's variables (weights, norm statistics,
    dropout seed states) and the optimizer's (iterations, moments, loss scale)."""
    return [*model.variables, *model.optimizer.variables]


def trace_train_step(model: keras.Model, images: np.ndarray, masks: np.ndarray) -> float:
    """Run one training step on ``(images, masks)`` to trace it, then restore every state variable.

    The optimizer is built first so that its variables exist before the snapshot. Metrics
    are left as the step set them: ``fit`` resets them at the start of every epoch.
    Returns the seconds it took (the trace included).
    """
    start = time.perf_counter()
    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    variables = state_variables(model)
    saved = [keras.ops.convert_to_numpy(v) for v in variables]
    model.train_on_batch(images, masks)
    for variable, value in zip(variables, saved):
        variable.assign(value)
    seconds = time.perf_counter() - start
    log.info("training step traced on one batch in %.1f s (state restored)", seconds)
    return seconds
