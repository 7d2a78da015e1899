"""``segexp-evaluate``: per-structure truth on a dataset split, logged to the training's MLflow run.

For every case of the split the slices are predicted in batches at the model's
input size, the predictions are resized back (nearest) to each slice's stored
size, and scored against the stored masks, background excluded
(:mod:`segexp.evaluation.scoring`): per case on the stacked slices (3D, in mm when
``dataset.json`` gives the spacing, else in pixels) and per slice (2D): Dice, IoU, HD95, precision, recall, NSD
at the configured tolerance (``training.nsd_tolerance_mm``, segexp-evaluate's ``nsd_tolerance_mm``) and ASSD.

Outputs: ``summary.json`` (per class, per case, foreground mean, and the
original background-including score for comparison), ``evaluation.csv`` (one row
per case and class), ``per_slice.csv`` and ``dice_per_class.png``; in MLflow
``test/dice/<class>``, ``test/dice_fg_mean``, ... and the files under ``evaluation/``, and under
``evaluation/<split>/`` the table ``cases.json`` (one row per case and class, worst Dice first) and the case
viewer ``case_viewer.html`` (:mod:`segexp.evaluation.case_viewer`).
"""

from __future__ import annotations

import csv
import json
import logging
import re
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import open_dict

from segexp.config.schema import DatasetConfig, validate_train_config
from segexp.core.errors import EvaluationError
from segexp.core.files import atomic_write_path, atomic_write_text
from segexp.data.io.rgb_map import class_colours
from segexp.data.io.slices import (
    DataError,
    SlicePair,
    check_same_size,
    read_image,
    resize_pair,
)
from segexp.data.runtime.dataset import SliceDataset, open_dataset
from segexp.evaluation.case_viewer import VIEWER_FILE, ViewerCase, encode_case, viewer_page
from segexp.evaluation.ensemble import EnsembleSource
from segexp.evaluation.inference import predict_batches, probabilities_to_classes
from segexp.evaluation.postprocess import Postprocessing, determine, for_run
from segexp.evaluation.scoring import (
    DEFAULT_NSD_TOLERANCE_MM,
    METRICS,
    aggregate,
    class_tolerances,
    dice_including_background,
    score_classes,
    to_json_safe,
)
from segexp.models.registry import ModelParams
from segexp.tracking.runs import ModelSource
from segexp.tracking.tracker import Tracker, tracked_run

log = logging.getLogger(__name__)


def check_model_fits(model: Any, num_classes: int, channels: int) -> None:
    """The model must output ``num_classes`` channels (1 for a sigmoid binary head) and take ``channels``."""
    outputs, inputs = model.output_shape[-1], model.input_shape[-1]
    expected = 1 if num_classes == 2 and outputs == 1 else num_classes
    if outputs != expected:
        raise EvaluationError(
            f"the model predicts {outputs} classes but the dataset has {num_classes} (dataset.class_names); "
            "evaluate with the dataset the model was trained on"
        )
    if inputs != channels:
        raise EvaluationError(f"the model takes {inputs}-channel images but the config reads {channels}-channel ones")


def slice_index(name: str, case_pattern: str) -> int:
    match = re.match(case_pattern, name)
    if match and "slice" in match.groupdict():
        return int(match.group("slice"))
    digits = re.findall(r"\d+", name)
    return int(digits[-1]) if digits else 0


def cases_of(pairs: Sequence[SlicePair], case_pattern: str) -> dict[str, list[SlicePair]]:
    """Slice pairs grouped by case, each case ordered by slice index."""
    grouped: dict[str, list[SlicePair]] = defaultdict(list)
    for pair in pairs:
        grouped[pair.case].append(pair)
    return {c: sorted(p, key=lambda q: slice_index(q.name, case_pattern)) for c, p in sorted(grouped.items())}


def case_spacing(root: Path, case: str) -> tuple[float, float, float] | None:
    """``(slice, row, column)`` spacing in mm of a case's stacked slices, from ``dataset.json`` (segexp-prepare):
    the spacing of the pixels as stored (``stored_spacing_mm``: after resampling to the target spacing, the
    canvas and ``size``) and between slices; a manifest from before those entries: the volume's spacing,
    scaled by ``size``."""
    try:
        manifest = json.loads((root / "dataset.json").read_text())
        info = manifest["cases"][case]
    except (OSError, ValueError, KeyError):
        return None
    if info.get("stored_spacing_mm") and info.get("through_spacing_mm"):
        row, col = info["stored_spacing_mm"]
        return float(info["through_spacing_mm"]), float(row), float(col)
    x, y, z = info["spacing_mm"]
    # display (row, column) axes of segexp.data.io.volumes.volume_slice, and the slicing axis
    planes = {"axial": (z, (y, x)), "coronal": (y, (z, x)), "sagittal": (x, (z, y))}
    through, (row, col) = planes[manifest["axis"]]
    if manifest.get("size"):
        shape = dict(zip("xyz", manifest["headers"][case]["shape"]))
        dims = {"axial": ("y", "x"), "coronal": ("z", "x"), "sagittal": ("z", "y")}[manifest["axis"]]
        row *= shape[dims[0]] / manifest["size"][0]
        col *= shape[dims[1]] / manifest["size"][1]
    return (float(through), float(row), float(col))


def _predict_case(
    model: Any,
    dataset: SliceDataset,
    pairs: list[SlicePair],
    size: tuple[int, int],
    channels: int,
    batch_size: int,
    flip_tta: bool,
    on_bad_file: str = "error",
    dtype: np.dtype | type | str = np.uint8,
) -> tuple[list[SlicePair], np.ndarray, np.ndarray, np.ndarray] | None:
    """(the slices read, images ``(S, H, W, C)``, truth, prediction) of one case, stacks ``(S, H, W)`` at the stored
    slice size (the images too, so the case viewer does not read them again). An
    unreadable slice stops with its error, or with ``on_bad_file="skip"`` is logged and left out (as the training
    loader does); None when no slice of the case could be read. ``dtype``: the stored images' (the dataset's
    encoding)."""
    kept, images, truths = [], [], []
    for pair in pairs:
        try:
            image, truth = read_image(pair.image, channels, dtype), dataset.decoder(pair.mask)
            check_same_size(pair, image, truth)
        except DataError as err:
            if on_bad_file != "skip":
                raise
            log.warning("left out of the scores (dataset.on_bad_file=skip): %s", err)
            continue
        kept.append(pair)
        images.append(image)
        truths.append(truth)
    if not kept:
        return None
    resized = np.stack([resize_pair(im, t, *size)[0] for im, t in zip(images, truths)])
    predicted = probabilities_to_classes(predict_batches(model, resized, batch_size=batch_size, flip_tta=flip_tta))
    preds = [resize_pair(p[..., None], p, *t.shape)[1] for p, t in zip(predicted, truths)]
    if len({t.shape for t in truths}) > 1:
        raise DataError(f"case {pairs[0].case}: slices of different sizes cannot be stacked into a volume")
    return kept, np.stack(images), np.stack(truths), np.stack(preds)


#: ``(case, truth, prediction, spacing)`` of each scored case: label stacks ``(S, H, W)``, spacing in mm or None.
CaseHook = Callable[[str, np.ndarray, np.ndarray, "tuple[float, float, float] | None"], object]


@dataclass
class Evaluation:
    """``summary``: the ``summary.json`` content; ``per_slice``: ``(case, slice name, {class: scores})`` rows;
    ``slices``: each case's slice count; ``voxel_mm3``: each case's voxel volume (None: no spacing known);
    ``viewer``: the cases encoded for the case viewer (when asked for)."""

    summary: dict[str, Any]
    per_slice: list[tuple[str, str, dict[str, Any]]]
    slices: dict[str, int] = field(default_factory=dict)
    voxel_mm3: dict[str, float | None] = field(default_factory=dict)
    viewer: list[ViewerCase] = field(default_factory=list)


def predict_cases(
    model: Any,
    dataset: SliceDataset,
    split: str,
    *,
    image_size: tuple[int, int],
    channels: int,
    case_pattern: str,
    batch_size: int = 8,
    flip_tta: bool = False,
    on_bad_file: str = "error",
) -> Iterator[tuple[str, list[SlicePair], np.ndarray, np.ndarray, np.ndarray]]:
    """``(case, its slice pairs read, images, truth, prediction)`` for every case of ``split``, stacks at
    the stored slice size, in case order (unreadable slices: ``on_bad_file``, as ``dataset.on_bad_file``)."""
    check_model_fits(model, len(dataset.class_names), channels)
    for case, pairs in cases_of(dataset.pairs[split], case_pattern).items():
        read = _predict_case(
            model, dataset, pairs, image_size, channels, batch_size, flip_tta, on_bad_file, dataset.encoding.dtype
        )
        if read is not None:
            yield case, *read


def evaluate_split(
    model: Any,
    dataset: SliceDataset,
    split: str,
    *,
    image_size: tuple[int, int],
    channels: int,
    case_pattern: str,
    batch_size: int = 8,
    flip_tta: bool = False,
    postprocessing: Postprocessing | None = None,
    on_bad_file: str = "error",
    viewer: bool = False,
    nsd_tolerance_mm: float | Mapping[str, float] = DEFAULT_NSD_TOLERANCE_MM,
    on_case: CaseHook | None = None,
) -> Evaluation:
    """Score every case (3D) and slice (2D) of ``split``, after ``postprocessing``'s rules when given; with
    ``viewer`` each case is also encoded for the case viewer (downscaled).
    ``nsd_tolerance_mm``: the NSD tolerance, one number or ``{class name: mm, default: mm}``
    (:func:`segexp.evaluation.scoring.class_tolerances`), in mm where the spacing is known, else pixels.
    ``on_case(case, truth, prediction, spacing)`` sees each case's label stacks as scored (a CV fold keeps them)."""
    num_classes = len(dataset.class_names)
    try:
        tolerances = class_tolerances(nsd_tolerance_mm, dataset.class_names)
    except (TypeError, ValueError) as err:
        raise EvaluationError(str(err)) from err
    per_case, per_slice, original = {}, [], []
    spacings, slices, viewer_cases = {}, {}, []
    for case, pairs, images, truth, pred in predict_cases(
        model,
        dataset,
        split,
        image_size=image_size,
        channels=channels,
        case_pattern=case_pattern,
        batch_size=batch_size,
        flip_tta=flip_tta,
        on_bad_file=on_bad_file,
    ):
        if postprocessing is not None:
            pred = postprocessing.apply(pred)
        spacing = case_spacing(dataset.root, case)
        spacings[case] = spacing
        if on_case is not None:
            on_case(case, truth, pred, spacing)
        slices[case] = len(pairs)
        per_case[case] = score_classes(truth, pred, num_classes, spacing, tolerances)
        original.append(dice_including_background(truth, pred, num_classes))
        for pair, t, p in zip(pairs, truth, pred):
            slice_scores = score_classes(t, p, num_classes, spacing[1:] if spacing else None, tolerances)
            per_slice.append((case, pair.name, slice_scores))
        if viewer:
            viewer_cases.append(encode_case(case, images, truth, pred))
    units = "mm" if spacings and all(s is not None for s in spacings.values()) else "px"
    fg_names = dataset.class_names[1:]
    summary = to_json_safe(
        {
            "split": split,
            "num_cases": len(per_case),
            "num_slices": len(per_slice),
            "class_names": dataset.class_names,
            "hd95_units": units,
            "nsd_tolerance": {fg_names[k - 1]: tol for k, tol in tolerances.items()},  # in hd95_units
            "conventions": {
                "background": "excluded from every score",
                "absent_in_both": "NaN (null): the class is not counted for that case/slice and left out of means",
                "absent_in_one": "Dice 0, NSD 0, HD95 and ASSD = the diagonal of the volume (worst case)",
                "distances": "HD95, ASSD and the NSD tolerance in hd95_units (mm with the dataset's spacing)",
                "aggregation": "per_case: 3D scores on each case's stacked slices; per_slice: 2D scores",
            },
            "postprocessing": (
                {n: r.describe() for n, r in postprocessing.active.items()} if postprocessing is not None else None
            ),
            "per_case": {
                case: {fg_names[k - 1]: s.as_dict() for k, s in scores.items()} for case, scores in per_case.items()
            },
            "mean": aggregate(list(per_case.values()), dataset.class_names),
            "per_slice_mean": aggregate([s for _, _, s in per_slice], dataset.class_names),
            "dice_incl_bg_original": {
                "mean": float(np.mean(original)) if original else None,
                "note": "the original tool's score: includes background, dominated by it; for comparison only",
            },
        }
    )
    rows = to_json_safe(
        [(case, name, {fg_names[k - 1]: s.as_dict() for k, s in scores.items()}) for case, name, scores in per_slice]
    )
    voxel_mm3 = {case: float(np.prod(s)) if s is not None else None for case, s in spacings.items()}
    return Evaluation(summary, rows, slices, voxel_mm3, viewer_cases)


#: The columns of the per-case table (:func:`case_table`).
CASE_COLUMNS = (
    "case", "class", "dice", "iou", "hd95", "hd95_units", "truth_volume", "pred_volume", "volume_units", "slices",
    "nsd", "assd",
)  # fmt: skip


def case_table(evaluation: Evaluation) -> dict[str, list[Any]]:
    """One row per case and foreground class (:data:`CASE_COLUMNS`), the lowest Dice first (classes absent from
    truth and prediction last): volumes in mm³ when every case's spacing is known, else in voxels."""
    summary = evaluation.summary
    in_mm = summary["hd95_units"] == "mm"
    rows = []
    for case, classes in summary["per_case"].items():
        voxel = evaluation.voxel_mm3.get(case) if in_mm else None
        scale = voxel if voxel is not None else 1.0
        for name, s in classes.items():
            rows.append(
                (
                    case,
                    name,
                    s["dice"],
                    s["iou"],
                    s["hd95"],
                    summary["hd95_units"],
                    s["n_truth"] * scale,
                    s["n_pred"] * scale,
                    "mm3" if voxel is not None else "voxels",
                    evaluation.slices.get(case, 0),
                    s.get("nsd"),
                    s.get("assd"),
                )
            )
    rows.sort(key=lambda r: (r[2] is None, r[2] if r[2] is not None else 0.0, r[0], r[1]))
    return {column: [r[i] for r in rows] for i, column in enumerate(CASE_COLUMNS)}


def choose_postprocessing(
    model: Any, dataset: SliceDataset, m: ModelParams, d: DatasetConfig, *, batch_size: int = 8, split: str = "valid"
) -> Postprocessing:
    """The postprocessing rules that raise ``split``'s mean Dice per class (:func:`postprocess.determine`), at the
    input size of the run's model section ``m``, reading the dataset as its section ``d`` says."""
    cases = [
        (truth, pred)
        for _, _, _, truth, pred in predict_cases(
            model,
            dataset,
            split,
            image_size=(m.image_height, m.image_width),
            channels=m.image_channels,
            case_pattern=d.case_pattern,
            batch_size=batch_size,
            on_bad_file=d.on_bad_file,
        )
    ]
    return determine(cases, dataset.class_names)


def write_reports(evaluation: Evaluation, out_dir: Path) -> list[Path]:
    """``summary.json``, ``evaluation.csv``, ``per_slice.csv`` and ``dice_per_class.png`` in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    summary, per_slice = evaluation.summary, evaluation.per_slice
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2))
    fields = ["case", "class", *METRICS, "tp", "fp", "fn", "n_truth", "n_pred"]
    with atomic_write_path(out_dir / "evaluation.csv") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        for case, classes in summary["per_case"].items():
            for name, s in classes.items():
                writer.writerow({"case": case, "class": name, **s})
    with atomic_write_path(out_dir / "per_slice.csv") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["case", "slice", *fields[1:]], extrasaction="ignore")
        writer.writeheader()
        for case, name, classes in per_slice:
            for cls, s in classes.items():
                writer.writerow({"case": case, "slice": name, "class": cls, **s})
    _bar_chart(summary, out_dir / "dice_per_class.png")
    return [out_dir / n for n in ("summary.json", "evaluation.csv", "per_slice.csv", "dice_per_class.png")]


def _bar_chart(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per_class = summary["mean"]["per_class"]
    names = list(per_class)
    means = [per_class[n]["dice"]["mean"] or 0.0 for n in names]
    stds = [per_class[n]["dice"]["std"] or 0.0 for n in names]
    fig, ax = plt.subplots(figsize=(max(4, 0.8 * len(names) + 2), 3.5))
    ax.bar(names, means, yerr=stds, capsize=3, color="tab:blue")
    fg = summary["mean"]["foreground_mean"]["dice"]
    if fg is not None:
        ax.axhline(fg, color="tab:red", linestyle="--", label=f"foreground mean {fg:.3f}")
        ax.legend(loc="lower right")
    ax.set_ylim(0, 1)
    ax.set_ylabel(f"Dice per case ({summary['split']}, n={summary['num_cases']})")
    ax.set_title("Dice per structure (background excluded)")
    plt.setp(ax.get_xticklabels(), rotation=30, ha="right")
    fig.tight_layout()
    with atomic_write_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)


def log_summary(
    tracker: Tracker,
    summary: dict[str, Any],
    files: Sequence[Path],
    prefix: str = "test",
    artifact_path: str = "evaluation",
) -> None:
    """MLflow metrics ``<prefix>/<metric>/<class>``, ``<prefix>/<metric>_fg_mean`` and the report files (under
    ``artifact_path``)."""
    metrics: dict[str, float] = {}
    for name, stats in summary["mean"]["per_class"].items():
        for metric in METRICS:
            value = stats[metric]["mean"]
            if value is not None:
                metrics[f"{prefix}/{metric}/{name}"] = value
    for metric, value in summary["mean"]["foreground_mean"].items():
        if value is not None:
            metrics[f"{prefix}/{metric}_fg_mean"] = value
    if summary["dice_incl_bg_original"]["mean"] is not None:
        metrics[f"{prefix}/dice_incl_bg_original"] = summary["dice_incl_bg_original"]["mean"]
    tracker.log_metrics(metrics, step=0)
    for path in files:
        tracker.log_artifact(path, artifact_path)


def score_and_log(
    model: Any,
    dataset: SliceDataset,
    split: str,
    m: ModelParams,
    d: DatasetConfig,
    out_dir: Path,
    tracker: Tracker,
    *,
    batch_size: int = 8,
    flip_tta: bool = False,
    postprocessing: Postprocessing | None = None,
    nsd_tolerance_mm: float | Mapping[str, float] = DEFAULT_NSD_TOLERANCE_MM,
    on_case: CaseHook | None = None,
    prefix: str | None = None,
) -> dict[str, Any]:
    """Score ``split`` at the input size of the model section ``m``, write the reports in ``out_dir`` and log them
    (:func:`log_summary`, metrics ``<split>/...``); returns the summary. The one path from a model to a split's
    logged scores, after training and in ``segexp-evaluate``. In a tracked run also the table of every case and
    class (``evaluation/<split>/cases.json``, :func:`case_table`) and the case viewer (``case_viewer.html`` in
    ``out_dir`` and ``evaluation/<split>/``). ``prefix`` (None: ``split``): the metrics are ``<prefix>/...``
    instead, and every file goes under ``evaluation/<prefix>/`` (a fold ensemble's ``ensemble_test``, beside
    the folds' scores in the CV's parent run)."""
    evaluation = evaluate_split(
        model,
        dataset,
        split,
        image_size=(m.image_height, m.image_width),
        channels=m.image_channels,
        case_pattern=d.case_pattern,
        batch_size=batch_size,
        flip_tta=flip_tta,
        postprocessing=postprocessing,
        on_bad_file=d.on_bad_file,
        viewer=tracker.enabled,
        nsd_tolerance_mm=nsd_tolerance_mm,
        on_case=on_case,
    )
    artifact_path = "evaluation" if prefix is None else f"evaluation/{prefix}"
    log_summary(tracker, evaluation.summary, write_reports(evaluation, out_dir), prefix or split, artifact_path)
    if tracker.enabled:
        tracker.log_table(case_table(evaluation), f"evaluation/{prefix or split}/cases.json")
        tracker.log_artifact(write_viewer(evaluation, d, out_dir), f"evaluation/{prefix or split}")
    return evaluation.summary


def write_viewer(evaluation: Evaluation, d: DatasetConfig, out_dir: Path) -> Path:
    """The case viewer of ``evaluation`` (:mod:`segexp.evaluation.case_viewer`) as ``out_dir/case_viewer.html``,
    in the class colours of the dataset section ``d``."""
    summary = evaluation.summary
    page = viewer_page(
        evaluation.viewer,
        summary["per_case"],
        summary["class_names"],
        class_colours(summary["class_names"], d.rgb_map),
        title=f"{summary['split']} split: {summary['num_cases']} cases",
        hd95_units=summary["hd95_units"],
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / VIEWER_FILE, page)
    return out_dir / VIEWER_FILE


def evaluate_run(
    run: ModelSource,
    out_dir: Path,
    *,
    split: str = "test",
    batch_size: int = 8,
    flip_tta: bool = False,
    dataset_root: str | None = None,
    log_to_run: bool = True,
    precision: str = "fp32",
    postprocess: str = "auto",
    nsd_tolerance_mm: float | Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """Evaluate a finished training run on ``split`` computing in ``precision`` (resolved: fp32, bf16, fp16),
    after the run's postprocessing rules (``postprocess`` auto) or without (none); log to its MLflow run
    when it has one. ``nsd_tolerance_mm``: the NSD tolerance (None: the run's ``training.nsd_tolerance_mm``,
    the default for a run trained before that key).

    A fold ensemble (:class:`~segexp.evaluation.ensemble.EnsembleSource`) is scored with its cross-validation's
    rules and the first fold's config, and logged to the CV's parent run as ``ensemble_<split>/...`` (files
    under ``evaluation/ensemble_<split>/``, the folds in the tag ``ensemble_<split>.folds``)."""
    cfg = run.config
    if dataset_root is not None:
        cfg.dataset.root = dataset_root
    if "nsd_tolerance_mm" not in cfg.training:  # a run trained before the key
        with open_dict(cfg):
            cfg.training.nsd_tolerance_mm = DEFAULT_NSD_TOLERANCE_MM
    cfg = validate_train_config(cfg)
    dataset = open_dataset(cfg.dataset, cfg.model.num_classes)
    if not dataset.pairs.get(split):
        raise DataError(f"dataset split {split!r} under {dataset.root} has no slices to evaluate")
    postprocessing = for_run(run, postprocess)
    if postprocessing is not None and split == "valid" and postprocessing.active:
        log.warning("the postprocessing rules were chosen on the valid split: its scores after them are optimistic")
    ensemble = run if isinstance(run, EnsembleSource) else None
    if ensemble is not None and split != "test":
        log.warning(
            "every case of the %s split was training data of all but at most one fold: the ensemble's scores "
            "on it are optimistic",
            split,
        )
    model = run.load_model(precision)
    resume = run.run_id if log_to_run else None
    with tracked_run(
        resume is not None,
        uri=run.tracking_uri or "",
        experiment="",
        artifact_location=None,
        run_name="",
        tags={},
        description="",
        resume_run_id=resume,
    ) as tracker:
        summary = score_and_log(
            model,
            dataset,
            split,
            cfg.model,
            cfg.dataset,
            out_dir,
            tracker,
            batch_size=batch_size,
            flip_tta=flip_tta,
            postprocessing=postprocessing,
            nsd_tolerance_mm=cfg.training.nsd_tolerance_mm if nsd_tolerance_mm is None else nsd_tolerance_mm,
            prefix=None if ensemble is None else f"ensemble_{split}",
        )
        if ensemble is not None:
            tracker.set_tags({f"ensemble_{split}.folds": ",".join(str(f.fold) for f in ensemble.folds)})
    _log_table(summary)
    return summary


def _log_table(summary: dict[str, Any]) -> None:
    units = summary["hd95_units"]
    lines = [f"{'class':<16}{'Dice':>8}{'IoU':>8}{'HD95 ' + units:>11}{'NSD':>8}{'ASSD ' + units:>11}{'n':>5}"]
    for name, s in summary["mean"]["per_class"].items():
        fmt = lambda v: "   -" if v is None else f"{v:.3f}"  # noqa: E731
        lines.append(
            f"{name:<16}{fmt(s['dice']['mean']):>8}{fmt(s['iou']['mean']):>8}{fmt(s['hd95']['mean']):>11}"
            f"{fmt(s.get('nsd', {}).get('mean')):>8}{fmt(s.get('assd', {}).get('mean')):>11}{s['dice']['n']:>5}"
        )
    fg = summary["mean"]["foreground_mean"]
    lines.append(f"{'foreground mean':<16}{fg['dice'] or float('nan'):>8.3f}")
    lines.append(f"(original, incl. background, for comparison only: {summary['dice_incl_bg_original']['mean']:.3f})")
    log.info("evaluation on %s (%d cases):\n%s", summary["split"], summary["num_cases"], "\n".join(lines))
