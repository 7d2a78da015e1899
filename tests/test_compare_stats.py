"""``segexp-compare --stats A B``: paired per-case statistics of two systems (runs, sweeps, CV parents)."""

from __future__ import annotations

import json
import logging
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import wilcoxon

from segexp.cli.compare import main
from segexp.evaluation.paired import FOREGROUND, compare_seeds, run_means, seed_spread
from segexp.evaluation.statistics import (
    N_TOO_SMALL,
    NO_DIFFERENCE,
    bootstrap_ci,
    mean_sd,
    paired_comparison,
    wilcoxon_p,
)

from .conftest import REPO_DIR, sqlite_tracked_run

CASES = [f"case{i:02d}" for i in range(12)]
CLASSES = ["disc", "ring"]


# -- the statistics, on synthetic arrays


def test_wilcoxon_p_is_scipys_and_small_or_equal_samples_give_no_p_value() -> None:
    rng = np.random.default_rng(3)
    d = rng.normal(0.05, 0.1, size=20)
    assert wilcoxon_p(d) == (pytest.approx(wilcoxon(d).pvalue), "")
    assert wilcoxon_p([0.1, 0.2, -0.1, 0.3, 0.2]) == (None, N_TOO_SMALL)
    assert wilcoxon_p(np.zeros(10)) == (None, NO_DIFFERENCE)


def test_bootstrap_ci_covers_the_true_mean_difference_and_is_seeded() -> None:
    rng = np.random.default_rng(0)
    a = rng.uniform(0.6, 0.8, size=60)
    b = a + 0.05 + rng.normal(0, 0.02, size=60)  # true mean difference 0.05
    low, high = bootstrap_ci(b - a, n_resamples=2000, seed=1)
    assert low < 0.05 < high and high - low < 0.02
    assert bootstrap_ci(b - a, n_resamples=2000, seed=1) == (low, high)  # same seed, same interval
    assert bootstrap_ci(b - a, n_resamples=2000, seed=2) != (low, high)
    assert all(math.isnan(v) for v in bootstrap_ci([0.1]))
    assert bootstrap_ci([0.2, 0.2, 0.2]) == (0.2, 0.2)


def test_paired_comparison_and_mean_sd() -> None:
    result = paired_comparison([0.5, 0.6, 0.7], [0.6, 0.6, 0.9], n_resamples=500)
    assert (result.n, result.note, result.p_value) == (3, N_TOO_SMALL, None)
    assert result.mean_diff == pytest.approx(0.1) and result.mean_b == pytest.approx(0.7)
    assert result.ci_low <= result.mean_diff <= result.ci_high
    with pytest.raises(ValueError, match="different lengths"):
        paired_comparison([0.1, 0.2], [0.3])
    with pytest.raises(ValueError, match="NaN"):
        paired_comparison([0.1, math.nan], [0.3, 0.2])
    mean, sd = mean_sd([0.7, 0.8, 0.9])
    assert mean == pytest.approx(0.8) and sd == pytest.approx(0.1)  # ddof=1
    assert math.isnan(mean_sd([0.5])[1])


def test_run_means_and_the_spread_over_seeds() -> None:
    run = {("c1", "disc"): 0.5, ("c2", "disc"): 0.7, ("c1", "ring"): 0.9, ("c2", "ring"): math.nan}
    # disc (0.5 + 0.7) / 2, ring 0.9 (c2 undefined), foreground the mean of the class means
    assert run_means(run) == pytest.approx({"disc": 0.6, "ring": 0.9, FOREGROUND: 0.75})
    assert run_means({("c1", "disc"): math.nan}) == {}
    other = {("c1", "disc"): 0.7, ("c2", "disc"): 0.9, ("c1", "ring"): math.nan, ("c2", "ring"): math.nan}
    spread = seed_spread([run, other], ["disc", "ring", FOREGROUND, "absent"])
    assert spread["disc"] == pytest.approx({"mean": 0.7, "sd": math.sqrt(0.02), "seeds": 2})  # 0.6, 0.8
    assert spread["ring"]["seeds"] == 1 and math.isnan(spread["ring"]["sd"])  # the other seed never scored it
    assert spread[FOREGROUND]["mean"] == pytest.approx((0.75 + 0.8) / 2) and "absent" not in spread


def _seeded(shift: float, seed: int, cases: list[str] = CASES[:4]) -> dict[tuple[str, str], float]:
    return {(c, k): v for (c, k), v in _system(shift, seed, cases).items() if v is not None}


def test_compare_seeds_pairs_seed_and_case_and_spreads_each_side_over_seeds() -> None:
    a = [_seeded(0.0, 1), _seeded(0.0, 2), _seeded(0.0, 3)]
    b = [_seeded(0.05 + 0.01 * s, 10 + s) for s in range(3)]  # B: +0.05, +0.06, +0.07 over seeds 0, 1, 2
    b[1][("case00", "ring")] = math.nan  # undefined on one side: that pair left out, counted as A's alone
    rows = {r["class"]: r for r in compare_seeds(a, b, n_resamples=1000)}
    assert list(rows) == ["disc", "ring", FOREGROUND]
    disc, ring, fg = rows["disc"], rows["ring"], rows[FOREGROUND]
    assert disc["n"] == 12 and ring["n"] == 11 and fg["n"] == 12  # 4 cases x 3 seeds
    assert (ring["only_a"], ring["only_b"], disc["only_a"], fg["only_a"], fg["only_b"]) == (1, 0, 0, 1, 0)
    assert disc["seeds"] == 3 and disc["mean_diff"] == pytest.approx(0.06, abs=0.01)
    assert disc["ci_low"] < disc["mean_diff"] < disc["ci_high"] and disc["p_value"] < 0.01
    assert disc["b"]["sd"] == pytest.approx(0.01, abs=0.005) and disc["a"]["sd"] < 0.01
    assert fg["b"]["mean"] == pytest.approx(np.mean([run_means(s)[FOREGROUND] for s in b]))
    assert fg["a"]["sd"] == pytest.approx(np.std([run_means(s)[FOREGROUND] for s in a], ddof=1))
    # seed i of A against seed i of B: a shift in one seed moves the difference of that seed only
    one = compare_seeds(a[:1], b[:1], n_resamples=200)[-1]
    assert one["n"] == 4 and one["note"] == N_TOO_SMALL and math.isnan(one["a"]["sd"])
    assert one["mean_diff"] == pytest.approx(0.05, abs=0.01)


def test_compare_seeds_refuses_unmatched_seeds_or_cases() -> None:
    with pytest.raises(ValueError, match="as many seeds"):
        compare_seeds([_seeded(0, 1)], [_seeded(0, 1), _seeded(0, 2)])
    with pytest.raises(ValueError, match="seed 1: the sides scored different"):
        compare_seeds([_seeded(0, 1), _seeded(0, 2)], [_seeded(0, 1), _seeded(0, 2, CASES[1:5])])
    only_nan = [{("c1", "disc"): math.nan}]
    assert compare_seeds(only_nan, only_nan) == [
        {
            "class": "disc",
            "n": 0,
            "note": "no case with a defined score on both sides",
            "a": {"mean": pytest.approx(math.nan, nan_ok=True), "sd": pytest.approx(math.nan, nan_ok=True)},
            "b": {"mean": pytest.approx(math.nan, nan_ok=True), "sd": pytest.approx(math.nan, nan_ok=True)},
            "only_a": 0,
            "only_b": 0,
            "seeds": 1,
        }
    ]


# -- end to end, on per-case tables logged to MLflow runs


def _cases_table(scores: dict[tuple[str, str], float | None]) -> dict[str, list]:
    keys = sorted(scores)
    return {"case": [c for c, _ in keys], "class": [k for _, k in keys], "dice": [scores[k] for k in keys]}


def _system(shift: float, noise_seed: int, cases: list[str] = CASES) -> dict[tuple[str, str], float | None]:
    rng = np.random.default_rng(noise_seed)
    return {
        (case, cls): float(np.clip(0.6 + 0.02 * i + shift + rng.normal(0, 0.01), 0, 1))
        for i, case in enumerate(cases)
        for cls in CLASSES
    }


def _log_run(
    root: Path, name: str, scores: dict, params: dict[str, str], parent: str | None = None, split: str = "test"
) -> str:
    with sqlite_tracked_run(root, run_name=name, parent_run_id=parent) as tracker:
        tracker.log_params(params)
        tracker.log_table(_cases_table(scores), f"evaluation/{split}/cases.json")
    assert tracker.run_id is not None
    return tracker.run_id


def _uri(root: Path) -> str:
    return f"sqlite:///{root}/outputs/mlflow.db"


def test_two_runs_compared_through_the_cli(tmp_path: Path) -> None:
    a_scores = _system(0.0, 1)
    a_scores[("case00", "ring")] = None  # a class absent from truth and prediction: Dice undefined
    a = _log_run(tmp_path, "a", a_scores, {"model.name": "resunet"})
    b = _log_run(tmp_path, "b", _system(0.05, 2), {"model.name": "flexunet"})
    out = tmp_path / "stats.json"
    done = subprocess.run(
        [sys.executable, "-m", "segexp.cli.compare", "--tracking-uri", _uri(tmp_path)]
        + ["--stats", a, b, "--bootstrap", "2000", "--json", str(out)],
        cwd=REPO_DIR,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert f"A: {a}" in text and "dice on split 'test', 12 cases paired" in text
    lines = {line.split("  ")[0]: line for line in text.splitlines()}
    assert lines["disc"].split()[1] == "12" and lines["ring"].split()[1] == "11"
    assert "foreground mean" in text and "1 (case, class) pairs left out" in text
    report = json.loads(out.read_text())
    rows = {r["class"]: r for r in report["rows"]}
    assert set(rows) == {"disc", "ring", "foreground mean"}
    fg = rows["foreground mean"]
    assert fg["n"] == 12 and fg["ci_low"] < 0.05 < fg["ci_high"] and fg["p_value"] < 0.01
    assert rows["disc"]["mean_diff"] == pytest.approx(0.05, abs=0.01) and report["seeds"] == {}
    # case00's ring: undefined on A (absent, not predicted), scored on B (a false alarm): out of the pairs, counted
    assert [(rows[k]["only_a"], rows[k]["only_b"]) for k in ("disc", "ring", "foreground mean")] == [
        (0, 0),
        (0, 1),
        (0, 1),
    ]
    assert lines["ring"].rstrip().endswith("0 / 1") and "one side only A / B: (case, class) pairs" in text


def test_a_seeds_sweep_pools_its_children_and_shows_the_spread_over_seeds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    baseline = _log_run(tmp_path, "baseline", _system(0.0, 1), {"model.name": "resunet", "seed": "0"})
    with sqlite_tracked_run(tmp_path, run_name="sweep: seed ∈ {0, 1, 2}") as parent:
        pass
    assert parent.run_id is not None
    for seed in range(3):
        scores = _system(0.02 * seed, 10 + seed)
        _log_run(tmp_path, f"seed={seed}", scores, {"model.name": "flexunet", "seed": str(seed)}, parent.run_id)
    out = tmp_path / "stats.json"
    main(["--tracking-uri", _uri(tmp_path), "--stats", baseline, parent.run_id, "--bootstrap", "500"])
    main(["--tracking-uri", _uri(tmp_path), "--stats", baseline, parent.run_id, "--json", str(out)])
    text = capsys.readouterr().out
    assert f"B: {parent.run_id} (3 runs pooled)" in text
    assert "B: mean ± sd (ddof=1) over 3 seeds" in text and "A: mean ± sd" not in text
    report = json.loads(out.read_text())
    disc = report["seeds"]["B"]["disc"]
    assert disc["seeds"] == 3 and disc["sd"] == pytest.approx(0.02, abs=0.005)
    child_fg = [run_means(_seeded(0.02 * seed, 10 + seed, CASES))[FOREGROUND] for seed in range(3)]
    fg = report["seeds"]["B"][FOREGROUND]
    assert fg["seeds"] == 3 and fg["mean"] == pytest.approx(np.mean(child_fg))
    assert fg["sd"] == pytest.approx(np.std(child_fg, ddof=1))
    assert set(report["seeds"]["B"]) == {"disc", "ring", FOREGROUND}
    rows = {r["class"]: r for r in report["rows"]}
    assert rows["disc"]["mean_diff"] == pytest.approx(0.02, abs=0.01)  # the mean over seeds per case


def test_unshared_cases_are_refused_or_with_intersect_left_out(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    a = _log_run(tmp_path, "a", _system(0.0, 1), {})
    b = _log_run(tmp_path, "b", _system(0.0, 2, CASES[2:] + ["extra"]), {})
    c = _log_run(tmp_path, "c", _system(0.0, 3, ["other"]), {})
    args = ["--tracking-uri", _uri(tmp_path), "--bootstrap", "200", "--stats"]
    with caplog.at_level(logging.ERROR), pytest.raises(SystemExit) as exit_:
        main([*args, a, b])
    assert exit_.value.code == 2
    assert "not scored on the same cases" in caplog.text
    assert "only A" in caplog.text and "cases case00, case01" in caplog.text and "only B" in caplog.text
    assert "extra" in caplog.text and "--intersect" in caplog.text
    main([*args, a, b, "--intersect"])
    text = capsys.readouterr().out
    assert "10 cases paired" in text and "compared on the shared cases only" in text
    caplog.clear()
    with caplog.at_level(logging.ERROR), pytest.raises(SystemExit):
        main([*args, a, c, "--intersect"])
    assert "share no (case, class)" in caplog.text and "B has cases other" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.ERROR), pytest.raises(SystemExit):
        main([*args, a, b, "--split", "valid"])
    assert "no per-case scores of split 'valid'" in caplog.text


def test_a_run_folder_without_mlflow_reads_its_evaluation_csv(tmp_path: Path) -> None:
    from segexp.tracking.cases import open_system

    run = tmp_path / "run"
    (run / "evaluation").mkdir(parents=True)
    (run / "evaluation" / "summary.json").write_text(json.dumps({"split": "test"}))
    (run / "evaluation" / "evaluation.csv").write_text("case,class,dice,iou\nc1,disc,0.5,0.3\nc1,ring,,\n")
    system = open_system(str(run), "test", "dice", _uri(tmp_path))
    assert system.kind == "run" and system.runs[0].scores[("c1", "disc")] == 0.5
    assert math.isnan(system.pooled()[("c1", "ring")])


def _cv_parent(root: Path, name: str, shift: float, noise_seed: int) -> str:
    """A CV parent (tag ``segexp.kind=cv``) of 3 folds: fold ``f`` scored ``CASES[4f:4f+4]`` as its valid split
    and two test cases shared by every fold."""
    with sqlite_tracked_run(root, run_name=name, tags={"segexp.kind": "cv"}) as parent:
        pass
    assert parent.run_id is not None
    for fold in range(3):
        held_out = _system(shift, noise_seed + fold, CASES[4 * fold : 4 * fold + 4])
        params = {"model.name": name, "dataset.fold": str(fold)}
        with sqlite_tracked_run(root, run_name=f"fold={fold}", parent_run_id=parent.run_id) as child:
            child.log_params(params)
            child.log_table(_cases_table(held_out), "evaluation/valid/cases.json")
            test = _system(shift + 0.1, 50 + noise_seed + fold, ["test0", "test1"])
            child.log_table(_cases_table(test), "evaluation/test/cases.json")
    return parent.run_id


def test_a_cv_parent_is_compared_on_its_folds_held_out_cases(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    a = _cv_parent(tmp_path, "resunet", 0.0, 1)
    b = _cv_parent(tmp_path, "flexunet", 0.03, 20)
    out = tmp_path / "stats.json"
    args = ["--tracking-uri", _uri(tmp_path), "--bootstrap", "500", "--json", str(out), "--stats"]
    main([*args, a, b])  # no --split: each CV parent on valid, its 12 cross-validated cases
    text = capsys.readouterr().out
    assert f"A: {a} (3 folds pooled, cross-validation)" in text and "dice on split 'valid', 12 cases paired" in text
    report = json.loads(out.read_text())
    assert report["a"]["kind"] == report["b"]["kind"] == "cv" and report["a"]["split"] == "valid"
    assert report["seeds"] == {}  # folds are no seeds
    fg = {r["class"]: r for r in report["rows"]}[FOREGROUND]
    assert fg["n"] == 12 and fg["mean_diff"] == pytest.approx(0.03, abs=0.01)
    main([*args, a, b, "--split", "test"])  # --split given wins: the test cases, each the mean over the folds
    assert "dice on split 'test', 2 cases paired" in capsys.readouterr().out
    assert json.loads(out.read_text())["b"]["split"] == "test"
    # a run beside a CV parent: the run on test, the parent on valid (here the run's test cases are the same)
    run = _log_run(tmp_path, "external", _system(0.0, 99), {"model.name": "other"})
    main([*args, a, run])
    assert "dice on splits valid (A), test (B), 12 cases paired" in capsys.readouterr().out
    alone = _log_run(tmp_path, "alone", _system(0.0, 98, ["x"]), {})
    with caplog.at_level(logging.ERROR), pytest.raises(SystemExit):
        main([*args, a, alone])
    assert f"A ({a}, split 'valid') and B ({alone}, split 'test') share no (case, class)" in caplog.text


def test_default_split() -> None:
    from segexp.tracking.cases import default_split

    assert default_split(None, {"segexp.kind": "cv"}) == "valid"
    assert default_split(None, {"segexp.kind": "sweep"}) == default_split(None, {}) == "test"
    assert default_split("test", {"segexp.kind": "cv"}) == "test"  # --split given wins
