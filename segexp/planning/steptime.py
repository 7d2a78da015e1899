"""The step time of the planned network on this machine, measured once and cached.

:func:`measure_step_time` compiles the planned network exactly as training will (loss,
metrics, precision, ``training.jit_compile``), runs one step (graph tracing and, with XLA,
compilation), :data:`WARMUP_STEPS` untimed steps and ``measure_steps`` timed steps (their median) on a
random uint8 batch of the planned shape, then two validation batches, through the epoch loop's own step calls
(``fit_loop.run_step``), and keeps the model for the run it plans (``segexp.training.warm``: the step is not traced
twice in one process). The result is cached in
``<paths.output_dir>/cache/step_time/<key>.json``, keyed by the model section, the loss, batch,
precision, jit setting, machine (device, CPU or GPU name, cores) and library versions,
so the same machine class gets the same plan and the measurement is paid once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import time
from dataclasses import asdict
from importlib.metadata import version
from pathlib import Path

import keras
import numpy as np
from omegaconf import DictConfig, OmegaConf

from segexp.config.resolvers import usable_cores
from segexp.data.io.intensity import UINT8_ENCODING, InputEncoding
from segexp.data.runtime.augment import Augmenter
from segexp.data.runtime.dataset import SliceDataset
from segexp.models.precision import resolve_precision
from segexp.planning.rules import Machine, StepTime
from segexp.training import warm
from segexp.training.fit_loop import build_state, run_step
from segexp.training.loop import build_loaders, compile_model, set_threads

log = logging.getLogger(__name__)


def this_machine() -> Machine:
    """The device training will use (a visible GPU, else the CPU), its name and the usable cores."""
    import tensorflow as tf  # deferred: listing devices initialises TensorFlow (threads are set first)

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        details = tf.config.experimental.get_device_details(gpus[0])
        return Machine("gpu", f"{details.get('device_name', 'GPU')} x{len(gpus)}", usable_cores())
    return Machine("cpu", cpu_name(), usable_cores())


def cpu_name(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU model from /proc/cpuinfo with its family and model numbers (``platform.processor()`` elsewhere).

    The numbers tell CPU generations apart where a virtual machine shows one name for all ("AMD EPYC"
    for Zen 3 and Zen 4, whose fastest step differs: ``segexp.planning.rules.xla_for``)."""
    fields: dict[str, str] = {}
    try:
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "cpu family", "model") and key.strip() not in fields:
                fields[key.strip()] = value.strip()
            if not line.strip() and fields:
                break
    except OSError:
        pass
    if "model name" not in fields:
        return platform.processor() or "unknown CPU"
    numbers = ", ".join(f"{k} {fields[k]}" for k in ("cpu family", "model") if k in fields)
    return f"{fields['model name']} ({numbers})" if numbers else fields["model name"]


#: Untimed steps after the first: XLA's first steps after compiling ran slower than its steady state (ResUNet
#: 256x256, batch 8, fp32, Zen 3, 2 cores: 0.89, 0.85, 0.85 s, then 0.67-0.77 s), so a plan that timed the three
#: steps right after the first saw XLA at 0.939 s against 0.967 s without, chose no XLA for its longer compile, and
#: trained 256 steps where XLA made 318 (scripts/bench.py --only peer: XLA 0.682 s, without 0.958 s per step).
WARMUP_STEPS = 2

#: Raised when a change to segexp's layers changes the networks' step time, so cached times are measured again
#: (2: :class:`~segexp.models.layers.InstanceNormalization` replaced Keras' ``GroupNormalization(groups=-1)``).
LAYERS_REVISION = 2


def cache_key(cfg: DictConfig, machine: Machine, encoding: InputEncoding = UINT8_ENCODING) -> str:
    """Hash of what the step time depends on (see the module docstring)."""
    t = cfg.training
    stored = {} if encoding == UINT8_ENCODING else {"input": encoding.to_dict()}  # 8-bit: the keys of old caches
    blob = json.dumps(
        {
            **stored,
            "model": OmegaConf.to_container(cfg.model, resolve=True, enum_to_str=True),
            "batch": t.batch_size,
            "loss": OmegaConf.to_container(cfg.loss, resolve=True),
            "precision": t.precision,
            "jit": t.jit_compile,
            "threads": OmegaConf.to_container(t.threads),
            "machine": asdict(machine),
            "versions": [version("tensorflow"), version("keras")],
            "steps": cfg.plan.measure_steps,
            "warmup": WARMUP_STEPS,
            "layers": LAYERS_REVISION,
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def measure_step_time(
    cfg: DictConfig,
    class_names: list[str],
    machine: Machine,
    cache_dir: Path | None,
    encoding: InputEncoding = UINT8_ENCODING,
) -> StepTime:
    """The planned network's :class:`StepTime` on this machine (cached under ``cache_dir``; None: no cache), its
    input reading images stored as ``encoding`` (the dataset's)."""
    path = None if cache_dir is None else Path(cache_dir) / "step_time" / f"{cache_key(cfg, machine, encoding)}.json"
    if path is not None and path.is_file():
        try:
            return StepTime(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError) as err:
            log.warning("step time cache %s unreadable (%s): measuring again", path, err)
    step = _measure(cfg, class_names, encoding)
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(asdict(step)))
            tmp.replace(path)
        except OSError as err:  # a read-only output folder only costs the cache
            log.warning("step time not cached in %s: %s", path.parent, err)
    return step


def _measure(cfg: DictConfig, class_names: list[str], encoding: InputEncoding = UINT8_ENCODING) -> StepTime:
    m, t = cfg.model, cfg.training
    set_threads(t.threads.intra_op, t.threads.inter_op)
    rng = np.random.default_rng(0)
    stored = np.dtype(encoding.dtype)
    shape = (t.batch_size, m.image_height, m.image_width, m.image_channels)
    images = rng.integers(0, int(np.iinfo(stored).max) + 1, shape, dtype=stored)
    masks = rng.integers(0, len(class_names), (t.batch_size, m.image_height, m.image_width), dtype=np.uint8)
    log.info(
        "plan: timing %s at %dx%d, batch %d on this machine (%d steps after %d untimed; cached afterwards)",
        m.name,
        m.image_height,
        m.image_width,
        t.batch_size,
        cfg.plan.measure_steps,
        WARMUP_STEPS + 1,
    )
    precision = resolve_precision(t.precision)
    timed = t.copy()
    timed.schedule = (
        None  # a constant rate, as the plan gives budgets under 1000 steps: the run can take the model over
    )
    model = compile_model(
        m, timed, class_names, steps_per_epoch=1, precision=precision, loss=cfg.loss, encoding=encoding
    )
    batch = (images, masks)  # the epoch loop's batch structure: the traced step is the one the run calls
    start = time.perf_counter()
    build_state(model, batch)  # as the epoch loop does: one trace, not two
    optimizer_state = warm.optimizer_snapshot(model)
    model.make_train_function()
    run_step(model.train_function, batch)
    first = time.perf_counter() - start
    for _ in range(WARMUP_STEPS):
        run_step(model.train_function, batch)
    train = []
    for _ in range(cfg.plan.measure_steps):
        start = time.perf_counter()
        run_step(model.train_function, batch)
        train.append(time.perf_counter() - start)
    model.make_test_function()
    run_step(model.test_function, batch)  # traces the validation step
    infer = []
    for _ in range(2):
        start = time.perf_counter()
        run_step(model.test_function, batch)
        infer.append(time.perf_counter() - start)
    signature = warm.compile_signature(m, timed, class_names, 1, precision, loss=cfg.loss, encoding=encoding)
    warm.keep(model, signature, optimizer_state)
    del model
    keras.backend.clear_session()
    step = StepTime(
        first_s=round(first, 3), train_s=round(float(np.median(train)), 4), infer_s=round(float(np.median(infer)), 4)
    )
    log.info("plan: first step %.1f s, step %.3f s, validation batch %.3f s", step.first_s, step.train_s, step.infer_s)
    return step


def loader_batch_time(cfg: DictConfig, dataset: SliceDataset, batches: int = 3) -> float:
    """Median seconds of one training batch of the run's loader (read, resize, augment), cache filled.

    With ``training.loader.workers: 0`` the epoch loop builds each batch between two steps, so
    the plan counts it into the step; the first reads (decoding the files into the loader's
    cache) are paid once per run and not counted. Not cached: it depends on the data and the
    augmentation, and costs a fraction of a second.
    """
    augmenter = Augmenter(cfg.augmentation.transforms) if cfg.augmentation.transforms else None
    train, _ = build_loaders(
        cfg.model,
        cfg.training,
        dataset,
        augmenter,
        seed=cfg.seed,
        on_bad_file=cfg.dataset.on_bad_file,
        cache_dir=Path(cfg.paths.output_dir) / "cache",
    )
    count = min(batches, len(train))
    for index in range(count):
        train[index]  # fills the loader cache, as the run's first epoch does
    times = []
    for index in range(count):
        start = time.perf_counter()
        train[index]
        times.append(time.perf_counter() - start)
    load = round(float(np.median(times)), 4)
    log.info("plan: training batch from the loader %.3f s (main thread)", load)
    return load
