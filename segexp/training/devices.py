"""Data-parallel training on the devices of one machine: ``training.devices`` as a ``tf.distribute.MirroredStrategy``.

Synchronous data parallelism (TensorFlow's ``MirroredStrategy``; Goyal et al. 2017,
"Accurate, Large Minibatch SGD"): every replica holds a copy of the weights, each step
splits the global batch ``training.batch_size`` into ``batch_size / replicas`` samples per
replica, and the gradients are summed across replicas (all-reduce) before one optimizer
update that every copy applies. Keras 3's ``model.fit`` distributes the loader itself
(``experimental_distribute_dataset`` splits each batch) and scales the loss by
``1 / replicas``, so one step on N replicas is one step of the same global batch on one
device. The Dice metrics keep their pixel counts in on-read variables that are summed over
the replicas, so epoch metrics are those of the whole batch.

``training.devices``:

* ``1`` (default): one device, no strategy: exactly the single-device code path.
* ``auto``: every GPU TensorFlow sees (one GPU or none: one device, no strategy).
* ``n``: the first n GPUs; on a machine without GPUs, n logical CPU devices carved out of
  the host CPU (``tf.config.set_logical_device_configuration``), so a multi-device config
  can be checked anywhere (they share the CPU's cores: no speed-up).
* a list: GPU indices (``[0, 2]``) or device names (``["GPU:0", "/cpu:1"]``).

Logical CPU devices can only be created before TensorFlow initialises its runtime, so
:func:`data_parallel` runs first in a training process (``segexp-train`` is one).

What differs from one device: BatchNormalization is switched to batch statistics over all
replicas (:func:`synchronize_batch_norm`); a batch Dice loss is taken over each replica's
share of the batch. Several machines (``MultiWorkerMirroredStrategy``) are not supported:
Keras 3's ``fit`` does not work with it (keras-team/keras#20585, tensorflow/tensorflow#72388).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from typing import Any

import keras

from segexp.config.schema import DEVICE_NAME
from segexp.core.errors import ConfigError, RunError

log = logging.getLogger(__name__)

#: ``training.devices`` value that means every GPU (or one device without GPUs).
AUTO = "auto"


def _named(entry: Any) -> str:
    """One list entry of ``training.devices`` as ``/gpu:<i>`` or ``/cpu:<i>``."""
    if isinstance(entry, int) and not isinstance(entry, bool):
        return f"/gpu:{entry}"
    match = DEVICE_NAME.match(str(entry).strip())
    if match is None:
        raise ConfigError(f"training.devices: {entry!r} is not a GPU index or a device name like 'GPU:0' or 'CPU:1'")
    return f"/{match.group(1).lower()}:{int(match.group(2))}"


def device_names(devices: Any, num_gpus: int) -> list[str]:
    """The devices ``training.devices`` means on a machine with ``num_gpus`` GPUs (``/gpu:i`` or ``/cpu:i``).

    ``auto``: every GPU, else ``/cpu:0``; ``n``: the first n GPUs, else n logical CPUs;
    a list: its entries (GPU indices or names). Raises :class:`ConfigError` naming the key.
    """
    if devices == AUTO:
        return [f"/gpu:{i}" for i in range(num_gpus)] or ["/cpu:0"]
    if isinstance(devices, int) and not isinstance(devices, bool):
        if devices < 1:
            raise ConfigError(f"training.devices: must be >= 1, auto or a list of devices, got {devices}")
        if num_gpus and devices > num_gpus:
            raise ConfigError(f"training.devices: {devices} devices requested, but TensorFlow sees {num_gpus} GPUs")
        return [f"/gpu:{i}" for i in range(devices)] if num_gpus else [f"/cpu:{i}" for i in range(devices)]
    if isinstance(devices, str) or not isinstance(devices, Sequence) or not devices:
        raise ConfigError(f"training.devices: expected auto, a count or a non-empty list of devices, got {devices!r}")
    names = [_named(entry) for entry in devices]
    if len(set(names)) != len(names):
        raise ConfigError(f"training.devices: a device is listed twice in {list(devices)}")
    missing = [n for n in names if n.startswith("/gpu:") and int(n.split(":")[1]) >= num_gpus]
    if missing:
        raise ConfigError(f"training.devices: {', '.join(missing)} not found: TensorFlow sees {num_gpus} GPUs")
    return names


def is_default_device(names: Sequence[str], num_gpus: int) -> bool:
    """True when ``names`` is the one device TensorFlow uses anyway (``/gpu:0``, or ``/cpu:0`` without GPUs)."""
    return list(names) == (["/gpu:0"] if num_gpus else ["/cpu:0"])


def ensure_logical_cpus(count: int) -> None:
    """Split the host CPU into ``count`` logical devices; TensorFlow must not have initialised yet.

    Raises :class:`RunError` when TensorFlow already runs with fewer CPU devices (its
    device list is fixed at initialisation): train in a fresh process, as ``segexp-train`` does.
    """
    import tensorflow as tf  # deferred: TensorFlow-only, and only for a multi-device run

    cpu = tf.config.list_physical_devices("CPU")[0]
    configured = tf.config.get_logical_device_configuration(cpu) or []
    if len(configured) >= count:
        return
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * count)
    except RuntimeError as err:  # "Virtual devices cannot be modified after being initialized"
        raise RunError(
            f"training.devices: {count} logical CPU devices must be created before TensorFlow initialises, but this "
            f"process already runs TensorFlow with {max(1, len(configured))}; start the training in a fresh process "
            "(segexp-train does)"
        ) from err


def num_gpus() -> int:
    """GPUs TensorFlow sees (listing them does not initialise the runtime)."""
    import tensorflow as tf  # deferred: TensorFlow-only

    return len(tf.config.list_physical_devices("GPU"))


def data_parallel(devices: Any, batch_size: int) -> Any | None:
    """The ``tf.distribute.MirroredStrategy`` over ``training.devices``, or None for one (default) device.

    Call it before any TensorFlow op runs. ``devices=1`` returns None without touching
    TensorFlow. Raises :class:`ConfigError` when ``batch_size`` (the global batch) does not
    split evenly over the replicas or the devices do not exist.
    """
    if devices == 1:
        return None
    if keras.backend.backend() != "tensorflow":
        raise ConfigError(
            f"training.devices: several devices need the TensorFlow backend, got {keras.backend.backend()}"
        )
    gpus = num_gpus()
    names = device_names(devices, gpus)
    if is_default_device(names, gpus):
        log.info("training on one device (%s)", names[0])
        return None
    if batch_size % len(names):
        raise ConfigError(
            f"training.batch_size: the global batch ({batch_size}) must split evenly over the "
            f"{len(names)} replicas of training.devices={devices!r}"
        )
    cpus = [int(n.split(":")[1]) for n in names if n.startswith("/cpu:")]
    if cpus and max(cpus) > 0:
        ensure_logical_cpus(max(cpus) + 1)
    import tensorflow as tf  # deferred: TensorFlow-only

    logging.getLogger("tensorflow").setLevel(logging.WARNING)  # else ~100 INFO lines per trace, one per all-reduce
    strategy = tf.distribute.MirroredStrategy(devices=names)
    log.info(
        "data parallel: %d replicas (MirroredStrategy on %s), global batch %d = %d per replica",
        strategy.num_replicas_in_sync,
        ", ".join(names),
        batch_size,
        batch_size // len(names),
    )
    return strategy


def synchronize_batch_norm(model: keras.Model) -> int:
    """Make every ``BatchNormalization`` of ``model`` compute its batch statistics over all replicas; returns how many.

    Keras' ``synchronized=True`` (TensorFlow only): the mean and variance of a training batch
    come from sums all-reduced across replicas (3 all-reduces per layer and step), so a layer
    normalises with the statistics of the global batch, as on one device, and the moving
    averages stay identical on every replica. Without it each replica normalises with its own
    ``batch_size / replicas`` samples and updates its own copy of the moving averages (Keras
    creates them with aggregation ``none``), of which the saved model keeps the first replica's.
    Call it before the model is first traced (``fit``); saved files then hold ``synchronized: true``,
    which is inert on one device.
    """
    every = model._flatten_layers()  # Keras' recursive walk over nested models and blocks
    layers = [layer for layer in every if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in layers:
        layer.synchronized = True
    return len(layers)


def strategy_scope(strategy: Any | None) -> contextlib.AbstractContextManager:
    """``strategy.scope()`` (variables created inside are mirrored), or a no-op for one device."""
    return strategy.scope() if strategy is not None else contextlib.nullcontext()


def replica_count(strategy: Any | None) -> int:
    """Replicas that train in sync: the strategy's, or 1."""
    return 1 if strategy is None else int(strategy.num_replicas_in_sync)
