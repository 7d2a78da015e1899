"""launcher=submitit_slurm on a real SLURM cluster: the one-node cluster of ``scripts/slurm_local.sh``.

The unit tests check the pre-submission request check (segexp/launch/slurm_request.py) against fake
``scontrol`` output. The cluster tests start the local cluster (idempotent; CI has started it
in scripts/ci_services.sh) and submit through the real ``sbatch`` path: without SLURM they
are skipped, or fail when ``SEGEXP_REQUIRE_SLURM`` is set (CI).

One sweep of three SLURM array tasks covers the sweep, a failing job and both requeue paths
(``scontrol requeue`` and ``scancel --signal=USR1``), so the cluster tests cost about as much as
two short training runs on 2 cores.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from segexp.config.schema import REPO_DIR
from segexp.core.errors import ConfigError
from segexp.launch.slurm_request import (
    Node,
    Partition,
    SlurmRequest,
    choose_partition,
    gpu_count,
    parse_minutes,
    parse_nodes,
    parse_partitions,
    request_problems,
)

SLURM_SCRIPT = REPO_DIR / "scripts" / "slurm_local.sh"
REQUIRE_ENV = "SEGEXP_REQUIRE_SLURM"
SUBMITIT_PLUGIN = "hydra_plugins.hydra_submitit_launcher"

# --------------------------------------------------------------------------- the request check, offline

PARTITIONS = (
    "PartitionName=cpu AllowGroups=ALL Default=YES MaxNodes=UNLIMITED MaxTime=UNLIMITED MaxCPUsPerNode=UNLIMITED "
    "Nodes=c[01-02] State=UP TotalCPUs=4 TotalNodes=2 DefMemPerNode=UNLIMITED MaxMemPerNode=UNLIMITED\n"
    "PartitionName=gpu AllowGroups=ALL Default=NO MaxNodes=1 MaxTime=2-00:00:00 MaxCPUsPerNode=32 "
    "Nodes=g01 State=UP TotalCPUs=64 TotalNodes=1 MaxMemPerNode=256000\n"
    "PartitionName=old Default=NO MaxTime=30:00 Nodes=c01 State=DOWN\n"
)
NODES = (
    "NodeName=c01 Arch=x86_64 CoresPerSocket=1  CPUAlloc=0 CPUEfctv=2 CPUTot=2 Gres=(null) NodeAddr=10.0.0.1 "
    "OS=Linux 6.1.0-18-amd64 #1 SMP PREEMPT_DYNAMIC Debian 6.1.76-1 (2024-02-01)  RealMemory=3900 "
    "State=IDLE Partitions=cpu,old  BootTime=2026-11-30T03:22:58 CfgTRES=cpu=2,mem=3900M,billing=2\n"
    "NodeName=c02 CPUTot=2 Gres=(null) RealMemory=3900 State=DOWN+DRAIN Reason=disk [root@2026-11-30] Partitions=cpu\n"
    "NodeName=g01 CPUTot=64 Gres=gpu:a100:4(S:0-1),shard:8 RealMemory=512000 State=MIXED Partitions=gpu\n"
)


def test_scontrol_output_is_parsed() -> None:
    cpu, gpu, old = parse_partitions(PARTITIONS)
    assert (cpu.name, cpu.default, cpu.state, cpu.max_time_min, cpu.max_nodes) == ("cpu", True, "UP", None, None)
    assert (gpu.max_time_min, gpu.max_nodes, gpu.max_cpus_per_node, gpu.max_mem_per_node_mb) == (2880, 1, 32, 256000)
    assert (old.max_time_min, old.state) == (30, "DOWN")
    c01, c02, g01 = parse_nodes(NODES)
    assert c01 == Node("c01", cpus=2, memory_mb=3900, gpus=0, partitions=("cpu", "old"))
    assert (c02.cpus, c02.partitions) == (2, ("cpu",))
    assert (g01.cpus, g01.memory_mb, g01.gpus) == (64, 512000, 4)
    assert [parse_minutes(t) for t in ("UNLIMITED", "90", "1:30", "02:00:00", "1-12:00:00")] == [
        None,
        90,
        1.5,
        120,
        2160,
    ]
    assert gpu_count("gpu:2,gpu:v100:1(S:0)") == 3 and gpu_count("(null)") == 0


def _problems(partition: str | None = None, **launcher: object) -> list[str]:
    partitions, nodes = parse_partitions(PARTITIONS), parse_nodes(NODES)
    request = SlurmRequest.from_launcher({"partition": partition, **launcher})
    return request_problems(request, choose_partition(request, partitions), nodes)


def test_preset_defaults_on_a_small_node_name_the_keys_to_change() -> None:
    """The issue's case: submitit_slurm's first defaults (8 CPUs, 32 GB) on 2-CPU nodes wait PENDING
    (PartitionConfig) forever; the check names both keys and what fits."""
    preset = SlurmRequest.from_launcher({"cpus_per_task": 8, "mem_gb": 32, "timeout_min": 240, "gpus_per_node": 0})
    problems = request_problems(preset, parse_partitions(PARTITIONS)[0], parse_nodes(NODES))
    assert len(problems) == 2
    assert problems[0].startswith("hydra.launcher.cpus_per_task=8") and "at most 2 CPUs" in problems[0]
    assert "hydra.launcher.cpus_per_task<=2" in problems[0] and "training.threads.intra_op" in problems[0]
    assert problems[1].startswith("hydra.launcher.mem_gb=32") and "hydra.launcher.mem_gb<=3" in problems[1]
    assert _problems(cpus_per_task=2, mem_gb=3) == []


def test_every_limit_is_checked() -> None:
    assert _problems(cpus_per_task=1, gpus_per_node=1)[0].startswith(
        "hydra.launcher.gpus_per_node=1: the nodes of partition cpu have no GPUs"
    )
    assert _problems("gpu", cpus_per_task=8, gpus_per_node=4, mem_gb=200, timeout_min=2880) == []
    gpu = _problems("gpu", cpus_per_task=40, gpus_per_node=8, mem_gb=300, timeout_min=3000, nodes=2)
    assert [p.split("=")[0] for p in gpu] == [
        "hydra.launcher.cpus_per_task",
        "hydra.launcher.mem_gb",
        "hydra.launcher.gpus_per_node",
        "hydra.launcher.timeout_min",
        "hydra.launcher.nodes",
    ]
    assert "at most 32 CPUs" in gpu[0] and "at most 250.0 GB" not in gpu[1] and "hydra.launcher.mem_gb<=250" in gpu[1]
    assert "hydra.launcher.timeout_min<=2880" in gpu[3]
    down = _problems("old", cpus_per_task=1, timeout_min=60)
    assert "partition old is DOWN" in down[0] and "hydra.launcher.timeout_min<=30" in down[1]
    with pytest.raises(ConfigError, match=r"hydra.launcher.partition=gpus: no such partition .*cpu, gpu, old"):
        _problems("gpus")
    no_default = [p for p in parse_partitions(PARTITIONS) if not p.default]
    with pytest.raises(ConfigError, match="no default partition: set hydra.launcher.partition"):
        choose_partition(SlurmRequest(), no_default)


def test_no_single_node_fits_everything() -> None:
    nodes = [
        Node("fat", cpus=64, memory_mb=1000, gpus=0, partitions=("p",)),
        Node("big", cpus=2, memory_mb=500000, gpus=0, partitions=("p",)),
    ]
    partition = Partition(
        "p",
        default=True,
        state="UP",
        max_time_min=None,
        max_nodes=None,
        max_cpus_per_node=None,
        max_mem_per_node_mb=None,
    )
    (problem,) = request_problems(SlurmRequest(cpus_per_task=8, mem_gb=100), partition, nodes)
    assert problem.startswith("hydra.launcher: no node of partition p has 8 CPUs, 100 GB and 0 GPUs at once")


def test_slurm_presets_become_requests() -> None:
    pytest.importorskip(SUBMITIT_PLUGIN)
    from hydra import compose, initialize_config_dir

    from segexp.config.schema import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["launcher=gpu"], return_hydra_config=True)
    request = SlurmRequest.from_launcher(cfg.hydra.launcher)
    assert request.gpus_per_node == 1 and request.cpus_per_node == cfg.hydra.launcher.cpus_per_task
    assert request.mem_mb == cfg.hydra.launcher.mem_gb * 1024
    assert "--gpus-per-node=1" in request.sbatch_options()
    callbacks = list(cfg.hydra.callbacks)
    assert callbacks.index("slurm") < callbacks.index("mlflow_sweep")  # checked before the parent run exists


# --------------------------------------------------------------------------- the local cluster


def skip_or_fail(reason: str) -> None:
    """Skip, or fail when ``SEGEXP_REQUIRE_SLURM`` says the SLURM tests must run (CI)."""
    if os.environ.get(REQUIRE_ENV):
        pytest.fail(f"{reason} ({REQUIRE_ENV} is set, so this is an error, not a skip)", pytrace=False)
    pytest.skip(f"{reason} (set {REQUIRE_ENV}=1 to make this an error)")


def _script(command: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(SLURM_SCRIPT), command], check=False, capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def slurm_env() -> Iterator[dict[str, str]]:
    """The environment to submit with, the local cluster running: started here (and stopped after)
    unless it already runs (CI starts it in scripts/ci_services.sh, which also installs SLURM)."""
    try:
        import hydra_plugins.hydra_submitit_launcher  # noqa: F401
    except ImportError:
        skip_or_fail("Hydra plugin not installed: pip install 'hydra-submitit-launcher==1.2.0'")
    if not all(
        shutil.which(tool) or Path("/usr/sbin", tool).is_file() for tool in ("slurmctld", "slurmd", "munged", "sbatch")
    ):
        skip_or_fail(
            "SLURM is not installed: bash scripts/ci_services.sh (root, Debian/Ubuntu) "
            "or apt-get install slurm-wlm munge"
        )
    running = _script("status").returncode == 0
    if not running:
        started = _script("start")
        if started.returncode != 0:
            skip_or_fail(
                f"scripts/slurm_local.sh start failed ({started.returncode}): "
                + " ".join((started.stdout + started.stderr).split())[-2000:]
            )
    env = {**os.environ, "SLURM_CONF": _script("conf").stdout.strip()}
    env.pop("MLFLOW_TRACKING_URI", None)
    yield env
    if not running:
        _script("stop")


def _slurm(env: dict[str, str], *command: str) -> str:
    return subprocess.run(list(command), check=False, env=env, capture_output=True, text=True, timeout=60).stdout


#: A short job on the local cluster: one core, little memory, one thread, no XLA compilation (tens of
#: seconds on CPU, paid again by a resumed job), no test-split evaluation.
SLURM_JOB = (
    "launcher=submitit_slurm",
    "debug=fast",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=1",
    "hydra.launcher.timeout_min=20",
    "training.threads.intra_op=1",
    "training.threads.inter_op=1",
    "training.loader.workers=1",
    "training.jit_compile=false",
    "training.epoch_images.num=1",
    "training.evaluate_after=false",
    "tracking.log_model=false",
    "training.verbose=0",
)


def _train_command(root: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "segexp.cli.train", "-m", *SLURM_JOB, f"paths.root={root}", *overrides]


def test_impossible_request_fails_before_submitting(slurm_env: dict[str, str], tmp_path: Path) -> None:
    """More cores than the node has: refused in seconds, naming the key; nothing submitted, no MLflow parent."""
    jobs_before = _slurm(slurm_env, "squeue", "-h", "-o", "%i")
    start = time.monotonic()
    result = subprocess.run(
        _train_command(tmp_path, "hydra.launcher.cpus_per_task=1024", "model.base_filters=4,8"),
        check=False,
        env=slurm_env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    elapsed = time.monotonic() - start
    assert result.returncode == 2, result.stdout[-3000:] + result.stderr[-3000:]
    assert re.search(
        r"hydra\.launcher\.cpus_per_task=1024 \(x tasks_per_node=1\): the nodes of partition debug have "
        r"at most \d+ CPUs; set hydra\.launcher\.cpus_per_task<=\d+",
        result.stderr,
    ), result.stderr[-3000:]
    assert elapsed < 120, f"took {elapsed:.0f} s"  # the Python start-up; the check itself takes well under a second
    assert not list(tmp_path.glob("outputs/train/multiruns/*/*/.submitit"))
    assert not (tmp_path / "outputs" / "mlflow.db").exists()
    assert _slurm(slurm_env, "squeue", "-h", "-o", "%i") == jobs_before


def _array_job_ids(sweep_dir: Path) -> dict[int, str]:
    """``{array task: SLURM job id}`` from submitit's folders ``.submitit/<array id>_<task>/``."""
    found = {}
    for folder in (sweep_dir / ".submitit").glob("*_*"):
        match = re.fullmatch(r"(\d+)_(\d+)", folder.name)
        if match:
            found[int(match[2])] = folder.name
    return found


def _checkpointed_epochs(run_dir: Path) -> int:
    try:
        return int(json.loads((run_dir / "checkpoints" / "resume" / "state.json").read_text())["epoch"])
    except (OSError, ValueError, KeyError):
        return 0


def test_sweep_on_slurm_requeues_resume_and_a_failure_is_recorded(slurm_env: dict[str, str], tmp_path: Path) -> None:
    """One array job of three tasks: base_filters=4 (requeued by ``scontrol requeue`` after its first epoch),
    8 (sent USR1 after its first epoch), 0 (invalid: fails at start-up). One MLflow parent; the two
    requeued jobs resume into their own runs (same ids, steps 1..4 once each) and end FINISHED; the
    invalid one is a FAILED child with its error."""
    import mlflow

    log_file = tmp_path / "sweep.log"  # a file, not a pipe: submitit's warnings would fill a pipe nobody reads yet
    with open(log_file, "w") as out:
        sweep = subprocess.Popen(
            _train_command(tmp_path, "training.epochs=4", "model.base_filters=4,8,0"),
            env=slurm_env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
    actions = {0: ["scontrol", "requeue"], 1: ["scancel", "--signal=USR1"]}
    interrupted: dict[int, str] = {}  # job -> its MLflow run id when it was interrupted
    deadline = time.monotonic() + 900
    sweep_dir = None
    try:
        while sweep.poll() is None and len(interrupted) < len(actions) and time.monotonic() < deadline:
            time.sleep(0.2)
            sweep_dir = sweep_dir or next(iter(tmp_path.glob("outputs/train/multiruns/*/*")), None)
            if sweep_dir is None:
                continue
            ids = _array_job_ids(sweep_dir)
            for job, action in actions.items():
                if job in interrupted or job not in ids or _checkpointed_epochs(sweep_dir / str(job)) < 1:
                    continue
                state = _slurm(slurm_env, "squeue", "-h", "-j", ids[job], "-o", "%T").strip()  # 3 epochs to go
                assert state == "RUNNING", f"job {job} ({ids[job]}) already {state or 'gone'} after epoch 1"
                subprocess.run([*action, ids[job]], env=slurm_env, check=True, timeout=60)
                interrupted[job] = json.loads((sweep_dir / str(job) / "mlflow_run.json").read_text())["run_id"]
        sweep.wait(timeout=max(deadline - time.monotonic(), 1))
    finally:
        if sweep.poll() is None:
            sweep.kill()
        if sweep_dir is not None:
            for job_id in _array_job_ids(sweep_dir).values():
                subprocess.run(["scancel", job_id], check=False, env=slurm_env, capture_output=True, timeout=60)
    output = log_file.read_text(errors="replace")
    assert sweep.returncode == 0, output[-5000:]
    assert sorted(interrupted) == [0, 1], output[-5000:]

    ids = _array_job_ids(sweep_dir)
    for job in (0, 1):  # requeued through SLURM: a restart, and the job saw SLURM_RESTART_COUNT
        assert "Restarts=1 " in _slurm(slurm_env, "scontrol", "show", "job", ids[job]), ids[job]
        log = "".join(p.read_text() for p in (sweep_dir / ".submitit" / ids[job]).glob("*.out"))
        assert "requeued job (SLURM_RESTART_COUNT=1): resuming the checkpoint" in log, log[-3000:]
    # the job's own log file, not SLURM's *.out: srun's output forwarding can drop the last lines of a step it is
    # killing, and submitit's handler writes these two lines just before the requeue kills it (seen once in CI)
    usr1_log = (sweep_dir / "1" / "train.log").read_text()
    assert "Caught signal SIGUSR1" in usr1_log and f"Requeued job {ids[1]}" in usr1_log, usr1_log[-3000:]

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/outputs/mlflow.db")
    client = mlflow.MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name("segexp").experiment_id])
    (parent,) = [r for r in runs if "sweep_dir" in r.data.tags]
    kids = {
        r.data.params.get("model.base_filters") or r.info.run_name.split("model.base_filters=")[1].split(",")[0]: r
        for r in runs
        if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id
    }
    assert sorted(kids) == ["0", "4", "8"]
    assert kids["0"].info.status == "FAILED" and "model.base_filters: must be >= 1" in kids["0"].data.tags["error"]
    for job, filters in ((0, "4"), (1, "8")):
        kid = kids[filters]
        assert kid.info.run_id == interrupted[job] and kid.info.status == "FINISHED"
        assert kid.data.tags["resumed"] == "1" and int(kid.data.tags["resumed_1_at_epoch"]) >= 1
        for key in ("train/loss", "val/dice_fg_mean", "learning_rate"):
            assert [m.step for m in client.get_metric_history(kid.info.run_id, key)] == [1, 2, 3, 4], (filters, key)
    assert parent.info.status == "FINISHED"
    assert (parent.data.tags["children_finished"], parent.data.tags["children_failed"]) == ("2", "1")
    assert parent.data.tags["best_child_run_id"] in {kids["4"].info.run_id, kids["8"].info.run_id}


@pytest.mark.slow  # CI time: two SLURM jobs on the local cluster
def test_cross_validation_runs_its_folds_as_slurm_jobs(slurm_env: dict[str, str], tmp_path: Path) -> None:
    """segexp-cv on SLURM: each fold a job, the summary (with the fold ensemble on the test patient) at the end."""
    job = [o for o in SLURM_JOB if not o.startswith("training.evaluate_after")]
    cmd = [sys.executable, "-m", "segexp.cli.cv", "cv.folds=2", *job, "plan=none", f"paths.root={tmp_path}"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=1200, env=slurm_env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (sweep,) = (tmp_path / "outputs" / "cv").glob("*/*")
    summary = json.loads((sweep / "cv_summary.json").read_text())
    assert summary["complete"] and summary["folds_used"] == [0, 1]
    assert summary["ensemble_test"]["num_cases"] == 1  # the phantom's test patient, seen by no fold


@pytest.mark.slow  # two SLURM array jobs of two tasks each: about 2 min on the local cluster
def test_optuna_search_on_slurm_prunes_a_poor_trial(slurm_env: dict[str, str], tmp_path: Path) -> None:
    """segexp's Optuna sweeper submits each batch of trials (hydra.sweeper.n_jobs=2) as one array job; every task
    reaches its trial through the study's SQLite storage on the shared file system and reports its epochs; the
    poor trial of the second batch is pruned after epoch 1 (tests/test_optuna_sweeper.py: PRUNED_SWEEP), its
    MLflow child ends KILLED."""
    optuna = pytest.importorskip("optuna", minversion="4.5", reason='pip install "optuna>=4.5,<6"')
    import mlflow

    from .test_optuna_sweeper import PRUNED_SWEEP

    result = subprocess.run(
        _train_command(tmp_path, *PRUNED_SWEEP, "hydra.sweeper.n_jobs=2", "training.epochs=2"),
        check=False,
        env=slurm_env,
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (sweep_dir,) = tmp_path.glob("outputs/train/multiruns/*/*")
    assert len({name.split("_")[0] for name in _array_job_ids(sweep_dir).values()}) == 2  # one array job per batch
    study = optuna.load_study(study_name="flexunet_optuna", storage=f"sqlite:///{tmp_path}/outputs/optuna.db")
    pruned = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
    assert len(study.trials) == 4 and pruned, [(t.state, t.params, t.intermediate_values) for t in study.trials]
    assert all(list(t.intermediate_values) == [1] and t.number >= 2 for t in pruned)  # only once 2 trials completed
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/outputs/mlflow.db")
    for trial in pruned:
        run = client.get_run(trial.user_attrs["mlflow_run_id"])
        assert run.info.status == "KILLED" and run.data.tags["pruned_at_epoch"] == "1"
        assert run.data.tags["optuna.trial_number"] == str(trial.number)
