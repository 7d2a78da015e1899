"""scripts/accuracy.py and scripts/reference_loop.py: the reference network, the thorax slabs, a tiny end-to-end run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from segexp.config.schema import REPO_DIR
from segexp.data.dataset import leaked_cases
from segexp.data.slices import split_pairs

from .conftest import SHARED_DATA

SCRIPTS = REPO_DIR / "scripts"
HVSMR_MINI = SHARED_DATA / "hvsmr_mini"
sys.path.insert(0, str(SCRIPTS))  # the scripts import each other (bench, reference_loop) as scripts do

import accuracy  # noqa: E402
import reference_loop  # noqa: E402


def test_reference_unet_is_monai_sized_and_trains_one_step() -> None:
    import keras

    # MONAI UNet(2, 1, 9, (16, 32, 64, 128, 256), (2, 2, 2, 2), num_res_units=2) has 1,627,884 parameters
    assert reference_loop.build_reference_unet(256, 256, 1, 9).count_params() == 1_627_884
    model = reference_loop.build_reference_unet(32, 32, 1, 3)
    assert model.output_shape == (None, 32, 32, 3) and model.input.dtype == "uint8"
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=reference_loop.dice_ce_loss)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 32, 32, 1), dtype=np.uint8)
    masks = rng.integers(0, 3, (2, 32, 32)).astype(np.uint8)
    before = model.get_weights()
    loss = float(model.train_on_batch(images, masks))
    assert np.isfinite(loss) and loss > 0
    assert any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    probs = np.asarray(model.predict_on_batch(images))
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)


def test_dice_ce_loss_is_monai_defaults() -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, (2, 8, 8))
    probs = rng.dirichlet(np.ones(3), size=(2, 8, 8)).astype(np.float32)
    onehot = np.eye(3)[labels]
    tp = (onehot * probs).sum((1, 2))
    dice = 1 - (2 * tp + 1e-5) / (onehot.sum((1, 2)) + probs.sum((1, 2)) + 1e-5)  # per sample and class, background in
    ce = -(onehot * np.log(probs)).sum(-1).mean((1, 2))
    got = np.asarray(reference_loop.dice_ce_loss(labels.astype(np.uint8), probs))
    np.testing.assert_allclose(got, dice.mean(-1) + ce, rtol=1e-5)
    perfect = np.asarray(reference_loop.dice_ce_loss(labels.astype(np.uint8), onehot.astype(np.float32)))
    np.testing.assert_allclose(perfect, 0.0, atol=1e-5)


def test_foreground_dice_per_case_skips_absent_classes() -> None:
    truth = np.zeros((2, 4, 4), np.uint8)
    truth[0, :2] = 1
    pred = truth.copy()
    pred[1, 0, 0] = 2  # class 2 predicted in case b only, absent from the truth: Dice 0 there
    assert reference_loop.foreground_dice(truth, pred, ["a", "b"], 3) == pytest.approx(0.5)  # (1.0 + 0.0) / 2
    assert reference_loop.foreground_dice(truth, truth, ["a", "a"], 3) == 1.0  # class 2 absent: left out


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
            (prepared / "train" / sub / f"case_x_{index:03d}.png").write_bytes(b"png")
    cases = accuracy.build_slab_folder(prepared, "case_x", tmp_path / "slabs", slab_slices=4)
    assert set(cases) == {"train", "valid", "test"} and all(cases.values())
    pairs = {split: split_pairs(tmp_path / "slabs", split, layout="flat", splits={}, cases=cases,
                                case_pattern=r"^(?P<case>.+)_(?P<slice>\d+)$") for split in cases}
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
    assert (tmp_path / "slabs" / "images" / f"{cases['train'][0]}_010.png").resolve() == \
        (prepared / "train" / "images" / "case_x_010.png").resolve()


@pytest.mark.skipif(not HVSMR_MINI.is_dir(), reason="../shared/data/hvsmr_mini is absent")
def test_hvsmr_mini_split_scores_every_structure_in_valid_and_test() -> None:
    from segexp.config.schema import validate_train_config
    from segexp.data.dataset import open_dataset

    from .conftest import compose_config

    cfg = validate_train_config(compose_config(["experiment=hvsmr_mini"]))
    assert (cfg.model.image_height, cfg.model.num_classes) == (256, 9)
    dataset = open_dataset(cfg.dataset, cfg.model.num_classes)
    assert {s: len(p) for s, p in dataset.pairs.items()} == {"train": 23, "valid": 7, "test": 6}
    for split in ("valid", "test"):
        present = set().union(*(np.unique(dataset.decoder(p.mask)).tolist() for p in dataset.pairs[split]))
        assert present == set(range(9)), split


def test_segexp_time_is_its_keras_epochs() -> None:
    lines = ["[2026-11-30][segexp.training.loop][INFO] - model resunet: 1 parameters, fp32 compute",
             "Epoch 1/2", "20/20 - 50s - 2s/step - loss: 1.0", "Epoch 2/2", "20/20 - 37s - 2s/step - loss: 0.9"]
    assert accuracy.keras_epochs(lines) == [(20, 50.0), (20, 37.0)]
    assert accuracy.keras_epochs(lines[:2]) == []


def test_target_verdict() -> None:
    def row(system: str, fg: float, dice: dict[str, float]) -> dict:
        return {"system": system, "foreground_dice": fg, "dice": dice, "n": {c: 1 for c in dice}}

    ref = row("reference (x)", 0.5, {"a": 0.6, "b": 0.4})
    assert accuracy.target_verdict([row("segexp (defaults)", 0.6, {"a": 0.7, "b": 0.5}), ref]) == "target met"
    verdict = accuracy.target_verdict([row("segexp (defaults)", 0.4, {"a": 0.8, "b": 0.0}), ref])
    assert verdict.startswith("target NOT met") and "0.400 < reference 0.500" in verdict and ": b" in verdict
    assert "one system only" in accuracy.target_verdict([ref])


def test_main_gives_the_reference_segexps_time_and_rewrites_blocks(tmp_path: Path, monkeypatch, capsys) -> None:
    def row(system: str, fg: float, seconds: float) -> dict:
        return {"system": system, "epochs": 2, "steps": 6, "train_seconds": seconds, "foreground_dice": fg,
                "dice": {"LV": fg, "RV": None}, "n": {"LV": 1, "RV": 0}, "num_cases": 1}

    budgets = []
    monkeypatch.setattr(accuracy, "SHARED", tmp_path / "shared")
    (tmp_path / "shared" / "hvsmr_mini").mkdir(parents=True)  # hocmvalves_mini is absent: skipped
    monkeypatch.setattr(accuracy, "run_segexp", lambda ds, overrides, args, work: row("segexp (defaults)", 0.7, 42.0))
    monkeypatch.setattr(accuracy, "run_reference",
                        lambda ds, overrides, args, work, seconds: budgets.append(seconds) or row("reference (x)", 0.6, 43.0))
    doc = tmp_path / "ACCURACY.md"
    argv = ["--datasets", "hvsmr_mini", "hocmvalves_mini", "--out", str(tmp_path / "out"), "--markdown", str(doc)]
    assert accuracy.main([*argv, "--minutes", "3", "--side-by-side"]) == 0
    assert budgets == [180.0]  # side by side: both get the same budget
    budgets.clear()
    assert accuracy.main(argv) == 0
    assert budgets == [42.0]  # one after the other (default): the reference gets segexp's measured time
    assert "skipping hocmvalves_mini" in capsys.readouterr().out
    first = doc.read_text()
    assert first.startswith(accuracy.HEADER) and "accuracy:hocmvalves_mini" not in first
    assert "| segexp (defaults) | 2 | 6 | 42 s | 0.700 | 0.700 | – |" in first and "**target met.**" in first
    assert accuracy.main(argv) == 0  # a rerun replaces the block
    assert doc.read_text().count("<!-- accuracy:hvsmr_mini:begin -->") == 1


def test_seeds_run_both_systems_per_seed_and_report_means(tmp_path: Path, monkeypatch) -> None:
    seen = []

    def row(system: str, overrides: list[str], seconds: float) -> dict:
        seed = int(next(o for o in overrides if o.startswith("seed="))[5:])
        fg = 0.5 + 0.1 * seed if system.startswith("segexp") else 0.55
        return {"system": system, "epochs": 2 + seed, "steps": 6 + seed, "train_seconds": seconds + seed,
                "foreground_dice": fg, "dice": {"LV": fg, "RV": None if seed == 0 else 0.2},
                "n": {"LV": 1, "RV": 0 if seed == 0 else 1}, "num_cases": 1}

    monkeypatch.setattr(accuracy, "SHARED", tmp_path / "shared")
    (tmp_path / "shared" / "hvsmr_mini").mkdir(parents=True)
    monkeypatch.setattr(accuracy, "run_segexp",
                        lambda ds, overrides, args, work: seen.append(work.name) or row("segexp (defaults)", overrides, 40))
    monkeypatch.setattr(accuracy, "run_reference",
                        lambda ds, overrides, args, work, seconds: row("reference (x)", overrides, seconds))
    doc = tmp_path / "ACCURACY.md"
    assert accuracy.main(["--datasets", "hvsmr_mini", "--out", str(tmp_path / "out"), "--markdown", str(doc),
                          "--seeds", "0", "1"]) == 0
    assert seen == ["seed0", "seed1"]
    text = doc.read_text()
    # segexp: 0.5 and 0.6 -> 0.55; RV scored only by seed 1; the reference got segexp's time of each seed
    assert "| segexp (defaults) | 2 | 6 | 40 s | 0.550 | 0.500, 0.600 | 0.550 | 0.200 |" in text
    assert "| reference (x) | 2 | 6 | 41 s | 0.550 | 0.550, 0.550 | 0.550 | 0.200 |" in text
    assert "**target met.**" in text and "Means over seeds 0, 1" in text
    assert "## hvsmr_mini, seeds 0 1\n<!-- accuracy:hvsmr_mini, seeds 0 1:begin -->" in text  # next to a one-seed block
    means = json.loads((tmp_path / "out" / "hvsmr_mini" / "result_seeds_0_1.json").read_text())
    assert [r["foreground_dice"] for r in means] == pytest.approx([0.55, 0.55])  # beside, not over, result.json


def _run_accuracy(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, Path]:
    doc = tmp_path / "ACCURACY.md"
    doc.write_text("# A\n\n## hvsmr_mini\n<!-- accuracy:hvsmr_mini:begin -->\nold\n<!-- accuracy:hvsmr_mini:end -->\n\ntail\n")
    proc = subprocess.run(
        [sys.executable, str(SCRIPTS / "accuracy.py"), "--datasets", "hvsmr_mini", "--out", str(tmp_path / "out"),
         "--markdown", str(doc), *args],
        capture_output=True, text=True, cwd=REPO_DIR, timeout=900, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc, doc


CLASSES = "| LV | RV | LA | RA | AO | PA | SVC | IVC |"


@pytest.mark.slow
@pytest.mark.skipif(not HVSMR_MINI.is_dir(), reason="../shared/data/hvsmr_mini is absent")
def test_reference_only_run_writes_table_and_block(tmp_path: Path) -> None:
    proc, doc = _run_accuracy(tmp_path, "--reference-only", "--minutes", "0.01", "--max-epochs", "1",
                              "--segexp-overrides", "model.image_height=32", "model.image_width=32")
    text = doc.read_text()
    assert "old" not in text and text.startswith("# A\n") and text.endswith("<!-- accuracy:hvsmr_mini:end -->\n\ntail\n")
    assert CLASSES in text and "| reference (MONAI UNet recipe) | 1 | 3 |" in text  # 23 train slices, batch 8
    assert "Reproduce: `python scripts/accuracy.py --datasets hvsmr_mini" in text and "cores" in text
    assert CLASSES in proc.stdout
    rows = json.loads((tmp_path / "out" / "hvsmr_mini" / "result.json").read_text())
    assert rows[0]["epochs"] == 1 and rows[0]["num_cases"] == 1 and set(rows[0]["dice"]) == set(CLASSES[2:-2].split(" | "))


@pytest.mark.slow
@pytest.mark.skipif(not HVSMR_MINI.is_dir(), reason="../shared/data/hvsmr_mini is absent")
def test_both_systems_tiny_run(tmp_path: Path) -> None:
    proc, doc = _run_accuracy(tmp_path, "--minutes", "0.05", "--no-tracking", "--segexp-overrides",
                              "model.image_height=32", "model.image_width=32", "model.channels=[4,8,16]",
                              "training.epochs=1", "training.steps_per_epoch=3", "training.epoch_images.num=0")
    text = doc.read_text()
    assert "| segexp (defaults) | 1 | 3 |" in text  # training.steps_per_epoch=3
    assert "| reference (MONAI UNet recipe) |" in text and "target" in text
    assert "trained alone" in text  # one after the other (default)
    rows = json.loads((tmp_path / "out" / "hvsmr_mini" / "result.json").read_text())
    segexp, reference = rows
    assert segexp["timed_by"] == "Keras per-epoch times"
    assert reference["train_seconds"] >= segexp["train_seconds"]  # the reference got segexp's measured time
    assert (tmp_path / "out" / "hvsmr_mini" / "segexp" / "evaluation" / "summary.json").is_file()
