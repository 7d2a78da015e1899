#!/usr/bin/env bash
# MLflow tracking server with a PostgreSQL backend, on loopback only (tracking=server).
#
# Usage (from anywhere; relative paths are relative to the repository root):
#   scripts/mlflow_server.sh start    # start PostgreSQL + MLflow (idempotent), wait for /health
#   scripts/mlflow_server.sh stop     # stop MLflow, then PostgreSQL (pid files)
#   scripts/mlflow_server.sh status   # exit 0 when both run and /health answers, 3 otherwise
#   scripts/mlflow_server.sh check    # exit 0 when PostgreSQL, psycopg2 and mlflow are installed
#
# then train against it:
#   segexp-train tracking=server                  # http://127.0.0.1:5000 (or $MLFLOW_TRACKING_URI)
#   open http://127.0.0.1:5000                    # the UI is served by the same server
#
# What runs:
#   - a private PostgreSQL cluster in $SEGEXP_PG_DATA (created with initdb on the first start),
#     listening on 127.0.0.1:$SEGEXP_PG_PORT only (no Unix socket), trust authentication for
#     127.0.0.1 only, a role and a database both named `mlflow`, and a database `optuna` for the
#     studies of Optuna searches (hparams_search=*_optuna with tracking=server;
#     postgresql+psycopg2://mlflow@127.0.0.1:$SEGEXP_PG_PORT/optuna);
#   - `mlflow server` on 127.0.0.1:$SEGEXP_MLFLOW_PORT with that database as backend store and
#     artifacts proxied through the server (mlflow-artifacts:/) into $SEGEXP_MLFLOW_ARTIFACTS.
# Trust on loopback means any local user can reach the database: fine for a laptop or a CI job,
# not for a machine shared with people you do not trust. Other machines cannot reach either
# server; from a laptop use an SSH tunnel (ssh -L 5000:127.0.0.1:5000 <host>). Logs:
# $SEGEXP_MLFLOW_STATE/mlflow.log and $SEGEXP_PG_DATA/server.log. MLflow's job runner (GenAI
# judges, prompt optimisation) is off unless MLFLOW_SERVER_ENABLE_JOB_EXECUTION=true.
#
# As root (CI, containers) PostgreSQL, which refuses to run as root, runs as $SEGEXP_PG_USER
# (default `postgres`, created by Debian's package) through runuser; the data folder is given
# to that user, and every folder above it must be searchable (o+x) by it.
#
# Environment (defaults in brackets):
#   SEGEXP_PG_DATA            PostgreSQL data folder                       [outputs/postgres]
#   SEGEXP_PG_PORT            PostgreSQL port on 127.0.0.1                 [5433]
#   SEGEXP_PG_BIN             folder with initdb, pg_ctl, postgres, psql   [found on PATH or /usr/lib/postgresql/*/bin]
#   SEGEXP_PG_USER            OS user that runs PostgreSQL when root       [postgres]
#   SEGEXP_MLFLOW_PORT        MLflow port on 127.0.0.1                     [5000]
#                             (another port: train with tracking.uri=http://127.0.0.1:<port>)
#   SEGEXP_MLFLOW_ARTIFACTS   artifact store behind the server             [outputs/mlflow-server-artifacts]
#   SEGEXP_MLFLOW_STATE       mlflow.pid and mlflow.log                    [outputs/mlflow-server]
#   SEGEXP_MLFLOW_WORKERS     server worker processes                      [4]
#   SEGEXP_SERVER_TIMEOUT     seconds to wait for each server to come up   [120]
#
# Install what it needs (Debian/Ubuntu; conda: `conda install -c conda-forge postgresql psycopg2`):
#   sudo apt-get install postgresql && pip install -e ".[server]"      # psycopg2-binary
set -euo pipefail

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_DIR"

abspath() {  # absolute path of $1, relative to the repository root
    case "$1" in
        /*) printf '%s\n' "$1" ;;
        *) printf '%s\n' "$REPO_DIR/$1" ;;
    esac
}

PG_DATA="$(abspath "${SEGEXP_PG_DATA:-outputs/postgres}")"
PG_PORT="${SEGEXP_PG_PORT:-5433}"
PG_USER="${SEGEXP_PG_USER:-postgres}"
MLFLOW_PORT="${SEGEXP_MLFLOW_PORT:-5000}"
ARTIFACTS="$(abspath "${SEGEXP_MLFLOW_ARTIFACTS:-outputs/mlflow-server-artifacts}")"
STATE="$(abspath "${SEGEXP_MLFLOW_STATE:-outputs/mlflow-server}")"
WORKERS="${SEGEXP_MLFLOW_WORKERS:-4}"
TIMEOUT="${SEGEXP_SERVER_TIMEOUT:-120}"
HOST=127.0.0.1
DB=mlflow
DB_ROLE=mlflow
OPTUNA_DB=optuna  # Optuna searches' studies (tracking=server: tracking.optuna_storage); not in MLflow's database,
                  # whose alembic_version table Optuna would take for its own
PG_SUPERUSER=postgres  # database superuser created by initdb (a database role, not the OS user)
PID_FILE="$STATE/mlflow.pid"
MLFLOW_LOG="$STATE/mlflow.log"
PG_LOG="$PG_DATA/server.log"
URL="http://$HOST:$MLFLOW_PORT"
# +psycopg2: SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3, 2.0 to psycopg2; name the driver.
BACKEND_URI="postgresql+psycopg2://$DB_ROLE@$HOST:$PG_PORT/$DB"

# MLflow's job runner (huey consumers for LLM judges, prompt optimisation, trace rollups) is of no
# use to segexp and costs about ten processes: off unless asked for.
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}"

say() { printf 'mlflow_server: %s\n' "$*"; }
die() { printf 'mlflow_server: error: %s\n' "$*" >&2; exit 1; }

PYTHON="$(command -v python3 || command -v python || true)"

install_hint() {
    cat >&2 <<'EOF'
PostgreSQL is not installed (initdb, pg_ctl, postgres and psql are needed). Install it with
  Debian/Ubuntu:  sudo apt-get install postgresql        (as root: scripts/ci_services.sh)
  conda:          conda install -c conda-forge postgresql
  other:          put its bin folder on PATH or in SEGEXP_PG_BIN
EOF
}

find_pg_bin() {  # print the folder holding initdb/pg_ctl/postgres/psql, or fail
    local candidates=() dir found
    [[ -n "${SEGEXP_PG_BIN:-}" ]] && candidates+=("$SEGEXP_PG_BIN")
    if found="$(command -v pg_ctl 2>/dev/null)"; then
        candidates+=("$(dirname "$(readlink -f "$found")")")
    fi
    # Debian/Ubuntu keep the server binaries off PATH, one folder per major version (newest first).
    while IFS= read -r dir; do candidates+=("$dir"); done \
        < <(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r)
    for dir in "${candidates[@]}"; do
        if [[ -x "$dir/initdb" && -x "$dir/pg_ctl" && -x "$dir/postgres" && -x "$dir/psql" ]]; then
            printf '%s\n' "$dir"
            return 0
        fi
    done
    return 1
}

check() {  # everything installed? print what is missing and how to install it
    local ok=0
    if ! PG_BIN="$(find_pg_bin)"; then install_hint; ok=1; fi
    if [[ -z "$PYTHON" ]] || ! "$PYTHON" -c 'import psycopg2' 2>/dev/null; then
        printf '%s\n' "psycopg2 (PostgreSQL driver of MLflow) is missing: pip install -e \".[server]\"" \
            "  (or pip install psycopg2-binary; conda: conda install -c conda-forge psycopg2)" >&2
        ok=1
    fi
    if ! command -v mlflow >/dev/null; then
        echo "mlflow is not on PATH: pip install -e ." >&2
        ok=1
    fi
    if [[ $EUID -eq 0 ]] && ! id -u "$PG_USER" >/dev/null 2>&1; then
        echo "running as root: PostgreSQL needs an unprivileged OS user; create it (useradd --system $PG_USER)" \
            "or name another one in SEGEXP_PG_USER" >&2
        ok=1
    fi
    return $ok
}

as_pg() {  # run a PostgreSQL binary as the OS user that owns the cluster
    if [[ $EUID -eq 0 ]]; then
        (cd / && runuser -u "$PG_USER" -- "$@")
    else
        "$@"
    fi
}

port_busy() {  # is something listening on 127.0.0.1:$1?
    "$PYTHON" - "$1" <<'EOF'
import socket, sys
with socket.socket() as s:
    s.settimeout(1)
    sys.exit(0 if s.connect_ex(("127.0.0.1", int(sys.argv[1]))) == 0 else 1)
EOF
}

healthy() {  # does the MLflow server answer /health?
    "$PYTHON" - "$URL/health" <<'EOF'
import sys, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1], timeout=2) as r:
        sys.exit(0 if r.status == 200 else 1)
except Exception:
    sys.exit(1)
EOF
}

mlflow_pid() {  # pid of our running mlflow server, or fail (removing a stale pid file)
    local pid
    [[ -f "$PID_FILE" ]] || return 1
    pid="$(cat "$PID_FILE")"
    # Alive and still mlflow (a pid left by a reboot may belong to another program by now).
    if [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null && ps -p "$pid" -o args= | grep -q mlflow; then
        printf '%s\n' "$pid"
        return 0
    fi
    rm -f "$PID_FILE"
    return 1
}

pg_running() { [[ -f "$PG_DATA/PG_VERSION" ]] && as_pg "$PG_BIN/pg_ctl" status -D "$PG_DATA" >/dev/null 2>&1; }

psql_admin() { "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$HOST" -p "$PG_PORT" -U "$PG_SUPERUSER" -d postgres "$@"; }

init_cluster() {
    say "creating the PostgreSQL cluster in $PG_DATA"
    mkdir -p "$PG_DATA"
    chmod 700 "$PG_DATA"
    if [[ $EUID -eq 0 ]]; then
        chown "$PG_USER:" "$PG_DATA"
        runuser -u "$PG_USER" -- test -x "$(dirname "$PG_DATA")" \
            || die "OS user $PG_USER cannot reach $PG_DATA: make the folders above it searchable (chmod o+x) or set SEGEXP_PG_DATA"
    fi
    as_pg "$PG_BIN/initdb" -D "$PG_DATA" -U "$PG_SUPERUSER" --auth=trust --no-locale -E UTF8 >/dev/null
    # Loopback TCP only; the port is given at each start (-p) so SEGEXP_PG_PORT may change.
    as_pg tee -a "$PG_DATA/postgresql.conf" >/dev/null <<'EOF'

# --- segexp (scripts/mlflow_server.sh) ---
listen_addresses = '127.0.0.1'
unix_socket_directories = ''
EOF
    as_pg tee "$PG_DATA/pg_hba.conf" >/dev/null <<'EOF'
# segexp (scripts/mlflow_server.sh): trust, TCP from 127.0.0.1 only; nothing else may connect.
# TYPE  DATABASE  USER  ADDRESS       METHOD
host    all       all   127.0.0.1/32  trust
EOF
}

start_pg() {
    if pg_running; then
        say "PostgreSQL already running ($PG_DATA)"
    else
        ! port_busy "$PG_PORT" || die "port $PG_PORT is taken by another program: set SEGEXP_PG_PORT"
        [[ -f "$PG_DATA/PG_VERSION" ]] || init_cluster
        say "starting PostgreSQL on $HOST:$PG_PORT"
        as_pg "$PG_BIN/pg_ctl" start -D "$PG_DATA" -l "$PG_LOG" -o "-p $PG_PORT" -w -t "$TIMEOUT" -s \
            || die "PostgreSQL did not start; see $PG_LOG"
    fi
    ensure_databases
}

ensure_databases() {  # the role and its databases: MLflow's store and the Optuna studies (also on a running server)
    local db
    if [[ -z "$(psql_admin -tAc "SELECT 1 FROM pg_roles WHERE rolname = '$DB_ROLE'")" ]]; then
        psql_admin -c "CREATE ROLE $DB_ROLE LOGIN"
    fi
    for db in "$DB" "$OPTUNA_DB"; do
        if [[ -z "$(psql_admin -tAc "SELECT 1 FROM pg_database WHERE datname = '$db'")" ]]; then
            psql_admin -c "CREATE DATABASE $db OWNER $DB_ROLE"
        fi
    done
}

start_mlflow() {
    local pid waited=0
    if pid="$(mlflow_pid)"; then
        say "MLflow server already running (pid $pid)"
    else
        ! port_busy "$MLFLOW_PORT" || die "port $MLFLOW_PORT is taken by another program: set SEGEXP_MLFLOW_PORT"
        mkdir -p "$STATE" "$ARTIFACTS"
        say "starting MLflow server on $URL (backend $BACKEND_URI, artifacts $ARTIFACTS)"
        # setsid: own process group (server + workers), stopped as one; the log keeps every start.
        local setsid=setsid
        command -v setsid >/dev/null || setsid=  # macOS: no setsid; mlflow forwards SIGTERM itself
        $setsid mlflow server \
            --backend-store-uri "$BACKEND_URI" \
            --artifacts-destination "$ARTIFACTS" \
            --host "$HOST" --port "$MLFLOW_PORT" --workers "$WORKERS" \
            >>"$MLFLOW_LOG" 2>&1 </dev/null &
        pid=$!
        echo "$pid" >"$PID_FILE"
    fi
    until healthy; do
        kill -0 "$pid" 2>/dev/null || { rm -f "$PID_FILE"; tail -n 30 "$MLFLOW_LOG" >&2; die "MLflow server exited; see $MLFLOW_LOG"; }
        (( waited++ < TIMEOUT )) || { tail -n 30 "$MLFLOW_LOG" >&2; die "no answer from $URL/health after ${TIMEOUT}s; see $MLFLOW_LOG"; }
        sleep 1
    done
    say "MLflow server ready at $URL"
}

stop_mlflow() {
    local pid waited=0
    if ! pid="$(mlflow_pid)"; then
        say "MLflow server not running"
        return 0
    fi
    say "stopping MLflow server (pid $pid)"
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null || kill -0 -- "-$pid" 2>/dev/null; do
        if (( waited++ >= 30 )); then
            say "MLflow server still running after 30 s: killing it"
            kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
            break
        fi
        sleep 1
    done
    rm -f "$PID_FILE"
}

stop_pg() {
    if ! pg_running; then
        say "PostgreSQL not running"
        return 0
    fi
    say "stopping PostgreSQL ($PG_DATA)"
    as_pg "$PG_BIN/pg_ctl" stop -D "$PG_DATA" -m fast -w -t "$TIMEOUT" -s
}

status() {
    local code=0 pid
    if pg_running; then say "PostgreSQL running on $HOST:$PG_PORT ($PG_DATA)"; else say "PostgreSQL stopped"; code=3; fi
    if pid="$(mlflow_pid)"; then
        if healthy; then say "MLflow server running at $URL (pid $pid)"; else say "MLflow server (pid $pid) not answering at $URL/health"; code=3; fi
    else
        say "MLflow server stopped"
        code=3
    fi
    return $code
}

case "${1:-}" in
    start)
        check || exit 1
        start_pg
        start_mlflow
        ;;
    stop)
        stop_mlflow
        if PG_BIN="$(find_pg_bin)"; then stop_pg; fi
        ;;
    status)
        PG_BIN="$(find_pg_bin)" || { install_hint; exit 1; }
        status
        ;;
    check)
        check && say "ready: PostgreSQL binaries in $PG_BIN, psycopg2 and mlflow installed"
        ;;
    *)
        sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
        [[ "${1:-}" =~ ^(-h|--help|help)$ ]] && exit 0 || exit 2
        ;;
esac
