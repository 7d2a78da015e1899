"""Model registry: ``model.name`` in the config picks a builder from ``MODEL_BUILDERS``.

A builder takes keyword arguments only; :func:`build_model` passes it the config keys its
signature names (the model config group holds the keys of every network).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import keras

from segexp.models.flexunet import build_flexunet
from segexp.models.resunet import build_resunet

MODEL_BUILDERS: dict[str, Callable[..., keras.Model]] = {"flexunet": build_flexunet, "resunet": build_resunet}


def build_model(name: str, **kwargs) -> keras.Model:
    """Build the registered model ``name`` with the builder's keyword arguments."""
    try:
        builder = MODEL_BUILDERS[name]
    except KeyError:
        raise ValueError(
            f"model.name: unknown model {name!r}; available: {', '.join(sorted(MODEL_BUILDERS))}"
        ) from None
    accepted = inspect.signature(builder).parameters
    return builder(**{k: v for k, v in kwargs.items() if k in accepted and v is not None})


__all__ = ["MODEL_BUILDERS", "build_flexunet", "build_model", "build_resunet"]
