"""Cross-validation (segexp-cv): folds by patient, held-out scores with intervals, CV postprocessing, resume."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import cv2
import mlflow
import numpy as np
import pytest
from omegaconf import OmegaConf

from segexp.cli.cv import cv_arguments
from segexp.config.schema import validate_train_config
from segexp.core.errors import ConfigError, DataError
from segexp.data.io.rgb_map import encode_rgb_mask
from segexp.data.runtime.dataset import list_split_pairs
from segexp.data.runtime.folds import assign_folds, with_fold
from segexp.evaluation.crossval import (
    FOLD_FILE,
    HeldOutCase,
    choose_postprocessing,
    read_held_out,
    save_held_out,
    summarise,
    summary_metrics,
)
from segexp.evaluation.postprocess import Rule
from segexp.launch.crossval import fold_runs

from .conftest import TINY_COLOURS, TINY_DATASET_OVERRIDES, compose_config, tiny_pair


def _write_cases(folder: Path, cases: dict[str, int], seed: int = 0) -> None:
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    for case, n in cases.items():
        for i in range(n):
            image, mask = tiny_pair(seed)
            seed += 1
            cv2.imwrite(str(folder / "images" / f"{case}_{i}.png"), image)
            cv2.imwrite(str(folder / "masks" / f"{case}_{i}.png"), encode_rgb_mask(mask, TINY_COLOURS)[..., ::-1])


@pytest.fixture
def flat_folder(tmp_path: Path) -> Path:
    _write_cases(tmp_path / "flat", {f"p{k}": 2 for k in range(5)})
    return tmp_path / "flat"


@pytest.fixture
def split_folders(tmp_path: Path) -> Path:
    root = tmp_path / "splits"
    _write_cases(root / "train", {"a": 2, "b": 2, "c": 2})
    _write_cases(root / "valid", {"d": 2}, seed=10)
    _write_cases(root / "test", {"e": 2}, seed=20)
    return root


def _dataset(root: Path, *extra: str):
    return compose_config([*TINY_DATASET_OVERRIDES, f"dataset.root={root}", *extra]).dataset


def test_flat_folder_folds_validate_every_case_once_and_keep_test_cases_out(flat_folder: Path) -> None:
    d = _dataset(flat_folder)
    splits = [assign_folds(d, 4, k, 0, ["p4"]).cases() for k in range(4)]
    valid = sorted(c for s in splits for c in s["valid"])
    assert valid == ["p0", "p1", "p2", "p3"]  # each pooled case validated by exactly one fold
    for s in splits:
        assert s["test"] == ["p4"] and not set(s["train"]) & set(s["valid"]) and "p4" not in s["train"]
    assert assign_folds(d, 4, 1, 0, ["p4"]).table == assign_folds(d, 4, 3, 0, ["p4"]).table  # one partition
    assert assign_folds(d, 5, 0, 0, []).table != assign_folds(d, 5, 0, 1, []).table  # cv.seed moves cases


def test_split_folders_pool_train_and_valid_and_read_the_fold_from_both(split_folders: Path) -> None:
    d = _dataset(split_folders)
    section, folds = with_fold(d, {"folds": 2, "fold": 0, "seed": 0, "test_cases": []})
    assert folds.layout == "splits" and sorted(folds.table) == ["a", "b", "c", "d"]
    pairs = list_split_pairs(section)
    seen = {split: sorted({p.case for p in ps}) for split, ps in pairs.items()}
    assert seen["test"] == ["e"]
    assert sorted(seen["train"] + seen["valid"]) == ["a", "b", "c", "d"]
    # the cases are read from whichever split folder holds them
    where = {p.case: p.image.parent.parent.name for ps in pairs.values() for p in ps}
    assert where["d"] == "valid" and where["a"] == "train" and where["e"] == "test"


def test_fold_errors_name_the_key(flat_folder: Path, split_folders: Path) -> None:
    with pytest.raises(DataError, match="cv.folds: .*6 folds need at least 6 cases"):
        assign_folds(_dataset(flat_folder), 6, 0, 0, [])
    with pytest.raises(DataError, match="cv.test_cases: unknown case"):
        assign_folds(_dataset(flat_folder), 2, 0, 0, ["nobody"])
    with pytest.raises(DataError, match="cv.test_cases: .*one folder per split"):
        assign_folds(_dataset(split_folders), 2, 0, 0, ["a"])
    with pytest.raises(ConfigError, match=r"cv.fold: expected an integer in 0..2"):
        validate_train_config(compose_config(["cv.folds=3", "cv.fold=3"]))
    with pytest.raises(ConfigError, match="cv.fold: 1 given without cv.folds"):
        validate_train_config(compose_config(["cv.fold=1"]))


def _case(name: str, fold: int, truth: np.ndarray, pred: np.ndarray) -> HeldOutCase:
    return HeldOutCase(name, fold, truth.astype(np.uint8), pred.astype(np.uint8), None)


def _square(size: int = 16, at: tuple[int, int] = (4, 4), side: int = 6) -> np.ndarray:
    stack = np.zeros((2, size, size), np.uint8)
    stack[:, at[0] : at[0] + side, at[1] : at[1] + side] = 1
    return stack


def test_summary_pools_held_out_cases_with_intervals_and_names_missing_folds() -> None:
    truth = _square()
    half = truth.copy()
    half[:, :, 4:7] = 0  # Dice 2*36/(72+36) = 0.667 per slice stack
    cases = [_case("a", 0, truth, truth), _case("b", 1, truth, half), _case("c", 1, truth, truth)]
    summary = summarise(cases, ["background", "square"], {1: 1.0}, 3, {2: "failed: boom"}, None)
    dice = [r["metrics"]["square"]["dice"] for r in summary["metric_per_case"]]
    assert dice == pytest.approx([1.0, 2 / 3, 1.0])
    stats = summary["statistics"]["square"]["dice"]
    assert stats["mean"] == pytest.approx(np.mean(dice)) and stats["n"] == 3
    assert stats["std"] == pytest.approx(np.std(dice, ddof=1))
    low, high = stats["ci95"]
    assert min(dice) <= low <= stats["mean"] <= high <= max(dice)
    assert summary["folds_missing"] == [{"fold": 2, "why": "failed: boom"}] and summary["complete"] is False
    assert summary["folds_used"] == [0, 1] and [r["fold"] for r in summary["metric_per_case"]] == [0, 1, 1]
    metrics = summary_metrics(summary)
    assert metrics["cv/dice/square"] == pytest.approx(np.mean(dice))
    assert metrics["cv/dice_ci_low/square"] == pytest.approx(low)
    json.dumps(summary, allow_nan=False)


def test_cv_postprocessing_keeps_a_rule_only_where_it_raises_the_cross_validated_dice() -> None:
    truth = _square()
    stray = truth.copy()
    stray[:, 14, 14] = 1  # a stray component: "keep the largest" or "drop small components" raise the Dice
    clean = [_case(f"c{k}", k, truth, truth) for k in range(3)]
    chosen = choose_postprocessing([*clean, _case("s", 3, truth, stray)], ["background", "square"])
    assert chosen.rules["square"].rule in (Rule.largest, Rule.min_size, Rule.min_volume)
    assert chosen.validation["square"]["dice_after"] > chosen.validation["square"]["dice_before"]
    nothing_to_gain = choose_postprocessing(clean, ["background", "square"])
    assert nothing_to_gain.rules["square"].rule is Rule.none  # a harmless rule is not kept on CV cases


def test_held_out_cases_round_trip(tmp_path: Path) -> None:
    truth, pred = _square(), _square(at=(5, 5))
    save_held_out(tmp_path, "x", truth, pred, (2.0, 0.5, 0.5))
    (case,) = read_held_out(tmp_path, 3)
    assert case.case == "x" and case.fold == 3 and case.spacing == (2.0, 0.5, 0.5)
    assert np.array_equal(case.truth, truth) and np.array_equal(case.pred, pred)


def test_cv_arguments_make_one_sweep_and_resume_repeats_it(tmp_path: Path) -> None:
    args = cv_arguments(["cv.folds=3", "dataset=hvsmr_mini"])
    assert args[:3] == ["-m", "cv.folds=3", "cv.fold=range(0,3)"] and "dataset=hvsmr_mini" in args
    assert any(a.startswith("hydra.sweep.dir=") and "/cv/" in a for a in args)
    assert "hydra.sweep.subdir=fold_${cv.fold}" in args
    assert "cv.folds=5" in cv_arguments(["dataset=hvsmr_mini"])  # nnU-Net's default
    with pytest.raises(ConfigError, match="segexp-cv sets cv.fold=1 itself"):
        cv_arguments(["cv.fold=1"])
    with pytest.raises(ConfigError, match="training.early_stopping"):
        cv_arguments(["training.early_stopping.patience=3"])
    folder = tmp_path / "cv"
    folder.mkdir()
    with pytest.raises(ConfigError, match="not a segexp-cv folder"):
        cv_arguments([f"resume={folder}"])
    record = {"hydra": {"overrides": {"task": ["cv.folds=3", "cv.fold=range(0,3)", "seed=1", "training.resume=x"]}}}
    OmegaConf.save(OmegaConf.create(record), folder / "multirun.yaml")
    resumed = cv_arguments([f"resume={folder}"])
    assert resumed[:3] == ["-m", "cv.folds=3", "seed=1"]
    assert "training.resume=auto" in resumed and f"hydra.sweep.dir={folder.resolve()}" in resumed
    assert "training.resume=x" not in resumed and resumed.count("cv.fold=range(0,3)") == 1


def _cv(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    tiny = [o for o in TINY_DATASET_OVERRIDES if not o.startswith(("training.epochs", "training.steps"))]
    cmd = [sys.executable, "-m", "segexp.cli.cv", *args]
    if not any(a.startswith("resume=") for a in args):
        cmd += [
            f"paths.root={tmp_path}",
            *tiny,
            "plan=none",
            "training.epochs=1",
            "training.steps_per_epoch=1",
            "training.epoch_images.num=1",
            "tracking.log_model=false",
            "tracking.system_metrics=false",
        ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def test_segexp_cv_summarises_folds_on_the_parent_and_resume_trains_only_missing_folds(
    tmp_path: Path, flat_folder: Path
) -> None:
    result = _cv(tmp_path, "cv.folds=2", f"dataset.root={flat_folder}", "cv.test_cases=[p4]")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (sweep,) = (tmp_path / "outputs" / "cv").glob("*/*")
    summary = json.loads((sweep / "cv_summary.json").read_text())
    assert sorted(r["case"] for r in summary["metric_per_case"]) == ["p0", "p1", "p2", "p3"]
    assert summary["complete"] and summary["folds_used"] == [0, 1]
    index = json.loads((sweep / "cv.json").read_text())
    assert [r["status"] for r in index["fold_runs"]] == ["finished", "finished"]
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/outputs/mlflow.db")
    parent = mlflow.get_run(index["parent_run_id"])
    assert parent.data.tags["segexp.kind"] == "cv" and parent.data.tags["cv.missing_folds"] == "none"
    assert parent.info.run_name.startswith("cv: 2 folds")
    dice = summary["statistics"]["square"]["dice"]
    assert parent.data.metrics["cv/dice/square"] == pytest.approx(dice["mean"])
    # the folds are one system on different cases: no "best fold" on the parent, no champion
    assert parent.info.status == "FINISHED" and "best_child_run_id" not in parent.data.tags
    assert not any(m.startswith("best/") for m in parent.data.metrics)
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(parent.info.run_id)}
    assert {"cv_summary.json", "cv"} <= artifacts
    kids = mlflow.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
        output_format="list",
    )
    assert sorted(k.info.run_name for k in kids) == ["cv.fold=0", "cv.fold=1"]
    assert all("valid/dice_fg_mean" in k.data.metrics for k in kids)

    # fold 1 lost its record (as if killed before the end): the resume trains fold 1 only, under the same parent
    (sweep / "fold_1" / FOLD_FILE).unlink()
    before = (sweep / "fold_0" / "history.csv").stat().st_mtime
    resumed = _cv(tmp_path, f"resume={sweep}")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "fold 0 finished earlier" in resumed.stdout + resumed.stderr
    assert (sweep / "fold_0" / "history.csv").stat().st_mtime == before
    assert (sweep / "fold_1" / FOLD_FILE).is_file()
    assert json.loads((sweep / "mlflow_parent.json").read_text())["run_id"] == parent.info.run_id
    assert [r.status for r in fold_runs(sweep, 2)] == ["finished", "finished"]
    again = json.loads((sweep / "cv_summary.json").read_text())
    assert math.isclose(again["statistics"]["square"]["dice"]["mean"], dice["mean"], abs_tol=0.05)


def _complete(sweep: Path, folds: int) -> dict:
    summary = json.loads((sweep / "cv_summary.json").read_text())
    assert summary["complete"] and summary["folds_used"] == list(range(folds))
    return summary


def test_segexp_cv_runs_the_folds_in_parallel_with_joblib(tmp_path: Path, flat_folder: Path) -> None:
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    result = _cv(tmp_path, "cv.folds=2", f"dataset.root={flat_folder}", "launcher=joblib")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (sweep,) = (tmp_path / "outputs" / "cv").glob("*/*")
    summary = _complete(sweep, 2)
    assert sorted(r["case"] for r in summary["metric_per_case"]) == [f"p{k}" for k in range(5)]


def test_the_plan_keeps_the_folds_cases(tmp_path: Path, flat_folder: Path) -> None:
    """The plan composes the config anew from the command line: the fold's cases must survive it."""
    from hydra import initialize_config_dir

    from segexp.config.schema import CONF_DIR
    from segexp.planning.apply import planned_run_config
    from segexp.planning.plan import compose_train

    overrides = [*TINY_DATASET_OVERRIDES, f"dataset.root={flat_folder}", f"paths.root={tmp_path}", "cv.folds=5"]
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        for fold in (1, 3):
            line = [*overrides, f"cv.fold={fold}"]
            planned, _ = planned_run_config(compose_train(line), line, tmp_path / f"run{fold}")
            assert planned.plan.enabled and dict(planned.dataset.cases)["valid"] == [
                assign_folds(planned.dataset, 5, fold, 0, []).cases()["valid"][0]
            ]
            assert len(planned.dataset.cases["train"]) == 4
