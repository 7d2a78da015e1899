"""The epoch loop on one device: ``model.fit``'s contract, the batches fed to the compiled step directly.

Why not ``model.fit`` (measured, TensorFlow 2.21 / Keras 3.15 on CPU, BENCHMARKS.md "The fit
loop"): on a ``keras.utils.PyDataset`` Keras' TensorFlow trainer wraps the loader in a
``tf.data`` generator and runs each step through a second ``tf.function`` that pulls the
batch from that iterator. On 2 cores, hvsmr_mini at 256x256, batch 8, the same 20 loader
batches took 1.63-1.74 s per step that way against 1.35-1.41 s here and 1.33 s with
``train_on_batch`` (alternating fresh processes): the compiled step is the same, the
``tf.data`` hop costs ~20 %. Here the loader's own worker threads (Keras' enqueuer, as
``fit`` uses) deliver NumPy batches and the step function Keras compiled
(``model.train_function``, what ``train_on_batch`` calls) runs on each, so the step is
also traced on a concrete batch (the slow trace ``fit`` makes otherwise is gone).

Everything else follows ``Model.fit`` (keras/src/backend/tensorflow/trainer.py): metrics
reset at each epoch's start and accumulated over its steps, every callback hook in the same
order (``on_test_*`` around validation), ``val_``-prefixed validation logs, ``stop_training``
honoured after a step or an epoch, ``model.history`` returned. Under a distribution
strategy segexp keeps ``model.fit``, which shards the batches over the replicas.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Collection, Iterator, Sequence
from typing import Any

import keras
import numpy as np

#: Keras' adapter for a ``PyDataset``: its enqueuer runs the loader's ``workers`` (threads or
#: processes, ``max_queue_size`` batches ahead) exactly as ``fit`` does. A private module of
#: Keras 3: the calls used here (constructor, ``on_epoch_begin``, ``get_numpy_iterator``,
#: ``enqueuer``, ``on_epoch_end``) are unchanged from 3.6 to 3.15 (read in Keras' history), the
#: range pyproject allows; tests/test_fit_loop.py fails if it moves.
from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetAdapter

Batch = tuple[np.ndarray, ...]


@contextlib.contextmanager
def epoch_batches(loader: keras.utils.PyDataset) -> Iterator[Iterator[Batch]]:
    """One epoch of ``loader``'s batches, read ahead by its workers. The loader's ``on_epoch_end``
    (a sampler draws the next epoch) runs when the epoch ends, also after ``stop_training``;
    on an error the workers are stopped and the error raised."""
    adapter = PyDatasetAdapter(loader, shuffle=False)
    adapter.on_epoch_begin()
    try:
        yield adapter.get_numpy_iterator()
    except BaseException:
        if adapter.enqueuer is not None:
            adapter.enqueuer.stop()
        raise
    adapter.on_epoch_end()


def build_state(model: keras.Model, batch: Batch) -> None:
    """Create the optimizer, loss and metric variables from ``batch``'s shapes before the step is traced.

    Without a distribution strategy Keras' TensorFlow trainer creates them inside the first
    trace of ``train_function``; a ``tf.function`` that creates variables is traced twice,
    so the first step paid the graph build twice (ResUNet 256x256, hvsmr_mini, 2 cores:
    21.2-22.5 s vs 16.9-17.4 s for the first step with this, plus ~1 s here). Keras' own
    ``_symbolic_build`` (what ``fit`` runs under a strategy) builds them from symbolic
    shapes; tests/test_fit_loop.py fails if it goes.
    """
    x, y, *weights = batch
    model._symbolic_build(data_batch=(x, y, weights[0] if weights else None))


def state_built_first(
    model: keras.Model, step: Callable[[Iterator[Batch]], dict[str, Any]]
) -> Callable[[Iterator[Batch]], dict[str, Any]]:
    """``step`` that first calls :func:`build_state` on the first batch it is given (no extra read)."""
    built = False

    def step_once_built(batches: Iterator[Batch]) -> dict[str, Any]:
        nonlocal built
        if not built:
            batch = next(batches)
            build_state(model, batch)
            built, batches = True, iter([batch])
        return step(batches)

    return step_once_built


def run_step(step: Callable[[Iterator[Batch]], dict[str, Any]], batch: Batch) -> dict[str, float]:
    """One compiled step (``model.train_function`` or ``test_function``) on one batch; metrics accumulate."""
    logs = step(iter([batch]))
    return {name: float(keras.ops.convert_to_numpy(value)) for name, value in logs.items()}


def one_pass(
    loader: keras.utils.PyDataset,
    step: Callable[[Iterator[Batch]], dict[str, Any]],
    begin: Callable[[int], None],
    end: Callable[[int, dict[str, float]], None],
    stop: Callable[[], bool] = lambda: False,
) -> dict[str, float]:
    """``step`` on every batch of one epoch of ``loader``, between the batch hooks ``begin`` and
    ``end``; ends early when ``stop()``. Returns the last step's logs."""
    logs: dict[str, float] = {}
    with epoch_batches(loader) as batches:
        for index, batch in enumerate(batches):
            begin(index)
            logs = run_step(step, batch)
            end(index, logs)
            if stop():
                break
    return logs


def validate(
    model: keras.Model, loader: keras.utils.PyDataset, callbacks: keras.callbacks.CallbackList
) -> dict[str, float]:
    """Metrics over one full pass of ``loader`` (as ``model.evaluate``), keys prefixed ``val_``."""
    model.make_test_function()
    model.reset_metrics()
    callbacks.on_test_begin()
    logs = metrics_result(
        model, one_pass(loader, model.test_function, callbacks.on_test_batch_begin, callbacks.on_test_batch_end)
    )
    callbacks.on_test_end(logs)
    return {f"val_{name}": value for name, value in logs.items()}


def metrics_result(model: keras.Model, logs: dict[str, float]) -> dict[str, float]:
    """The compiled metrics accumulated since their last reset (what ``fit`` logs for an epoch)."""
    if not logs:
        return {}
    return {name: float(keras.ops.convert_to_numpy(v)) for name, v in model.get_metrics_result().items()}


def fit_epochs(
    model: keras.Model,
    train: keras.utils.PyDataset,
    valid: keras.utils.PyDataset | None,
    *,
    epochs: int,
    initial_epoch: int = 0,
    validation_epochs: Collection[int] = (),
    callbacks: Sequence[keras.callbacks.Callback] = (),
    verbose: int | str = "auto",
) -> keras.callbacks.History:
    """Train ``model`` from ``initial_epoch`` to ``epochs`` (0-based, as ``fit``) on one device.

    ``validation_epochs``: the epochs (from 1) after which ``valid`` is scored in full, as
    ``fit``'s ``validation_freq`` list. Returns ``model.history``.
    """
    callback_list = keras.callbacks.CallbackList(
        list(callbacks),
        add_history=True,
        add_progbar=verbose != 0,
        verbose=verbose,
        epochs=epochs,
        steps=len(train),
        model=model,
    )
    model.stop_training = False
    model.make_train_function()
    train_step = model.train_function if model.optimizer.built else state_built_first(model, model.train_function)
    callback_list.on_train_begin()
    training_logs: dict[str, float] | None = None
    for epoch in range(initial_epoch, epochs):
        model.reset_metrics()
        callback_list.on_epoch_begin(epoch)
        logs = one_pass(
            train,
            train_step,
            callback_list.on_train_batch_begin,
            callback_list.on_train_batch_end,
            stop=lambda: model.stop_training,
        )
        epoch_logs = metrics_result(model, logs)
        if valid is not None and epoch + 1 in validation_epochs:
            epoch_logs.update(validate(model, valid, callback_list))
        callback_list.on_epoch_end(epoch, epoch_logs)
        training_logs = epoch_logs
        if model.stop_training:
            break
    if epochs > initial_epoch:
        model.optimizer.finalize_variable_values(model.trainable_weights)  # e.g. EMA weights, as fit
    callback_list.on_train_end(logs=training_logs)
    return model.history
