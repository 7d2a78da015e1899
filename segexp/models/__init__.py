"""Model registry: ``model.name`` in the config picks a builder from ``MODEL_BUILDERS``."""

from __future__ import annotations

from collections.abc import Callable

import keras

from segexp.models.flexunet import build_flexunet

MODEL_BUILDERS: dict[str, Callable[..., keras.Model]] = {"flexunet": build_flexunet}


def build_model(name: str, **kwargs) -> keras.Model:
    """Build the registered model ``name`` with the builder's keyword arguments."""
    try:
        builder = MODEL_BUILDERS[name]
    except KeyError:
        raise ValueError(
            f"model.name: unknown model {name!r}; available: {', '.join(sorted(MODEL_BUILDERS))}"
        ) from None
    return builder(**kwargs)


__all__ = ["MODEL_BUILDERS", "build_flexunet", "build_model"]
