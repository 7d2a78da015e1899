"""Numeric precision of a network: ``fp32``, ``bf16`` or ``fp16`` compute, chosen by ``auto`` from the hardware.

Mixed precision (Micikevicius et al. 2018, "Mixed Precision Training"; Keras'
``mixed_bfloat16`` / ``mixed_float16`` dtype policies): layers compute in 16 bits and keep
their weights in float32. Here the policy is set on the layers of a built network
(:func:`apply_precision`) instead of globally before it is built, so one process can hold
models of several precisions, and one function serves training, evaluation and inference:

* the layers that produce the model's outputs stay float32 (softmax/sigmoid probabilities,
  and the losses and metrics that read them, which cast to float32 themselves);
* ``fp16`` needs loss scaling: ``model.compile`` wraps the optimizer in Keras'
  ``LossScaleOptimizer`` when the model's own policy is ``mixed_float16``;
* saved files hold float32 policies (:func:`float32_while_saving`), so a ``.keras`` file
  loads and predicts in fp32 anywhere, and segexp applies the precision again after loading.

``auto`` (:func:`resolve_precision`): on a GPU, bf16 from compute capability 8.0 (Ampere) on,
fp16 below it; on a CPU, bf16 where its flags show ``avx512_bf16`` or ``amx_bf16`` (oneDNN
then runs bfloat16 convolutions natively), fp32 otherwise (bf16 emulated on other CPUs is
slower than fp32, and fp16 on CPUs is slower still).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import keras

from segexp.config.options import Precision, expected
from segexp.models.layers import RESCALE

log = logging.getLogger(__name__)

#: Keras dtype policy of each concrete precision.
POLICIES = {"fp32": "float32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}

#: CPU flags (``/proc/cpuinfo``) of native bfloat16 arithmetic.
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The CPU's feature flags as Linux lists them (empty where ``/proc/cpuinfo`` is absent)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def gpu_compute_capabilities() -> list[tuple[int, int]]:
    """Compute capability ``(major, minor)`` of every GPU TensorFlow sees (empty on other backends)."""
    if keras.backend.backend() != "tensorflow":
        return []
    import tensorflow as tf  # deferred: TensorFlow-only, the backend may be another

    capabilities = []
    for gpu in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(gpu)
        capabilities.append(tuple(details.get("compute_capability") or (0, 0)))
    return capabilities


def choose_precision(gpus: list[tuple[int, int]], flags: set[str]) -> str:
    """What ``auto`` means on this hardware: bf16 on GPUs >= 8.0 and bf16 CPUs, fp16 on older GPUs, else fp32."""
    if gpus:
        return "bf16" if min(gpus) >= (8, 0) else "fp16"
    return "bf16" if flags & set(BF16_CPU_FLAGS) else "fp32"


def resolve_precision(requested: str) -> str:
    """``requested`` (a :class:`~segexp.config.options.Precision`) as a concrete precision: fp32, bf16 or fp16."""
    error = expected("precision", requested, Precision)
    if error is not None:
        raise ValueError(error)
    if requested != "auto":
        return requested
    gpus = gpu_compute_capabilities()
    chosen = choose_precision(gpus, cpu_flags())
    log.info("precision auto: %s (%s)", chosen, f"GPU compute capability {min(gpus)}" if gpus else "CPU flags")
    return chosen


def _float_layers(model: keras.Model) -> Iterator[keras.layers.Layer]:
    """Every layer of ``model`` (nested models included, the model itself first) with a float policy."""
    seen: set[int] = set()
    stack: list[keras.layers.Layer] = [model]
    while stack:
        layer = stack.pop()
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        if layer.dtype_policy.name in ("float32", "mixed_bfloat16", "mixed_float16"):
            yield layer
        stack.extend(getattr(layer, "layers", []))


def output_layers(model: keras.Model) -> set[int]:
    """``id`` of the layers whose outputs are the model's outputs (kept float32)."""
    return {id(t._keras_history.operation) for t in model.outputs}  # noqa: SLF001 - Keras' only link tensor -> layer


def apply_precision(model: keras.Model, precision: str) -> keras.Model:
    """Set the dtype policy of every layer of ``model`` for ``precision`` (fp32, bf16, fp16), in place.

    Call it before the model is first called (compiled functions are traced on the first call).
    The output layers stay float32. Weights are float32 under every policy, so nothing is copied.
    """
    policy = POLICIES[precision]
    keep = output_layers(model) | wide_input_layers(model)
    for layer in _float_layers(model):
        layer.dtype_policy = "float32" if id(layer) in keep else policy
    return model


def wide_input_layers(model: keras.Model) -> set[int]:
    """``id`` of the layer that decodes a 16-bit input (:data:`~segexp.models.layers.RESCALE`), kept float32:
    bfloat16's 8-bit mantissa would round the stored values; the next layer casts the decoded values."""
    if not any(str(t.dtype) == "uint16" for t in model.inputs):
        return set()
    return {id(layer) for layer in _float_layers(model) if layer.name == RESCALE}


def model_precision(model: keras.Model) -> str:
    """The precision the model computes in (its own dtype policy): fp32, bf16 or fp16."""
    names = {v: k for k, v in POLICIES.items()}
    return names.get(model.dtype_policy.name, "fp32")


@contextmanager
def float32_while_saving(model: keras.Model) -> Iterator[keras.Model]:
    """Within the block every layer's policy is float32 (so a saved file is fp32); restored after."""
    layers = list(_float_layers(model))
    previous = [layer.dtype_policy for layer in layers]
    try:
        for layer in layers:
            layer.dtype_policy = "float32"
        yield model
    finally:
        for layer, policy in zip(layers, previous):
            layer.dtype_policy = policy
