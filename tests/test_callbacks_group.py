"""The ``callbacks`` group (``conf/callbacks/``): one YAML per optional callback, each a ``_target_`` entry built
by the run; the keys it replaced (``training.early_stopping``, ``training.reduce_lr``, ``training.callbacks``)
are refused with the new spelling, in the composed config and on ``segexp-train``'s command line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import hydra
import keras
import pytest
from omegaconf import OmegaConf

from segexp.cli.shell import EXIT_USER_ERROR
from segexp.config.schema import CONF_DIR, RENAMED, renamed_overrides
from segexp.core.errors import ConfigError, ResumeError
from segexp.tracking.runs import upgrade_run_config
from segexp.training.callbacks import EarlyStopping, ReduceLROnPlateau
from segexp.training.loop import train, validate_run_config
from segexp.training.resume import prepare_resume

from .conftest import TINY_DATASET_OVERRIDES
from .test_resume import _fake_checkpoint

GROUP = sorted(p.stem for p in (CONF_DIR / "callbacks").glob("*.yaml"))


def test_the_group_holds_the_presets() -> None:
    assert {"default", "none", "early_stopping", "reduce_lr"} <= set(GROUP)


@pytest.mark.parametrize("name", GROUP)
def test_every_callbacks_yaml_composes_validates_and_builds(compose_train, name: str) -> None:
    cfg = validate_run_config(compose_train(f"callbacks={name}", "training.schedule=null"))
    entries = OmegaConf.to_container(cfg.callbacks, resolve=True)
    assert isinstance(entries, dict)
    if name in ("default", "none"):
        assert entries == {}  # nothing optional on by default (as nnU-Net)
    else:
        assert list(entries) == [name]  # one named entry, named after its file
    for entry in entries.values():
        assert entry["monitor"] == "val_dice_fg_mean" and entry["mode"] == "max"  # from training.monitor(_mode)
        callback = hydra.utils.instantiate(entry)
        assert isinstance(callback, keras.callbacks.Callback) and callback.resume_state
    for line in (CONF_DIR / "callbacks" / f"{name}.yaml").read_text().splitlines():
        if line.startswith("  ") and ":" in line:
            assert "#" in line, f"conf/callbacks/{name}.yaml: a comment per key: {line}"


def test_several_callbacks_and_their_keys_from_the_command_line(compose_train) -> None:
    cfg = validate_run_config(
        compose_train(
            "callbacks=[early_stopping,reduce_lr]",
            "training.schedule=null",
            "callbacks.early_stopping.patience=10",
            "training.monitor=val_loss",
            "training.monitor_mode=min",
            "+callbacks.mine={_target_:tests.test_plugins.EpochCounter}",
        )
    )
    assert list(cfg.callbacks) == ["early_stopping", "reduce_lr", "mine"]
    assert cfg.callbacks.early_stopping.patience == 10 and cfg.callbacks.reduce_lr.monitor == "val_loss"
    early, reduce = (hydra.utils.instantiate(cfg.callbacks[n]) for n in ("early_stopping", "reduce_lr"))
    assert isinstance(early, EarlyStopping) and early.patience == 10 and early.restore_best_weights
    assert isinstance(reduce, ReduceLROnPlateau) and reduce.monitor == "val_loss" and reduce.mode == "min"


def test_reduce_lr_cannot_change_a_schedule(compose_train) -> None:
    message = "callbacks.reduce_lr: ReduceLROnPlateau cannot change a learning-rate schedule"
    with pytest.raises(ConfigError, match=message):
        validate_run_config(compose_train("callbacks=reduce_lr"))
    mine = "+callbacks.mine={_target_:keras.callbacks.ReduceLROnPlateau}"  # any subclass, under any name
    with pytest.raises(ConfigError, match="callbacks.mine: ReduceLROnPlateau cannot change"):
        validate_run_config(compose_train(mine))
    validate_run_config(compose_train(mine, "training.schedule=null"))
    with pytest.raises(ConfigError, match=r"callbacks.x: cannot build 'no_such.Reducer': cannot import it"):
        validate_run_config(compose_train("+callbacks.x={_target_:no_such.Reducer}"))


def test_early_stopping_stops_a_short_run(compose_train, tiny_dataset: Path, tmp_path: Path) -> None:
    """``callbacks=early_stopping``: no epoch after the first improves by min_delta 10, so patience 1 stops the
    run after epoch 2 of 5; the checkpoint says it stopped (a resume does not train on)."""
    cfg = compose_train(
        *TINY_DATASET_OVERRIDES,
        f"dataset.root={tiny_dataset}",
        "tracking.enabled=false",
        "training.epochs=5",
        "training.epoch_images.num=0",
        "training.evaluate_after=false",
        "callbacks=early_stopping",
        "callbacks.early_stopping.patience=1",
        "callbacks.early_stopping.min_delta=10",
    )
    run_dir = tmp_path / "run"
    train(cfg, run_dir)
    state = json.loads((run_dir / "checkpoints" / "resume" / "state.json").read_text())
    assert state["epoch"] == 2 and state["stopped"] is True
    assert state["callbacks"]["EarlyStopping"]["stopped_epoch"] == 1  # Keras counts from 0


@pytest.mark.parametrize(
    ("override", "old", "new"),
    [
        ("+training.early_stopping.enabled=true", "training.early_stopping", "callbacks=early_stopping"),
        ("+training.reduce_lr.patience=2", "training.reduce_lr", "callbacks.reduce_lr.patience="),
        ("+training.callbacks.x={_target_:a.B}", "training.callbacks", "+callbacks.<name>={_target_:"),
    ],
)
def test_old_callback_keys_are_refused_with_the_new_key(compose_train, override: str, old: str, new: str) -> None:
    with pytest.raises(ConfigError) as err:
        validate_run_config(compose_train(override))
    assert f"{old}: moved to" in str(err.value) and new in str(err.value)
    assert renamed_overrides([override]) == [f"{old}: {RENAMED[old]}"]


def test_the_override_check_reads_keys_only() -> None:
    overrides = [
        "-m",
        "training.early_stopping.enabled=true",
        "~training.reduce_lr",
        "training.epochs=3",
        "callbacks=early_stopping",
        "callbacks.early_stopping.patience=3",
        "training.early_stopping_x=1",  # another key that starts alike
        "++training.mixed_precision=true",
    ]
    assert [p.split(":")[0] for p in renamed_overrides(overrides)] == [
        "training.early_stopping",
        "training.reduce_lr",
        "training.mixed_precision",
    ]


def test_the_train_shell_refuses_an_old_key_with_the_new_one(tmp_path: Path) -> None:
    """Hydra would refuse ``training.early_stopping.enabled=true`` (no such key) without naming the new one."""
    result = subprocess.run(
        [sys.executable, "-m", "segexp.cli.train", f"paths.root={tmp_path}", "training.early_stopping.enabled=true"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == EXIT_USER_ERROR, result.stderr[-2000:]
    assert "training.early_stopping: moved to the callbacks group: callbacks=early_stopping" in result.stderr
    assert "Could not override" not in result.stderr


def test_runs_of_earlier_segexp_get_the_callbacks_group() -> None:
    old = OmegaConf.create(
        {
            "training": {
                "monitor": "val_loss",
                "monitor_mode": "min",
                "reduce_lr": {"enabled": False, "factor": 0.5, "patience": 3, "min_lr": 1e-6},
                "early_stopping": {"enabled": True, "patience": 6, "min_delta": 0.0},
                "callbacks": {"mine": {"_target_": "a.B"}},
            }
        }
    )
    upgraded = upgrade_run_config(old)
    assert set(upgraded.training) == {"monitor", "monitor_mode", "postprocess"}
    assert OmegaConf.to_container(upgraded.callbacks) == {
        "early_stopping": {
            "_target_": "segexp.training.callbacks.EarlyStopping",
            "monitor": "val_loss",
            "mode": "min",
            "patience": 6,
            "min_delta": 0.0,
            "restore_best_weights": True,
            "verbose": 1,
        },
        "mine": {"_target_": "a.B"},
    }


def test_a_checkpoint_of_an_earlier_segexp_resumes(compose_train, tmp_path: Path) -> None:
    """A resume checkpoint whose config still has training.early_stopping (enabled) continues under
    callbacks=early_stopping: the saved config is read in today's keys before the two are compared."""
    now = compose_train("callbacks=early_stopping", f"training.resume={tmp_path / 'run'}")
    before = OmegaConf.to_container(now, resolve=True)
    assert isinstance(before, dict)
    del before["callbacks"]
    before["training"]["early_stopping"] = {"enabled": True, "patience": 6, "min_delta": 0.0}
    before["training"]["reduce_lr"] = {"enabled": False, "factor": 0.5, "patience": 3, "min_lr": 1e-6}
    before["training"]["callbacks"] = {}
    _fake_checkpoint(tmp_path / "run", before)
    assert prepare_resume(OmegaConf.to_container(now, resolve=True), tmp_path / "job").epoch == 1
    other = compose_train(
        "callbacks=early_stopping", "callbacks.early_stopping.patience=2", f"training.resume={tmp_path / 'run'}"
    )
    with pytest.raises(ResumeError, match=r"callbacks.early_stopping.patience: 6 -> 2"):
        prepare_resume(OmegaConf.to_container(other, resolve=True), tmp_path / "job")
