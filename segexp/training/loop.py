"""One training run: validate the config, build data, model and callbacks, fit, evaluate, track.

:func:`train_run` is what ``segexp-train`` (:mod:`segexp.cli.train`) calls with the composed config and the
run folder (its :class:`RunOutcome`: the objective and what a multi-objective search may weigh against it);
tests and tools call :func:`train`, which returns the objective alone.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import keras
import numpy as np
from omegaconf import DictConfig

from segexp.config.schema import (
    REPO_DIR,
    CrossValidationConfig,
    DatasetConfig,
    OutageConfig,
    PathsConfig,
    TrackingConfig,
    TrainingConfig,
    check_train_config,
    to_dict,
)
from segexp.core.errors import ConfigError, raise_config_problems
from segexp.core.files import check_output_locations
from segexp.data.io.intensity import UINT8_ENCODING, InputEncoding
from segexp.data.prepare.check import log_fingerprint
from segexp.data.runtime.augment import Augmenter
from segexp.data.runtime.dataset import SliceDataset, open_dataset
from segexp.data.runtime.loader import SliceLoader
from segexp.data.runtime.sampling import EpochSampler, cached_class_presence
from segexp.evaluation.crossval import save_held_out, write_fold_record
from segexp.evaluation.postprocess import FILE_NAME as POSTPROCESSING_FILE
from segexp.evaluation.postprocess import Postprocessing
from segexp.evaluation.postprocess import describe as describe_postprocessing
from segexp.evaluation.reports import choose_postprocessing, score_and_log
from segexp.models import build_model, check_model_config
from segexp.models.losses import build_loss, check_loss_config
from segexp.models.metrics import build_metrics
from segexp.models.precision import apply_precision, resolve_precision
from segexp.models.registry import ModelParams
from segexp.models.saving import load_for_inference
from segexp.models.xla import xla_for_training_only
from segexp.tracking.runs import (
    record_mlflow_run,
)
from segexp.tracking.store import OutagePolicy, check_server, http_settings
from segexp.tracking.study import PRUNED_TAG, STUDY_TAG, TRIAL_TAG, run_links
from segexp.tracking.tracker import (
    Tracker,
    flatten_config,
    git_commit,
    run_name_from_overrides,
    tracked_run,
)
from segexp.tracking.view import metric_column, run_columns
from segexp.training import warm
from segexp.training.callbacks import BestCheckpoint, RunParts, build_run_callbacks
from segexp.training.checkpoint import ResumeCheckpoint, history_columns, with_resume_checkpoint
from segexp.training.curves import plot_curves
from segexp.training.devices import (
    data_parallel,
    replica_count,
    strategy_scope,
    synchronize_batch_norm,
)
from segexp.training.fit_loop import fit_epochs
from segexp.training.interrupts import interrupted_inside, log_interrupted
from segexp.training.pruning import TrialLink, open_trial, pruned_epoch
from segexp.training.reopen import reopen_run
from segexp.training.resume import Resume, follow_log, prepare_resume
from segexp.training.run_folder import check_run_dir_free, resume_requested, train_output_locations

log = logging.getLogger(__name__)

#: What a run measures besides its objective ``best/<training.monitor>`` (:meth:`RunOutcome.values`): the names an
#: Optuna search may list in ``hydra.sweeper.objectives``.
OUTCOME_VALUES = ("wall_time_s", "num_params", "epochs")


@dataclass(frozen=True)
class RunOutcome:
    """How a run ended: its objective (the best ``monitor`` value), its cost, and the epoch an Optuna pruner
    stopped it after (None: not pruned)."""

    monitor: str  # training.monitor
    objective: float  # its best value (NaN: never finite)
    wall_time_s: float  # the whole run: data, model, fit, evaluation
    num_params: int  # the network's parameter count
    epochs: int  # epochs trained (a resumed run's earlier ones included)
    pruned_at_epoch: int | None = None

    def values(self) -> dict[str, float]:
        """``{name: value}``: ``best/<monitor>`` and every name of :data:`OUTCOME_VALUES`."""
        return {
            f"best/{self.monitor}": self.objective,
            "wall_time_s": self.wall_time_s,
            "num_params": float(self.num_params),
            "epochs": float(self.epochs),
        }

    def result(self) -> dict[str, float | int | None]:
        """What an Optuna sweep job returns to the sweeper: :meth:`values` and ``pruned_at_epoch``."""
        return {**self.values(), PRUNED_TAG: self.pruned_at_epoch}


def validate_run_config(cfg: DictConfig) -> DictConfig:
    """The composed training config, typed: the schema's rules, the network's and the loss's own, in one
    :class:`ConfigError`."""
    typed, problems = check_train_config(cfg)
    model, model_problems = check_model_config(typed.model)
    problems += check_loss_config(typed.loss, model.num_classes if model is not None else None)
    raise_config_problems(model_problems + problems)
    typed.model = model
    return typed


def build_sampler(t: TrainingConfig, dataset: SliceDataset, seed: int, cache_dir: Path) -> EpochSampler:
    """The training samples of each epoch: ``training.steps_per_epoch`` draws, foreground oversampled.

    Class presence per training slice is read only when oversampling needs it, and cached
    under ``cache_dir`` (``<paths.output_dir>/cache``, keyed by the mask files), so it is read once per dataset.
    """
    pairs = dataset.pairs["train"]
    presence = None
    if t.steps_per_epoch is not None and t.foreground_fraction > 0:
        presence = cached_class_presence(pairs, dataset.decoder, cache_dir, workers=max(1, t.loader.workers))
        counts = presence.sum(axis=0)
        log.info(
            "slices holding each class (train): %s",
            ", ".join(f"{name} {int(n)}" for name, n in zip(dataset.class_names[1:], counts[1:])),
        )
    return EpochSampler(
        len(pairs),
        t.batch_size,
        seed=seed,
        steps_per_epoch=t.steps_per_epoch,
        foreground_fraction=t.foreground_fraction,
        presence=presence,
    )


def build_loaders(
    m: ModelParams,
    t: TrainingConfig,
    dataset: SliceDataset,
    augmenter: Augmenter | None,
    *,
    seed: int,
    on_bad_file: str,
    cache_dir: Path,
) -> tuple[SliceLoader, SliceLoader]:
    """Training loader (sampled, augmented) and validation loader (one pass in file order, never augmented);
    ``on_bad_file`` is ``dataset.on_bad_file``, ``cache_dir`` the class-presence cache (:func:`build_sampler`)."""

    def loader(split: str, augmenter: Augmenter | None, sampler: EpochSampler | None) -> SliceLoader:
        return SliceLoader(
            dataset.pairs[split],
            dataset.decoder,
            image_size=(m.image_height, m.image_width),
            channels=m.image_channels,
            batch_size=t.batch_size,
            augmenter=augmenter,
            sampler=sampler,
            seed=seed,
            loader=t.loader,
            on_bad_file=on_bad_file,
            dtype=dataset.encoding.dtype,
        )

    train = loader("train", augmenter, build_sampler(t, dataset, seed, cache_dir))
    valid = loader("valid", None, None)
    return train, valid


def check_stored_channels(m: ModelParams, dataset: SliceDataset) -> None:
    """``model.image_channels`` must be the stored channels where ``dataset.json`` says (stacked windows):
    :class:`ConfigError` naming the key and the value to set."""
    if dataset.channels is not None and dataset.channels != m.image_channels:
        raise ConfigError(
            f"model.image_channels: the slices of {dataset.root} carry {dataset.channels} channel(s) "
            f"(dataset.json's storage, e.g. stacked windows), the model takes {m.image_channels}; "
            f"set model.image_channels={dataset.channels}"
        )


def build_schedule(t: TrainingConfig, total_steps: int) -> keras.optimizers.schedules.LearningRateSchedule | None:
    """``training.schedule`` with ``decay_steps = total_steps`` (epochs x steps per epoch), or None."""
    if t.schedule is None:
        return None
    return hydra.utils.instantiate(t.schedule, decay_steps=total_steps, _convert_="all")


def build_optimizer(t: TrainingConfig, total_steps: int) -> keras.optimizers.Optimizer:
    """``training.optimizer`` whose learning rate follows ``training.schedule`` (or stays constant)."""
    schedule = build_schedule(t, total_steps)
    if schedule is None:
        return hydra.utils.instantiate(t.optimizer, _convert_="all")
    return hydra.utils.instantiate(t.optimizer, learning_rate=schedule, _convert_="all")


def build_network(m: ModelParams, precision: str = "fp32", encoding: InputEncoding = UINT8_ENCODING) -> keras.Model:
    """The network of model section ``m``, uncompiled, in ``precision`` (its weights drawn from the global seed),
    reading stored images of ``encoding`` (the dataset's, :func:`~segexp.data.runtime.dataset.dataset_storage`)."""
    return apply_precision(build_model(input_encoding=encoding, **to_dict(m, resolve=False)), precision)


def compile_model(
    m: ModelParams,
    t: TrainingConfig,
    class_names: Sequence[str],
    steps_per_epoch: int,
    precision: str = "fp32",
    *,
    loss: Mapping[str, Any],
    encoding: InputEncoding = UINT8_ENCODING,
) -> keras.Model:
    """Build the network of ``m`` in ``precision`` (fp32, bf16, fp16: resolved), reading images stored as
    ``encoding``, and compile it with ``t``'s optimizer (and schedule), the ``loss`` entry (the config's ``loss``
    group) and foreground metrics. fp16 gets Keras' loss scaling in ``compile``."""
    model = build_network(m, precision, encoding)
    model.compile(
        optimizer=build_optimizer(t, t.epochs * steps_per_epoch),
        loss=build_loss(loss, m.num_classes),
        metrics=build_metrics(class_names, m.num_classes),
        jit_compile=t.jit_compile,
    )
    return xla_for_training_only(model)


def validation_epochs(t: TrainingConfig) -> list[int]:
    """Epochs (from 1) after which the validation split is scored: every n-th and the last."""
    n = t.validation.every_n_epochs
    return [e for e in range(1, t.epochs + 1) if e % n == 0 or e == t.epochs]


def choose_postprocessing_for_run(
    m: ModelParams,
    t: TrainingConfig,
    d: DatasetConfig,
    model: keras.Model,
    dataset: SliceDataset,
    run_dir: Path,
    tracker: Tracker,
) -> Postprocessing | None:
    """With ``training.postprocess=auto``: the connected-component rules that raise the validation Dice of the
    best model (``postprocessing.json`` in the run folder and the run; tags ``postprocess.<class>``)."""
    if t.postprocess == "none" or not dataset.pairs.get("valid"):
        return None
    chosen = choose_postprocessing(model, dataset, m, d, batch_size=t.batch_size)
    path = chosen.save(run_dir / POSTPROCESSING_FILE)
    tracker.log_artifact(path)
    tracker.set_tags({f"postprocess.{name}": rule.describe() for name, rule in chosen.rules.items()})
    log.info("postprocessing chosen on the valid split:\n%s", describe_postprocessing(chosen))
    return chosen


def evaluate_test_split(
    m: ModelParams,
    t: TrainingConfig,
    d: DatasetConfig,
    model: keras.Model,
    dataset: SliceDataset,
    out_dir: Path,
    tracker: Tracker,
    postprocessing: Postprocessing | None = None,
) -> None:
    """Score the best model on the test split, after ``postprocessing`` (reports in ``out_dir``, metrics
    ``test/...`` in the run)."""
    if not dataset.pairs.get("test"):
        log.info("no test split in %s: skipping the evaluation after training", dataset.root)
        return
    summary = score_and_log(
        model,
        dataset,
        "test",
        m,
        d,
        out_dir,
        tracker,
        batch_size=t.batch_size,
        postprocessing=postprocessing,
        nsd_tolerance_mm=t.nsd_tolerance_mm,
    )
    log.info(
        "test foreground mean Dice %s (%d cases); reports in %s",
        summary["mean"]["foreground_mean"]["dice"],
        summary["num_cases"],
        out_dir,
    )


def set_threads(intra_op: int | None, inter_op: int | None) -> None:
    """Limit TensorFlow's CPU thread pools (so parallel sweep jobs do not oversubscribe the cores)."""
    if (intra_op is None and inter_op is None) or keras.backend.backend() != "tensorflow":
        return
    import tensorflow as tf

    threading = tf.config.threading
    try:  # setting a pool again to its value is no change (the plan's step timing sets them first)
        if intra_op is not None and threading.get_intra_op_parallelism_threads() != intra_op:
            threading.set_intra_op_parallelism_threads(intra_op)
        if inter_op is not None and threading.get_inter_op_parallelism_threads() != inter_op:
            threading.set_inter_op_parallelism_threads(inter_op)
    except RuntimeError as err:  # TensorFlow was already initialised in this process (an earlier job)
        log.warning("training.threads not applied: %s", err)


def _objective(history: dict[str, list[float]], monitor: str, mode: str) -> float:
    values = [v for v in history.get(monitor, []) if np.isfinite(v)]
    if not values:
        return float("nan")
    return float(max(values) if mode == "max" else min(values))


def outage_policy(o: OutageConfig) -> OutagePolicy:
    """``tracking.outage`` as an :class:`~segexp.tracking.outbox.OutagePolicy`."""
    return OutagePolicy(
        connect_timeout_s=o.connect_timeout_s,
        request_timeout_s=o.request_timeout_s,
        http_retries=o.http_retries,
        max_wait_s=o.max_wait_s,
    )


def prepare_run_folder(
    paths: PathsConfig, tracking: TrackingConfig, resume: bool, resolved: dict, run_dir: Path
) -> tuple[Resume | None, Path]:
    """Every check that can fail before training, in order; returns the resume point (or None) and the run folder.

    A run folder holding another run's outputs (unless ``resume``: the config continues a run), unwritable or
    full output folders and an unreachable tracking server are refused here, before the MLflow run starts.
    """
    start = prepare_resume(resolved, Path(run_dir))  # None: a fresh run; else continue in start.run_dir
    check_run_dir_free(Path(run_dir), resume)  # a resume (or SLURM requeue) may reuse it
    run_dir = follow_log(Path(run_dir), start.run_dir) if start else Path(run_dir)
    check_output_locations(train_output_locations(paths, tracking, run_dir), paths.min_free_mb)
    if tracking.enabled:
        check_server(tracking.uri, outage_policy(tracking.outage).connect_timeout_s)
    run_dir.mkdir(parents=True, exist_ok=True)
    return start, run_dir


def seed_and_threads(t: TrainingConfig, seed: int) -> None:
    """TensorFlow thread pools, the global ``seed`` and (optionally) op determinism, before any op runs."""
    set_threads(t.threads.intra_op, t.threads.inter_op)
    keras.utils.set_random_seed(seed)
    if t.deterministic and keras.backend.backend() == "tensorflow":
        import tensorflow as tf  # deferred: TensorFlow-only, the backend may be another

        tf.config.experimental.enable_op_determinism()


def model_for_run(
    m: ModelParams,
    t: TrainingConfig,
    start: Resume | None,
    dataset: SliceDataset,
    steps_per_epoch: int,
    precision: str,
    *,
    loss: Mapping[str, Any],
    encoding: InputEncoding = UINT8_ENCODING,
) -> keras.Model:
    """A new compiled model (the plan's timed one, reset, when compiled alike: :mod:`segexp.training.warm`),
    or the resumed one with its schedule rebuilt for ``training.epochs``, in ``precision``; ``loss`` is the
    config's ``loss`` entry, ``encoding`` the dataset's stored images (the model's input layer)."""
    if start is None:
        total = t.epochs * steps_per_epoch
        signature = warm.compile_signature(m, t, dataset.class_names, total, precision, loss=loss, encoding=encoding)
        model = warm.take(signature, lambda: build_network(m, precision, encoding))
        if model is None:
            model = compile_model(m, t, dataset.class_names, steps_per_epoch, precision, loss=loss, encoding=encoding)
    else:
        warm.release()  # a resumed run continues its checkpoint, not the plan's timed model
        model = apply_precision(start.load_model(), precision)  # checkpoints are saved in float32 policies
        schedule = build_schedule(t, t.epochs * steps_per_epoch)
        if schedule is not None:  # training.epochs may have changed: the schedule spans the new length
            model.optimizer.learning_rate = schedule
    log.info("model %s: %s parameters, %s compute", m.name, f"{model.count_params():,}", precision)
    return model


def fit(
    t: TrainingConfig,
    model: keras.Model,
    loaders: tuple[SliceLoader, SliceLoader],
    callbacks: list,
    start: Resume | None,
    one_device: bool = True,
) -> dict[str, list[float]]:
    """The run's epochs (from the resume point); the history of every epoch of the run.

    On one device segexp's own epoch loop (:func:`segexp.training.fit_loop.fit_epochs`, ~1.2x
    the steps per second of ``model.fit`` on CPU); under a ``MirroredStrategy``
    (``one_device=False``) ``model.fit``, which shards each batch over the replicas.
    """
    train_loader, valid_loader = loaders
    if start is not None:  # epoch e reads the same seeded sample order as in an uninterrupted run
        train_loader.set_epoch(start.epoch)
        valid_loader.set_epoch(start.epoch)
    first, final = (start.epoch, start.final_epoch(t.epochs)) if start else (0, t.epochs)
    if one_device:
        fit_epochs(
            model,
            train_loader,
            valid_loader,
            epochs=final,
            initial_epoch=first,
            validation_epochs=validation_epochs(t),
            callbacks=callbacks,
            verbose=t.verbose,
        )
    else:
        model.fit(
            train_loader,
            validation_data=valid_loader,
            validation_freq=validation_epochs(t),
            callbacks=callbacks,
            shuffle=False,
            epochs=final,
            initial_epoch=first,
            verbose=t.verbose,
        )
    checkpoint = next(c for c in callbacks if isinstance(c, ResumeCheckpoint))
    return history_columns(checkpoint.history)  # resumed epochs included


def keep_best_model(callbacks: Sequence[keras.callbacks.Callback]) -> None:
    """After an interruption, the best model so far on disk (BestCheckpoint keeps it in memory between
    checkpoints; a resumed run puts back the committed one). A failure here is logged, never raised
    over the interruption."""
    for callback in callbacks:
        if isinstance(callback, BestCheckpoint):
            try:
                callback.flush()
            except Exception as err:  # noqa: BLE001 - the interruption is the error to report
                log.warning("best model not written after the interruption: %s", err)


def finish_run(
    m: ModelParams,
    t: TrainingConfig,
    d: DatasetConfig,
    log_model: bool,
    model: keras.Model,
    history: dict[str, list[float]],
    dataset: SliceDataset,
    run_dir: Path,
    tracker: Tracker,
    precision: str,
    cv: CrossValidationConfig | None = None,
    pruned_at_epoch: int | None = None,
) -> float:
    """After the last epoch: curves, the best model (logged, evaluated on the test split; a cross-validation fold
    scores and keeps its validation cases instead, then marks itself finished); returns the objective.

    A run an Optuna pruner stopped (``pruned_at_epoch``) keeps its curves and best checkpoint and logs its
    objective so far, but logs no model, chooses no postprocessing and is not evaluated: a pruned trial is one the
    search gave up on."""
    plot_curves(history, run_dir / "curves.png")
    tracker.log_artifact(run_dir / "curves.png")
    objective = _objective(history, t.monitor, t.monitor_mode)
    if pruned_at_epoch is None:
        best_path = run_dir / "checkpoints" / "best.keras"
        best = load_for_inference(best_path, precision) if best_path.exists() else model
        if log_model:
            tracker.log_keras_model(best)
        if cv is not None and cv.folds is not None:
            score_held_out_cases(m, t, d, best, dataset, run_dir, tracker)
        else:
            postprocessing = choose_postprocessing_for_run(m, t, d, best, dataset, run_dir, tracker)
            if t.evaluate_after:
                evaluate_test_split(m, t, d, best, dataset, run_dir / "evaluation", tracker, postprocessing)
    else:
        log.info("pruned after epoch %d: no model logged, no postprocessing, no evaluation", pruned_at_epoch)
    tracker.log_metrics({f"best/{t.monitor}": objective}, step=len(history.get("loss", [])))
    if pruned_at_epoch is None and cv is not None and cv.folds is not None and cv.fold is not None:
        write_fold_record(run_dir, cv.fold, cv.folds, dataset.cases("valid"), objective)  # a finished fold: last
    return objective


def score_held_out_cases(
    m: ModelParams,
    t: TrainingConfig,
    d: DatasetConfig,
    model: keras.Model,
    dataset: SliceDataset,
    run_dir: Path,
    tracker: Tracker,
) -> None:
    """A cross-validation fold's end: score its validation cases (``valid/...`` metrics, ``evaluation/valid/``
    reports) and keep their labels for the CV summary (:func:`segexp.evaluation.crossval.save_held_out`). The
    test split and the postprocessing are left to the whole CV (its fold ensemble and pooled cases)."""
    summary = score_and_log(
        model,
        dataset,
        "valid",
        m,
        d,
        run_dir / "evaluation",
        tracker,
        batch_size=t.batch_size,
        nsd_tolerance_mm=t.nsd_tolerance_mm,
        on_case=lambda case, truth, pred, spacing: save_held_out(run_dir, case, truth, pred, spacing),
    )
    log.info(
        "held-out foreground mean Dice %s (%d cases, kept for the cross-validation summary)",
        summary["mean"]["foreground_mean"]["dice"],
        summary["num_cases"],
    )


def train(
    cfg: DictConfig,
    run_dir: Path,
    overrides: Sequence[str] = (),
    parent_run_id: str | None = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    extra_params: Mapping[str, str] | None = None,
    run_name: str | None = None,
) -> float:
    """:func:`train_run`'s objective: the best ``training.monitor`` value."""
    return train_run(cfg, run_dir, overrides, parent_run_id, callbacks, extra_params, run_name).objective


def train_run(
    cfg: DictConfig,
    run_dir: Path,
    overrides: Sequence[str] = (),
    parent_run_id: str | None = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    extra_params: Mapping[str, str] | None = None,
    run_name: str | None = None,
) -> RunOutcome:
    """Validate ``cfg``, train, log everything to MLflow; return how the run ended (:class:`RunOutcome`).

    The MLflow run's name: ``tracking.run_name``, else ``run_name`` (a sweep job: the overrides that vary),
    else the overrides (``paths.*``, ``hydra.*`` left out), else ``<model>-<dataset>``; ``overrides`` are
    always the ``overrides`` tag.

    ``callbacks`` (for tools and benchmarks) run after segexp's own, so the epoch clock does not count them.
    ``extra_params`` (the plan's ``plan.*``) are logged with the config; the run folder's
    ``plan.json`` and ``plan.yaml``, when present, become artifacts.

    A job of segexp's Optuna sweeper (``optuna.trial`` set) reports every validated epoch to its trial and may be
    pruned (:mod:`segexp.training.pruning`): the run then ends KILLED, tagged ``pruned_at_epoch``, unevaluated.

    All user mistakes (config keys, dataset folders, augmentation entries) raise before
    the MLflow run starts and before any training step (:func:`prepare_run_folder`).
    """
    began = time.perf_counter()
    cfg = validate_run_config(cfg)
    resolved = to_dict(cfg, resolve=True)
    start, run_dir = prepare_run_folder(cfg.paths, cfg.tracking, resume_requested(cfg), resolved, Path(run_dir))
    link = TrialLink.from_config(cfg.optuna)
    trial = open_trial(link) if link is not None else None  # a study the job cannot reach stops it here
    strategy = data_parallel(cfg.training.devices, cfg.training.batch_size)  # before TensorFlow initialises
    seed_and_threads(cfg.training, cfg.seed)
    dataset = open_dataset(cfg.dataset, cfg.model.num_classes)
    check_stored_channels(cfg.model, dataset)
    augmenter = Augmenter(cfg.augmentation.transforms) if cfg.augmentation.transforms else None
    loaders = build_loaders(
        cfg.model,
        cfg.training,
        dataset,
        augmenter,
        seed=cfg.seed,
        on_bad_file=cfg.dataset.on_bad_file,
        cache_dir=Path(cfg.paths.output_dir) / "cache",
    )
    log.info(
        "dataset %s: %d train slices (%d cases), %d validation slices (%d cases), %d classes",
        dataset.name,
        len(dataset.pairs["train"]),
        len(dataset.cases("train")),
        len(dataset.pairs["valid"]),
        len(dataset.cases("valid")),
        len(dataset.class_names),
    )
    precision = resolve_precision(cfg.training.precision)
    with strategy_scope(strategy):  # weights, optimizer and metric variables mirrored on every replica
        model = model_for_run(
            cfg.model,
            cfg.training,
            start,
            dataset,
            len(loaders[0]),
            precision,
            loss=cfg.loss,
            encoding=dataset.encoding,
        )
        if strategy is not None:  # batch statistics of the global batch, as on one device
            log.info("batch norm over all replicas: %d layers", synchronize_batch_norm(model))
    tracking = cfg.tracking
    tags = {
        "git_commit": git_commit(REPO_DIR),
        "keras_backend": keras.backend.backend(),
        "dataset": dataset.name,
        "model": cfg.model.name,
        "run_dir": str(run_dir),
        "precision": precision,
        "overrides": " ".join(overrides),
        **({TRIAL_TAG: str(link.number), STUDY_TAG: link.study} if link is not None else {}),
    }
    outage = outage_policy(cfg.tracking.outage)
    with (
        http_settings(outage),
        tracked_run(
            tracking.enabled,
            uri=tracking.uri,
            experiment=tracking.experiment,
            artifact_location=tracking.artifact_location,
            run_name=tracking.run_name
            or run_name
            or run_name_from_overrides(overrides, fallback=f"{cfg.model.name}-{dataset.name}"),
            tags=tags,
            description="segexp-train " + " ".join(overrides),
            parent_run_id=parent_run_id,
            resume_run_id=start.run_id if start else None,
            keep_status=False,
            run_dir=run_dir,
            outage=outage,
            system_metrics=tracking.system_metrics,
        ) as tracker,
    ):
        if tracker.run_id is not None:  # tracker.enabled
            record_mlflow_run(run_dir, tracker.run_id, tracking.uri)
        if trial is not None:  # the study leads to the run (optuna-dashboard shows the attributes)
            for key, value in run_links(tracker.run_id, run_dir).items():
                trial.set_user_attr(key, value)
        own = with_resume_checkpoint(
            build_run_callbacks(
                cfg.training,
                RunParts(
                    run_dir,
                    tracker,
                    dataset,
                    model=cfg.model,
                    data=cfg.dataset,
                    tracking=cfg.tracking,
                    callbacks=cfg.callbacks,
                    trial=trial,
                ),
            ),
            run_dir,
            resolved,
            tracker.run_id,
            start.state if start else None,
            cfg.training.checkpoint.every_n_epochs,
        )
        if start is None:
            tracker.log_params(flatten_config(resolved))
            tracker.log_params(
                {
                    "model.num_params": str(model.count_params()),
                    "training.precision_used": precision,
                    "training.replicas": str(replica_count(strategy)),
                }
            )
            log_fingerprint(dataset, cfg.model.image_channels, run_dir, tracker)  # dataset_fingerprint.json + params
            tracker.log_params(dict(extra_params or {}))
            for plan_file in ("plan.json", "plan.yaml"):
                if (run_dir / plan_file).is_file():
                    tracker.log_artifact(run_dir / plan_file)
        else:  # params stay as first logged; fill in what the interruption left out
            reopen_run(tracker, start, model, own, dataset.class_names)
        try:
            history = fit(cfg.training, model, loaders, [*own, *callbacks], start, one_device=strategy is None)
        except BaseException as err:  # Ctrl-C, SIGTERM, a crash: the last epoch's checkpoint is on disk
            keep_best_model(own)
            log_interrupted(run_dir, overrides, err)
            if not isinstance(err, (KeyboardInterrupt, SystemExit)) and interrupted_inside(err):
                raise KeyboardInterrupt(f"interrupted inside {type(err).__name__}") from err
            raise
        finally:
            tracker.log_artifact(run_dir / ".hydra", "config")
            tracker.log_artifact(run_dir / "history.csv")
            for log_file in run_dir.glob("*.log"):  # Hydra's job log, named after the job
                tracker.log_artifact(log_file)
        pruned = pruned_epoch(own)
        if pruned is not None:  # ends KILLED: stopped early on purpose, no result to rank
            tracker.set_tags({PRUNED_TAG: str(pruned)})
            tracker.final_status = "KILLED"
        view = tracker.add_to_view(
            run_columns(cfg.training.monitor, dataset.class_names), metric_column(f"best/{cfg.training.monitor}")
        )
        objective = finish_run(
            cfg.model,
            cfg.training,
            cfg.dataset,
            tracking.log_model,
            model,
            history,
            dataset,
            run_dir,
            tracker,
            precision,
            cfg.cv,
            pruned,
        )
    log.info("best %s = %.4f; run folder %s", cfg.training.monitor, objective, run_dir)
    if view is not None:
        log.info("compare the runs in the MLflow UI: %s", view)
    return RunOutcome(
        cfg.training.monitor,
        objective,
        wall_time_s=time.perf_counter() - began,
        num_params=int(model.count_params()),
        epochs=len(history.get("loss", [])),
        pruned_at_epoch=pruned,
    )
