"""Nothing lost: a killed, interrupted or crashed run continues from its last epoch in the same MLflow run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient
from omegaconf import OmegaConf

from segexp.core.errors import ResumeError
from segexp.training import callbacks
from segexp.training.checkpoint import RESUME_DIR, STATE_FILE, read_state
from segexp.training.loop import train
from segexp.training.resume import prepare_resume, resume_source

from .conftest import TINY_DATASET_OVERRIDES, sqlite_tracked_run

REPO = Path(__file__).resolve().parents[1]
METRICS = ("train/loss", "val/loss", "val/dice_fg_mean", "val/dice/square", "learning_rate")


def _client(tmp_path: Path) -> MlflowClient:
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/outputs/mlflow.db")
    return MlflowClient()


def _runs(client: MlflowClient) -> list:
    return client.search_runs([client.get_experiment_by_name("segexp").experiment_id])


def _assert_steps_once(client: MlflowClient, run_id: str, epochs: int) -> None:
    """Every per-epoch metric has steps 1..epochs, each exactly once (no duplicate, no gap)."""
    for key in METRICS:
        steps = sorted(m.step for m in client.get_metric_history(run_id, key))
        assert steps == list(range(1, epochs + 1)), key


def _image_steps(client: MlflowClient, run_id: str) -> list[int]:
    names = [a.path for a in client.list_artifacts(run_id, "images") if a.path.endswith(".png")]
    return sorted(int(n.split("+step+")[1].split("+")[0]) for n in names)


def _weights(path: Path) -> list[np.ndarray]:
    return keras.models.load_model(path).get_weights()


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}


def _cli(tmp_path: Path, tiny: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "segexp.cli.train",
        f"paths.root={tmp_path}",
        *TINY_DATASET_OVERRIDES,
        f"dataset.root={tiny}",
        "training.evaluate_after=false",
        "tracking.log_model=false",
        *extra,
    ]


def _wait_for_epoch(proc: subprocess.Popen, runs_root: Path, epoch: int, timeout: float = 240) -> Path:
    """Poll until a run folder under ``runs_root`` has checkpointed ``epoch`` epochs; return that folder."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for state_file in runs_root.glob(f"*/*/{RESUME_DIR}/{STATE_FILE}"):
            if json.loads(state_file.read_text())["epoch"] >= epoch:
                return state_file.parents[2]
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"no checkpoint of epoch {epoch} within {timeout} s")


@pytest.mark.slow  # CI time: ~60 s; kill-and-resume is also covered by the crash and SLURM requeue tests
def test_kill_9_then_resume_continues_the_same_run(tmp_path: Path, tiny_dataset: Path) -> None:
    """SIGKILL after epoch 2; ``training.resume=<run dir>`` finishes the same MLflow run, every step once."""
    epochs = 5
    command = _cli(tmp_path, tiny_dataset, f"training.epochs={epochs}")
    proc = subprocess.Popen(command, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run_dir = _wait_for_epoch(proc, tmp_path / "outputs" / "train" / "runs", 2)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    killed_at = read_state(run_dir)["epoch"]
    assert 2 <= killed_at < epochs
    client = _client(tmp_path)
    (run,) = _runs(client)
    assert run.info.status == "RUNNING"  # kill -9 leaves no chance to end it

    result = subprocess.run(
        [*command, f"training.resume={run_dir}"], env=_env(), capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (resumed,) = _runs(client)
    assert resumed.info.run_id == run.info.run_id and resumed.info.status == "FINISHED"
    assert resumed.data.tags["resumed"] == "1" and resumed.data.tags["resumed_1_at_epoch"] == str(killed_at)
    _assert_steps_once(client, run.info.run_id, epochs)
    assert _image_steps(client, run.info.run_id) == sorted(list(range(1, epochs + 1)) * 2)  # 2 images per epoch
    rows = (run_dir / "history.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == [str(e) for e in range(epochs)]
    assert (run_dir / "curves.png").is_file() and (run_dir / "checkpoints" / "best.keras").is_file()
    assert "train.log" in {p.name for p in run_dir.iterdir()}


def test_sigterm_without_tracking_ends_with_the_resume_message(tmp_path: Path, tiny_dataset: Path) -> None:
    """The command owns the signal policy: with tracking=none SIGTERM still ends the run cleanly (exit 130)."""
    command = _cli(tmp_path, tiny_dataset, "training.epochs=20", "tracking=none")
    proc = subprocess.Popen(command, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run_dir = _wait_for_epoch(proc, tmp_path / "outputs" / "train" / "runs", 1)
    proc.send_signal(signal.SIGTERM)
    output = "".join(proc.communicate(timeout=120))
    assert proc.returncode == 130, output[-3000:]
    assert f"training.resume={run_dir}" in output and "Traceback" not in output
    assert read_state(run_dir)["epoch"] >= 1


@pytest.mark.slow
def test_sigterm_marks_killed_and_resume_by_run_id(tmp_path: Path, tiny_dataset: Path) -> None:
    """SIGTERM (pre-emption) ends the run KILLED with the resume command; resuming by MLflow run id finishes it."""
    epochs = 5
    command = _cli(tmp_path, tiny_dataset, f"training.epochs={epochs}")
    proc = subprocess.Popen(command, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run_dir = _wait_for_epoch(proc, tmp_path / "outputs" / "train" / "runs", 1)
    proc.send_signal(signal.SIGTERM)
    output = "".join(proc.communicate(timeout=120))  # Hydra logs to stdout
    assert proc.returncode == 130, output[-3000:]
    assert f"training.resume={run_dir}" in output and "Traceback" not in output
    client = _client(tmp_path)
    (run,) = _runs(client)
    assert run.info.status == "KILLED" and "interrupted" in run.data.tags["error"]
    assert read_state(run_dir)["epoch"] >= 1

    result = subprocess.run(
        [*command, f"training.resume={run.info.run_id}"], env=_env(), capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (resumed,) = _runs(client)
    assert resumed.info.status == "FINISHED" and "error" not in resumed.data.tags
    assert "interrupted" in resumed.data.tags["previous_error"]
    _assert_steps_once(client, run.info.run_id, epochs)


def _equivalence_overrides(tiny: Path) -> tuple[str, ...]:
    return (
        *TINY_DATASET_OVERRIDES,
        f"dataset.root={tiny}",
        "training.deterministic=true",
        "training.epochs=4",
        "training.learning_rate=0.05",
        "callbacks=[early_stopping,reduce_lr]",
        "training.schedule=null",  # ReduceLROnPlateau cannot change a schedule
        "callbacks.reduce_lr.patience=0",
        "callbacks.early_stopping.patience=3",
        "training.evaluate_after=false",
        "tracking.log_model=false",
        "model.dropout_rate=0.2",
        "training.epoch_images.num=0",
    )


def test_resumed_run_equals_uninterrupted_run(compose_train, tiny_dataset: Path, tmp_path: Path, monkeypatch) -> None:
    """Ctrl-C after epoch 2 (before its MLflow logging), resume: same weights, logs and LR as one uninterrupted run."""
    overrides = _equivalence_overrides(tiny_dataset)
    reference_dir = tmp_path / "reference"
    train(compose_train(*overrides, "tracking.enabled=false"), reference_dir)
    reference = read_state(reference_dir)

    original = callbacks.MlflowEpochLogger.on_epoch_end

    def interrupt_at_epoch_2(self, epoch, logs=None):
        if epoch == 1:  # epoch 2 is checkpointed; its metrics are not logged yet (a gap to fill)
            raise KeyboardInterrupt
        original(self, epoch, logs)

    monkeypatch.setattr(callbacks.MlflowEpochLogger, "on_epoch_end", interrupt_at_epoch_2)
    run_dir = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(compose_train(*overrides), run_dir)
    client = _client(tmp_path)
    (run,) = _runs(client)
    assert run.info.status == "KILLED" and read_state(run_dir)["epoch"] == 2
    monkeypatch.setattr(callbacks.MlflowEpochLogger, "on_epoch_end", original)

    train(compose_train(*overrides, f"training.resume={run_dir}"), tmp_path / "resume_job")
    (run,) = _runs(client)
    assert run.info.status == "FINISHED"
    resumed = read_state(run_dir)
    assert resumed["epoch"] == reference["epoch"] and resumed["stopped"] == reference["stopped"]
    _assert_steps_once(client, run.info.run_id, reference["epoch"])
    for ours, theirs in zip(resumed["history"], reference["history"]):
        assert ours.keys() == theirs.keys()
        for key in ours:
            assert ours[key] == pytest.approx(theirs[key], rel=1e-5, abs=1e-6, nan_ok=True), key
    assert resumed["callbacks"].keys() == reference["callbacks"].keys()
    for name, state in resumed["callbacks"].items():  # counters and best values of checkpoint, LR reducer, early stop
        assert state == pytest.approx(reference["callbacks"][name], rel=1e-5), name
    learning_rates = [e["learning_rate"] for e in reference["history"]]
    assert learning_rates[-1] < learning_rates[0]  # the LR reducer acted, so its state mattered
    last = resumed["model"]
    for ours, theirs in zip(_weights(run_dir / RESUME_DIR / last), _weights(reference_dir / RESUME_DIR / last)):
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)
    for ours, theirs in zip(
        _weights(run_dir / "checkpoints" / "best.keras"), _weights(reference_dir / "checkpoints" / "best.keras")
    ):
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)


def test_crash_is_failed_then_resume_finishes(
    compose_train, tiny_dataset: Path, tmp_path: Path, monkeypatch, caplog
) -> None:
    """A crash ends the run FAILED with the error as a tag; the requeued job resumes, ends FINISHED, error kept
    aside."""
    overrides = (
        *TINY_DATASET_OVERRIDES,
        f"dataset.root={tiny_dataset}",
        "training.epochs=3",
        "training.evaluate_after=false",
        "tracking.log_model=false",
        "training.epoch_images.num=0",
    )
    original = callbacks.MlflowEpochLogger.on_epoch_end

    def crash(self, epoch, logs=None):
        if epoch == 1:
            raise RuntimeError("disk on fire")
        original(self, epoch, logs)

    monkeypatch.setattr(callbacks.MlflowEpochLogger, "on_epoch_end", crash)
    run_dir = tmp_path / "run"
    with pytest.raises(RuntimeError):
        train(compose_train(*overrides), run_dir)
    client = _client(tmp_path)
    (run,) = _runs(client)
    assert run.info.status == "FAILED" and run.data.tags["error"] == "RuntimeError: disk on fire"
    assert f"Continue once the cause is fixed with:\n  segexp-train training.resume={run_dir}" in caplog.text
    monkeypatch.setattr(callbacks.MlflowEpochLogger, "on_epoch_end", original)

    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")  # a requeued SLURM job resumes its folder by itself
    train(compose_train(*overrides), run_dir)
    (run,) = _runs(client)
    assert run.info.status == "FINISHED" and run.data.tags["previous_error"] == "RuntimeError: disk on fire"
    _assert_steps_once(client, run.info.run_id, 3)


def _fake_checkpoint(run_dir: Path, config: dict, epoch: int = 1) -> None:
    (run_dir / RESUME_DIR).mkdir(parents=True)
    state = {
        "format": 1,
        "epoch": epoch,
        "stopped": False,
        "model": "epoch_001.keras",
        "callbacks": {},
        "history": [],
        "config": config,
    }
    (run_dir / RESUME_DIR / STATE_FILE).write_text(json.dumps(state))


def test_resume_with_another_config_names_the_keys(compose_train, tmp_path: Path) -> None:
    before = OmegaConf.to_container(compose_train("model.base_filters=8"), resolve=True)
    _fake_checkpoint(tmp_path / "run", before)
    now = OmegaConf.to_container(
        compose_train(
            "model.base_filters=16",
            "training.learning_rate=0.01",
            "training.epochs=50",
            f"training.resume={tmp_path / 'run'}",
        ),
        resolve=True,
    )
    with pytest.raises(ResumeError) as err:
        prepare_resume(now, tmp_path / "job")
    message = str(err.value)
    assert "model.base_filters: 8 -> 16" in message and "training.learning_rate: 0.003 -> 0.01" in message
    assert "training.epochs" not in message.split("Differing keys:")[1]
    same = OmegaConf.to_container(
        compose_train("model.base_filters=8", "training.epochs=50", f"training.resume={tmp_path / 'run'}"), resolve=True
    )
    assert prepare_resume(same, tmp_path / "job").epoch == 1  # only epochs changed: fine


def test_resume_source_rules(compose_train, tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/outputs/mlflow.db"
    run_dir, empty = tmp_path / "run", tmp_path / "empty"
    empty.mkdir()
    _fake_checkpoint(run_dir, {})
    assert resume_source(None, run_dir, uri, env={}) is None  # a fresh run by default
    assert resume_source(None, run_dir, uri, env={"SLURM_RESTART_COUNT": "1"}) == run_dir  # a requeued SLURM job
    assert resume_source(None, empty, uri, env={"SLURM_RESTART_COUNT": "1"}) is None  # requeued before epoch 1
    assert resume_source("auto", run_dir, uri, env={}) == run_dir
    assert resume_source("auto", empty, uri, env={}) is None
    assert resume_source(str(run_dir), tmp_path / "job", uri, env={}) == run_dir.resolve()
    with pytest.raises(ResumeError, match="holds no checkpoint"):
        resume_source(str(empty), tmp_path / "job", uri, env={})
    with pytest.raises(ResumeError, match="neither a run folder nor an MLflow run id"):
        resume_source("last-tuesday", tmp_path / "job", uri, env={})
    with pytest.raises(ResumeError, match="MLflow run 0123456789abcdef0123456789abcdef"):
        resume_source("0123456789abcdef0123456789abcdef", tmp_path / "job", uri, env={})


def test_cli_bad_resume_is_one_clear_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "segexp.cli.train", f"paths.root={tmp_path}", f"training.resume={tmp_path}"],
        capture_output=True,
        text=True,
        timeout=300,
        env=_env(),
    )
    output = result.stdout + result.stderr
    assert result.returncode == 2 and "Traceback" not in output
    assert f"training.resume: {tmp_path} holds no checkpoint" in output


def test_system_exit_marks_the_run_killed(tmp_path: Path) -> None:
    """submitit requeues a pre-empted job by ``sys.exit(-1)`` from its signal handler: KILLED, not FAILED."""
    with pytest.raises(SystemExit):
        with sqlite_tracked_run(tmp_path):
            sys.exit(-1)
    (run,) = _runs(_client(tmp_path))
    assert run.info.status == "KILLED" and run.data.tags["error"] == "interrupted (SystemExit: -1)"


def test_an_interrupt_that_tensorflow_turned_into_another_error_is_an_interruption() -> None:
    from segexp.training.interrupts import interrupted_inside

    def mangled() -> None:
        try:
            try:
                raise KeyboardInterrupt("signal 15")
            except KeyboardInterrupt as inner:
                raise SystemError("<built-in function __import__> returned a result with an exception set") from inner
        except SystemError as err:
            raise TypeError("Invalid input to `zip`") from err

    with pytest.raises(TypeError) as caught:
        mangled()
    assert interrupted_inside(caught.value)
    assert not interrupted_inside(TypeError("a real bug"))


def test_an_error_after_a_stop_request_is_an_interruption_even_without_the_interrupt_in_its_chain() -> None:
    """TensorFlow's tracing can re-raise a signal's interrupt as a fresh error; the noted request decides."""
    import os

    from segexp.cli.shell import interrupt_on_sigterm
    from segexp.core.stop_request import stop_requested
    from segexp.training.interrupts import interrupted_inside

    lost_chain = RuntimeError("tracing failed")  # no __cause__ / __context__
    with interrupt_on_sigterm():
        assert stop_requested() is None and not interrupted_inside(lost_chain)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises before this ends
        assert stop_requested() == signal.SIGTERM
        assert interrupted_inside(lost_chain)
    with interrupt_on_sigterm():  # a new command starts with no request
        assert stop_requested() is None
