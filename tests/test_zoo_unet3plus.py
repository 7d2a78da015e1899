"""UNet 3+ (issue 14): builds, trains on every loss, saves and reloads safely, refuses bad parameters by name;
with deep supervision the side outputs reach the loss and the gradients in training, while everything outside
training (metrics, checkpoints, evaluation, inference, MLflow) sees the main output alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import keras
import mlflow
import numpy as np
import pytest
from omegaconf import OmegaConf

from segexp.config.options import Norm, values
from segexp.config.schema import loss_names
from segexp.evaluation.prediction import infer
from segexp.models import build_model
from segexp.models.losses import build_loss
from segexp.models.metrics import build_metrics
from segexp.models.saving import load_for_inference, load_keras_model, save_keras_model
from segexp.models.unet3plus import DeepSupervision
from segexp.tracking.runs import open_run
from segexp.training.checkpoint import read_state
from segexp.training.loop import train, validate_run_config

from .conftest import assert_model_key_refused, compose_config, random_batch

#: Tiny parameters (the preset's keys, small widths): 3 levels, so two side outputs with deep supervision.
TINY: dict[str, Any] = {
    "filters": [4, 8, 16],
    "skip_filters": 4,
    "deep_supervision": False,
    "aux_weights": [1.0, 1.0],
    "norm": "batch",
    "norm_groups": 4,
    "dropout_rate": 0.1,
}


def tiny(height: int = 32, width: int = 32, channels: int = 1, classes: int = 3, **options: Any) -> keras.Model:
    return build_model(
        name="unet3plus",
        image_height=height,
        image_width=width,
        image_channels=channels,
        num_classes=classes,
        **{**TINY, **options},
    )


@pytest.mark.parametrize(("height", "width", "channels", "deep_supervision"), [(32, 32, 1, False), (64, 32, 3, True)])
def test_builds_at_two_sizes_with_one_or_three_channels(
    height: int, width: int, channels: int, deep_supervision: bool
) -> None:
    for classes in (3, 1):  # softmax, and the sigmoid head of binary tasks
        model = tiny(height, width, channels, classes, deep_supervision=deep_supervision)
        assert model.inputs[0].dtype == "uint8" and tuple(model.input_shape[1:]) == (height, width, channels)
        assert model.output_shape == (None, height, width, classes) and len(model.outputs) == 1
        x, _ = random_batch(2, height, width, channels, classes)
        y = model.predict(x, verbose=0)
        assert y.shape == (2, height, width, classes) and y.dtype == np.float32
        if classes > 1:
            np.testing.assert_allclose(y.sum(-1), 1.0, atol=1e-5)
        else:
            assert 0.0 <= y.min() and y.max() <= 1.0


@pytest.mark.parametrize("norm", values(Norm))
def test_every_norm_builds_and_runs(norm: str) -> None:
    model = tiny(norm=norm, norm_groups=2, deep_supervision=True)
    x, _ = random_batch(1, 32, 32, 1, 3)
    assert tuple(model(x).shape) == (1, 32, 32, 3)
    kinds = {type(layer).__name__ for layer in model.network.layers}
    expected = {"batch": "BatchNormalization", "instance": "InstanceNormalization", "group": "GroupNormalization"}
    assert norm == "none" or expected[norm] in kinds
    assert norm != "none" or not kinds & {"BatchNormalization", "GroupNormalization", "InstanceNormalization"}


def test_parameter_count_follows_the_paper() -> None:
    """Levels f = [4, 8, 16] (N = 3), skip width s = 4 (the paper's 64), 1 input channel, K = 3 classes, batch
    norm (4 numbers per channel), convs before a norm without bias. Encoder level: 9*c_in*f + 4f + 9*f*f + 4f.
    Decoder stage i, the paper's eq. 3 with D_F = 3 (its conv weights): 9 * [sum_{k<=i} d(X_En^k) * s +
    sum_{k>i} d(X_De^k) * s + (N*s)^2], d(X_De^k) = N*s below the bottleneck and f_N at it; plus the norms of its
    N skip convs and of the aggregation conv: 4*N*s + 4*N*s. Head: a 3x3 conv 9*N*s*K + K. Deep supervision adds
    a 3x3 conv per side output: 9*N*s*K + K for the decoder stages 2...N-1, 9*f_N*K + K for the bottleneck."""
    f, s, c_in, k = [4, 8, 16], 4, 1, 3
    n = len(f)

    def double(c: int, out: int) -> int:
        return 9 * c * out + 4 * out + 9 * out * out + 4 * out

    total = double(c_in, f[0]) + double(f[0], f[1]) + double(f[1], f[2])
    depth = {level: n * s for level in range(n - 1)} | {n - 1: f[-1]}  # d(X_De^k), the bottleneck last
    for i in range(n - 1):
        weights = sum(f[j] * s for j in range(i + 1)) + sum(depth[j] * s for j in range(i + 1, n)) + (n * s) ** 2
        total += 9 * weights + 4 * n * s + 4 * n * s
    total += 9 * n * s * k + k
    assert tiny().count_params() == total == 9995
    sides = (9 * n * s * k + k) + (9 * f[-1] * k + k)
    assert tiny(deep_supervision=True).count_params() == total + sides


@pytest.mark.slow  # builds a 27 M-parameter model
def test_paper_size_parameter_count() -> None:
    """The paper's widths (64...1024, s = 64) give about the 26.97 M parameters of its Table 1 (VGG-16 encoder)."""
    model = build_model(
        name="unet3plus",
        image_height=32,
        image_width=32,
        image_channels=1,
        num_classes=1,
        **{**TINY, "filters": [64, 128, 256, 512, 1024], "skip_filters": 64},
    )
    assert model.count_params() == pytest.approx(26.97e6, rel=0.002)


@pytest.mark.parametrize(
    "loss",
    [
        pytest.param(name, marks=pytest.mark.slow) if name != "dice_ce" else name
        for name in loss_names()  # every conf/loss/ YAML
    ],
)
def test_one_training_step_on_each_loss(loss: str) -> None:
    """With deep supervision (the loss on the main output and on every side output; the plain network trains in
    test_save_safe_load_identical_predictions): every trainable weight moves, the side heads' included."""
    classes = 1 if loss == "bce_dice" else 3
    model = tiny(classes=classes, deep_supervision=True)
    model.compile(optimizer="adam", loss=build_loss(loss, classes))
    x, y = random_batch(2, 32, 32, 1, classes)
    before = [w.copy() for w in model.get_weights()]
    value = float(model.train_on_batch(x, y))
    assert np.isfinite(value)
    changed = [not np.array_equal(a, b) for a, b in zip(before, model.get_weights())]
    assert all(changed[i] for i, w in enumerate(model.weights) if w.trainable)  # side heads included


@pytest.mark.filterwarnings("ignore:Gradients do not exist")  # aux_weights 0: the side heads get no gradient
def test_deep_supervision_adds_the_weighted_side_losses() -> None:
    """The first step's loss is L(main) + sum_k w_k L(side_k) (with aux_weights 0 it is L(main) alone),
    L the compiled loss, every output from the same training-mode forward pass."""
    x, y = random_batch(2, 32, 32, 1, 3, seed=3)
    loss = build_loss("dice_ce", 3)
    weighted = tiny(deep_supervision=True, aux_weights=[0.5, 0.25], dropout_rate=0.0)
    plain = tiny(deep_supervision=True, aux_weights=[0.0, 0.0], dropout_rate=0.0)
    plain.set_weights(weighted.get_weights())
    main, *sides = weighted(x, training=True)
    assert [tuple(s.shape) for s in sides] == [(2, 32, 32, 3)] * 2
    expected_main = float(loss(y, main))
    expected = expected_main + 0.5 * float(loss(y, sides[0])) + 0.25 * float(loss(y, sides[1]))
    values = []
    for model in (weighted, plain):
        model.compile(optimizer=keras.optimizers.SGD(0.0), loss=loss)
        values.append(float(model.train_on_batch(x, y)))
    assert values[0] == pytest.approx(expected, rel=1e-4)
    assert values[1] == pytest.approx(expected_main, rel=1e-4)
    assert values[0] > values[1]


def test_deep_supervision_is_single_output_outside_training() -> None:
    model = tiny(deep_supervision=True)
    assert isinstance(model, DeepSupervision)
    x, y = random_batch(2, 32, 32, 1, 3)
    assert tuple(model(x).shape) == (2, 32, 32, 3)  # not a tuple: the main output only
    metrics = build_metrics(["bg", "a", "b"], 3)
    model.compile(optimizer="adam", loss=build_loss("dice_ce", 3), metrics=metrics)
    history = model.fit(x, y, validation_data=(x, y), epochs=1, verbose=0).history
    names = ["loss", *(m.name for m in metrics)]  # those of a single-output model: no per-output losses
    assert sorted(history) == sorted([*names, *(f"val_{n}" for n in names)])
    assert "val_dice_fg_mean" in history


@pytest.mark.parametrize("deep_supervision", [False, True])
def test_save_safe_load_identical_predictions(tmp_path: Path, deep_supervision: bool) -> None:
    """Deep supervision is saved after a step: the file also holds the side heads and the optimizer state (resume)."""
    model = tiny(channels=3, deep_supervision=deep_supervision)
    x, y = random_batch(2, 32, 32, 3, 3, seed=5)
    if deep_supervision:
        model.compile(optimizer="adam", loss=build_loss("dice_ce", 3))
        model.train_on_batch(x, y)
    expected = model.predict(x, verbose=0)
    save_keras_model(model, tmp_path / "m.keras")
    loaded = load_keras_model(tmp_path / "m.keras")  # safe mode
    assert type(loaded) is type(model)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), expected)
    if deep_supervision:
        assert int(loaded.optimizer.iterations) == 1 and isinstance(loaded.loss, type(model.loss))
        for ours, theirs in zip(loaded.optimizer.variables, model.optimizer.variables):
            np.testing.assert_array_equal(keras.ops.convert_to_numpy(ours), keras.ops.convert_to_numpy(theirs))
        for ours, theirs in zip(loaded.get_weights(), model.get_weights()):  # side heads included
            np.testing.assert_array_equal(ours, theirs)


def test_every_preset_key_composes_and_validates(tmp_path: Path) -> None:
    typed = validate_run_config(compose_config([f"paths.root={tmp_path}", "model=unet3plus"]))
    assert typed.model.name == "unet3plus" and typed.model.deep_supervision is False
    typed = validate_run_config(
        compose_config([f"paths.root={tmp_path}", "model=unet3plus", "model.deep_supervision=true"])
    )
    assert list(typed.model.aux_weights) == [1.0] * (len(typed.model.filters) - 1)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("filters", [4], r"model\.filters: expected at least two positive widths"),
        ("skip_filters", 0, r"model\.skip_filters: must be >= 1"),
        ("aux_weights", [1.0, 1.0], r"model\.aux_weights: expected len\(filters\)-1 = 4 weights"),
        ("aux_weights", [1.0, -1.0, 1.0, 1.0], r"model\.aux_weights: every weight must be >= 0"),
        ("deep_supervision", "maybe", r"model\.deep_supervision: "),
        ("dropout_rate", 1.5, r"model\.dropout_rate: must lie in \[0, 1\)"),
        ("image_height", 36, r"model\.image_height: 36 is not divisible by 2\*\*\(len\(filters\)-1\) = 16"),
        ("norm_groups", 3, r"model\.norm_groups: must divide every width in model\.filters"),
        ("depth", 3, r"model\.depth: unknown key for model unet3plus"),
    ],
)
def test_bad_parameters_are_refused_by_name(tmp_path: Path, key: str, value: Any, message: str) -> None:
    assert_model_key_refused(
        [f"paths.root={tmp_path}", "model=unet3plus", "model.norm=group", "model.deep_supervision=true"],
        key,
        value,
        message,
    )


@pytest.mark.slow  # two training runs and an inference: about 2 min on 2 busy cores
def test_deep_supervision_run_trains_resumes_evaluates_and_infers(
    compose_train, tiny_dataset: Path, tmp_path: Path
) -> None:
    """segexp-train with model.deep_supervision=true: one epoch, resumed for a second (the checkpoint holds the
    side heads and the optimizer), evaluated; best.keras, the run and the MLflow model give the main output."""
    overrides = [
        "dataset=folder",
        f"dataset.root={tiny_dataset}",
        "dataset.class_names=[background,square,disc]",
        "dataset.rgb_map={background:[0,0,0],square:[255,0,0],disc:[0,255,0]}",
        "model=unet3plus",
        "model.num_classes=3",
        "model.image_height=32",
        "model.image_width=32",
        "model.filters=[4,8,16]",
        "model.skip_filters=4",
        "model.deep_supervision=true",
        "model.aux_weights=[1.0,0.5]",
        "training.batch_size=4",
        "training.steps_per_epoch=1",
        "training.epochs=1",
        "training.epoch_images.num=1",
        "training.loader.workers=0",
        "training.jit_compile=false",
        "training.verbose=0",
    ]
    run_dir = tmp_path / "run"
    cfg = compose_train(*overrides)
    (run_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")  # what the CLI's Hydra writes (open_run reads it)
    train(cfg, run_dir)
    assert read_state(run_dir)["epoch"] == 1
    train(compose_train(*overrides, "training.epochs=2", f"training.resume={run_dir}"), tmp_path / "resume_job")
    state = read_state(run_dir)
    assert state["epoch"] == 2 and "val_dice_fg_mean" in state["history"][-1]
    assert (run_dir / "evaluation").is_dir()
    x = np.zeros((1, 32, 32, 1), np.uint8)
    best = load_for_inference(run_dir / "checkpoints" / "best.keras", "fp32")
    assert isinstance(best, DeepSupervision) and best.predict(x, verbose=0).shape == (1, 32, 32, 3)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/outputs/mlflow.db")
    logged = mlflow.search_logged_models(
        experiment_ids=[mlflow.get_experiment_by_name("segexp").experiment_id], output_format="list"
    )
    assert len(logged) == 2  # one per finished fit: the first epoch, and the resumed run
    for entry in logged:
        model = mlflow.keras.load_model(entry.model_uri, load_model_kwargs={"safe_mode": True})
        assert model.predict(x, verbose=0).shape == (1, 32, 32, 3)
    failures = infer(open_run(str(run_dir)), tiny_dataset / "test" / "images", tmp_path / "out")
    assert failures == [] and len(list((tmp_path / "out" / "masks").iterdir())) == 2
