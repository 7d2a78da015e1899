"""Fold ensembles: the models of a cross-validation (``segexp-cv``) as one predictor.

A finished cross-validation leaves, in its folder (the sweep folder), ``cv.json``::

    {"kind": "segexp-cv", "folds": 5, "seed": 0, "sweep_dir": "/abs/cv/folder",
     "parent_run_id": "<32 hex>" | null, "tracking_uri": "sqlite:///..." | null,
     "fold_runs": [{"fold": 0, "run_dir": "/abs/cv/folder/fold_0", "run_id": "<32 hex>" | null,
                    "status": "finished" | "failed" | "missing", "valid_cases": [...], "error": null}, ...],
     "postprocessing": "postprocessing.json" | null}

Each fold's ``run_dir`` is an ordinary training run folder; ``postprocessing`` (a file of that folder,
:mod:`segexp.evaluation.postprocess`) holds the rules chosen on the cross-validated predictions, which
replace each fold's own. The CV's MLflow parent run is tagged ``segexp.kind = cv`` and holds the artifacts
``cv/cv.json`` and ``postprocessing.json``.

The ensemble's prediction is the mean of its members' probabilities, as nnU-Net's fold ensemble
(``nnUNetv2_predict -f 0 1 2 3 4`` averages the folds' softmax probabilities)::

    p(x) = (1/F) Σ_f p_f(x)

:class:`Ensemble` offers what segexp's prediction code uses of a Keras model (``input_shape``,
``output_shape``, ``predict_on_batch``), so batching, sliding windows and flip TTA
(:func:`segexp.evaluation.inference.predict_batches`) apply to it unchanged: with TTA each member's
prediction of each flipped batch is averaged first, and the flips after, which is the same mean of the
``4 F`` predictions as TTA per member followed by the fold mean.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from segexp.core.errors import EvaluationError, RunError
from segexp.evaluation.postprocess import FILE_NAME as POSTPROCESSING_FILE
from segexp.tracking.runs import RUN_ID, ModelSource, TrainedRun, open_run
from segexp.tracking.store import mlflow_client, retry_locked
from segexp.tracking.sweep import CV_KIND as CV_KIND_VALUE
from segexp.tracking.sweep import KIND_TAG

log = logging.getLogger(__name__)

#: The file a finished cross-validation leaves in its folder, and the ``kind`` it names.
CV_FILE, CV_FILE_KIND = "cv.json", "segexp-cv"
#: The tag of a cross-validation's MLflow parent run, and its artifact copy of :data:`CV_FILE`.
CV_ARTIFACT = "cv/cv.json"
FINISHED = "finished"


class Ensemble:
    """Several models as one: ``predict_on_batch(x) = (1/F) Σ_f model_f.predict_on_batch(x)`` in float32
    (summed in float64). ``names``: one per model (``fold 0``, ...), for messages.

    Every model must take the same input shape and give the same output shape; otherwise
    :class:`EvaluationError` naming each model's shapes."""

    def __init__(self, models: Sequence[Any], names: Sequence[str]) -> None:
        if not models or len(models) != len(names):
            raise EvaluationError(f"an ensemble needs one name per model and at least one model, got {list(names)}")
        shapes = [(tuple(m.input_shape), tuple(m.output_shape)) for m in models]
        if len(set(shapes)) > 1:
            listed = "; ".join(f"{n}: input {i}, output {o}" for n, (i, o) in zip(names, shapes))
            raise EvaluationError(
                f"the ensemble's models differ in shape ({listed}); "
                "its folds must be trained with one model.image_height/image_width/image_channels and classes"
            )
        dtypes = {str(m.inputs[0].dtype) for m in models if getattr(m, "inputs", None)}
        if len(dtypes) > 1:
            raise EvaluationError(
                f"the ensemble's models read different stored images ({sorted(dtypes)}); its folds must be trained "
                "on slices prepared alike (dataset.json's storage)"
            )
        self.models, self.names = list(models), list(names)
        self.input_shape, self.output_shape = shapes[0]
        #: the first model's Keras inputs (their dtype: the stored images it reads), where it has them
        self.inputs = getattr(models[0], "inputs", None)

    def predict_on_batch(self, x: np.ndarray) -> np.ndarray:
        """The mean of the members' probabilities for the batch ``x``: ``(1/F) Σ_f p_f``, float32."""
        total = np.asarray(self.models[0].predict_on_batch(x), np.float64)
        for model in self.models[1:]:
            total += np.asarray(model.predict_on_batch(x), np.float64)
        return (total / len(self.models)).astype(np.float32)


@dataclass(frozen=True)
class Fold:
    """One finished fold of a cross-validation: its index and its training run."""

    fold: int
    run: TrainedRun

    @property
    def name(self) -> str:
        return f"fold {self.fold}"


@dataclass
class EnsembleSource:
    """The finished folds of a cross-validation as one :class:`~segexp.tracking.runs.ModelSource`.

    ``config``: the first fold's training config (class names, dataset, window, case_pattern, input size);
    ``postprocessing_file``: the CV's ``postprocessing.json`` (None: the CV chose none); ``run_id``,
    ``tracking_uri``: the CV's MLflow parent run (evaluations are logged there); ``cv_dir``: the CV folder
    (None when opened from MLflow without it)."""

    config: DictConfig
    folds: list[Fold]
    postprocessing_file: Path | None = None
    run_id: str | None = None
    tracking_uri: str | None = None
    cv_dir: Path | None = None

    @property
    def class_names(self) -> list[str]:
        return list(self.config.dataset.class_names)

    def describe(self) -> str:
        """``fold 0 (<run folder or run id>), fold 2 (...)``."""
        return ", ".join(f"{f.name} ({f.run.run_dir or f.run.run_id})" for f in self.folds)

    def load_model(self, precision: str = "fp32") -> Ensemble:
        """The :class:`Ensemble` of every fold's best model, each computing in ``precision``."""
        log.info("fold ensemble of %d folds: %s", len(self.folds), self.describe())
        return Ensemble([f.run.load_model(precision) for f in self.folds], [f.name for f in self.folds])

    def artifact_file(self, name: str) -> Path | None:
        """The CV's ``postprocessing.json`` for that name (None when it chose none); no other file."""
        return self.postprocessing_file if name == POSTPROCESSING_FILE else None


def open_source(spec: str, tracking_uri: str | None = None) -> ModelSource:
    """What ``run=<spec>`` names: a fold ensemble (:func:`open_ensemble`), else one training run
    (:func:`segexp.tracking.runs.open_run`)."""
    ensemble = open_ensemble(spec, tracking_uri)
    return ensemble if ensemble is not None else open_run(spec, tracking_uri)


def open_ensemble(spec: str, tracking_uri: str | None = None) -> EnsembleSource | None:
    """The fold ensemble of a CV folder (``cv.json`` of kind segexp-cv) or of a CV's MLflow parent run (a run id
    tagged ``segexp.kind = cv``); None when ``spec`` names neither.

    Folds not finished are left out with a warning naming them; none finished is a :class:`RunError`, as is a
    folder with ``fold_*/`` subfolders but no ``cv.json`` (a cross-validation that has not finished)."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return _from_folder(path.resolve(), tracking_uri)
    if RUN_ID.match(spec):
        return _from_parent_run(spec, tracking_uri)
    return None


def read_cv_file(path: Path) -> dict[str, Any] | None:
    """The content of a ``cv.json``; None when it is not of kind segexp-cv. A file that does not read, or lacks
    ``fold_runs`` entries with ``fold``, ``status`` and ``run_dir`` or ``run_id``, is a :class:`RunError`."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise RunError(f"{path}: cannot read the cross-validation record: {err}") from err
    if not isinstance(data, dict) or data.get("kind") != CV_FILE_KIND:
        return None
    runs = data.get("fold_runs")
    if not isinstance(runs, list) or not runs:
        raise RunError(f"{path}: fold_runs must be a non-empty list of folds, got {runs!r}")
    for i, entry in enumerate(runs):
        if not isinstance(entry, dict) or "fold" not in entry or "status" not in entry:
            raise RunError(f"{path}: fold_runs[{i}] needs the keys fold and status, got {entry!r}")
        if not entry.get("run_dir") and not entry.get("run_id"):
            raise RunError(f"{path}: fold_runs[{i}] (fold {entry['fold']}) names neither run_dir nor run_id")
    return data


def _from_folder(folder: Path, tracking_uri: str | None) -> EnsembleSource | None:
    record = folder / CV_FILE
    if not record.is_file():
        started = sorted(p.name for p in folder.glob("fold_*") if p.is_dir())
        if started:
            raise RunError(
                f"{folder}: the cross-validation has not finished (no {CV_FILE}; folders {', '.join(started)}); "
                f"resume it with `segexp-cv resume={folder}`, or name one fold's run folder, e.g. "
                f"run={folder / started[0]}"
            )
        return None
    data = read_cv_file(record)
    if data is None:
        return None
    uri = data.get("tracking_uri") or tracking_uri
    post = data.get("postprocessing")
    post_file = folder / str(post) if post else None
    if post_file is not None and not post_file.is_file():
        raise RunError(f"{record}: postprocessing names {post!r}, but {post_file} does not exist")
    folds = _open_folds(data, record, uri, folder)
    return _source(folds, post_file, data.get("parent_run_id"), uri, folder)


def _from_parent_run(run_id: str, tracking_uri: str | None) -> EnsembleSource | None:
    """The ensemble of MLflow run ``run_id`` when it is a CV parent (tag ``segexp.kind = cv``), else None
    (also when the store does not give the run: :func:`open_run` then names the problem)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    uri = tracking_uri or mlflow.get_tracking_uri()
    try:
        run = retry_locked(mlflow_client(uri).get_run, run_id)
    except MlflowException:
        return None
    if run.data.tags.get(KIND_TAG) != CV_KIND_VALUE:
        return None
    try:
        record = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=CV_ARTIFACT, tracking_uri=uri))
    except MlflowException as err:
        raise RunError(
            f"MLflow run {run_id} at {uri} is a cross-validation but {CV_ARTIFACT} cannot be read: "
            f"{str(err).splitlines()[0]}"
        ) from err
    data = read_cv_file(record)
    if data is None:
        raise RunError(f"MLflow run {run_id}: its {CV_ARTIFACT} is not of kind {CV_FILE_KIND}")
    post_file = None
    if data.get("postprocessing"):
        try:
            post_file = Path(
                mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=POSTPROCESSING_FILE, tracking_uri=uri)
            )
        except MlflowException as err:
            raise RunError(
                f"MLflow run {run_id}: {CV_ARTIFACT} names postprocessing, but its artifact {POSTPROCESSING_FILE} "
                f"cannot be read: {str(err).splitlines()[0]}"
            ) from err
    sweep = data.get("sweep_dir")
    cv_dir = Path(sweep) if sweep and Path(sweep).is_dir() else None
    return _source(_open_folds(data, record, uri, cv_dir), post_file, run_id, uri, cv_dir)


def _open_folds(data: dict[str, Any], record: Path, uri: str | None, cv_dir: Path | None) -> list[Fold]:
    """The finished folds of ``cv.json`` content ``data``, each opened by its folder when it exists here (also
    when the CV folder moved: ``<cv_dir>/<folder name>``), else by its MLflow run id."""
    finished, left_out = [], []
    for entry in data["fold_runs"]:
        if entry["status"] != FINISHED:
            error = f": {entry['error']}" if entry.get("error") else ""
            left_out.append(f"fold {entry['fold']} ({entry['status']}{error})")
            continue
        run_dir = _local_run_dir(entry.get("run_dir"), cv_dir)
        spec = str(run_dir) if run_dir is not None else entry.get("run_id")
        if spec is None:
            raise RunError(f"{record}: fold {entry['fold']} is finished, but {entry.get('run_dir')} does not exist")
        try:
            finished.append(Fold(int(entry["fold"]), open_run(spec, uri)))
        except RunError as err:
            raise RunError(f"{record}: fold {entry['fold']}: {err}") from err
    if left_out:
        log.warning("left out of the fold ensemble (not finished): %s", "; ".join(left_out))
    if not finished:
        raise RunError(f"{record}: no fold has finished ({'; '.join(left_out)}); there is no ensemble to predict with")
    return finished


def _local_run_dir(run_dir: str | None, cv_dir: Path | None) -> Path | None:
    """``run_dir`` as a folder on this machine: itself, relative to the CV folder, or its name in the CV folder."""
    if not run_dir:
        return None
    candidates = [Path(run_dir)]
    if cv_dir is not None:
        candidates += [cv_dir / run_dir, cv_dir / Path(run_dir).name]
    return next((p for p in candidates if p.is_dir()), None)


def _source(
    folds: list[Fold], post_file: Path | None, run_id: str | None, uri: str | None, cv_dir: Path | None
) -> EnsembleSource:
    """The :class:`EnsembleSource` of ``folds``; folds trained for other classes are a :class:`RunError`."""
    names = {f.name: f.run.class_names for f in folds}
    if len({tuple(n) for n in names.values()}) > 1:
        listed = "; ".join(f"{fold}: {classes}" for fold, classes in names.items())
        raise RunError(f"the folds of {cv_dir or run_id} were trained for different classes ({listed})")
    return EnsembleSource(folds[0].run.config, folds, post_file, run_id, uri, cv_dir)


__all__ = [
    "CV_FILE",
    "CV_FILE_KIND",
    "Ensemble",
    "EnsembleSource",
    "Fold",
    "open_ensemble",
    "open_source",
    "read_cv_file",
]
