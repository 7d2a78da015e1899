#!/usr/bin/env python
"""Proof on real data, side by side: segexp's default recipe against a plain Keras reference, same wall time.

    python scripts/accuracy.py                                   # all four datasets, 10 min each, ACCURACY.md
    python scripts/accuracy.py --datasets hvsmr_mini --minutes 2
    python scripts/accuracy.py --datasets hocmvalves_mini --seeds 0 1 2    # means over three seeds
    python scripts/accuracy.py --reference-only --minutes 0.2 --markdown /tmp/A.md   # try the reference alone

For every dataset:

1. ``segexp-train`` runs as a subprocess (``python -m segexp.cli.train`` of this checkout) with
   the dataset's overrides only, i.e. segexp's default recipe, plus
   ``training.max_time=<minutes>`` when this checkout has that key, ``hydra.run.dir`` under
   ``--out`` and MLflow tracking into ``<out>/mlflow.db`` (``--no-tracking``: ``tracking=none``).
   Its training wall time is the sum of the per-epoch times Keras prints (one line per
   epoch, validation and epoch-end callbacks included; the process time when no epoch line
   is printed); its score is
   ``evaluation/summary.json`` (test split) or ``segexp-evaluate`` on the dataset's scored split.
2. The reference (``scripts/reference_loop.py``: MONAI's UNet recipe in plain Keras) trains,
   in its own process, for the same training wall time, on the same pixels (segexp's
   reader, the same config), and is scored by the same ``evaluate_split`` on the same split.

Scores are segexp's: Dice per structure without background, per case in 3D on the case's
stacked slices, averaged over cases (a structure absent from a case's truth and
prediction is left out for that case), and their foreground mean.

Datasets (read from ``../shared/data``; skipped with a message where it is absent):

* ``hvsmr_mini``: 5 MR patients, 9 classes, ``experiment=hvsmr_mini``; scored on the test patient.
* ``hocmvalves_mini``: 2 CT patients, ``experiment=hocmvalves_mini``: train 10001, valid 10002,
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
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from bench import machine, update_markdown
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

#: No experiment preset for the slab sets: the real-data network (as the hvsmr/hocmvalves presets) at
#: the default 128x128, 10 epochs of the default 50 steps; the rest is segexp's default recipe.
THORAX_SEGEXP = ["model=resunet", "training.epochs=10"]


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
    "hvsmr_mini": Dataset("hvsmr_mini", "hvsmr_mini", "test", ["experiment=hvsmr_mini"],
                          note="MR, 5 patients: train 10001, 10003, 10004; valid 10000; scored on the test patient 10002."),
    "hocmvalves_mini": Dataset(
        "hocmvalves_mini", "hocmvalves_mini", "valid", ["experiment=hocmvalves_mini"],
        note="CT, 2 patients: train 10001; **scored on the validation patient 10002** (there is no test patient; "
             "both systems also pick their best epoch on it, optimistic for both alike)."),
    "thorax_pulmonary": Dataset("thorax_pulmonary", "thorax_cta", "test", volume=("case_pulmonary", "thorax_pulmonary"),
                                note=THORAX_NOTE, segexp_only=THORAX_SEGEXP),
    "thorax_aorta": Dataset("thorax_aorta", "thorax_cta", "test", volume=("case_aorta", "thorax_aorta"),
                            note=THORAX_NOTE, segexp_only=THORAX_SEGEXP),
}


# ----------------------------------------------------------------------------- thorax slabs


def slab_splits(slices: Sequence[int], slab_slices: int, pattern: Sequence[str] = SLAB_PATTERN) -> list[tuple[int, str, list[int]]]:
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
    """Links ``dest/{images,masks}/<case>-slabNN_<slice>.png`` to the prepared slices; returns split -> slab ids."""
    source = prepared / "train"
    stems = {int(_slice_number(p.stem)): p.name for p in (source / "images").glob(f"{case}_*.png")}
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
            name = stems[index]
            for sub in ("images", "masks"):
                (dest / sub / f"{slab}_{_slice_number(Path(name).stem)}.png").symlink_to((source / sub / name).resolve())
    return cases


def _quote(value: Any) -> str:
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def prepare_thorax(ds: Dataset, work: Path, slab_slices: int) -> list[str]:
    """Link the volume, ``segexp-prepare`` it, cut it into slabs; the dataset overrides of the slab folder."""
    case, preset = ds.volume
    volumes = work / "volumes"
    volumes.mkdir(parents=True, exist_ok=True)
    for kind in ("image", "label"):
        link = volumes / f"{case}_{kind}.nii.gz"
        if not link.is_symlink():
            link.symlink_to((SHARED / "thorax_cta" / case / f"{kind}.nii.gz").resolve())
    prepared, job = work / "prepared", work / "prepare_job"
    shutil.rmtree(job, ignore_errors=True)
    cmd = [sys.executable, "-m", "segexp.cli.prepare", f"volumes={preset}", f"volumes.source={_quote(volumes)}",
           f"out_dir={_quote(prepared)}", "window=cardiac_cta", f"split.cases={{train:[{case}],valid:[],test:[]}}",
           "workers=0", "tracking=none", f"hydra.run.dir={_quote(job)}"]
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"segexp-prepare failed for {ds.name}:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    manifest = json.loads((prepared / "dataset.json").read_text())
    cases = build_slab_folder(prepared, case, work / "slabs", slab_slices)
    names = manifest["class_names"]
    rgb = ",".join(f"{n}:{manifest['rgb_map'][n]}" for n in names)
    return ["dataset=folder", f"dataset.name={ds.name}", f"dataset.root={_quote(work / 'slabs')}", "dataset.layout=flat",
            *(f"+dataset.cases.{s}=[{','.join(_quote(c) for c in ids)}]" for s, ids in cases.items()),  # folder: cases {}
            f"dataset.class_names=[{','.join(names)}]", f"dataset.rgb_map={{{rgb}}}".replace(" ", "")]


# ----------------------------------------------------------------------------- runs


def _env() -> dict[str, str]:
    """This checkout first on PYTHONPATH (its segexp and conf/), TensorFlow's C++ chatter off."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}


def stream(cmd: Sequence[str], log_path: Path, prefix: str) -> tuple[int, float, list[str]]:
    """Run ``cmd``, echo its output with ``prefix`` and into ``log_path``; (exit status, seconds, lines)."""
    start = time.perf_counter()
    lines: list[str] = []
    with open(log_path, "w") as log, subprocess.Popen(
        list(cmd), cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
    ) as proc:
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
    per_class = summary["mean"]["per_class"]
    return {
        "foreground_dice": summary["mean"]["foreground_mean"]["dice"],
        "dice": {name: s["dice"]["mean"] for name, s in per_class.items()},
        "n": {name: s["dice"]["n"] for name, s in per_class.items()},
        "num_cases": summary["num_cases"],
    }


def run_segexp(ds: Dataset, data_overrides: list[str], args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """segexp-train with its default recipe; training seconds, epochs, steps and the scores on ``ds.split``."""
    run_dir = work / "segexp"
    shutil.rmtree(run_dir, ignore_errors=True)
    out = Path(args.out).resolve()
    tracking = (["tracking=none"] if args.no_tracking else
                [f"tracking.uri={_quote(f'sqlite:///{out}/mlflow.db')}", f"tracking.artifact_location={_quote(out / 'mlartifacts')}",
                 "tracking.experiment=segexp-accuracy"])
    cmd = [sys.executable, "-m", "segexp.cli.train", *data_overrides, *ds.segexp_only, *time_overrides(args.minutes),
           *args.segexp_overrides,
           *tracking, f"hydra.run.dir={_quote(run_dir)}"]
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
        code, _, _ = stream([sys.executable, "-m", "segexp.cli.evaluate", f"run={_quote(run_dir)}", f"split={ds.split}",
                             f"hydra.run.dir={_quote(job)}"], work / "segexp_evaluate.log", "segexp-evaluate")
        if code != 0:
            raise RuntimeError(f"segexp-evaluate exited with {code}; see {work / 'segexp_evaluate.log'}")
        summary_path = job / "summary.json"
    return {
        "system": "segexp (defaults)",
        "epochs": len(history),
        "steps": steps,
        "train_seconds": float(sum(t for _, t in epochs)) if epochs else seconds,
        "timed_by": "Keras per-epoch times" if epochs else "process wall time",
        "process_seconds": seconds,
        **_summary_row(json.loads(summary_path.read_text())),
    }


def run_reference(ds: Dataset, data_overrides: list[str], args: argparse.Namespace, work: Path,
                  seconds: float) -> dict[str, Any]:
    """scripts/reference_loop.py for ``seconds`` in its own process; its epochs, steps, seconds and scores."""
    out = work / "reference"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, str(Path(__file__).with_name("reference_loop.py")), "--seconds", f"{seconds:.3f}",
           "--out", str(out), "--split", ds.split, *(["--max-epochs", str(args.max_epochs)] if args.max_epochs else []),
           "--", *data_overrides, *args.segexp_overrides]
    code, process_seconds, _ = stream(cmd, work / "reference.log", "reference")
    if code != 0:
        raise RuntimeError(f"the reference loop exited with {code}; see {work / 'reference.log'}")
    report = json.loads((out / "reference.json").read_text())
    return {
        "system": "reference (MONAI UNet recipe)",
        "epochs": report["epochs"],
        "steps": report["steps"],
        "train_seconds": report["train_seconds"],
        "timed_by": "loop clock",
        "process_seconds": process_seconds,
        "num_params": report["num_params"],
        **_summary_row(json.loads((out / "evaluation" / "summary.json").read_text())),
    }


# ----------------------------------------------------------------------------- report


def _dice(value: float | None, n: int) -> str:
    return "–" if n == 0 or value is None else f"{value:.3f}"


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def target_verdict(rows: Sequence[dict[str, Any]]) -> str:
    """The issue's target: segexp's foreground Dice >= the reference's, no class at 0 that the reference finds."""
    systems = {r["system"].split(" ")[0]: r for r in rows}
    if set(systems) != {"segexp", "reference"}:
        return "target not checked (one system only)"
    seg, ref = systems["segexp"], systems["reference"]
    problems = []
    if (seg["foreground_dice"] or 0.0) < (ref["foreground_dice"] or 0.0):
        problems.append(f"foreground Dice {seg['foreground_dice'] or 0:.3f} < reference {ref['foreground_dice'] or 0:.3f}")
    missed = [c for c, v in seg["dice"].items() if seg["n"][c] and (v or 0.0) == 0.0 and (ref["dice"].get(c) or 0.0) > 0]
    if missed:
        problems.append(f"at 0 where the reference finds them: {', '.join(missed)}")
    return "target met" if not problems else "target NOT met: " + "; ".join(problems)


def table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown table: system, epochs, steps, training time, foreground Dice (and per seed), Dice per class."""
    classes = list(rows[0]["dice"])
    seeds = "per_seed" in rows[0]
    head = ["system", "epochs", "optimiser steps", "training wall time", "foreground Dice",
            *(["per seed"] if seeds else []), *classes]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["system"], str(r["epochs"]), str(r["steps"]), _duration(r["train_seconds"]),
                 _dice(r["foreground_dice"], 1), *([", ".join(f"{v:.3f}" for v in r["per_seed"])] if seeds else []),
                 *(_dice(r["dice"][c], r["n"][c]) for c in classes)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def mean_over_seeds(runs: Sequence[Sequence[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per system from its rows of several seeds (``runs[seed][system]``): epochs, steps,
    time and Dice averaged (a class's mean over the seeds that scored it), the foreground Dice
    of each seed under ``per_seed``."""
    merged = []
    for rows in zip(*runs):
        row = dict(rows[0])
        for key in ("epochs", "steps"):
            row[key] = round(float(np.mean([r[key] for r in rows])))
        row["train_seconds"] = float(np.mean([r["train_seconds"] for r in rows]))
        row["per_seed"] = [r["foreground_dice"] or 0.0 for r in rows]
        row["foreground_dice"] = float(np.mean(row["per_seed"]))
        for c in row["dice"]:
            scored = [r["dice"][c] for r in rows if r["n"][c] and r["dice"][c] is not None]
            row["dice"][c] = float(np.mean(scored)) if scored else None
            row["n"][c] = max(r["n"][c] for r in rows)
        merged.append(row)
    return merged


def block(ds: Dataset, rows: Sequence[dict[str, Any]], args: argparse.Namespace, command: str, host: dict[str, Any]) -> str:
    """The markdown block of one dataset (between its markers in ACCURACY.md)."""
    note = ds.note.format(slab=args.slab_slices)
    n_cases = rows[0]["num_cases"]
    params = next((r["num_params"] for r in rows if "num_params" in r), None)
    lines = [
        note,
        "",
        f"Split scored: `{ds.split}` ({n_cases} case{'s' if n_cases != 1 else ''}); Dice per structure without "
        "background, per case in 3D, `–` = structure absent from that split.",
        "",
        table(rows),
        "",
        f"**{target_verdict(rows)}.** "
        + ("Both systems trained at the same time, sharing the machine's cores, with the same budget of "
           f"{args.minutes:g} min; each stops after the epoch that reaches it (segexp: `training.max_time`). "
           if args.side_by_side else
           "Each system trained alone on the machine's cores, segexp first; the reference was given segexp's "
           "measured training time and stops after the epoch that reaches it. ")
        + "Training wall time: segexp's per-epoch times as Keras prints them (its step tracing in epoch 1), the reference's loop clock (its tracing included)."
        + (f" Reference network: {params:,} parameters." if params else "")
        + (f" Means over seeds {', '.join(map(str, args.seeds))} (`seed=`; segexp's and the reference's runs of one "
           "seed share it)." if args.seeds else ""),
        "",
        f"Reproduce: `{command}` — {host['cores']} cores, {host['cpu']}, GPU: {host['gpu']}; "
        f"TensorFlow {host['versions']['tensorflow']}, Keras {host['versions']['keras']}; "
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC.",
        "",
    ]
    return "\n".join(lines)


HEADER = """# Accuracy on real data: segexp's defaults against a plain reference, same wall time

`python scripts/accuracy.py` trains segexp's default recipe (`segexp-train` with the dataset's
preset only) and a plain Keras 3 reference (`scripts/reference_loop.py`: MONAI's `UNet` recipe —
channels 16–256, stride-2 convolutions, 2 residual units, instance norm, PReLU — with
`DiceCELoss`, Adam 1e-3, flips, batch 8, best validation epoch kept) for the same training wall
time on the same pixels, and scores both with segexp's scorer (`evaluate_split`): Dice per
structure without background, per patient in 3D. Target: segexp's foreground Dice at least the
reference's, and no structure left at 0 that the reference finds. The blocks below are rewritten
by the script, one per dataset; each names the command and the machine that produced it.

Full comparison: `python scripts/accuracy.py` (four datasets, about 55 min on 2 CPU cores): segexp
trains alone on the machine's cores, then the reference alone for segexp's measured training time;
`--side-by-side` trains both at once on the same cores with the same `--minutes` budget.
Options: `--datasets`, `--minutes`, `--out`
(default `outputs/accuracy`), `--segexp-overrides`, `--reference-only`, `--segexp-only`,
`--no-tracking`, `--seeds` (both systems once per seed, means and each seed's score reported);
`python scripts/accuracy.py --help`.
"""


def write_markdown(path: Path, name: str, text: str) -> None:
    """Replace (or append) the block of dataset ``name`` in ``path``; creates the file with its header."""
    if not path.exists():
        path.write_text(HEADER)
    update_markdown(path, text, f"<!-- accuracy:{name}:begin -->", f"<!-- accuracy:{name}:end -->", append=f"## {name}")


# ----------------------------------------------------------------------------- main


def compare(ds: Dataset, data_overrides: list[str], args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    """segexp then the reference for segexp's time (or both at once with ``--side-by-side``): their rows."""
    work.mkdir(parents=True, exist_ok=True)
    budget = args.minutes * 60
    if args.side_by_side and not (args.reference_only or args.segexp_only):
        # Both at once on the same cores: a shared machine's changing speed hits both alike, but
        # each gets about half the cores, so the presets' schedules (sized for the cores alone) are
        # cut by the budget, and Keras' fit process measured 1.6x slower per step than the bare
        # loop under that contention (ACCURACY.md). Hence not the default.
        with ThreadPoolExecutor(2) as pool:
            seg = pool.submit(run_segexp, ds, data_overrides, args, work)
            ref = pool.submit(run_reference, ds, data_overrides, args, work, budget)
            return [seg.result(), ref.result()]
    rows = []
    if not args.reference_only:
        rows.append(run_segexp(ds, data_overrides, args, work))
        budget = rows[-1]["train_seconds"]
    if not args.segexp_only:
        rows.append(run_reference(ds, data_overrides, args, work, budget))
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--minutes", type=float, default=10.0,
                        help="segexp's training.max_time (when the key exists); the reference gets segexp's measured time")
    parser.add_argument("--out", default=str(REPO / "outputs" / "accuracy"), help="run folders, logs, mlflow.db")
    parser.add_argument("--markdown", default=str(MARKDOWN), help="file whose dataset blocks are rewritten (ACCURACY.md)")
    parser.add_argument("--segexp-overrides", nargs="+", default=[], action="extend", metavar="OVERRIDE",
                        help="extra segexp-train overrides, passed as they are; the reference reads its data and input "
                             "size through the same config (it uses nothing of segexp's recipe)")
    parser.add_argument("--slab-slices", type=int, default=4, help="thorax volumes: slices per slab")
    parser.add_argument("--max-epochs", type=int, default=None, help="reference: stop after this many epochs at the latest")
    parser.add_argument("--no-tracking", action="store_true", help="segexp-train with tracking=none")
    parser.add_argument("--seeds", nargs="+", type=int, default=None, metavar="SEED",
                        help="run both systems once per seed (`seed=SEED`) and report means and each seed's score")
    parser.add_argument("--side-by-side", action="store_true",
                        help="train both at once on the same cores with the same --minutes (default: segexp alone, "
                             "then the reference alone for segexp's measured training time)")
    only = parser.add_mutually_exclusive_group()
    only.add_argument("--reference-only", action="store_true", help="only the reference, for --minutes")
    only.add_argument("--segexp-only", action="store_true", help="only segexp-train")
    args = parser.parse_args(argv)
    command = " ".join(["python scripts/accuracy.py", *(argv if argv is not None else sys.argv[1:])])
    out = Path(args.out).resolve()
    host = machine()
    results: dict[str, Any] = {}
    for name in args.datasets:
        ds = DATASETS[name]
        if not (SHARED / ds.needs).is_dir():
            print(f"skipping {name}: {SHARED / ds.needs} is absent")
            continue
        print(f"== {name}", flush=True)
        work = out / name
        work.mkdir(parents=True, exist_ok=True)
        data_overrides = prepare_thorax(ds, work, args.slab_slices) if ds.volume else list(ds.overrides)
        runs = [compare(ds, [*data_overrides, *([f"seed={seed}"] if seed is not None else [])], args,
                        work if seed is None else work / f"seed{seed}")
                for seed in (args.seeds or [None])]
        rows = mean_over_seeds(runs) if args.seeds else runs[0]
        text = block(ds, rows, args, command, host)
        seeds = " ".join(map(str, args.seeds or []))
        title = f"{name}, seeds {seeds}" if args.seeds else name  # a block of its own next to the one-seed run
        print(f"\n### {title}\n\n{text}", flush=True)
        write_markdown(Path(args.markdown), title, text)
        results[name] = rows
        result_file = f"result_seeds_{seeds.replace(' ', '_')}.json" if args.seeds else "result.json"
        (work / result_file).write_text(json.dumps(rows, indent=2))
    if results:
        print(f"tables written to {args.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
