"""``training.devices``: parsing, config rules, and data-parallel training on two logical CPU replicas.

Logical CPU devices can only be made before TensorFlow initialises, so the two-replica runs
happen in one fresh subprocess (:data:`TWO_REPLICAS`), which writes its measurements as JSON;
the tests below read them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from segexp.config.schema import REPO_DIR, validate_train_config
from segexp.core.errors import ConfigError, RunError
from segexp.training.devices import data_parallel, device_names, is_default_device

from .conftest import TINY_DATASET_OVERRIDES, write_tiny_dataset

# --------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("devices", "gpus", "expected"),
    [
        ("auto", 0, ["/cpu:0"]),
        ("auto", 1, ["/gpu:0"]),
        ("auto", 4, ["/gpu:0", "/gpu:1", "/gpu:2", "/gpu:3"]),
        (1, 0, ["/cpu:0"]),
        (2, 0, ["/cpu:0", "/cpu:1"]),
        (2, 4, ["/gpu:0", "/gpu:1"]),
        ([1, 3], 4, ["/gpu:1", "/gpu:3"]),
        (["GPU:0", "/device:gpu:1"], 2, ["/gpu:0", "/gpu:1"]),
        (["cpu:0", "/CPU:1"], 0, ["/cpu:0", "/cpu:1"]),
    ],
)
def test_device_names(devices, gpus: int, expected: list[str]) -> None:
    assert device_names(devices, gpus) == expected


@pytest.mark.parametrize(
    ("devices", "gpus", "message"),
    [
        (3, 2, "3 devices requested, but TensorFlow sees 2 GPUs"),
        ([0, 2], 2, "/gpu:2 not found: TensorFlow sees 2 GPUs"),
        ([0, "GPU:0"], 2, "listed twice"),
        (["TPU:0"], 0, "'TPU:0' is not a GPU index or a device name"),
        (0, 0, "must be >= 1"),
        ([], 0, "non-empty list"),
    ],
)
def test_device_names_refuses(devices, gpus: int, message: str) -> None:
    with pytest.raises(ConfigError, match="training.devices") as err:
        device_names(devices, gpus)
    assert message in str(err.value)


def test_default_device_needs_no_strategy() -> None:
    assert is_default_device(["/cpu:0"], 0) and is_default_device(["/gpu:0"], 1)
    assert not is_default_device(["/gpu:1"], 2) and not is_default_device(["/cpu:0", "/cpu:1"], 0)
    assert data_parallel(1, 7) is None  # the default: today's single-device path, TensorFlow untouched


def test_logical_cpus_after_tensorflow_started_is_a_clear_error() -> None:
    import tensorflow as tf

    tf.constant(1.0)  # this pytest process runs TensorFlow: its device list is fixed
    if len(tf.config.list_logical_devices("CPU")) >= 2 or tf.config.list_physical_devices("GPU"):
        pytest.skip("this process already has two CPU devices, or GPUs")
    with pytest.raises(RunError, match="training.devices: 2 logical CPU devices must be created before TensorFlow"):
        data_parallel(2, 4)


# --------------------------------------------------------------------------- config rules


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("training.devices=3", "training.batch_size: the global batch (4) must split evenly over the 3 replicas"),
        ("training.devices=[0,1,2]", "training.batch_size: the global batch (4) must split evenly over the 3 replicas"),
        ("training.devices=0", "training.devices: must be >= 1, got 0"),
        ("training.devices=two", "training.devices: expected 1, auto, a count or a list"),
        ("training.devices=[GPU0]", "training.devices: expected GPU indices (>= 0) or device names like 'GPU:0'"),
    ],
)
def test_bad_devices_are_refused_naming_the_key(compose_train, override: str, message: str) -> None:
    cfg = compose_train(*TINY_DATASET_OVERRIDES, "dataset.root=unread", override)
    with pytest.raises(ConfigError) as err:
        validate_train_config(cfg)
    assert message in str(err.value)


@pytest.mark.parametrize("override", ["training.devices=auto", "training.devices=2", "training.devices=[0,GPU:1]"])
def test_good_devices_pass(compose_train, override: str) -> None:
    validate_train_config(compose_train(*TINY_DATASET_OVERRIDES, "dataset.root=unread", override))


def test_default_is_one_device_and_the_gpu_preset_takes_every_gpu(compose_train) -> None:
    assert compose_train().training.devices == 1
    assert compose_train("launcher=gpu").training.devices == "auto"


# --------------------------------------------------------------------------- two replicas (fresh subprocesses)

#: ``metrics``: scores fixed predictions with the losses and Dice metrics on 2 logical CPU replicas and on one
#: device. ``train``: trains the tiny dataset one epoch on 2 replicas, resumes that run for a second epoch, and
#: trains 2 epochs on one device with the same global batch. Writes its measurements as JSON.
TWO_REPLICAS = r"""
import json, sys
from pathlib import Path
import keras, numpy as np
from segexp.training.devices import data_parallel, strategy_scope

tmp, mode, result_file = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
out = {}
if mode == "metrics":
    from segexp.models.losses import build_loss
    from segexp.models.metrics import build_metrics
    strategy = data_parallel(2, 4)  # first: the logical CPUs are made before TensorFlow starts
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, (8, 16, 16)).astype("uint8")
    y[:4][y[:4] == 2] = 0  # class 2 only in the second half: per-replica Dice means would differ from the pooled Dice
    p = rng.dirichlet([1, 1, 1], (8, 16, 16)).astype("float32")
    p[..., 1] += (y == 1) * 0.6  # better than chance
    p /= p.sum(-1, keepdims=True)
    for loss in ("categorical_crossentropy", "dice_ce"):
        with strategy_scope(strategy):
            m = keras.Sequential([keras.Input((16, 16, 3)), keras.layers.Identity()])
            m.compile(loss=build_loss(loss, 3), metrics=build_metrics(["bg", "a", "b"], 3))
        out["two_" + loss] = m.evaluate(p, y, batch_size=4, verbose=0, return_dict=True)
        single = [build_loss(loss, 3)] + build_metrics(["bg", "a", "b"], 3)
        out["one_" + loss] = {"loss": float(np.mean([single[0](y[i:i + 4], p[i:i + 4]) for i in (0, 4)]))}
        for metric in single[1:]:
            metric.update_state(y, p)
            out["one_" + loss][metric.name] = float(metric.result())
    from segexp.training.devices import synchronize_batch_norm
    x = (rng.random((8, 16, 16, 1)) * 255).astype("float32")
    x[4:] += 100.0  # the two replicas' halves differ: their own batch statistics would differ from the global ones
    for name, scope in (("bn_two", strategy_scope(strategy)), ("bn_one", strategy_scope(None))):
        keras.utils.set_random_seed(0)
        with scope:
            m = keras.Sequential([keras.Input((16, 16, 1)), keras.layers.Conv2D(3, 3, padding="same"),
                                  keras.layers.BatchNormalization(momentum=0.5), keras.layers.Softmax()])
            synchronize_batch_norm(m)
            m.compile(optimizer=keras.optimizers.SGD(0.1), loss=build_loss("categorical_crossentropy", 3))
        history = m.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0).history
        copies = getattr(m.layers[1].moving_mean.value, "values", [m.layers[1].moving_mean.value])
        out[name] = {"loss": history["loss"], "moving_mean": [np.asarray(c).tolist() for c in copies]}
else:
    from segexp.training.loop import train
    from tests.conftest import compose_config

    data, overrides = sys.argv[4], json.loads(sys.argv[5])

    class Replicas(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            out.setdefault("replicas", []).append(self.model.distribute_strategy.num_replicas_in_sync)

    def run(name, *extra):
        cfg = compose_config([f"paths.root={tmp}", *overrides, f"dataset.root={data}", *extra])
        train(cfg, tmp / name, callbacks=[Replicas()])
        rows = (tmp / name / "history.csv").read_text().splitlines()
        keys = rows[0].split(",")
        out[name] = {k: [float(r.split(",")[i]) for r in rows[1:]] for i, k in enumerate(keys)}
        best = keras.models.load_model(tmp / name / "checkpoints" / "best.keras")
        out[name + "_weights"] = float(sum(np.abs(w).sum() for w in best.get_weights()))

    run("two", "training.devices=2")  # first: the logical CPUs are made before TensorFlow starts
    run("two", "training.devices=2", "training.epochs=2", f"training.resume={tmp / 'two'}")
    run("one", "training.devices=1", "training.epochs=2")
result_file.write_text(json.dumps(out))
"""

#: A small FlexUNet without batch statistics (instance norm is per sample, so 2 replicas compute what one
#: device does), no dropout, a constant learning rate (epoch 1 of a 1-epoch run is epoch 1 of a 2-epoch run).
TWO_REPLICA_OVERRIDES = [
    *TINY_DATASET_OVERRIDES,
    "model.norm=instance",
    "model.dropout_rate=0.0",
    "loss=categorical_crossentropy",
    "training.epochs=1",
    "training.schedule=null",
    "training.epoch_images.num=1",
    "training.evaluate_after=false",
    "tracking.enabled=false",
]


def _two_replicas(tmp: Path, mode: str, *args: str) -> dict:
    """The measurements of :data:`TWO_REPLICAS` in ``mode``, run in a fresh process."""
    result_file = tmp / "result.json"
    result = subprocess.run(
        [sys.executable, "-c", TWO_REPLICAS, str(tmp), mode, str(result_file), *args],
        cwd=REPO_DIR,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result_file.read_text())


@pytest.fixture(scope="module")
def two_replica_scores(tmp_path_factory) -> dict:
    """Losses and Dice metrics of fixed predictions on 2 replicas and on one device (one small subprocess)."""
    return _two_replicas(tmp_path_factory.mktemp("devices"), "metrics")


def test_dice_metrics_sum_counts_over_replicas(two_replica_scores: dict) -> None:
    """Each replica counts TP/FP/FN of its half batch; the Dice comes from the counts summed over replicas."""
    two, one = two_replica_scores["two_categorical_crossentropy"], two_replica_scores["one_categorical_crossentropy"]
    for key in ("dice_a", "dice_b", "dice_fg_mean", "loss"):
        assert two[key] == pytest.approx(one[key], rel=1e-5), key


def test_batch_norm_uses_the_global_batch_on_every_replica(two_replica_scores: dict) -> None:
    """``synchronize_batch_norm``: batch statistics all-reduced, the moving averages identical on both replicas."""
    two, one = two_replica_scores["bn_two"], two_replica_scores["bn_one"]
    np.testing.assert_allclose(two["loss"], one["loss"], rtol=1e-5)
    assert len(two["moving_mean"]) == 2
    for copy in two["moving_mean"]:
        np.testing.assert_allclose(copy, one["moving_mean"][0], rtol=1e-4, atol=1e-4)


def test_batch_dice_loss_is_not_multiplied_by_the_replicas(two_replica_scores: dict) -> None:
    """Keras 3 scales a reduced loss by 1/replicas only when it has a shape: the batch Dice losses return shape (1,)."""
    two, one = two_replica_scores["two_dice_ce"], two_replica_scores["one_dice_ce"]
    assert two["loss"] == pytest.approx(one["loss"], rel=0.05)  # per-replica batch Dice: close, not equal


@pytest.mark.slow
def test_two_replicas_train_and_resume_like_one_device(tmp_path: Path) -> None:
    """Same seed, weights and global batch: loss, Dice metrics and weights on 2 replicas equal one device's
    within float tolerance, after one epoch and after resuming the 2-replica run (inside the strategy) for a second.

    About 60 s of CPU (three short trainings, each traced anew), hence ``slow``.
    """
    data = write_tiny_dataset(tmp_path / "tiny")
    result = _two_replicas(tmp_path, "train", str(data), json.dumps(TWO_REPLICA_OVERRIDES))
    two, one = result["two"], result["one"]
    assert result["replicas"] == [2, 2, 1]  # fresh, resumed (still 2 replicas), one device
    assert two["epoch"] == [0.0, 1.0]
    for key in ("loss", "val_loss", "dice_fg_mean", "val_dice_fg_mean", "val_dice_square", "val_dice_disc"):
        np.testing.assert_allclose(two[key], one[key], rtol=1e-4, atol=1e-5, err_msg=key)
    assert result["two_weights"] == pytest.approx(result["one_weights"], rel=1e-4)
