#!/usr/bin/env python
"""Does in-plane spacing resampling help? The phantom at mixed spacings, prepared three ways, scored in mm.

    python scripts/spacing_measurement.py --out /tmp/spacing --minutes 5 --seeds 0 1 2
    python scripts/spacing_measurement.py --out /tmp/spacing --epochs 2 --num-cases 9 --seeds 0   # a quick try

1. ``segexp-prepare`` writes the phantom volumes once, the cases cycling through the fields of view
   ``--fovs`` at ``--size`` pixels (``volumes.phantom.fovs_mm``: the same anatomy in mm at mixed in-plane
   spacings, as scans reconstructed with different fields of view), and slices them three ways, with one
   split (``--test-per-fov`` test and ``--valid-per-fov`` validation cases of every field of view):
   ``null`` (``spacing=null``, each case's own pixels), ``auto`` (``spacing=auto``, the median spacing of
   the non-test cases) and ``canvas`` (``spacing=auto canvas=auto``: one shape, so the loader's resize to
   the model input scales every case alike).
2. ``segexp-train`` trains each (``dataset=phantom_prepared``, the plan as always, ``tracking=none``) for
   ``--minutes`` (``training.max_time``) or ``--epochs``, once per seed.
3. ``segexp-infer`` predicts the test cases' *volumes* (so every variant is scored on the original grid,
   whatever its slices were), and each prediction is scored against the original label with segexp's
   scoring (:func:`segexp.evaluation.scoring.score_classes`): Dice and HD95 in mm (the volume's spacing).

Writes ``<out>/results.json`` (every case, class, variant and seed) and ``<out>/results.md``: per variant the
foreground-mean Dice and HD95 (mm), mean ± sd over seeds, over all test cases and per field of view, and the
paired difference to ``null`` (mean over (case, seed) pairs). Compare ``canvas`` (and ``auto``) against
``null``: a gain larger than the seed-to-seed spread, largest on the cases far from the median spacing,
would justify a default other than ``spacing=null``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

REPO = Path(__file__).resolve().parents[1]
VARIANTS = {"null": ["spacing=null"], "auto": ["spacing=auto"], "canvas": ["spacing=auto", "canvas=auto"]}


def run(args: list[str], log: Path) -> None:
    """``python -m <args>`` in the repository, output into ``log``; stops the measurement when it fails."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        proc = subprocess.run([sys.executable, "-m", *args], cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): python -m {' '.join(args)}; see {log}")


def prepare(args: argparse.Namespace, variant: str) -> Path:
    out = args.out / "data" / variant
    fovs = ",".join(f"{f:g}" for f in args.fovs)
    run(
        [
            "segexp.cli.prepare",
            f"paths.root={args.out}",
            f"volumes.source={args.out / 'volumes'}",
            f"volumes.phantom.num_cases={args.num_cases}",
            f"volumes.phantom.size={args.size}",
            f"volumes.phantom.num_slices={args.num_slices}",
            f"volumes.phantom.fovs_mm=[{fovs}]",
            f"out_dir={out}",
            split_cases(args),
            f"workers={args.workers}",
            "overwrite=true",
            *VARIANTS[variant],
        ],
        args.out / "logs" / f"prepare_{variant}.log",
    )
    return out


def split_cases(args: argparse.Namespace) -> str:
    """``split.cases``: the last ``--test-per-fov`` cases of every field of view are the test cases, the
    ``--valid-per-fov`` before them the validation cases (case ``k`` has the field of view ``fovs[(k-1) % n]``)."""
    groups: dict[int, list[str]] = {}
    for k in range(1, args.num_cases + 1):
        groups.setdefault((k - 1) % len(args.fovs), []).append(f"phantom{k:03d}")
    split: dict[str, list[str]] = {"train": [], "valid": [], "test": []}
    for members in groups.values():
        cut = len(members) - args.test_per_fov
        split["test"] += members[cut:]
        split["valid"] += members[max(0, cut - args.valid_per_fov) : cut]
        split["train"] += members[: max(0, cut - args.valid_per_fov)]
    return "split.cases={" + ",".join(f"{k}:[{','.join(sorted(v))}]" for k, v in split.items()) + "}"


def train(args: argparse.Namespace, variant: str, data: Path, seed: int) -> Path:
    run_dir = args.out / "runs" / variant / f"seed{seed}"
    budget = [f"training.max_time={args.minutes:g}"] if args.minutes else [f"training.epochs={args.epochs}"]
    run(
        [
            "segexp.cli.train",
            f"paths.root={args.out}",
            "dataset=phantom_prepared",
            f"dataset.root={data}",
            f"seed={seed}",
            "tracking=none",
            f"hydra.run.dir={run_dir}",
            *budget,
            *args.train_args,
        ],
        args.out / "logs" / f"train_{variant}_seed{seed}.log",
    )
    return run_dir


def test_volumes(args: argparse.Namespace, data: Path) -> tuple[Path, list[str]]:
    """A folder linking the test cases' image volumes (segexp-infer's input), and the case ids."""
    cases = json.loads((data / "dataset.json").read_text())["splits"]["test"]
    folder = args.out / "test_images"
    folder.mkdir(parents=True, exist_ok=True)
    for case in cases:
        link = folder / f"{case}_image.nii.gz"
        if not link.exists():
            link.symlink_to(args.out / "volumes" / f"{case}_image.nii.gz")
    return folder, cases


def score_case(args: argparse.Namespace, case: str, prediction: Path, class_names: list[str]) -> dict[str, Any]:
    """Dice and HD95 (mm) per foreground class of one predicted volume against its label, and the case's
    in-plane spacing; the foreground mean over the classes present in truth or prediction."""
    from segexp.evaluation.scoring import score_classes

    label = nib.load(args.out / "volumes" / f"{case}_label.nii.gz")
    truth = np.asarray(label.dataobj, np.uint8)
    pred = np.asarray(nib.load(prediction).dataobj, np.uint8)
    if pred.shape != truth.shape:
        raise SystemExit(f"{prediction}: shape {pred.shape} != the label's {truth.shape}")
    spacing = [float(v) for v in label.header.get_zooms()[:3]]
    scores = score_classes(truth, pred, len(class_names), spacing=spacing)
    per_class = {class_names[c]: {"dice": s.dice, "hd95_mm": s.hd95} for c, s in scores.items()}
    present = [s for s in scores.values() if s.n_truth or s.n_pred]
    return {
        "spacing_mm": round(spacing[0], 4),
        "classes": per_class,
        "dice": float(np.nanmean([s.dice for s in present])) if present else float("nan"),
        "hd95_mm": float(np.nanmean([s.hd95 for s in present])) if present else float("nan"),
    }


def summarise(results: dict[str, dict[int, dict[str, dict[str, Any]]]]) -> list[str]:
    """The markdown table: mean ± sd over seeds of each seed's case mean, per spacing group, paired to null."""
    spacings = sorted({c["spacing_mm"] for v in results.values() for s in v.values() for c in s.values()})
    lines = [
        "| variant | test cases | Dice (fg mean) | HD95 mm | Dice − null (paired) | HD95 − null (paired) |",
        "|---|---|---|---|---|---|",
    ]
    for group in [None, *spacings]:
        for variant, seeds in results.items():
            row = []
            for metric in ("dice", "hd95_mm"):
                per_seed = [
                    np.nanmean([c[metric] for c in cases.values() if group is None or c["spacing_mm"] == group])
                    for cases in seeds.values()
                ]
                row.append(f"{np.mean(per_seed):.4f} ± {np.std(per_seed):.4f}")
            for metric in ("dice", "hd95_mm"):
                diffs = [
                    c[metric] - results["null"][seed][case][metric]
                    for seed, cases in seeds.items()
                    for case, c in cases.items()
                    if (group is None or c["spacing_mm"] == group) and "null" in results
                ]
                row.append(f"{np.nanmean(diffs):+.4f} (n={len(diffs)})" if diffs else "-")
            where = "all" if group is None else f"{group:g} mm pixels"
            lines.append(f"| {variant} | {where} | " + " | ".join(row) + " |")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="working folder (volumes, datasets, runs, results)")
    parser.add_argument("--minutes", type=float, default=None, help="training.max_time of every run")
    parser.add_argument("--epochs", type=int, default=5, help="training.epochs of every run (without --minutes)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--fovs", type=float, nargs="+", default=[270.0, 360.0, 480.0], help="fields of view, mm")
    parser.add_argument("--size", type=int, default=128, help="in-plane pixels of every phantom case")
    parser.add_argument("--num-slices", type=int, default=32)
    parser.add_argument("--num-cases", type=int, default=24)
    parser.add_argument("--test-per-fov", type=int, default=2, help="test cases per field of view")
    parser.add_argument("--valid-per-fov", type=int, default=1, help="validation cases per field of view")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--train-args", nargs="*", default=[], help="more segexp-train overrides, e.g. model=flexunet")
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="keep the seeds whose test predictions exist in --out (add seeds to an earlier measurement)",
    )
    args = parser.parse_args(argv)
    args.out = args.out.resolve()
    results: dict[str, dict[int, dict[str, dict[str, Any]]]] = {}
    for variant in args.variants:
        data = prepare(args, variant)
        manifest = json.loads((data / "dataset.json").read_text())
        inputs, cases = test_volumes(args, data)
        print(f"{variant}: spacing {manifest['spacing']}, test cases {cases}", flush=True)
        results[variant] = {}
        for seed in args.seeds:
            predicted = args.out / "predictions" / variant / f"seed{seed}"
            done = all((predicted / f"{case}_image_pred.nii.gz").is_file() for case in cases)
            if args.reuse and done:  # an earlier call with the same settings trained and predicted this one
                results[variant][seed] = {
                    case: score_case(args, case, predicted / f"{case}_image_pred.nii.gz", manifest["class_names"])
                    for case in cases
                }
                continue
            run_dir = train(args, variant, data, seed)
            run(
                [
                    "segexp.cli.infer",
                    f"run={run_dir}",
                    f"input={inputs}",
                    f"output_dir={predicted}",
                    "postprocess=none",
                ],
                args.out / "logs" / f"infer_{variant}_seed{seed}.log",
            )
            results[variant][seed] = {
                case: score_case(args, case, predicted / f"{case}_image_pred.nii.gz", manifest["class_names"])
                for case in cases
            }
            print(f"  seed {seed}: Dice {np.nanmean([c['dice'] for c in results[variant][seed].values()]):.4f}")
    (args.out / "results.json").write_text(json.dumps(results, indent=2, default=float))
    table = summarise(results)
    (args.out / "results.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))


if __name__ == "__main__":
    main()
