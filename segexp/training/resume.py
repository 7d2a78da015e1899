"""Resuming a training run where it stopped: a full-state checkpoint at the end of every epoch.

After each epoch :class:`ResumeCheckpoint` writes ``<run dir>/checkpoints/resume/``:
``epoch_<e>.keras`` (weights and optimizer state, learning rate included) and
``state.json`` (completed epochs, the counters and best values of BestCheckpoint,
ReduceLROnPlateau and EarlyStopping, the dropout RNG states, every epoch's logs and
the resolved config). ``state.json`` is replaced atomically, last: it is the commit
point, so a run killed at any moment (``kill -9`` included) leaves the previous
complete checkpoint. The epoch files that the best model and early stopping's best
weights came from are kept with it.

``training.resume`` names what to continue: a run folder, an MLflow run id, or
``auto`` (this job's folder, if it holds a checkpoint). A requeued SLURM job
(``SLURM_RESTART_COUNT`` > 0, e.g. a pre-empted submitit sweep job) resumes its
folder's checkpoint by itself. The resumed run trains in the original folder and
continues the same MLflow run.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shlex
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

from segexp.core.errors import ResumeError
from segexp.core.files import atomic_write_path
from segexp.evaluation.viz import image_truth_prediction, save_png
from segexp.models.saving import load_keras_model, save_keras_model
from segexp.tracking.runs import MLFLOW_RUN_FILE, RUN_ID
from segexp.tracking.store import retry_locked
from segexp.tracking.tracker import Tracker, flatten_config
from segexp.training.callbacks import (
    BestCheckpoint,
    EpochClock,
    EpochImages,
    MlflowEpochLogger,
    current_learning_rate,
    epoch_metrics,
    on_interval,
    predict_classes,
)
from segexp.training.run_folder import requeued

log = logging.getLogger(__name__)

RESUME_DIR = Path("checkpoints") / "resume"
STATE_FILE = "state.json"
FORMAT = 1
#: Keys that may differ between a run and its resumption (how long, how verbose, how fast).
MAY_CHANGE = (
    "training.epochs",
    "training.max_time",
    "training.devices",
    "training.resume",
    "training.verbose",
    "training.loader.",
    "training.threads.",
    "training.checkpoint.",
    "training.validation.",
    "training.epoch_images.every_n_epochs",
    "training.postprocess",  # only the step after the last epoch reads it
)


def state_attributes(callback: keras.callbacks.Callback) -> tuple[str, ...]:
    """The attributes of ``callback`` a resume saves and restores (counters and best values): its class's
    ``resume_state``, a tuple of attribute names (none: nothing to restore). segexp's own callbacks
    (:mod:`segexp.training.callbacks`) declare theirs as a callback of the user's (``training.callbacks``) does."""
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
        previous: dict[str, Any] | None = None,
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
        callbacks: dict[str, dict[str, Any]] = {}
        for c in self.watched:
            state = {name: _plain(getattr(c, name, None)) for name in state_attributes(c)}
            if isinstance(c, keras.callbacks.EarlyStopping) and c.best_weights is not None:
                state["best_weights_epoch"] = c.best_epoch + 1  # the weights of that epoch's file
            callbacks[type(c).__name__] = state
        state = {
            "format": FORMAT,
            "epoch": done,
            "stopped": bool(self.model.stop_training) and not self._time_budget_spent(),
            "model": model_file,
            "best_model_epoch": self.best_model_epoch,
            "seed_generators": [keras.ops.convert_to_numpy(v).tolist() for v in seed_generator_states(self.model)],
            "callbacks": callbacks,
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


# --------------------------------------------------------------------------- resuming


def resume_source(
    setting: str | None, run_dir: Path, tracking_uri: str, env: Mapping[str, str] = os.environ
) -> Path | None:
    """The run folder to continue (or None: a fresh run) for ``training.resume=setting``."""
    here = read_state(run_dir) is not None
    if setting is None:
        if requeued(env) and here:
            log.info(
                "requeued job (SLURM_RESTART_COUNT=%s): resuming the checkpoint in %s",
                env["SLURM_RESTART_COUNT"],
                run_dir,
            )
            return Path(run_dir)
        return None
    if setting == "auto":
        return Path(run_dir) if here else None
    path = Path(setting).expanduser()
    if path.is_dir():
        source = path.resolve()
    elif RUN_ID.match(setting):
        source = _run_dir_of(setting, tracking_uri)
    else:
        raise ResumeError(
            f"training.resume: {setting!r} is neither a run folder nor an MLflow run id (32 hex characters) nor auto"
        )
    if read_state(source) is None:
        raise ResumeError(
            f"training.resume: {source} holds no checkpoint ({RESUME_DIR / STATE_FILE}): "
            "no epoch was completed there, or it was trained before checkpoints existed; start a new run"
        )
    return source


def _run_dir_of(run_id: str, tracking_uri: str) -> Path:
    import mlflow
    from mlflow.exceptions import MlflowException

    mlflow.set_tracking_uri(tracking_uri)
    try:
        run = retry_locked(mlflow.MlflowClient().get_run, run_id)
    except MlflowException as err:
        raise ResumeError(
            f"training.resume: MLflow run {run_id} at {tracking_uri}: {str(err).splitlines()[0]}"
        ) from err
    folder = run.data.tags.get("run_dir")
    if folder is None or not Path(folder).is_dir():
        raise ResumeError(
            f"training.resume: MLflow run {run_id}: its run folder {folder} is not on this machine "
            "(checkpoints are kept in the run folder, not in MLflow)"
        )
    return Path(folder).resolve()


def config_differences(before: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """``key: old -> new`` for every config key that differs, except those in :data:`MAY_CHANGE`."""
    a, b = flatten_config(before), flatten_config(now)
    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and not k.startswith(MAY_CHANGE))
    return [f"{k}: {a.get(k, '<absent>')} -> {b.get(k, '<absent>')}" for k in keys]


@dataclass
class Resume:
    """A run to continue: its folder, its last checkpoint state and its MLflow run (if tracked)."""

    run_dir: Path
    state: dict[str, Any]

    @property
    def epoch(self) -> int:
        """Completed epochs: the fit continues at this (0-based) epoch index."""
        return int(self.state["epoch"])

    @property
    def run_id(self) -> str | None:
        record = self.run_dir / MLFLOW_RUN_FILE
        if record.is_file():
            return json.loads(record.read_text())["run_id"]
        return self.state.get("mlflow_run_id")

    def final_epoch(self, epochs: int) -> int:
        """``epochs`` for fit: the configured count, or where early stopping ended the run."""
        return self.epoch if self.state.get("stopped") else epochs

    def load_model(self) -> keras.Model:
        """The model of the last completed epoch with its optimizer and dropout RNG states."""
        model = load_keras_model(self.run_dir / RESUME_DIR / self.state["model"], ResumeError)
        variables, saved = seed_generator_states(model), self.state.get("seed_generators", [])
        if len(variables) != len(saved):
            raise ResumeError(
                f"{self.run_dir / RESUME_DIR / STATE_FILE}: {len(saved)} RNG states for {len(variables)} random layers"
            )
        for variable, value in zip(variables, saved):
            variable.assign(np.asarray(value, dtype=variable.dtype))
        self._restore_best_model()
        return model

    def _restore_best_model(self) -> None:
        """``checkpoints/best.keras`` as committed (a kill may have cut a later write short)."""
        epoch = self.state.get("best_model_epoch")
        if epoch:
            best = self.run_dir / "checkpoints" / "best.keras"
            with atomic_write_path(best) as tmp:
                shutil.copyfile(self.run_dir / RESUME_DIR / f"epoch_{epoch:03d}.keras", tmp)

    def history(self) -> list[dict[str, float]]:
        return list(self.state["history"])


def prepare_resume(config: Mapping[str, Any], run_dir: Path, env: Mapping[str, str] = os.environ) -> Resume | None:
    """The :class:`Resume` for ``config`` (resolved) started in ``run_dir``, or None for a fresh run.

    Raises :class:`ResumeError` when ``training.resume`` names nothing resumable or the
    config differs from the original in more than :data:`MAY_CHANGE`.
    """
    source = resume_source(config["training"].get("resume"), Path(run_dir), config["tracking"]["uri"], env)
    if source is None:
        return None
    state = read_state(source)
    assert state is not None
    if state.get("format") != FORMAT:
        raise ResumeError(
            f"{source / RESUME_DIR / STATE_FILE}: checkpoint format {state.get('format')}, expected {FORMAT}"
        )
    differences = config_differences(state["config"], config)
    if differences:
        raise ResumeError(
            f"training.resume: {source} was trained with a different config; only training.epochs (and "
            "training.verbose/loader/threads) may change when resuming. Differing keys:\n  " + "\n  ".join(differences)
        )
    resume = Resume(source, state)
    log.info("resuming %s after epoch %d%s", source, resume.epoch, " (early-stopped)" if state.get("stopped") else "")
    return resume


def with_resume_checkpoint(
    callbacks: list[keras.callbacks.Callback],
    run_dir: Path,
    config: Mapping[str, Any],
    run_id: str | None,
    resume: Resume | None,
    every_n_epochs: int = 1,
) -> list[keras.callbacks.Callback]:
    """``callbacks`` with a :class:`ResumeCheckpoint` before the MLflow loggers; a resumed run's
    ``history.csv`` is cut back to the completed epochs and appended to."""
    if resume is not None:
        _truncate_history_csv(run_dir / "history.csv", resume.epoch)
        for c in callbacks:
            if isinstance(c, keras.callbacks.CSVLogger):
                c.append = True
    checkpoint = ResumeCheckpoint(run_dir, config, callbacks, run_id, resume.state if resume else None, every_n_epochs)
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


# --------------------------------------------------------------------------- MLflow


def reopen_run(
    tracker: Tracker,
    resume: Resume,
    model: keras.Model,
    callbacks: Sequence[keras.callbacks.Callback],
    class_names: Sequence[str],
) -> None:
    """Complete what an interruption left out after the last checkpoint, and tag the reopened MLflow run.

    The last checkpointed epoch's images are drawn again (with that epoch's model) when their
    files are missing; its metrics and images are logged to MLflow when they are not there.
    """
    images = next((c for c in callbacks if isinstance(c, EpochImages)), None)
    if images is not None:
        _redraw_epoch_images(images, model, resume.epoch)
    if not tracker.enabled:
        return
    import mlflow

    client = mlflow.MlflowClient()
    run = retry_locked(client.get_run, tracker.run_id)
    if "error" in run.data.tags:  # the previous attempt's interruption or crash: it is being repaired
        retry_locked(client.set_tag, tracker.run_id, "previous_error", run.data.tags["error"])
        retry_locked(client.delete_tag, tracker.run_id, "error")
    count = int(run.data.tags.get("resumed", "0")) + 1
    retry_locked(client.set_tag, tracker.run_id, "resumed", str(count))
    retry_locked(client.set_tag, tracker.run_id, f"resumed_{count}_at_epoch", str(resume.epoch))
    present = {m.step for m in retry_locked(client.get_metric_history, tracker.run_id, "train/loss")}
    for step, logs in enumerate(resume.history(), start=1):
        if step not in present:
            logs = dict(logs)
            tracker.log_metrics(epoch_metrics(logs, logs.pop("learning_rate"), class_names), step=step)
            log.info("MLflow: logged the metrics of epoch %d, which the interruption had left out", step)
    if images is not None and images.tracker.enabled and images.out_dir.is_dir():
        _backfill_images(tracker, client, resume.epoch, images.out_dir)


def _read_png(path: Path) -> np.ndarray | None:
    """RGB ``uint8`` image of ``path``, or None if it is missing or cut short."""
    import cv2

    image = cv2.imread(str(path), cv2.IMREAD_COLOR) if path.is_file() else None
    return None if image is None else image[..., ::-1].copy()


def _redraw_epoch_images(callback: EpochImages, model: keras.Model, epoch: int) -> None:
    """Write the image | truth | prediction files of ``epoch`` (from 1) that are missing or unreadable."""

    paths = [callback.out_dir / f"epoch_{epoch:03d}_{name}.png" for name in callback.names]
    missing = [i for i, path in enumerate(paths) if _read_png(path) is None]
    if not missing:
        return
    predictions = predict_classes(model, callback.images[missing])
    for i, prediction in zip(missing, predictions):
        save_png(paths[i], image_truth_prediction(callback.images[i], callback.masks[i], prediction, callback.colours))
    log.info("drew the %d image(s) of epoch %d that the interruption had left out", len(missing), epoch)


def _backfill_images(tracker: Tracker, client: Any, epochs: int, folder: Path) -> None:
    logged = {a.path.rsplit("/", 1)[-1] for a in retry_locked(client.list_artifacts, tracker.run_id, "images")}
    for step in range(1, epochs + 1):
        for png in sorted(folder.glob(f"epoch_{step:03d}_*.png")):
            name = png.stem[len(f"epoch_{step:03d}_") :]
            prefix = f"epoch_images~{name}+step+{step}+"
            image = None if any(a.startswith(prefix) for a in logged) else _read_png(png)
            if image is not None:
                tracker.log_image(f"epoch_images/{name}", image, step=step)


# --------------------------------------------------------------------------- messages


def resume_command(overrides: Sequence[str], run_dir: Path) -> str:
    """The command line that continues the run in ``run_dir``."""
    kept = [o for o in overrides if not o.startswith("training.resume=")]
    return " ".join(["segexp-train", *map(shlex.quote, kept), shlex.quote(f"training.resume={run_dir}")])


def interrupted_inside(error: BaseException) -> bool:
    """Whether ``error`` is, or was raised while handling, a ``KeyboardInterrupt`` (Ctrl-C, or SIGTERM as
    the commands map it). A signal that lands inside TensorFlow's Python code can surface as another
    error (seen: ``TypeError: Invalid input to zip`` over ``SystemError`` over the interrupt, from a
    SIGTERM during ``model.predict``); the chain of causes still holds the interrupt."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, (KeyboardInterrupt, SystemExit)):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def log_interrupted(run_dir: Path, overrides: Sequence[str], error: BaseException) -> None:
    """Say what was saved when training stops early (Ctrl-C, SIGTERM, a crash) and how to continue."""
    interrupted = interrupted_inside(error)
    state = read_state(run_dir)
    if state is None:
        if interrupted:
            log.warning("interrupted during the first epoch: no checkpoint to resume from; run the command again")
        return
    what = "interrupted" if interrupted else f"failed ({type(error).__name__}: {error})"
    status = "KILLED" if interrupted else "FAILED"
    fix = "" if interrupted else " once the cause is fixed"
    log.warning(
        "%s: %d epoch(s) completed and checkpointed in %s; the MLflow run (if tracked) ends %s. Continue%s with:\n  %s",
        what,
        state["epoch"],
        run_dir / RESUME_DIR,
        status,
        fix,
        resume_command(overrides, run_dir),
    )


def follow_log(job_dir: Path, run_dir: Path) -> Path:
    """Also append this job's log to ``run_dir/train.log`` when resuming from another folder; returns ``run_dir``.

    Hydra gives every command a new folder and logs there; a resumed run trains in its original folder.
    """
    if Path(job_dir).resolve() != Path(run_dir).resolve():
        log.info("this command's folder is %s; the run continues in %s", job_dir, run_dir)
        logs = list(Path(job_dir).glob("*.log"))
        if logs:  # under Hydra: mirror its job log into the original folder
            handler = logging.FileHandler(run_dir / logs[0].name, mode="a")
            root = logging.getLogger()
            formatter = next((h.formatter for h in root.handlers if isinstance(h, logging.FileHandler)), None)
            handler.setFormatter(formatter or logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
            root.addHandler(handler)
    return Path(run_dir)
