"""segexp-evaluate and segexp-infer on runs whose model is known exactly.

An "oracle" model labels every pixel by its intensity (nearest class intensity, a 1x1
convolution), so its predictions are known without training: on the tiny dataset it is
perfect, and on a CT volume its output can be recomputed voxel by voxel.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import keras
import mlflow
import nibabel as nib
import numpy as np
import pytest
from omegaconf import OmegaConf

from segexp.data.io.intensity import window_to_uint8
from segexp.evaluation.postprocess import FILE_NAME as POSTPROCESSING_FILE
from segexp.evaluation.postprocess import Postprocessing
from segexp.evaluation.prediction import infer
from segexp.evaluation.reports import CASE_COLUMNS, EvaluationError, evaluate_run
from segexp.tracking.runs import BEST_MODEL, RunError, open_run
from segexp.training.loop import train

from .conftest import TINY_DATASET_OVERRIDES, compose_config

TINY_CLASS_INTENSITIES = (30, 220, 130)  # background, square, disc (tests/conftest.py::tiny_pair)


def oracle_model(intensities, size: int = 32, channels: int = 1) -> keras.Model:
    """Softmax over -(x - c_k)^2 (up to a per-pixel constant): argmax = the nearest class intensity c_k."""
    c = np.asarray(intensities, np.float32) / 255.0
    inputs = keras.Input((size, size, channels), dtype="uint8")
    x = keras.layers.Rescaling(1 / 255)(inputs)
    conv = keras.layers.Conv2D(len(c), 1, activation="softmax", dtype="float32")
    out = conv(x)
    kernel = np.zeros((1, 1, channels, len(c)), np.float32)
    kernel[0, 0, 0] = 200 * 2 * c
    conv.set_weights([kernel, -200 * c**2])
    return keras.Model(inputs, out)


def make_run(run_dir: Path, model: keras.Model, overrides) -> Path:
    """A training run folder as segexp-train leaves it: .hydra/config.yaml + checkpoints/best.keras."""
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(compose_config(list(overrides))))
    (run_dir / BEST_MODEL).parent.mkdir(parents=True)
    model.save(run_dir / BEST_MODEL)
    return run_dir


def test_perfect_model_scores_one_and_hand_counts(tiny_dataset: Path, tmp_path: Path) -> None:
    run = make_run(
        tmp_path / "run",
        oracle_model(TINY_CLASS_INTENSITIES),
        [*TINY_DATASET_OVERRIDES, f"dataset.root={tiny_dataset}", "tracking.enabled=false"],
    )
    summary = evaluate_run(open_run(str(run)), tmp_path / "eval", log_to_run=False)
    assert summary["mean"]["foreground_mean"]["dice"] == pytest.approx(1.0)
    assert summary["mean"]["per_class"]["square"]["hd95"]["mean"] == 0.0
    assert summary["hd95_units"] == "px" and summary["num_cases"] == 1 and summary["num_slices"] == 2
    assert summary["dice_incl_bg_original"]["mean"] == pytest.approx(1.0)
    written = {p.name for p in (tmp_path / "eval").iterdir()}
    assert written == {"summary.json", "evaluation.csv", "per_slice.csv", "dice_per_class.png"}
    rows = (tmp_path / "eval" / "evaluation.csv").read_text().splitlines()
    assert rows[0].startswith("case,class,dice") and len(rows) == 1 + 2  # one case x two foreground classes
    # NSD and ASSD beside them (appended): perfect surfaces, at the default tolerance of 1 px
    assert summary["mean"]["per_class"]["square"]["nsd"]["mean"] == 1.0
    assert summary["mean"]["per_class"]["disc"]["assd"]["mean"] == 0.0
    assert summary["nsd_tolerance"] == {"square": 1.0, "disc": 1.0}
    assert rows[0] == "case,class,dice,iou,hd95,precision,recall,nsd,assd,tp,fp,fn,n_truth,n_pred"
    per_slice = (tmp_path / "eval" / "per_slice.csv").read_text().splitlines()
    assert per_slice[0] == "case,slice,class,dice,iou,hd95,precision,recall,nsd,assd,tp,fp,fn,n_truth,n_pred"


def test_nsd_tolerance_per_class_is_recorded_and_checked(tiny_dataset: Path, tmp_path: Path) -> None:
    run = make_run(
        tmp_path / "run",
        oracle_model(TINY_CLASS_INTENSITIES),
        [*TINY_DATASET_OVERRIDES, f"dataset.root={tiny_dataset}", "tracking.enabled=false"],
    )
    summary = evaluate_run(
        open_run(str(run)), tmp_path / "eval", log_to_run=False, nsd_tolerance_mm={"default": 2.0, "disc": 0.5}
    )
    assert summary["nsd_tolerance"] == {"square": 2.0, "disc": 0.5}
    assert summary["per_case"]["case2"]["disc"]["nsd"] == 1.0
    with pytest.raises(EvaluationError, match=r"nsd_tolerance_mm names \['heart'\], not foreground classes"):
        evaluate_run(open_run(str(run)), tmp_path / "eval2", log_to_run=False, nsd_tolerance_mm={"heart": 1.0})
    # a run trained before the key (its saved config lacks it) is scored at the default, 1 px
    config = run / ".hydra" / "config.yaml"
    saved = OmegaConf.load(config)
    del saved.training["nsd_tolerance_mm"]
    config.write_text(OmegaConf.to_yaml(saved))
    old = evaluate_run(open_run(str(run)), tmp_path / "eval3", log_to_run=False)
    assert old["nsd_tolerance"] == {"square": 1.0, "disc": 1.0}


def test_class_count_mismatch_is_named(tiny_dataset: Path, tmp_path: Path) -> None:
    run = make_run(
        tmp_path / "run",
        oracle_model((30, 220, 130, 80)),
        [*TINY_DATASET_OVERRIDES, f"dataset.root={tiny_dataset}", "tracking.enabled=false"],
    )
    with pytest.raises(EvaluationError, match="predicts 4 classes but the dataset has 3"):
        evaluate_run(open_run(str(run)), tmp_path / "eval", log_to_run=False)


def test_training_evaluates_and_evaluate_resumes_the_same_run(
    compose_train, tiny_dataset: Path, tmp_path: Path
) -> None:
    cfg = compose_train(*TINY_DATASET_OVERRIDES, f"dataset.root={tiny_dataset}", "training.epochs=1")
    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    train(cfg, run_dir)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/outputs/mlflow.db")
    client = mlflow.MlflowClient()
    (run,) = client.search_runs([client.get_experiment_by_name("segexp").experiment_id])
    assert {
        "test/dice/square",
        "test/dice/disc",
        "test/dice_fg_mean",
        "test/hd95/disc",
        "test/dice_incl_bg_original",
        "test/nsd/disc",
        "test/assd/square",
        "test/nsd_fg_mean",
        "test/assd_fg_mean",
    } <= set(run.data.metrics)
    assert "evaluation/summary.json" in [a.path for a in client.list_artifacts(run.info.run_id, "evaluation")]
    summary = json.loads((run_dir / "evaluation" / "summary.json").read_text())
    assert summary["split"] == "test"
    # training.postprocess=auto: rules chosen on the valid split, recorded, and applied to the test scores
    chosen = Postprocessing.load(run_dir / POSTPROCESSING_FILE)
    assert set(chosen.rules) == {"square", "disc"}
    assert all(chosen.validation[n]["dice_before"] is not None for n in chosen.rules)
    assert summary["postprocessing"] == {n: r.describe() for n, r in chosen.active.items()}
    assert {"postprocess.square", "postprocess.disc"} <= set(run.data.tags)
    assert POSTPROCESSING_FILE in [a.path for a in client.list_artifacts(run.info.run_id)]
    # per case x class in the UI: the table, worst Dice first, and the case viewer
    cases = client.load_table(run.info.experiment_id, "evaluation/test/cases.json", [run.info.run_id])
    assert list(cases.columns) == list(CASE_COLUMNS) and set(cases["class"]) == {"square", "disc"}
    assert len(cases) == 2 * summary["num_cases"] and list(cases["dice"]) == sorted(cases["dice"])
    assert set(cases["slices"]) == {2} and set(cases["hd95_units"]) == {"px"}
    logged = [a.path for a in client.list_artifacts(run.info.run_id, "evaluation/test")]
    assert sorted(logged) == ["evaluation/test/case_viewer.html", "evaluation/test/cases.json"]
    viewer = (run_dir / "evaluation" / "case_viewer.html").read_text()
    assert 'class="slice-slider"' in viewer and 'data-name="case2"' in viewer and "all 1 cases shown" in viewer

    # segexp-evaluate by run folder and by MLflow run id: both land in the same MLflow run
    evaluate_run(open_run(str(run_dir)), tmp_path / "again", split="valid")
    by_id = open_run(run.info.run_id, f"sqlite:///{tmp_path}/outputs/mlflow.db")
    assert by_id.run_dir == run_dir.resolve()
    runs = client.search_runs([run.info.experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED" and "valid/dice_fg_mean" in runs[0].data.metrics
    cases = client.load_table(run.info.experiment_id, "evaluation/valid/cases.json", [run.info.run_id])
    assert len(cases) == 2 and list(cases["dice"]) == sorted(cases["dice"])  # valid: one case x two classes
    assert (tmp_path / "again" / "case_viewer.html").is_file()


def test_open_run_errors_name_the_source(tmp_path: Path) -> None:
    with pytest.raises(RunError, match="neither a training run folder nor an MLflow run id"):
        open_run(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunError, match=r"empty: not a segexp training run folder"):
        open_run(str(tmp_path / "empty"))


def test_png_folder_with_bad_files_is_reported_not_aborted(tiny_dataset: Path, tmp_path: Path) -> None:
    run = open_run(
        str(
            make_run(
                tmp_path / "run",
                oracle_model(TINY_CLASS_INTENSITIES),
                [*TINY_DATASET_OVERRIDES, f"dataset.root={tiny_dataset}"],
            )
        )
    )
    inputs = tmp_path / "in"
    inputs.mkdir()
    for src in sorted((tiny_dataset / "valid" / "images").iterdir())[:3]:
        (inputs / src.name).write_bytes(src.read_bytes())
    (inputs / "broken.png").write_bytes(b"not an image")
    colour = np.zeros((32, 32, 3), np.uint8)
    colour[..., 2] = 255
    cv2.imwrite(str(inputs / "colour.png"), colour)
    big = cv2.resize(
        cv2.imread(str(inputs / "case1_000.png"), cv2.IMREAD_GRAYSCALE), (64, 48), interpolation=cv2.INTER_NEAREST
    )
    cv2.imwrite(str(inputs / "big.png"), big)
    failures = infer(run, inputs, tmp_path / "out", large_images="tile")
    assert len(failures) == 2
    assert any("broken.png: cannot read image" in f for f in failures)
    assert any("colour.png: colour image (3 different channels) in a grayscale dataset" in f for f in failures)
    masks = sorted(p.name for p in (tmp_path / "out" / "masks").iterdir())
    assert masks == ["big.png", "case1_000.png", "case1_001.png", "case1_002.png"]
    truth = cv2.imread(str(tiny_dataset / "valid" / "masks" / "case1_001.png"))[..., ::-1]
    colour_pred = cv2.imread(str(tmp_path / "out" / "colour" / "case1_001.png"))[..., ::-1]
    assert np.array_equal(colour_pred, truth)  # perfect model -> the mask colours of the dataset
    assert cv2.imread(str(tmp_path / "out" / "masks" / "big.png"), cv2.IMREAD_UNCHANGED).shape == (48, 64)


def test_nifti_prediction_keeps_shape_affine_and_voxels(tmp_path: Path) -> None:
    """An LPS phantom volume in, a label volume out with its shape and affine and the right voxels."""
    from segexp.data.phantom import write_phantom_volumes

    ((image_path, _),) = write_phantom_volumes(tmp_path / "vol", num_cases=1, size=32, num_slices=10)
    centres = (0, 61, 122, 251)  # windowed intensities -> classes 0..3 (midpoints never integers: no ties)
    overrides = [
        "model.image_height=32",
        "model.image_width=32",
        "model.num_layers=3",
        "model.num_classes=4",
        "dataset=folder",
        "dataset.root=/unused",
        "dataset.class_names=[a,b,c,d]",
        "dataset.mask_format=index",
    ]
    run = open_run(str(make_run(tmp_path / "run", oracle_model(centres), overrides)))
    failures = infer(run, image_path, tmp_path / "out", window={"mode": "fixed", "level": 300.0, "width": 800.0})
    assert failures == []
    source = nib.load(image_path)
    pred = nib.load(tmp_path / "out" / "phantom001_image_pred.nii.gz")
    assert pred.shape == source.shape and np.allclose(pred.affine, source.affine)
    assert nib.aff2axcodes(pred.affine) == ("L", "P", "S")
    windowed = window_to_uint8(np.asarray(source.dataobj, np.float32), 300.0, 800.0).astype(np.float32)
    expected = np.argmin(np.abs(windowed[..., None] - np.asarray(centres, np.float32)), axis=-1)
    assert np.array_equal(np.asarray(pred.dataobj), expected)
    assert (tmp_path / "out" / "phantom001_image_montage.png").is_file()


def test_nifti_without_window_is_reported(tmp_path: Path) -> None:
    from segexp.data.phantom import write_phantom_volumes

    ((image_path, _),) = write_phantom_volumes(tmp_path / "vol", num_cases=1, size=32, num_slices=10)
    overrides = [
        "model.image_height=32",
        "model.image_width=32",
        "model.num_layers=3",
        "model.num_classes=3",
        "dataset=folder",
        f"dataset.root={tmp_path}",
        "dataset.class_names=[a,b,c]",
        "dataset.mask_format=index",
    ]
    run = open_run(str(make_run(tmp_path / "run", oracle_model(TINY_CLASS_INTENSITIES), overrides)))
    (failure,) = infer(run, image_path, tmp_path / "out")
    assert "phantom001_image.nii.gz: volume input needs the training's window" in failure


def test_cli_evaluate_and_infer_exit_codes(tiny_dataset: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    run = make_run(
        tmp_path / "run",
        oracle_model(TINY_CLASS_INTENSITIES),
        [*TINY_DATASET_OVERRIDES, f"dataset.root={tiny_dataset}", "tracking.enabled=false"],
    )
    common = [f"paths.root={tmp_path}", f"run={run}"]
    ok = subprocess.run(
        [sys.executable, "-m", "segexp.cli.evaluate", *common], capture_output=True, text=True, timeout=300
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert len(list((tmp_path / "outputs" / "evaluate" / "runs").glob("*/*/summary.json"))) == 1
    bad = subprocess.run(
        [sys.executable, "-m", "segexp.cli.evaluate", f"paths.root={tmp_path}", f"run={tmp_path}/nope"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 2 and "neither a training run folder nor an MLflow run id" in bad.stdout + bad.stderr
    assert "Traceback" not in bad.stdout + bad.stderr
    (tiny_dataset / "valid" / "images" / "zz_broken.png").write_bytes(b"")
    part = subprocess.run(
        [sys.executable, "-m", "segexp.cli.infer", *common, f"input={tiny_dataset}/valid/images"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert (
        part.returncode == 1
        and "skipped: " in part.stdout + part.stderr
        and "zz_broken.png" in part.stdout + part.stderr
    )
    assert len(list((tmp_path / "outputs" / "infer" / "runs").glob("*/*/masks/*.png"))) == 4
