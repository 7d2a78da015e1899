"""Zero-config class tables: from the config, a dataset.json (nnU-Net v1/v2, segexp-prepare) or the masks."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from omegaconf import OmegaConf

from segexp.cli.check import run_check
from segexp.config.schema import NO_CLASS_TABLE, check_train_config
from segexp.core.errors import ConfigError
from segexp.data.io.slices import DataError
from segexp.data.runtime.class_table import ClassTableError, resolve_class_table, with_class_table

from .conftest import compose_config, write_tiny_dataset

# write_tiny_dataset's masks: black background, (255, 0, 0) square, (0, 255, 0) disc.
TINY_DISCOVERED = {"background": [0, 0, 0], "class_1": [0, 255, 0], "class_2": [255, 0, 0]}  # by packed value


def section(root: Path, mask_format: str = "rgb", **keys) -> dict:
    """A plain dataset section as ``conf/dataset/folder.yaml`` gives it (layout splits)."""
    return {
        "name": "mine",
        "root": str(root),
        "layout": "splits",
        "splits": {"train": "train", "valid": "valid", "test": "test"},
        "cases": {},
        "case_pattern": r"^(?P<case>.+)_(?P<slice>\d+)$",
        "images_dir": "images",
        "masks_dir": "masks",
        "mask_format": mask_format,
        "class_names": None,
        "rgb_map": None,
        "binary_threshold": 128,
        "on_bad_file": "error",
        "phantom": None,
        **keys,
    }


def write_masks(root: Path, masks: dict[str, list[np.ndarray]]) -> Path:
    """``<root>/<split>/{images,masks}/c<split>_<i>.png``; ``masks`` are RGB ``(H, W, 3)`` or index ``(H, W)``."""
    for split, arrays in masks.items():
        for sub in ("images", "masks"):
            (root / split / sub).mkdir(parents=True, exist_ok=True)
        for i, mask in enumerate(arrays):
            name = f"c{split}_{i:03d}.png"
            cv2.imwrite(str(root / split / "images" / name), np.full(mask.shape[:2], 90, np.uint8))
            cv2.imwrite(str(root / split / "masks" / name), mask[..., ::-1] if mask.ndim == 3 else mask)  # cv2: BGR
    return root


def rgb_mask(colours: list[tuple[int, int, int]], size: int = 32) -> np.ndarray:
    """Vertical stripes, one per colour (RGB)."""
    mask = np.zeros((size, size, 3), np.uint8)
    for k, colour in enumerate(colours):
        mask[:, k * size // len(colours) : (k + 1) * size // len(colours)] = colour
    return mask


def index_mask(values: list[int], size: int = 32) -> np.ndarray:
    return rgb_mask([(v, v, v) for v in values], size)[..., 0]


def write_json(root: Path, manifest: object) -> Path:
    path = root / "dataset.json"
    path.write_text(manifest if isinstance(manifest, str) else json.dumps(manifest))
    return path


# --------------------------------------------------------------------------- the config and dataset.json


def test_the_config_table_wins_over_dataset_json(tmp_path: Path) -> None:
    root = write_tiny_dataset(tmp_path / "d", {"train": 2, "valid": 1})
    write_json(root, {"labels": {"background": 0, "x": 1}})
    given = {"background": [0, 0, 0], "square": [255, 0, 0], "disc": [0, 255, 0]}
    table = resolve_class_table(section(root, class_names=list(given), rgb_map=given))
    assert (table.names, table.colours, table.source) == (list(given), list(given.values()), "config")
    only_map = resolve_class_table(section(root, rgb_map=given))  # rgb_map alone: its keys are the names
    assert only_map.names == list(given) and only_map.source.startswith("config")


def test_nnunet_v2_and_v1_dataset_json(tmp_path: Path) -> None:
    root = write_masks(tmp_path / "d", {"train": [index_mask([0, 1, 2])], "valid": [index_mask([0, 2])]})
    path = write_json(root, {"name": "x", "labels": {"RV": 2, "background": 0, "LV": 1}, "file_ending": ".png"})
    table = resolve_class_table(section(root, "index"))
    assert table.names == ["background", "LV", "RV"] and table.colours is None
    assert table.source == f"dataset.json {path}"
    write_json(root, {"labels": {"0": "background", "2": "RV", "1": "LV"}})
    assert resolve_class_table(section(root, "index")).names == ["background", "LV", "RV"]
    write_json(root, {"class_names": ["background", "LV"], "rgb_map": {"background": [0, 0, 0], "LV": [9, 8, 7]}})
    prepared = resolve_class_table(section(root, "index"))  # segexp-prepare's manifest
    assert prepared.names == ["background", "LV"] and prepared.colours == [[0, 0, 0], [9, 8, 7]]


def test_dataset_json_colours_for_rgb_masks(tmp_path: Path) -> None:
    root = write_tiny_dataset(tmp_path / "d", {"train": 2, "valid": 1})
    write_json(
        root,
        {
            "labels": {"background": 0, "square": 1, "disc": 2},
            "colors": {"background": [0, 0, 0], "square": [255, 0, 0], "disc": [0, 255, 0]},
        },
    )
    table = resolve_class_table(section(root))
    assert table.colours == [[0, 0, 0], [255, 0, 0], [0, 255, 0]] and not table.notes
    write_json(root, {"labels": {"background": 0, "a": 1, "b": 2}})  # no colours: sorted mask colours, a note
    assumed = resolve_class_table(section(root))
    assert assumed.names == ["background", "a", "b"] and assumed.colours == list(TINY_DISCOVERED.values())
    assert any("assigned to the labels in value order" in note for note in assumed.notes)
    write_json(root, {"labels": {"background": 0, "a": 1}})
    with pytest.raises(ClassTableError, match=r"dataset\.json lists 2 labels but the 2 train masks hold 3 colours"):
        resolve_class_table(section(root))


@pytest.mark.parametrize(
    ("manifest", "message"),
    [
        ("{not json", r"not valid JSON"),
        ({"labels": {"background": 0, "LV": 2}}, r"label values must be 0\.\.n-1 without gaps .*got \[0, 2\]"),
        ({"labels": {"background": 1, "LV": 2}}, r"got \[1, 2\]"),
        ({"labels": {"background": 0, "both": [1, 2]}}, r"label 'both' is a region"),
        ({"labels": {"background": 0, "LV": "one"}}, r"label 'LV' has value 'one'"),
        ({"name": "no table"}, r"no class table in it"),
        ({"labels": {"background": 0, "LV": 1}, "colors": {"background": [0, 0, 0]}}, r"\"colors\" must give a colour"),
    ],
)
def test_a_bad_dataset_json_is_named(tmp_path: Path, manifest: object, message: str) -> None:
    root = write_tiny_dataset(tmp_path / "d", {"train": 1, "valid": 1})
    path = write_json(root, manifest)
    with pytest.raises(ClassTableError, match=message) as info:
        resolve_class_table(section(root))
    assert str(info.value).startswith(f"{path}: ")


# --------------------------------------------------------------------------- discovered from the masks


def test_rgb_colours_are_discovered_and_fill_the_config(tmp_path: Path) -> None:
    root = write_tiny_dataset(tmp_path / "d", {"train": 4, "valid": 2})
    cfg = compose_config(["dataset=folder", f"dataset.root={root}", "model.image_height=32", "model.image_width=32"])
    OmegaConf.set_struct(cfg, True)
    dataset, table = with_class_table(cfg.dataset)
    assert table.source == "masks (4 train masks)" and table.names == list(TINY_DISCOVERED)
    assert (
        table.lines()[0]
        == "class table from masks (4 train masks): background (0,0,0), class_1 (0,255,0), class_2 (255,0,0)"
    )
    assert cfg.dataset.class_names is None  # the input is left alone
    assert (
        list(dataset.class_names) == list(TINY_DISCOVERED)
        and OmegaConf.to_container(dataset.rgb_map) == TINY_DISCOVERED
    )
    cfg.dataset = dataset
    typed, problems = check_train_config(cfg)  # the interpolations resolve now
    assert typed.model.num_classes == 3 and not [p for p in problems if p.startswith("dataset")], problems


def test_index_values_and_binary(tmp_path: Path) -> None:
    root = write_masks(
        tmp_path / "d", {"train": [index_mask([0, 1]), index_mask([0, 2, 1])], "valid": [index_mask([0])]}
    )
    table = resolve_class_table(section(root, "index"))
    assert table.names == ["background", "class_1", "class_2"] and table.colours is None
    assert table.to_dataset_overrides() == {"class_names": ["background", "class_1", "class_2"], "rgb_map": None}
    binary = resolve_class_table(section(root, "binary"))
    assert binary.names == ["background", "foreground"] and binary.source == "mask_format binary"


def test_a_rare_colour_is_a_note(tmp_path: Path) -> None:
    big = rgb_mask([(0, 0, 0), (255, 0, 0)], size=128)
    big[5, 5] = (12, 34, 56)
    root = write_masks(tmp_path / "d", {"train": [big], "valid": [big]})
    table = resolve_class_table(section(root))
    assert len(table.names) == 3
    assert any("(12,34,56) covers only 1 of 16384 train pixels" in note for note in table.notes), table.notes


# --------------------------------------------------------------------------- what cannot be discovered


def test_anti_aliased_masks_are_refused(tmp_path: Path) -> None:
    sharp = np.zeros((64, 64, 3), np.uint8)
    cv2.circle(sharp, (20, 20), 12, (255, 0, 0), -1)
    cv2.rectangle(sharp, (34, 30), (60, 60), (0, 0, 255), -1)
    blurred = cv2.GaussianBlur(sharp, (5, 5), 0)  # a smoothed mask: dozens of blended edge colours
    root = write_masks(tmp_path / "d", {"train": [sharp, blurred], "valid": [sharp]})
    with pytest.raises(
        ClassTableError,
        match=r"look anti-aliased/blended: \d+ colours, the rarest: .*ctrain_001\.png"
        r".*save masks without interpolation .*or give dataset\.rgb_map",
    ):
        resolve_class_table(section(root))


def test_a_colour_only_in_valid_is_named(tmp_path: Path) -> None:
    root = write_masks(
        tmp_path / "d",
        {"train": [rgb_mask([(0, 0, 0), (255, 0, 0)])] * 2, "valid": [rgb_mask([(0, 0, 0), (0, 0, 255)])]},
    )
    with pytest.raises(
        ClassTableError,
        match=r"valid masks hold colours that no train mask has.*\(0,0,255\) in "
        r".*valid/masks/cvalid_000\.png",
    ):
        resolve_class_table(section(root))


def test_missing_black_and_all_black(tmp_path: Path) -> None:
    root = write_masks(
        tmp_path / "d", {"train": [rgb_mask([(10, 10, 10), (255, 0, 0)])], "valid": [rgb_mask([(10, 10, 10)])]}
    )
    with pytest.raises(
        ClassTableError,
        match=r"no black \(0,0,0\) background in the 1 train masks \(colours found: "
        r"\(10,10,10\), \(255,0,0\)\)",
    ):
        resolve_class_table(section(root))
    flat = write_masks(tmp_path / "e", {"train": [rgb_mask([(0, 0, 0)])], "valid": [rgb_mask([(0, 0, 0)])]})
    with pytest.raises(ClassTableError, match=r"all black"):
        resolve_class_table(section(flat))


def test_index_values_with_a_gap_and_colour_index_masks(tmp_path: Path) -> None:
    root = write_masks(tmp_path / "d", {"train": [index_mask([0, 1, 3])], "valid": [index_mask([0])]})
    with pytest.raises(ClassTableError, match=r"index values \[0, 1, 3\], without \[2\]"):
        resolve_class_table(section(root, "index"))
    binary_like = write_masks(tmp_path / "e", {"train": [index_mask([0, 255])], "valid": [index_mask([0])]})
    with pytest.raises(ClassTableError, match=r"a binary mask\? use dataset\.mask_format=binary"):
        resolve_class_table(section(binary_like, "index"))
    colour = write_masks(tmp_path / "f", {"train": [rgb_mask([(0, 0, 0), (255, 0, 0)])], "valid": [index_mask([0])]})
    with pytest.raises(ClassTableError, match=r"no train mask could be read .*ctrain_000\.png: colour mask"):
        resolve_class_table(section(colour, "index"))


def test_a_missing_root_or_train_split(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"dataset\.root: folder .*absent does not exist"):
        resolve_class_table(section(tmp_path / "absent"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"dataset split 'train'"):
        resolve_class_table(section(tmp_path / "empty"))


# --------------------------------------------------------------------------- segexp-check and validation


def test_segexp_check_prints_the_discovered_table_or_the_problem(tmp_path: Path) -> None:
    root = write_tiny_dataset(tmp_path / "d", {"train": 2, "valid": 1})
    report = run_check(compose_config(["dataset=folder", f"dataset.root={root}"], config_name="check"))
    assert report.ok, report.problems
    lines = report.lines()
    assert "class table from masks (2 train masks): background (0,0,0), class_1 (0,255,0), class_2 (255,0,0)" in lines
    assert set(report.fingerprint.class_pixels) == set(TINY_DISCOVERED)
    assert report.to_dict()["class_table"]["names"] == list(TINY_DISCOVERED)
    write_json(root, {"labels": {"background": 0, "gap": 2}})
    broken = run_check(compose_config(["dataset=folder", f"dataset.root={root}"], config_name="check"))
    causes = [str(p) for p in broken.problems]
    assert len(causes) == 1 and causes[0].startswith("dataset.class_names: no class table from the data: ")
    assert "dataset.json: label values must be 0..n-1" in causes[0]
    assert broken.fingerprint.files_read == 3 and broken.fingerprint.intensity.count == 3 * 32 * 32  # images still read


def test_validation_without_a_resolved_table_says_so(tmp_path: Path) -> None:
    cfg = compose_config(["dataset=folder", f"dataset.root={tmp_path}"])
    with pytest.raises(ConfigError, match=r"none given and none resolved"):
        check_train_config(cfg)  # model.num_classes: ${len:${dataset.class_names}}
    _, problems = check_train_config(
        compose_config(["dataset=folder", f"dataset.root={tmp_path}", "model.num_classes=3"])
    )
    assert NO_CLASS_TABLE in problems
