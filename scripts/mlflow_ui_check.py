"""Check in a real headless browser that the MLflow UI shows a sweep's parent run with its children.

Starts ``mlflow ui`` on a free loopback port for the given store, opens the
experiment's runs page in headless Chromium (Debian's ``chromium`` package), checks
that the rendered page names the parent run and every child run, and saves a
screenshot. Exit status 0 when everything was found.

    python scripts/mlflow_ui_check.py --store outputs/mlflow.db --screenshot docs/mlflow_sweep.png
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")


def chromium(url: str, *args: str, budget_ms: int = 20000) -> str:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        raise SystemExit("chromium not found: apt-get install chromium")
    with tempfile.TemporaryDirectory() as profile:
        result = subprocess.run(
            [browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}", *args, url],
            capture_output=True,
            text=True,
            timeout=180,
        )
    return result.stdout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", type=Path, default=Path("outputs/mlflow.db"), help="the SQLite MLflow store")
    parser.add_argument("--experiment", default="segexp")
    parser.add_argument("--screenshot", type=Path, default=Path("outputs/mlflow_sweep.png"))
    args = parser.parse_args(argv)

    import mlflow

    uri = f"sqlite:///{args.store.resolve()}"
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name(args.experiment)
    if experiment is None:
        raise SystemExit(f"no experiment {args.experiment!r} in {args.store}")
    parents = client.search_runs(
        [experiment.experiment_id],
        filter_string="tags.sweep_dir != ''",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not parents:
        raise SystemExit(f"no sweep parent run in {args.store}")
    parent = parents[0]
    kids = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(f"http://127.0.0.1:{port}/health")
        page = f"http://127.0.0.1:{port}/#/experiments/{experiment.experiment_id}/runs"
        problems = []
        dom = chromium(page, "--dump-dom")
        # The runs table groups the children under the parent's expander: parent + children all match.
        if parent.info.run_name not in dom:
            problems.append(f"runs page does not show the parent run {parent.info.run_name!r}")
        if f"<strong>{1 + len(kids)}</strong> matching runs" not in dom:
            problems.append(f"runs page does not count {1 + len(kids)} runs (parent + children)")
        if kids:  # a child's page links back to its parent
            child_page = f"http://127.0.0.1:{port}/#/experiments/{experiment.experiment_id}/runs/{kids[0].info.run_id}"
            if parent.info.run_name not in chromium(child_page, "--dump-dom"):
                problems.append(f"child run page of {kids[0].info.run_name!r} does not name its parent")
        args.screenshot.parent.mkdir(parents=True, exist_ok=True)
        chromium(page, f"--screenshot={args.screenshot.resolve()}", "--window-size=1600,900")
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(f"parent {parent.info.run_name!r} with {len(kids)} children; screenshot {args.screenshot}")
    for problem in problems:
        print(problem)
    if not problems:
        print("the MLflow UI shows the parent run with its children")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
