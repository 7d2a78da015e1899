"""SLURM sweeps (``launcher=submitit_slurm``, ``launcher=gpu``): check the request before submitting.

SLURM accepts an array job that no node of its partition can ever run (more cores per job
than any node has, for instance) and leaves it PENDING with reason ``PartitionConfig``,
while the launching command waits without a word. :func:`check_slurm_request` reads
the partition and its nodes with ``scontrol --all show partition|node -o`` and compares
them with ``hydra.launcher``: cores (``cpus_per_task * tasks_per_node``), memory (``mem_gb``, in GiB
as sbatch's ``--mem=<n>GB`` reads it: n * 1024 MB), GPUs (``gpus_per_node`` against the
nodes' ``gpu`` GRES), wall time (``timeout_min`` against ``MaxTime``), node count and the
partition's per-node limits. A request that passes is tried with ``sbatch --test-only`` (which
also knows accounts and QOS). A refused request is one :class:`ConfigError` with one line per
problem, naming the ``hydra.launcher`` key to change and the largest value that fits.
:class:`segexp.launch.slurm.SlurmSweepCallback` calls it before the sweep is submitted.
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from segexp.core.errors import ConfigError

#: ``hydra.launcher._target_`` of the SLURM launcher (hydra-submitit-launcher).
SLURM_LAUNCHER = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
#: Seconds a ``scontrol`` / ``sbatch --test-only`` call may take.
COMMAND_TIMEOUT_S = 30
#: Values SLURM prints for "no limit".
UNLIMITED = ("UNLIMITED", "INFINITE", "NONE", "N/A", "(null)", "")
KEY = "hydra.launcher"
#: One ``key=value`` field of ``scontrol ... -o`` output (values may hold spaces, e.g. ``OS=``).
FIELD = re.compile(r"(\w+)=(.*?)(?=\s+\w+=|\s*$)")
GPU_GRES = re.compile(r"gpu(?::[^:,(]+)?:(\d+)")


@dataclass(frozen=True)
class SlurmRequest:
    """What one sweep job asks for: the resource keys of ``hydra.launcher``."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    timeout_min: int = 60  # --time, minutes
    nodes: int = 1
    tasks_per_node: int = 1
    cpus_per_task: int = 1  # cores per task
    gpus_per_node: int = 0
    mem_gb: float | None = None  # --mem=<mem_gb>GB per node; None: the partition's default

    @classmethod
    def from_launcher(cls, launcher: Mapping[str, Any]) -> SlurmRequest:
        """The request of a ``hydra.launcher`` node (missing or null keys take submitit's meaning)."""
        get = launcher.get
        return cls(
            partition=get("partition"),
            account=get("account"),
            qos=get("qos"),
            timeout_min=int(get("timeout_min") or 60),
            nodes=int(get("nodes") or 1),
            tasks_per_node=int(get("tasks_per_node") or 1),
            cpus_per_task=int(get("cpus_per_task") or 1),
            gpus_per_node=int(get("gpus_per_node") or 0),
            mem_gb=None if (mem_gb := get("mem_gb")) is None else float(mem_gb),
        )

    @property
    def cpus_per_node(self) -> int:
        return self.cpus_per_task * self.tasks_per_node

    @property
    def mem_mb(self) -> int | None:
        """Memory per node in MB as SLURM reads ``--mem=<mem_gb>GB`` (1 GB = 1024 MB)."""
        return None if self.mem_gb is None else math.ceil(self.mem_gb * 1024)

    def sbatch_options(self) -> list[str]:
        """The resource options of the sbatch script submitit writes for this request."""
        options = [
            f"--time={self.timeout_min}",
            f"--nodes={self.nodes}",
            f"--ntasks-per-node={self.tasks_per_node}",
            f"--cpus-per-task={self.cpus_per_task}",
        ]
        options += [f"--partition={self.partition}"] if self.partition else []
        options += [f"--account={self.account}"] if self.account else []
        options += [f"--qos={self.qos}"] if self.qos else []
        options += [f"--mem={self.mem_mb}M"] if self.mem_mb is not None else []
        options += [f"--gpus-per-node={self.gpus_per_node}"] if self.gpus_per_node else []
        return options


@dataclass(frozen=True)
class Node:
    """A compute node as ``scontrol show node`` describes it."""

    name: str
    cpus: int
    memory_mb: int  # RealMemory
    gpus: int  # sum of its gpu GRES
    partitions: tuple[str, ...]


@dataclass(frozen=True)
class Partition:
    """A partition as ``scontrol show partition`` describes it; None: no limit."""

    name: str
    default: bool
    state: str
    max_time_min: float | None
    max_nodes: int | None
    max_cpus_per_node: int | None
    max_mem_per_node_mb: int | None


# --------------------------------------------------------------------------- parsing


def parse_records(text: str) -> list[dict[str, str]]:
    """The records of ``scontrol show <entity> -o`` (one per line) as ``{key: value}``."""
    return [dict(FIELD.findall(line)) for line in text.splitlines() if "=" in line]


def _limit(value: str | None) -> int | None:
    return None if value is None or value.strip().upper() in UNLIMITED else int(value)


def parse_minutes(value: str | None) -> float | None:
    """SLURM time ``[days-]hours:minutes:seconds`` (or ``minutes``, ``minutes:seconds``) in minutes;
    None if unlimited."""
    if value is None or value.strip().upper() in UNLIMITED:
        return None
    days, _, clock = value.strip().rpartition("-")
    parts = [float(p) for p in clock.split(":")]
    seconds = {1: lambda p: p[0] * 60, 2: lambda p: p[0] * 60 + p[1], 3: lambda p: p[0] * 3600 + p[1] * 60 + p[2]}
    if len(parts) not in seconds:
        raise ValueError(f"not a SLURM time: {value!r}")
    return (float(days or 0) * 86400 + seconds[len(parts)](parts)) / 60


def gpu_count(gres: str | None) -> int:
    """GPUs of a node's ``Gres`` field, e.g. ``gpu:a100:4(S:0-1),shard:8`` -> 4."""
    return sum(int(n) for n in GPU_GRES.findall(gres or ""))


def parse_partitions(text: str) -> list[Partition]:
    """Partitions of ``scontrol show partition -o``."""
    return [
        Partition(
            name=r["PartitionName"],
            default=r.get("Default") == "YES",
            state=r.get("State", "UP"),
            max_time_min=parse_minutes(r.get("MaxTime")),
            max_nodes=_limit(r.get("MaxNodes")),
            max_cpus_per_node=_limit(r.get("MaxCPUsPerNode")),
            max_mem_per_node_mb=_limit(r.get("MaxMemPerNode")),
        )
        for r in parse_records(text)
        if "PartitionName" in r
    ]


def parse_nodes(text: str) -> list[Node]:
    """Nodes of ``scontrol show node -o``."""
    return [
        Node(
            name=r["NodeName"],
            cpus=int(r.get("CPUTot") or r.get("CPUEfctv") or 0),
            memory_mb=int(r.get("RealMemory") or 0),
            gpus=gpu_count(r.get("Gres")),
            partitions=tuple(p for p in (r.get("Partitions") or "").split(",") if p),
        )
        for r in parse_records(text)
        if "NodeName" in r
    ]


# --------------------------------------------------------------------------- checking


def choose_partition(request: SlurmRequest, partitions: Sequence[Partition]) -> Partition:
    """The partition the jobs would go to: the requested one, or the cluster's default."""
    names = ", ".join(p.name for p in partitions) or "none"
    if request.partition is None:
        default = next((p for p in partitions if p.default), None)
        if default is None:
            raise ConfigError(
                f"{KEY}.partition=null, and the cluster has no default partition: set {KEY}.partition to one of {names}"
            )
        return default
    chosen = next((p for p in partitions if p.name == request.partition), None)
    if chosen is None:
        raise ConfigError(
            f"{KEY}.partition={request.partition}: no such partition on this cluster (partitions: {names})"
        )
    return chosen


def request_problems(request: SlurmRequest, partition: Partition, nodes: Sequence[Node]) -> list[str]:
    """Why no job of ``request`` can ever start in ``partition`` (empty: it can), one line per problem.

    Each line names the ``hydra.launcher`` key to change and the largest value that fits.
    """
    where = f"partition {partition.name}"
    members = [n for n in nodes if partition.name in n.partitions]
    problems = []
    if not partition.state.upper().startswith("UP"):
        problems.append(f"{where} is {partition.state}: it starts no jobs; choose another with {KEY}.partition")
    if not members:
        return [*problems, f"{where} has no nodes; choose another with {KEY}.partition"]
    cpus = max(n.cpus for n in members)
    if partition.max_cpus_per_node is not None:
        cpus = min(cpus, partition.max_cpus_per_node)
    if request.cpus_per_node > cpus:
        per_task = max(cpus // request.tasks_per_node, 0)
        problems.append(
            f"{KEY}.cpus_per_task={request.cpus_per_task} (x tasks_per_node={request.tasks_per_node}): "
            f"the nodes of {where} have at most {cpus} CPUs; set {KEY}.cpus_per_task<={per_task} "
            "(and training.threads.intra_op, training.loader.workers to match)"
        )
    if request.mem_mb is not None:
        mem_mb = max(n.memory_mb for n in members)
        if partition.max_mem_per_node_mb is not None:
            mem_mb = min(mem_mb, partition.max_mem_per_node_mb)
        if request.mem_mb > mem_mb:
            problems.append(
                f"{KEY}.mem_gb={request.mem_gb:g}: the nodes of {where} have at most {mem_mb} MB "
                f"({mem_mb / 1024:.1f} GB); set {KEY}.mem_gb<={mem_mb // 1024}"
            )
    gpus = max(n.gpus for n in members)
    if request.gpus_per_node > gpus:
        problems.append(
            f"{KEY}.gpus_per_node={request.gpus_per_node}: the nodes of {where} have "
            + (f"at most {gpus} GPUs" if gpus else "no GPUs (no gpu GRES)")
            + f"; set {KEY}.gpus_per_node<={gpus} or choose a GPU partition with {KEY}.partition"
        )
    if partition.max_time_min is not None and request.timeout_min > partition.max_time_min:
        problems.append(
            f"{KEY}.timeout_min={request.timeout_min}: {where} allows at most "
            f"{partition.max_time_min:g} minutes (MaxTime); set {KEY}.timeout_min<={int(partition.max_time_min)}"
        )
    node_limit = len(members) if partition.max_nodes is None else min(len(members), partition.max_nodes)
    if request.nodes > node_limit:
        problems.append(
            f"{KEY}.nodes={request.nodes}: {where} gives a job at most {node_limit} node(s); "
            f"set {KEY}.nodes=1 (segexp trains on one node)"
        )
    if problems:
        return problems
    fitting = [
        n
        for n in members
        if n.cpus >= request.cpus_per_node
        and n.gpus >= request.gpus_per_node
        and (request.mem_mb is None or n.memory_mb >= request.mem_mb)
    ]
    if len(fitting) < request.nodes:
        problems.append(
            f"{KEY}: no node of {where} has {request.cpus_per_node} CPUs, "
            f"{'default' if request.mem_gb is None else format(request.mem_gb, 'g')} GB and "
            f"{request.gpus_per_node} GPUs at once (cpus_per_task, mem_gb, gpus_per_node); "
            f"nodes: " + ", ".join(f"{n.name} {n.cpus} CPUs/{n.memory_mb} MB/{n.gpus} GPUs" for n in members[:8])
        )
    return problems


def _run(command: Sequence[str]) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(list(command), check=False, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
    except subprocess.TimeoutExpired as err:
        raise ConfigError(
            f"launcher=submitit_slurm: `{' '.join(command)}` did not answer in {COMMAND_TIMEOUT_S} s: "
            "is slurmctld running?"
        ) from err


def _scontrol(entity: str) -> str:
    result = _run(["scontrol", "--all", "show", entity, "-o"])  # --all: hidden partitions too
    if result.returncode != 0:
        raise ConfigError(
            f"launcher=submitit_slurm: `scontrol show {entity}` failed: "
            f"{' '.join(result.stderr.split()) or result.returncode}; is the SLURM controller reachable?"
        )
    return result.stdout


def check_slurm_request(launcher: Mapping[str, Any]) -> None:
    """Raise :class:`ConfigError` naming the ``hydra.launcher`` keys when the cluster can never run the jobs.

    Reads this cluster with ``scontrol`` (the ``SLURM_CONF`` of the environment), then asks
    ``sbatch --test-only`` about the same resources.
    """
    missing = [tool for tool in ("scontrol", "sbatch", "srun") if shutil.which(tool) is None]
    if missing:
        raise ConfigError(
            f"launcher=submitit_slurm: {', '.join(missing)} not found: submit from a SLURM login node "
            "(for a one-node test cluster on this machine: scripts/slurm_local.sh start)"
        )
    request = SlurmRequest.from_launcher(launcher)
    partition = choose_partition(request, parse_partitions(_scontrol("partition")))
    problems = request_problems(request, partition, parse_nodes(_scontrol("node")))
    if not problems:
        test = _run(["sbatch", "--test-only", *request.sbatch_options(), "--wrap", "true"])
        if test.returncode != 0:
            problems.append(
                f"sbatch --test-only {' '.join(request.sbatch_options())} refuses the request: "
                f"{' '.join(test.stderr.split())} (check {KEY}.partition, account, qos, "
                "additional_parameters)"
            )
    if problems:
        raise ConfigError(
            f"launcher=submitit_slurm: no job of this sweep could ever start in partition "
            f"{partition.name}:\n  " + "\n  ".join(problems)
        )
