"""A finished training run as later tools see it: its config, its best model, its MLflow run.

``segexp-evaluate`` and ``segexp-infer`` accept either a training run folder
(``outputs/train/runs/<date>/<time>``: ``.hydra/config.yaml``,
``checkpoints/best.keras``, ``mlflow_run.json``), an MLflow run id (config from
the run's ``config/config.yaml`` artifact, model from its logged model) or a registered model
(``models:/<name>@<alias>``, ``models:/<name>/<version>``: the run that version came from).

:class:`ModelSource` is what prediction and evaluation use of such a run; a fold ensemble of a
cross-validation (:class:`segexp.evaluation.ensemble.EnsembleSource`) offers the same surface.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast

from omegaconf import DictConfig, OmegaConf, open_dict

from segexp.config.schema import LOSS_DIR, to_dict
from segexp.core.errors import RunError
from segexp.core.files import atomic_write_text
from segexp.models.precision import apply_precision
from segexp.models.saving import load_for_inference, unsafe_model_message
from segexp.tracking.store import mlflow_client, retry_locked

MLFLOW_RUN_FILE = "mlflow_run.json"
BEST_MODEL = Path("checkpoints") / "best.keras"
#: An MLflow run id: 32 lower-case hex characters.
RUN_ID = re.compile(r"^[0-9a-f]{32}$")
#: A registered model version: ``models:/<name>@<alias>`` or ``models:/<name>/<version or latest>``.
REGISTERED = re.compile(r"^models:/(?P<name>[^@/]+)(?:@(?P<alias>[^@/]+)|/(?P<version>\d+|latest))$")


class ModelSource(Protocol):
    """Where a predictor comes from, as segexp-infer and segexp-evaluate use it: one :class:`TrainedRun`, or the
    fold ensemble of a cross-validation (``segexp.evaluation.ensemble.EnsembleSource``).

    ``config``: the training config (classes, dataset, window, case_pattern, input size); ``run_id``,
    ``tracking_uri``: the MLflow run evaluations are logged to (None: none); ``artifact_file(name)``: a file the
    training wrote beside its model (``postprocessing.json``), None when there is none."""

    config: DictConfig
    run_id: str | None
    tracking_uri: str | None

    @property
    def class_names(self) -> list[str]: ...

    def load_model(self, precision: str = "fp32") -> Any: ...

    def artifact_file(self, name: str) -> Path | None: ...


@dataclass
class TrainedRun:
    """Where a trained model comes from: ``run_dir`` and/or an MLflow ``run_id`` (with its store ``tracking_uri``)."""

    config: DictConfig
    run_dir: Path | None = None
    run_id: str | None = None
    tracking_uri: str | None = None

    @property
    def class_names(self) -> list[str]:
        return list(self.config.dataset.class_names)

    def load_model(self, precision: str = "fp32") -> Any:
        """The best model (``checkpoints/best.keras``, else the MLflow run's logged model), in safe mode,
        computing in ``precision`` (fp32, bf16 or fp16: resolved, see :mod:`segexp.models.precision`)."""
        if self.run_dir is not None and (self.run_dir / BEST_MODEL).is_file():
            return load_for_inference(self.run_dir / BEST_MODEL, precision)
        if self.run_id is None:
            raise RunError(f"{self.run_dir}: no {BEST_MODEL} and no MLflow run to load a model from")
        import mlflow
        import mlflow.keras

        mlflow.set_tracking_uri(self.tracking_uri)
        models = mlflow.search_logged_models(
            filter_string=f"source_run_id = '{self.run_id}'",
            output_format="list",
            experiment_ids=[mlflow.get_run(self.run_id).info.experiment_id],
        )
        if not models:
            raise RunError(f"MLflow run {self.run_id}: no logged model (was it trained with tracking.log_model=false?)")
        try:
            model = mlflow.keras.load_model(models[0].model_uri, load_model_kwargs={"safe_mode": True})
        except ValueError as err:
            raise RunError(unsafe_model_message(f"MLflow model {models[0].model_uri}", err)) from err
        return apply_precision(model, precision)

    def artifact_file(self, name: str) -> Path | None:
        """A file the training wrote at the top of its run folder (and logged as an MLflow artifact): the local
        copy, else the run's artifact downloaded; None when neither has it."""
        if self.run_dir is not None and (self.run_dir / name).is_file():
            return self.run_dir / name
        if self.run_id is None:
            return None
        import mlflow
        from mlflow.exceptions import MlflowException

        mlflow.set_tracking_uri(self.tracking_uri)
        try:
            if not any(f.path == name for f in mlflow.MlflowClient().list_artifacts(self.run_id)):
                return None
            return Path(mlflow.artifacts.download_artifacts(run_id=self.run_id, artifact_path=name))
        except MlflowException as err:
            raise RunError(
                f"MLflow run {self.run_id}: cannot read its artifact {name}: {str(err).splitlines()[0]}"
            ) from err


def run_dir_tag(run_id: str, tracking_uri: str) -> str | None:
    """The ``run_dir`` tag of MLflow run ``run_id`` at ``tracking_uri``: the folder it trained in (None: untagged).

    Raises :class:`RunError` naming the run and the store when MLflow does not give the run.
    """
    from mlflow.exceptions import MlflowException

    try:
        run = retry_locked(mlflow_client(tracking_uri).get_run, run_id)
    except MlflowException as err:
        raise RunError(f"MLflow run {run_id} at {tracking_uri}: {str(err).splitlines()[0]}") from err
    return run.data.tags.get("run_dir")


def record_mlflow_run(run_dir: Path, run_id: str, tracking_uri: str) -> None:
    """Remember in the run folder which MLflow run it belongs to (so evaluation can resume that run)."""

    atomic_write_text(run_dir / MLFLOW_RUN_FILE, json.dumps({"run_id": run_id, "tracking_uri": tracking_uri}, indent=2))


#: ``_target_`` of what ``training.reduce_lr`` / ``training.early_stopping`` built before the ``callbacks`` group.
OLD_CALLBACKS = {
    "reduce_lr": "segexp.training.callbacks.ReduceLROnPlateau",
    "early_stopping": "segexp.training.callbacks.EarlyStopping",
}


def upgrade_run_config(config: DictConfig) -> DictConfig:
    """The config of a run trained by an earlier segexp, in today's keys (so it validates and evaluates).

    ``training.mixed_precision`` (true: float16) became ``training.precision``; ``training.postprocess`` is new
    (a run from before chose no postprocessing, ``none``). ``training.reduce_lr`` / ``training.early_stopping``
    (``enabled: true``) and ``training.callbacks`` (the user's) became entries of the top-level ``callbacks``
    group, in that order (``{}``: a run from before had none). ``training.loss`` (a name, or the user's
    ``_target_`` mapping) and ``training.dice`` (the Dice term's keys) became the top-level ``loss`` entry: the
    name's ``conf/loss/<name>.yaml`` with the run's Dice keys, or the user's mapping as it was. The ``optuna``
    section and ``tracking.optuna_storage`` are new (null: no Optuna trial), and so is ``cv`` (null folds: no
    cross-validation).
    """
    training = config.get("training")
    if training is None:
        return config
    with open_dict(config):
        if "postprocess" not in training:
            training.postprocess = "none"
        tracking = config.get("tracking")
        if tracking is not None:  # keys added since; a run from before had none of them
            tracking.setdefault("system_metrics", False)
            tracking.setdefault("registered_model", None)
            tracking.setdefault("optuna_storage", None)
        if "optuna" not in config:  # a run from before was no trial of segexp's Optuna sweeper
            config.optuna = {"study": None, "storage": None, "trial": None}
        if "cv" not in config:  # a run from before was no cross-validation fold
            config.cv = {"folds": None, "fold": None, "seed": 0, "test_cases": []}
        if "mixed_precision" in training:
            if "precision" not in training:
                training.precision = "fp16" if training.mixed_precision else "fp32"
            del training["mixed_precision"]
        if "callbacks" not in config:
            callbacks: dict[str, Any] = {}
            for name, target in OLD_CALLBACKS.items():
                old = training.get(name)
                if old is not None and old.get("enabled"):
                    keys = {k: v for k, v in to_dict(old, resolve=False).items() if k != "enabled"}
                    extra = {"restore_best_weights": True} if name == "early_stopping" else {}
                    callbacks[name] = {
                        "_target_": target,
                        "monitor": training.get("monitor"),
                        "mode": training.get("monitor_mode"),
                        **keys,
                        **extra,
                        "verbose": 1,
                    }
            if training.get("callbacks"):
                callbacks.update(to_dict(training.callbacks, resolve=False))
            config.callbacks = callbacks
        for key in ("reduce_lr", "early_stopping", "callbacks"):
            training.pop(key, None)
        loss = _upgraded_loss(training)
        if "loss" not in config and loss is not None:
            config.loss = loss
            training.pop("loss", None)
            training.pop("dice", None)
    return config


def _upgraded_loss(training: DictConfig) -> dict[str, Any] | None:
    """The ``loss`` entry of a run's ``training.loss`` and ``training.dice`` (None: no such key, or a name that
    is no loss of ``conf/loss/``; left for validation to name)."""
    old = training.get("loss")
    if isinstance(old, DictConfig):
        return to_dict(old, resolve=False)  # the user's _target_ entry; it never took the Dice keys
    if not isinstance(old, str) or not (LOSS_DIR / f"{old}.yaml").is_file():
        return None
    entry = to_dict(cast(DictConfig, OmegaConf.load(LOSS_DIR / f"{old}.yaml")), resolve=False)
    dice = training.get("dice") or {}
    entry.update({k: dice[k] for k in ("batch", "include_background") if k in entry and k in dice})
    return entry


def open_run(source: str, tracking_uri: str | None = None) -> TrainedRun:
    """A training run from a run folder path, an MLflow run id (32 hex characters) or a registered model
    version (``models:/<name>@<alias>``, ``models:/<name>/<version>``: the run it was registered from)."""
    path = Path(source).expanduser()
    if path.is_dir():
        return _from_dir(path)
    if RUN_ID.match(source):
        return _from_mlflow(source, tracking_uri)
    if source.startswith("models:/"):
        return _from_mlflow(registered_run_id(source, tracking_uri), tracking_uri)
    raise RunError(
        f"run: {source!r} is neither a training run folder nor an MLflow run id (32 hex characters) "
        "nor a registered model (models:/<name>@<alias>, models:/<name>/<version>)"
    )


def registered_run_id(uri: str, tracking_uri: str | None = None) -> str:
    """The id of the run a registered model version (``models:/<name>@<alias>`` or ``/<version>``) came from.

    Raises :class:`RunError` naming the model and what the registry has instead (its aliases and
    versions, or the registered models when the name is unknown).
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    found = REGISTERED.match(uri)
    if found is None:
        raise RunError(f"run: {uri!r}: write a registered model as models:/<name>@<alias> or models:/<name>/<version>")
    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    client = mlflow_client(mlflow.get_tracking_uri())
    name, alias, version = found["name"], found["alias"], found["version"]
    try:
        if alias is not None:
            mv = retry_locked(client.get_model_version_by_alias, name, alias)
        elif version == "latest":
            versions = retry_locked(client.search_model_versions, f"name = '{name}'")
            if not versions:
                raise MlflowException(f"registered model {name!r} has no versions")
            mv = max(versions, key=lambda v: int(v.version))
        else:
            mv = retry_locked(client.get_model_version, name, version)
    except MlflowException as err:
        raise RunError(f"run: {uri} at {mlflow.get_tracking_uri()}: {_registry_contents(client, name)}") from err
    if not mv.run_id:
        raise RunError(f"run: {uri} (version {mv.version}) was not registered from an MLflow run")
    return str(mv.run_id)


def _registry_contents(client: Any, name: str) -> str:
    """What the registry holds for ``name`` (its aliases and versions), or which models it has."""
    from mlflow.exceptions import MlflowException

    try:
        model = retry_locked(client.get_registered_model, name)
    except MlflowException:
        names = [m.name for m in retry_locked(client.search_registered_models, max_results=20)]
        return f"no registered model {name!r}; registered models: {', '.join(names) or 'none'}"
    versions = sorted(int(v.version) for v in retry_locked(client.search_model_versions, f"name = '{name}'"))
    aliases = ", ".join(f"@{a} -> {v}" for a, v in sorted(dict(model.aliases).items())) or "none"
    return f"registered model {name!r} has versions {versions or 'none'} and aliases {aliases}"


def _from_dir(run_dir: Path) -> TrainedRun:
    config_file = run_dir / ".hydra" / "config.yaml"
    if not config_file.is_file():
        raise RunError(f"{run_dir}: not a segexp training run folder (no .hydra/config.yaml)")
    config = upgrade_run_config(cast(DictConfig, OmegaConf.load(config_file)))  # Hydra writes a mapping
    run_id = tracking_uri = None
    record = run_dir / MLFLOW_RUN_FILE
    if record.is_file():
        data = json.loads(record.read_text())
        run_id, tracking_uri = data["run_id"], data["tracking_uri"]
    if not (run_dir / BEST_MODEL).is_file() and run_id is None:
        raise RunError(f"{run_dir}: no {BEST_MODEL} (did the training finish an epoch?)")
    return TrainedRun(config=config, run_dir=run_dir.resolve(), run_id=run_id, tracking_uri=tracking_uri)


def _from_mlflow(run_id: str, tracking_uri: str | None) -> TrainedRun:
    import mlflow
    from mlflow.exceptions import MlflowException

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    try:
        run = mlflow.get_run(run_id)
        local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="config/config.yaml")
    except MlflowException as err:
        raise RunError(f"MLflow run {run_id} at {mlflow.get_tracking_uri()}: {str(err).splitlines()[0]}") from err
    run_dir = Path(run.data.tags["run_dir"]) if "run_dir" in run.data.tags else None
    if run_dir is not None and not run_dir.is_dir():
        run_dir = None
    return TrainedRun(
        config=upgrade_run_config(cast(DictConfig, OmegaConf.load(local))),  # the run's .hydra/config.yaml
        run_dir=run_dir,
        run_id=run_id,
        tracking_uri=mlflow.get_tracking_uri(),
    )
