#!/usr/bin/env python
"""Proof on real data, side by side: segexp's default recipe against MONAI itself (PyTorch), same wall time.

    python scripts/accuracy.py                                   # all four datasets, 10 min each, ACCURACY.md
    python scripts/accuracy.py --datasets hvsmr_mini --minutes 2
    python scripts/accuracy.py --datasets hocmvalves_mini --seeds 0 1 2    # means over three seeds
    python scripts/accuracy.py --monai-only --minutes 0.2 --markdown /tmp/A.md   # try MONAI alone

For every dataset:

1. ``segexp-train`` runs as a subprocess (``python -m segexp.cli.train`` of this checkout) with
   the dataset's overrides only, i.e. segexp's default recipe, plus
   ``training.max_time=<minutes>`` when this checkout has that key, ``hydra.run.dir`` under
   ``--out`` and MLflow tracking into ``<out>/mlflow.db`` (``--no-tracking``: ``tracking=none``).
   Its wall time is the whole ``segexp-train`` process, start to exit (start-up, tracing,
   validation, its test evaluation and MLflow included: ``process_seconds``); its training
   time the sum of the per-epoch times Keras prints; its steps those of Keras' epoch lines;
   its score ``evaluation/summary.json`` (test split) or ``segexp-evaluate`` on the scored split.
2. The pixels are exported with segexp's own reader (:func:`segexp.data.io.slices.load_pair`,
   the config segexp-train composes from the same overrides: dataset, ``model.image_height``,
   ``image_width``, ``image_channels``, ``seed``) into ``<work>/monai_input.npz``.
3. MONAI itself (``scripts/monai_loop.py``: ``monai.networks.nets.UNet`` 16-256 channels, 2
   residual units, instance norm, ``monai.losses.DiceCELoss``, Adam 1e-3, flips, batch 8,
   best validation epoch kept) trains in its own virtual environment (torch, monai, numpy;
   built once under ``--monai-venv``) twice: for segexp's whole process time (counted from
   the start of MONAI's script, stopping after the epoch that reaches it) and for segexp's
   number of optimiser steps (stopping at exactly that step). Its predictions of the scored
   split, at the model's input size, are scored by segexp's ``evaluate_split`` exactly as
   segexp's own model is (resized back to each slice's stored size, nearest neighbour).

Scores are segexp's: Dice per structure without background, per case in 3D on the case's
stacked slices, averaged over cases (a structure absent from a case's truth and
prediction is left out for that case), and their foreground mean.

The comparison is paired (:func:`paired_stats`, :func:`segexp.evaluation.paired.compare_seeds`): both
systems' per-case Dice (``summary.json`` ``per_case``) are paired on the same (case, seed), seed *i* of
segexp against seed *i* of MONAI, against each MONAI run (equal wall time, equal steps). Per structure
and for the foreground mean: each system's mean ± sd over the seeds of its run-level mean, the mean
paired difference ``d̄ = (1/n) Σ (segexp_j − MONAI_j)`` over the ``n`` pairs, its 95 % percentile
bootstrap CI (the pairs resampled) and the two-sided Wilcoxon signed-rank p-value
(:mod:`segexp.evaluation.statistics`). The target is judged on ``d̄`` of the foreground mean.

Datasets (read from ``../shared/data``; skipped with a message where it is absent):

* ``hvsmr_mini``: 5 MR patients, 9 classes, ``dataset=hvsmr_mini`` (the plan alone); scored on the test patient.
* ``hocmvalves_mini``: 2 CT patients, ``dataset=hocmvalves_mini`` (the plan alone): train 10001, valid 10002,
  no test patient: scored on the validation patient (which both systems also use to pick
  their best epoch).
* ``thorax_pulmonary``, ``thorax_aorta``: one CTA volume each with its own label table,
  a *model's* output (TotalSegmentator), prepared by ``segexp-prepare`` (``volumes=thorax_*``,
  ``window=cardiac_cta``, natural in-plane size) and cut along the slice axis into contiguous
  slabs of ``--slab-slices`` slices, assigned train, valid, train, test, train, ... in turn
  (60/20/20 %, every split spread along the volume, so a structure found only at one end
  is not missing from training), as a flat folder of links ``<case>-slabNN_<slice>.png``:
  each slab is a "case" of segexp's split. A within-patient relative comparison on
  model-made labels, never an accuracy claim. Trained with the default model (128x128).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from bench import compose, machine, update_markdown
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
MARKDOWN = REPO / "ACCURACY.md"
SLAB_PATTERN = ("train", "valid", "train", "test", "train")
EPOCH_LINE = re.compile(r"^\s*(\d+)/\d+ - (\d+)s - ")  # Keras verbose=2: "6/6 - 23s - 4s/step - loss: ..."
THORAX_NOTE = (
    "**Within-patient relative comparison on model-made labels** (TotalSegmentator output, not expert "
    "annotation): one volume, cut into contiguous slabs of {slab} slices (train, valid, train, test, train, ... "
    "in turn); each slab is scored as a case. Not an accuracy claim."
)

#: Nothing but the data for the slab sets: segexp-train plans the rest (plan=auto), as for every set.
THORAX_SEGEXP: list[str] = []  # the plan alone, as for every set

MONAI_SYSTEM = "MONAI (PyTorch)"
MONAI_VENV = REPO / "outputs" / "venvs" / "monai"
MONAI_REQUIREMENT = "monai>=1.4,<1.7"  # pip install torch <this> numpy, into the MONAI environment only


@dataclass
class Dataset:
    """How to train and score one dataset."""

    name: str
    needs: str  # folder below ../shared/data
    split: str  # the split both systems are scored on
    overrides: list[str] = field(default_factory=list)  # dataset/experiment overrides (segexp-train)
    volume: tuple[str, str] | None = None  # (case folder in thorax_cta, volumes preset): prepared + slabs
    note: str = ""
    segexp_only: list[str] = field(default_factory=list)  # segexp-train overrides where no experiment preset exists


DATASETS = {
    "hvsmr_mini": Dataset(
        "hvsmr_mini",
        "hvsmr_mini",
        "test",
        ["dataset=hvsmr_mini"],
        note="MR, 5 patients: train 10001, 10003, 10004; valid 10000; scored on the test patient 10002.",
    ),
    "hocmvalves_mini": Dataset(
        "hocmvalves_mini",
        "hocmvalves_mini",
        "valid",
        ["dataset=hocmvalves_mini"],
        note="CT, 2 patients: train 10001; **scored on the validation patient 10002** (there is no test patient; "
        "both systems also pick their best epoch on it, optimistic for both alike).",
    ),
    "thorax_pulmonary": Dataset(
        "thorax_pulmonary",
        "thorax_cta",
        "test",
        volume=("case_pulmonary", "thorax_pulmonary"),
        note=THORAX_NOTE,
        segexp_only=THORAX_SEGEXP,
    ),
    "thorax_aorta": Dataset(
        "thorax_aorta",
        "thorax_cta",
        "test",
        volume=("case_aorta", "thorax_aorta"),
        note=THORAX_NOTE,
        segexp_only=THORAX_SEGEXP,
    ),
}


# ----------------------------------------------------------------------------- thorax slabs


def slab_splits(
    slices: Sequence[int], slab_slices: int, pattern: Sequence[str] = SLAB_PATTERN
) -> list[tuple[int, str, list[int]]]:
    """``(slab number, split, slice indices)``: the sorted slices cut into contiguous slabs, splits in turn.

    ``round(n / slab_slices)`` slabs (at least ``len(pattern)`` when there are that many
    slices) of near-equal size, slab ``k`` going to ``pattern[k % len(pattern)]``.
    """
    ordered = sorted(int(s) for s in slices)
    if len(set(ordered)) != len(ordered):
        raise ValueError("slice indices must be unique")
    count = min(len(ordered), max(len(pattern), round(len(ordered) / max(1, slab_slices))))
    slabs = np.array_split(np.asarray(ordered), count) if ordered else []
    return [(k, pattern[k % len(pattern)], [int(i) for i in slab]) for k, slab in enumerate(slabs)]


def _slice_number(stem: str) -> str:
    match = re.search(r"_(\d+)$", stem)
    if match is None:
        raise ValueError(f"{stem}: no _<slice> at the end of the name")
    return match.group(1)


def build_slab_folder(prepared: Path, case: str, dest: Path, slab_slices: int) -> dict[str, list[str]]:
    """Links ``dest/{images,masks}/<case>-slabNN_<slice>.<ext>`` to the prepared slices (PNG, or ``.npy`` for
    other than 1 or 3 channels) and copies ``dataset.json`` (its ``storage``: channels, 2.5D context, decoding);
    returns split -> slab ids."""
    source = prepared / "train"
    stems = {int(_slice_number(p.stem)): p.name for p in (source / "images").glob(f"{case}_*")}
    if not stems:
        raise SystemExit(f"{source}/images: no slices of {case}")
    shutil.rmtree(dest, ignore_errors=True)
    for sub in ("images", "masks"):
        (dest / sub).mkdir(parents=True)
    cases: dict[str, list[str]] = {"train": [], "valid": [], "test": []}
    for number, split, indices in slab_splits(stems, slab_slices):
        slab = f"{case}-slab{number:02d}"
        cases[split].append(slab)
        for index in indices:
            name = Path(stems[index])
            for sub, file in (("images", name), ("masks", name.with_suffix(".png"))):
                (dest / sub / f"{slab}_{_slice_number(name.stem)}{file.suffix}").symlink_to(
                    (source / sub / file).resolve()
                )
    shutil.copy(prepared / "dataset.json", dest / "dataset.json")
    return cases


def _quote(value: Any) -> str:
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def prepare_thorax(ds: Dataset, work: Path, slab_slices: int, extra: Sequence[str] = ()) -> list[str]:
    """Link the volume, ``segexp-prepare`` it (``extra``: more segexp-prepare overrides, e.g.
    ``context_slices=1``), cut it into slabs; the dataset overrides of the slab folder."""
    case, preset = ds.volume
    volumes = work / "volumes"
    volumes.mkdir(parents=True, exist_ok=True)
    for kind in ("image", "label"):
        link = volumes / f"{case}_{kind}.nii.gz"
        if not link.is_symlink():
            link.symlink_to((SHARED / "thorax_cta" / case / f"{kind}.nii.gz").resolve())
    prepared, job = work / "prepared", work / "prepare_job"
    shutil.rmtree(job, ignore_errors=True)
    cmd = [
        sys.executable,
        "-m",
        "segexp.cli.prepare",
        f"volumes={preset}",
        f"volumes.source={_quote(volumes)}",
        f"out_dir={_quote(prepared)}",
        "window=cardiac_cta",
        f"split.cases={{train:[{case}],valid:[],test:[]}}",
        "workers=0",
        "tracking=none",
        f"hydra.run.dir={_quote(job)}",
        *extra,
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"segexp-prepare failed for {ds.name}:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    manifest = json.loads((prepared / "dataset.json").read_text())
    cases = build_slab_folder(prepared, case, work / "slabs", slab_slices)
    names = manifest["class_names"]
    rgb = ",".join(f"{n}:{manifest['rgb_map'][n]}" for n in names)
    return [
        "dataset=folder",
        f"dataset.name={ds.name}",
        f"dataset.root={_quote(work / 'slabs')}",
        "dataset.layout=flat",
        *(f"+dataset.cases.{s}=[{','.join(_quote(c) for c in ids)}]" for s, ids in cases.items()),  # folder: cases {}
        f"dataset.class_names=[{','.join(names)}]",
        f"dataset.rgb_map={{{rgb}}}".replace(" ", ""),
    ]


# ----------------------------------------------------------------------------- runs


def _env() -> dict[str, str]:
    """This checkout first on PYTHONPATH (its segexp and conf/), TensorFlow's C++ chatter off."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}


def stream(
    cmd: Sequence[str], log_path: Path, prefix: str, env: dict[str, str] | None = None
) -> tuple[int, float, list[str]]:
    """Run ``cmd`` (environment ``env``, default :func:`_env`), echo its output with ``prefix`` and into
    ``log_path``; (exit status, wall seconds from start to exit, lines)."""
    start = time.perf_counter()
    lines: list[str] = []
    with (
        open(log_path, "w") as log,
        subprocess.Popen(
            list(cmd),
            cwd=REPO,
            env=_env() if env is None else env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        ) as proc,
    ):
        for line in proc.stdout:
            log.write(line)
            lines.append(line.rstrip("\n"))
            print(f"  [{prefix}] {line}", end="", flush=True)
    return proc.returncode, time.perf_counter() - start, lines


def time_overrides(minutes: float) -> list[str]:
    """``training.max_time=<minutes>`` when this checkout's training config has the key, else nothing."""
    if "max_time" in OmegaConf.load(REPO / "conf" / "training" / "default.yaml"):
        return [f"training.max_time={minutes:g}"]
    print("  note: training.max_time is not in conf/training/default.yaml yet: segexp runs its preset's epochs")
    return []


def keras_epochs(lines: Sequence[str]) -> list[tuple[int, float]]:
    """``(steps, seconds)`` of every epoch from Keras' verbose=2 lines (``6/6 - 23s - ...``)."""
    return [(int(m.group(1)), float(m.group(2))) for m in map(EPOCH_LINE.match, lines) if m]


def _summary_row(summary: dict[str, Any]) -> dict[str, Any]:
    """A row's scores from ``evaluate_split``'s summary: the foreground and per-class mean Dice, the cases per
    class, and ``per_case``: ``{case: {class: Dice}}`` (None: the class absent from the case's truth and
    prediction), what the paired comparison pairs."""
    per_class = summary["mean"]["per_class"]
    return {
        "foreground_dice": summary["mean"]["foreground_mean"]["dice"],
        "dice": {name: s["dice"]["mean"] for name, s in per_class.items()},
        "n": {name: s["dice"]["n"] for name, s in per_class.items()},
        "num_cases": summary["num_cases"],
        "per_case": {
            case: {name: s["dice"] for name, s in classes.items()} for case, classes in summary["per_case"].items()
        },
    }


def run_segexp(ds: Dataset, data_overrides: list[str], args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """segexp-train with its default recipe; its seconds (process and Keras epochs), epochs, steps and the
    scores on ``ds.split``."""
    run_dir = work / "segexp"
    shutil.rmtree(run_dir, ignore_errors=True)
    out = Path(args.out).resolve()
    tracking = (
        ["tracking=none"]
        if args.no_tracking
        else [
            f"tracking.uri={_quote(f'sqlite:///{out}/mlflow.db')}",
            f"tracking.artifact_location={_quote(out / 'mlartifacts')}",
            "tracking.experiment=segexp-accuracy",
        ]
    )
    cmd = [
        sys.executable,
        "-m",
        "segexp.cli.train",
        *segexp_overrides(ds, data_overrides, args),
        *time_overrides(args.minutes),
        *tracking,
        f"hydra.run.dir={_quote(run_dir)}",
    ]
    print("  $ " + shlex.join(["segexp-train", *cmd[3:]]), flush=True)
    code, seconds, lines = stream(cmd, work / "segexp.log", "segexp")
    if code != 0:
        raise RuntimeError(f"segexp-train exited with {code}; see {work / 'segexp.log'}")
    epochs = keras_epochs(lines)
    history = (run_dir / "history.csv").read_text().splitlines()[1:]
    if epochs:
        steps = sum(n for n, _ in epochs)
    else:  # training.verbose other than 2: every epoch is one pass over the training slices
        batch = OmegaConf.load(run_dir / ".hydra" / "config.yaml").training.batch_size
        fingerprint = json.loads((run_dir / "dataset_fingerprint.json").read_text())
        steps = len(history) * math.ceil(fingerprint["fingerprint"]["splits"]["train"]["slices"] / batch)
    summary_path = run_dir / "evaluation" / "summary.json"
    if ds.split != "test" or not summary_path.is_file():
        job = work / f"segexp_evaluate_{ds.split}"
        shutil.rmtree(job, ignore_errors=True)
        # postprocess=none on the valid split: the run chose its postprocessing rules there
        postprocess = "none" if ds.split == "valid" else "auto"
        code, _, _ = stream(
            [
                sys.executable,
                "-m",
                "segexp.cli.evaluate",
                f"run={_quote(run_dir)}",
                f"split={ds.split}",
                f"postprocess={postprocess}",
                f"hydra.run.dir={_quote(job)}",
            ],
            work / "segexp_evaluate.log",
            "segexp-evaluate",
        )
        if code != 0:
            raise RuntimeError(f"segexp-evaluate exited with {code}; see {work / 'segexp_evaluate.log'}")
        summary_path = job / "summary.json"
    return {
        "system": "segexp (plan)",
        "matched": None,
        "budget": f"training.max_time={args.minutes:g}" if args.minutes else "the plan's steps",
        "epochs": len(history),
        "steps": steps,
        "train_seconds": float(sum(t for _, t in epochs)) if epochs else seconds,
        "timed_by": "Keras per-epoch times" if epochs else "process wall time",
        "process_seconds": seconds,
        **_summary_row(json.loads(summary_path.read_text())),
    }


# ----------------------------------------------------------------------------- MONAI (PyTorch)


def venv_python(venv: Path) -> Path:
    """The interpreter of virtual environment ``venv``."""
    return venv / "bin" / "python"


def find_links() -> list[Path]:
    """pip's find-links folders: ``PIP_FIND_LINKS`` and ``find-links`` of ``pip config list``."""
    values = [os.environ.get("PIP_FIND_LINKS", "")]
    proc = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        key, _, value = line.partition("=")
        if key.endswith("find-links"):
            values.append(value.strip().strip("'\""))
    folders = [Path(v) for value in values for v in value.split() if v and "://" not in v]
    return list(dict.fromkeys(f for f in folders if f.is_dir()))


def torch_requirement(
    folders: Sequence[Path], python_tag: str = f"cp{sys.version_info[0]}{sys.version_info[1]}"
) -> str:
    """``torch==<version>`` of the newest CPU wheel (``torch-*+cpu-<tag>-*.whl``) in ``folders``, else ``torch``.

    The package index's plain ``torch`` is the CUDA build (gigabytes of ``nvidia-*`` wheels); a CPU
    wheel beside pip keeps the environment small where one is provided.
    """
    found = [w.name.split("-")[1] for f in folders for w in f.glob(f"torch-*+cpu-{python_tag}-*.whl")]
    key = lambda v: tuple(int(x) if x.isdigit() else 0 for x in re.split(r"[.+]", v))  # noqa: E731
    return f"torch=={max(found, key=key)}" if found else "torch"


def venv_commands(venv: Path, torch: str = "torch", python: str = sys.executable) -> list[list[str]]:
    """The commands that build the MONAI environment: ``python -m venv``, then pip install torch, monai, numpy."""
    return [
        [python, "-m", "venv", str(venv)],
        [str(venv_python(venv)), "-m", "pip", "install", torch, MONAI_REQUIREMENT, "numpy"],
    ]


def venv_ready(venv: Path) -> bool:
    """Whether ``venv``'s interpreter imports torch, monai and numpy."""
    python = venv_python(venv)
    return (
        python.is_file()
        and subprocess.run(
            [str(python), "-c", "import torch, monai, numpy"], capture_output=True, env=monai_env()
        ).returncode
        == 0
    )


def ensure_monai_venv(venv: Path) -> Path:
    """The interpreter of the MONAI environment ``venv``, built once (reused when it imports torch and monai)."""
    venv = venv.resolve()
    if venv_ready(venv):
        return venv_python(venv)
    print(f"building the MONAI environment {venv} (once; a few minutes)", flush=True)
    venv.parent.mkdir(parents=True, exist_ok=True)
    for cmd in venv_commands(venv, torch_requirement(find_links())):
        print("  $ " + shlex.join(cmd), flush=True)
        code = subprocess.run(cmd, env=monai_env()).returncode
        if code != 0:
            raise SystemExit(
                f"{venv}: could not build the MONAI environment: `{shlex.join(cmd)}` exited with {code} "
                f"(remove {venv} and retry, or pass --monai-venv with a working one)"
            )
    if not venv_ready(venv):
        raise SystemExit(f"{venv}: built, but `{venv_python(venv)} -c 'import torch, monai, numpy'` fails")
    return venv_python(venv)


def monai_env() -> dict[str, str]:
    """The environment of MONAI's processes: this checkout off PYTHONPATH (they import no segexp)."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}


def segexp_overrides(ds: Dataset, data_overrides: Sequence[str], args: argparse.Namespace) -> list[str]:
    """The recipe-independent overrides that segexp-train gets for ``ds`` (data, model size, seed, extras)."""
    return [*data_overrides, *ds.segexp_only, *args.segexp_overrides]


@dataclass
class Pixels:
    """What was exported for MONAI: the ``.npz``, the scored split's images (model size) and how to score them."""

    path: Path
    dataset: Any  # segexp.data.runtime.dataset.SliceDataset
    split: str
    image_size: tuple[int, int]
    channels: int
    case_pattern: str
    score_images: np.ndarray


def export_pixels(overrides: Sequence[str], split: str, path: Path, run_config: Path | None = None) -> Pixels:
    """Write ``path`` (.npz) with segexp's own reader at the config's model size (``run_config``: the
    config segexp's run trained with, its plan applied; else composed from ``overrides``): the train and valid slices
    (uint8 images ``(N, H, W, C)``, class-index masks ``(N, H, W)``, case per slice) and ``split``'s slices
    (``score_*``) in ``evaluate_split``'s order, ``num_classes``, ``seed``."""
    from segexp.config.resolvers import register_resolvers
    from segexp.config.schema import validate_train_config
    from segexp.data.io.slices import load_pair
    from segexp.data.runtime.dataset import open_dataset
    from segexp.evaluation.reports import cases_of

    register_resolvers()  # a saved run config may hold ${len:...}, ${cores:...}
    if run_config is not None and run_config.is_file():
        cfg = OmegaConf.load(run_config)
    else:
        cfg = validate_train_config(compose([o for o in overrides if not o.lstrip("~+").startswith("hydra.")]))
    m = cfg.model
    dataset = open_dataset(cfg.dataset, m.num_classes)
    if not dataset.pairs.get(split):
        raise SystemExit(f"dataset {dataset.name} under {dataset.root}: split {split!r} has no slices to score")
    ordered = {s: dataset.pairs[s] for s in ("train", "valid")}
    ordered["score"] = [p for pairs in cases_of(dataset.pairs[split], cfg.dataset.case_pattern).values() for p in pairs]
    arrays: dict[str, np.ndarray] = {}
    for name, pairs in ordered.items():
        loaded = [load_pair(p, dataset.decoder, m.image_channels, m.image_height, m.image_width) for p in pairs]
        arrays[f"{name}_images"] = np.stack([im for im, _ in loaded]).astype(np.uint8)
        arrays[f"{name}_masks"] = np.stack([mk for _, mk in loaded]).astype(np.uint8)
        arrays[f"{name}_cases"] = np.asarray([p.case for p in pairs], dtype=str)
        arrays[f"{name}_names"] = np.asarray([p.name for p in pairs], dtype=str)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(
        path,
        **arrays,
        num_classes=np.int64(len(dataset.class_names)),
        seed=np.int64(cfg.seed),
        class_names=np.asarray(dataset.class_names, dtype=str),
    )
    return Pixels(
        path,
        dataset,
        split,
        (m.image_height, m.image_width),
        m.image_channels,
        cfg.dataset.case_pattern,
        arrays["score_images"],
    )


class FixedPredictions:
    """A stand-in for a Keras model in ``evaluate_split``: one-hot probabilities of class indices predicted
    elsewhere, looked up by the input image's bytes, so predictions made outside segexp are scored by the very
    code that scores segexp's model. An all-black image not in the table (``predict_batches``' padding of the last
    batch, whose outputs are dropped) gets zeros; any other unknown image is an error."""

    def __init__(self, images: np.ndarray, predictions: np.ndarray, num_classes: int) -> None:
        if images.shape[:3] != predictions.shape:
            raise ValueError(f"predictions {predictions.shape} do not match images {images.shape}")
        self.input_shape = (None, *images.shape[1:])
        self.output_shape = (None, *images.shape[1:3], num_classes)
        self._table = {np.ascontiguousarray(im).tobytes(): np.asarray(p) for im, p in zip(images, predictions)}
        self._eye = np.eye(num_classes, dtype=np.float32)

    def predict_on_batch(self, batch: np.ndarray) -> np.ndarray:
        """``(B, H, W, K)`` one-hot float32 of the stored predictions of ``batch``'s images."""
        out = np.zeros((len(batch), *self.output_shape[1:]), np.float32)
        for i, image in enumerate(np.asarray(batch)):
            pred = self._table.get(np.ascontiguousarray(image).tobytes())
            if pred is not None:
                out[i] = self._eye[pred]
            elif image.any():
                raise KeyError(f"image {i} of the batch has no stored prediction")
        return out


def score_predictions(pixels: Pixels, predictions: np.ndarray, out_dir: Path) -> dict[str, Any]:
    """segexp's ``evaluate_split`` of class-index ``predictions`` ``(N, H, W)`` (model size, ``score_images``'
    order) on ``pixels.split``; writes its reports in ``out_dir``; returns the ``summary.json`` content."""
    from segexp.evaluation.reports import evaluate_split, write_reports

    model = FixedPredictions(pixels.score_images, predictions, len(pixels.dataset.class_names))
    evaluation = evaluate_split(
        model,
        pixels.dataset,
        pixels.split,
        image_size=pixels.image_size,
        channels=pixels.channels,
        case_pattern=pixels.case_pattern,
        batch_size=8,
    )
    write_reports(evaluation, out_dir)
    return evaluation.summary


def monai_command(
    python: Path,
    data: Path,
    out: Path,
    *,
    seconds: float | None = None,
    steps: int | None = None,
    threads: int | None = None,
    max_epochs: int | None = None,
) -> list[str]:
    """``<venv python> scripts/monai_loop.py --data .. --out .. [--seconds S] [--steps N] [--threads T] ..``."""
    return [
        str(python),
        str(Path(__file__).with_name("monai_loop.py")),
        "--data",
        str(data),
        "--out",
        str(out),
        *(["--seconds", f"{seconds:.3f}"] if seconds is not None else []),
        *(["--steps", str(steps)] if steps is not None else []),
        *(["--threads", str(threads)] if threads else []),
        *(["--max-epochs", str(max_epochs)] if max_epochs else []),
    ]


def run_monai(
    pixels: Pixels,
    args: argparse.Namespace,
    work: Path,
    *,
    matched: str,
    budget: str,
    seconds: float | None = None,
    steps: int | None = None,
) -> dict[str, Any]:
    """scripts/monai_loop.py in the MONAI environment for ``seconds`` or ``steps``; its row, scored by segexp.

    ``matched``: ``time`` or ``steps`` (which of segexp's numbers it got); ``budget``: the table's text for it.
    """
    out = work / f"monai_{matched}"
    shutil.rmtree(out, ignore_errors=True)
    cmd = monai_command(
        args.monai_python,
        pixels.path,
        out,
        seconds=seconds,
        steps=steps,
        threads=args.monai_threads,
        max_epochs=args.max_epochs,
    )
    code, process_seconds, _ = stream(cmd, work / f"monai_{matched}.log", f"monai-{matched}", env=monai_env())
    if code != 0:
        raise RuntimeError(f"scripts/monai_loop.py exited with {code}; see {work / f'monai_{matched}.log'}")
    report = json.loads((out / "monai.json").read_text())
    with np.load(out / "predictions.npz") as data:
        predictions = data["predictions"]
    summary = score_predictions(pixels, predictions, out / "evaluation")
    return {
        "system": MONAI_SYSTEM,
        "matched": matched,
        "budget": budget,
        "epochs": report["epochs"],
        "steps": report["steps"],
        "train_seconds": report["train_seconds"],
        "timed_by": "script clock from its start",
        "process_seconds": process_seconds,
        "num_params": report["num_params"],
        "versions": report["versions"],
        **_summary_row(summary),
    }


# ----------------------------------------------------------------------------- report


def _dice(value: float | None, n: int) -> str:
    return "–" if n == 0 or value is None else f"{value:.3f}"


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


#: The paired comparison: bootstrap resamples of the (case, seed) pairs, its seed, the interval's level.
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
CONFIDENCE = 0.95
#: Differences smaller than this are floating-point noise of equal scores: shown and judged as 0.
TIE = 1e-9


def case_scores(row: dict[str, Any]) -> dict[tuple[str, str], float]:
    """``{(case, class): Dice}`` of a row's ``per_case`` (None, a class absent from truth and prediction: NaN)."""
    return {
        (case, name): math.nan if dice is None else float(dice)
        for case, classes in row["per_case"].items()
        for name, dice in classes.items()
    }


def seed_pairs(
    runs: Sequence[Sequence[dict[str, Any]]], matched: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]] | None:
    """``(segexp's rows, MONAI's rows at segexp's matched)``, one of each per seed (``runs[seed]``: that seed's
    rows); None when a seed lacks either."""
    seg = [next((r for r in rows if r["system"].startswith("segexp")), None) for rows in runs]
    peer = [
        next((r for r in rows if r["system"].startswith("MONAI") and r.get("matched") == matched), None)
        for rows in runs
    ]
    if not runs or any(r is None for r in seg) or any(r is None for r in peer):
        return None
    return [r for r in seg if r is not None], [r for r in peer if r is not None]


def paired_stats(runs: Sequence[Sequence[dict[str, Any]]], matched: str) -> list[dict[str, Any]] | None:
    """segexp against MONAI's run at segexp's ``matched`` (``time`` or ``steps``), over the seeds' runs: per
    class, then the foreground mean, :func:`segexp.evaluation.paired.compare_seeds` of their per-case Dice
    (differences ``d = segexp - MONAI`` on each (case, seed) pair; ``a``: MONAI, ``b``: segexp, each side's
    mean ± sd over the seeds of its run-level means); None without both systems in every seed."""
    from segexp.evaluation.paired import compare_seeds

    pairs = seed_pairs(runs, matched)
    if pairs is None:
        return None
    seg, peer = pairs
    return compare_seeds(
        [case_scores(r) for r in peer],
        [case_scores(r) for r in seg],
        n_resamples=BOOTSTRAP_RESAMPLES,
        seed=BOOTSTRAP_SEED,
        confidence=CONFIDENCE,
    )


def _signed(value: float) -> str:
    """``+0.020`` / ``−0.010`` (a typographic minus; below :data:`TIE` in size: ``+0.000``)."""
    return f"{0.0 if abs(value) < TIE else value:+.3f}".replace("-", "−")


def _interval(row: dict[str, Any]) -> str:
    return "–" if math.isnan(row["ci_low"]) else f"[{_signed(row['ci_low'])}, {_signed(row['ci_high'])}]"


def _p(row: dict[str, Any]) -> str:
    return f"{row['p_value']:.2g}" if row["p_value"] is not None else row["note"]


def paired_verdict(stats: Sequence[dict[str, Any]]) -> str:
    """The foreground row of :func:`paired_stats` in words: ``segexp ≥ MONAI: mean difference +0.020 [−0.010,
    +0.050], p = 0.3 over 6 case×seed pairs`` (``≥`` when the mean difference ``d̄ ≥ 0``, else ``<``; ``|d̄| <``
    :data:`TIE` counts as 0), and
    whether the 95 % CI lies above 0, below 0 or includes it."""
    fg = stats[-1]
    if fg["n"] == 0:
        return "no (case, seed) pair with a defined Dice on both sides"
    sign = "≥" if fg["mean_diff"] > -TIE else "<"
    p = f"p = {fg['p_value']:.2g}" if fg["p_value"] is not None else f"no p-value ({fg['note']})"
    pairs = f"{fg['n']} case×seed pair{'s' if fg['n'] != 1 else ''}"
    if math.isnan(fg["ci_low"]):
        where = "no CI"
    else:
        where = "CI above 0" if fg["ci_low"] > 0 else "CI below 0" if fg["ci_high"] < 0 else "CI includes 0"
    return (
        f"segexp {sign} MONAI: mean difference {_signed(fg['mean_diff'])} {_interval(fg)}, {p} over {pairs} ({where})"
    )


def target_verdict(
    rows: Sequence[dict[str, Any]], matched: str = "time", stats: Sequence[dict[str, Any]] | None = None
) -> str:
    """The issue's target against MONAI's run at segexp's ``matched`` (``time`` or ``steps``), on the paired
    ``stats`` (:func:`paired_stats`): the mean paired foreground difference segexp − MONAI ``≥ 0``, and no class
    whose mean over seeds is 0 for segexp where MONAI's is > 0; followed by :func:`paired_verdict`."""
    seg = next((r for r in rows if r["system"].startswith("segexp")), None)
    peers = [r for r in rows if r["system"].startswith("MONAI")]
    if seg is None or not peers:
        return "target not checked (one system only)"
    if not any(r.get("matched") == matched for r in peers) or not stats:
        return f"target not checked (no MONAI run at segexp's {matched})"
    problems = []
    fg = stats[-1]
    if fg["n"] and fg["mean_diff"] <= -TIE:
        problems.append(f"foreground Dice below MONAI's by {abs(fg['mean_diff']):.3f} on average")
    missed = [r["class"] for r in stats[:-1] if r["b"]["mean"] == 0.0 and r["a"]["mean"] > 0]
    if missed:
        problems.append(f"at 0 where MONAI finds them: {', '.join(missed)}")
    target = "target met" if not problems else "target NOT met: " + "; ".join(problems)
    return f"{target} — {paired_verdict(stats)}"


def _spread(side: dict[str, float]) -> str:
    """``0.612 ± 0.034`` (mean ± sd over seeds), ``0.612`` with one seed, ``–`` without a score."""
    if math.isnan(side["mean"]):
        return "–"
    return f"{side['mean']:.3f}" + ("" if math.isnan(side["sd"]) else f" ± {side['sd']:.3f}")


def _alarms(row: dict[str, Any]) -> str:
    """``segexp's / MONAI's`` (case, seed) units scored on their side only (``only_b`` / ``only_a``)."""
    return f"{row.get('only_b', 0)} / {row.get('only_a', 0)}"  # rows made by hand (tests, old JSON) lack them


def paired_table(stats: Sequence[dict[str, Any]]) -> str:
    """Markdown table of :func:`paired_stats`: per structure and the foreground mean, the (case, seed) pairs,
    segexp's and MONAI's mean ± sd over seeds, the mean difference, its CI, the Wilcoxon p-value, and each
    side's false alarms: (case, seed) units without the structure in which only that side predicts it (Dice 0
    on that side, undefined on the other, so outside the pairs)."""
    seeds = stats[0]["seeds"]
    over = f", mean ± sd over {seeds} seeds" if seeds > 1 else ""
    level = round(100 * CONFIDENCE)
    head = [
        "structure",
        "pairs",
        f"segexp{over}",
        f"MONAI{over}",
        "segexp − MONAI",
        f"{level}% CI",
        "p (Wilcoxon)",
        "false alarms: segexp / MONAI",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in stats:
        if r["n"] == 0:
            cells = [r["class"], "0", _spread(r["b"]), _spread(r["a"]), "–", "–", r["note"], _alarms(r)]
        else:
            cells = [
                r["class"],
                str(r["n"]),
                _spread(r["b"]),
                _spread(r["a"]),
                _signed(r["mean_diff"]),
                _interval(r),
                _p(r),
                _alarms(r),
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown table: system, what it was matched on, epochs, steps, process wall time (start to exit),
    foreground Dice (and per seed), Dice per class."""
    classes = list(rows[0]["dice"])
    seeds = "per_seed" in rows[0]
    head = [
        "system",
        "budget",
        "epochs",
        "optimiser steps",
        "wall time",
        "foreground Dice",
        *(["per seed"] if seeds else []),
        *classes,
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [
            r["system"],
            r.get("budget", "–"),
            str(r["epochs"]),
            str(r["steps"]),
            _duration(r.get("process_seconds", r["train_seconds"])),
            _dice(r["foreground_dice"], 1),
            *([", ".join(f"{v:.3f}" for v in r["per_seed"])] if seeds else []),
            *(_dice(r["dice"][c], r["n"][c]) for c in classes),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def mean_over_seeds(runs: Sequence[Sequence[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per system from its rows of several seeds (``runs[seed][system]``): epochs, steps,
    times and Dice averaged (a class's mean over the seeds that scored it), the foreground Dice
    of each seed under ``per_seed`` (no ``per_case``)."""
    merged = []
    for rows in zip(*runs):
        row = {**rows[0], "dice": dict(rows[0]["dice"]), "n": dict(rows[0]["n"])}
        row.pop("per_case", None)  # one seed's cases: the paired statistics (paired_stats) hold every seed's
        for key in ("epochs", "steps"):
            row[key] = round(float(np.mean([r[key] for r in rows])))
        for key in ("train_seconds", "process_seconds"):
            if all(key in r for r in rows):
                row[key] = float(np.mean([r[key] for r in rows]))
        row["per_seed"] = [r["foreground_dice"] or 0.0 for r in rows]
        row["foreground_dice"] = float(np.mean(row["per_seed"]))
        for c in row["dice"]:
            scored = [r["dice"][c] for r in rows if r["n"][c] and r["dice"][c] is not None]
            row["dice"][c] = float(np.mean(scored)) if scored else None
            row["n"][c] = max(r["n"][c] for r in rows)
        merged.append(row)
    return merged


def _how(rows: Sequence[dict[str, Any]], args: argparse.Namespace) -> str:
    """How the systems were timed and matched, for the block's text."""
    seg = next((r for r in rows if r["system"].startswith("segexp")), None)
    steps = next((r for r in rows if r.get("matched") == "steps"), None)
    if seg is None:
        return (
            f"MONAI alone on the machine's cores for `--minutes` {args.minutes:g}, counted from the start of its "
            "script, stopping after the epoch that reaches it. "
        )
    text = (
        "segexp and MONAI's equal-time run trained at the same time, sharing the machine's cores, with the same "
        f"budget of {args.minutes:g} min (segexp: `training.max_time`, MONAI: from its script's start); each stops "
        "after the epoch that reaches it. "
        if args.side_by_side
        else "Each run trained alone on the machine's cores, segexp first. MONAI's equal-time run was given segexp's "
        "whole measured wall time: the `segexp-train` process from start to exit (start-up, step tracing, "
        "validation, its test evaluation and MLflow included), counted from the start of MONAI's script "
        "(torch and MONAI imports included); it stops after the epoch that reaches it. "
    )
    if steps is not None:
        text += "MONAI's equal-steps run stopped at exactly segexp's number of optimiser steps (validated there). "
    return text + (
        "Wall time in the table: each process from start to exit (MONAI's includes predicting the scored "
        f"split after its budget). segexp's training time (its Keras epochs): {_duration(seg['train_seconds'])}. "
    )


MATCHED = {"time": "equal wall time", "steps": "equal steps"}


def paired_section(stats: dict[str, list[dict[str, Any]] | None]) -> list[str]:
    """The block's paired tables, one per MONAI run (:data:`MATCHED`) that has :func:`paired_stats`, after one
    line on how they were computed."""
    found = {matched: rows for matched, rows in stats.items() if rows}
    if not found:
        return []
    lines = [
        "Paired, segexp − MONAI: Dice on the same (case, seed) pairs (seed *i* of segexp against seed *i* of "
        f"MONAI), {round(100 * CONFIDENCE)}% percentile bootstrap CI of the mean difference ({BOOTSTRAP_RESAMPLES} "
        f"resamples of the pairs, seed {BOOTSTRAP_SEED}; one case's pairs over seeds are not independent, which "
        "narrows it), two-sided Wilcoxon signed-rank p (none below 6 pairs); mean ± sd over seeds of each seed's "
        "mean (foreground: the mean over structures of the structure means, as in the table above). A case without "
        "a structure that one system leaves empty and the other predicts has a Dice only on the second side (0), so "
        "it is not a pair: the last column counts those false alarms per side (for the foreground, over all "
        "structures); the structure means above include them as 0.",
        "",
    ]
    for matched, rows in found.items():
        lines += [f"At {MATCHED[matched]}:", "", paired_table(rows), ""]
    return lines


def block(
    ds: Dataset,
    rows: Sequence[dict[str, Any]],
    args: argparse.Namespace,
    command: str,
    host: dict[str, Any],
    stats: dict[str, list[dict[str, Any]] | None] | None = None,
) -> str:
    """The markdown block of one dataset (between its markers in ACCURACY.md); ``stats``: :func:`paired_stats`
    per MONAI run (``time``, ``steps``), its tables and the verdicts on them."""
    stats = stats or {}
    note = ds.note.format(slab=args.slab_slices)
    n_cases = rows[0]["num_cases"]
    monai = next((r for r in rows if r["system"].startswith("MONAI")), None)
    verdict = f"**Equal wall time: {target_verdict(rows, 'time', stats.get('time'))}.** "
    if any(r.get("matched") == "steps" for r in rows):
        verdict += f"Equal steps: {target_verdict(rows, 'steps', stats.get('steps'))}. "
    versions = monai.get("versions", {}) if monai else {}
    lines = [
        note,
        "",
        f"Split scored: `{ds.split}` ({n_cases} case{'s' if n_cases != 1 else ''}); Dice per structure without "
        "background, per case in 3D, `–` = structure absent from that split; both systems scored by segexp's "
        "`evaluate_split` on the same pixels (MONAI's predictions at the model's input size, resized back as "
        "segexp's are).",
        "",
        table(rows),
        "",
        *paired_section(stats),
        verdict
        + _how(rows, args)
        + (f"MONAI network (`monai.networks.nets.UNet`): {monai['num_params']:,} parameters." if monai else "")
        + (
            f" Means over seeds {', '.join(map(str, args.seeds))} (`seed=`; segexp's and MONAI's runs of one "
            "seed share it)."
            if args.seeds
            else ""
        ),
        "",
        f"Reproduce: `{command}` — {host['cores']} cores, {host['cpu']}, GPU: {host['gpu']}; "
        f"TensorFlow {host['versions']['tensorflow']}, Keras {host['versions']['keras']}"
        + (f"; PyTorch {versions['torch']}, MONAI {versions['monai']}" if versions else "")
        + f"; {datetime.now(UTC):%Y-%m-%d %H:%M} UTC.",
        "",
    ]
    return "\n".join(lines)


HEADER = """# Accuracy on real data: segexp's defaults against MONAI itself (PyTorch), same wall time

`python scripts/accuracy.py` trains segexp's default recipe (`segexp-train` with the dataset's
preset only) and MONAI itself in PyTorch (`scripts/monai_loop.py`, in its own virtual environment:
`monai.networks.nets.UNet` — channels 16–256, stride-2 convolutions, 2 residual units, instance
norm, PReLU — with `monai.losses.DiceCELoss`, Adam 1e-3, flips, batch 8, best validation epoch
kept) on the same pixels (segexp's reader), and scores both with segexp's scorer
(`evaluate_split`): Dice per structure without background, per patient in 3D. MONAI runs twice:
for segexp's whole wall time (the `segexp-train` process, start-up included) and for segexp's
number of optimiser steps. The comparison is paired: both systems' per-case Dice on the same
(case, seed) pairs (seed *i* of segexp against seed *i* of MONAI), per structure and for the
foreground mean (per case, the mean over its structures): each system's mean ± sd over seeds, the
mean difference segexp − MONAI with its 95% percentile bootstrap CI (the pairs resampled) and the
two-sided Wilcoxon signed-rank p-value (none below 6 pairs; `segexp/evaluation/statistics.py`).
Target, at equal wall time: a mean paired foreground difference segexp − MONAI of at least 0, and
no structure left at 0 that MONAI finds; the equal-steps comparison is stated beside it. Whether the
CI excludes 0 says whether the difference is more than case and seed noise. The blocks below are
rewritten by the script, one per dataset; each names the command and the machine that produced it.

Full comparison: `python scripts/accuracy.py` (four datasets): segexp trains alone on the machine's
cores, then MONAI alone for segexp's measured wall time, then for its steps; `--side-by-side` trains
segexp and MONAI's equal-time run at once on the same cores with the same `--minutes` budget. The
MONAI environment is built once (`python -m venv`, `pip install torch "monai>=1.4,<1.7" numpy`,
a CPU torch wheel from pip's find-links where there is one) under `--monai-venv` (default
`outputs/venvs/monai`) and reused. Options: `--datasets`, `--minutes`, `--out` (default
`outputs/accuracy`), `--segexp-overrides`, `--monai-only`, `--segexp-only`, `--monai-threads`,
`--no-tracking`, `--seeds` (both systems once per seed, means and each seed's score reported,
the pairs are then (case, seed)); `python scripts/accuracy.py --help`. Each dataset's folder under
`--out` holds `result.json` (the rows) and `paired.json` (the paired statistics).
"""


def paired_json(stats: dict[str, list[dict[str, Any]] | None]) -> str:
    """:func:`paired_stats` per MONAI run as JSON (``a``: MONAI, ``b``: segexp; NaN as ``null``)."""
    from segexp.evaluation.paired import report_json

    return report_json({"difference": "segexp - MONAI (b - a)", "a": MONAI_SYSTEM, "b": "segexp", **stats})


def write_markdown(path: Path, name: str, text: str) -> None:
    """Replace (or append) the block of dataset ``name`` in ``path``; creates the file with its header."""
    if not path.exists():
        path.write_text(HEADER)
    update_markdown(path, text, f"<!-- accuracy:{name}:begin -->", f"<!-- accuracy:{name}:end -->", append=f"## {name}")


# ----------------------------------------------------------------------------- main


def compare(ds: Dataset, data_overrides: list[str], args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    """segexp, then MONAI for segexp's wall time and for its steps (``--side-by-side``: segexp and MONAI's
    equal-time run at once, same ``--minutes``): their rows."""
    work.mkdir(parents=True, exist_ok=True)
    if args.segexp_only:
        return [run_segexp(ds, data_overrides, args, work)]
    budget = args.minutes * 60
    if args.monai_only or args.side_by_side:
        pixels = export_pixels(segexp_overrides(ds, data_overrides, args), ds.split, work / "monai_input.npz")
    if args.monai_only:
        return [run_monai(pixels, args, work, matched="time", budget="`--minutes`", seconds=budget)]
    if args.side_by_side:
        # Both at once on the same cores: a shared machine's changing speed hits both alike, but
        # each gets about half the cores, so the presets' schedules (sized for the cores alone) are
        # cut by the budget. Hence not the default.
        with ThreadPoolExecutor(2) as pool:
            seg_job = pool.submit(run_segexp, ds, data_overrides, args, work)
            time_job = pool.submit(
                run_monai, pixels, args, work, matched="time", budget="same `--minutes`, side by side", seconds=budget
            )
            seg, at_time = seg_job.result(), time_job.result()
    else:
        seg = run_segexp(ds, data_overrides, args, work)
        # MONAI reads the pixels at the size segexp trained with (its plan applied: .hydra/config.yaml).
        pixels = export_pixels(
            segexp_overrides(ds, data_overrides, args),
            ds.split,
            work / "monai_input.npz",
            run_config=work / "segexp" / ".hydra" / "config.yaml",
        )
        at_time = run_monai(
            pixels, args, work, matched="time", budget="segexp's wall time", seconds=seg["process_seconds"]
        )
    at_steps = run_monai(pixels, args, work, matched="steps", budget="segexp's steps", steps=seg["steps"])
    return [seg, at_time, at_steps]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument(
        "--minutes",
        type=float,
        default=10.0,
        help="segexp's training.max_time (when the key exists); MONAI gets segexp's measured wall time "
        "(--monai-only: --minutes)",
    )
    parser.add_argument("--out", default=str(REPO / "outputs" / "accuracy"), help="run folders, logs, mlflow.db")
    parser.add_argument(
        "--markdown",
        help="file whose dataset blocks are rewritten (default: ACCURACY.md when both systems run; none with "
        "--segexp-only or --monai-only, whose one-system block would replace a comparison)",
    )
    parser.add_argument(
        "--segexp-overrides",
        nargs="+",
        default=[],
        action="extend",
        metavar="OVERRIDE",
        help="extra segexp-train overrides, passed as they are; MONAI's pixels are read through the "
        "same config (dataset, model input size and channels, seed; nothing of segexp's recipe)",
    )
    parser.add_argument("--slab-slices", type=int, default=4, help="thorax volumes: slices per slab")
    parser.add_argument(
        "--prepare-overrides",
        nargs="+",
        default=[],
        action="extend",
        metavar="OVERRIDE",
        help="thorax volumes: extra segexp-prepare overrides (e.g. context_slices=1 for 2.5D input; MONAI reads "
        "the same stored slices)",
    )
    parser.add_argument("--max-epochs", type=int, default=None, help="MONAI: stop after this many epochs at the latest")
    parser.add_argument(
        "--monai-venv",
        default=str(MONAI_VENV),
        help="virtual environment with torch and monai, built there once when it does not import them",
    )
    parser.add_argument("--monai-threads", type=int, default=None, help="MONAI's torch threads (default: all cores)")
    parser.add_argument("--no-tracking", action="store_true", help="segexp-train with tracking=none")
    parser.add_argument(
        "--seeds",
        nargs="+",
        type=int,
        default=None,
        metavar="SEED",
        help="run both systems once per seed (`seed=SEED`) and report means and each seed's score",
    )
    parser.add_argument(
        "--side-by-side",
        action="store_true",
        help="train segexp and MONAI's equal-time run at once on the same cores with the same "
        "--minutes (default: segexp alone, then MONAI alone for segexp's measured wall time)",
    )
    only = parser.add_mutually_exclusive_group()
    only.add_argument(
        "--monai-only",
        "--reference-only",
        dest="monai_only",
        action="store_true",
        help="only MONAI, for --minutes (--reference-only: the former name)",
    )
    only.add_argument("--segexp-only", action="store_true", help="only segexp-train")
    args = parser.parse_args(argv)
    if args.markdown is None and not (args.segexp_only or args.monai_only):
        args.markdown = str(MARKDOWN)
    command = " ".join(["python scripts/accuracy.py", *(argv if argv is not None else sys.argv[1:])])
    out = Path(args.out).resolve()
    host = machine()
    names = [n for n in args.datasets if (SHARED / DATASETS[n].needs).is_dir()]
    args.monai_python = ensure_monai_venv(Path(args.monai_venv)) if names and not args.segexp_only else None
    results: dict[str, Any] = {}
    for name in args.datasets:
        ds = DATASETS[name]
        if name not in names:
            print(f"skipping {name}: {SHARED / ds.needs} is absent")
            continue
        print(f"== {name}", flush=True)
        work = out / name
        work.mkdir(parents=True, exist_ok=True)
        data_overrides = (
            prepare_thorax(ds, work, args.slab_slices, args.prepare_overrides) if ds.volume else list(ds.overrides)
        )
        runs = [
            compare(
                ds,
                [*data_overrides, *([f"seed={seed}"] if seed is not None else [])],
                args,
                work if seed is None else work / f"seed{seed}",
            )
            for seed in (args.seeds or [None])
        ]
        rows = mean_over_seeds(runs) if args.seeds else runs[0]
        stats = {matched: paired_stats(runs, matched) for matched in MATCHED}
        text = block(ds, rows, args, command, host, stats)
        seeds = " ".join(map(str, args.seeds or []))
        title = f"{name}, seeds {seeds}" if args.seeds else name  # a block of its own next to the one-seed run
        print(f"\n### {title}\n\n{text}", flush=True)
        if args.markdown:
            write_markdown(Path(args.markdown), title, text)
        results[name] = rows
        suffix = f"_seeds_{seeds.replace(' ', '_')}" if args.seeds else ""
        (work / f"result{suffix}.json").write_text(json.dumps(rows, indent=2))
        (work / f"paired{suffix}.json").write_text(paired_json(stats))
    if results and args.markdown:
        print(f"tables written to {args.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
