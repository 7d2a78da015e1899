"""Components of the user's are one class plus one config entry (``_target_``): a Keras callback in
``training.callbacks`` (its counters survive a resume when it names them in ``resume_state``), a loss in
``training.loss``."""

from __future__ import annotations

from pathlib import Path

import keras
import pytest
from omegaconf import OmegaConf

from segexp.core.errors import ConfigError
from segexp.models.losses import SoftDiceLoss, build_loss
from segexp.training.checkpoint import RESUME_DIR, read_state, restore_callbacks
from segexp.training.loop import train, validate_run_config

from .conftest import TINY_DATASET_OVERRIDES


class EpochCounter(keras.callbacks.Callback):
    """Counts finished epochs; ``start`` only to show that config kwargs reach the constructor."""

    resume_state = ("seen",)

    def __init__(self, start: int = 0) -> None:
        super().__init__()
        self.seen = start

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.seen += 1


def test_a_user_callback_runs_and_its_state_is_checkpointed(compose_train, tiny_dataset: Path, tmp_path: Path) -> None:
    entry = "+training.callbacks.counter={_target_:tests.test_plugins.EpochCounter,start:10}"
    cfg = compose_train(*TINY_DATASET_OVERRIDES, f"dataset.root={tiny_dataset}", "tracking.enabled=false", entry)
    run_dir = tmp_path / "run"
    train(cfg, run_dir)
    state = read_state(run_dir)
    assert state["callbacks"]["EpochCounter"] == {"seen": 12}  # two epochs on top of start=10

    fresh = EpochCounter()
    restore_callbacks([fresh], state, run_dir / RESUME_DIR)
    assert fresh.seen == 12


def test_bad_callback_entries_are_named(compose_train, tiny_dataset: Path, tmp_path: Path) -> None:
    base = [*TINY_DATASET_OVERRIDES, f"dataset.root={tiny_dataset}", "tracking.enabled=false"]
    with pytest.raises(ConfigError, match=r"training.callbacks.x: needs a _target_ naming a keras.callbacks.Callback"):
        validate_run_config(compose_train(*base, "+training.callbacks.x={every:2}"))
    cfg = compose_train(*base, "+training.callbacks.x={_target_:collections.OrderedDict}")
    with pytest.raises(ConfigError, match=r"training.callbacks.x: 'collections.OrderedDict' built a OrderedDict"):
        train(cfg, tmp_path / "bad")
    cfg = compose_train(*base, "+training.callbacks.x={_target_:no_such_module.Callback}")
    with pytest.raises(ConfigError, match=r"training.callbacks.x: cannot build 'no_such_module.Callback'"):
        train(cfg, tmp_path / "bad2")
    off = compose_train(*base, "+training.callbacks.x=null")
    assert OmegaConf.select(validate_run_config(off), "training.callbacks.x") is None


def test_a_user_loss_is_a_target_called_with_num_classes(compose_train, tiny_dataset: Path, tmp_path: Path) -> None:
    loss = build_loss(OmegaConf.create({"_target_": "segexp.models.losses.SoftDiceLoss", "batch": False}), 3)
    assert isinstance(loss, SoftDiceLoss) and loss.num_classes == 3 and loss.batch is False
    with pytest.raises(ConfigError, match=r"training.loss: 'collections.OrderedDict' built a OrderedDict"):
        build_loss(OmegaConf.create({"_target_": "collections.OrderedDict"}), 3)
    base = [*TINY_DATASET_OVERRIDES, f"dataset.root={tiny_dataset}", "tracking.enabled=false", "training.epochs=1"]
    with pytest.raises(ConfigError, match=r"training.loss: a mapping needs a _target_"):
        validate_run_config(compose_train(*base, "training.loss={batch:false}"))
    train(compose_train(*base, "training.loss={_target_:segexp.models.losses.SoftDiceLoss}"), tmp_path / "run")
    assert len(read_state(tmp_path / "run")["history"]) == 1
