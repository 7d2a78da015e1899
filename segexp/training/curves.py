"""Loss and metric curves of a finished training, from Keras' history."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402

from segexp.core.files import atomic_write_path


def plot_curves(history: Mapping[str, Sequence[float]], path: Path) -> Path:
    """Plot train vs. validation loss and foreground Dice per epoch (from 1) into ``path``."""
    panels = [("loss", "loss"), ("dice_fg_mean", "foreground mean Dice")]
    panels += [(k, k.replace("_", " ")) for k in history if k.startswith("dice_") and k != "dice_fg_mean"]
    panels = [(k, title) for k, title in panels if k in history]
    cols = min(len(panels), 4)
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    for ax, (key, title) in zip(axes.flat, panels):
        epochs = range(1, len(history[key]) + 1)
        ax.plot(epochs, history[key], label="train")
        if f"val_{key}" in history:  # validated epochs only (training.validation.every_n_epochs)
            validated = [(e, v) for e, v in zip(epochs, history[f"val_{key}"]) if math.isfinite(v)]
            if validated:
                ax.plot(*zip(*validated), marker="." if len(validated) < len(epochs) else None, label="validation")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)

    with atomic_write_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return path
