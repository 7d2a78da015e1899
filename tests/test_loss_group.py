"""The ``loss`` group (``conf/loss/``): one YAML per loss, each a ``_target_`` entry built with ``num_classes``; every
list of losses is read from that folder; the keys it replaced (``training.loss``, ``training.dice``) are refused
with the new spelling, in the composed config and on ``segexp-train``'s command line, and upgraded in the configs
of earlier runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import keras
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from segexp.cli.shell import EXIT_USER_ERROR
from segexp.config.resolvers import loss_choices
from segexp.config.schema import CONF_DIR, RENAMED, loss_names, renamed_overrides
from segexp.core.errors import ConfigError, ResumeError
from segexp.models.losses import build_loss, loss_config
from segexp.tracking.runs import open_run, upgrade_run_config
from segexp.training.loop import validate_run_config
from segexp.training.resume import prepare_resume

from .test_resume import _fake_checkpoint

#: A binary task (a sigmoid head), for the loss that takes only that.
BINARY = (
    "dataset=folder",
    "dataset.root=/tmp",
    "dataset.class_names=[background,fg]",
    "dataset.rgb_map={background:[0,0,0],fg:[255,0,0]}",
)


def test_the_group_holds_the_built_in_losses() -> None:
    assert {"dice_ce", "dice", "categorical_crossentropy", "bce_dice"} <= set(loss_names())
    assert OmegaConf.load(CONF_DIR / "train.yaml").defaults.count({"loss": "dice_ce"}) == 1  # the default


@pytest.mark.parametrize("name", loss_names())
def test_every_loss_yaml_composes_validates_and_builds(compose_train, name: str) -> None:
    binary = name == "bce_dice"
    cfg = validate_run_config(compose_train(f"loss={name}", *(BINARY + ("model.num_classes=1",) if binary else ())))
    assert OmegaConf.to_container(cfg.loss) == OmegaConf.to_container(loss_config(name))
    loss = build_loss(cfg.loss, cfg.model.num_classes)
    assert isinstance(loss, keras.losses.Loss) and loss.name == name and loss.num_classes == (1 if binary else 6)
    assert f"{type(loss).__module__}.{type(loss).__name__}" == cfg.loss._target_
    for line in (CONF_DIR / "loss" / f"{name}.yaml").read_text().splitlines():
        if not line.startswith("#") and ":" in line:
            assert "#" in line, f"conf/loss/{name}.yaml: a comment per key: {line}"


def test_loss_keys_from_the_command_line(compose_train) -> None:
    cfg = validate_run_config(compose_train("loss=dice", "loss.batch=false", "loss.include_background=true"))
    loss = build_loss(cfg.loss, cfg.model.num_classes)
    assert (loss.batch, loss.include_background, loss.name) == (False, True, "dice")


def test_a_loss_states_its_own_rules(compose_train) -> None:
    """bce_dice takes a sigmoid head only; a loss without a Dice term has no Dice key to set, and one added is
    refused when the loss is built at start-up, naming the loss."""
    with pytest.raises(ConfigError, match=r"loss: 'bce_dice' is for binary tasks \(model.num_classes == 1\), got "):
        validate_run_config(
            compose_train(
                "loss=bce_dice", "dataset=folder", "dataset.root=/tmp", "dataset.class_names=[background,a,b]"
            )
        )
    with pytest.raises(ConfigCompositionException, match="loss.batch"):
        compose_train("loss=categorical_crossentropy", "loss.batch=false")  # no such key to change
    with pytest.raises(ConfigError, match=r"loss: cannot build 'segexp.models.losses.CrossEntropyLoss' .*'batch'"):
        validate_run_config(compose_train("loss=categorical_crossentropy", "+loss.batch=false"))
    with pytest.raises(ConfigError, match=r"loss._target_: cannot import 'no_such.Loss' \(ModuleNotFoundError"):
        validate_run_config(compose_train("loss._target_=no_such.Loss"))


def test_the_optuna_loss_choice_is_derived_from_the_group() -> None:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["hparams_search=architecture_optuna"], return_hydra_config=True)
    (override,) = OverridesParser.create().parse_overrides([f"loss={cfg.hydra.sweeper.params.loss}"])
    assert list(override.value().list) == [n for n in loss_names() if n not in ("bce_dice", "categorical_crossentropy")]
    assert loss_choices() == ", ".join(loss_names())
    with pytest.raises(ValueError, match=r"\['focal'\] are not losses of conf/loss/"):
        loss_choices("focal")


@pytest.mark.parametrize(
    ("override", "old", "new"),
    [
        ("+training.loss=dice", "training.loss", "loss=bce_dice | categorical_crossentropy | dice | dice_ce"),
        ("+training.loss={_target_:a.B}", "training.loss", "loss._target_=my_pkg.MyLoss"),
        ("+training.dice.batch=false", "training.dice", "loss.batch=false, loss.include_background=true"),
    ],
)
def test_old_loss_keys_are_refused_with_the_new_key(compose_train, override: str, old: str, new: str) -> None:
    with pytest.raises(ConfigError) as err:
        validate_run_config(compose_train(override))
    assert f"{old}: moved " in str(err.value) and new in str(err.value)
    assert renamed_overrides([override]) == [f"{old}: {RENAMED[old]}"]


def test_the_train_shell_refuses_the_old_loss_keys_with_the_new_ones(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "segexp.cli.train",
            f"paths.root={tmp_path}",
            "training.loss=dice",
            "training.dice.include_background=true",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == EXIT_USER_ERROR, result.stderr[-2000:]
    assert "training.loss: moved to the loss group: loss=" in result.stderr
    assert "training.dice: moved into the loss's own keys: loss.batch=false" in result.stderr
    assert "Could not override" not in result.stderr


def _old_training(loss: object, **dice: bool) -> dict:
    return {"training": {"loss": loss, "dice": {"batch": True, "include_background": False, **dice}}}


def test_runs_of_earlier_segexp_get_the_loss_entry() -> None:
    upgraded = upgrade_run_config(OmegaConf.create(_old_training("dice", batch=False, include_background=True)))
    assert set(upgraded.training) == {"postprocess"}
    assert OmegaConf.to_container(upgraded.loss) == {
        **OmegaConf.to_container(loss_config("dice")),  # type: ignore[dict-item]
        "batch": False,
        "include_background": True,
    }
    ce = upgrade_run_config(OmegaConf.create(_old_training("categorical_crossentropy")))
    assert OmegaConf.to_container(ce.loss) == OmegaConf.to_container(loss_config("categorical_crossentropy"))
    mine = upgrade_run_config(OmegaConf.create(_old_training({"_target_": "a.B", "alpha": 2})))
    assert OmegaConf.to_container(mine.loss) == {"_target_": "a.B", "alpha": 2}  # the user's, as it was


def test_a_run_of_an_earlier_segexp_evaluates_and_resumes(compose_train, tmp_path: Path) -> None:
    """Its saved config (training.loss, training.dice) reads in today's keys: segexp-evaluate's run and a resume,
    which compares the checkpoint's config with today's."""
    now = compose_train("loss.batch=false", f"training.resume={tmp_path / 'run'}")
    before = OmegaConf.to_container(now, resolve=True)
    assert isinstance(before, dict)
    del before["loss"]
    before["training"].update(_old_training("dice_ce", batch=False)["training"])
    _fake_checkpoint(tmp_path / "run", before)
    assert prepare_resume(OmegaConf.to_container(now, resolve=True), tmp_path / "job").epoch == 1
    other = compose_train(f"training.resume={tmp_path / 'run'}")
    with pytest.raises(ResumeError, match=r"loss.batch: False -> True"):
        prepare_resume(OmegaConf.to_container(other, resolve=True), tmp_path / "job")

    (tmp_path / "run" / ".hydra").mkdir()
    (tmp_path / "run" / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(before)))
    (tmp_path / "run" / "checkpoints" / "best.keras").touch()
    config = open_run(str(tmp_path / "run")).config
    assert "loss" not in config.training and config.loss.batch is False
    assert config.loss == OmegaConf.to_container(now.loss, resolve=True)
