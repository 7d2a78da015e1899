"""The training recipe: config rules, the schedule, the time budget and per-interval work."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import keras
import numpy as np
import pytest

from segexp.config.schema import ConfigError
from segexp.training.callbacks import on_interval
from segexp.training.loop import (
    build_optimizer,
    train,
    validate_run_config,
    validation_epochs,
)

from .conftest import TINY_DATASET_OVERRIDES


@pytest.mark.parametrize(
    "override, message",
    [
        ("training.steps_per_epoch=0", "training.steps_per_epoch: must be >= 1, or null"),
        ("training.foreground_fraction=1.5", "training.foreground_fraction: must lie in [0, 1], got 1.5"),
        ("training.max_time=0", "training.max_time: minutes must be > 0"),
        ("callbacks=reduce_lr", "callbacks.reduce_lr: ReduceLROnPlateau cannot change a learning-rate schedule"),
        ("training.validation.every_n_epochs=0", "training.validation.every_n_epochs: must be >= 1"),
        ("training.checkpoint.every_n_epochs=0", "training.checkpoint.every_n_epochs: must be >= 1"),
        (
            "loss=categorical_crossentropy +loss.batch=false",
            "loss: cannot build 'segexp.models.losses.CrossEntropyLoss' with num_classes=6 and the keys "
            "['batch', 'name']: TypeError: Loss.__init__() got an unexpected keyword argument 'batch'",
        ),
        ("model.norm=layer", "model.norm: expected one of ['batch', 'instance', 'group', 'none'], got 'layer'"),
    ],
)
def test_recipe_mistakes_are_named(compose_train, override: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        validate_run_config(compose_train(*override.split()))
    assert message in str(err.value)


def test_cross_entropy_takes_the_default_dice_keys(compose_train) -> None:
    validate_run_config(compose_train("loss=categorical_crossentropy"))


def test_oversampling_needs_draws(compose_train) -> None:
    with pytest.raises(ConfigError, match="training.foreground_fraction: oversampling draws samples"):
        validate_run_config(compose_train("training.steps_per_epoch=null"))
    validate_run_config(compose_train("training.steps_per_epoch=null", "training.foreground_fraction=0"))


def test_group_norm_groups_must_divide_the_filters(compose_train) -> None:
    with pytest.raises(ConfigError, match=r"model.norm_groups: must divide model.base_filters \(16\)"):
        validate_run_config(compose_train("model.norm=group", "model.norm_groups=5"))


def test_the_old_batch_norm_key_is_refused_with_a_hint(compose_train) -> None:
    from omegaconf import open_dict

    cfg = compose_train()
    with open_dict(cfg):
        cfg.model.batch_norm = True  # as a YAML file written for an older segexp would have it
    with pytest.raises(ConfigError, match=r"model.batch_norm: replaced by model.norm: .*batch_norm=true is norm=batch"):
        validate_run_config(cfg)


def test_default_schedule_is_nnunet_poly_over_the_whole_run(compose_train) -> None:
    """lr(step) = lr0 * (1 - step / (epochs * steps_per_epoch)) ** 0.9 (Isensee et al. 2021), lr0 = 3e-3."""
    assert validate_run_config(compose_train()).training.learning_rate == 3e-3
    t = validate_run_config(compose_train("training.epochs=4", "training.steps_per_epoch=25")).training
    optimizer = build_optimizer(t, total_steps=t.epochs * t.steps_per_epoch)
    schedule = optimizer._learning_rate
    assert isinstance(schedule, keras.optimizers.schedules.PolynomialDecay)
    for step in (0, 30, 99, 100):
        expected = t.learning_rate * (1 - step / 100) ** 0.9
        assert float(schedule(step)) == pytest.approx(expected, rel=1e-5, abs=1e-9)


def test_constant_learning_rate_without_a_schedule(compose_train) -> None:
    t = validate_run_config(compose_train("training.schedule=null", "training.learning_rate=3e-4")).training
    optimizer = build_optimizer(t, total_steps=100)
    assert not isinstance(optimizer._learning_rate, keras.optimizers.schedules.LearningRateSchedule)
    assert float(optimizer.learning_rate) == pytest.approx(3e-4)


def test_dice_options_reach_the_compiled_loss(compose_train) -> None:
    """``loss.batch``, ``loss.include_background``: nnU-Net's batch Dice without background by default, MONAI's
    per-image Dice with it on request."""
    from segexp.training.loop import compile_model

    for overrides, batch, background in (
        ((), True, False),
        (("loss.batch=false", "loss.include_background=true"), False, True),
    ):
        cfg = validate_run_config(compose_train(*overrides))
        names = list(cfg.dataset.class_names)
        loss = compile_model(cfg.model, cfg.training, names, steps_per_epoch=2, loss=cfg.loss).loss
        assert (loss.batch, loss.include_background, loss._dice.batch) == (batch, background, batch)


def test_validation_epochs_are_every_nth_and_the_last(compose_train) -> None:
    t = validate_run_config(compose_train("training.epochs=7", "training.validation.every_n_epochs=3")).training
    assert validation_epochs(t) == [3, 6, 7]
    assert [e for e in range(7) if on_interval(e, 3, last_epoch=7)] == [2, 5, 6]


def _history(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "history.csv") as f:
        return list(csv.DictReader(f))


def test_time_budget_ends_the_run_cleanly(compose_train, tiny_dataset: Path, tmp_path: Path) -> None:
    """max_time reached after epoch 1 of 5: the best model, the evaluation and MLflow are as after a
    last epoch, and the checkpoint says the run may be resumed to train on."""
    cfg = compose_train(
        *TINY_DATASET_OVERRIDES,
        f"dataset.root={tiny_dataset}",
        "training.epochs=5",
        "training.max_time=0.0001",
        "training.epoch_images.num=0",
    )
    run_dir = tmp_path / "run"
    objective = train(cfg, run_dir)
    assert len(_history(run_dir)) == 1
    assert np.isfinite(objective)
    assert (run_dir / "checkpoints" / "best.keras").is_file()
    assert (run_dir / "evaluation" / "summary.json").is_file()
    state = json.loads((run_dir / "checkpoints" / "resume" / "state.json").read_text())
    assert state["epoch"] == 1 and state["stopped"] is False

    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/outputs/mlflow.db")
    run = mlflow.MlflowClient().search_runs([mlflow.get_experiment_by_name("segexp").experiment_id])[0]
    assert run.info.status == "FINISHED"
    assert {"time/epoch_s", "time/fixed_s", "time/fixed_fraction"} <= set(run.data.metrics)
    assert 0.0 <= run.data.metrics["time/fixed_fraction"] <= 1.0


def test_intervals_validate_draw_and_checkpoint_every_nth_epoch(
    compose_train, tiny_dataset: Path, tmp_path: Path
) -> None:
    cfg = compose_train(
        *TINY_DATASET_OVERRIDES,
        f"dataset.root={tiny_dataset}",
        "tracking.enabled=false",
        "training.epochs=4",
        "training.validation.every_n_epochs=2",
        "training.epoch_images.every_n_epochs=3",
        "training.checkpoint.every_n_epochs=3",
    )
    run_dir = tmp_path / "run"
    train(cfg, run_dir)
    history = _history(run_dir)
    assert [row["val_dice_fg_mean"] != "NA" for row in history] == [False, True, False, True]
    drawn = sorted({p.name[:9] for p in (run_dir / "epoch_images").glob("*.png")})
    assert drawn == ["epoch_003", "epoch_004"]  # every 3rd and the last
    resume = run_dir / "checkpoints" / "resume"
    state = json.loads((resume / "state.json").read_text())
    assert state["epoch"] == 4 and len(state["history"]) == 4  # the last epoch is always checkpointed
    best_epoch = state["best_model_epoch"]
    assert best_epoch in (2, 4)  # chosen among validated epochs
    kept = {p.name for p in resume.iterdir()}
    assert kept == {"state.json", "epoch_004.keras", f"epoch_{best_epoch:03d}.keras"}
    # the best model is one file on disk: the resume checkpoint links it instead of writing it again
    assert (
        os.stat(resume / f"epoch_{best_epoch:03d}.keras").st_ino
        == os.stat(run_dir / "checkpoints" / "best.keras").st_ino
    )
