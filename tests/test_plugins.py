"""Components of the user's are one class plus one config entry (``_target_``): a Keras callback in the
``callbacks`` group (its counters survive a resume when it names them in ``resume_state``), a loss in the
``loss`` group (``loss._target_=...`` or a YAML in ``conf/loss/``). A network is one module declaring its
``NETWORK`` (or one ``register_network`` call from outside ``segexp.models``): every list of network choices
derives from the registry."""

from __future__ import annotations

from pathlib import Path

import keras
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from segexp.config.schema import CONF_DIR, loss_names
from segexp.core.errors import ConfigError
from segexp.models import Network, build_model, networks, register_network, unregister_network
from segexp.models.flexunet import FlexUNetParams, build_flexunet, flexunet_rules
from segexp.models.losses import BCEDiceLoss, CrossEntropyLoss, DiceCELoss, SoftDiceLoss, build_loss, loss_config
from segexp.training.callbacks import CALLBACKS, BestCheckpoint, EarlyStopping, ReduceLROnPlateau
from segexp.training.checkpoint import RESUME_DIR, read_state, restore_callbacks, state_attributes
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
    entry = "+callbacks.counter={_target_:tests.test_plugins.EpochCounter,start:10}"
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
    with pytest.raises(ConfigError, match=r"callbacks.x: needs a _target_ naming a keras.callbacks.Callback"):
        validate_run_config(compose_train(*base, "+callbacks.x={every:2}"))
    cfg = compose_train(*base, "+callbacks.x={_target_:collections.OrderedDict}")
    with pytest.raises(ConfigError, match=r"callbacks.x: 'collections.OrderedDict' built a OrderedDict"):
        train(cfg, tmp_path / "bad")
    cfg = compose_train(*base, "+callbacks.x={_target_:no_such_module.Callback}")
    with pytest.raises(ConfigError, match=r"callbacks.x: cannot build 'no_such_module.Callback'"):
        train(cfg, tmp_path / "bad2")
    with pytest.raises(ConfigError, match=r"callbacks.x: cannot build 'no_such_module.Callback': cannot import it"):
        validate_run_config(cfg)  # at start-up, before any data is read
    off = compose_train(*base, "+callbacks.x=null")
    assert OmegaConf.select(validate_run_config(off), "callbacks.x") is None


@keras.saving.register_keras_serializable(package="tests")  # the run saves and loads the compiled model
class ScaledDiceCE(DiceCELoss):
    """A loss of the user's: segexp's Dice + CE times ``scale`` (it takes the keys of ``conf/loss/dice_ce.yaml``,
    so ``loss._target_=tests.test_plugins.ScaledDiceCE`` is enough; ``+loss.scale=...`` adds its own)."""

    def __init__(self, num_classes, scale=1.0, **kwargs):
        super().__init__(num_classes, **kwargs)
        self.scale = float(scale)

    def call(self, y_true, y_pred):
        return self.scale * super().call(y_true, y_pred)

    def get_config(self):
        return {**super().get_config(), "scale": self.scale}


def test_a_user_loss_is_a_target_called_with_num_classes(compose_train, tiny_dataset: Path, tmp_path: Path) -> None:
    loss = build_loss(OmegaConf.create({"_target_": "segexp.models.losses.SoftDiceLoss", "batch": False}), 3)
    assert isinstance(loss, SoftDiceLoss) and loss.num_classes == 3 and loss.batch is False
    with pytest.raises(ConfigError, match=r"loss: 'collections.OrderedDict' built a OrderedDict"):
        build_loss(OmegaConf.create({"_target_": "collections.OrderedDict"}), 3)
    base = [*TINY_DATASET_OVERRIDES, f"dataset.root={tiny_dataset}", "tracking.enabled=false", "training.epochs=1"]
    with pytest.raises(ConfigError, match=r"loss: needs a _target_"):
        validate_run_config(compose_train(*base, "~loss", "+loss={batch:false}"))
    mine = compose_train(*base, "loss._target_=tests.test_plugins.ScaledDiceCE", "+loss.scale=0.5", "loss.batch=false")
    built = build_loss(validate_run_config(mine).loss, 3)
    assert isinstance(built, ScaledDiceCE) and built.scale == 0.5 and built.batch is False and built.num_classes == 3
    train(compose_train(*base, "~loss", "+loss={_target_:segexp.models.losses.SoftDiceLoss}"), tmp_path / "run")
    assert len(read_state(tmp_path / "run")["history"]) == 1
    train(mine, tmp_path / "mine")
    assert len(read_state(tmp_path / "mine")["history"]) == 1


def optuna_model_choices() -> list[str]:
    """The model choices of ``hparams_search=architecture_optuna`` as Hydra's sweepers parse them."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["hparams_search=architecture_optuna"], return_hydra_config=True)
    (override,) = OverridesParser.create().parse_overrides([f"model={cfg.hydra.sweeper.params.model}"])
    return list(override.value().list)


def test_a_registered_network_joins_the_derived_model_choices() -> None:
    assert optuna_model_choices() == sorted(networks())  # every network declared in segexp.models, by name
    register_network(Network("plugin_net", build_flexunet, FlexUNetParams, flexunet_rules))
    try:
        assert "plugin_net" in optuna_model_choices() and "plugin_net" in networks()
        model = build_model(
            "plugin_net", image_height=32, image_width=32, image_channels=1, num_classes=2, base_filters=4,
            base_kernels=[3, 3], num_layers=2, dropout_rate=0.0, dilation=[1, 1], norm="none", norm_groups=1,
            residual=False, activation="relu",
        )  # fmt: skip
        assert model.output_shape == (None, 32, 32, 2)
        with pytest.raises(ValueError, match="'flexunet' is segexp's own"):
            register_network(Network("flexunet", build_flexunet, FlexUNetParams, flexunet_rules))
    finally:
        unregister_network("plugin_net")
    assert "plugin_net" not in optuna_model_choices()


def test_the_loss_group_is_the_list_of_losses_and_builds_each_entry() -> None:
    names = loss_names()  # one source: conf/loss/*.yaml
    dice = [n for n in names if "batch" in loss_config(n)]  # the losses with a Dice term take its keys
    built = {n: build_loss(n, 1 if n == "bce_dice" else 3, **({"batch": False} if n in dice else {})) for n in names}
    classes = {n: f"{type(loss).__module__}.{type(loss).__name__}" for n, loss in built.items()}
    assert classes == {n: loss_config(n)._target_ for n in names}  # each YAML builds its _target_
    assert [n for n in names if n not in dice] == ["categorical_crossentropy"]
    assert isinstance(built["categorical_crossentropy"], CrossEntropyLoss)
    assert isinstance(built["bce_dice"], BCEDiceLoss) and built["bce_dice"].batch is False  # loss.batch reaches it
    assert all(loss.name == name for name, loss in built.items())
    default_yaml = (CONF_DIR / "loss" / "dice_ce.yaml").read_text()
    (comment,) = [line for line in default_yaml.splitlines() if line.startswith("# Choose another:")]
    assert [n for n in names if n != "dice_ce" and n not in comment] == []  # the default's comment names every loss


def test_a_loss_rule_is_checked_at_start_up(compose_train) -> None:
    """bce_dice (binary only) with the phantom's 6 classes is refused by validation, before anything is built."""
    with pytest.raises(ConfigError, match=r"loss: 'bce_dice' is for binary tasks \(model.num_classes == 1\)"):
        validate_run_config(compose_train("loss=bce_dice"))
    with pytest.raises(ConfigError) as err:  # a problem of the model section: the loss rule waits for it
        validate_run_config(compose_train("loss=bce_dice", "model.num_classes=x"))
    assert "model.num_classes" in str(err.value) and "bce_dice" not in str(err.value)


def test_built_in_callbacks_declare_the_state_a_resume_restores(
    compose_train, tiny_dataset: Path, tmp_path: Path
) -> None:
    """segexp's own stateful callbacks name their counters in ``resume_state`` like a user's: the checkpoint saves
    exactly those (under the class name), a fresh callback gets them back, and a resumed run goes on from them."""
    assert list(CALLBACKS)[-1] == "epoch_clock" and "callbacks" in CALLBACKS  # the user's run before the clock
    base = [
        *TINY_DATASET_OVERRIDES,
        f"dataset.root={tiny_dataset}",
        "tracking.enabled=false",
        "training.schedule=null",
        "callbacks=[reduce_lr,early_stopping]",
        "callbacks.reduce_lr.patience=0",
        "callbacks.early_stopping.patience=5",
        "training.epoch_images.num=0",
        "training.evaluate_after=false",
        "+callbacks.counter={_target_:tests.test_plugins.EpochCounter}",
    ]
    run_dir = tmp_path / "run"
    train(compose_train(*base), run_dir)
    saved = read_state(run_dir)["callbacks"]
    fresh = [
        BestCheckpoint(tmp_path / "best.keras", monitor="val_dice_fg_mean", mode="max"),
        ReduceLROnPlateau(),
        EarlyStopping(restore_best_weights=True),
        EpochCounter(),
    ]
    assert {type(c).__name__ for c in fresh} == set(saved)
    for c in fresh:
        assert set(saved[type(c).__name__]) - {"best_weights_epoch"} == set(state_attributes(c)) == set(c.resume_state)
    restore_callbacks(fresh, read_state(run_dir), run_dir / RESUME_DIR)
    for c in fresh:
        assert {a: getattr(c, a) for a in c.resume_state} == {a: saved[type(c).__name__][a] for a in c.resume_state}
    assert fresh[2].best_weights is not None  # early stopping's best weights come back from their epoch's file
    assert saved["EpochCounter"] == {"seen": 2}

    train(compose_train(*base, "training.epochs=3", f"training.resume={run_dir}"), tmp_path / "resume_job")
    resumed = read_state(run_dir)
    assert resumed["epoch"] == 3 and resumed["callbacks"]["EpochCounter"] == {"seen": 3}  # went on from 2
    scores = [e["val_dice_fg_mean"] for e in resumed["history"]]
    assert resumed["callbacks"]["BestCheckpoint"]["best"] == pytest.approx(max(scores))  # over all three epochs
