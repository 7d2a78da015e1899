#!/usr/bin/env bash
# A real single-node SLURM cluster on this machine, for the launcher=submitit_slurm tests
# (tests/test_slurm.py) and for trying a SLURM sweep before using a real cluster.
#
# Usage:
#   scripts/slurm_local.sh start    # install (root, Debian/Ubuntu) if missing, write slurm.conf, start
#                                   # munged, slurmctld, slurmd; wait until the node is idle (idempotent)
#   scripts/slurm_local.sh stop     # stop slurmd and slurmctld (and munged, if this script started it)
#   scripts/slurm_local.sh status   # exit 0 and show the node when the cluster answers, 3 otherwise
#   scripts/slurm_local.sh conf     # print the path of slurm.conf (clients: export SLURM_CONF=<it>)
#
# then:
#   segexp-train -m launcher=submitit_slurm debug=fast hydra.launcher.cpus_per_task=1 \
#       hydra.launcher.mem_gb=1 model.base_filters=4,8
#   sinfo; squeue; scontrol show job <id>
#
# What runs: cluster `segexp-local`, one node (this host's short name, address 127.0.0.1, its
# real cores, its memory minus headroom) in one partition `debug` (default, no time limit).
# The daemons listen on 127.0.0.1 only (ports 6817/6818) and run as root; cores and memory are
# consumable (select/cons_tres, CR_CPU_Memory), so two 1-core jobs run at once on 2 cores.
# No cgroups (proctrack/linuxproc, task/none: works in containers), no accounting database:
# `sacct` does not work, and submitit's "Bypassing sacct error" warnings are expected.
# A requeued job waits cred_expire (10 s here, SLURM's default 120 s) before it starts again.
# State, spool, logs and pid files live in $SEGEXP_SLURM_DIR. When /etc/slurm/slurm.conf does
# not exist, it becomes a link to this cluster's slurm.conf, so `sinfo`, `sbatch` work as is;
# otherwise (a real SLURM installation) export SLURM_CONF=$(scripts/slurm_local.sh conf).
#
# Environment (defaults in brackets):
#   SEGEXP_SLURM_DIR        state, spool, logs, slurm.conf                  [/var/tmp/segexp-slurm]
#   SEGEXP_SLURM_TIMEOUT    seconds to wait for the node to become idle     [60]
#   SEGEXP_REQUIRE_SLURM    set (CI): a missing SLURM that cannot be installed is an error
#
# Install what it needs by hand: sudo apt-get install slurm-wlm munge
set -euo pipefail

DIR="${SEGEXP_SLURM_DIR:-/var/tmp/segexp-slurm}"
TIMEOUT="${SEGEXP_SLURM_TIMEOUT:-60}"
CONF="$DIR/slurm.conf"
NODE="$(hostname -s)"
CLUSTER=segexp-local
PARTITION=debug
MUNGE_SOCKET=/run/munge/munge.socket.2
export SLURM_CONF="$CONF"

say() { printf 'slurm_local: %s\n' "$*"; }
die() { printf 'slurm_local: error: %s\n' "$*" >&2; exit 1; }

have_slurm() {
    local tool
    for tool in munged munge slurmctld slurmd sbatch sinfo scontrol squeue scancel; do
        command -v "$tool" >/dev/null || [[ -x /usr/sbin/$tool ]] || return 1
    done
}

install_slurm() {
    have_slurm && return 0
    if [[ $EUID -ne 0 ]] || ! command -v apt-get >/dev/null; then
        printf 'slurm_local: SLURM is not installed. Install it with\n  Debian/Ubuntu:  sudo apt-get install slurm-wlm munge\n' >&2
        exit 1
    fi
    say "installing SLURM (apt-get install slurm-wlm munge)"
    local start=$SECONDS log
    log="$(mktemp)"
    export DEBIAN_FRONTEND=noninteractive
    if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends slurm-wlm munge; } >"$log" 2>&1; then
        cat "$log" >&2
        die "apt-get install slurm-wlm munge failed"
    fi
    rm -f "$log"
    have_slurm || die "SLURM still not found after apt-get install"
    say "SLURM installed in $((SECONDS - start)) s"
}

pid_alive() {  # pid_alive <pid file>
    [[ -s "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null
}

munge_works() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

start_munge() {
    munge_works && return 0
    [[ -s /etc/munge/munge.key ]] || {
        say "creating the MUNGE key /etc/munge/munge.key"
        mkdir -p /etc/munge
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    }
    local user=root
    id munge >/dev/null 2>&1 && user=munge
    mkdir -p /run/munge /var/lib/munge /var/log/munge /etc/munge
    chown "$user": /run/munge /var/lib/munge /var/log/munge /etc/munge /etc/munge/munge.key
    chmod 0700 /etc/munge /var/lib/munge /var/log/munge
    chmod 0755 /run/munge
    chmod 0400 /etc/munge/munge.key
    if [[ $user == root ]]; then
        /usr/sbin/munged --force --socket="$MUNGE_SOCKET"
    else
        runuser -u munge -- /usr/sbin/munged --socket="$MUNGE_SOCKET"
    fi
    touch "$DIR/run/munged.ours"
    local i
    for i in $(seq 50); do munge_works && return 0; sleep 0.1; done
    die "munged does not answer; see /var/log/munge/munged.log"
}

render_conf() {  # this host's slurm.conf, on stdout
    local cpus mem_mb headroom real_mb
    cpus="$(nproc)"
    mem_mb="$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)"
    headroom=$(( mem_mb / 10 > 1024 ? mem_mb / 10 : 1024 ))  # for the OS and the daemons
    real_mb=$(( mem_mb - headroom ))
    (( real_mb >= 512 )) || die "only ${mem_mb} MB of memory: too little for a SLURM node"
    cat <<EOF
# Written by scripts/slurm_local.sh: a one-node SLURM cluster on this host, for tests.
ClusterName=$CLUSTER
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=6817
SlurmdPort=6818
AuthType=auth/munge
CredType=cred/munge
# A requeued job starts again after cred_expire seconds (default 120).
AuthInfo=cred_expire=10,socket=$MUNGE_SOCKET
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# No cgroups (containers): processes are tracked through /proc, tasks are not confined.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
MailProg=/bin/true
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
# Pending jobs (a requeued one, once cred_expire has passed) are looked at every 2 s, not every 30-60 s.
SchedulerParameters=sched_interval=2,bf_interval=2
# Cores and memory are consumable: several small jobs share the node.
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU=$(( real_mb / cpus ))
ReturnToService=2
SlurmdParameters=config_overrides
# SIGTERM to SIGKILL: time for an interrupted run to end its MLflow run KILLED (SLURM's default).
KillWait=30
MinJobAge=600
InactiveLimit=0
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$real_mb State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
}

write_conf() {
    mkdir -p "$DIR"/{state,spool,log,run}
    render_conf >"$CONF.tmp"
    mv "$CONF.tmp" "$CONF"
    if [[ ! -e /etc/slurm/slurm.conf && $EUID -eq 0 ]]; then
        mkdir -p /etc/slurm
        ln -sfn "$CONF" /etc/slurm/slurm.conf
    fi
    say "node $NODE: $(awk '/^NodeName=/ {print $3 ", " $4 " MB"}' "$CONF"); $CONF"
}

node_state() { sinfo -h -n "$NODE" -p "$PARTITION" -o %T 2>/dev/null | head -n1; }

running() { pid_alive "$DIR/run/slurmctld.pid" && pid_alive "$DIR/run/slurmd.pid" && [[ -n "$(node_state)" ]]; }

wait_idle() {
    local deadline=$((SECONDS + TIMEOUT)) state=""
    while (( SECONDS < deadline )); do
        state="$(node_state)"
        case "$state" in
            idle|mixed|allocated|completing) return 0 ;;
            down*|drain*|fail*|inval*) scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true ;;
        esac
        sleep 0.5
    done
    tail -n 20 "$DIR/log/slurmctld.log" "$DIR/log/slurmd.log" >&2 || true
    die "node $NODE is not idle after ${TIMEOUT} s (state: ${state:-no answer}); logs in $DIR/log"
}

start() {
    local start=$SECONDS
    install_slurm
    if running; then
        if cmp -s "$CONF" <(render_conf); then
            say "already running (node $NODE: $(node_state)); SLURM_CONF=$CONF"
            return 0
        fi
        say "slurm.conf for this host changed: restarting slurmctld and slurmd"
        stop
    fi
    [[ $EUID -eq 0 ]] || die "starting the cluster needs root (its daemons run as root): sudo $0 start"
    write_conf
    start_munge
    pid_alive "$DIR/run/slurmctld.pid" || /usr/sbin/slurmctld -f "$CONF" \
        || die "slurmctld did not start; see $DIR/log/slurmctld.log"
    pid_alive "$DIR/run/slurmd.pid" || /usr/sbin/slurmd -f "$CONF" \
        || die "slurmd did not start; see $DIR/log/slurmd.log"
    wait_idle
    say "cluster $CLUSTER up in $((SECONDS - start)) s: partition $PARTITION, node $NODE $(node_state); SLURM_CONF=$CONF"
}

stop_daemon() {  # stop_daemon <name> <pid file>
    local pid i
    pid_alive "$2" || return 0
    pid="$(cat "$2")"
    kill "$pid"
    for i in $(seq 100); do kill -0 "$pid" 2>/dev/null || { say "$1 stopped"; return 0; }; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    say "$1 killed"
}

stop() {
    stop_daemon slurmd "$DIR/run/slurmd.pid"
    stop_daemon slurmctld "$DIR/run/slurmctld.pid"
    if [[ -e "$DIR/run/munged.ours" ]]; then
        /usr/sbin/munged --stop --socket="$MUNGE_SOCKET" >/dev/null 2>&1 && say "munged stopped"
        rm -f "$DIR/run/munged.ours"
    fi
}

status() {
    if running; then
        sinfo -p "$PARTITION" -o "%P %a %l %D %T %c %m %N"
        return 0
    fi
    say "not running (SLURM_CONF=$CONF)"
    return 3
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    conf) printf '%s\n' "$CONF" ;;
    *) printf 'usage: %s start|stop|status|conf\n' "$0" >&2; exit 2 ;;
esac
