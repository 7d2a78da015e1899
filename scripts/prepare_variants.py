#!/usr/bin/env python
"""Which way of preparing volumes trains better? The thorax CTA slab sets prepared by ``segexp-prepare`` variants,
trained by the plan, scored per slab, paired against the first variant.

    python scripts/prepare_variants.py --out outputs/context --minutes 3 --seeds 1 2          # 2.5D: k = 0, 1, 2
    python scripts/prepare_variants.py --out outputs/context --minutes 3 --seeds 1 2 \
        --variant k0 context_slices=0 --variant ct_zscore window=ct_zscore \
        --variant windows 'windows=[cardiac_cta,mediastinal,lung]'                          # intensities
    python scripts/prepare_variants.py ... --reuse                                             # tables only

A variant is a name and its ``segexp-prepare`` overrides (default: ``context_slices`` 0, 1, 2). For each,
``scripts/accuracy.py --segexp-only --prepare-overrides <overrides>`` prepares the volumes of
``../shared/data/thorax_cta``, cuts them into the same slabs (train, valid, train, test, train, ... in turn;
each slab a case), and trains ``segexp-train`` with the plan alone for ``--minutes`` once per seed (the plan
reads the stored channels and encoding from ``dataset.json``). Each seed's held-out slabs are scored by
segexp-evaluate (``evaluation/summary.json``, Dice per structure and slab in 3D). The table: per variant the
foreground Dice (mean ± sd over seeds), and the paired difference to the first variant over the (slab, seed)
pairs with its 95 % bootstrap CI (:func:`segexp.evaluation.paired.compare_seeds`), for the foreground mean and
each structure. The labels are a model's output (TotalSegmentator) and each set is one volume (so
``window=ct_zscore``'s foreground statistics see the test slabs' intensities too): a relative comparison, not an
accuracy claim.
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


def run_accuracy(args: argparse.Namespace, name: str, overrides: list[str]) -> None:
    """``scripts/accuracy.py`` for one variant (segexp only), unless ``--reuse`` finds its results."""
    out = args.out / name
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
        *overrides,
        "--out",
        str(out),
        "--markdown",
        str(args.out / f"{name}.md"),
    ]
    print("$", " ".join(command), flush=True)
    if subprocess.run(command, cwd=REPO).returncode != 0:
        raise SystemExit(f"accuracy.py failed for the variant {name}: {overrides}")


def seed_scores(args: argparse.Namespace, name: str, dataset: str) -> list[Scores]:
    """Per seed ``{(slab, structure): Dice}`` of the held-out slabs (NaN: structure absent from both)."""
    scores = []
    for seed in args.seeds:
        summary = json.loads(
            (args.out / name / dataset / f"seed{seed}" / "segexp" / "evaluation" / "summary.json").read_text()
        )
        scores.append(
            {
                (case, name): math.nan if values["dice"] is None else float(values["dice"])
                for case, classes in summary["per_case"].items()
                for name, values in classes.items()
            }
        )
    return scores


def steps(args: argparse.Namespace, name: str, dataset: str) -> int:
    tag = "_".join(str(s) for s in args.seeds)
    rows = json.loads((args.out / name / dataset / f"result_seeds_{tag}.json").read_text())
    return int(rows[0]["steps"])


def dataset_table(args: argparse.Namespace, dataset: str) -> list[str]:
    """The markdown rows of one slab set: one per variant, the paired difference to the first per structure."""
    (base_name, _), *_ = args.variants
    base = seed_scores(args, base_name, dataset)
    structures = [row["class"] for row in compare_seeds(base, base) if row["class"] != FOREGROUND]
    head = ["variant", "segexp-prepare", "steps", "foreground Dice (mean ± sd over seeds)"]
    head += [f"paired − {base_name} [95% CI]", *(f"{s} − {base_name}" for s in structures)]
    lines = [f"**{dataset}** ({len(base[0]) // max(1, len(structures))} test slabs, seeds {args.seeds})", ""]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for index, (name, overrides) in enumerate(args.variants):
        stats = {row["class"]: row for row in compare_seeds(base, seed_scores(args, name, dataset))}
        fg = stats[FOREGROUND]
        cells = [name, " ".join(f"`{o}`" for o in overrides), str(steps(args, name, dataset))]
        cells.append(accuracy._spread(fg["b"]))  # noqa: SLF001
        paired = f"{accuracy._signed(fg['mean_diff'])} {accuracy._interval(fg)}"  # noqa: SLF001
        cells.append("–" if index == 0 else paired)
        for s in structures:
            row = stats[s]
            cells.append("–" if index == 0 or row["n"] == 0 else accuracy._signed(row["mean_diff"]))  # noqa: SLF001
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "context")
    parser.add_argument("--minutes", type=float, default=3.0, help="segexp's training.max_time per run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument(
        "--variant",
        dest="variants",
        nargs="+",
        action="append",
        metavar=("NAME", "OVERRIDE"),
        help="a variant: its name and segexp-prepare overrides; the first is the baseline "
        "(default: k0, k1, k2 = context_slices 0, 1, 2)",
    )
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--reuse", action="store_true", help="keep the runs whose results exist; print the tables")
    args = parser.parse_args(argv)
    given = args.variants or [[f"k{k}", f"context_slices={k}"] for k in (0, 1, 2)]
    args.variants = [(v[0], list(v[1:])) for v in given]
    args.out = args.out.resolve()
    for name, overrides in args.variants:
        run_accuracy(args, name, overrides)
    text: list[str] = []
    for dataset in args.datasets:
        text += [*dataset_table(args, dataset), ""]
    report = "\n".join(text)
    (args.out / f"variants_{'_'.join(name for name, _ in args.variants)}.md").write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
