"""scripts/accuracy.py and scripts/monai_loop.py: the pixel export, scoring MONAI's predictions with segexp's
scorer, the MONAI environment, the verdict, the thorax slabs, tiny end-to-end runs (slow, with the environment)."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from segexp.config.schema import REPO_DIR
from segexp.data.io.slices import split_pairs
from segexp.data.runtime.dataset import leaked_cases

from .conftest import SHARED_DATA, TINY_DATASET_OVERRIDES, write_tiny_dataset

SCRIPTS = REPO_DIR / "scripts"
HVSMR_MINI = SHARED_DATA / "hvsmr_mini"
MONAI_VENV = REPO_DIR / "outputs" / "venvs" / "monai"
sys.path.insert(0, str(SCRIPTS))  # the scripts import each other (bench) as scripts do

import accuracy  # noqa: E402
import monai_loop  # noqa: E402  (numpy only at import: torch and monai are imported where they are used)

needs_venv = pytest.mark.skipif(
    not (MONAI_VENV / "bin" / "python").is_file(), reason=f"{MONAI_VENV} is absent (scripts/accuracy.py builds it)"
)


def _tiny_overrides(root: Path) -> list[str]:
    return [*TINY_DATASET_OVERRIDES, f"dataset.root={root}", f"paths.root={root.parent}", "seed=7"]


def test_export_writes_segexps_pixels_for_monai(tmp_path: Path) -> None:
    from segexp.data.io.slices import load_pair

    root = write_tiny_dataset(tmp_path / "tiny", {"train": 5, "valid": 3, "test": 2})
    pixels = accuracy.export_pixels(_tiny_overrides(root), "test", tmp_path / "in.npz")
    with np.load(pixels.path) as data:
        arrays = {k: data[k] for k in data.files}
    assert arrays["train_images"].shape == (5, 32, 32, 1) and arrays["train_images"].dtype == np.uint8
    assert arrays["train_masks"].shape == (5, 32, 32) and arrays["train_masks"].dtype == np.uint8
    assert arrays["valid_images"].shape == (3, 32, 32, 1) and list(arrays["valid_cases"]) == ["case1"] * 3
    assert arrays["score_images"].shape == (2, 32, 32, 1) and list(arrays["score_cases"]) == ["case2"] * 2
    assert int(arrays["num_classes"]) == 3 and int(arrays["seed"]) == 7
    assert set(np.unique(arrays["train_masks"])) == {0, 1, 2}
    first = pixels.dataset.pairs["train"][0]  # segexp's own reader, same pixels
    image, mask = load_pair(first, pixels.dataset.decoder, 1, 32, 32)
    np.testing.assert_array_equal(arrays["train_images"][0], image)
    np.testing.assert_array_equal(arrays["train_masks"][0], mask)
    inputs = monai_loop.load_inputs(pixels.path)  # the MONAI side accepts it
    assert inputs.num_classes == 3 and inputs.seed == 7 and inputs.valid.cases == ["case1"] * 3


def test_given_predictions_are_scored_by_evaluate_split(tmp_path: Path) -> None:
    root = write_tiny_dataset(tmp_path / "tiny", {"train": 2, "valid": 2, "test": 3})
    pixels = accuracy.export_pixels(_tiny_overrides(root), "test", tmp_path / "in.npz")
    with np.load(pixels.path) as data:
        truth = data["score_masks"]
    perfect = accuracy.score_predictions(pixels, truth, tmp_path / "perfect")
    assert perfect["mean"]["foreground_mean"]["dice"] == 1.0 and perfect["num_slices"] == 3
    assert (tmp_path / "perfect" / "summary.json").is_file()
    assert set(perfect) == set(json.loads((tmp_path / "perfect" / "summary.json").read_text()))
    no_disc = np.where(truth == 2, 0, truth).astype(np.uint8)  # the disc missed everywhere
    scored = accuracy.score_predictions(pixels, no_disc, tmp_path / "no_disc")["mean"]["per_class"]
    assert scored["square"]["dice"]["mean"] == 1.0 and scored["disc"]["dice"]["mean"] == 0.0
    row = accuracy._summary_row(json.loads((tmp_path / "no_disc" / "summary.json").read_text()))
    assert row["foreground_dice"] == pytest.approx(0.5) and row["num_cases"] == 1
    assert row["per_case"] == {"case2": {"square": 1.0, "disc": 0.0}}  # what the paired comparison pairs
    assert accuracy.case_scores(row) == {("case2", "square"): 1.0, ("case2", "disc"): 0.0}


def test_fixed_predictions_stand_in_for_a_model() -> None:
    images = np.arange(3 * 4 * 4, dtype=np.uint8).reshape(3, 4, 4, 1) + 1  # no all-black image
    preds = np.random.default_rng(0).integers(0, 3, (3, 4, 4)).astype(np.uint8)
    model = accuracy.FixedPredictions(images, preds, 3)
    assert model.input_shape == (None, 4, 4, 1) and model.output_shape == (None, 4, 4, 3)
    batch = np.concatenate([images[[2, 0]], np.zeros((1, 4, 4, 1), np.uint8)])  # any order, black padding
    out = model.predict_on_batch(batch)
    np.testing.assert_array_equal(out[:2].argmax(-1), preds[[2, 0]])
    assert out.dtype == np.float32 and not out[2].any()
    with pytest.raises(KeyError):
        model.predict_on_batch(images[:1] + 100)


def test_venv_commands_and_reuse(tmp_path: Path, monkeypatch) -> None:
    venv = tmp_path / "venv"
    cmds = accuracy.venv_commands(venv, "torch==2.0.0+cpu", python="/usr/bin/python3")
    assert cmds == [
        ["/usr/bin/python3", "-m", "venv", str(venv)],
        [str(venv / "bin" / "python"), "-m", "pip", "install", "torch==2.0.0+cpu", "monai>=1.4,<1.7", "numpy"],
    ]
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    assert accuracy.torch_requirement([wheels], "cp311") == "torch"
    for name in (
        "torch-2.9.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl",
        "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl",
        "torch-2.14.0+cpu-cp312-cp312-manylinux_2_28_x86_64.whl",
    ):
        (wheels / name).touch()
    assert accuracy.torch_requirement([wheels], "cp311") == "torch==2.13.0+cpu"  # newest for this Python
    monkeypatch.setattr(accuracy, "venv_ready", lambda v: True)
    monkeypatch.setattr(accuracy, "venv_commands", lambda *a: pytest.fail("a working environment is rebuilt"))
    assert accuracy.ensure_monai_venv(venv) == venv.resolve() / "bin" / "python"


def test_venv_build_failure_names_the_path(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(accuracy, "venv_ready", lambda v: False)
    monkeypatch.setattr(accuracy, "find_links", lambda: [])
    monkeypatch.setattr(accuracy, "venv_commands", lambda venv, torch: [[sys.executable, "-c", "raise SystemExit(3)"]])
    with pytest.raises(SystemExit, match=f"{tmp_path / 'venv'}: could not build the MONAI environment.*exited with 3"):
        accuracy.ensure_monai_venv(tmp_path / "venv")


def test_monai_command() -> None:
    cmd = accuracy.monai_command(Path("/v/bin/python"), Path("/w/in.npz"), Path("/w/out"), seconds=12.34567, threads=2)
    assert cmd == [
        "/v/bin/python",
        str(SCRIPTS / "monai_loop.py"),
        "--data",
        "/w/in.npz",
        "--out",
        "/w/out",
        "--seconds",
        "12.346",
        "--threads",
        "2",
    ]
    assert accuracy.monai_command(Path("p"), Path("d"), Path("o"), steps=160)[-2:] == ["--steps", "160"]


def test_monai_loop_imports_no_segexp_or_tensorflow() -> None:
    source = (SCRIPTS / "monai_loop.py").read_text()
    assert not any(f"import {m}" in source or f"from {m}" in source for m in ("segexp", "tensorflow", "keras", "bench"))


def test_foreground_dice_per_case_skips_absent_classes() -> None:
    truth = np.zeros((2, 4, 4), np.uint8)
    truth[0, :2] = 1
    pred = truth.copy()
    pred[1, 0, 0] = 2  # class 2 predicted in case b only, absent from the truth: Dice 0 there
    assert monai_loop.foreground_dice(truth, pred, ["a", "b"], 3) == pytest.approx(0.5)  # (1.0 + 0.0) / 2
    assert monai_loop.foreground_dice(truth, truth, ["a", "a"], 3) == 1.0  # class 2 absent: left out


def test_flips_move_image_and_mask_alike() -> None:
    images = np.random.default_rng(0).integers(0, 256, (16, 5, 6, 1), dtype=np.uint8)
    masks = images[..., 0] // 128
    flipped, fmasks = monai_loop.random_flips(images, masks, np.random.default_rng(1))
    np.testing.assert_array_equal(fmasks, flipped[..., 0] // 128)
    assert 0 < sum(not np.array_equal(a, b) for a, b in zip(images, flipped)) < 16


@pytest.mark.parametrize("n", [1, 3, 5, 7, 23, 89, 164])
def test_slabs_are_contiguous_and_disjoint(n: int) -> None:
    slices = list(np.random.default_rng(n).choice(400, size=n, replace=False))
    slabs = accuracy.slab_splits(slices, slab_slices=4)
    ordered = sorted(int(s) for s in slices)
    assert [i for _, _, slab in slabs for i in slab] == ordered  # each slice once, slabs in order, nothing skipped
    assert [k for k, _, _ in slabs] == list(range(len(slabs)))
    assert all(slab for _, _, slab in slabs)
    assert max(len(s) for _, _, s in slabs) - min(len(s) for _, _, s in slabs) <= 1
    assert [split for _, split, _ in slabs] == [accuracy.SLAB_PATTERN[k % 5] for k in range(len(slabs))]
    if n >= 5:
        assert {split for _, split, _ in slabs} == {"train", "valid", "test"}


def test_slab_folder_is_split_by_slab_without_leaks(tmp_path: Path) -> None:
    prepared = tmp_path / "prepared"
    for sub in ("images", "masks"):
        (prepared / "train" / sub).mkdir(parents=True)
        for index in range(10, 50):
            suffix = ".npy" if sub == "images" and index % 2 else ".png"  # 2.5D context of 5 slices: .npy
            (prepared / "train" / sub / f"case_x_{index:03d}{suffix}").write_bytes(b"slice")
    (prepared / "dataset.json").write_text('{"storage": {"channels": 5, "context_slices": 2}}')
    cases = accuracy.build_slab_folder(prepared, "case_x", tmp_path / "slabs", slab_slices=4)
    assert (tmp_path / "slabs" / "dataset.json").read_text() == (prepared / "dataset.json").read_text()
    assert set(cases) == {"train", "valid", "test"} and all(cases.values())
    pairs = {
        split: split_pairs(
            tmp_path / "slabs",
            split,
            layout="flat",
            splits={},
            cases=cases,
            case_pattern=r"^(?P<case>.+)_(?P<slice>\d+)$",
        )
        for split in cases
    }
    assert leaked_cases(pairs) == []
    names = [p.name for split in pairs.values() for p in split]
    assert len(names) == len(set(names)) == 40
    assert all(n.startswith("case_x-slab") for n in names)
    slice_of = {split: sorted(int(p.name.rsplit("_", 1)[1]) for p in ps) for split, ps in pairs.items()}
    assert sorted(sum(slice_of.values(), [])) == list(range(10, 50))
    for split, ids in cases.items():  # every slab: consecutive slices
        for slab in ids:
            got = sorted(int(p.name.rsplit("_", 1)[1]) for p in pairs[split] if p.case == slab)
            assert got == list(range(got[0], got[0] + len(got)))
    assert (tmp_path / "slabs" / "images" / f"{cases['train'][0]}_010.png").resolve() == (
        prepared / "train" / "images" / "case_x_010.png"
    ).resolve()


@pytest.mark.skipif(not HVSMR_MINI.is_dir(), reason="../shared/data/hvsmr_mini is absent")
def test_hvsmr_mini_split_scores_every_structure_in_valid_and_test() -> None:
    from segexp.config.schema import validate_train_config
    from segexp.data.runtime.dataset import open_dataset

    from .conftest import compose_config

    cfg = validate_train_config(compose_config(["experiment=hvsmr_mini"]))
    assert cfg.model.num_classes == 9
    dataset = open_dataset(cfg.dataset, cfg.model.num_classes)
    assert {s: len(p) for s, p in dataset.pairs.items()} == {"train": 23, "valid": 7, "test": 6}
    for split in ("valid", "test"):
        present = set().union(*(np.unique(dataset.decoder(p.mask)).tolist() for p in dataset.pairs[split]))
        assert present == set(range(9)), split


def test_segexp_time_is_its_keras_epochs() -> None:
    lines = [
        "[2026-11-30][segexp.training.loop][INFO] - model resunet: 1 parameters, fp32 compute",
        "Epoch 1/2",
        "20/20 - 50s - 2s/step - loss: 1.0",
        "Epoch 2/2",
        "20/20 - 37s - 2s/step - loss: 0.9",
    ]
    assert accuracy.keras_epochs(lines) == [(20, 50.0), (20, 37.0)]
    assert accuracy.keras_epochs(lines[:2]) == []


def _row(system: str, per_case: dict[str, dict[str, float | None]], matched: str | None = None) -> dict:
    """A row as run_segexp / run_monai give it, from its per-case Dice (the means as evaluate_split takes them)."""
    classes = list(next(iter(per_case.values())))
    scored = {c: [d[c] for d in per_case.values() if d[c] is not None] for c in classes}
    dice = {c: float(np.mean(v)) if v else None for c, v in scored.items()}
    defined = [v for v in dice.values() if v is not None]
    return {
        "system": system,
        "matched": matched,
        "foreground_dice": float(np.mean(defined)) if defined else None,
        "dice": dice,
        "n": {c: len(v) for c, v in scored.items()},
        "num_cases": len(per_case),
        "per_case": per_case,
    }


def _cases(a: Sequence[float], b: Sequence[float | None]) -> dict[str, dict[str, float | None]]:
    return {f"c{i}": {"a": x, "b": y} for i, (x, y) in enumerate(zip(a, b))}


SEG_CASES = [0.70, 0.72, 0.68, 0.75]


def test_case_scores_and_seed_pairs() -> None:
    row = _row("segexp (plan)", _cases([0.5, 0.6], [None, 0.2]))
    scores = accuracy.case_scores(row)
    assert scores[("c0", "a")] == 0.5 and np.isnan(scores[("c0", "b")]) and len(scores) == 4
    seg, at_time = row, _row("MONAI (PyTorch)", _cases([0.4, 0.6], [0.1, 0.2]), "time")
    assert accuracy.seed_pairs([[seg, at_time], [seg, at_time]], "time") == ([seg, seg], [at_time, at_time])
    assert accuracy.seed_pairs([[seg, at_time], [seg]], "time") is None  # seed 1 lacks MONAI
    assert accuracy.seed_pairs([[seg, at_time]], "steps") is None and accuracy.seed_pairs([[at_time]], "time") is None


def test_paired_stats_pair_segexp_and_monai_per_case_and_seed() -> None:
    seeds = []
    for seed in range(3):  # segexp ahead on structure a by 0.05 (+0.01 a seed), both equal on b
        seg = _row("segexp (plan)", _cases([v + 0.01 * seed for v in SEG_CASES], [0.5, 0.6, None, 0.4]))
        peer = _row("MONAI (PyTorch)", _cases([v - 0.05 for v in SEG_CASES], [0.5, 0.6, 0.0, 0.4]), "time")
        seeds.append([seg, peer])
    stats = accuracy.paired_stats(seeds, "time")
    assert stats is not None and [r["class"] for r in stats] == ["a", "b", "foreground mean"]
    a, b, fg = stats
    assert a["n"] == 12 and b["n"] == 9 and fg["n"] == 12  # 4 cases x 3 seeds; b absent from c2
    # b absent from c2's truth: segexp leaves it empty, MONAI predicts it (Dice 0) -> not a pair, a false alarm
    assert (b["only_a"], b["only_b"], a["only_a"], fg["only_a"], fg["only_b"]) == (3, 0, 0, 3, 0)
    assert a["mean_diff"] == pytest.approx(0.06)  # differences 0.05, 0.06, 0.07 over the seeds
    assert 0.05 < a["ci_low"] < 0.06 < a["ci_high"] < 0.07 and a["p_value"] < 0.01
    assert b["note"] == "no difference" and b["p_value"] is None
    assert a["b"]["mean"] == pytest.approx(np.mean(SEG_CASES) + 0.01) and a["b"]["sd"] == pytest.approx(0.01)
    assert a["a"]["sd"] == pytest.approx(0.0) and a["seeds"] == 3  # segexp is "b", MONAI "a": d = segexp - MONAI
    seg_fg = [r[0]["foreground_dice"] for r in seeds]
    assert fg["b"]["mean"] == pytest.approx(np.mean(seg_fg)) and fg["b"]["sd"] == pytest.approx(np.std(seg_fg, ddof=1))
    assert accuracy.paired_stats(seeds, "steps") is None


def _stats(seg: Sequence[float], peer: Sequence[float], seeds: int = 1) -> list[dict]:
    runs = [
        [
            _row("segexp (plan)", _cases(seg, [0.3] * len(seg))),
            _row("MONAI (PyTorch)", _cases(peer, [0.3] * len(peer)), "time"),
        ]
        for _ in range(seeds)
    ]
    stats = accuracy.paired_stats(runs, "time")
    assert stats is not None
    return stats


def test_paired_verdict_states_the_mean_difference_its_ci_and_p() -> None:
    ahead = _stats([0.70, 0.72, 0.68], [0.60, 0.64, 0.63], seeds=2)  # a: +0.10, +0.08, +0.05 -> fg half of it
    text = accuracy.paired_verdict(ahead)
    assert re.fullmatch(
        r"segexp ≥ MONAI: mean difference \+0\.038 \[\+0\.0\d\d, \+0\.0\d\d\], p = 0\.0\d+ over 6 case×seed pairs "
        r"\(CI above 0\)",
        text,
    )
    mixed = accuracy.paired_verdict(_stats([0.70, 0.60, 0.65], [0.60, 0.70, 0.66]))
    assert mixed.startswith("segexp < MONAI: mean difference −0.002 [−0.05") and "CI includes 0" in mixed
    assert "no p-value (n too small) over 3 case×seed pairs" in mixed
    one = accuracy.paired_verdict(_stats([0.7], [0.6]))
    assert "+0.050 –, no p-value (n too small) over 1 case×seed pair (no CI)" in one


def test_target_verdict_is_on_the_paired_difference_against_monais_run() -> None:
    seg = _row("segexp (plan)", _cases([0.7, 0.72], [0.5, 0.6]))
    at_time = _row("MONAI (PyTorch)", _cases([0.6, 0.62], [0.5, 0.6]), "time")
    at_steps = _row("MONAI (PyTorch)", _cases([0.8, 0.82], [0.5, 0.6]), "steps")
    runs = [[seg, at_time, at_steps]]
    time_stats, step_stats = accuracy.paired_stats(runs, "time"), accuracy.paired_stats(runs, "steps")
    met = accuracy.target_verdict(runs[0], "time", time_stats)
    assert met.startswith("target met — segexp ≥ MONAI: mean difference +0.050")
    steps = accuracy.target_verdict(runs[0], "steps", step_stats)
    assert steps.startswith("target NOT met: foreground Dice below MONAI's by 0.050 on average — segexp < MONAI")
    blind = _row("segexp (plan)", _cases([0.9, 0.9], [0.0, 0.0]))  # ahead on average, but b at 0
    weak = _row("MONAI (PyTorch)", _cases([0.4, 0.4], [0.1, 0.1]), "time")
    missed = accuracy.target_verdict([blind, weak], "time", accuracy.paired_stats([[blind, weak]], "time"))
    assert missed.startswith("target NOT met: at 0 where MONAI finds them: b — segexp ≥ MONAI")
    assert "one system only" in accuracy.target_verdict([at_time])
    assert "no MONAI run at segexp's steps" in accuracy.target_verdict([seg, at_time], "steps", None)


def test_paired_table_and_section() -> None:
    stats = _stats([0.70, 0.72, 0.68], [0.60, 0.64, 0.63], seeds=2)
    stats.insert(1, {"class": "c", "n": 0, "note": "no case with a defined score on both sides", "seeds": 2,
                     "a": {"mean": float("nan"), "sd": float("nan")}, "b": {"mean": 0.0, "sd": 0.0}})  # fmt: skip
    lines = accuracy.paired_table(stats).splitlines()
    assert lines[0] == (
        "| structure | pairs | segexp, mean ± sd over 2 seeds | MONAI, mean ± sd over 2 seeds | segexp − MONAI "
        "| 95% CI | p (Wilcoxon) | false alarms: segexp / MONAI |"
    )
    assert re.fullmatch(
        r"\| a \| 6 \| 0\.700 ± 0\.000 \| 0\.623 ± 0\.000 \| \+0\.077 \| \[\+0\.0\d\d, \+0\.\d+\] \| 0\.0\d+ "
        r"\| 0 / 0 \|",
        lines[2],
    )
    assert lines[3] == "| c | 0 | 0.000 ± 0.000 | – | – | – | no case with a defined score on both sides | 0 / 0 |"
    assert lines[4] == "| b | 6 | 0.300 ± 0.000 | 0.300 ± 0.000 | +0.000 | [+0.000, +0.000] | no difference | 0 / 0 |"
    assert lines[5].startswith("| foreground mean | 6 | ")
    one = accuracy.paired_table(_stats([0.7], [0.6]))
    assert "| segexp | MONAI |" in one and "| a | 1 | 0.700 | 0.600 | +0.100 | – | n too small | 0 / 0 |" in one
    section = "\n".join(accuracy.paired_section({"time": stats, "steps": None}))
    assert section.startswith("Paired, segexp − MONAI: Dice on the same (case, seed) pairs")
    assert "At equal wall time:\n\n| structure |" in section and "equal steps" not in section
    assert accuracy.paired_section({"time": None, "steps": None}) == []
    data = json.loads(accuracy.paired_json({"time": stats, "steps": None}))
    assert data["steps"] is None and data["time"][1]["a"]["mean"] is None and data["a"] == "MONAI (PyTorch)"


def _fake_runs(
    monkeypatch, tmp_path: Path, fg_of=lambda system, overrides: 0.7 if system.startswith("segexp") else 0.6
):
    """run_segexp / run_monai / export / the environment replaced; returns the MONAI calls (matched, seconds, steps)."""
    calls = []

    def row(system: str, overrides: list[str], seconds: float, steps: int, **extra) -> dict:
        seed = next((int(o[5:]) for o in overrides if o.startswith("seed=")), 0)
        fg = fg_of(system, overrides)
        spread = (-0.03, 0.0, 0.03) if system.startswith("segexp") else (-0.01, 0.0, 0.01)
        return {
            "system": system,
            "epochs": 2 + seed,
            "steps": steps + seed,
            "train_seconds": seconds - 5 + seed,
            "process_seconds": seconds + seed,
            "foreground_dice": fg,
            "dice": {"LV": fg, "RV": None if seed == 0 else 0.2},
            "n": {"LV": 3, "RV": 0 if seed == 0 else 3},
            "num_cases": 3,
            "per_case": {f"p{i}": {"LV": fg + d, "RV": None if seed == 0 else 0.2} for i, d in enumerate(spread)},
            **extra,
        }

    def run_monai(pixels, args, work, *, matched, budget, seconds=None, steps=None):
        calls.append((matched, seconds, steps))
        return row(
            "MONAI (PyTorch)",
            pixels,
            seconds or 50.0,
            steps or 9,
            matched=matched,
            budget=budget,
            num_params=1_625_000,
            versions={"torch": "2.x", "monai": "1.y"},
        )

    monkeypatch.setattr(accuracy, "SHARED", tmp_path / "shared")
    (tmp_path / "shared" / "hvsmr_mini").mkdir(parents=True)  # hocmvalves_mini is absent: skipped
    monkeypatch.setattr(accuracy, "ensure_monai_venv", lambda venv: Path("/venv/bin/python"))
    monkeypatch.setattr(accuracy, "export_pixels", lambda overrides, split, path, run_config=None: list(overrides))
    monkeypatch.setattr(
        accuracy,
        "run_segexp",
        lambda ds, overrides, args, work: row(
            "segexp (plan)", overrides, 47.0, 6, matched=None, budget="training.max_time=4"
        ),
    )
    monkeypatch.setattr(accuracy, "run_monai", run_monai)
    return calls


def test_main_gives_monai_segexps_process_time_and_steps_and_rewrites_blocks(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    calls = _fake_runs(monkeypatch, tmp_path)
    doc = tmp_path / "ACCURACY.md"
    argv = ["--datasets", "hvsmr_mini", "hocmvalves_mini", "--out", str(tmp_path / "out"), "--markdown", str(doc)]
    assert accuracy.main([*argv, "--minutes", "3", "--side-by-side"]) == 0
    assert calls == [("time", 180.0, None), ("steps", None, 6)]  # side by side: the same budget, then segexp's steps
    calls.clear()
    assert accuracy.main(argv) == 0
    assert calls == [("time", 47.0, None), ("steps", None, 6)]  # default: segexp's whole process time, its steps
    assert "skipping hocmvalves_mini" in capsys.readouterr().out
    text = doc.read_text()
    assert text.startswith(accuracy.HEADER) and "accuracy:hocmvalves_mini" not in text
    assert "| segexp (plan) | training.max_time=4 | 2 | 6 | 47 s | 0.700 | 0.700 | – |" in text
    assert "| MONAI (PyTorch) | segexp's wall time | 2 | 9 | 47 s | 0.600 | 0.600 | – |" in text
    assert "| MONAI (PyTorch) | segexp's steps | 2 | 6 | 50 s | 0.600 | 0.600 | – |" in text
    verdict = "mean difference +0.100 [+0.080, +0.120], no p-value (n too small) over 3 case×seed pairs"
    assert f"**Equal wall time: target met — segexp ≥ MONAI: {verdict} (CI above 0).** " in text
    assert f"Equal steps: target met — segexp ≥ MONAI: {verdict} (CI above 0)." in text
    assert text.count("Paired, segexp − MONAI: ") == 1 and "At equal wall time:" in text and "At equal steps:" in text
    assert "| LV | 3 | 0.700 | 0.600 | +0.100 | [+0.080, +0.120] | n too small |" in text
    assert "| RV | 0 | – | – | – | – | no case with a defined score on both sides |" in text
    assert "the `segexp-train` process from start to exit" in text and "PyTorch 2.x, MONAI 1.y" in text
    assert accuracy.main(argv) == 0  # a rerun replaces the block
    assert doc.read_text().count("<!-- accuracy:hvsmr_mini:begin -->") == 1
    paired = json.loads((tmp_path / "out" / "hvsmr_mini" / "paired.json").read_text())
    assert [r["class"] for r in paired["time"]] == ["LV", "RV", "foreground mean"]
    assert paired["steps"][0]["mean_diff"] == pytest.approx(0.1)
    rows = json.loads((tmp_path / "out" / "hvsmr_mini" / "result.json").read_text())
    assert [(r["system"], r["matched"]) for r in rows] == [
        ("segexp (plan)", None),
        ("MONAI (PyTorch)", "time"),
        ("MONAI (PyTorch)", "steps"),
    ]


def test_monai_only_and_segexp_only(tmp_path: Path, monkeypatch) -> None:
    calls = _fake_runs(monkeypatch, tmp_path)
    monkeypatch.setattr(accuracy, "ensure_monai_venv", lambda venv: calls.append(("venv", str(venv))) or Path("p"))
    argv = ["--datasets", "hvsmr_mini", "--out", str(tmp_path / "out"), "--markdown", str(tmp_path / "A.md")]
    assert accuracy.main([*argv, "--segexp-only"]) == 0
    assert calls == []  # no environment, no MONAI run
    for flag in ("--monai-only", "--reference-only"):  # the former name still works
        calls.clear()
        assert accuracy.main([*argv, flag, "--minutes", "0.5", "--monai-venv", str(tmp_path / "v")]) == 0
        assert calls == [("venv", str(tmp_path / "v")), ("time", 30.0, None)]
    text = (tmp_path / "A.md").read_text()
    assert "| MONAI (PyTorch) | `--minutes` |" in text and "target not checked (one system only)" in text


def test_one_system_runs_leave_accuracy_md_alone_unless_asked(tmp_path: Path, monkeypatch) -> None:
    _fake_runs(monkeypatch, tmp_path)
    doc = tmp_path / "ACCURACY.md"
    doc.write_text(
        "# Accuracy\n\n<!-- accuracy:hvsmr_mini:begin -->\nthe comparison\n<!-- accuracy:hvsmr_mini:end -->\n"
    )
    monkeypatch.setattr(accuracy, "MARKDOWN", doc)
    before = doc.read_text()
    assert accuracy.main(["--datasets", "hvsmr_mini", "--out", str(tmp_path / "out"), "--segexp-only"]) == 0
    assert doc.read_text() == before  # a one-system block would have replaced the comparison
    assert (tmp_path / "out" / "hvsmr_mini" / "result.json").is_file()  # the rows are still kept
    assert (
        accuracy.main(
            ["--datasets", "hvsmr_mini", "--out", str(tmp_path / "out"), "--segexp-only", "--markdown", str(doc)]
        )
        == 0
    )
    assert "the comparison" not in doc.read_text()  # asked for: written


def test_seeds_run_both_systems_per_seed_and_report_means(tmp_path: Path, monkeypatch) -> None:
    def fg(system: str, overrides: list[str]) -> float:
        seed = int(next(o for o in overrides if o.startswith("seed="))[5:])
        return 0.5 + 0.1 * seed if system.startswith("segexp") else 0.55

    _fake_runs(monkeypatch, tmp_path, fg)
    doc = tmp_path / "ACCURACY.md"
    assert (
        accuracy.main(
            ["--datasets", "hvsmr_mini", "--out", str(tmp_path / "out"), "--markdown", str(doc), "--seeds", "0", "1"]
        )
        == 0
    )
    text = doc.read_text()
    # segexp: 0.5 and 0.6 -> 0.55; RV scored only by seed 1; MONAI got segexp's process time of each seed (47, 48)
    assert "| segexp (plan) | training.max_time=4 | 2 | 6 | 48 s | 0.550 | 0.500, 0.600 | 0.550 | 0.200 |" in text
    assert "| MONAI (PyTorch) | segexp's wall time | 2 | 10 | 48 s | 0.550 | 0.550, 0.550 | 0.550 | 0.200 |" in text
    # paired over (case, seed): segexp 0.5 then 0.6 against MONAI's 0.55: -0.05 and +0.05 per case, mean 0
    assert "| LV | 6 | 0.550 ± 0.071 | 0.550 ± 0.000 | +0.000 | [−0.040, +0.040] |" in text  # no "−0.000"
    assert "| RV | 3 | 0.200 | 0.200 | +0.000 | [+0.000, +0.000] | n too small |" in text  # seed 1 only
    assert (
        "**Equal wall time: target NOT met: foreground Dice below MONAI's by 0.013 on average — segexp < MONAI" in text
    )
    assert "| foreground mean | 6 | 0.450 ± 0.071 | 0.463 ± 0.124 | −0.013 |" in text  # RV only in seed 1
    assert "over 6 case×seed pairs (CI includes 0).**" in text and "Means over seeds 0, 1" in text
    assert "## hvsmr_mini, seeds 0 1\n<!-- accuracy:hvsmr_mini, seeds 0 1:begin -->" in text  # next to a one-seed block
    means = json.loads((tmp_path / "out" / "hvsmr_mini" / "result_seeds_0_1.json").read_text())
    assert [r["foreground_dice"] for r in means] == pytest.approx([0.55, 0.55, 0.55])  # beside, not over, result.json
    assert all("per_case" not in r for r in means)  # one seed's cases: the paired file holds every seed's
    paired = json.loads((tmp_path / "out" / "hvsmr_mini" / "paired_seeds_0_1.json").read_text())
    assert paired["time"][0]["n"] == 6 and paired["time"][0]["seeds"] == 2


@pytest.mark.slow
@needs_venv
def test_monai_loop_two_steps_on_a_tiny_npz(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)

    def split(n: int) -> tuple[np.ndarray, np.ndarray]:
        return rng.integers(0, 256, (n, 32, 32, 1), dtype=np.uint8), (rng.random((n, 32, 32)) > 0.7).astype(np.uint8)

    (ti, tm), (vi, vm), (si, _) = split(10), split(4), split(3)
    np.savez(
        tmp_path / "in.npz",
        train_images=ti,
        train_masks=tm,
        valid_images=vi,
        valid_masks=vm,
        valid_cases=np.array(["a", "a", "b", "b"]),
        score_images=si,
        score_cases=np.array(["c"] * 3),
        num_classes=2,
        seed=0,
    )
    cmd = accuracy.monai_command(
        MONAI_VENV / "bin" / "python", tmp_path / "in.npz", tmp_path / "out", steps=2, threads=2
    )
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=accuracy.monai_env())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "monai.json").read_text())
    assert report["steps"] == 2 and report["epochs"] == 1 and report["stopped_by"] == "steps"  # 10 slices: 2 batches
    assert report["num_params"] > 1_000_000 and {"torch", "monai"} <= set(report["versions"])
    assert len(report["history"]) == 1 and report["train_seconds"] > report["loop_seconds"] > 0
    with np.load(tmp_path / "out" / "predictions.npz") as data:
        predictions = data["predictions"]
    assert predictions.shape == (3, 32, 32) and predictions.dtype == np.uint8 and predictions.max() <= 1


def _run_accuracy(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, Path]:
    doc = tmp_path / "ACCURACY.md"
    doc.write_text(
        "# A\n\n## hvsmr_mini\n<!-- accuracy:hvsmr_mini:begin -->\nold\n<!-- accuracy:hvsmr_mini:end -->\n\ntail\n"
    )
    proc = subprocess.run(
        [
            sys.executable,
            str(SCRIPTS / "accuracy.py"),
            "--datasets",
            "hvsmr_mini",
            "--out",
            str(tmp_path / "out"),
            "--markdown",
            str(doc),
            "--monai-venv",
            str(MONAI_VENV),
            *args,
        ],
        capture_output=True,
        text=True,
        cwd=REPO_DIR,
        timeout=900,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc, doc


CLASSES = "| LV | RV | LA | RA | AO | PA | SVC | IVC |"


@pytest.mark.slow
@needs_venv
@pytest.mark.skipif(not HVSMR_MINI.is_dir(), reason="../shared/data/hvsmr_mini is absent")
def test_monai_only_run_writes_table_and_block(tmp_path: Path) -> None:
    proc, doc = _run_accuracy(
        tmp_path,
        "--monai-only",
        "--minutes",
        "0.01",
        "--max-epochs",
        "1",
        "--segexp-overrides",
        "model.image_height=32",
        "model.image_width=32",
    )
    text = doc.read_text()
    assert (
        "old" not in text and text.startswith("# A\n") and text.endswith("<!-- accuracy:hvsmr_mini:end -->\n\ntail\n")
    )
    assert CLASSES in text and "| MONAI (PyTorch) | `--minutes` | 1 | 3 |" in text  # 23 train slices, batch 8
    assert "Reproduce: `python scripts/accuracy.py --datasets hvsmr_mini" in text and "MONAI 1." in text
    assert CLASSES in proc.stdout
    rows = json.loads((tmp_path / "out" / "hvsmr_mini" / "result.json").read_text())
    assert (
        rows[0]["epochs"] == 1 and rows[0]["num_cases"] == 1 and set(rows[0]["dice"]) == set(CLASSES[2:-2].split(" | "))
    )
    assert (tmp_path / "out" / "hvsmr_mini" / "monai_time" / "evaluation" / "summary.json").is_file()


@pytest.mark.slow
@needs_venv
@pytest.mark.skipif(not HVSMR_MINI.is_dir(), reason="../shared/data/hvsmr_mini is absent")
def test_both_systems_tiny_run(tmp_path: Path) -> None:
    proc, doc = _run_accuracy(
        tmp_path,
        "--minutes",
        "0.05",
        "--no-tracking",
        "--segexp-overrides",
        "model.image_height=32",
        "model.image_width=32",
        "model.channels=[4,8,16]",
        "training.epochs=1",
        "training.steps_per_epoch=3",
        "training.epoch_images.num=0",
    )
    text = doc.read_text()
    assert "| segexp (plan) | training.max_time=0.05 | 1 | 3 |" in text  # training.steps_per_epoch=3
    assert "| MONAI (PyTorch) | segexp's wall time |" in text and "| MONAI (PyTorch) | segexp's steps | 1 | 3 |" in text
    assert "Equal wall time: target" in text and "Equal steps: target" in text
    rows = json.loads((tmp_path / "out" / "hvsmr_mini" / "result.json").read_text())
    segexp, at_time, at_steps = rows
    assert segexp["timed_by"] == "Keras per-epoch times" and at_steps["steps"] == segexp["steps"] == 3
    assert at_time["train_seconds"] >= segexp["process_seconds"] - 0.01  # MONAI got segexp's whole process time
    assert (tmp_path / "out" / "hvsmr_mini" / "segexp" / "evaluation" / "summary.json").is_file()


def test_monai_pads_sides_to_a_multiple_of_16_as_divisible_pad() -> None:
    assert monai_loop.divisible_padding(96, 120, 16) == ((0, 0), (4, 4))
    assert monai_loop.divisible_padding(97, 128, 16) == ((7, 8), (0, 0))
    split = monai_loop.Split(np.ones((2, 96, 120, 1), np.uint8), np.ones((2, 96, 120), np.uint8), ["a", "a"])
    inputs = monai_loop.Inputs(split, split, np.ones((3, 96, 120, 1), np.uint8), 2, 0)
    padded = monai_loop.pad_inputs(inputs, ((0, 0), (4, 4)))
    assert padded.train.images.shape == (2, 96, 128, 1) and padded.valid.masks.shape == (2, 96, 128)
    assert padded.score_images.shape == (3, 96, 128, 1) and padded.train.masks[:, :, :4].max() == 0


def test_prepare_variants_pairs_each_variant_with_the_first_per_slab_and_seed(tmp_path: Path) -> None:
    """scripts/prepare_variants.py's table from the runs' evaluation summaries: k1 scores 0.1 higher on every
    (slab, seed) pair, so its paired difference is +0.100 with a CI of one point."""
    import prepare_variants

    def write(k: int, seed: int, heart: float, pa: float | None) -> None:
        summary = {
            "per_case": {
                f"slab{j}": {"heart": {"dice": heart + 0.01 * j}, "PA": {"dice": None if pa is None else pa}}
                for j in range(3)
            }
        }
        folder = tmp_path / f"k{k}" / "thorax_pulmonary"
        (folder / f"seed{seed}" / "segexp" / "evaluation").mkdir(parents=True)
        (folder / f"seed{seed}" / "segexp" / "evaluation" / "summary.json").write_text(json.dumps(summary))
        (folder / "result_seeds_1_2.json").write_text(json.dumps([{"steps": 100 + k}]))

    for seed in (1, 2):
        write(0, seed, 0.5 + 0.1 * seed, None)
        write(1, seed, 0.6 + 0.1 * seed, None)
    variants = [("k0", ["context_slices=0"]), ("k1", ["context_slices=1"])]
    args = argparse.Namespace(out=tmp_path, seeds=[1, 2], variants=variants, datasets=["thorax_pulmonary"])
    lines = prepare_variants.dataset_table(args, "thorax_pulmonary")
    assert lines[0].startswith("**thorax_pulmonary** (3 test slabs")
    k0, k1 = lines[-2].split(" | "), lines[-1].split(" | ")
    assert k0[1] == "`context_slices=0`" and k0[2] == "100" and k0[4] == "–"
    assert k1[2] == "101" and k1[3] == "0.760 ± 0.071" and k1[4] == "+0.100 [+0.100, +0.100]"
    assert k1[5] == "+0.100" and k1[6].rstrip(" |") == "–"  # PA absent everywhere: not applicable
