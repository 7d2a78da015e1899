#!/usr/bin/env bash
# Services the tests need besides Python packages: PostgreSQL for the MLflow tracking-server
# tests (tests/test_tracking_server.py, through scripts/mlflow_server.sh), a one-node SLURM
# cluster for the launcher=submitit_slurm tests (tests/test_slurm.py, scripts/slurm_local.sh), and
# Debian's Chromium with chromedriver for the MLflow UI test (scripts/mlflow_ui_check.py; installed
# as root when missing; SEGEXP_REQUIRE_BROWSER turns its absence into a failure).
#
# Usage: scripts/ci_services.sh
# PostgreSQL:
#   - PostgreSQL found (on PATH, in /usr/lib/postgresql/*/bin or $SEGEXP_PG_BIN): does nothing.
#   - missing, run as root on Debian/Ubuntu: installs Debian's `postgresql` package, quietly.
#   - missing otherwise: says how to install it; exits 1 when SEGEXP_REQUIRE_SERVER is set (CI:
#     the server tests must run), else 0 (the server tests are then skipped).
# It installs the server binaries only; no system cluster is started or used (the tests run
# their own, on free loopback ports). The Python driver comes with `pip install -e ".[server]"`.
# SLURM: `scripts/slurm_local.sh start` (installs Debian's slurm-wlm and munge when missing and
# run as root; starts munged, slurmctld, slurmd on loopback; idempotent). When that fails it
# exits 1 if SEGEXP_REQUIRE_SLURM is set (CI), else says so and goes on (the SLURM tests skip).
set -euo pipefail

say() { printf 'ci_services: %s\n' "$*"; }

have_postgres() {
    local dir
    for dir in ${SEGEXP_PG_BIN:+"$SEGEXP_PG_BIN"} \
        "$(dirname "$(readlink -f "$(command -v pg_ctl 2>/dev/null || echo /nonexistent)")")" \
        /usr/lib/postgresql/*/bin; do
        [[ -x "$dir/initdb" && -x "$dir/pg_ctl" && -x "$dir/postgres" && -x "$dir/psql" ]] && return 0
    done
    return 1
}

ensure_postgres() {
    if have_postgres; then
        say "PostgreSQL already installed"
        return 0
    fi

    if [[ $EUID -eq 0 ]] && command -v apt-get >/dev/null; then
        say "installing PostgreSQL (apt-get install postgresql)"
        start=$SECONDS
        # No system cluster (Debian's package would create and, with systemd, start one on port 5432):
        # scripts/mlflow_server.sh runs its own. A drop-in file, read by createcluster.conf's include_dir.
        mkdir -p /etc/postgresql-common/createcluster.d
        echo "create_main_cluster = false  # segexp: scripts/ci_services.sh" \
            >/etc/postgresql-common/createcluster.d/segexp.conf
        log="$(mktemp)"
        export DEBIAN_FRONTEND=noninteractive
        if ! { apt-get update -qq && apt-get install -y -qq postgresql; } >"$log" 2>&1; then
            cat "$log" >&2
            say "error: apt-get install postgresql failed" >&2
            exit 1
        fi
        rm -f "$log"
        have_postgres || { say "error: PostgreSQL still not found after apt-get install" >&2; exit 1; }
        say "PostgreSQL installed in $((SECONDS - start)) s"
        return 0
    fi

    cat >&2 <<'EOF'
ci_services: PostgreSQL is not installed; the MLflow tracking-server tests need it. Install it with
  Debian/Ubuntu:  sudo apt-get install postgresql
  conda:          conda install -c conda-forge postgresql
EOF
    if [[ -n "${SEGEXP_REQUIRE_SERVER:-}" ]]; then
        exit 1
    fi
    say "going on without it: the tracking-server tests will be skipped"
}

start_slurm() {
    if bash "$(dirname "${BASH_SOURCE[0]}")/slurm_local.sh" start; then
        return 0
    fi
    if [[ -n "${SEGEXP_REQUIRE_SLURM:-}" ]]; then
        say "error: the local SLURM cluster did not start (SEGEXP_REQUIRE_SLURM is set)" >&2
        exit 1
    fi
    say "going on without SLURM: the SLURM tests will be skipped"
}

ensure_browser() {
    if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
        say "Chromium and chromedriver already installed"
        return 0
    fi
    if [[ $EUID -eq 0 ]] && command -v apt-get >/dev/null; then
        say "installing Chromium (apt-get install chromium chromium-driver)"
        start=$SECONDS
        if { apt-get install -y -q --no-install-recommends chromium chromium-driver >/dev/null 2>&1 ||
            { apt-get update -q >/dev/null 2>&1 &&
                apt-get install -y -q --no-install-recommends chromium chromium-driver >/dev/null 2>&1; }; }; then
            say "Chromium installed in $((SECONDS - start)) s"
            return 0
        fi
    fi
    say "Chromium (Debian: apt-get install chromium chromium-driver) is missing"
    if [[ -n "${SEGEXP_REQUIRE_BROWSER:-}" ]]; then
        exit 1
    fi
    say "going on without it: the MLflow UI browser test will be skipped"
}

ensure_postgres
ensure_browser
start_slurm
