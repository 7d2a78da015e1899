"""``segexp-compare``: a sweep's children side by side — changed params vs. metrics, best first.

Prints a table of the child runs of a sweep's MLflow parent run (the params that
differ between children, the objective and the test score), sorted by the
objective, and logs ``compare/children.csv`` and a parallel-coordinates plot
``compare/parallel_coordinates.png`` to the parent run.

    segexp-compare                          # the latest sweep in the default store
    segexp-compare --sweep-dir outputs/train/multiruns/<date>/<time>
    segexp-compare --parent <run id> --metric best/val_loss --mode min
"""

from __future__ import annotations

import csv
import math
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from segexp.tracking.store import retry_locked
from segexp.tracking.sweep import EXTRA_METRICS, children, comparison_rows, per_class_metrics
from segexp.tracking.sweep import changed_params as changed_params  # segexp-compare's columns, kept here too

DEFAULT_METRIC = "best/val_dice_fg_mean"


def format_table(columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> str:
    """A plain-text table (floats with 4 decimals)."""

    def cell(v: Any) -> str:
        return "-" if isinstance(v, float) and math.isnan(v) else f"{v:.4f}" if isinstance(v, float) else str(v)

    cells = [[cell(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) if cells else len(c) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in cells]
    return "\n".join(lines)


def parallel_coordinates(columns: Sequence[str], rows: Sequence[dict[str, Any]], metric: str, path: Path) -> Path:
    """One vertical axis per changed param plus the objective; one line per finished child, coloured by it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    axes_names = [c for c in columns if c not in ("run", "status", *EXTRA_METRICS) and not c.startswith("test/dice/")]
    done = [r for r in rows if not math.isnan(r[metric])]
    fig, ax = plt.subplots(figsize=(max(6.5, 2.2 * len(axes_names)), 4))
    encoded: dict[str, list[float]] = {}
    for name in axes_names:
        values = [r[name] for r in done]
        try:
            numbers = [float(v) for v in values]
            low, high = min(numbers), max(numbers)
            encoded[name] = [(v - low) / (high - low) if high > low else 0.5 for v in numbers]
            labels = sorted(set(numbers))
            positions = [(v - low) / (high - low) if high > low else 0.5 for v in labels]
            texts = [f"{v:g}" for v in labels]
        except (TypeError, ValueError):
            levels = sorted(set(map(str, values)))
            step = 1 / max(len(levels) - 1, 1)
            encoded[name] = [levels.index(str(v)) * step for v in values]
            positions, texts = [i * step for i in range(len(levels))], levels
        x = axes_names.index(name)
        for pos, text in zip(positions, texts):
            ax.annotate(text, (x, pos), xytext=(4, 0), textcoords="offset points", fontsize=7, va="center")
    cmap = plt.get_cmap("viridis")
    scores = encoded.get(metric, [0.5] * len(done))
    for i in range(len(done)):
        ax.plot(range(len(axes_names)), [encoded[n][i] for n in axes_names], color=cmap(scores[i]), alpha=0.8)
    for x in range(len(axes_names)):
        ax.axvline(x, color="grey", linewidth=0.8)
    ax.set_xticks(range(len(axes_names)), axes_names, rotation=20, ha="right", fontsize=8)
    ax.set_yticks([])
    ax.set_title(f"sweep children by {metric} (bright = high)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def latest_parent(experiment: str) -> str | None:
    """The most recent sweep parent run (tag ``sweep_dir``) of ``experiment``."""
    import mlflow

    found = mlflow.get_experiment_by_name(experiment)
    if found is None:
        return None
    runs = mlflow.MlflowClient().search_runs(
        [found.experiment_id],
        filter_string="tags.sweep_dir != ''",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


def compare(
    parent: str, metric: str = DEFAULT_METRIC, mode: str = "max", log_to_parent: bool = True, per_class: bool = False
) -> str:
    """The comparison table of ``parent``'s children (with ``per_class``: every ``test/dice/<class>`` column);
    logs the CSV and the plot to ``parent``."""
    import mlflow

    runs = children(parent)
    if not runs:
        raise SystemExit(f"segexp-compare: run {parent} has no child runs")
    columns, rows = comparison_rows(runs, metric, mode, per_class_metrics(runs) if per_class else ())
    if log_to_parent:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp)
            with open(out / "children.csv", "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=[*columns, "run_id"], extrasaction="ignore")
                writer.writeheader()
                writer.writerows(rows)
            parallel_coordinates(columns, rows, metric, out / "parallel_coordinates.png")
            client = mlflow.MlflowClient()
            for name in ("children.csv", "parallel_coordinates.png"):
                retry_locked(client.log_artifact, parent, str(out / name), "compare")
    return format_table(columns, rows)
