"""Fold ensembles (segexp-cv folders and parent runs) in segexp-infer and segexp-evaluate, and save_probabilities.

The folds are "oracle" runs (tests/test_evaluate_infer.py): a 1x1 convolution whose softmax is known, softened
(``scale``) and with other class intensities per fold, so that the folds disagree and their mean is checkable.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import cv2
import keras
import mlflow
import nibabel as nib
import numpy as np
import pytest

from segexp.config.commands import validate_infer_config
from segexp.core.errors import EvaluationError, RunError
from segexp.evaluation.ensemble import CV_FILE, Ensemble, EnsembleSource, open_ensemble, open_source
from segexp.evaluation.inference import predict_batches
from segexp.evaluation.postprocess import FILE_NAME as POSTPROCESSING_FILE
from segexp.evaluation.postprocess import ClassRule, Postprocessing, Rule
from segexp.evaluation.prediction import infer
from segexp.evaluation.reports import evaluate_run
from segexp.tracking.runs import TrainedRun, open_run

from .conftest import TINY_DATASET_OVERRIDES, compose_config, sqlite_tracked_run
from .test_evaluate_infer import make_run

NAMES = ["background", "square", "disc"]
FOLD_INTENSITIES = ((30, 220, 130), (60, 190, 110))  # fold 0: the tiny dataset's classes; fold 1: off
WINDOW = {"mode": "fixed", "level": 300.0, "width": 800.0}


def soft_oracle(intensities: tuple[int, ...], scale: float = 20.0, size: int = 32) -> keras.Model:
    """Softmax over ``-scale (x - c_k)^2`` (x, c in [0, 1]): soft probabilities, argmax the nearest c_k."""
    c = np.asarray(intensities, np.float32) / 255.0
    inputs = keras.Input((size, size, 1), dtype="uint8")
    conv = keras.layers.Conv2D(len(c), 1, activation="softmax", dtype="float32")
    out = conv(keras.layers.Rescaling(1 / 255)(inputs))
    conv.set_weights([(scale * 2 * c).reshape(1, 1, 1, -1), -scale * c**2])
    return keras.Model(inputs, out)


class Constant:
    """A fake model: the same probabilities ``probs`` (H, W, K) for every image."""

    def __init__(self, probs: np.ndarray, input_shape: tuple[Any, ...] = (None, 2, 2, 1)) -> None:
        self.probs, self.input_shape = probs, input_shape
        self.output_shape = (None, *probs.shape)

    def predict_on_batch(self, x: np.ndarray) -> np.ndarray:
        return np.broadcast_to(self.probs, (len(x), *self.probs.shape)).copy()


def write_cv(folder: Path, fold_runs: list[dict[str, Any]], postprocessing: str | None = None, **extra: Any) -> Path:
    """A finished CV's ``cv.json`` in ``folder`` (the contract of segexp-cv)."""
    record = {
        "kind": "segexp-cv",
        "folds": len(fold_runs),
        "seed": 0,
        "sweep_dir": str(folder),
        "parent_run_id": None,
        "tracking_uri": None,
        "fold_runs": fold_runs,
        "postprocessing": postprocessing,
        **extra,
    }
    (folder / CV_FILE).write_text(json.dumps(record, indent=2))
    return folder


def fold_entry(fold: int, run_dir: Path | str, status: str = "finished", error: str | None = None) -> dict[str, Any]:
    return {"fold": fold, "run_dir": str(run_dir), "run_id": None, "status": status, "valid_cases": [], "error": error}


@pytest.fixture
def cv_folder(tiny_dataset: Path, tmp_path: Path) -> Path:
    """Two oracle folds in ``<tmp>/cv/fold_{0,1}``; fold 1 recorded under a folder that has since moved."""
    folder = tmp_path / "cv"
    overrides = [*TINY_DATASET_OVERRIDES, f"dataset.root={tiny_dataset}", "tracking.enabled=false"]
    for k, intensities in enumerate(FOLD_INTENSITIES):
        make_run(folder / f"fold_{k}", soft_oracle(intensities), overrides)
    return write_cv(folder, [fold_entry(0, folder / "fold_0"), fold_entry(1, "/moved/away/fold_1")])


def png_inputs(tiny_dataset: Path, tmp_path: Path) -> Path:
    """The test slices, plus one at 48 x 64 (resized for the model, probabilities back at its own size)."""
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for src in sorted((tiny_dataset / "test" / "images").iterdir()):
        (inputs / src.name).write_bytes(src.read_bytes())
    big = cv2.resize(cv2.imread(str(inputs / "case2_000.png"), cv2.IMREAD_GRAYSCALE), (64, 48))
    cv2.imwrite(str(inputs / "big_000.png"), big)
    return inputs


def npz(path: Path) -> np.ndarray:
    with np.load(path) as data:
        assert list(data) == ["probabilities"]
        return data["probabilities"]


def test_ensemble_is_the_exact_mean_of_its_members() -> None:
    a = np.array([[[0.2, 0.8], [0.5, 0.5]], [[1.0, 0.0], [0.3, 0.7]]], np.float32)
    b = np.array([[[0.6, 0.4], [0.1, 0.9]], [[0.0, 1.0], [0.7, 0.3]]], np.float32)
    ensemble = Ensemble([Constant(a), Constant(b)], ["fold 0", "fold 1"])
    assert ensemble.input_shape == (None, 2, 2, 1) and ensemble.output_shape == (None, 2, 2, 2)
    out = ensemble.predict_on_batch(np.zeros((3, 2, 2, 1), np.uint8))
    assert out.dtype == np.float32 and out.shape == (3, 2, 2, 2)
    assert np.array_equal(out, np.broadcast_to((a + b) / 2, out.shape))
    # flip TTA applied to the ensemble = the mean of the members' TTA predictions (linear in each)
    models = [soft_oracle(i) for i in FOLD_INTENSITIES]
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 1), dtype=np.uint8)
    together = predict_batches(Ensemble(models, ["a", "b"]), images, batch_size=2, flip_tta=True)
    apart = [predict_batches(m, images, batch_size=2, flip_tta=True) for m in models]
    assert np.allclose(together, (apart[0] + apart[1]) / 2, atol=1e-6)
    assert np.abs(apart[0] - apart[1]).max() > 0.2  # the folds disagree: the mean is a real check


def test_members_of_other_shapes_are_refused_by_name() -> None:
    three, four = Constant(np.zeros((2, 2, 3), np.float32)), Constant(np.zeros((2, 2, 4), np.float32))
    named = r"fold 0: input \(None, 2, 2, 1\), output \(None, 2, 2, 3\); fold 1: input \(None, 2, 2, 1\), output"
    with pytest.raises(EvaluationError, match=named + r" \(None, 2, 2, 4\)"):
        Ensemble([three, four], ["fold 0", "fold 1"])
    with pytest.raises(EvaluationError, match=r"fold 1: input \(None, 4, 4, 1\)"):
        Ensemble([three, Constant(np.zeros((2, 2, 3), np.float32), (None, 4, 4, 1))], ["fold 0", "fold 1"])


def test_cv_folder_predicts_the_mean_of_its_folds(
    cv_folder: Path, tiny_dataset: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from segexp.data.phantom import write_phantom_volumes

    ((volume, _),) = write_phantom_volumes(tmp_path / "vol", num_cases=1, size=32, num_slices=10)
    inputs = png_inputs(tiny_dataset, tmp_path)
    (inputs / volume.name).write_bytes(volume.read_bytes())
    source = open_source(str(cv_folder))
    assert isinstance(source, EnsembleSource) and [f.fold for f in source.folds] == [0, 1]
    assert source.folds[1].run.run_dir == (cv_folder / "fold_1").resolve()  # found in the CV folder
    options: dict[str, Any] = {"window": WINDOW, "save_probabilities": True}
    with caplog.at_level(logging.INFO, logger="segexp.evaluation.ensemble"):
        assert infer(source, inputs, tmp_path / "ens", **options) == []
    assert "fold ensemble of 2 folds: fold 0" in caplog.text
    for k in (0, 1):
        assert infer(open_run(str(cv_folder / f"fold_{k}")), inputs, tmp_path / f"fold{k}", **options) == []

    for stem, shape in (("case2_000", (32, 32, 3)), ("case2_001", (32, 32, 3)), ("big_000", (48, 64, 3))):
        ens, p0, p1 = (npz(tmp_path / d / "probabilities" / f"{stem}.npz") for d in ("ens", "fold0", "fold1"))
        assert ens.dtype == np.float16 and ens.shape == shape
        mean = (p0.astype(np.float32) + p1.astype(np.float32)) / 2
        assert np.allclose(ens, mean, atol=2e-3) and np.abs(p0 - p1).max() > 0.2
        mask = cv2.imread(str(tmp_path / "ens" / "masks" / f"{stem}.png"), cv2.IMREAD_UNCHANGED)
        assert np.mean(mask == np.argmax(ens, -1)) > 0.99  # the labels are the mean's (float16 ties aside)

    name = "phantom001_image"
    image = nib.load(volume)
    ens_nii = nib.load(tmp_path / "ens" / f"{name}_probabilities.nii.gz")
    assert ens_nii.shape == (*image.shape, 3) and np.allclose(ens_nii.affine, image.affine)
    assert nib.aff2axcodes(ens_nii.affine) == nib.aff2axcodes(image.affine) == ("L", "P", "S")
    assert ens_nii.get_data_dtype() == np.uint8 and ens_nii.dataobj.slope == pytest.approx(1 / 255)
    probs = [nib.load(tmp_path / d / f"{name}_probabilities.nii.gz").get_fdata() for d in ("ens", "fold0", "fold1")]
    assert probs[0].min() >= 0 and probs[0].max() <= 1 and np.abs(probs[1] - probs[2]).max() > 0.2
    assert np.abs(probs[0] - (probs[1] + probs[2]) / 2).max() <= 1 / 255 + 1e-6
    labels = np.asarray(nib.load(tmp_path / "ens" / f"{name}_pred.nii.gz").dataobj)
    assert labels.shape == image.shape and np.mean(labels == np.argmax(probs[0], -1)) > 0.99


def test_without_save_probabilities_none_are_written(cv_folder: Path, tiny_dataset: Path, tmp_path: Path) -> None:
    assert infer(open_source(str(cv_folder)), tiny_dataset / "test" / "images", tmp_path / "out") == []
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["colour", "masks", "overlays"]


def test_sigmoid_head_saves_its_one_channel(tmp_path: Path) -> None:
    from segexp.data.phantom import write_phantom_volumes

    ((volume, _),) = write_phantom_volumes(tmp_path / "vol", num_cases=1, size=32, num_slices=10)
    inputs = keras.Input((32, 32, 1), dtype="uint8")
    model = keras.Model(
        inputs, keras.layers.Conv2D(1, 1, activation="sigmoid")(keras.layers.Rescaling(1 / 255)(inputs))
    )
    overrides = [
        "model.image_height=32",
        "model.image_width=32",
        "model.num_classes=2",
        "dataset=folder",
        "dataset.root=/unused",
        "dataset.class_names=[background,fg]",
        "dataset.mask_format=index",
    ]
    run = open_run(str(make_run(tmp_path / "run", model, overrides)))
    png = tmp_path / "slice_000.png"
    cv2.imwrite(str(png), np.full((40, 24), 100, np.uint8))
    assert infer(run, png, tmp_path / "out", save_probabilities=True) == []
    assert infer(run, volume, tmp_path / "out", window=WINDOW, save_probabilities=True) == []
    prob = npz(tmp_path / "out" / "probabilities" / "slice_000.npz")
    assert prob.shape == (40, 24, 1) and prob.dtype == np.float16
    nii = nib.load(tmp_path / "out" / "phantom001_image_probabilities.nii.gz")
    assert nii.shape == (*nib.load(volume).shape, 1) and np.allclose(nii.affine, nib.load(volume).affine)


def test_unfinished_folds_are_left_out_with_a_warning(cv_folder: Path, caplog: pytest.LogCaptureFixture) -> None:
    failed, missing = fold_entry(1, cv_folder / "fold_1", "failed", "OOM"), fold_entry(2, "fold_2", "missing")
    write_cv(cv_folder, [fold_entry(0, cv_folder / "fold_0"), failed, missing])
    with caplog.at_level(logging.WARNING, logger="segexp.evaluation.ensemble"):
        source = open_ensemble(str(cv_folder))
    assert source is not None and [f.fold for f in source.folds] == [0]
    assert "left out of the fold ensemble (not finished): fold 1 (failed: OOM); fold 2 (missing)" in caplog.text
    write_cv(cv_folder, [fold_entry(0, cv_folder / "fold_0", "failed", "NaN loss"), fold_entry(1, "x", "missing")])
    with pytest.raises(RunError, match=r"cv\.json: no fold has finished \(fold 0 \(failed: NaN loss\); fold 1"):
        open_ensemble(str(cv_folder))


def test_unfinished_cv_folder_and_plain_runs(cv_folder: Path, tmp_path: Path) -> None:
    (cv_folder / CV_FILE).unlink()
    unfinished = r"the cross-validation has not finished \(no cv\.json; folders fold_0, fold_1\); resume it with "
    with pytest.raises(RunError, match=unfinished + r"`segexp-cv resume=.*cv`"):
        open_source(str(cv_folder))
    assert open_ensemble(str(cv_folder / "fold_0")) is None  # a training run folder
    assert isinstance(open_source(str(cv_folder / "fold_0")), TrainedRun)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / CV_FILE).write_text(json.dumps({"kind": "something else"}))
    assert open_ensemble(str(tmp_path / "other")) is None
    assert open_ensemble("models:/x@champion") is None
    write_cv(cv_folder, [fold_entry(0, cv_folder / "fold_0")], postprocessing="rules.json")
    with pytest.raises(RunError, match=r"cv\.json: postprocessing names 'rules\.json', but .*rules\.json does not"):
        open_ensemble(str(cv_folder))


def test_cv_postprocessing_replaces_the_folds_rules(cv_folder: Path, tiny_dataset: Path, tmp_path: Path) -> None:
    for k in (0, 1):  # each fold's own rules drop the disc: never used by the ensemble
        Postprocessing(NAMES, {"disc": ClassRule(Rule.min_volume, 10**6)}).save(
            cv_folder / f"fold_{k}" / POSTPROCESSING_FILE
        )
    images = tiny_dataset / "test" / "images"

    def classes(out: str, **options: Any) -> set[int]:
        assert infer(open_source(str(cv_folder)), images, tmp_path / out, **options) == []
        return {int(v) for p in (tmp_path / out / "masks").iterdir() for v in np.unique(cv2.imread(str(p), -1))}

    assert classes("no_cv_rules") == {0, 1, 2}  # cv.json postprocessing: null
    Postprocessing(NAMES, {"square": ClassRule(Rule.min_volume, 10**6)}).save(cv_folder / POSTPROCESSING_FILE)
    write_cv(cv_folder, [fold_entry(0, cv_folder / "fold_0"), fold_entry(1, cv_folder / "fold_1")], POSTPROCESSING_FILE)
    assert classes("auto") == {0, 2}  # the CV's rules drop the square
    assert classes("none", postprocess="none") == {0, 1, 2}


def test_evaluate_cv_folder_and_parent_run(cv_folder: Path, tmp_path: Path) -> None:
    Postprocessing(NAMES, {"square": ClassRule(Rule.min_volume, 10**6)}).save(cv_folder / POSTPROCESSING_FILE)
    write_cv(cv_folder, [fold_entry(0, cv_folder / "fold_0"), fold_entry(1, cv_folder / "fold_1")], POSTPROCESSING_FILE)
    summary = evaluate_run(open_source(str(cv_folder)), tmp_path / "eval", log_to_run=False)
    assert summary["split"] == "test" and summary["num_cases"] == 1
    assert summary["postprocessing"] == {"square": "drop it from a case where it is predicted in < 1000000 voxels"}
    assert summary["mean"]["per_class"]["square"]["dice"]["mean"] == 0.0  # dropped by the CV's rules
    assert summary["mean"]["per_class"]["disc"]["dice"]["mean"] > 0.5
    assert (tmp_path / "eval" / "summary.json").is_file()

    uri = f"sqlite:///{tmp_path}/outputs/mlflow.db"
    with sqlite_tracked_run(tmp_path, tags={"segexp.kind": "cv"}) as parent:
        parent.log_artifact(cv_folder / CV_FILE, "cv")
        parent.log_artifact(cv_folder / POSTPROCESSING_FILE)
    assert parent.run_id is not None
    source = open_ensemble(parent.run_id, uri)
    assert isinstance(source, EnsembleSource) and source.run_id == parent.run_id and len(source.folds) == 2
    again = evaluate_run(source, tmp_path / "eval_parent")
    assert again["mean"] == summary["mean"]
    run = mlflow.MlflowClient(uri).get_run(parent.run_id)
    assert run.data.metrics["ensemble_test/dice/square"] == 0.0 and "ensemble_test/dice_fg_mean" in run.data.metrics
    assert not any(k.startswith("test/") for k in run.data.metrics)
    assert run.data.tags["ensemble_test.folds"] == "0,1" and run.info.status == "FINISHED"
    logged = [a.path for a in mlflow.MlflowClient(uri).list_artifacts(parent.run_id, "evaluation/ensemble_test")]
    assert "evaluation/ensemble_test/summary.json" in logged
    with sqlite_tracked_run(tmp_path) as plain:  # an MLflow run that is no CV: not an ensemble
        pass
    assert plain.run_id is not None and open_ensemble(plain.run_id, uri) is None


def test_infer_config_has_save_probabilities() -> None:
    base = ["run=x", "input=y", "paths.root=/tmp"]
    assert validate_infer_config(compose_config(base, "infer")).save_probabilities is False
    assert validate_infer_config(compose_config([*base, "save_probabilities=true"], "infer")).save_probabilities
