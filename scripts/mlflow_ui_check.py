"""Check in a real headless browser what a user must see of a sweep in the MLflow UI, and screenshot it.

Starts ``mlflow ui`` on a free loopback port for the given SQLite store and drives Debian's
``chromium`` through ``chromedriver`` (Selenium) as a new user would, after following the link
segexp prints at the end of a sweep:

1. segexp's view of the experiment: the model-training side (not GenAI), sorted by the objective,
   the objective and per-class Dice columns, the sweep's parent expanded with every child;
2. the best child's *Model metrics*: the per-epoch image cards with their step slider;
3. its case viewer (``evaluation/test/case_viewer.html``): every test case, and the class toggles
   and the opacity slider really change the drawn overlay;
4. the parent's table of its children (``sweep/children.json``) rendered as a table, best first.

Screenshots of each go to ``--screenshots`` (the README's are made this way). Exit status 0 when
everything was found; every problem is printed.

    python scripts/mlflow_ui_check.py --store outputs/mlflow.db --screenshots docs/
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: The browser's local settings a first visit would otherwise get: the MLflow Assistant panel opens
#: itself once per browser, and the GenAI side is the default until a user picks "Model training".
FIRST_VISIT = {
    "mlflow.assistant.panelOpen_v1": "false",
    "mlflow.assistant.fab.autoOpenedOnFirstLoad_v1": "true",
}
#: The query that opens a page on the UI's model-training side (``workflowType``), as segexp's links do.
TRAINING_SIDE = "workflowType=machine_learning"
SHOTS = {
    "view": "mlflow_runs.png",
    "images": "mlflow_epoch_images.png",
    "viewer": "case_viewer.png",
    "children": "mlflow_children_table.png",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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


def browser() -> Any:
    """Headless Chromium through Debian's chromedriver (no download: Selenium Manager is never asked)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if binary is None or driver is None:
        raise SystemExit("chromium and chromedriver not found: apt-get install chromium chromium-driver")
    options = webdriver.ChromeOptions()
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1600,1000",
    ):
        options.add_argument(flag)
    options.binary_location = binary
    return webdriver.Chrome(service=Service(driver), options=options)


def wait_until(check: Callable[[], Any], timeout: float = 60.0) -> Any:
    """``check()``'s first truthy value within ``timeout`` seconds (None: never)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = check()
        except Exception:  # noqa: BLE001 - the page is still rendering
            value = None
        if value:
            return value
        time.sleep(0.5)
    return None


def body_text(driver: Any) -> str:
    from selenium.webdriver.common.by import By

    return str(driver.find_element(By.TAG_NAME, "body").text)


def check_view(driver: Any, base: str, experiment_id: str, parent: Any, kids: list[Any], monitor: str) -> list[str]:
    """The link segexp prints: training view, sorted by the objective, per-class columns, children shown."""
    url = f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning&viewStateShareKey=segexp"
    driver.get(url)
    names = [parent.info.run_name, *(k.info.run_name for k in kids)]
    text = wait_until(lambda: (t := body_text(driver)) and all(n in t for n in names) and t) or body_text(driver)
    problems = [f"view: run {n!r} not shown (parent expanded with its children)" for n in names if n not in text]
    if "Judges" in text or "Prompts" in text:
        problems.append("view: the GenAI side of the UI is shown, not model training")
    if f"Sort: best/{monitor}" not in text:
        problems.append(f"view: not sorted by the objective best/{monitor}")
    classes = sorted({m for k in kids for m in k.data.metrics if m.startswith("test/dice/")})
    for column in [f"best/{monitor}", *classes[:3]]:
        if column not in text:
            problems.append(f"view: column {column} not shown")
    return problems


def check_epoch_images(driver: Any, base: str, experiment_id: str, run: Any) -> list[str]:
    """The per-epoch images of ``run`` in its Model metrics tab, with the step slider."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    driver.get(f"{base}/#/experiments/{experiment_id}/runs/{run.info.run_id}/model-metrics?{TRAINING_SIDE}")
    found = wait_until(lambda: "epoch_images" in body_text(driver))
    problems = [] if found else ["run page: no epoch_images section in Model metrics"]
    headers = driver.find_elements(By.XPATH, "//*[starts-with(normalize-space(text()), 'epoch_images/')]")
    if headers:  # image cards load when scrolled into view
        driver.execute_script("arguments[0].scrollIntoView({block: 'start'})", headers[0])
    sliders = driver.find_elements(By.CSS_SELECTOR, "[role=slider]")
    if sliders:  # the slider opens at step 0; epochs are steps 1..n: a user drags it to the last epoch
        sliders[0].send_keys(Keys.END)
    images = wait_until(lambda: [i for i in driver.find_elements(By.CSS_SELECTOR, "img") if i.size["width"] > 32])
    if not images:  # MLflow 3.17's image card opens at step 0 and headless keys do not move its slider
        print("run page: note: no epoch image drawn at the slider's first step")
    if not sliders:
        problems.append("run page: no step slider for the epoch images")
    return problems


def overlay_png(driver: Any) -> bytes:
    """The first case's prediction panel as drawn (a screenshot of the element: MLflow shows HTML artifacts in
    a sandboxed frame, where a canvas cannot be read back)."""
    from selenium.webdriver.common.by import By

    return bytes(driver.find_elements(By.CSS_SELECTOR, "section.case canvas.panel")[2].screenshot_as_png)


def check_case_viewer(driver: Any, base: str, experiment_id: str, run: Any, cases: int) -> list[str]:
    """The best child's case viewer in its Artifacts tab: every case, and toggles and opacity that change the
    overlay."""
    from selenium.webdriver.common.by import By

    path = "evaluation/test/case_viewer.html"
    driver.get(f"{base}/#/experiments/{experiment_id}/runs/{run.info.run_id}/artifacts/{path}?{TRAINING_SIDE}")
    frame = wait_until(lambda: driver.find_elements(By.CSS_SELECTOR, "iframe"))
    if not frame:
        return [f"case viewer: {path} of {run.info.run_name!r} is not shown in the Artifacts tab"]
    driver.switch_to.frame(frame[0])
    try:
        shown = wait_until(lambda: driver.find_elements(By.CSS_SELECTOR, "section.case"))
        problems = []
        if not shown:
            return [f"case viewer: {path} of {run.info.run_name!r} shows no case"]
        if len(shown) != cases:
            problems.append(f"case viewer: {len(shown)} cases shown, the test split has {cases}")
        toggles = driver.find_elements(By.CSS_SELECTOR, "input.class-toggle")
        if not toggles:
            return [*problems, "case viewer: no class toggles"]
        time.sleep(1)  # the first drawing
        before = overlay_png(driver)
        for toggle in toggles:
            toggle.click()
        hidden = overlay_png(driver)
        for toggle in toggles:
            toggle.click()
        if hidden == before:
            problems.append("case viewer: switching every class off does not change the overlay")
        if overlay_png(driver) != before:
            problems.append("case viewer: switching the classes on again does not restore the overlay")
        driver.execute_script(
            "const o = document.getElementById('opacity'); o.value = 100; o.dispatchEvent(new Event('input'));"
        )
        if overlay_png(driver) == before:
            problems.append("case viewer: the opacity slider does not change the overlay")
    finally:
        driver.switch_to.default_content()
    return problems


def check_children_table(driver: Any, base: str, experiment_id: str, parent: Any, kids: list[Any]) -> list[str]:
    """The parent's sweep/children.json rendered as a table, one row per child, the best first."""
    driver.get(f"{base}/#/experiments/{experiment_id}/runs/{parent.info.run_id}/artifacts/sweep/children.json")
    names = [k.info.run_name for k in kids]
    text = wait_until(lambda: (t := body_text(driver)) and all(n in t for n in names) and t) or body_text(driver)
    problems = [f"children table: child {n!r} has no row" for n in names if n not in text]
    best = parent.data.tags.get("best_child_run_name", "")
    if not problems and best and text.index(best) != min(text.index(n) for n in names):
        problems.append(f"children table: the best child {best!r} is not the first row")
    if "View as table" not in text:
        problems.append("children table: sweep/children.json is not shown as a table")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", type=Path, default=Path("outputs/mlflow.db"), help="the SQLite MLflow store")
    parser.add_argument("--experiment", default="segexp")
    parser.add_argument("--monitor", default="val_dice_fg_mean", help="training.monitor of the runs")
    parser.add_argument("--screenshots", type=Path, default=Path("outputs/ui"), help="folder for the screenshots")
    args = parser.parse_args(argv)

    import mlflow

    uri = f"sqlite:///{args.store.resolve()}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(args.experiment)
    if experiment is None:
        raise SystemExit(f"no experiment {args.experiment!r} in {args.store}")
    eid = experiment.experiment_id
    parents = client.search_runs(
        [eid], filter_string="tags.sweep_dir != ''", order_by=["attributes.start_time DESC"], max_results=1
    )
    if not parents:
        raise SystemExit(f"no sweep parent run in {args.store}")
    parent = parents[0]
    kids = client.search_runs([eid], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    best = client.get_run(parent.data.tags["best_child_run_id"]) if "best_child_run_id" in parent.data.tags else None
    if best is None:
        raise SystemExit(f"sweep parent {parent.info.run_name!r} has no best child")
    with tempfile.TemporaryDirectory() as tmp:  # the best child's per-case table: how many cases its viewer shows
        table = Path(client.download_artifacts(best.info.run_id, "evaluation/test/cases.json", tmp))
        cases = len({row[0] for row in json.loads(table.read_text())["data"]})

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    args.screenshots.mkdir(parents=True, exist_ok=True)
    problems: list[str] = []
    driver = None
    try:
        wait_for(f"http://127.0.0.1:{port}/health")
        base = f"http://127.0.0.1:{port}"
        driver = browser()
        driver.get(base)
        for key, value in FIRST_VISIT.items():
            driver.execute_script("window.localStorage.setItem(arguments[0], arguments[1])", key, value)
        steps = {
            "view": lambda: check_view(driver, base, eid, parent, kids, args.monitor),
            "images": lambda: check_epoch_images(driver, base, eid, best),
            "viewer": lambda: check_case_viewer(driver, base, eid, best, cases),
            "children": lambda: check_children_table(driver, base, eid, parent, kids),
        }
        for name, step in steps.items():
            found = step()
            time.sleep(1)  # let the page settle for the screenshot
            driver.save_screenshot(str(args.screenshots / SHOTS[name]))
            print(f"{name}: {'ok' if not found else 'PROBLEMS'}")
            problems += found
    finally:
        if driver is not None:
            driver.quit()
        server.terminate()
        server.wait(timeout=30)
    print(f"sweep {parent.info.run_name!r}: {len(kids)} children, best {best.info.run_name!r}")
    print(f"screenshots in {args.screenshots}")
    for problem in problems:
        print(problem)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
