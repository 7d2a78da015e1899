"""The resume checkpoint: the full training state in ``<run dir>/checkpoints/resume/`` after every n-th epoch.

:class:`ResumeCheckpoint` writes ``epoch_<e>.keras`` (weights and optimizer state, learning rate
included) and ``state.json`` (completed epochs, the counters and best values of BestCheckpoint,
ReduceLROnPlateau and EarlyStopping, the dropout RNG states, every epoch's logs and the resolved
config). ``state.json`` is replaced atomically, last: it is the commit point, so a run killed at
any moment (``kill -9`` included) leaves the previous complete checkpoint. The epoch files that the
best model and early stopping's best weights came from are kept with it.

What a resume continues, and when it is refused, is :mod:`segexp.training.resume`.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np

from segexp.core.errors import ResumeError
from segexp.core.files import atomic_write_path
from segexp.models.saving import load_keras_model, save_keras_model
from segexp.training.callbacks import (
    BestCheckpoint,
    EpochClock,
    MlflowEpochLogger,
    current_learning_rate,
    on_interval,
)

log = logging.getLogger(__name__)

RESUME_DIR = Path("checkpoints") / "resume"
STATE_FILE = "state.json"
FORMAT = 1


def state_attributes(callback: keras.callbacks.Callback) -> tuple[str, ...]:
    """The attributes of ``callback`` a resume saves and restores (counters and best values): its class's
    ``resume_state``, a tuple of attribute names (none: nothing to restore). segexp's own callbacks
    (:mod:`segexp.training.callbacks`) declare theirs as one of the user's (in the ``callbacks`` group) does."""
    return tuple(getattr(callback, "resume_state", ()))


# --------------------------------------------------------------------------- files


def read_state(run_dir: Path) -> dict[str, Any] | None:
    """The last committed checkpoint state of ``run_dir``, or None when no epoch completed."""
    path = Path(run_dir) / RESUME_DIR / STATE_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as err:
        raise ResumeError(f"{path}: unreadable checkpoint state ({err})") from err


def _write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    with atomic_write_path(path, durable=True) as tmp:
        tmp.write_text(json.dumps(data, indent=1))


def _plain(value: Any) -> Any:
    """JSON-able copy of a callback attribute (NumPy scalars to Python numbers)."""
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    return value


def seed_generator_states(model: keras.Model) -> list[keras.Variable]:
    """The state variables of the model's random generators (dropout), in layer order."""
    return [v for v in model.variables if v.path.endswith("seed_generator_state")]


def load_checkpoint_model(run_dir: Path, state: Mapping[str, Any]) -> keras.Model:
    """The model of ``state``'s committed epoch with its optimizer and dropout RNG states."""
    model = load_keras_model(run_dir / RESUME_DIR / state["model"], ResumeError)
    variables, saved = seed_generator_states(model), state.get("seed_generators", [])
    if len(variables) != len(saved):
        raise ResumeError(
            f"{run_dir / RESUME_DIR / STATE_FILE}: {len(saved)} RNG states for {len(variables)} random layers"
        )
    for variable, value in zip(variables, saved):
        variable.assign(np.asarray(value, dtype=variable.dtype))
    return model


def restore_best_model(run_dir: Path, state: Mapping[str, Any]) -> None:
    """``checkpoints/best.keras`` as committed in ``state`` (a kill may have cut a later write short)."""
    epoch = state.get("best_model_epoch")
    if epoch:
        with atomic_write_path(run_dir / "checkpoints" / "best.keras") as tmp:
            shutil.copyfile(run_dir / RESUME_DIR / f"epoch_{epoch:03d}.keras", tmp)


# --------------------------------------------------------------------------- saving


class ResumeCheckpoint(keras.callbacks.Callback):
    """Writes the full training state after every n-th epoch; restores callback state on a resumed fit.

    Place it after BestCheckpoint, ReduceLROnPlateau and EarlyStopping (whose state it
    saves once they have seen the epoch) and before the MLflow loggers. With
    ``every_n_epochs=1`` what is logged to MLflow is always covered by a checkpoint (a gap
    left by a kill is filled on resume from ``state.json``); with n > 1 a kill loses up to
    n-1 epochs, which the resumed run trains again (same seeds, same batches). The last
    epoch of a fit is always written. Each commit first has BestCheckpoint write the best
    model (:meth:`BestCheckpoint.flush`) and keeps it as a hard link to ``best.keras``; a
    model is never written twice: when the best epoch is the committed one, its epoch file
    is that link.
    """

    def __init__(
        self,
        run_dir: Path,
        config: Mapping[str, Any],
        callbacks: Sequence[keras.callbacks.Callback],
        run_id: str | None,
        previous: Mapping[str, Any] | None = None,
        every_n_epochs: int = 1,
    ) -> None:
        super().__init__()
        self.dir = Path(run_dir) / RESUME_DIR
        self.config = dict(config)
        self.watched = [c for c in callbacks if state_attributes(c)]
        self.best = next((c for c in callbacks if isinstance(c, BestCheckpoint)), None)
        self.clock = next((c for c in callbacks if isinstance(c, EpochClock)), None)
        self.run_id = run_id
        self.previous = previous
        self.every_n_epochs = every_n_epochs
        self.history: list[dict[str, float]] = list(previous["history"]) if previous else []
        self.best_model_epoch: int | None = previous.get("best_model_epoch") if previous else None
        self.learning_rate = float("nan")
        self.written_epoch = int(previous["epoch"]) if previous else 0

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        if self.previous is not None:  # the other callbacks have just reset themselves
            restore_callbacks(self.watched, self.previous, self.dir)

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.learning_rate = current_learning_rate(self.model)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        done = epoch + 1
        self.history.append({**{k: float(v) for k, v in (logs or {}).items()}, "learning_rate": self.learning_rate})
        if on_interval(epoch, self.every_n_epochs) or self.model.stop_training:
            self._commit(done)

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        if len(self.history) > self.written_epoch:  # the fit ended between two checkpoint epochs
            self._commit(len(self.history))

    def _link_best(self, epoch: int) -> None:
        """``epoch_<e>.keras`` as a hard link to the ``best.keras`` just written (a copy where links fail)."""
        assert self.best is not None  # _commit links only when there is a best checkpoint
        target = self.dir / f"epoch_{epoch:03d}.keras"
        with atomic_write_path(target, durable=True) as tmp:
            try:
                os.link(self.best.path, tmp)
            except OSError:  # a file system without hard links
                shutil.copyfile(self.best.path, tmp)
        self.best_model_epoch = epoch

    def _commit(self, done: int) -> None:
        """Write the best model (a link) and the model of epoch ``done`` (unless it is the best), then
        ``state.json``, the commit point."""
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.best is not None:
            self.best.flush()
            if self.best.saved_epoch is not None and self.best.saved_epoch != self.best_model_epoch:
                self._link_best(self.best.saved_epoch)  # keep this best model: a link, no write
        model_file = f"epoch_{done:03d}.keras"
        if self.best_model_epoch != done or not (self.dir / model_file).is_file():
            with atomic_write_path(self.dir / model_file, durable=True) as tmp:
                save_keras_model(self.model, tmp)
        state = {
            "format": FORMAT,
            "epoch": done,
            "stopped": bool(self.model.stop_training) and not self._time_budget_spent(),
            "model": model_file,
            "best_model_epoch": self.best_model_epoch,
            "seed_generators": [keras.ops.convert_to_numpy(v).tolist() for v in seed_generator_states(self.model)],
            "callbacks": {type(c).__name__: callback_state(c) for c in self.watched},
            "history": self.history[:done],
            "mlflow_run_id": self.run_id,
            "config": self.config,
        }
        _write_json_atomic(self.dir / STATE_FILE, state)
        self.written_epoch = done
        _remove_unreferenced(self.dir, state)

    def _time_budget_spent(self) -> bool:
        """A run ended by training.max_time may be resumed to train on (it did not converge or stop early)."""
        return self.clock is not None and self.clock.budget_spent


def callback_state(callback: keras.callbacks.Callback) -> dict[str, Any]:
    """The saved attributes of ``callback`` (and the epoch of early stopping's best weights, whose file is kept)."""
    state = {name: _plain(getattr(callback, name, None)) for name in state_attributes(callback)}
    if isinstance(callback, keras.callbacks.EarlyStopping) and callback.best_weights is not None:
        state["best_weights_epoch"] = callback.best_epoch + 1  # the weights of that epoch's file
    return state


def _referenced(state: Mapping[str, Any]) -> set[str]:
    epochs = {state["epoch"], state.get("best_model_epoch")}
    epochs.add(state["callbacks"].get("EarlyStopping", {}).get("best_weights_epoch"))
    return {f"epoch_{e:03d}.keras" for e in epochs if e} | {STATE_FILE}


def _remove_unreferenced(folder: Path, state: Mapping[str, Any]) -> None:
    keep = _referenced(state)
    for path in folder.iterdir():
        if path.name not in keep and path.is_file():
            path.unlink(missing_ok=True)


def restore_callbacks(callbacks: Sequence[keras.callbacks.Callback], state: Mapping[str, Any], folder: Path) -> None:
    """Put the saved counters and best values back into BestCheckpoint, ReduceLROnPlateau, EarlyStopping and
    the user's callbacks that name a ``resume_state``."""
    for c in callbacks:
        saved = state["callbacks"].get(type(c).__name__)
        if saved is None:
            continue
        for name in state_attributes(c):
            setattr(c, name, saved.get(name))
        weights_epoch = saved.get("best_weights_epoch")
        weights_file = folder / f"epoch_{weights_epoch:03d}.keras" if weights_epoch else None
        if isinstance(c, keras.callbacks.EarlyStopping) and weights_file and c.restore_best_weights:
            if weights_file.is_file():
                c.best_weights = load_keras_model(weights_file, ResumeError).get_weights()
            else:  # that epoch was neither checkpointed nor the best by training.monitor
                log.warning(
                    "early stopping's best weights (epoch %d) were not checkpointed; it restores none", weights_epoch
                )


# --------------------------------------------------------------------------- the callback list


def with_resume_checkpoint(
    callbacks: list[keras.callbacks.Callback],
    run_dir: Path,
    config: Mapping[str, Any],
    run_id: str | None,
    previous: Mapping[str, Any] | None,
    every_n_epochs: int = 1,
) -> list[keras.callbacks.Callback]:
    """``callbacks`` with a :class:`ResumeCheckpoint` before the MLflow loggers. A resumed run (``previous``: the
    state it continues) has its ``history.csv`` cut back to the completed epochs and appended to."""
    if previous is not None:
        _truncate_history_csv(run_dir / "history.csv", int(previous["epoch"]))
        for c in callbacks:
            if isinstance(c, keras.callbacks.CSVLogger):
                c.append = True
    checkpoint = ResumeCheckpoint(run_dir, config, callbacks, run_id, previous, every_n_epochs)
    at = next((i for i, c in enumerate(callbacks) if isinstance(c, MlflowEpochLogger)), len(callbacks))
    rest = [c for c in callbacks[at:] if not state_attributes(c)]
    stateful = [c for c in callbacks[at:] if state_attributes(c)]  # their state as of this epoch's end
    return [*callbacks[:at], *stateful, checkpoint, *rest]


def _truncate_history_csv(path: Path, epochs: int) -> None:
    """Keep the header and the rows of the first ``epochs`` epochs (later rows come from a killed attempt)."""
    if not path.is_file():
        return
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    kept = rows[:1] + [r for r in rows[1:] if r and r[0].isdigit() and int(r[0]) < epochs]
    with atomic_write_path(path) as tmp, open(tmp, "w", newline="") as f:
        csv.writer(f).writerows(kept)


def history_columns(rows: Sequence[Mapping[str, float]]) -> dict[str, list[float]]:
    """Per-epoch logs as columns ``{key: [value of epoch 1, 2, ...]}``, NaN where an epoch lacks
    the key (e.g. ``val_*`` on epochs without validation)."""
    keys = sorted({k for row in rows for k in row})
    return {k: [float(row.get(k, float("nan"))) for row in rows] for k in keys}
