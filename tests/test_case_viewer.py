"""Per-case results in the MLflow UI: the case tables (through the Tracker), the case viewer page, and a sweep
parent's table of its children and page of their cases side by side."""

from __future__ import annotations

import base64
import dataclasses
import re
import zlib
from pathlib import Path

import cv2
import mlflow
import numpy as np
import pytest

from segexp.data.io.rgb_map import default_palette
from segexp.evaluation.case_viewer import (
    MAX_MB,
    VIEWER_FILE,
    comparison_page,
    encode_case,
    page_data,
    viewer_page,
)
from segexp.launch.sweep import CHILD_VIEWER, log_case_comparison
from segexp.tracking.sweep import CHILDREN_TABLE, close_parent

from .conftest import sqlite_tracked_run

CLASSES = ["background", "square", "disc"]


def synthetic_case(seed: int, slices: int = 6, size: int = 300) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A smooth noisy image stack with a square (1) and a disc (2), and a prediction shifted by ``seed % 7`` px."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    truth = np.zeros((slices, size, size), np.uint8)
    for k in range(slices):
        truth[k, 60 : 140 + 4 * k, 50:150] = 1
        truth[k][(yy - 200) ** 2 + (xx - 180) ** 2 <= (30 + 2 * k) ** 2] = 2
    images = (40 + 90 * truth + rng.normal(0, 12, truth.shape) + 40 * np.sin(xx / 23.0)).clip(0, 255)
    return images.astype(np.uint8), truth, np.roll(truth, seed % 7, axis=2)


def scores(dice_square: float | None, dice_disc: float | None) -> dict[str, dict[str, float | None]]:
    return {
        "square": {"dice": dice_square, "iou": dice_square, "hd95": 2.0, "nsd": 0.875, "assd": 0.5},
        "disc": {"dice": dice_disc, "iou": dice_disc, "hd95": 1.0},
    }


def assert_self_contained(page: str) -> None:
    assert 'src="http' not in page and "src='http" not in page
    assert not re.search(r"<script[^>]*\bsrc=", page)  # inline scripts only
    assert not re.search(r"<link[^>]*stylesheet", page) and "@import" not in page and "url(http" not in page
    assert "fetch(" not in page and "XMLHttpRequest" not in page


def test_viewer_page_holds_every_case_worst_first_with_its_controls() -> None:
    names = ["good", "bad", "empty", "mid"]
    per_case = {
        "good": scores(0.95, 0.9),
        "bad": scores(0.1, None),
        "empty": scores(None, None),
        "mid": scores(0.5, 0.7),
    }
    cases = [encode_case(n, *synthetic_case(i)) for i, n in enumerate(names)]
    assert all(c.height == 256 and c.width == 256 and c.slices == 6 for c in cases)  # long side <= 256 px
    page = viewer_page(cases, per_case, CLASSES, default_palette(3), title="test split")
    assert_self_contained(page)
    assert page.count('class="case"') == 4 and page.count('class="slice-slider"') == 4
    assert page.count('class="class-toggle"') == 2 and 'id="opacity"' in page and 'id="sort"' in page
    assert re.findall(r'data-name="([^"]+)"', page) == ["bad", "mid", "good", "empty"]  # no score: last
    assert "all 4 cases shown" in page and f"Size cap {MAX_MB:g} MB" in page
    # the score table: Dice, IoU, HD95, NSD and ASSD per class (a score the summary lacks shows as a dash)
    assert "<th>NSD</th>" in page and "<th>ASSD (px)</th>" in page and "<th>HD95 (px)</th>" in page
    assert "<td>0.875</td>" in page and "<td>0.5</td>" in page
    assert page.count("data:image/jpeg;base64,") == 4 and "DecompressionStream('deflate')" in page
    data = page_data(page)
    assert data is not None and [c["name"] for c in data["cases"]] == ["bad", "mid", "good", "empty"]
    labels = np.frombuffer(zlib.decompress(base64.b64decode(data["cases"][0]["labels"][0])), np.uint8)
    truth, prediction = labels.reshape(2, 6, 256, 256)  # truth then prediction, downscaled nearest
    _, full_truth, full_prediction = synthetic_case(1)  # "bad"
    assert np.array_equal(truth[5], cv2.resize(full_truth[5], (256, 256), interpolation=cv2.INTER_NEAREST))
    assert np.array_equal(prediction[0], cv2.resize(full_prediction[0], (256, 256), interpolation=cv2.INTER_NEAREST))
    assert data["classes"][0] == {"name": "square", "colour": [int(v) for v in default_palette(3)[1]]}


def test_a_200_case_viewer_stays_under_its_cap_and_says_what_it_left_out() -> None:
    one = encode_case("x", *synthetic_case(3, slices=20, size=512))
    cases = [dataclasses.replace(one, name=f"case{i:03d}") for i in range(200)]
    per_case = {c.name: scores(i / 200, 1 - i / 400) for i, c in enumerate(cases)}
    page = viewer_page(cases, per_case, CLASSES, default_palette(3), title="test split")
    assert_self_contained(page)
    assert len(page.encode()) <= MAX_MB * 1e6
    kept = re.findall(r'data-name="([^"]+)"', page)
    left = re.search(r"(\d+) of 200 cases left out", page)
    assert left is not None and len(kept) + int(left.group(1)) == 200 and len(kept) > 5
    assert kept == [f"case{i:03d}" for i in range(len(kept))]  # the worst ones kept
    assert "case199 (0.749)" in page  # the left-out ones are named with their Dice
    small = viewer_page(cases, per_case, CLASSES, default_palette(3), title="t", max_mb=1.0)
    assert len(small.encode()) <= 1e6


def test_comparison_page_puts_the_children_side_by_side() -> None:
    cases = [encode_case(n, *synthetic_case(i, slices=3, size=64)) for i, n in enumerate(["a", "b"])]
    first = viewer_page(cases, {"a": scores(0.9, 0.8), "b": scores(0.2, 0.4)}, CLASSES, default_palette(3), title="1")
    second = viewer_page(cases[:1], {"a": scores(0.7, 0.6)}, CLASSES, default_palette(3), title="2")
    page = comparison_page([("lr=1e-3", first), ("lr=5e-4", second), ("broken", "<html></html>")], title="sweep")
    assert page is not None
    assert_self_contained(page)
    data = page_data(page)
    assert data is not None and [c["name"] for c in data["cases"]] == ["a"]  # the cases every child has
    assert data["cases"][0]["panels"] == [[-1, 0], [0, 0], [0, 1], [1, 1]] and len(data["cases"][0]["labels"]) == 2
    assert "<figcaption>lr=1e-3</figcaption>" in page and "<figcaption>lr=5e-4</figcaption>" in page
    assert "1 cases are not in every child" in page
    assert comparison_page([("x", "no viewer")], title="sweep") is None


def _table(uri: str, run_id: str, artifact_file: str):
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient()
    return client.load_table(client.get_run(run_id).info.experiment_id, artifact_file, [run_id])


def test_a_table_logged_again_replaces_the_first(tmp_path: Path) -> None:
    with sqlite_tracked_run(tmp_path, run_dir=tmp_path / "run") as tracker:  # through the outbox
        tracker.log_table({"case": ["a", "b"], "dice": [0.1, None]}, "evaluation/test/cases.json")
        tracker.log_table({"case": ["c"], "dice": [0.5]}, "evaluation/test/cases.json")
    table = _table(tracker.uri or "", tracker.run_id or "", "evaluation/test/cases.json")
    assert list(table["case"]) == ["c"] and list(table.columns) == ["case", "dice"]


def test_sweep_parent_tables_its_children_best_first_and_shows_their_cases(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/outputs/mlflow.db"
    with sqlite_tracked_run(tmp_path, run_name="sweep") as parent:
        pass
    cases = [encode_case("a", *synthetic_case(1, slices=2, size=32))]
    for k, objective in enumerate([0.5, 0.9, 0.7]):
        with sqlite_tracked_run(tmp_path, run_name=f"lr={k}", parent_run_id=parent.run_id) as child:
            child.log_params({"training.learning_rate": str(k), "model.num_params": "1234", "seed": "1"})
            child.log_metrics({"best/val_dice_fg_mean": objective, "test/dice/square": objective / 2}, step=0)
            page = viewer_page(cases, {"a": scores(objective, None)}, CLASSES, default_palette(3), title="x")
            (tmp_path / VIEWER_FILE).write_text(page)
            child.log_artifact(tmp_path / VIEWER_FILE, CHILD_VIEWER.rpartition("/")[0])
    assert parent.run_id is not None
    assert log_case_comparison(parent.run_id, uri)
    close_parent(parent.run_id, uri, "val_dice_fg_mean", "max")
    table = _table(uri, parent.run_id, CHILDREN_TABLE)
    assert list(table["run"]) == ["lr=1", "lr=2", "lr=0"]  # one row per child, best first
    assert list(map(str, table["training/learning_rate"])) == ["1", "2", "0"]  # pandas reads "1" back as 1
    assert "seed" not in table.columns  # the same in every child
    assert list(table["best/val_dice_fg_mean"]) == pytest.approx([0.9, 0.7, 0.5])
    assert list(table["test/dice/square"]) == pytest.approx([0.45, 0.35, 0.25])
    assert list(table["model/num_params"]) == [1234] * 3 and (table["wall_time_s"] >= 0).all()
    artifacts = [a.path for a in mlflow.MlflowClient().list_artifacts(parent.run_id, "sweep")]
    assert sorted(artifacts) == ["sweep/case_comparison.html", CHILDREN_TABLE]
