"""A sweep job's Optuna trial: every validated epoch reported to it, the fit stopped when the study's pruner says so.

segexp's Optuna sweeper (``hydra_plugins/segexp_optuna``) gives each job ``optuna.study``, ``optuna.storage`` and
``optuna.trial`` (:class:`TrialLink`). The job reaches its trial through the study's storage (:func:`open_trial`),
so the link works from any launcher: in process, joblib workers, submitit and SLURM jobs on other nodes. The
pruner is the study's (a ``_target_`` entry the sweeper keeps in the study, :data:`~segexp.tracking.study.PRUNER_ATTR`).

:class:`TrialPruning` reports ``training.monitor`` after every validated epoch (step = epoch from 1) and asks
``should_prune()``; a pruned fit ends after that epoch as a ``training.max_time`` stop does (the best checkpoint
kept, ``stop_training``). What follows is :func:`segexp.training.loop.train`'s: no model logged, no postprocessing,
no test evaluation; the MLflow run ends KILLED, tagged ``pruned_at_epoch``; the job's result says so and the
sweeper records the trial PRUNED. A multi-objective study cannot be pruned (Optuna reports one value per step):
there nothing is reported.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import hydra
import keras

from segexp.core.errors import ConfigError
from segexp.tracking.study import PRUNER_ATTR, masked_url, open_storage

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)

#: Where a pruner's ``_target_`` must live (the study's pruner entry is built in every job).
PRUNER_MODULE = "optuna.pruners."


@dataclass(frozen=True)
class TrialLink:
    """A job's trial: the study's name, its storage URL and the trial's number."""

    study: str
    storage: str
    number: int

    @classmethod
    def from_config(cls, o: Any) -> TrialLink | None:
        """The ``optuna`` section's link (None: not a trial of segexp's Optuna sweeper)."""
        if o is None or o.trial is None:
            return None
        return cls(str(o.study), str(o.storage), int(o.trial))


def build_entry(spec: Mapping[str, Any], key: str) -> Any:
    """The object of the ``_target_`` entry ``spec`` of config key ``key`` (``hydra.sweeper.sampler``); a key the
    class does not take, or any failure to build it, is a :class:`ConfigError` naming the key."""
    target = str(spec.get("_target_", ""))
    try:
        accepted = inspect.signature(hydra.utils.get_class(target)).parameters
    except Exception as err:  # noqa: BLE001 - not importable: a typo, a missing package
        raise ConfigError(f"{key}._target_: cannot import {target!r}: {err}") from err
    unknown = [k for k in spec if not k.startswith("_") and k not in accepted]
    if unknown:
        raise ConfigError(
            f"{key}: {target} takes no {', '.join(unknown)} (remove: " + " ".join(f"~{key}.{k}" for k in unknown) + ")"
        )
    try:
        return hydra.utils.instantiate(dict(spec), _convert_="all")
    except Exception as err:  # noqa: BLE001 - any failure to build it is the entry's
        raise ConfigError(f"{key}: cannot build {target}: {err}") from err


def build_pruner(spec: Mapping[str, Any] | None) -> optuna.pruners.BasePruner:
    """The pruner of a ``_target_`` entry of :mod:`optuna.pruners` (None: Optuna's ``NopPruner``, never prunes)."""
    import optuna

    if not spec:
        return optuna.pruners.NopPruner()
    target = str(spec.get("_target_", ""))
    if not target.startswith(PRUNER_MODULE):
        raise ConfigError(f"hydra.sweeper.pruner._target_: expected a class of {PRUNER_MODULE[:-1]}, got {target!r}")
    return build_entry(spec, "hydra.sweeper.pruner")


def open_trial(link: TrialLink) -> optuna.trial.Trial:
    """The running trial ``link`` names, in its study with the study's pruner; a study or trial the storage does
    not hold, or one that already ended, is a :class:`ConfigError` naming the key."""
    import optuna

    storage = open_storage(link.storage)
    where = f"{link.study!r} in {masked_url(link.storage)}"
    try:
        study_id = storage.get_study_id_from_name(link.study)
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, link.number)
    except KeyError as err:
        raise ConfigError(f"optuna.trial={link.number}: no such trial of study {where} ({err})") from err
    state = storage.get_trial(trial_id).state
    if state.is_finished():
        raise ConfigError(f"optuna.trial={link.number}: trial of study {where} already ended ({state.name})")
    pruner = build_pruner(storage.get_study_user_attrs(study_id).get(PRUNER_ATTR))
    study = optuna.load_study(
        study_name=link.study, storage=storage, pruner=pruner, sampler=optuna.samplers.RandomSampler()
    )
    return optuna.trial.Trial(study, trial_id)


class TrialPruning(keras.callbacks.Callback):
    """Reports ``monitor`` to ``trial`` after each validated epoch and stops the fit when the study prunes it.

    :attr:`pruned_at_epoch` is the epoch (from 1) after which it stopped (None: not pruned). A storage that cannot
    be written is a warning: the job trains on, unpruned.
    """

    def __init__(self, trial: optuna.trial.Trial, monitor: str) -> None:
        super().__init__()
        self.trial, self.monitor = trial, monitor
        self.reporting = len(trial.study.directions) == 1
        self.pruned_at_epoch: int | None = None

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        value = (logs or {}).get(self.monitor)
        if value is None or not self.reporting:  # not a validated epoch, or a study of several objectives
            return
        try:
            self.trial.report(float(value), epoch + 1)
            prune = self.trial.should_prune()
        except Exception as err:  # noqa: BLE001 - the study is a guide: training goes on without it
            log.warning("optuna trial %d: epoch %d not reported (%s); no pruning", self.trial.number, epoch + 1, err)
            self.reporting = False
            return
        if prune:
            self.pruned_at_epoch = epoch + 1
            self.model.stop_training = True
            log.info(
                "optuna: trial %d pruned after epoch %d (%s = %.4f); ending the run",
                self.trial.number,
                epoch + 1,
                self.monitor,
                float(value),
            )


def pruned_epoch(callbacks: list[keras.callbacks.Callback]) -> int | None:
    """The epoch after which a :class:`TrialPruning` of ``callbacks`` stopped the fit (None: not pruned)."""
    return next((c.pruned_at_epoch for c in callbacks if isinstance(c, TrialPruning)), None)
