"""The plan's timed model, handed on to the run it planned instead of being traced again.

With ``training.max_time`` the plan times the planned network on this machine
(``segexp.planning.steptime``): it compiles the model and runs a few steps, which traces (and
with XLA compiles) the training step. The run then compiled the same network again and paid
the same trace in its first step: measured on hvsmr_mini (the planned ResUNet at 256x256,
batch 8, 2 cores, cold cache) the timing took 29 s of which 22 s was that first step, i.e. about
20 optimiser steps of a 4-minute budget traced twice. Here the timed model is kept for one
handover: when the run's compile settings are the timed ones (:func:`compile_signature`), the
run takes the kept model with its step already traced, its variables reset to exactly what a
fresh seeded build gives (weights, seed-generator states) and its optimizer variables to their
state before the first step. Anything else (another schedule, another network) compiles anew.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
from omegaconf import OmegaConf

from segexp.config.schema import TrainingConfig
from segexp.data.io.intensity import UINT8_ENCODING, InputEncoding
from segexp.models.registry import ModelParams

log = logging.getLogger(__name__)


def compile_signature(
    m: ModelParams,
    t: TrainingConfig,
    class_names: Sequence[str],
    total_steps: int,
    precision: str,
    *,
    loss: Mapping[str, Any],
    encoding: InputEncoding = UINT8_ENCODING,
) -> str:
    """What ``training.loop.compile_model`` reads (keep the two in step): model section ``m``, the ``loss`` entry,
    ``t``'s optimizer, schedule (with its ``decay_steps = total_steps``), XLA flag, precision, classes, and the
    stored images' ``encoding`` (the model's input layer)."""

    def plain(node: Any) -> Any:  # a config section as plain JSON-able values; a leaf as it is
        return OmegaConf.to_container(node, resolve=True, enum_to_str=True) if OmegaConf.is_config(node) else node

    schedule = None if t.schedule is None else {**plain(t.schedule), "decay_steps": total_steps}
    return json.dumps(
        {
            "model": plain(m),
            "loss": plain(loss),
            "optimizer": plain(t.optimizer),
            "schedule": schedule,
            "jit": t.jit_compile,
            "precision": precision,
            "classes": list(class_names),
            "input": encoding.to_dict(),
        },
        sort_keys=True,
        default=str,
    )


@dataclass
class _Kept:
    model: keras.Model
    optimizer_state: list[np.ndarray]


_kept: dict[str, _Kept] = {}  # signature -> the models timed in this process since the last handover


def optimizer_snapshot(model: keras.Model) -> list[np.ndarray]:
    """The values of ``model.optimizer``'s variables (iteration counter, learning rate, moments)."""
    return [np.array(v.numpy()) for v in model.optimizer.variables]


def keep(model: keras.Model, signature: str, optimizer_state: list[np.ndarray]) -> None:
    """Keep the timed ``model`` (compiled with ``signature``) and its optimizer state before any step
    (the plan may time two variants, with and without XLA: the run takes the one it was planned with)."""
    _kept[signature] = _Kept(model, optimizer_state)


def take(signature: str, fresh: Callable[[], keras.Model]) -> keras.Model | None:
    """The kept model when it was compiled with ``signature``, reset to the run's start; else None.

    ``fresh()`` builds the uncompiled network as the run would (after its seed is set): its
    variables (weights and seed-generator states) are copied into the kept model, the optimizer's
    variables go back to their state before the first step and the metrics are reset. The kept
    models are released either way.
    """
    kept = _kept.pop(signature, None)
    release()
    if kept is None:
        return None
    model, new = kept.model, fresh()
    if [tuple(v.shape) for v in model.variables] != [tuple(v.shape) for v in new.variables]:
        log.warning("the plan's timed model does not match the run's network: compiling anew")
        return None
    for target, source in zip(model.variables, new.variables):
        target.assign(source)
    for variable, value in zip(model.optimizer.variables, kept.optimizer_state):
        variable.assign(value)
    model.reset_metrics()
    log.info("model: the plan's timed model taken over (its training step already traced), reset to the run's start")
    return model


def release() -> None:
    """Drop the kept models (if any)."""
    _kept.clear()
