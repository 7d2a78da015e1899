"""Postprocessing chosen on validation: the rules on hand-made label stacks, the choice, its file, and its use
by segexp-evaluate and segexp-infer."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from segexp.core.errors import ConfigError, EvaluationError
from segexp.evaluation.postprocess import (
    FILE_NAME,
    ClassRule,
    Postprocessing,
    Rule,
    apply_rule,
    candidates,
    check_postprocess_mode,
    determine,
    for_run,
)
from segexp.evaluation.prediction import infer
from segexp.evaluation.reports import evaluate_run
from segexp.tracking.runs import open_run

from .conftest import TINY_DATASET_OVERRIDES, compose_config
from .test_evaluate_infer import TINY_CLASS_INTENSITIES, make_run, oracle_model

NAMES = ["background", "a", "b"]


def stack_with(blobs: dict[int, list[tuple[int, int, int, int]]], shape=(3, 10, 10)) -> np.ndarray:
    """A label stack with boxes ``(slice, row, col, side)`` per class."""
    out = np.zeros(shape, np.uint8)
    for k, boxes in blobs.items():
        for s, r, c, side in boxes:
            out[s, r : r + side, c : c + side] = k
    return out


def test_min_volume_drops_a_class_only_from_cases_where_it_is_small() -> None:
    small = stack_with({1: [(0, 0, 0, 2)], 2: [(1, 5, 5, 3)]})  # class 1: 4 voxels, class 2: 9
    out = small.copy()
    apply_rule(out, 1, ClassRule(Rule.min_volume, 5))
    assert not (out == 1).any() and (out == 2).sum() == 9
    out = small.copy()
    apply_rule(out, 1, ClassRule(Rule.min_volume, 4))  # 4 is not < 4: kept
    assert (out == 1).sum() == 4


def test_min_size_and_largest_act_on_3d_components() -> None:
    # class 1: a 2x2 box on slice 0 and 1 (one 3D component of 8), and a lone 1x1 on slice 2
    labels = stack_with({1: [(0, 0, 0, 2), (1, 0, 0, 2), (2, 8, 8, 1)]})
    out = labels.copy()
    apply_rule(out, 1, ClassRule(Rule.min_size, 2))
    assert (out == 1).sum() == 8 and out[2, 8, 8] == 0
    labels[2, 5:8, 5:8] = 1  # a second component of 9 (> 8): the largest
    out = labels.copy()
    apply_rule(out, 1, ClassRule(Rule.largest))
    assert (out == 1).sum() == 9 and out[0, 0, 0] == 0
    diagonal = np.zeros((2, 3, 3), np.uint8)
    diagonal[0, 0, 0] = diagonal[1, 1, 1] = 1  # touching at a corner only: two components (face connectivity)
    apply_rule(diagonal, 1, ClassRule(Rule.min_size, 2))
    assert not diagonal.any()


def test_candidates_are_fractions_of_the_median_volume() -> None:
    truths = [stack_with({1: [(0, 0, 0, 10)]}), stack_with({1: [(0, 0, 0, 5)]}), np.zeros((3, 10, 10), np.uint8)]
    # volumes 100 and 25 where present: median 62.5 -> 1 %, 3 %, 10 %: 2 (at least), 2, 6
    assert candidates(truths, 1) == [ClassRule(Rule.min_volume, 2), ClassRule(Rule.min_volume, 6)]
    assert candidates(truths, 2) == []


def test_determine_keeps_a_rule_only_where_it_raises_validation_dice() -> None:
    truth_a = stack_with({1: [(0, 0, 0, 6)], 2: [(1, 2, 2, 6)]})  # a: 36 voxels, b: 36
    no_a = stack_with({2: [(1, 2, 2, 6)]})
    cases = [
        (truth_a, truth_a.copy()),  # perfect
        (no_a, stack_with({1: [(2, 0, 0, 1)], 2: [(1, 2, 2, 6)]})),  # one stray voxel of a where there is none
    ]
    chosen = determine(cases, NAMES)
    assert chosen.rules["a"].rule is Rule.min_volume and chosen.rules["a"].min_voxels == 4  # 10 % of 36, rounded
    assert chosen.validation["a"]["dice_before"] == pytest.approx(0.5) and chosen.validation["a"]["dice_after"] == 1.0
    # already perfect: nothing raises it, and the weakest candidate (1 % of 36 -> 2 voxels) costs nothing
    assert chosen.rules["b"] == ClassRule(Rule.min_volume, 2) and chosen.validation["b"]["dice_after"] == 1.0
    fixed = chosen.apply(cases[1][1])
    assert not (fixed == 1).any() and (fixed == 2).sum() == 36

    # a small true structure: removing it would lower the Dice, so no rule
    tiny_truth = stack_with({1: [(0, 0, 0, 1)], 2: [(1, 2, 2, 6)]})
    kept = determine([(truth_a, truth_a.copy()), (tiny_truth, tiny_truth.copy())], NAMES)
    assert kept.rules["a"].rule is Rule.none and list(kept.active) == ["b"]

    absent = determine([(no_a, no_a.copy())], NAMES)
    assert absent.rules["a"].rule is Rule.none and absent.validation["a"]["why"] == "absent from every validation case"
    with pytest.raises(EvaluationError, match="no cases"):
        determine([], NAMES)


def test_the_rules_file_round_trips_and_bad_files_are_named(tmp_path: Path) -> None:
    post = Postprocessing(NAMES, {"a": ClassRule(Rule.min_volume, 7), "b": ClassRule()})
    path = post.save(tmp_path / FILE_NAME)
    again = Postprocessing.load(path)
    assert again.rules == post.rules and list(again.active) == ["a"]
    (tmp_path / "bad.json").write_text(json.dumps({"class_names": NAMES, "rules": {"c": {"rule": "none"}}}))
    with pytest.raises(EvaluationError, match=r"bad.json: rules for unknown classes \['c'\]"):
        Postprocessing.load(tmp_path / "bad.json")
    (tmp_path / "bad.json").write_text(json.dumps({"class_names": NAMES, "rules": {"a": {"rule": "erode"}}}))
    with pytest.raises(EvaluationError, match="bad.json: not a segexp postprocessing file"):
        Postprocessing.load(tmp_path / "bad.json")
    with pytest.raises(EvaluationError, match=r"postprocess: expected one of \['auto', 'none'\], got 'yes'"):
        check_postprocess_mode("yes")


def test_training_postprocess_is_checked_before_training() -> None:
    from segexp.config.schema import validate_train_config

    with pytest.raises(ConfigError, match=r"training.postprocess: expected one of \['auto', 'none'\], got 'always'"):
        validate_train_config(
            compose_config([*TINY_DATASET_OVERRIDES, "dataset.root=/nonexistent", "training.postprocess=always"])
        )


def _stray_rules_run(tiny_dataset: Path, tmp_path: Path) -> Path:
    """An oracle run whose rules drop every "disc" prediction under 1000 pixels in a case (all of them)."""
    run = make_run(
        tmp_path / "run",
        oracle_model(TINY_CLASS_INTENSITIES),
        [*TINY_DATASET_OVERRIDES, f"dataset.root={tiny_dataset}", "tracking.enabled=false"],
    )
    Postprocessing(["background", "square", "disc"], {"disc": ClassRule(Rule.min_volume, 1000)}).save(run / FILE_NAME)
    return run


def test_evaluate_applies_the_runs_rules_unless_told_not_to(tiny_dataset: Path, tmp_path: Path) -> None:
    run = _stray_rules_run(tiny_dataset, tmp_path)
    raw = evaluate_run(open_run(str(run)), tmp_path / "raw", log_to_run=False, postprocess="none")
    post = evaluate_run(open_run(str(run)), tmp_path / "post", log_to_run=False)
    assert raw["mean"]["per_class"]["disc"]["dice"]["mean"] == pytest.approx(1.0) and raw["postprocessing"] is None
    assert post["mean"]["per_class"]["disc"]["dice"]["mean"] == 0.0  # the disc is present in truth, removed
    assert post["postprocessing"] == {"disc": "drop it from a case where it is predicted in < 1000 voxels"}
    assert post["mean"]["per_class"]["square"]["dice"]["mean"] == pytest.approx(1.0)


def test_infer_applies_the_rules_per_case_of_the_file_names(tiny_dataset: Path, tmp_path: Path) -> None:
    run = _stray_rules_run(tiny_dataset, tmp_path)
    # two cases: case2 (2 slices, > 50 disc pixels together) and a lone slice renamed as its own case
    Postprocessing(["background", "square", "disc"], {"disc": ClassRule(Rule.min_volume, 60)}).save(run / FILE_NAME)
    source = tiny_dataset / "test" / "images"
    lone = tmp_path / "inputs"
    lone.mkdir()
    for p in source.iterdir():
        (lone / p.name).write_bytes(p.read_bytes())
    (lone / "single_000.png").write_bytes((source / "case2_000.png").read_bytes())
    assert not infer(open_run(str(run)), lone, tmp_path / "out")
    discs = {
        p.stem: int((cv2.imread(str(p), cv2.IMREAD_UNCHANGED) == 2).sum())
        for p in (tmp_path / "out" / "masks").iterdir()
    }
    assert discs["single_000"] == 0  # its own case: one disc of < 60 pixels, dropped
    assert 30 <= discs["case2_000"] < 60 and discs["case2_001"] > 0  # the same slice kept: case2 has >= 60 together
    assert not infer(open_run(str(run)), lone, tmp_path / "raw", postprocess="none")
    raw = int((cv2.imread(str(tmp_path / "raw" / "masks" / "single_000.png"), cv2.IMREAD_UNCHANGED) == 2).sum())
    assert raw == discs["case2_000"]
    assert for_run(open_run(str(run)), "none") is None
