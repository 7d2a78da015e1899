#!/usr/bin/env python
"""segexp benchmark suite: loader, training step, inference, memory and prepare, in one run.

    python scripts/bench.py                          # full suite (~25 min on 2 CPU cores)
    python scripts/bench.py --update BENCHMARKS.md   # ... and rewrite the results block there
    python scripts/bench.py --tiny                   # seconds-scale smoke version (CI)
    python scripts/bench.py --only train fit --update BENCHMARKS.md   # some sections, into a block of their own

Every number is a median over ``--repeats`` timed repetitions after a warm-up, and
each measurement runs in its own Python process (``--worker``): TensorFlow's thread
pools can only be sized before it starts, and peak RSS must belong to one
measurement. Ratios compare numbers measured in the same run, so they hold on a
noisy shared machine where absolute numbers drift. Data is synthetic (the seeded
phantom of :mod:`segexp.data.phantom`), generated under ``--work-dir``; nothing
is downloaded.

Sections (see BENCHMARKS.md for what each means):

* ``loader``   augmented samples/s at 512x512 (``augmentation=full``) as ``model.fit``
  receives them, for workers 0, 1, 2, ... (threads and processes), against the
  training-step images/s of the default and a ``flexunet_hocm``-like model at 512x512;
* ``train``    training-step images/s, XLA off/on, 1 thread and all cores;
* ``peer``     seconds per step of the planned network (``segexp.planning.rules``: ResUNet, 128x128 and
  256x256) with and without XLA against MONAI's own UNet step in PyTorch (``scripts/monai_loop.py
  --step-time`` in the venv ``accuracy.py`` builds), alternating fresh processes;
* ``infer``    ``segexp-infer``'s volume path (read, window, predict, write) on a
  128-slice NIfTI volume against the bare forward pass on preloaded batches and
  one ``model.predict`` call per slice;
* ``memory``   peak RSS of one training epoch on 36, 144 and 576 slices;
* ``prepare``  ``segexp-prepare`` volumes/s and MB/s with 1 and 2 worker processes;
* ``epoch``    (``--only epoch``) the fixed per-epoch cost of real ``segexp-train`` epochs;
* ``zoo``      (``--only zoo``) training images/s (XLA off and on, first step included) and ``segexp-infer``
  slices/s of every network
  of the architecture sweep (``hparams_search=architectures``) at 128x128.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

REPO = Path(__file__).resolve().parents[1]
HOCM_MINI = REPO.parent / "shared" / "data" / "hocmvalves_mini"  # real slices, where ../shared is beside the checkout
RESULT_PREFIX = "BENCH_RESULT "
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"

#: Model presets measured. ``hocm_like`` is ``model=flexunet_hocm`` reduced as issue 6 asks
#: (num_layers 6, batch 2) so that it trains on a CPU at all; its input size is set per section.
MODELS: dict[str, dict[str, Any]] = {
    "default": {"overrides": [], "batch": 8, "label": "default (`model=flexunet`)"},
    "hocm_like": {
        "overrides": ["model=flexunet_hocm", "model.num_layers=6"],
        "batch": 2,
        "label": "`flexunet_hocm`, num_layers 6",
    },
}
LABELS = {**{k: v["label"] for k, v in MODELS.items()}, "hocm_full": "`flexunet_hocm` (126,809,320 params)"}

#: The original tool's training images/s (issue 13, measured on the 2-core AMD EPYC with AVX512_BF16 that
#: segexp is developed on): (model, input side, threads) -> images/s. "all" = both cores.
ORIGINAL_TOOL = {("hocm_like", 256, "all"): 1.51, ("hocm_like", 256, 1): 0.79, ("hocm_full", 512, 1): 0.164}


def native_bf16() -> bool:
    """Whether this machine computes bfloat16 natively (what ``training.precision=auto`` picks bf16 for)."""
    from segexp.models.precision import (
        choose_precision,
        cpu_flags,
        gpu_compute_capabilities,
    )

    return choose_precision(gpu_compute_capabilities(), cpu_flags()) == "bf16"


# ----------------------------------------------------------------------------- helpers


def median_rate(run: Callable[[], int], repeats: int, warmup: int = 1) -> tuple[float, list[float]]:
    """Median of ``items / seconds`` over ``repeats`` timed calls of ``run`` (returns items) after ``warmup`` calls."""
    for _ in range(warmup):
        run()
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        items = run()
        rates.append(items / (time.perf_counter() - start))
    return statistics.median(rates), rates


def rss_mb() -> float:
    """Current resident set size of this process in MiB (from /proc, Linux)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return float("nan")


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB (``ru_maxrss`` is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def compose(overrides: Sequence[str], config_name: str = "train") -> Any:
    """The config a user gets from ``segexp-<task> <overrides>``, without the ``hydra`` node."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import open_dict

    from segexp.config.resolvers import register_resolvers
    from segexp.config.schema import CONF_DIR

    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = hydra_compose(config_name=config_name, overrides=list(overrides))
    with open_dict(cfg):
        cfg.pop("hydra", None)
    return cfg


def set_tf_threads(threads: int | None) -> None:
    """Size TensorFlow's CPU pools (must run before TensorFlow executes anything)."""
    if not threads:
        return
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(min(threads, 2))
    except RuntimeError:  # already running (--tiny runs workers in one process): keep its pools
        pass


def zoo_presets() -> list[str]:
    """The model presets of the architecture sweep (``hparams_search=architectures``), expanded as Hydra does."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    from segexp.config.schema import CONF_DIR

    grid = OmegaConf.load(CONF_DIR / "hparams_search" / "architectures.yaml").hydra.sweeper.params.model
    (override,) = OverridesParser.create().parse_overrides([f"model={grid}"])
    return override.value().filter(sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml")))


def compiled_model(
    overrides: Sequence[str], jit_compile: bool | str = False, precision: str = "fp32"
) -> tuple[Any, Any]:
    """``(model, cfg)``: the configured network compiled exactly as ``segexp-train`` compiles it.

    No dataset is read: the class names are the dataset's when the counts agree, else
    placeholders (``flexunet_hocm`` has 8 classes, the phantom 6).
    """
    from omegaconf import OmegaConf, open_dict

    from segexp.training.loop import compile_model

    cfg = compose(["tracking=none", *overrides])
    OmegaConf.resolve(cfg)
    with open_dict(cfg):
        cfg.training.jit_compile = jit_compile
        cfg.training.precision = precision
    names = list(cfg.dataset.class_names)
    if len(names) != cfg.model.num_classes:
        names = [f"class{i}" for i in range(cfg.model.num_classes)]
    return compile_model(
        cfg.model, cfg.training, names, cfg.training.steps_per_epoch or 1, precision, loss=cfg.loss
    ), cfg


def run_loaders(cfg: Any, dataset: Any, augmenter: Any) -> Any:
    """The training and validation loaders a ``segexp-train`` run of composed config ``cfg`` builds."""
    from segexp.training.loop import build_loaders

    return build_loaders(
        cfg.model,
        cfg.training,
        dataset,
        augmenter,
        seed=cfg.seed,
        on_bad_file=cfg.dataset.on_bad_file,
        cache_dir=Path(cfg.paths.output_dir) / "cache",
    )


# ----------------------------------------------------------------------------- workers (one process each)


def work_train_step(p: dict[str, Any]) -> dict[str, Any]:
    """Images/s of ``model.train_on_batch`` on a fixed random uint8 batch (no data loading)."""
    import numpy as np

    set_tf_threads(p.get("threads"))
    model, cfg = compiled_model(p["overrides"], p["jit"], p.get("precision", "fp32"))
    m, batch = cfg.model, p["batch"]
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (batch, m.image_height, m.image_width, m.image_channels), dtype=np.uint8)
    y = rng.integers(0, max(m.num_classes, 2), (batch, m.image_height, m.image_width), dtype=np.uint8)

    def steps() -> int:
        for _ in range(p["steps"]):
            model.train_on_batch(x, y)
        return batch * p["steps"]

    from segexp.training.fit_loop import build_state

    start = time.perf_counter()
    build_state(model, (x, y))  # as segexp's epoch loop: the step is traced once
    model.train_on_batch(x, y)  # traces (and with XLA compiles) the step: what a run pays once
    first = time.perf_counter() - start
    rate, rates = median_rate(steps, p["repeats"], warmup=1)
    return {"images_per_s": rate, "rates": rates, "params": int(model.count_params()), "first_step_s": first}


def work_loader(p: dict[str, Any]) -> dict[str, Any]:
    """Augmented samples/s that ``model.fit`` receives from :class:`SliceLoader` (a 1x1-conv model consumes them)."""
    import keras

    from segexp.data.runtime.augment import Augmenter
    from segexp.data.runtime.dataset import open_dataset

    cfg = compose(["tracking=none", "augmentation=full", *p["overrides"]])
    dataset = open_dataset(cfg.dataset, cfg.model.num_classes)
    train_loader, _ = run_loaders(cfg, dataset, Augmenter(cfg.augmentation.transforms))
    m = cfg.model
    # The cheapest model that still takes the loader's batches through fit's data path: one
    # mean per image and a loss that ignores the masks. (A 1x1 conv with a per-pixel softmax
    # loss costs ~16 ms per 512x512 image on a CPU core, as much as the loader itself.)
    null = keras.Sequential(
        [
            keras.Input((m.image_height, m.image_width, m.image_channels), dtype="uint8"),
            keras.layers.Rescaling(1 / 255),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(1),
        ]
    )
    null.compile(optimizer="sgd", loss=lambda y_true, y_pred: keras.ops.mean(y_pred))
    times: list[float] = []

    class Clock(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            times.append(time.perf_counter() - self.start)

    null.fit(train_loader, epochs=1 + p["repeats"], shuffle=False, verbose=0, callbacks=[Clock()])
    samples = len(dataset.pairs["train"])
    rates = [samples / t for t in times[1:]]  # epoch 0 traces the graph: warm-up
    return {
        "samples_per_s": statistics.median(rates),
        "rates": rates,
        "samples": samples,
        "produced_per_s": _produced_per_s(train_loader, p["repeats"]),
    }


def _produced_per_s(loader: Any, repeats: int) -> float | None:
    """Samples/s the loader's workers deliver through Keras' own PyDataset machinery (no model at all).

    Uses Keras' internal ``PyDatasetAdapter`` (the enqueuer ``fit`` runs); None if it moved.
    """
    try:
        from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetAdapter
    except ImportError:
        return None
    adapter = PyDatasetAdapter(loader, shuffle=False)
    samples = len(loader.pairs)
    rates = []
    for epoch in range(1 + repeats):
        adapter.on_epoch_begin()
        start = time.perf_counter()
        for _ in adapter.get_numpy_iterator():
            pass
        adapter.on_epoch_end()
        if epoch:
            rates.append(samples / (time.perf_counter() - start))
    return statistics.median(rates)


def work_infer(p: dict[str, Any]) -> dict[str, Any]:
    """Slices/s: segexp-infer's volume path vs the bare forward pass vs one ``predict`` per slice."""
    import cv2
    import numpy as np
    from omegaconf import OmegaConf

    from segexp.data.io.rgb_map import default_palette
    from segexp.data.io.volumes import VolumeCase, load_case, num_slices, volume_slice
    from segexp.evaluation.prediction import predict_volume, window_like_training
    from segexp.models import build_model
    from segexp.models.precision import apply_precision

    set_tf_threads(p.get("threads"))
    cfg = compose(["tracking=none", *p["overrides"]])
    model = build_model(**OmegaConf.to_container(cfg.model, resolve=True))
    _favour_background(model)
    apply_precision(model, p.get("precision", "fp32"))
    m, batch = cfg.model, p["batch"]
    window = {"mode": "fixed", "level": 300.0, "width": 800.0}
    colours = default_palette(m.num_classes)
    volume = Path(p["volume"])
    out_dir = Path(p["out_dir"])

    loaded = load_case(VolumeCase("bench", volume, None))
    image = window_like_training(loaded.image, window)
    n = num_slices(image, "axial")
    slices = np.stack(
        [
            cv2.resize(volume_slice(image, "axial", i), (m.image_width, m.image_height), interpolation=cv2.INTER_AREA)
            for i in range(n)
        ]
    )[..., None]
    preloaded = np.repeat(slices, m.image_channels, axis=-1) if m.image_channels > 1 else slices
    preloaded = np.ascontiguousarray(preloaded)

    def end_to_end() -> int:
        predict_volume(model, volume, out_dir, colours, window, "axial", batch_size=batch, flip_tta=False)
        return n

    def bare_forward() -> int:
        for start in range(0, n, batch):
            model.predict_on_batch(preloaded[start : start + batch])
        return n

    def per_slice() -> int:
        for i in range(p["per_slice_count"]):
            model.predict(preloaded[i : i + 1], verbose=0)
        return p["per_slice_count"]

    # Interleave the three so that drifting machine load hits each alike.
    e2e, bare, single = [], [], []
    # Warm-up: trace the predict functions (end_to_end calls the same one as bare_forward).
    model.predict_on_batch(preloaded[:batch])
    model.predict(preloaded[:1], verbose=0)
    for _ in range(p["repeats"]):
        for fn, out in ((end_to_end, e2e), (bare_forward, bare), (per_slice, single)):
            start = time.perf_counter()
            items = fn()
            out.append(items / (time.perf_counter() - start))
    return {
        "slices": n,
        "end_to_end": statistics.median(e2e),
        "bare_forward": statistics.median(bare),
        "per_slice": statistics.median(single),
        "rates": {"end_to_end": e2e, "bare_forward": bare, "per_slice": single},
    }


def _favour_background(model: Any) -> None:
    """Bias the untrained head towards class 0, so the predicted label volume is mostly background.

    Speed does not depend on the weights, but gzip does: the salt-and-pepper labels of a
    random network compress ~10x slower than a real prediction (mostly background with
    compact structures), which would overstate the cost of writing the output.
    """
    head = model.layers[-1]
    weights = head.get_weights()
    if len(weights) == 2 and weights[1].shape[0] > 1:
        weights[1][0] += 10.0
        head.set_weights(weights)


def work_memory(p: dict[str, Any]) -> dict[str, Any]:
    """Peak RSS of one real ``segexp-train`` epoch (no MLflow, no evaluation) on the given dataset."""
    from segexp.training.loop import train

    cfg = compose(["tracking=none", "augmentation=full", *p["overrides"]])
    import keras  # noqa: F401  (TensorFlow's start-up memory is part of the baseline)

    baseline = rss_mb()
    _rmtree(Path(p["run_dir"]))  # a run folder holding an earlier run is refused (segexp.training.run_folder)
    train(cfg, Path(p["run_dir"]))
    return {"peak_rss_mb": peak_rss_mb(), "baseline_rss_mb": baseline}


def work_prepare(p: dict[str, Any]) -> dict[str, Any]:
    """Volumes/s and voxel MB/s of ``segexp-prepare`` (fresh output folder each repeat)."""
    import logging

    import nibabel as nib

    from segexp.data.prepare.volumes_to_slices import prepare

    logging.disable(logging.INFO)
    source = Path(p["source"])
    images = sorted(source.glob("*_image.nii*"))
    headers = [nib.load(str(f)) for f in sorted(source.glob("*.nii*"))]
    voxel_mb = sum(h.get_data_dtype().itemsize * math.prod(h.shape) for h in headers) / 2**20
    file_mb = sum(f.stat().st_size for f in source.glob("*.nii*")) / 2**20
    rates, counter = [], [0]

    def run() -> int:
        counter[0] += 1
        cfg = compose(
            [
                "volumes=phantom",
                f"volumes.source={source}",
                "volumes.phantom=null",
                f"out_dir={p['out_dir']}/run{counter[0]}",
                f"workers={p['workers']}",
                f"paths.root={p['out_dir']}",
            ],
            config_name="prepare",
        )
        prepare(cfg)
        return len(images)

    rate, rates = median_rate(run, p["repeats"], warmup=0)
    return {
        "volumes_per_s": rate,
        "voxel_mb_per_s": rate * voxel_mb / len(images),
        "file_mb_per_s": rate * file_mb / len(images),
        "volumes": len(images),
        "voxel_mb": voxel_mb,
        "rates": rates,
    }


def work_epoch(p: dict[str, Any]) -> dict[str, Any]:
    """Per-epoch time of a real ``segexp-train`` run (its MLflow ``time/*`` metrics, from EpochClock):
    medians over the epochs after the first (which traces the graphs) of the epoch time and of the
    fixed cost, everything but the training steps (validation, best and resume checkpoints, epoch
    images, logging)."""
    import mlflow
    import numpy as np

    from segexp.training.loop import train

    uri = f"sqlite:///{p['run_dir']}.db"
    cfg = compose([*p["overrides"], f"tracking.uri={uri}", "training.evaluate_after=false", "training.verbose=0"])
    _rmtree(Path(p["run_dir"]))
    Path(f"{p['run_dir']}.db").unlink(missing_ok=True)
    import segexp.training.loop

    own_loop = segexp.training.loop.fit_epochs
    if p.get("keras_fit"):  # the same run with Keras' own model.fit in place of segexp's epoch loop
        segexp.training.loop.fit_epochs = keras_fit
    try:
        train(cfg, Path(p["run_dir"]))
    finally:  # tiny runs share the test process
        segexp.training.loop.fit_epochs = own_loop
    client = mlflow.MlflowClient(uri)
    run = client.search_runs([client.get_experiment_by_name(cfg.tracking.experiment).experiment_id])[0]
    series = {
        k: [m.value for m in sorted(client.get_metric_history(run.info.run_id, f"time/{k}"), key=lambda m: m.step)]
        for k in ("epoch_s", "fixed_s", "fixed_fraction")
    }
    later = {k: v[1:] or v for k, v in series.items()}
    train_s = [e - f for e, f in zip(later["epoch_s"], later["fixed_s"])]
    return {
        "epochs": len(series["epoch_s"]),
        "steps_per_epoch": cfg.training.steps_per_epoch,
        "train_s": float(np.median(train_s)),
        "batch": cfg.training.batch_size,
        "epoch_s": float(np.median(later["epoch_s"])),
        "fixed_s": float(np.median(later["fixed_s"])),
        "fixed_fraction": float(np.median(later["fixed_fraction"])),
        "first_epoch_s": series["epoch_s"][0],
    }


def keras_fit(
    model: Any,
    train: Any,
    valid: Any,
    *,
    epochs: int,
    initial_epoch: int = 0,
    validation_epochs: Sequence[int] = (),
    callbacks: Sequence[Any] = (),
    verbose: Any = "auto",
) -> Any:
    """:func:`segexp.training.fit_loop.fit_epochs`'s signature, run by plain ``model.fit`` (for comparison)."""
    return model.fit(
        train,
        validation_data=valid,
        validation_freq=list(validation_epochs),
        epochs=epochs,
        initial_epoch=initial_epoch,
        callbacks=list(callbacks),
        shuffle=False,
        verbose=verbose,
    )


def work_fit_loop(p: dict[str, Any]) -> dict[str, Any]:
    """Images/s of the training steps of real ``segexp-train`` epochs (loader, callbacks, MLflow) against
    ``model.train_on_batch`` on the same batches and model, interleaved epoch by epoch in one process.

    A probe callback (after segexp's own, so the epoch clock does not see it) takes the time from the
    epoch's start to its last training step; at the epoch's end it reads the epoch's batches from a
    loader built like the run's (same seed, same draws, read before timing) and times
    ``train_on_batch`` on them. Epoch 1 (graph tracing) is left out of the medians.
    """
    import keras
    import numpy as np

    from segexp.data.runtime.augment import Augmenter
    from segexp.data.runtime.dataset import open_dataset
    from segexp.training.loop import train, validate_run_config

    set_tf_threads(p.get("threads"))
    uri = f"sqlite:///{p['run_dir']}.db"
    cfg = compose([*p["overrides"], f"tracking.uri={uri}", "training.evaluate_after=false", "training.verbose=0"])
    typed = validate_run_config(cfg)
    dataset = open_dataset(typed.dataset, typed.model.num_classes)
    augmenter = Augmenter(typed.augmentation.transforms) if typed.augmentation.transforms else None
    twin, _ = run_loaders(typed, dataset, augmenter)  # the run's training batches, epoch by epoch
    rows: list[dict[str, float]] = []

    class Probe(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self.start = self.last = time.perf_counter()
            self.steps = 0

        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            self.last, self.steps = time.perf_counter(), self.steps + 1

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            fit_s = self.last - self.start
            twin.set_epoch(epoch)
            batches = [twin[i] for i in range(self.steps)]
            start = time.perf_counter()
            for x, y in batches:
                self.model.train_on_batch(x, y)
            tob_s = time.perf_counter() - start
            images = sum(len(x) for x, _ in batches)
            rows.append({"fit": images / fit_s, "train_on_batch": images / tob_s})

    _rmtree(Path(p["run_dir"]))
    Path(f"{p['run_dir']}.db").unlink(missing_ok=True)
    train(cfg, Path(p["run_dir"]), callbacks=[Probe()])
    later = rows[1:] or rows
    ratios = [r["fit"] / r["train_on_batch"] for r in later]
    return {
        "fit": float(np.median([r["fit"] for r in later])),
        "train_on_batch": float(np.median([r["train_on_batch"] for r in later])),
        "ratio": float(np.median(ratios)),
        "ratios": ratios,
        "epochs": len(rows),
        "steps_per_epoch": typed.training.steps_per_epoch,
        "batch": typed.training.batch_size,
    }


WORKERS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "epoch": work_epoch,
    "fit_loop": work_fit_loop,
    "train_step": work_train_step,
    "loader": work_loader,
    "infer": work_infer,
    "memory": work_memory,
    "prepare": work_prepare,
}


#: ``--tiny`` runs the TensorFlow workers in this process (one TensorFlow start-up instead of a dozen).
IN_PROCESS: set[str] = set()


def monai_step(
    height: int, width: int, channels: int, num_classes: int, *, steps: int, repeats: int, threads: int, venv: Path
) -> dict[str, Any]:
    """MONAI's step (``scripts/monai_loop.py --step-time``) in a fresh process of its own environment."""
    from accuracy import ensure_monai_venv, monai_env

    python = ensure_monai_venv(venv)
    cmd = [
        str(python),
        str(REPO / "scripts" / "monai_loop.py"),
        "--step-time",
        str(height),
        str(width),
        str(channels),
        str(num_classes),
        "--steps",
        str(steps),
        "--repeats",
        str(repeats),
        "--threads",
        str(threads),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=monai_env(), cwd=REPO)
    for line in proc.stdout.splitlines():
        if line.startswith("STEP_TIME "):
            print(f"  monai: {line[10:][:300]}", file=sys.stderr, flush=True)
            return json.loads(line[10:])
    raise RuntimeError(f"MONAI step timing failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")


def planned_network(side: int, channels: int = 1, num_classes: int = 9) -> list[str]:
    """The overrides the plan gives a ``side``x``side`` slice set (``segexp.planning.rules``): network, widths, size."""
    from segexp.planning import rules

    widths = list(rules.WIDTHS[: rules.strides_for(side) + 1])
    return [
        f"model={rules.NETWORK}",
        f"model.image_height={side}",
        f"model.image_width={side}",
        f"model.image_channels={channels}",
        f"model.num_classes={num_classes}",
        f"model.channels=[{','.join(map(str, widths))}]",
    ]


def run_worker(kind: str, params: dict[str, Any], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run one measurement in a fresh Python process and return its result dict."""
    if kind in IN_PROCESS:
        return WORKERS[kind](json.loads(json.dumps(params)))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps({"kind": kind, **params})]
    full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONWARNINGS": "ignore", **(env or {})}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=full_env, cwd=REPO)
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):  # also on stderr as it arrives: a later failure loses nothing
            print(f"  {kind}: {line[len(RESULT_PREFIX) :][:400]}", file=sys.stderr, flush=True)
            return json.loads(line[len(RESULT_PREFIX) :])
    raise RuntimeError(f"benchmark worker {kind} {params} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")


# ----------------------------------------------------------------------------- data


def make_slice_dataset(root: Path, train_slices: int, size: int, slices_per_case: int = 36) -> list[str]:
    """Phantom slice dataset ``root`` with ``train_slices`` training slices; returns its dataset overrides."""
    cases = max(1, train_slices // slices_per_case)
    overrides = [
        "dataset=phantom",
        f"dataset.root={root}",
        f"dataset.phantom.size={size}",
        f"dataset.phantom.num_slices={slices_per_case}",
        f"dataset.phantom.cases={{train: {cases}, valid: 1, test: 0}}",
    ]
    from segexp.data.phantom import write_phantom_dataset

    write_phantom_dataset(
        root, cases={"train": cases, "valid": 1, "test": 0}, num_slices=slices_per_case, size=size, seed=0
    )
    return overrides


def make_volume(path: Path, size: int, num_slices: int) -> Path:
    """One phantom CT volume (int16 HU) of ``num_slices`` axial slices, saved as NIfTI."""
    if path.exists():
        return path
    from segexp.data.phantom import make_phantom_volume, phantom_affine, save_nifti

    image, _ = make_phantom_volume(seed=1, size=size, num_slices=num_slices)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_nifti(path, image, phantom_affine(size, num_slices), description="segexp benchmark phantom", label=False)
    return path


# ----------------------------------------------------------------------------- the machine


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        mem_gib = float("nan")
    from segexp.config.resolvers import usable_cores

    cores = usable_cores()
    versions = {}
    for dist in ("tensorflow", "keras", "albumentations", "opencv-python-headless", "nibabel", "numpy"):
        try:
            from importlib.metadata import version

            versions[dist] = version(dist)
        except Exception:  # noqa: BLE001 - a missing package is reported as such
            versions[dist] = "missing"
    gpus = (
        subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout.strip()
        if _has("nvidia-smi")
        else ""
    )
    return {
        "cpu": cpu,
        "cores": cores,
        "memory_gib": round(mem_gib, 1),
        "python": platform.python_version(),
        "os": platform.platform(),
        "gpu": gpus or "none",
        "versions": versions,
    }


def _has(program: str) -> bool:
    from shutil import which

    return which(program) is not None


# ----------------------------------------------------------------------------- the suite


class SuiteRun(NamedTuple):
    """What every benchmark section reads: the options, the work folder, the machine."""

    args: argparse.Namespace
    tiny: bool
    work: Path
    cores: int
    repeats: int
    machine: dict[str, Any]


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def bench_loader(run: SuiteRun) -> dict[str, Any]:
    """Loader at 512x512 vs the model's training step at 512x512."""
    tiny, work, cores, repeats = run.tiny, run.work, run.cores, run.repeats
    size = 64 if tiny else 512
    data = make_slice_dataset(work / f"loader_{size}", 8 if tiny else 72, size, slices_per_case=8 if tiny else 36)
    shape = [f"model.image_height={size}", f"model.image_width={size}"]
    loader = []
    worker_counts = [0, 2] if tiny else sorted({0, 1, 2, *[w for w in (4, 8, 16) if w <= cores]})
    for workers in worker_counts:
        for processes in [False] if workers == 0 else [False, True]:
            if processes and tiny:
                continue
            say(f"loader: workers={workers} multiprocessing={processes}")
            r = run_worker(
                "loader",
                {
                    "overrides": [
                        *data,
                        *shape,
                        f"training.loader.workers={workers}",
                        f"training.loader.use_multiprocessing={processes}",
                    ],
                    "repeats": repeats,
                },
            )
            loader.append({"workers": workers, "multiprocessing": processes, **r})
    models = {}
    for name, spec in MODELS.items():
        say(f"loader: model step {name} at {size}x{size}")
        models[name] = run_worker(
            "train_step",
            {
                "overrides": [*spec["overrides"], *shape],
                "batch": spec["batch"],
                "jit": False,
                "steps": 1 if tiny else 3,
                "repeats": repeats,
                "threads": None,
            },
        )
    return {"size": size, "loader": loader, "models": models}


def bench_train(run: SuiteRun) -> dict[str, Any]:
    """Training step: default preset and the reduced flexunet_hocm, XLA off/on, 1 thread / all cores."""
    tiny, cores, repeats = run.tiny, run.cores, run.repeats
    rows = []
    native = native_bf16()
    gpu = run.machine["gpu"] != "none"
    # (threads, xla, precision) per model; bf16 at 1 thread and all cores, XLA with fp32 only (on CPUs).
    # Emulated bf16 (no native support) is 5-10x slower: one row at all cores, one step per repetition.
    plan = (
        [(cores, False, "fp32"), (cores, False, "bf16")]
        if tiny
        else [
            (1, False, "fp32"),
            (1, True, "fp32"),
            *([(1, False, "bf16")] if native else []),
            (cores, False, "fp32"),
            (cores, True, "fp32"),
            (cores, False, "bf16"),
        ]
    )
    for name, spec in MODELS.items():
        size = [64, 64] if tiny else ([128, 128] if name == "default" else [256, 256])
        shape = [f"model.image_height={size[0]}", f"model.image_width={size[1]}"]
        for threads, jit, precision in plan:
            slow = precision == "bf16" and not native and not tiny
            say(f"train: {name} threads={threads} xla={jit} precision={precision}")
            r = run_worker(
                "train_step",
                {
                    "overrides": [*spec["overrides"], *shape],
                    "batch": spec["batch"],
                    "jit": jit,
                    "precision": precision,
                    "steps": 1 if tiny or slow else 5,
                    "repeats": 1 if slow else repeats,
                    "threads": threads,
                },
            )
            rows.append(
                {
                    "model": name,
                    "size": size,
                    "batch": spec["batch"],
                    "threads": threads,
                    "xla": jit,
                    "precision": precision,
                    **r,
                }
            )
    if not tiny:  # the full flexunet_hocm at 512x512: a few steps; bf16 where it is native (emulated: ~6x slower)
        full = [(1, False, "fp32"), (cores, False, "fp32")] + ([(cores, False, "bf16")] if native else [])
        if gpu:
            full = [(cores, False, "fp32"), (cores, True, "fp32"), (cores, False, "auto"), (cores, True, "auto")]
        for threads, jit, precision in full:
            say(f"train: flexunet_hocm 512x512 threads={threads} xla={jit} precision={precision}")
            r = run_worker(
                "train_step",
                {
                    "overrides": ["model=flexunet_hocm"],
                    "batch": 2,
                    "jit": jit,
                    "precision": precision,
                    "steps": 10 if gpu else 1,
                    "repeats": repeats if gpu else 1,
                    "threads": threads,
                },
            )
            rows.append(
                {
                    "model": "hocm_full",
                    "size": [512, 512],
                    "batch": 2,
                    "threads": threads,
                    "xla": jit,
                    "precision": precision,
                    **r,
                }
            )
    return {"rows": rows, "native_bf16": native, "cores": cores}


def bench_fit(run: SuiteRun) -> dict[str, Any]:
    """The fit loop: real segexp-train epochs against train_on_batch on the same batches, per model."""
    tiny, work = run.tiny, run.work
    rows = []
    # flexunet_hocm's 8 classes become the phantom's 6 (num_classes only sizes the head)
    plan = [
        ("default", 128, 8, [], 30),
        ("hocm_like", 256, 2, [*MODELS["hocm_like"]["overrides"], "model.num_classes=6"], 10),
    ]
    for name, size, batch, model_overrides, steps in plan:
        if tiny:
            size, steps, model_overrides = 32, 2, ["model.num_layers=3"]
        data = make_slice_dataset(work / f"fit_{size}", 8 if tiny else 72, size, slices_per_case=8 if tiny else 36)
        say(f"fit loop: {name} at {size}x{size}")
        r = run_worker(
            "fit_loop",
            {
                "overrides": [
                    *data,
                    *model_overrides,
                    f"model.image_height={size}",
                    f"model.image_width={size}",
                    f"training.batch_size={batch}",
                    f"training.steps_per_epoch={steps}",
                    f"training.epochs={2 if tiny else 4}",
                ],
                "run_dir": str(work / f"fit_run_{name}"),
            },
        )
        rows.append({"model": name, "size": size, **r})
    # The same runs' training steps under segexp's epoch loop and under plain Keras model.fit,
    # in alternating fresh processes (fit's cost shows only across processes: it traces the step).
    # The default preset only: four runs of the hocm-like model (8 s per step on 2 cores
    # without AVX-512) would add ~25 min to --only fit.
    keras_rows = []
    for name, size, batch, model_overrides, steps in plan[:1]:
        if tiny:
            size, steps, model_overrides = 32, 2, ["model.num_layers=3"]
        data = make_slice_dataset(work / f"fit_{size}", 8 if tiny else 72, size, slices_per_case=8 if tiny else 36)
        overrides = [
            *data,
            *model_overrides,
            f"model.image_height={size}",
            f"model.image_width={size}",
            f"training.batch_size={batch}",
            f"training.steps_per_epoch={steps}",
            f"training.epochs={2 if tiny else 4}",
        ]
        rates: dict[str, list[float]] = {"segexp": [], "keras": []}
        for _ in range(1 if tiny else 2):
            for loop in rates:
                say(f"fit loop: {name} at {size}x{size}, {loop} loop")
                r = run_worker(
                    "epoch",
                    {
                        "overrides": overrides,
                        "keras_fit": loop == "keras",
                        "run_dir": str(work / f"fit_loop_{name}_{loop}"),
                    },
                )
                rates[loop].append(batch * steps / r["train_s"])
        keras_rows.append(
            {
                "model": name,
                "size": size,
                "batch": batch,
                "steps_per_epoch": steps,
                **rates,
                "ratio": statistics.median(rates["segexp"]) / statistics.median(rates["keras"]),
            }
        )
    return {"rows": rows, "keras_rows": keras_rows}


def bench_peer(run: SuiteRun) -> dict[str, Any]:
    """The planned network's step against MONAI's own UNet step in PyTorch (scripts/monai_loop.py, its own venv),
    alternating fresh processes: segexp as planned on this machine (XLA and precision: the plan's rule and
    training.precision=auto), the other segexp variants, MONAI (fp32)."""
    tiny, cores, repeats = run.tiny, run.cores, run.repeats
    from segexp.models.precision import resolve_precision
    from segexp.planning.rules import xla_for
    from segexp.planning.steptime import this_machine

    rows = []
    venv = Path(run.args.monai_venv)
    sizes = [32] if tiny else run.args.peer_sizes
    planned_precision = resolve_precision("auto")
    planned = (xla_for(this_machine(), planned_precision), planned_precision)
    variants = {"segexp_xla_fp32": (True, "fp32"), "segexp_fp32": (False, "fp32")}
    if planned_precision != "fp32":
        variants.update(
            {
                f"segexp_xla_{planned_precision}": (True, planned_precision),
                f"segexp_{planned_precision}": (False, planned_precision),
            }
        )
    planned_name = next(name for name, v in variants.items() if v == planned)
    for side in sizes:
        overrides = planned_network(side)
        times: dict[str, list[float]] = {name: [] for name in [*variants, "monai"]}
        first: dict[str, list[float]] = {k: [] for k in times}
        for _ in range(1 if tiny else 2):
            for system in times:
                say(f"peer: {system} at {side}x{side}")
                if system == "monai":
                    r = monai_step(side, side, 1, 9, steps=1 if tiny else 5, repeats=repeats, threads=cores, venv=venv)
                    times[system].append(r["step_s"])
                else:
                    jit, precision = variants[system]
                    r = run_worker(
                        "train_step",
                        {
                            "overrides": overrides,
                            "batch": 8,
                            "jit": jit,
                            "precision": precision,
                            "steps": 1 if tiny else 5,
                            "repeats": repeats,
                            "threads": cores,
                        },
                    )
                    times[system].append(8 / r["images_per_s"])
                first[system].append(r["first_step_s"])
        med = {k: statistics.median(v) for k, v in times.items()}
        rows.append(
            {
                "size": side,
                "batch": 8,
                "overrides": overrides,
                "step_s": med,
                "step_s_all": times,
                "first_step_s": {k: statistics.median(v) for k, v in first.items()},
                "planned": planned_name,
                "ratio_planned": med[planned_name] / med["monai"],
                "ratio": {k: med[k] / med["monai"] for k in variants},
            }
        )
    return {"rows": rows, "threads": cores}


def bench_infer(run: SuiteRun) -> dict[str, Any]:
    """Inference on a 128-slice volume: each model on a volume of its own input size (as its training data), and the
    default model on a 512x512 CT as well (I/O-bound, see BENCHMARKS.md)."""
    tiny, work, repeats = run.tiny, run.work, run.repeats
    rows = []
    num = 8 if tiny else 128
    plan = [
        ("default", 128, 128, True, "fp32"),
        ("default", 128, 128, False, "bf16"),
        ("default", 128, 512, False, "fp32"),
        ("hocm_like", 256, 512, True, "fp32"),
    ]
    if native_bf16() or tiny:  # emulated bf16 on the big model: ~10 min for one number that says "slower"
        plan.append(("hocm_like", 256, 512, False, "bf16"))
    for name, size, in_plane, target, precision in plan:
        if tiny:
            size, in_plane = 32, 64 if in_plane == 512 else 32
        volume = make_volume(work / f"volume_{in_plane}x{num}.nii.gz", in_plane, num)
        say(f"infer: {name} at {size}x{size} on a {in_plane}x{in_plane}x{num} volume, {precision}")
        r = run_worker(
            "infer",
            {
                "overrides": [
                    *MODELS[name]["overrides"],
                    f"model.image_height={size}",
                    f"model.image_width={size}",
                ],
                "batch": 8,
                "volume": str(volume),
                "out_dir": str(work / f"infer_{name}"),
                "precision": precision,
                "repeats": repeats if name == "default" else max(1, repeats - 1),
                "per_slice_count": min(num, 8 if tiny else 32),
                "threads": None,
            },
        )
        rows.append(
            {
                "model": name,
                "size": size,
                "volume": [in_plane, in_plane, num],
                "target": target,
                "precision": precision,
                **r,
            }
        )
    return {"rows": rows}


def bench_zoo(run: SuiteRun) -> dict[str, Any]:
    """The model zoo: every network preset of the architecture sweep at one size (--only zoo)."""
    tiny, work, repeats = run.tiny, run.work, run.repeats
    rows = []
    size, num = (32, 8) if tiny else (128, 64)
    volume = make_volume(work / f"volume_{size}x{num}.nii.gz", size, num)
    for preset in zoo_presets():
        shape = [
            f"model={preset}",
            f"model.image_height={size}",
            f"model.image_width={size}",
            "model.image_channels=1",
        ]
        if tiny:
            shape.append("debug=fast")
        say(f"zoo: {preset} at {size}x{size}")
        train = run_worker(
            "train_step",
            {
                "overrides": shape,
                "batch": 8,
                "jit": False,
                "precision": "fp32",
                "steps": 1 if tiny else 3,
                "repeats": repeats,
                "threads": None,
            },
        )
        say(f"zoo: {preset} at {size}x{size}, XLA")
        try:
            xla = run_worker(
                "train_step",
                {
                    "overrides": shape,
                    "batch": 8,
                    "jit": True,
                    "precision": "fp32",
                    "steps": 1 if tiny else 3,
                    "repeats": repeats,
                    "threads": None,
                },
            )
        except RuntimeError as err:  # a network XLA cannot compile is a result, not a crash of the suite
            say(f"  {preset}: XLA failed: {str(err).splitlines()[0]}")
            xla = {"images_per_s": float("nan"), "first_step_s": float("nan")}
        infer = run_worker(
            "infer",
            {
                "overrides": shape,
                "batch": 8,
                "volume": str(volume),
                "out_dir": str(work / f"zoo_infer_{preset}"),
                "precision": "fp32",
                "repeats": repeats,
                "per_slice_count": 2 if tiny else 4,
                "threads": None,
            },
        )
        rows.append(
            {
                "model": preset,
                "size": size,
                "params": train["params"],
                "train_images_per_s": train["images_per_s"],
                "first_step_s": train["first_step_s"],
                "xla_images_per_s": xla["images_per_s"],
                "xla_first_step_s": xla["first_step_s"],
                "infer_slices_per_s": infer["end_to_end"],
                "forward_slices_per_s": infer["bare_forward"],
                "volume": [size, size, num],
            }
        )
    return {"rows": rows}


def bench_memory(run: SuiteRun) -> dict[str, Any]:
    """Memory: one training epoch on 36, 144, 576 slices."""
    tiny, work = run.tiny, run.work
    rows = []
    counts = [8, 16] if tiny else [36, 144, 576]
    size = 32 if tiny else 128
    for count in counts:
        data = make_slice_dataset(work / f"memory_{count}", count, size, slices_per_case=8 if tiny else 36)
        say(f"memory: one epoch on {count} slices")
        r = run_worker(
            "memory",
            {
                "overrides": [
                    *data,
                    f"model.image_height={size}",
                    f"model.image_width={size}",
                    "model.num_layers=3" if tiny else "model.num_layers=5",
                    "training.epochs=1",
                    "training.steps_per_epoch=null",
                    "training.foreground_fraction=0",
                    "training.evaluate_after=false",
                    "training.epoch_images.num=0",
                    "training.verbose=0",
                ],
                "run_dir": str(work / f"memory_run_{count}"),
            },
        )
        rows.append({"slices": count, **r})
    return {"rows": rows, "size": size}


def bench_epoch(run: SuiteRun) -> dict[str, Any]:
    """Epochs: the fixed per-epoch cost at default settings, phantom and a 36-slice real set."""
    tiny, work = run.tiny, run.work
    rows = []
    plan = [("phantom (default run)", [])]
    if HOCM_MINI.is_dir():
        plan.append(("hocmvalves_mini (36 real slices)", ["experiment=hocmvalves_mini", f"dataset.root={HOCM_MINI}"]))
    for label, overrides in plan:
        if tiny:
            overrides = [
                *overrides,
                "debug=fast",
                "model.image_height=32",
                "model.image_width=32",
                "model.num_layers=3",
                "training.steps_per_epoch=2",
            ]
        say(f"epoch: {label}")
        r = run_worker(
            "epoch",
            {
                "overrides": [*overrides, f"training.epochs={2 if tiny else 3}"],
                "run_dir": str(work / f"epoch_run_{len(rows)}"),
            },
        )
        rows.append({"data": label, **r})
    return {"rows": rows}


def bench_prepare(run: SuiteRun) -> dict[str, Any]:
    """Prepare: volumes/s with 1 and 2 workers."""
    tiny, work, repeats = run.tiny, run.work, run.repeats
    from segexp.data.phantom import write_phantom_volumes

    n, size, num = (3, 32, 8) if tiny else (8, 256, 96)
    source = work / f"prepare_volumes_{n}x{size}x{num}"
    write_phantom_volumes(source, num_cases=n, size=size, num_slices=num, seed=0)
    rows = []
    for workers in (1, 2):
        say(f"prepare: workers={workers}")
        out = work / f"prepare_out_{workers}"
        _rmtree(out)
        r = run_worker("prepare", {"source": str(source), "out_dir": str(out), "workers": workers, "repeats": repeats})
        rows.append({"workers": workers, **r})
        _rmtree(out)
    return {"rows": rows, "volume": [size, size, num]}


#: The sections, in the order they run: name -> function (``--only`` names them).
SECTIONS: dict[str, Callable[[SuiteRun], dict[str, Any]]] = {
    "loader": bench_loader,
    "train": bench_train,
    "fit": bench_fit,
    "peer": bench_peer,
    "infer": bench_infer,
    "zoo": bench_zoo,
    "memory": bench_memory,
    "epoch": bench_epoch,
    "prepare": bench_prepare,
}
#: What a run without ``--only`` measures (epoch and zoo only on request).
DEFAULT_SECTIONS = ("loader", "train", "fit", "peer", "infer", "memory", "prepare")


def suite(args: argparse.Namespace) -> dict[str, Any]:
    """Run the wanted sections; returns all results (also printed as they arrive)."""
    tiny = args.tiny
    if tiny:
        IN_PROCESS.update({"train_step", "loader", "infer", "memory", "epoch", "fit_loop"})
    work = Path(args.work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    host = machine()
    run = SuiteRun(args, tiny, work, host["cores"], 1 if tiny else args.repeats, host)
    results: dict[str, Any] = {"machine": host, "tiny": tiny, "repeats": run.repeats, "sections": {}}
    wanted = set(args.only or DEFAULT_SECTIONS)
    if tiny and not args.only:  # the smoke run (CI) builds no MONAI environment; --tiny --only peer uses one
        wanted.discard("peer")
    for name, bench in SECTIONS.items():
        if name in wanted:
            results["sections"][name] = bench(run)
    return results


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


# ----------------------------------------------------------------------------- report


def _f(x: float, digits: int = 1) -> str:
    return f"{x:,.{digits}f}"


def report(results: dict[str, Any]) -> str:
    """Markdown tables and the target ratios for ``results``."""
    m, s = results["machine"], results["sections"]
    out = [
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB RAM, GPU: {m['gpu']}; "
        f"Python {m['python']}, " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()) + ".",
        f"Each number is the median of {results['repeats']} timed repetitions after a warm-up"
        + (" (TINY smoke run: numbers are meaningless)." if results["tiny"] else "."),
        "",
    ]
    checks: list[tuple[str, bool]] = []
    if "loader" in s:
        sec = s["loader"]
        size = sec["size"]
        out += [
            f"### Loader vs model (augmentation=full, {size}x{size}, batch as the model)",
            "",
            "| loader workers | kind | samples/s delivered by the workers | samples/s received by `fit` |",
            "|---|---|---|---|",
        ]
        for r in sec["loader"]:
            kind = "—" if r["workers"] == 0 else ("processes" if r["multiprocessing"] else "threads")
            produced = "—" if r.get("produced_per_s") is None else _f(r["produced_per_s"])
            out.append(f"| {r['workers']} | {kind} | {produced} | {_f(r['samples_per_s'])} |")
        default_loader = next(
            (r for r in sec["loader"] if r["workers"] == 2 and not r["multiprocessing"]), sec["loader"][-1]
        )
        out += [
            "",
            f"| model ({size}x{size}) | batch | params | training images/s | `fit`-received (2 threads) / model |",
            "|---|---|---|---|---|",
        ]
        for name, r in sec["models"].items():
            ratio = default_loader["samples_per_s"] / r["images_per_s"]
            checks.append((f"loader / {name} training step >= 2 (got {ratio:.1f})", ratio >= 2))
            out.append(
                f"| {MODELS[name]['label']} | {MODELS[name]['batch']} | {r['params']:,} | "
                f"{_f(r['images_per_s'], 2)} | **{ratio:.1f}** |"
            )
        out.append("")
    if "train" in s:
        sec = s["train"]
        out += [
            "### Training step (random uint8 batch, `model.train_on_batch`)",
            "",
            "| model | input | batch | threads | XLA | precision | images/s | bf16 / fp32 | / original tool |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        rate = {
            (r["model"], r["size"][0], r["threads"], r["xla"], r["precision"]): r["images_per_s"] for r in sec["rows"]
        }
        for r in sec["rows"]:
            key = (r["model"], r["size"][0], r["threads"], r["xla"])
            vs_fp32 = (
                f"{r['images_per_s'] / rate[(*key, 'fp32')]:.2f}x"
                if r["precision"] != "fp32" and (*key, "fp32") in rate
                else ""
            )
            original = ORIGINAL_TOOL.get(
                (r["model"], r["size"][0], "all" if r["threads"] == sec["cores"] else r["threads"])
            )
            vs_original = f"{r['images_per_s'] / original:.2f}x" if original and not r["xla"] else ""
            out.append(
                f"| {LABELS[r['model']]} | {r['size'][0]}x{r['size'][1]} | {r['batch']} | "
                f"{r['threads']} | {'on' if r['xla'] else 'off'} | {r['precision']} | "
                f"{_f(r['images_per_s'], 2)} | {vs_fp32} | {vs_original} |"
            )
        cores = sec["cores"]
        bf16, fp32 = (
            rate.get(("hocm_like", 256, cores, False, "bf16")),
            rate.get(("hocm_like", 256, cores, False, "fp32")),
        )
        if bf16 and fp32 and sec["native_bf16"]:
            checks.append((f"bf16 >= 1.5x fp32 on the HOCM-like model (got {bf16 / fp32:.2f})", bf16 / fp32 >= 1.5))
        out += [
            "",
            "bf16 on this machine: "
            + (
                "native (`training.precision=auto` picks it)"
                if sec["native_bf16"]
                else "**emulated** (no `avx512_bf16`/`amx_bf16` CPU flag, no GPU): `auto` picks fp32 here; "
                "the bf16 rows show "
                "what forcing it costs, and the full model is not run in bf16"
            )
            + ".",
            "The original tool's figures (issue 13: 1.51 images/s on both cores, 0.79 on one, 0.164 for the full "
            "model on one) were measured on the 2-core AMD EPYC with AVX512_BF16; the ratio means segexp against "
            "the original only when this table comes from that CPU.",
            "",
        ]
        for (model, side, threads), original in ORIGINAL_TOOL.items():
            t = cores if threads == "all" else threads
            best = max(
                (v for (m, sd, th, x, _), v in rate.items() if (m, sd, th) == (model, side, t) and not x), default=None
            )
            if best is not None:
                checks.append(
                    (
                        f"segexp >= 1.5x the original tool, {LABELS[model]} {side}x{side}, {t} thread(s) "
                        f"(got {best / original:.2f}x)",
                        best / original >= 1.5,
                    )
                )
    if "fit" in s:
        out += [
            "### The fit loop: real `segexp-train` epochs against `train_on_batch` on the same batches",
            "",
            "| model | input | batch | steps/epoch | `segexp-train` images/s | `train_on_batch` images/s | ratio |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in s["fit"]["rows"]:
            checks.append(
                (
                    f"fit loop >= 0.9 of train_on_batch, {MODELS[r['model']]['label']} (got {r['ratio']:.2f})",
                    r["ratio"] >= 0.9,
                )
            )
            out.append(
                f"| {MODELS[r['model']]['label']} | {r['size']}x{r['size']} | {r['batch']} | "
                f"{r['steps_per_epoch']} | {_f(r['fit'], 2)} | {_f(r['train_on_batch'], 2)} | **{r['ratio']:.2f}** |"
            )
        out += [
            "",
            "### segexp's epoch loop against Keras' `model.fit` (the same `segexp-train` runs, "
            "alternating fresh processes)",
            "",
            "| model | input | batch | steps/epoch | segexp loop images/s (each run) | `model.fit` images/s "
            "(each run) | ratio of medians |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in s["fit"].get("keras_rows", []):
            out.append(
                f"| {MODELS[r['model']]['label']} | {r['size']}x{r['size']} | {r['batch']} | "
                f"{r['steps_per_epoch']} | {', '.join(_f(v, 2) for v in r['segexp'])} | "
                f"{', '.join(_f(v, 2) for v in r['keras'])} | **{r['ratio']:.2f}** |"
            )
        out.append("")
    if "peer" in s:
        rows = s["peer"]["rows"]
        systems = list(rows[0]["step_s"]) if rows else []
        out += [
            "### The planned network's step against MONAI's in PyTorch (batch 8, MONAI in fp32, "
            f"{s['peer']['threads']} threads, alternating fresh processes; s/step, first step in brackets)",
            "",
            "| input | planned network | " + " | ".join(f"`{k}`" for k in systems) + " | planned / MONAI |",
            "|---|---|" + "---|" * len(systems) + "---|",
        ]
        for r in rows:
            t, f, planned = r["step_s"], r["first_step_s"], r.get("planned", "segexp_xla")
            checks.append(
                (
                    f"planned step ({planned}) faster than MONAI's at {r['size']}x{r['size']} (segexp / MONAI "
                    f"{r['ratio_planned']:.2f})",
                    r["ratio_planned"] < 1.0,
                )
            )
            network = " ".join(o for o in r["overrides"] if o.startswith(("model=", "model.channels")))
            cells = [(f"**{t[k]:.3f}**" if k == planned else f"{t[k]:.3f}") + f" ({f[k]:.1f})" for k in systems]
            out.append(
                f"| {r['size']}x{r['size']} | `{network}` | " + " | ".join(cells) + f" | **{r['ratio_planned']:.2f}** |"
            )
        out.append("")
    if "epoch" in s:
        out += [
            "### Fixed per-epoch cost (real `segexp-train` epochs at default settings, MLflow on)",
            "",
            "| data | steps/epoch | epoch (s) | fixed: validation, checkpoints, images, logging (s) | "
            "fixed / epoch | first epoch (s, graph tracing) |",
            "|---|---|---|---|---|---|",
        ]
        for r in s["epoch"]["rows"]:
            checks.append(
                (
                    f"fixed per-epoch cost <= 10 % of the epoch, {r['data']} (got {100 * r['fixed_fraction']:.1f} %)",
                    r["fixed_fraction"] <= 0.10,
                )
            )
            out.append(
                f"| {r['data']} | {r['steps_per_epoch']} | {_f(r['epoch_s'])} | {_f(r['fixed_s'], 2)} | "
                f"**{100 * r['fixed_fraction']:.1f} %** | {_f(r['first_epoch_s'])} |"
            )
        out.append("")
    if "infer" in s:
        out += [
            "### Inference on a NIfTI volume (slices/s)",
            "",
            "| model | input | precision | volume | segexp-infer end to end | bare forward | one `predict` per slice | "
            "end-to-end / forward | end-to-end / per-slice |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in s["infer"]["rows"]:
            ratio = r["end_to_end"] / r["bare_forward"]
            speedup = r["end_to_end"] / r["per_slice"]
            v = r["volume"]
            if r["target"]:
                checks.append(
                    (
                        f"inference {r['model']} on a {v[0]}x{v[1]}x{v[2]} volume: end-to-end >= 0.85 of "
                        f"bare forward (got {ratio:.2f})",
                        ratio >= 0.85,
                    )
                )
            out.append(
                f"| {MODELS[r['model']]['label']} | {r['size']}x{r['size']} | {r.get('precision', 'fp32')} | "
                f"{v[0]}x{v[1]}x{v[2]} | "
                f"{_f(r['end_to_end'])} | {_f(r['bare_forward'])} | {_f(r['per_slice'])} | "
                f"**{ratio:.2f}** | **{speedup:.1f}x** |"
            )
        out.append("")
    if "zoo" in s:
        rows = s["zoo"]["rows"]
        v = rows[0]["volume"] if rows else [0, 0, 0]
        out += [
            f"### Model zoo ({rows[0]['size'] if rows else 0}x{rows[0]['size'] if rows else 0}, 1 channel, "
            "6 classes, batch 8, fp32, all cores)",
            "",
            "| `model=` | params | training images/s, XLA off / on | XLA / off | first step (s), XLA off / on | "
            f"segexp-infer slices/s ({v[0]}x{v[1]}x{v[2]} NIfTI) | bare forward slices/s |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            xla, first_xla = r.get("xla_images_per_s", math.nan), r.get("xla_first_step_s", math.nan)
            out.append(
                f"| `{r['model']}` | {r['params']:,} | {_f(r['train_images_per_s'], 2)} / {_f(xla, 2)} | "
                f"**{xla / r['train_images_per_s']:.2f}x** | {_f(r.get('first_step_s', math.nan))} / "
                f"{_f(first_xla)} | {_f(r['infer_slices_per_s'])} | {_f(r['forward_slices_per_s'])} |"
            )
        out.append("")
    if "memory" in s:
        rows = s["memory"]["rows"]
        out += [
            f"### Memory: one training epoch ({s['memory']['size']}x{s['memory']['size']}, "
            "augmentation=full, 2 loader threads)",
            "",
            "| training slices | peak RSS (MiB) | RSS before training (MiB) | growth (MiB) |",
            "|---|---|---|---|",
        ]
        for r in rows:
            out.append(
                f"| {r['slices']} | {_f(r['peak_rss_mb'], 0)} | {_f(r['baseline_rss_mb'], 0)} | "
                f"{_f(r['peak_rss_mb'] - r['baseline_rss_mb'], 0)} |"
            )
        ratio = rows[-1]["peak_rss_mb"] / rows[0]["peak_rss_mb"]
        checks.append(
            (
                f"memory flat: peak RSS {rows[-1]['slices']} / {rows[0]['slices']} slices <= 1.25 (got {ratio:.2f})",
                ratio <= 1.25,
            )
        )
        out += ["", f"Largest / smallest peak RSS: **{ratio:.2f}**.", ""]
    if "prepare" in s:
        v = s["prepare"]["volume"]
        out += [
            f"### segexp-prepare ({s['prepare']['rows'][0]['volumes']} phantom volumes of {v[0]}x{v[1]}x{v[2]})",
            "",
            "| worker processes | volumes/s | voxel MB/s (int16 image + uint8 label) | file MB/s (.nii.gz) |",
            "|---|---|---|---|",
        ]
        for r in s["prepare"]["rows"]:
            out.append(
                f"| {r['workers']} | {_f(r['volumes_per_s'], 2)} | {_f(r['voxel_mb_per_s'])} | "
                f"{_f(r['file_mb_per_s'])} |"
            )
        out.append("")
    out += ["### Targets", ""] + [f"- [{'x' if ok else ' '}] {text}" for text, ok in checks]
    results["checks"] = [{"check": text, "ok": ok} for text, ok in checks]
    return "\n".join(out) + "\n"


def update_markdown(path: Path, text: str, begin: str = BEGIN, end: str = END, append: str | None = None) -> None:
    """Replace the block between the markers ``begin`` and ``end`` (the bench's) in ``path`` with ``text``.

    A missing block is an error, or, when ``append`` is given, is added at the end of the
    document after the line ``append`` (a heading, say).
    """
    doc = path.read_text()
    if begin not in doc or end not in doc:
        if append is None:
            raise SystemExit(f"{path}: no {begin} ... {end} block to update")
        doc = f"{doc.rstrip()}\n\n{append}\n{begin}\n{end}\n"
    head, rest = doc.split(begin, 1)
    _, tail = rest.split(end, 1)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(f"{head}{begin}\n{text}{end}{tail}")
    os.replace(tmp, path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="seconds-scale smoke run (CI): numbers are meaningless")
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions per measurement (median)")
    parser.add_argument("--only", nargs="+", choices=list(SECTIONS))
    parser.add_argument(
        "--peer-sizes",
        type=int,
        nargs="+",
        default=[128, 256],
        help="peer: input sides of the planned network (128: the phantom's plan, 256: real slices on CPUs)",
    )
    parser.add_argument(
        "--monai-venv",
        default=str(REPO / "outputs" / "venvs" / "monai"),
        help="peer: virtual environment with torch and monai (built there once, as accuracy.py does)",
    )
    parser.add_argument("--work-dir", default=str(REPO / "outputs" / "bench"), help="synthetic data and outputs")
    parser.add_argument("--json", help="also write all results (with every repetition) to this JSON file")
    parser.add_argument("--update", help="rewrite the results block of this markdown file (BENCHMARKS.md)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        params = json.loads(args.worker)
        result = WORKERS[params.pop("kind")](params)
        print(RESULT_PREFIX + json.dumps(result), flush=True)
        return 0
    started = time.perf_counter()
    results = suite(args)
    text = report(results)
    results["seconds"] = time.perf_counter() - started
    print(text)
    print(f"(benchmark took {results['seconds'] / 60:.1f} min)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    if args.update and args.only:  # a partial run gets its own block: the full one stays whole
        name = "+".join(args.only)
        update_markdown(
            Path(args.update),
            text,
            f"<!-- bench:{name}:begin -->",
            f"<!-- bench:{name}:end -->",
            append=f"## Results of `--only {' '.join(args.only)}` (run on its own)",
        )
    elif args.update:
        update_markdown(Path(args.update), text)
    return 0 if all(c["ok"] for c in results.get("checks", [])) or args.tiny else 1


if __name__ == "__main__":
    sys.exit(main())
