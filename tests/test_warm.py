"""The plan's timed model handed on to the run (segexp.training.warm)."""

from __future__ import annotations

import numpy as np
from omegaconf import OmegaConf

from segexp.models import build_model
from segexp.planning.steptime import _measure
from segexp.training import warm
from segexp.training.loop import compile_model, seed_and_threads

from .conftest import random_batch

OVERRIDES = [
    "model=flexunet",
    "model.base_filters=4",
    "model.num_layers=2",
    "model.image_height=32",
    "model.image_width=32",
    "model.num_classes=3",
    "training.batch_size=2",
    "training.schedule=null",
    "training.precision=fp32",
    "plan.measure_steps=1",
    "dataset.class_names=[bg,a,b]",
]
NAMES = ["bg", "a", "b"]


def _cfg(compose_train, *extra: str):
    cfg = compose_train(*OVERRIDES, *extra)
    OmegaConf.resolve(cfg)
    return cfg


def _fresh(cfg):
    return lambda: build_model(**OmegaConf.to_container(cfg.model))


def test_the_timed_model_is_taken_over_reset_to_a_fresh_seeded_build(compose_train) -> None:
    cfg = _cfg(compose_train)
    _measure(cfg, NAMES)  # trains 3 steps on random data, then keeps the model
    seed_and_threads(cfg.training, cfg.seed)
    taken = warm.take(warm.compile_signature(cfg.model, cfg.training, NAMES, 99, "fp32", loss=cfg.loss), _fresh(cfg))
    assert taken is not None and taken.train_function is not None  # the traced step comes along
    seed_and_threads(cfg.training, cfg.seed)
    cold = compile_model(cfg.model, cfg.training, NAMES, steps_per_epoch=1, loss=cfg.loss)
    for a, b in zip(taken.variables, cold.variables):  # weights and seed states as a cold start's
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert int(taken.optimizer.iterations.numpy()) == 0
    lr = float(np.asarray(taken.optimizer.learning_rate))
    assert np.isclose(lr, cfg.training.learning_rate)
    assert all(not np.any(np.asarray(v)) for v in taken.optimizer.variables[2:])  # moments back to zero
    x, y = random_batch(2, 32, 32, 1, 3)
    taken.train_on_batch(x, y)
    assert int(taken.optimizer.iterations.numpy()) == 1
    assert (
        warm.take(warm.compile_signature(cfg.model, cfg.training, NAMES, 99, "fp32", loss=cfg.loss), _fresh(cfg))
        is None
    )  # one handover only


def test_other_compile_settings_compile_anew(compose_train) -> None:
    cfg = _cfg(compose_train)
    _measure(cfg, NAMES)
    slower = _cfg(compose_train, "training.learning_rate=1e-3")
    assert (
        warm.take(
            warm.compile_signature(slower.model, slower.training, NAMES, 10, "fp32", loss=slower.loss), _fresh(slower)
        )
        is None
    )
    _measure(cfg, NAMES)
    scheduled = compose_train(*[o for o in OVERRIDES if not o.startswith("training.schedule")])
    assert (
        warm.take(
            warm.compile_signature(scheduled.model, scheduled.training, NAMES, 10, "fp32", loss=scheduled.loss),
            _fresh(scheduled),
        )
        is None
    )
    warm.release()


def test_a_run_takes_the_plan_s_timed_model_and_only_that_run(compose_train) -> None:
    from types import SimpleNamespace

    from segexp.training.loop import model_for_run

    cfg = _cfg(compose_train)
    _measure(cfg, NAMES)
    dataset = SimpleNamespace(class_names=NAMES)
    taken = model_for_run(cfg.model, cfg.training, None, dataset, 7, "fp32", loss=cfg.loss)
    assert taken.train_function is not None  # traced by the plan's timing
    again = model_for_run(cfg.model, cfg.training, None, dataset, 7, "fp32", loss=cfg.loss)
    assert again is not taken and again.train_function is None


def test_the_step_time_leaves_out_the_slow_steps_after_compiling(compose_train, monkeypatch) -> None:
    """XLA's first steps after compiling run slower than its steady state: the median is over later steps."""
    import time

    from segexp.planning import steptime

    real_step = steptime.run_step
    calls: list[int] = []

    def step(function, batch):  # the train calls 2 .. 1 + WARMUP_STEPS are the slow ones
        out = real_step(function, batch)
        calls.append(1)
        if 1 < len(calls) <= 1 + steptime.WARMUP_STEPS:
            time.sleep(0.5)
        return out

    monkeypatch.setattr(steptime, "run_step", step)
    measured = _measure(_cfg(compose_train, "plan.measure_steps=3"), NAMES)
    warm.release()  # drop the kept model
    assert len(calls) == 1 + steptime.WARMUP_STEPS + 3 + 3  # first, warm-ups, timed steps, 3 validation calls
    assert measured.train_s < 0.5
