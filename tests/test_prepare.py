"""segexp-prepare: NIfTI volumes -> slice folders, split by patient, safe to re-run."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import cv2
import nibabel as nib
import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

from segexp.config.schema import CONF_DIR, REPO_DIR, ConfigError
from segexp.data.io.rgb_map import decode_rgb_mask
from segexp.data.io.volumes import VolumeError
from segexp.data.prepare.volumes_to_slices import PrepareError, prepare

THORAX = REPO_DIR.parent / "shared" / "data" / "thorax_cta"
SMALL_PHANTOM = ("volumes.phantom.num_cases=5", "volumes.phantom.size=32", "volumes.phantom.num_slices=12")


def compose_prepare(tmp_path: Path, *overrides: str, small: bool = True) -> DictConfig:
    """The prepare config with outputs under ``tmp_path`` and (``small``) a 5-case 32x32x12 phantom."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        phantom = SMALL_PHANTOM if small else ()
        cfg = compose(config_name="prepare", overrides=[f"paths.root={tmp_path}", "workers=0", *phantom, *overrides])
    with open_dict(cfg):
        cfg.pop("hydra", None)
    return cfg


@pytest.fixture
def prepared(tmp_path: Path) -> Path:
    return prepare(compose_prepare(tmp_path, "split.ratios={train:0.6,valid:0.2,test:0.2}", "empty_fraction=0.5"))


def _manifest(out_dir: Path) -> dict:
    return json.loads((out_dir / "dataset.json").read_text())


def test_layout_manifest_and_patient_split(prepared: Path, tmp_path: Path) -> None:
    m = _manifest(prepared)
    assert prepared == tmp_path / "outputs" / "data" / "phantom_slices"
    assert m["generator"] == "segexp-prepare" and m["class_names"][0] == "background" and len(m["class_names"]) == 6
    split_cases = {s: set(ids) for s, ids in m["splits"].items()}
    assert [len(split_cases[s]) for s in ("train", "valid", "test")] == [3, 1, 1]
    assert set.union(*split_cases.values()) == {f"phantom{i:03d}" for i in range(1, 6)}
    for split, cases in split_cases.items():
        names = sorted(p.name for p in (prepared / split / "images").iterdir())
        assert names == sorted(p.name for p in (prepared / split / "masks").iterdir())
        assert {n.rsplit("_", 1)[0] for n in names} == cases  # no case in two splits
    case = m["cases"]["phantom001"]
    assert case["orientation"] == "LPS" and case["shape"] == [32, 32, 12] and len(case["spacing_mm"]) == 3
    source = tmp_path / "outputs" / "data" / "phantom_volumes" / case["image"]["file"]
    assert case["image"]["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    assert m["window"]["name"] == "cardiac_cta" and m["orientation"]["canonical"] == "RAS"


def test_slices_keep_ids_foreground_and_a_fraction_of_empty(prepared: Path) -> None:
    m = _manifest(prepared)
    colours = list(m["rgb_map"].values())
    for case, info in m["cases"].items():
        files = sorted((prepared / info["split"] / "masks").glob(f"{case}_*.png"))
        assert len(files) == info["slices_foreground"] + info["slices_empty_kept"]
        empty_total = info["slices_total"] - info["slices_foreground"]
        assert info["slices_empty_kept"] == round(0.5 * empty_total)
        n_foreground = 0
        for f in files:
            mask = decode_rgb_mask(cv2.imread(str(f))[..., ::-1], colours, f)
            n_foreground += bool(mask.any())
            assert int(f.stem.rsplit("_", 1)[1]) < info["slices_total"]
        assert n_foreground == info["slices_foreground"]


def test_labels_land_on_the_right_pixels(prepared: Path, tmp_path: Path) -> None:
    """Slice k of the written masks is the phantom's label slice k in the documented display orientation."""
    m = _manifest(prepared)
    case, info = next(iter(m["cases"].items()))
    label_img = nib.as_closest_canonical(
        nib.load(tmp_path / "outputs" / "data" / "phantom_volumes" / f"{case}_label.nii.gz")
    )
    labels = np.asarray(label_img.dataobj)
    f = sorted((prepared / info["split"] / "masks").glob(f"{case}_*.png"))[len(info) // 2]
    k = int(f.stem.rsplit("_", 1)[1])
    mask = decode_rgb_mask(cv2.imread(str(f))[..., ::-1], list(m["rgb_map"].values()), f)
    expected = labels[::-1, ::-1, k].T  # RAS array -> rows anterior..posterior, columns right..left
    assert np.array_equal(mask, expected)


def test_rerun_is_a_no_op(prepared: Path, tmp_path: Path) -> None:
    before = {p: p.stat().st_mtime_ns for p in prepared.rglob("*")}
    again = prepare(
        compose_prepare(tmp_path, "split.ratios={train:0.6,valid:0.2,test:0.2}", "empty_fraction=0.5", "workers=2")
    )
    assert again == prepared and {p: p.stat().st_mtime_ns for p in prepared.rglob("*")} == before


def test_different_dataset_needs_overwrite(prepared: Path, tmp_path: Path) -> None:
    changed = ("split.ratios={train:0.6,valid:0.2,test:0.2}", "empty_fraction=0.0")
    with pytest.raises(PrepareError, match="holds a different dataset.*overwrite=true"):
        prepare(compose_prepare(tmp_path, *changed))
    assert _manifest(prepared)["empty_fraction"] == 0.5
    prepare(compose_prepare(tmp_path, *changed, "overwrite=true"))
    assert _manifest(prepared)["empty_fraction"] == 0.0


def test_foreign_folder_is_never_replaced(tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my data")
    with pytest.raises(PrepareError, match="not written by segexp-prepare"):
        prepare(compose_prepare(tmp_path, f"out_dir={out}", "overwrite=true"))
    assert (out / "notes.txt").read_text() == "my data" and len(list(out.iterdir())) == 1


def test_workers_give_identical_output(tmp_path: Path) -> None:
    a = prepare(compose_prepare(tmp_path, f"out_dir={tmp_path}/a", "workers=0"))
    b = prepare(compose_prepare(tmp_path, f"out_dir={tmp_path}/b", "workers=2"))
    files_a = sorted(p.relative_to(a) for p in a.rglob("*.png"))
    assert files_a == sorted(p.relative_to(b) for p in b.rglob("*.png"))
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files_a)


def test_unknown_label_value_fails_before_writing(tmp_path: Path) -> None:
    cfg = compose_prepare(tmp_path, "~volumes.classes.Coronary")
    with pytest.raises(VolumeError, match=r"phantom00\d.*5"):
        prepare(cfg)
    assert not (tmp_path / "outputs" / "data" / "phantom_slices").exists()
    assert not list((tmp_path / "outputs" / "data").glob(".phantom_slices*"))  # no staging left behind


def test_label_merge_makes_a_binary_dataset(tmp_path: Path) -> None:
    out = prepare(
        compose_prepare(
            tmp_path,
            "~volumes.classes",
            "+volumes.classes={background:{labels:[0],rgb:[0,0,0]},heart:{labels:[1,2,3,4,5],rgb:[255,255,255]}}",
            f"out_dir={tmp_path}/binary",
            "mask_format=index",
        )
    )
    assert _manifest(out)["class_names"] == ["background", "heart"]
    values = set()
    for f in (out / "train" / "masks").glob("*.png"):
        values |= set(np.unique(cv2.imread(str(f), cv2.IMREAD_UNCHANGED)).tolist())
    assert values == {0, 1}


def test_k_fold_assignment(tmp_path: Path) -> None:
    cfg = (
        "volumes.phantom.num_cases=7",
        "split.folds=3",
        "split.fold=1",
        "split.ratios={train:0.7,valid:0.15,test:0.15}",
    )
    m = _manifest(prepare(compose_prepare(tmp_path, *cfg)))
    assert sorted(m["splits"]["valid"]) == sorted(c for c, k in m["folds"].items() if k == 1)
    assert not set(m["splits"]["test"]) & set(m["folds"])


def test_explicit_case_split(tmp_path: Path) -> None:
    m = _manifest(
        prepare(
            compose_prepare(
                tmp_path, "split.cases={train:[phantom001,phantom002,phantom003],valid:[phantom004],test:[phantom005]}"
            )
        )
    )
    assert m["splits"] == {
        "train": ["phantom001", "phantom002", "phantom003"],
        "valid": ["phantom004"],
        "test": ["phantom005"],
    }


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("axis=oblique", "axis"),
        ("empty_fraction=1.5", "empty_fraction"),
        ("window.width=0", "window.width"),
        ("size=[64]", "size"),
        ("volumes.classes.LV.labels=[2]", "volumes.classes.Myocardium.labels"),
    ],
)
def test_bad_settings_name_the_key(tmp_path: Path, override: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        prepare(compose_prepare(tmp_path, override))


def test_mlflow_file_store_is_refused_before_any_volume_is_read(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    with pytest.raises(ConfigError, match=r"tracking\.uri: '\./mlruns' is MLflow's file store"):
        prepare(compose_prepare(tmp_path, "tracking=sqlite", "tracking.uri=./mlruns"))
    assert not (tmp_path / "data").exists()


def test_prepared_phantom_trains(prepared: Path, compose_train) -> None:
    from segexp.training.loop import train

    from .conftest import TINY_DATASET_OVERRIDES

    small = [
        o
        for o in TINY_DATASET_OVERRIDES
        if o.startswith(("model.image", "model.base", "model.num_layers", "training."))
    ]
    cfg = compose_train(
        "dataset=phantom_prepared", f"dataset.root={prepared}", *small, "training.epochs=1", "tracking.enabled=false"
    )
    objective = train(cfg, prepared.parent / "run")
    assert np.isfinite(objective) or np.isnan(objective)
    assert (prepared.parent / "run" / "checkpoints" / "best.keras").is_file()


def test_cli_prepare_and_bad_value(tmp_path: Path) -> None:
    base = [sys.executable, "-m", "segexp.cli.prepare", f"paths.root={tmp_path}", *SMALL_PHANTOM]
    ok = subprocess.run(base, capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert (tmp_path / "outputs" / "data" / "phantom_slices" / "dataset.json").is_file()
    bad = subprocess.run([*base, "axis=oblique"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "axis: expected one of" in bad.stdout + bad.stderr
    assert "Traceback" not in bad.stdout + bad.stderr


@pytest.mark.skipif(not THORAX.is_dir(), reason="../shared/data/thorax_cta is absent")
def test_real_thorax_volumes(tmp_path: Path) -> None:
    """Real LPS CT with HU: pairing in sub-folders, reorientation, windowing; unknown labels name the case."""
    common = (
        f"volumes.source={THORAX}",
        "volumes.phantom=null",
        "volumes.name=thorax",
        "volumes.pattern='^(?P<case>[^/]+)/(?P<kind>image|label)\\.nii\\.gz$'",
        "split.cases={train:[case_aorta],valid:[case_pulmonary],test:[]}",
        "~volumes.classes",
    )
    narrow = (
        "+volumes.classes={background:{labels:[0],rgb:[0,0,0]},heart:{labels:[1],rgb:[255,0,0]},"
        "pa:{labels:[2],rgb:[0,0,255]}}"
    )
    with pytest.raises(VolumeError, match="case_aorta") as info:
        prepare(compose_prepare(tmp_path, *common, narrow))
    assert "case_pulmonary" not in str(info.value)
    wide = "+volumes.classes={background:{labels:[0]},vessel:{labels:[1,2,3,4,5,6],rgb:[255,0,0]}}"
    out = prepare(compose_prepare(tmp_path, *common, wide, "empty_fraction=0"))
    m = _manifest(out)
    assert m["cases"]["case_aorta"]["orientation"] == "LPS"
    assert m["cases"]["case_aorta"]["spacing_mm"] == [1.5, 1.5, 1.5]
    assert m["cases"]["case_aorta"]["slices_foreground"] == len(list((out / "train" / "images").glob("*.png")))


PREPARE_PRESETS = [(g, p.stem) for g in ("volumes", "window") for p in sorted((CONF_DIR / g).glob("*.yaml"))]


@pytest.mark.parametrize(("group", "option"), PREPARE_PRESETS, ids=[f"{g}={o}" for g, o in PREPARE_PRESETS])
def test_every_prepare_preset_validates(tmp_path: Path, group: str, option: str) -> None:
    from segexp.config.commands import validate_prepare_config

    small = group != "volumes" or option == "phantom"
    cfg = validate_prepare_config(compose_prepare(tmp_path, f"{group}={option}", small=small))
    assert list(cfg.volumes.classes)[0] == "background"


def test_prepare_logs_to_mlflow_only_when_asked(tmp_path: Path) -> None:
    import mlflow

    base = [sys.executable, "-m", "segexp.cli.prepare", f"paths.root={tmp_path}", *SMALL_PHANTOM, "workers=0"]
    subprocess.run(base, check=True, capture_output=True, timeout=300)
    assert not (tmp_path / "outputs" / "mlflow.db").exists()
    subprocess.run([*base, "tracking=sqlite", "overwrite=true"], check=True, capture_output=True, timeout=300)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/outputs/mlflow.db")
    client = mlflow.MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name("segexp-prepare").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert [a.path for a in client.list_artifacts(runs[0].info.run_id)] == ["dataset.json"]
