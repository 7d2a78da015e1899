"""The one way segexp loads a saved model: ``.keras`` files in Keras safe mode.

Safe mode refuses files that carry code (``Lambda`` layers, lambda functions); segexp's
own models never do, so a refusal means the file was not written by ``segexp-train``.
Every load site (evaluation, prediction, resume, the outbox) goes through
:func:`load_keras_model`, which names the file instead of raising a deep Keras traceback;
every save site through :func:`save_keras_model`, which writes float32 policies whatever
precision the model trains in (:mod:`segexp.models.precision`).
"""

from __future__ import annotations

from pathlib import Path

import keras

import segexp.models.losses  # noqa: F401  (registers the serialisable losses)
import segexp.models.metrics  # noqa: F401  (registers the serialisable metrics)
from segexp.core.errors import RunError, SegexpError
from segexp.models.precision import apply_precision, float32_while_saving
from segexp.models.xla import xla_for_training_only


def unsafe_model_message(what: str, err: Exception) -> str:
    """One line saying why the model ``what`` could not be loaded (code refused by safe mode, or the cause)."""
    text = str(err)
    if "safe_mode" in text or "Lambda" in text or "lambda" in text:
        return (
            f"{what}: refused to load: the model contains code (a Lambda layer or a lambda function), "
            "which Keras safe mode does not run. segexp models never hold code: this file was not written "
            "by segexp-train; load it outside segexp, with safe mode off, only if you trust whoever made it"
        )
    return f"{what}: cannot load the model: {text.strip().splitlines()[0] if text.strip() else type(err).__name__}"


def load_keras_model(path: Path, error: type[SegexpError] = RunError) -> keras.Model:
    """Load the ``.keras`` file ``path`` in safe mode; problems raise ``error`` naming the file."""
    path = Path(path)
    if path.suffix != ".keras":
        raise error(f"{path}: segexp loads models saved as .keras only (not HDF5 or SavedModel)")
    try:
        model = keras.models.load_model(path, safe_mode=True)
    except Exception as err:  # code refused by safe mode, a truncated or foreign file: say which file
        raise error(unsafe_model_message(str(path), err)) from err
    return xla_for_training_only(model)


def save_keras_model(model: keras.Model, path: Path) -> None:
    """Save ``model`` to the ``.keras`` file ``path`` with float32 layer policies: the file predicts in fp32
    anywhere."""
    with float32_while_saving(model):
        model.save(path)


def load_for_inference(path: Path, precision: str, error: type[SegexpError] = RunError) -> keras.Model:
    """:func:`load_keras_model`, computing in ``precision`` (fp32, bf16, fp16; resolved, not auto)."""
    return apply_precision(load_keras_model(path, error), precision)
