#!/usr/bin/env python
"""Does 2.5D context help? The thorax CTA slab sets prepared with ``context_slices`` k = 0, 1, 2, trained by
the plan, scored per slab, paired against k = 0.

    python scripts/context_measurement.py --out outputs/context --minutes 3 --seeds 1 2
    python scripts/context_measurement.py --out outputs/context --minutes 3 --seeds 1 2 --reuse   # tables only

For every k, ``scripts/accuracy.py --segexp-only --prepare-overrides context_slices=k`` prepares the volumes of
``../shared/data/thorax_cta`` (``segexp-prepare``: each slice with its k neighbours per side as channels),
cuts them into the same slabs (train, valid, train, test, train, ... in turn; each slab a case), and trains
``segexp-train`` with the plan alone for ``--minutes`` once per seed (the plan sets ``model.image_channels`` to
``2k + 1`` from ``dataset.json``). Each seed's held-out slabs are scored by segexp-evaluate
(``evaluation/summary.json``, Dice per structure and slab in 3D). The table: per k the foreground Dice
(mean ± sd over seeds), and the paired difference to k = 0 over the (slab, seed) pairs with its 95 %
bootstrap CI (:func:`segexp.evaluation.paired.compare_seeds`), for the foreground mean and each structure.
The labels are a model's output (TotalSegmentator), so this is a relative comparison, not an accuracy claim.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

import accuracy  # noqa: E402 - the slab sets and the number formats of scripts/accuracy.py

from segexp.evaluation.paired import FOREGROUND, compare_seeds  # noqa: E402

DATASETS = ("thorax_pulmonary", "thorax_aorta")
Scores = dict[tuple[str, str], float]


def run_accuracy(args: argparse.Namespace, k: int) -> None:
    """``scripts/accuracy.py`` for one k (segexp only), unless ``--reuse`` finds its results."""
    out = args.out / f"k{k}"
    tag = "_".join(str(s) for s in args.seeds)
    if args.reuse and all((out / ds / f"result_seeds_{tag}.json").is_file() for ds in args.datasets):
        return
    command = [
        sys.executable,
        str(REPO / "scripts" / "accuracy.py"),
        "--datasets",
        *args.datasets,
        "--segexp-only",
        "--minutes",
        f"{args.minutes:g}",
        "--seeds",
        *map(str, args.seeds),
        "--prepare-overrides",
        f"context_slices={k}",
        "--out",
        str(out),
        "--markdown",
        str(args.out / f"k{k}.md"),
    ]
    print("$", " ".join(command), flush=True)
    if subprocess.run(command, cwd=REPO).returncode != 0:
        raise SystemExit(f"accuracy.py failed for context_slices={k}")


def seed_scores(args: argparse.Namespace, k: int, dataset: str) -> list[Scores]:
    """Per seed ``{(slab, structure): Dice}`` of the held-out slabs (NaN: structure absent from both)."""
    scores = []
    for seed in args.seeds:
        summary = json.loads(
            (args.out / f"k{k}" / dataset / f"seed{seed}" / "segexp" / "evaluation" / "summary.json").read_text()
        )
        scores.append(
            {
                (case, name): math.nan if values["dice"] is None else float(values["dice"])
                for case, classes in summary["per_case"].items()
                for name, values in classes.items()
            }
        )
    return scores


def steps(args: argparse.Namespace, k: int, dataset: str) -> int:
    tag = "_".join(str(s) for s in args.seeds)
    rows = json.loads((args.out / f"k{k}" / dataset / f"result_seeds_{tag}.json").read_text())
    return int(rows[0]["steps"])


def dataset_table(args: argparse.Namespace, dataset: str) -> list[str]:
    """The markdown rows of one slab set: one per k, the paired difference to k = 0 per structure."""
    base = seed_scores(args, 0, dataset)
    structures = [row["class"] for row in compare_seeds(base, base) if row["class"] != FOREGROUND]
    head = ["`context_slices`", "steps", "foreground Dice (mean ± sd over seeds)", "− k=0, paired [95% CI]"]
    head += [f"{s} − k=0" for s in structures]
    lines = [f"**{dataset}** ({len(base[0]) // max(1, len(structures))} test slabs, seeds {args.seeds})", ""]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for k in args.context:
        stats = {row["class"]: row for row in compare_seeds(base, seed_scores(args, k, dataset))}
        fg = stats[FOREGROUND]
        cells = [str(k), str(steps(args, k, dataset)), accuracy._spread(fg["b"])]  # noqa: SLF001
        cells.append("–" if k == 0 else f"{accuracy._signed(fg['mean_diff'])} {accuracy._interval(fg)}")  # noqa: SLF001
        for s in structures:
            row = stats[s]
            cells.append("–" if k == 0 or row["n"] == 0 else accuracy._signed(row["mean_diff"]))  # noqa: SLF001
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "context")
    parser.add_argument("--minutes", type=float, default=3.0, help="segexp's training.max_time per run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--context", type=int, nargs="+", default=[0, 1, 2], help="context_slices to compare")
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--reuse", action="store_true", help="keep the runs whose results exist; print the tables")
    args = parser.parse_args(argv)
    if 0 not in args.context:
        args.context = [0, *args.context]
    args.out = args.out.resolve()
    for k in args.context:
        run_accuracy(args, k)
    text: list[str] = []
    for dataset in args.datasets:
        text += [*dataset_table(args, dataset), ""]
    report = "\n".join(text)
    (args.out / "context.md").write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
