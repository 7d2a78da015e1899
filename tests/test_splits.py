"""Tests for patient-level splits and k-fold cross-validation (segexp.data.io.splits)."""

from __future__ import annotations

import pytest

from segexp.data.io.splits import DEFAULT_RATIOS, SplitError, fold_table, split_cases

CASES = [f"p{i:02d}" for i in range(20)]
RATIOS = {"train": 0.7, "valid": 0.15, "test": 0.15}


def _check_partition(result: dict[str, list[str]], cases: list[str]) -> None:
    assert list(result) == ["train", "valid", "test"]
    every = [c for split in result.values() for c in split]
    assert sorted(every) == sorted(cases)  # every case exactly once
    for split in result.values():
        assert split == sorted(split)


# --------------------------------------------------------------------------- ratios


@pytest.mark.parametrize(
    ("n", "ratios", "expected"),
    [
        (20, RATIOS, {"train": 14, "valid": 3, "test": 3}),
        (10, RATIOS, {"train": 7, "valid": 2, "test": 1}),  # 7 + 1.5 + 1.5: the tie goes to valid
        (12, {"train": 0.5, "valid": 0.25, "test": 0.25}, {"train": 6, "valid": 3, "test": 3}),
        (7, {"train": 1 / 3, "valid": 1 / 3, "test": 1 / 3}, {"train": 3, "valid": 2, "test": 2}),
        (5, {"train": 0.8, "test": 0.2}, {"train": 4, "valid": 0, "test": 1}),
        (3, RATIOS, {"train": 1, "valid": 1, "test": 1}),  # every positive split gets a case
        (4, {"train": 0.9, "valid": 0.05, "test": 0.05}, {"train": 2, "valid": 1, "test": 1}),
        (6, {"train": 1.0}, {"train": 6, "valid": 0, "test": 0}),
    ],
)
def test_ratio_counts(n: int, ratios: dict[str, float], expected: dict[str, int]) -> None:
    cases = CASES[:n]
    result = split_cases(cases, ratios=ratios, seed=0)
    _check_partition(result, cases)
    assert {k: len(v) for k, v in result.items()} == expected


def test_ratio_deterministic_and_order_independent() -> None:
    a = split_cases(CASES, ratios=RATIOS, seed=3)
    assert split_cases(list(reversed(CASES)), ratios=dict(RATIOS), seed=3) == a
    assert split_cases(tuple(CASES), ratios=RATIOS, seed=3) == a


def test_ratio_seed_changes_assignment() -> None:
    results = [split_cases(CASES, ratios=RATIOS, seed=s) for s in range(4)]
    assert all(r != results[0] for r in results[1:])
    assert len({tuple(r["test"]) for r in results}) > 1


def test_default_ratios() -> None:
    assert split_cases(CASES, seed=1) == split_cases(CASES, ratios=DEFAULT_RATIOS, seed=1)


@pytest.mark.parametrize(
    "ratios",
    [
        {"train": 0.7, "valid": 0.2, "test": 0.2},
        {"train": 0.5, "valid": 0.1},
        {"train": 1.2, "valid": -0.2},
        {"train": 0.7, "val": 0.3},
        {"train": "most", "test": 0.3},
    ],
)
def test_bad_ratios_name_the_key(ratios: dict[str, object]) -> None:
    with pytest.raises(SplitError, match=r"split\.ratios"):
        split_cases(CASES, ratios=ratios)  # type: ignore[arg-type]


def test_ratio_sum_error_shows_values() -> None:
    with pytest.raises(SplitError, match=r"split\.ratios.*0\.2.*sum 1\.1"):
        split_cases(CASES, ratios={"train": 0.7, "valid": 0.2, "test": 0.2})


def test_ratio_tolerance() -> None:
    split_cases(CASES, ratios={"train": 0.7, "valid": 0.15, "test": 0.15 + 5e-7})


def test_too_few_cases() -> None:
    with pytest.raises(SplitError, match="at least 3 cases"):
        split_cases(CASES[:2], ratios=RATIOS)


def test_bad_inputs() -> None:
    with pytest.raises(SplitError, match="unique"):
        split_cases(["a", "b", "a"], ratios=RATIOS)
    with pytest.raises(SplitError, match=r"split\.seed"):
        split_cases(CASES, ratios=RATIOS, seed=-1)
    with pytest.raises(SplitError, match=r"split\.ratios and split\.cases"):
        split_cases(CASES, ratios=RATIOS, explicit={"train": CASES})
    assert issubclass(SplitError, ValueError)


# --------------------------------------------------------------------------- explicit


def test_explicit() -> None:
    result = split_cases(["d", "c", "b", "a"], explicit={"train": ["b", "a"], "valid": ["c"], "test": ["d"]})
    assert result == {"train": ["a", "b"], "valid": ["c"], "test": ["d"]}
    # Missing or null splits are empty.
    assert split_cases(["a", "b"], explicit={"train": ["a", "b"], "test": None}) == {
        "train": ["a", "b"],
        "valid": [],
        "test": [],
    }


def test_explicit_unknown_cases() -> None:
    with pytest.raises(SplitError, match=r"split\.cases: unknown case\(s\) x, y"):
        split_cases(["a", "b"], explicit={"train": ["a", "x"], "valid": ["b", "y"]})


def test_explicit_case_in_two_splits() -> None:
    with pytest.raises(SplitError, match=r"split\.cases: case 'b' is in both train and test"):
        split_cases(["a", "b"], explicit={"train": ["a", "b"], "test": ["b"]})
    with pytest.raises(SplitError, match=r"split\.cases\.train: case 'a' is listed twice"):
        split_cases(["a", "b"], explicit={"train": ["a", "a", "b"]})


def test_explicit_unlisted_cases() -> None:
    with pytest.raises(SplitError, match=r"split\.cases: case\(s\) not in any split: b, d"):
        split_cases(["a", "b", "c", "d"], explicit={"train": ["a"], "test": ["c"]})


def test_explicit_bad_shapes() -> None:
    with pytest.raises(SplitError, match=r"split\.cases: unknown split"):
        split_cases(["a"], explicit={"training": ["a"]})
    with pytest.raises(SplitError, match=r"split\.cases\.train: expected a list"):
        split_cases(["a"], explicit={"train": "a"})


# --------------------------------------------------------------------------- k-fold


@pytest.mark.parametrize("n", [20, 23, 9])
def test_kfold_validation_sets_partition_non_test(n: int) -> None:
    cases = [f"c{i:03d}" for i in range(n)]
    runs = [split_cases(cases, ratios=RATIOS, seed=7, folds=5, fold=k) for k in range(5)]
    for run in runs:
        _check_partition(run, cases)
    test = runs[0]["test"]
    assert test and all(run["test"] == test for run in runs)  # test identical across folds
    # ... and identical to the plain ratio split with the same seed.
    assert split_cases(cases, ratios=RATIOS, seed=7)["test"] == test
    non_test = sorted(set(cases) - set(test))
    valids = [run["valid"] for run in runs]
    assert sorted(c for v in valids for c in v) == non_test  # every non-test case validated once
    sizes = [len(v) for v in valids]
    assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1
    for run in runs:
        assert sorted(run["train"] + run["valid"]) == non_test


def test_kfold_stable_and_seeded() -> None:
    a = [split_cases(CASES, ratios=RATIOS, seed=1, folds=4, fold=k) for k in range(4)]
    b = [split_cases(list(reversed(CASES)), ratios=RATIOS, seed=1, folds=4, fold=k) for k in range(4)]
    assert a == b
    c = [split_cases(CASES, ratios=RATIOS, seed=2, folds=4, fold=k) for k in range(4)]
    assert a != c


def test_kfold_with_explicit_test() -> None:
    test = ["p00", "p05"]
    runs = [split_cases(CASES, explicit={"test": test}, folds=3, fold=k) for k in range(3)]
    assert all(run["test"] == test for run in runs)
    assert sorted(c for run in runs for c in run["valid"]) == sorted(set(CASES) - set(test))
    # train/valid lists of a shared preset are checked but the folds decide.
    listed = {"train": CASES[2:5] + CASES[6:], "valid": ["p01"], "test": ["p00", "p05"]}
    assert split_cases(CASES, explicit=listed, folds=3, fold=0) == runs[0]
    with pytest.raises(SplitError, match=r"split\.cases: unknown"):
        split_cases(CASES, explicit={"test": ["nobody"]}, folds=3, fold=0)


def test_fold_table() -> None:
    table = fold_table(CASES, folds=5, seed=7, test=["p03"])
    assert "p03" not in table and len(table) == 19
    assert sorted(set(table.values())) == [0, 1, 2, 3, 4]
    sizes = sorted(list(table.values()).count(f) for f in range(5))
    assert sizes == [3, 4, 4, 4, 4]
    assert list(table) == sorted(table)
    for k in range(5):
        run = split_cases(CASES, explicit={"test": ["p03"]}, seed=7, folds=5, fold=k)
        assert run["valid"] == sorted(c for c, f in table.items() if f == k)


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"fold": 0}, r"split\.fold:"),
        ({"folds": 5}, r"split\.fold:"),
        ({"folds": 5, "fold": 5}, r"split\.fold:.*0\.\.4"),
        ({"folds": 5, "fold": -1}, r"split\.fold:"),
        ({"folds": 1, "fold": 0}, r"split\.folds:"),
        ({"folds": 25, "fold": 0}, r"split\.folds:"),
    ],
)
def test_kfold_errors_name_the_key(kwargs: dict[str, int], key: str) -> None:
    with pytest.raises(SplitError, match=key):
        split_cases(CASES, ratios=RATIOS, **kwargs)


def test_kfold_needs_enough_non_test_cases() -> None:
    with pytest.raises(SplitError, match=r"split\.folds: 5 folds need at least 5 cases"):
        split_cases(CASES[:6], ratios={"train": 0.5, "test": 0.5}, folds=5, fold=0)
    with pytest.raises(SplitError, match=r"split\.folds"):
        fold_table(CASES[:4], folds=5, seed=0)
