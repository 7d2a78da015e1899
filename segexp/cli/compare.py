"""``segexp-compare``: rank the child runs of a sweep (its MLflow parent run) by an objective."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from segexp.cli.shell import user_errors_exit
from segexp.config.resolvers import project_root
from segexp.tracking.compare import DEFAULT_METRIC, compare, latest_parent
from segexp.tracking.sweep import parent_run_id


def main(argv: Sequence[str] | None = None) -> None:
    """Print the ranking table; log it (CSV and parallel-coordinates plot) to the parent run unless ``--no-log``."""
    parser = argparse.ArgumentParser(prog="segexp-compare", description=__doc__.split("\n\n")[0])
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--parent", help="MLflow id of the sweep's parent run")
    which.add_argument("--sweep-dir", type=Path, help="the sweep folder (holds mlflow_parent.json)")
    parser.add_argument(
        "--tracking-uri",
        default=f"sqlite:///{project_root()}/outputs/mlflow.db",
        help="MLflow store (default: the project's SQLite store)",
    )
    parser.add_argument("--experiment", default="segexp", help="experiment searched for the latest sweep")
    parser.add_argument("--metric", default=DEFAULT_METRIC, help=f"objective to sort by (default {DEFAULT_METRIC})")
    parser.add_argument("--mode", choices=("max", "min"), default="max", help="max: higher is better")
    parser.add_argument("--per-class", action="store_true", help="add a column per class: test/dice/<class>")
    parser.add_argument("--no-log", action="store_true", help="do not log the CSV and plot to the parent run")
    args = parser.parse_args(argv)
    import mlflow  # deferred: a heavy import, not needed for --help

    mlflow.set_tracking_uri(args.tracking_uri)
    if args.sweep_dir is not None:
        parent = parent_run_id(args.sweep_dir)
        if parent is None:
            parser.error(f"--sweep-dir: {args.sweep_dir} has no mlflow_parent.json (was the sweep tracked?)")
    else:
        parent = args.parent or latest_parent(args.experiment)
        if parent is None:
            parser.error(f"no sweep parent run in experiment {args.experiment!r} at {args.tracking_uri}")
    with user_errors_exit():
        print(compare(parent, args.metric, args.mode, log_to_parent=not args.no_log, per_class=args.per_class))


if __name__ == "__main__":
    main(sys.argv[1:])
