"""segexp's epoch loop keeps ``model.fit``'s contract: same history, same weights, same callback hooks."""

from __future__ import annotations

import threading

import keras
import numpy as np
import pytest

from segexp.training.fit_loop import fit_epochs


class Batches(keras.utils.PyDataset):
    """Seeded random batches, the same every epoch; records which (epoch, index) each read was for.
    ``on_epoch_end`` counts epochs (as :class:`~segexp.data.runtime.loader.SliceLoader`'s sampler does)."""

    def __init__(self, steps: int, seed: int, workers: int = 2, fail_at: int | None = None) -> None:
        super().__init__(workers=workers)
        self.steps, self.seed, self.epoch, self.fail_at = steps, seed, 0, fail_at
        self.reads: list[tuple[int, int]] = []

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if index == self.fail_at:
            raise OSError(f"cannot read batch {index}")
        self.reads.append((self.epoch, index))
        rng = np.random.default_rng((self.seed, index))
        images = rng.integers(0, 255, (4, 16, 16, 1), dtype=np.uint8)
        return images, (images[..., 0] > 127).astype(np.uint8)

    def on_epoch_end(self) -> None:
        self.epoch += 1


def tiny_model() -> keras.Model:
    keras.utils.set_random_seed(3)
    inputs = keras.Input((16, 16, 1))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(x)
    x = keras.layers.BatchNormalization()(x)
    model = keras.Model(inputs, keras.layers.Conv2D(2, 1, activation="softmax")(x))
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss="sparse_categorical_crossentropy",
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="acc")],
    )
    return model


HOOKS = (
    "on_train_begin",
    "on_train_end",
    "on_epoch_begin",
    "on_epoch_end",
    "on_train_batch_begin",
    "on_train_batch_end",
    "on_test_begin",
    "on_test_end",
    "on_test_batch_begin",
    "on_test_batch_end",
)


class Hooks(keras.callbacks.Callback):
    """Records every hook call as ``(hook, step or epoch)``."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, int | None]] = []


def _recorder(name: str):
    def hook(self: Hooks, *args, **kwargs) -> None:
        self.calls.append((name, args[0] if args and isinstance(args[0], int) else None))

    return hook


for _hook in HOOKS:
    setattr(Hooks, _hook, _recorder(_hook))


def test_same_history_weights_and_hooks_as_model_fit() -> None:
    runs = {}
    for loop in ("keras", "segexp"):
        model, hooks = tiny_model(), Hooks()
        train, valid = Batches(3, seed=1), Batches(2, seed=2)
        if loop == "keras":
            history = model.fit(
                train,
                validation_data=valid,
                validation_freq=[2, 3],
                epochs=3,
                initial_epoch=0,
                shuffle=False,
                callbacks=[hooks],
                verbose=0,
            )
        else:
            history = fit_epochs(model, train, valid, epochs=3, validation_epochs=[2, 3], callbacks=[hooks], verbose=0)
        runs[loop] = (history.history, model.get_weights(), hooks.calls)
    (h_keras, w_keras, c_keras), (h_ours, w_ours, c_ours) = runs["keras"], runs["segexp"]
    assert sorted(h_ours) == sorted(h_keras) == ["acc", "loss", "val_acc", "val_loss"]
    for key in h_keras:
        np.testing.assert_allclose(h_ours[key], h_keras[key], rtol=1e-5, err_msg=key)
    for ours, theirs in zip(w_ours, w_keras):
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-6)
    assert c_ours == c_keras
    assert ("on_test_begin", None) in c_ours


def test_epoch_e_reads_the_loaders_epoch_e() -> None:
    """A sampler's draws for epoch e train epoch e (``fit`` reads a batch ahead to build its
    ``tf.data`` spec and then starts at the loader's epoch 1); a resumed run continues in step."""
    train = Batches(2, seed=1, workers=0)
    fit_epochs(tiny_model(), train, None, epochs=2, verbose=0)
    assert train.reads == [(0, 0), (0, 1), (1, 0), (1, 1)] and train.epoch == 2
    resumed = Batches(2, seed=1, workers=0)
    resumed.epoch = 1  # SliceLoader.set_epoch(start.epoch)
    fit_epochs(tiny_model(), resumed, None, epochs=2, initial_epoch=1, verbose=0)
    assert resumed.reads == train.reads[2:]


def test_resumes_at_initial_epoch_and_validates_only_on_listed_epochs() -> None:
    model, hooks = tiny_model(), Hooks()
    history = fit_epochs(
        model,
        Batches(2, seed=1),
        Batches(1, seed=2),
        epochs=4,
        initial_epoch=2,
        validation_epochs=[4],
        callbacks=[hooks],
        verbose=0,
    )
    assert [e for hook, e in hooks.calls if hook == "on_epoch_begin"] == [2, 3]
    assert history.epoch == [2, 3]
    assert len(history.history["loss"]) == 2 and len(history.history["val_loss"]) == 1  # after epoch 4 only
    assert sum(hook == "on_test_begin" for hook, _ in hooks.calls) == 1


def test_stop_training_ends_the_epoch_and_the_run() -> None:
    class StopAfterTwoSteps(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 1:
                self.model.stop_training = True

    model, hooks = tiny_model(), Hooks()
    fit_epochs(model, Batches(5, seed=1), None, epochs=3, callbacks=[StopAfterTwoSteps(), hooks], verbose=0)
    assert [s for hook, s in hooks.calls if hook == "on_train_batch_end"] == [0, 1]
    assert [hook for hook, _ in hooks.calls][-2:] == ["on_epoch_end", "on_train_end"]


def test_a_failing_batch_raises_and_stops_the_loader_workers() -> None:
    before = threading.active_count()
    with pytest.raises(OSError, match="cannot read batch 2"):
        fit_epochs(tiny_model(), Batches(4, seed=1, fail_at=2), None, epochs=1, verbose=0)
    assert threading.active_count() <= before


def test_the_first_step_is_traced_once() -> None:
    """Optimizer and metric variables exist before the first trace, so ``tf.function`` traces the step once
    (Keras' private ``Trainer._symbolic_build``: this fails if a Keras release drops it)."""
    model = tiny_model()
    traces = []
    original = model.train_step

    def counting_step(data):
        traces.append(1)
        return original(data)

    model.train_step = counting_step
    fit_epochs(model, Batches(2, seed=1, workers=0), None, epochs=1, verbose=0)
    assert model.optimizer.built
    assert len(traces) == 1
