"""``segexp-compare``: rank the child runs of a sweep (its MLflow parent run) by an objective; with ``--stats A B``
compare two systems (runs, sweeps or CV parents) case by case.

    segexp-compare --stats <run A> <run B> [--split test] [--metric dice] [--json stats.json]

Without ``--split`` each side is compared on the test split, except a cross-validation parent (tag
``segexp.kind=cv``, from ``segexp-cv``), which is compared on ``valid``: its folds' held-out cases, each scored
once by the fold that did not train on it. ``--split`` given applies to both sides.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from segexp.cli.shell import user_errors_exit
from segexp.config.resolvers import project_root
from segexp.evaluation.paired import compare_systems, format_comparison, report_json
from segexp.tracking.cases import CV_KIND, CV_SPLIT, DEFAULT_SPLIT, KIND_TAG, open_system
from segexp.tracking.compare import DEFAULT_METRIC, compare, latest_parent
from segexp.tracking.sweep import parent_run_id


def main(argv: Sequence[str] | None = None) -> None:
    """Print the ranking table; log it (CSV and parallel-coordinates plot) to the parent run unless ``--no-log``."""
    parser = argparse.ArgumentParser(prog="segexp-compare", description=__doc__.split("\n\n")[0])
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--parent", help="MLflow id of the sweep's parent run")
    which.add_argument("--sweep-dir", type=Path, help="the sweep folder (holds mlflow_parent.json)")
    which.add_argument(
        "--stats",
        nargs=2,
        metavar=("A", "B"),
        help="compare two systems case by case (each a run id, run or sweep folder, models:/..., or a sweep / CV "
        "parent run id): per class the mean difference B - A, its bootstrap CI and a Wilcoxon p-value; a CV parent "
        f"is compared on its folds' held-out cases ({CV_SPLIT}) unless --split is given",
    )
    parser.add_argument(
        "--tracking-uri",
        default=f"sqlite:///{project_root()}/outputs/mlflow.db",
        help="MLflow store (default: the project's SQLite store)",
    )
    parser.add_argument("--experiment", default="segexp", help="experiment searched for the latest sweep")
    parser.add_argument(
        "--metric", help=f"objective to sort by (default {DEFAULT_METRIC}); with --stats a per-case column (dice)"
    )
    parser.add_argument("--mode", choices=("max", "min"), default="max", help="max: higher is better")
    parser.add_argument("--per-class", action="store_true", help="add a column per class: test/dice/<class>")
    parser.add_argument("--no-log", action="store_true", help="do not log the CSV and plot to the parent run")
    stats = parser.add_argument_group("--stats")
    stats.add_argument(
        "--split",
        default=None,
        help=f"the evaluated split whose per-case scores are compared, on both sides (default: {DEFAULT_SPLIT}; a "
        f"cross-validation parent, tag {KIND_TAG}={CV_KIND}: {CV_SPLIT}, its folds' held-out cases)",
    )
    stats.add_argument("--bootstrap", type=int, default=10_000, help="bootstrap resamples of the cases")
    stats.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resampling")
    stats.add_argument("--intersect", action="store_true", help="compare the shared cases when the sides differ")
    stats.add_argument("--json", type=Path, help="also write the comparison to this JSON file")
    args = parser.parse_args(argv)
    import mlflow  # deferred: a heavy import, not needed for --help

    mlflow.set_tracking_uri(args.tracking_uri)
    if args.stats is not None:
        with user_errors_exit():
            print(compare_stats(args))
        return
    if args.sweep_dir is not None:
        parent = parent_run_id(args.sweep_dir)
        if parent is None:
            parser.error(f"--sweep-dir: {args.sweep_dir} has no mlflow_parent.json (was the sweep tracked?)")
    else:
        parent = args.parent or latest_parent(args.experiment)
        if parent is None:
            parser.error(f"no sweep parent run in experiment {args.experiment!r} at {args.tracking_uri}")
    with user_errors_exit():
        metric = args.metric or DEFAULT_METRIC
        print(compare(parent, metric, args.mode, log_to_parent=not args.no_log, per_class=args.per_class))


def compare_stats(args: argparse.Namespace) -> str:
    """``--stats A B``: the comparison's text (and ``--json``)."""
    metric = args.metric or "dice"
    a, b = (open_system(s, args.split, metric, args.tracking_uri) for s in args.stats)
    report = compare_systems(a, b, metric=metric, n_resamples=args.bootstrap, seed=args.seed, intersect=args.intersect)
    if args.json is not None:
        args.json.write_text(report_json(report))
    return format_comparison(report)


if __name__ == "__main__":
    main(sys.argv[1:])
