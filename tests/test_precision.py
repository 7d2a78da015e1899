"""training.precision: what auto picks, per-layer policies, float32 heads and files, loss scaling, the run's record."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import mlflow
import numpy as np
import pytest
from omegaconf import OmegaConf

from segexp.config.commands import validate_evaluate_config, validate_infer_config
from segexp.core.errors import ConfigError
from segexp.data.io.slices import read_image
from segexp.evaluation.inference import probabilities_to_classes
from segexp.models import build_model
from segexp.models.precision import (
    apply_precision,
    choose_precision,
    cpu_flags,
    model_precision,
    resolve_precision,
)
from segexp.models.saving import load_keras_model, save_keras_model
from segexp.tracking.runs import upgrade_run_config
from segexp.training.loop import train, validate_run_config

from .conftest import TINY_DATASET_OVERRIDES, compose_config


def small(**options) -> keras.Model:
    params = dict(
        name="flexunet",
        image_height=32,
        image_width=32,
        image_channels=1,
        num_classes=3,
        base_filters=4,
        base_kernels=[3, 3],
        num_layers=3,
        dropout_rate=0.0,
        dilation=[1, 1],
        norm="batch",
        norm_groups=4,
        residual=False,
        activation="relu",
    )
    return build_model(**{**params, **options})


def images(n: int = 2, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 1), dtype=np.uint8)


@pytest.mark.parametrize(
    ("gpus", "flags", "expected"),
    [
        ([(9, 0)], set(), "bf16"),  # H100
        ([(8, 0)], set(), "bf16"),  # A100: bf16 from Ampere on
        ([(7, 5)], {"avx512_bf16"}, "fp16"),  # T4: the GPU decides, not the host CPU
        ([(8, 6), (7, 0)], set(), "fp16"),  # mixed node: the oldest GPU decides
        ([], {"avx512f", "avx512_bf16"}, "bf16"),  # Zen 4, Cooper Lake
        ([], {"amx_bf16", "amx_tile"}, "bf16"),  # Sapphire Rapids
        ([], {"avx2", "fma", "avx512f"}, "fp32"),  # AVX-512 without BF16: emulated bf16 is slow
        ([], set(), "fp32"),
    ],
)
def test_auto_picks_by_hardware(gpus, flags, expected) -> None:
    assert choose_precision(gpus, flags) == expected


def test_cpu_flags_are_read_from_cpuinfo(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse2 avx2 avx512_bf16\n\n")
    assert cpu_flags(cpuinfo) == {"fpu", "sse2", "avx2", "avx512_bf16"}
    assert cpu_flags(tmp_path / "absent") == set()


def test_resolve_keeps_explicit_choices_and_refuses_others() -> None:
    assert [resolve_precision(p) for p in ("fp32", "bf16", "fp16")] == ["fp32", "bf16", "fp16"]
    assert resolve_precision("auto") in ("fp32", "bf16", "fp16")
    with pytest.raises(ValueError, match="expected one of"):
        resolve_precision("half")


def test_bf16_computes_in_bfloat16_with_a_float32_head() -> None:
    keras.utils.set_random_seed(0)
    fp32 = small()
    keras.utils.set_random_seed(0)
    bf16 = apply_precision(small(), "bf16")
    assert model_precision(bf16) == "bf16" and model_precision(fp32) == "fp32"
    conv = bf16.get_layer("enc0_conv1")
    assert conv.compute_dtype == "bfloat16" and conv.variable_dtype == "float32"
    assert bf16.layers[-1].compute_dtype == "float32"
    out32, out16 = fp32.predict(images(), verbose=0), bf16.predict(images(), verbose=0)
    assert out16.dtype == np.float32
    np.testing.assert_allclose(out16.sum(-1), 1.0, atol=1e-5)  # softmax in float32
    assert np.abs(out16 - out32).max() < 0.05  # same weights, bfloat16 rounding only


def test_fp16_training_gets_loss_scaling() -> None:
    model = apply_precision(small(), "fp16")
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    fp32 = small()
    fp32.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    assert not isinstance(fp32.optimizer, keras.optimizers.LossScaleOptimizer)


@pytest.mark.slow
def test_fp16_training_step_runs_with_loss_scaling() -> None:
    """float16 convolutions are emulated on CPUs (about a minute here), hence slow."""
    model = apply_precision(small(), "fp16")
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    before = [w.copy() for w in model.get_weights()]
    assert np.isfinite(float(model.train_on_batch(images(4), np.zeros((4, 32, 32), np.uint8))))
    assert any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights()))


def test_saved_files_are_float32_and_the_model_keeps_its_precision(tmp_path: Path) -> None:
    bf16 = apply_precision(small(), "bf16")
    save_keras_model(bf16, tmp_path / "m.keras")
    assert model_precision(bf16) == "bf16" and bf16.get_layer("enc0_conv1").compute_dtype == "bfloat16"
    loaded = load_keras_model(tmp_path / "m.keras")
    assert model_precision(loaded) == "fp32"
    assert {layer.compute_dtype for layer in loaded.layers if layer.name != "image"} == {"float32"}
    reference = apply_precision(bf16, "fp32")  # the same weights, all float32
    np.testing.assert_array_equal(loaded.predict(images(), verbose=0), reference.predict(images(), verbose=0))


def test_mixed_precision_key_is_refused_with_its_replacement(tmp_path: Path) -> None:
    cfg = compose_config([f"paths.root={tmp_path}"])
    OmegaConf.set_struct(cfg, False)
    cfg.training.mixed_precision = True
    with pytest.raises(ConfigError, match=r"training\.mixed_precision: replaced by training\.precision"):
        validate_run_config(cfg)
    with pytest.raises(ConfigError, match=r"training\.precision: expected one of .*got 'half'"):
        validate_run_config(compose_config([f"paths.root={tmp_path}", "training.precision=half"]))


def test_infer_and_evaluate_keys_are_checked_before_loading_the_model() -> None:
    infer = ["run=x", "input=y", "paths.root=/tmp"]
    with pytest.raises(ConfigError, match=r"precision: expected one of .*got 'half'"):
        validate_infer_config(compose_config([*infer, "precision=half"], "infer"))
    validate_infer_config(compose_config([*infer, "precision=auto"], "infer"))
    # every problem at once, each named by its key
    with pytest.raises(ConfigError) as caught:
        validate_infer_config(compose_config([*infer, "large_images=crop", "overlap=1.0", "postprocess=yes"], "infer"))
    for text in (
        "large_images: expected one of ['resize', 'tile'], got 'crop'",
        "overlap: must lie in [0, 1), got 1.0",
        "postprocess: expected one of ['auto', 'none'], got 'yes'",
    ):
        assert text in str(caught.value)
    with pytest.raises(ConfigError, match=r"batch_siz: unknown key"):
        validate_evaluate_config(compose_config(["run=x", "paths.root=/tmp", "+batch_siz=4"], "evaluate"))
    with pytest.raises(ConfigError, match=r"split: expected one of \['train', 'valid', 'test'\], got 'val'"):
        validate_evaluate_config(compose_config(["run=x", "paths.root=/tmp", "split=val"], "evaluate"))
    assert validate_evaluate_config(compose_config(["run=x", "paths.root=/tmp"], "evaluate")).split == "test"


def test_configs_of_earlier_runs_are_upgraded() -> None:
    old = OmegaConf.create({"training": {"mixed_precision": True, "epochs": 3}})
    assert OmegaConf.to_container(upgrade_run_config(old)) == {
        "training": {"epochs": 3, "precision": "fp16", "postprocess": "none"},
        "callbacks": {},  # training.callbacks, reduce_lr, early_stopping became the callbacks group
        "optuna": {"study": None, "storage": None, "trial": None},  # no trial of segexp's Optuna sweeper
        "cv": {"folds": None, "fold": None, "seed": 0, "test_cases": []},  # no cross-validation fold
    }
    old = OmegaConf.create({"training": {"mixed_precision": False}})
    assert upgrade_run_config(old).training.precision == "fp32"


def test_the_run_records_the_precision_it_used(tmp_path: Path, tiny_dataset: Path) -> None:
    cfg = compose_config(
        [
            f"paths.root={tmp_path}",
            *TINY_DATASET_OVERRIDES,
            f"dataset.root={tiny_dataset}",
            "training.precision=bf16",
            "training.epochs=1",
        ]
    )
    train(cfg, tmp_path / "run")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/outputs/mlflow.db")
    run = mlflow.search_runs(experiment_names=["segexp"], output_format="list")[0]
    assert run.data.params["training.precision"] == "bf16"
    assert run.data.params["training.precision_used"] == "bf16" and run.data.tags["precision"] == "bf16"
    best = load_keras_model(tmp_path / "run" / "checkpoints" / "best.keras")
    assert model_precision(best) == "fp32"  # files hold float32 policies


@pytest.mark.slow
def test_bf16_training_matches_fp32_accuracy(tmp_path: Path) -> None:
    """Issue 13's parity: the phantom trained in fp32 and in bf16 (same seed, same draws) ends within 0.02 Dice."""
    scores = {}
    for precision in ("fp32", "bf16"):
        cfg = compose_config(
            [
                f"paths.root={tmp_path}",
                f"dataset.root={tmp_path}/phantom",
                "tracking=none",
                "dataset.phantom.size=64",
                "model.image_height=64",
                "model.image_width=64",
                "training.epochs=10",
                "training.steps_per_epoch=40",
                "training.epoch_images.num=0",
                "training.verbose=0",
                f"training.precision={precision}",
            ]
        )
        train(cfg, tmp_path / precision)
        summary = json.loads((tmp_path / precision / "evaluation" / "summary.json").read_text())
        scores[precision] = summary["mean"]["foreground_mean"]["dice"]
    assert scores["fp32"] > 0.5, scores  # it learnt: the comparison means something
    assert abs(scores["fp32"] - scores["bf16"]) <= 0.02, scores

    # Inference in bf16 of the fp32-trained model: the classes of >= 99.5 % of the test pixels agree.
    test_images = np.stack([read_image(p, 1) for p in sorted((tmp_path / "phantom" / "test" / "images").glob("*.png"))])
    fp32 = load_keras_model(tmp_path / "fp32" / "checkpoints" / "best.keras")
    bf16 = apply_precision(load_keras_model(tmp_path / "fp32" / "checkpoints" / "best.keras"), "bf16")
    agree = probabilities_to_classes(fp32.predict(test_images, verbose=0)) == probabilities_to_classes(
        bf16.predict(test_images, verbose=0)
    )
    assert agree.mean() >= 0.995, agree.mean()
