"""Shared fixtures: composing segexp's Hydra configs and writing tiny slice datasets."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

from segexp.config.resolvers import register_resolvers
from segexp.config.schema import CONF_DIR, REPO_DIR
from segexp.data.io.rgb_map import encode_rgb_mask
from segexp.models import RESOLVERS as MODEL_RESOLVERS
from segexp.tracking.tracker import Tracker, tracked_run

from .servers import mlflow_server, optuna_postgres  # noqa: F401  (session fixtures: PostgreSQL-backed MLflow server)

register_resolvers(MODEL_RESOLVERS)  # every test composes or resolves configs as the command shells do

SHARED_DATA = REPO_DIR.parent / "shared" / "data"
HOCM_MINI = SHARED_DATA / "hocmvalves_mini"

TINY_COLOURS = [[0, 0, 0], [255, 0, 0], [0, 255, 0]]


def sqlite_tracked_run(root: Path, **options: Any) -> AbstractContextManager[Tracker]:
    """A tracked MLflow run in the SQLite store a training run under ``paths.root=root`` uses (experiment
    ``segexp``); ``options``: further arguments of :func:`tracked_run` (tags, run_dir, ...)."""
    defaults: dict[str, Any] = {"run_name": "x", "tags": {}, "description": ""}
    return tracked_run(
        True,
        uri=f"sqlite:///{root}/outputs/mlflow.db",
        experiment="segexp",
        artifact_location=str(root / "outputs" / "mlartifacts"),
        **{**defaults, **options},
    )


def compose_config(overrides: Sequence[str] = (), config_name: str = "train") -> DictConfig:
    """Compose ``conf/<config_name>.yaml`` like the CLI does, without the ``hydra`` node."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=list(overrides))
    with open_dict(cfg):
        cfg.pop("hydra", None)
    return cfg


@pytest.fixture
def compose_train(tmp_path: Path) -> Callable[..., DictConfig]:
    """Compose the train config with outputs (mlflow.db, data) under ``tmp_path``."""

    def _compose(*overrides: str) -> DictConfig:
        return compose_config([f"paths.root={tmp_path}", *overrides])

    return _compose


def random_batch(
    n: int, height: int, width: int, channels: int, classes: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Random uint8 images ``(n, H, W, C)`` and class-index masks ``(n, H, W)`` (two labels at least)."""
    rng = np.random.default_rng(seed)
    return (
        rng.integers(0, 256, (n, height, width, channels), dtype=np.uint8),
        rng.integers(0, max(classes, 2), (n, height, width), dtype=np.uint8),
    )


def assert_model_key_refused(overrides: Sequence[str], key: str, value: Any, message: str) -> None:
    """With ``model.<key> = value`` on the composed config, start-up validation raises a ConfigError matching
    ``message``."""
    from segexp.core.errors import ConfigError
    from segexp.training.loop import validate_run_config

    cfg = compose_config(overrides)
    with open_dict(cfg):
        cfg.model[key] = value
    with pytest.raises(ConfigError, match=message):
        validate_run_config(cfg)


def tiny_pair(seed: int, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """A grayscale image and a 3-class mask: a bright square (1) and a mid-grey disc (2)."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((size, size), np.uint8)
    y, x = rng.integers(2, size // 2 - 2, 2)
    mask[y : y + size // 3, x : x + size // 3] = 1
    cy, cx = rng.integers(size // 2, size - 6, 2)
    yy, xx = np.mgrid[:size, :size]
    mask[(yy - cy) ** 2 + (xx - cx) ** 2 <= 16] = 2
    image = np.choose(mask, [30, 220, 130]).astype(np.int16) + rng.normal(0, 8, mask.shape).astype(np.int16)
    return np.clip(image, 0, 255).astype(np.uint8), mask


def write_tiny_dataset(root: Path, counts: dict[str, int] | None = None, size: int = 32) -> Path:
    """``<root>/{train,valid,test}/{images,masks}/case<k>_<i>.png`` with RGB masks (TINY_COLOURS)."""
    counts = counts or {"train": 8, "valid": 4, "test": 2}
    seed = 0
    for case_no, (split, n) in enumerate(counts.items()):
        (root / split / "images").mkdir(parents=True, exist_ok=True)
        (root / split / "masks").mkdir(parents=True, exist_ok=True)
        for i in range(n):
            image, mask = tiny_pair(seed, size)
            seed += 1
            name = f"case{case_no}_{i:03d}.png"
            cv2.imwrite(str(root / split / "images" / name), image)
            cv2.imwrite(str(root / split / "masks" / name), encode_rgb_mask(mask, TINY_COLOURS)[..., ::-1])
    return root


TINY_DATASET_OVERRIDES = (
    "dataset=folder",
    "dataset.class_names=[background,square,disc]",
    "dataset.rgb_map={background:[0,0,0],square:[255,0,0],disc:[0,255,0]}",
    "model.num_classes=3",
    "model.image_height=32",
    "model.image_width=32",
    "model.base_filters=4",
    "model.num_layers=3",
    "training.batch_size=4",
    "training.steps_per_epoch=2",
    "training.epochs=2",
    "training.epoch_images.num=2",
    "training.loader.workers=0",
    "training.jit_compile=false",
    "training.verbose=0",
)


@pytest.fixture
def tiny_dataset(tmp_path: Path) -> Path:
    return write_tiny_dataset(tmp_path / "tiny")
