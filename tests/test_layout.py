"""``dataset.layout: auto``: split folders or one flat folder, split by patient when no cases are named."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir

from segexp.config.schema import CONF_DIR
from segexp.core.errors import DataError
from segexp.data.io.layout import AUTO_SPLIT_SEED, resolve_layout, with_layout
from segexp.data.runtime.dataset import open_dataset

from .test_class_table import section


def flatten(split_root: Path, flat: Path, cases: int) -> Path:
    """``flat/{images,masks}/p<k>_<i>.png``: the tiny split folders' slices dealt round-robin to ``cases`` patients."""
    for sub in ("images", "masks"):
        (flat / sub).mkdir(parents=True)
    names = sorted(p.name for p in split_root.glob("*/images/*.png"))
    for i, name in enumerate(names):
        split = next(s for s in ("train", "valid", "test") if (split_root / s / "images" / name).is_file())
        stem = f"p{i % cases}_{i:03d}.png"
        for sub in ("images", "masks"):
            shutil.copy(split_root / split / sub / name, flat / sub / stem)
    return flat


@pytest.fixture
def flat_folder(tmp_path: Path, tiny_dataset: Path):
    def make(cases: int) -> Path:
        return flatten(tiny_dataset, tmp_path / f"flat{cases}", cases)

    return make


def test_auto_finds_split_folders(tiny_dataset: Path) -> None:
    resolved = resolve_layout(section(tiny_dataset, layout="auto"))
    assert resolved.layout == "splits" and resolved.cases == {}
    assert "one folder per split" in resolved.source


@pytest.mark.parametrize(("cases", "counts"), [(7, (5, 1, 1)), (5, (3, 1, 1)), (4, (3, 1, 0)), (2, (1, 1, 0))])
def test_a_flat_folder_is_split_by_patient(flat_folder, cases: int, counts: tuple[int, int, int]) -> None:
    """70/15/15 % from 5 cases (largest remainder, one case at least), 80/20 % train/valid below; seeded, disjoint."""
    root = flat_folder(cases)
    resolved = resolve_layout(section(root, layout="auto"))
    assert resolved.layout == "flat"
    got = tuple(len(resolved.cases.get(s, [])) for s in ("train", "valid", "test"))
    assert got == counts
    named = [c for ids in resolved.cases.values() for c in ids]
    assert sorted(named) == sorted(f"p{k}" for k in range(cases)) and len(set(named)) == cases
    assert resolve_layout(section(root, layout="flat")) == resolved  # flat without cases: the same split
    assert f"seed {AUTO_SPLIT_SEED}" in resolved.source


def test_the_dataset_opens_with_the_automatic_split(flat_folder) -> None:
    root = flat_folder(7)
    d = section(root, layout="auto", class_names=["background", "square", "disc"])
    d["rgb_map"] = {"background": [0, 0, 0], "square": [255, 0, 0], "disc": [0, 255, 0]}
    dataset = open_dataset(d, 3)
    resolved = resolve_layout(d)
    for split in ("train", "valid", "test"):
        assert dataset.cases(split) == resolved.cases[split]
    assert sum(len(p) for p in dataset.pairs.values()) == len(list((root / "images").iterdir()))


def test_named_cases_win_and_make_the_folder_flat(flat_folder) -> None:
    root = flat_folder(4)
    cases = {"train": ["p0", "p1"], "valid": ["p2"], "test": ["p3"]}
    resolved = resolve_layout(section(root, layout="auto", cases=cases))
    assert (resolved.layout, resolved.cases) == ("flat", cases)


def test_the_resolution_is_written_into_the_config(flat_folder) -> None:
    root = flat_folder(5)
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose(config_name="train", overrides=["dataset=folder", f"dataset.root={root}"])
    assert cfg.dataset.layout == "auto"  # the folder preset's default
    section_cfg, resolved = with_layout(cfg.dataset)
    assert section_cfg.layout == "flat" and dict(section_cfg.cases) == resolved.cases
    assert cfg.dataset.layout == "auto"  # a copy: the composed config is left alone
    assert any("by patient" in line for line in resolved.lines())


@pytest.mark.parametrize(
    ("make", "message"),
    [
        ("empty", "holds neither"),
        ("no_valid", "does not exist"),
        ("one_case", "needs at least 2"),
        ("bad_names", "case_pattern"),
    ],
)
def test_folders_that_cannot_be_split_are_named(tmp_path: Path, tiny_dataset: Path, make: str, message: str) -> None:
    root = tmp_path / make
    if make == "empty":
        root.mkdir()
    elif make == "no_valid":
        shutil.copytree(tiny_dataset, root)
        shutil.rmtree(root / "valid")
    elif make == "one_case":
        flatten(tiny_dataset, root, 1)
    else:
        flatten(tiny_dataset, root, 3)
        for path in root.glob("*/p0_*.png"):
            path.rename(path.with_name("scan" + path.name.split("_")[1]))
    with pytest.raises(DataError, match=message) as err:
        resolve_layout(section(root, layout="auto"))
    assert str(root) in str(err.value)


def test_a_run_plans_the_split_into_its_preset(tmp_path: Path, flat_folder) -> None:
    """segexp-train's plan step on a flat folder given by its path alone: the split is a planned choice."""
    from segexp.planning.apply import planned_run_config

    root = flat_folder(5)
    overrides = [
        "dataset=folder",
        f"dataset.root={root}",
        "training.epochs=1",
        "training.steps_per_epoch=1",
        "training.loader.workers=0",
        "tracking=none",
        f"paths.output_dir={tmp_path / 'out'}",
    ]
    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose(config_name="train", overrides=overrides)
        planned, params = planned_run_config(cfg, overrides, run_dir)
    resolved = resolve_layout(section(root, layout="auto"))
    assert planned.dataset.layout == "flat" and dict(planned.dataset.cases) == resolved.cases
    assert json.loads(params["plan.dataset.cases"]) == resolved.cases
    preset = yaml.safe_load((run_dir / "plan.yaml").read_text())
    assert preset["dataset"]["cases"] == resolved.cases
    recorded = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())
    assert recorded["dataset"]["cases"] == resolved.cases
