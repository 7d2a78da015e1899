"""``segexp-prepare``: CT volumes (NIfTI, MHA/MHD, NRRD, DICOM series folders) -> the slice folders that
``segexp-train`` reads.

Steps, each checked before anything is written to ``out_dir``:

1. pair ``<case>_image`` / ``<case>_label`` volumes by case id (``volumes.pattern``; any format,
   :mod:`segexp.data.io.volume_files`, a DICOM series checked as one);
2. read every header: image/label shape and affine must agree;
3. split the cases by patient (ratios, explicit lists, or k-fold);
4. the dataset-wide settings from the non-test cases (:mod:`segexp.data.prepare.normalisation`): the
   foreground statistics of ``window=ct_zscore``, the ``spacing=auto`` target and the ``canvas=auto`` shape;
5. per volume, in parallel worker processes (memory: one volume per worker):
   reorient to RAS, map label values to classes (unknown or non-integer values are
   errors naming the case), map the intensities to the stored pixels (the same mapping for every slice:
   :func:`~segexp.data.io.intensity.normalise_volume`; uint8 windows, uint16 z-scores, stacked windows as
   channels), keep all foreground slices plus a seeded ``empty_fraction`` of the empty ones,
   resample in-plane to the target spacing, pad/crop to the canvas, resize to ``size``
   (:class:`~segexp.data.io.resample.SliceGrid`), write ``<split>/{images,masks}/<case>_<slice>.png``
   (an image of other than one or three channels: ``.npy``, :func:`~segexp.data.io.slices.write_image`);
6. write ``dataset.json`` (with the ``storage`` the model's input layer decodes, and each case's original
   and stored slice shape and spacing) and move the staged folder into place.

Re-running on the same inputs and settings is a no-op; a different existing
dataset is replaced only with ``overwrite=true``, and a folder that segexp-prepare
did not write is never replaced.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import sys
import zlib
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import cv2
import numpy as np
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

import segexp
from segexp.config.commands import validate_prepare_config
from segexp.config.schema import to_dict
from segexp.core.errors import ConfigError, PrepareError
from segexp.core.files import staging_folder
from segexp.data.io.context import context_stack
from segexp.data.io.intensity import normalise_volume, stacked_windows, window_encoding
from segexp.data.io.resample import canvas_fill, slice_grid
from segexp.data.io.rgb_map import encode_rgb_mask
from segexp.data.io.slices import image_suffix, write_image
from segexp.data.io.splits import fold_table, split_cases
from segexp.data.io.volumes import (
    SLICE_AXES,
    CaseHeader,
    VolumeCase,
    VolumeError,
    find_volume_cases,
    load_case,
    num_slices,
    read_header,
    sha256_file,
    slice_pixel_spacing,
    slice_shape,
    volume_slice,
)
from segexp.data.phantom import ensure_phantom_volumes
from segexp.data.prepare.normalisation import foreground_statistics, median_canvas, target_spacing

log = logging.getLogger(__name__)

MANIFEST = "dataset.json"
GENERATOR = "segexp-prepare"
#: In-plane orientation of the written slices (see segexp.data.io.volumes.volume_slice).
IN_PLANE = {
    "axial": "rows anterior -> posterior, columns patient right -> left (radiological view)",
    "coronal": "rows superior -> inferior, columns patient right -> left",
    "sagittal": "rows superior -> inferior, columns anterior -> posterior",
}


@dataclass(frozen=True)
class SliceSettings:
    """Everything a worker needs to turn one volume into slices (picklable)."""

    axis: str
    size: tuple[int, int] | None
    empty_fraction: float
    seed: int
    mask_format: str
    colours: tuple[tuple[int, ...], ...]  # (r, g, b) per class
    label_lut: tuple[int, ...]  # label value -> class index, 255 = not in the class table
    window: dict[str, Any]  # dataset.json's window: normalise_volume's mapping, statistics included
    spacing: tuple[float, float] | None = None  # target in-plane (row, col) mm, None: no resampling
    canvas: tuple[int, int] | None = None  # (rows, cols) to pad/crop the resampled slices to
    context_slices: int = 0  # 2.5D: neighbours per side stacked as channels (segexp.data.io.context)


@dataclass
class CaseReport:
    """What one volume contributed: shape, spacing, orientation, slices kept, source checksums, and its slices'
    grid: ``slice_shape`` / ``slice_spacing_mm`` (rows, cols) as cut from the volume, ``stored_shape`` /
    ``stored_spacing_mm`` as written (resampled, canvas, size), ``through_spacing_mm`` between slices."""

    case: str
    split: str
    shape: list[int]
    spacing_mm: list[float]
    orientation: str
    slices_total: int
    slices_foreground: int
    slices_empty_kept: int
    window: list[Any]  # [level, width] applied (HU); one per channel for stacked windows
    image: dict[str, str]
    label: dict[str, str]
    slice_shape: list[int]
    slice_spacing_mm: list[float]
    stored_shape: list[int]
    stored_spacing_mm: list[float]
    through_spacing_mm: float


def class_table(classes: Mapping[str, Any]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Class names, colours ``(C, 3) uint8`` and a 256-entry label-value -> class-index lookup (255 = unknown)."""
    names = list(classes)
    colours = np.asarray([list(c["rgb"]) for c in classes.values()], np.uint8)
    lut = np.full(256, 255, np.uint8)
    for index, c in enumerate(classes.values()):
        lut[list(c["labels"])] = index
    return names, colours, lut


def empty_slices_to_keep(case: str, empty: list[int], fraction: float, seed: int) -> list[int]:
    """A seeded ``round(fraction * len(empty))`` of the empty slice indices, stable per (seed, case)."""
    count = int(round(fraction * len(empty)))
    if count == 0:
        return []
    rng = np.random.default_rng([seed, zlib.crc32(case.encode())])
    return sorted(int(i) for i in rng.choice(empty, size=count, replace=False))


def process_case(case: VolumeCase, split: str, settings: SliceSettings, staging: Path) -> CaseReport:
    """Write the kept slices of one volume under ``staging/<split>``; raises VolumeError naming the case."""
    lut = np.asarray(settings.label_lut, np.uint8)
    allowed = [int(v) for v in np.flatnonzero(lut != 255)]
    loaded = load_case(case, allowed_labels=allowed, image_dtype=None)  # as stored: as segexp-infer reads it
    assert loaded.label is not None  # prepare lists its cases with labels required
    classes = lut[loaded.label]
    try:
        normalised = normalise_volume(loaded.image, settings.window)
    except ValueError as err:
        raise VolumeError(f"case {case.case}: {err}") from err
    stored = normalised.stored
    total = num_slices(classes, settings.axis)
    foreground = [i for i in range(total) if volume_slice(classes, settings.axis, i).any()]
    empty = sorted(set(range(total)) - set(foreground))
    kept_empty = empty_slices_to_keep(case.case, empty, settings.empty_fraction, settings.seed)
    digits = max(3, len(str(total - 1)))
    spacing = slice_pixel_spacing(loaded.spacing, settings.axis)
    shape = slice_shape(classes.shape, settings.axis)
    grid = slice_grid(shape, spacing, settings.spacing, settings.canvas, settings.size)
    k = settings.context_slices
    fill = canvas_fill(stored, 2 * k + 1)
    suffix = image_suffix((2 * k + 1) * (1 if stored.ndim == 3 else stored.shape[3]))
    images_dir, masks_dir = staging / split / "images", staging / split / "masks"
    for index in sorted(foreground + kept_empty):
        img = context_stack(lambda j: volume_slice(stored, settings.axis, j), index, total, k)
        img = grid.image(img, fill)
        mask = grid.labels(volume_slice(classes, settings.axis, index))
        name = f"{case.case}_{index:0{digits}d}"
        write_image(images_dir / f"{name}{suffix}", img)
        rgb = encode_rgb_mask(mask, settings.colours)[..., ::-1] if settings.mask_format == "rgb" else mask
        _imwrite(masks_dir / f"{name}.png", rgb)
    windows = [[float(level), float(width)] for level, width in normalised.windows]
    return CaseReport(
        case=case.case,
        split=split,
        shape=[int(v) for v in loaded.original_shape],
        spacing_mm=[round(float(v), 4) for v in loaded.spacing],
        orientation=loaded.original_orientation,
        slices_total=total,
        slices_foreground=len(foreground),
        slices_empty_kept=len(kept_empty),
        window=windows[0] if len(windows) == 1 else windows,
        image={"file": case.image.name, "sha256": sha256_file(case.image)},
        label={"file": _label_file(case).name, "sha256": sha256_file(_label_file(case))},
        slice_shape=list(grid.shape),
        slice_spacing_mm=[float(v) for v in spacing],
        stored_shape=list(grid.stored),
        stored_spacing_mm=[float(v) for v in grid.pixel_spacing(spacing)],
        through_spacing_mm=float(loaded.spacing[SLICE_AXES[settings.axis]]),
    )


def _label_file(case: VolumeCase) -> Path:
    """The label file of ``case``: :func:`prepare` lists its cases with labels required, so every case has one."""
    assert case.label is not None, f"case {case.case}: no label file"
    return case.label


def _imwrite(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), np.ascontiguousarray(array)):
        raise OSError(f"{path}: could not write PNG")


def _plain(value: Any) -> Any:
    """A config node as plain Python values; a leaf (None, a number, a string) as it is."""
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def prepared_window(cfg: DictConfig) -> dict[str, Any]:
    """``dataset.json``'s ``window``: the ``window`` config, or a ``stack`` of ``windows`` (ConfigError naming
    ``windows[i]`` for an unknown preset); the foreground statistics are added by :func:`dataset_settings`."""
    if cfg.windows is None:
        return cast(dict[str, Any], OmegaConf.to_container(cfg.window, enum_to_str=True))
    try:
        windows = stacked_windows(_plain(cfg.windows))
    except ValueError as err:
        raise ConfigError(str(err)) from err
    return {"name": "+".join(w["name"] for w in windows), "mode": "stack", "windows": windows}


def dataset_settings(
    cfg: DictConfig, cases: list[VolumeCase], headers: Mapping[str, CaseHeader], splits: Mapping[str, list[str]]
) -> SliceSettings:
    """The settings every worker applies: the class table, the window (with ``ct_zscore``'s foreground
    statistics), the target spacing and canvas, measured on the non-test cases
    (:mod:`segexp.data.prepare.normalisation`)."""
    names, colours, lut = class_table(cfg.volumes.classes)
    learn = set(splits["train"]) | set(splits["valid"])
    learn_cases = [c for c in cases if c.case in learn]
    learn_headers = [headers[c.case] for c in learn_cases]
    window = prepared_window(cfg)
    if window["mode"] == "ct_zscore":
        window["foreground"] = foreground_statistics(
            learn_cases,
            tuple(int(v) for v in lut),
            float(window["low_percentile"]),
            float(window["high_percentile"]),
            seed=cfg.seed,
            workers=cfg.workers,
        )
    spacing = target_spacing(_plain(cfg.spacing), learn_headers, cfg.axis)
    canvas_cfg = _plain(cfg.canvas)
    canvas = None
    if spacing is not None and canvas_cfg == "auto":
        canvas = median_canvas(learn_headers, cfg.axis, spacing)
    elif canvas_cfg is not None:
        canvas = (int(canvas_cfg[0]), int(canvas_cfg[1]))
    return SliceSettings(
        axis=cfg.axis,
        size=tuple(cfg.size) if cfg.size is not None else None,
        empty_fraction=cfg.empty_fraction,
        seed=cfg.seed,
        mask_format=cfg.mask_format,
        colours=tuple(tuple(int(v) for v in c) for c in colours),
        label_lut=tuple(int(v) for v in lut),
        window=window,
        spacing=spacing,
        canvas=canvas,
        context_slices=int(cfg.context_slices),
    )


def storage_entry(window: Mapping[str, Any], context_slices: int = 0) -> dict[str, Any]:
    """``dataset.json``'s ``storage``: the stored dtype, channels (the window's, times ``2k + 1`` with
    ``context_slices`` k), the 2.5D context, file format and the model input's decoding
    ``value = stored * scale + offset`` (:func:`~segexp.data.io.intensity.window_encoding`)."""
    channels = (len(window["windows"]) if window["mode"] == "stack" else 1) * (2 * context_slices + 1)
    return {
        **window_encoding(window).to_dict(),
        "channels": channels,
        "context_slices": context_slices,
        "format": image_suffix(channels).lstrip("."),
        "formula": "model input = stored * scale + offset",
    }


def fingerprint(cfg: DictConfig, cases: list[VolumeCase]) -> str:
    """SHA-256 over the settings that shape the output and the source files' checksums."""
    settings = to_dict(cfg, resolve=True)
    for key in ("workers", "overwrite", "tracking", "paths", "out_dir", "task_name"):
        settings.pop(key, None)
    settings["volumes"].pop("source", None)
    sources = {c.case: [sha256_file(c.image), sha256_file(_label_file(c))] for c in cases}
    blob = json.dumps({"settings": settings, "sources": sources, "generator": GENERATOR}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _existing_manifest(out_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((out_dir / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def check_out_dir(out_dir: Path, print_: str, overwrite: bool) -> bool:
    """True when ``out_dir`` already holds this exact dataset; raises PrepareError when it must not be touched."""
    if not out_dir.exists() or not any(out_dir.iterdir()):
        return False
    manifest = _existing_manifest(out_dir)
    if manifest is None or manifest.get("generator") != GENERATOR:
        raise PrepareError(
            f"out_dir: {out_dir} is not empty and was not written by segexp-prepare (no {MANIFEST}); "
            "choose another out_dir — segexp never replaces files it did not write"
        )
    if manifest.get("fingerprint") == print_:
        return True
    if not overwrite:
        raise PrepareError(
            f"out_dir: {out_dir} holds a different dataset (other inputs or settings); "
            "set overwrite=true to replace it, or choose another out_dir"
        )
    return False


def _split(cfg: DictConfig, case_ids: list[str]) -> tuple[dict[str, list[str]], dict[str, int] | None]:
    s = cfg.split
    explicit = to_dict(s.cases, resolve=False) if s.cases is not None else None
    ratios = None if explicit is not None else dict(s.ratios)
    splits = split_cases(case_ids, ratios=ratios, explicit=explicit, seed=s.seed, folds=s.folds, fold=s.fold)
    folds = None
    if s.folds is not None:
        folds = fold_table(case_ids, folds=s.folds, seed=s.seed, test=splits["test"])
    return splits, folds


def prepare(cfg: DictConfig) -> Path:
    """Validate, split by patient, slice every volume (in parallel) and write ``dataset.json``.

    Returns ``out_dir``. Every input problem raises before ``out_dir`` is touched.
    """
    cfg = validate_prepare_config(cfg)
    prepared_window(cfg)  # the window presets of `windows` exist (ConfigError naming windows[i])
    v = cfg.volumes
    source = Path(v.source).expanduser()
    ensure_phantom_volumes(source, to_dict(v.phantom, resolve=False) if v.phantom is not None else None)
    cases = find_volume_cases(source, v.pattern)
    headers = {c.case: read_header(c) for c in cases}
    splits, folds = _split(cfg, [c.case for c in cases])
    out_dir = Path(cfg.out_dir).expanduser().resolve()
    print_ = fingerprint(cfg, cases)
    if check_out_dir(out_dir, print_, cfg.overwrite):
        log.info("%s is up to date (same inputs and settings): nothing to do", out_dir)
        return out_dir

    settings = dataset_settings(cfg, cases, headers, splits)
    split_of = {case: split for split, ids in splits.items() for case in ids}
    with staging_folder(out_dir) as staging:
        reports = _run_cases(cases, split_of, settings, staging, cfg.workers)
        names, colours, _ = class_table(v.classes)
        manifest = {
            "generator": GENERATOR,
            "version": segexp.__version__,
            "fingerprint": print_,
            "name": v.name,
            "class_names": names,
            "classes": [
                {"index": i, "name": n, "labels": list(v.classes[n].labels), "rgb": colours[i].tolist()}
                for i, n in enumerate(names)
            ],
            "rgb_map": {n: colours[i].tolist() for i, n in enumerate(names)},
            "mask_format": cfg.mask_format,
            "splits": splits,
            "folds": folds,
            "fold": cfg.split.fold,
            "axis": cfg.axis,
            "orientation": {"canonical": "RAS", "in_plane": IN_PLANE[cfg.axis]},
            "window": settings.window,
            "storage": storage_entry(settings.window, settings.context_slices),
            "spacing": {
                "setting": _plain(cfg.spacing),
                "target_mm": list(settings.spacing) if settings.spacing is not None else None,
                "canvas": list(settings.canvas) if settings.canvas is not None else None,
                "measured_on": "the non-test cases (train and valid)",
            },
            "size": list(cfg.size) if cfg.size is not None else None,
            "empty_fraction": cfg.empty_fraction,
            "seed": cfg.seed,
            "source": str(source),
            "cases": {r.case: {k: val for k, val in asdict(r).items() if k != "case"} for r in reports},
            "headers": {case: {"shape": list(h.shape), "orientation": h.orientation} for case, h in headers.items()},
        }
        for split in ("train", "valid", "test"):
            (staging / split / "images").mkdir(parents=True, exist_ok=True)
            (staging / split / "masks").mkdir(parents=True, exist_ok=True)
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2))
        if out_dir.exists():
            shutil.rmtree(out_dir)  # a segexp-prepare dataset, replaced on request (checked above)
        staging.rename(out_dir)
    kept = sum(r.slices_foreground + r.slices_empty_kept for r in reports)
    log.info(
        "wrote %d slices of %d cases to %s (%s)",
        kept,
        len(reports),
        out_dir,
        ", ".join(f"{k}: {len(ids)} cases" for k, ids in splits.items()),
    )
    return out_dir


def _run_cases(
    cases: list[VolumeCase], split_of: Mapping[str, str], settings: SliceSettings, staging: Path, workers: int
) -> list[CaseReport]:
    """Process every case (in ``workers`` processes); all failures are collected and raised together."""
    reports: list[CaseReport] = []
    errors: list[str] = []
    progress = tqdm(total=len(cases), desc="volumes", unit="vol", file=sys.stderr, disable=None)
    if workers <= 1:
        for case in cases:
            try:
                reports.append(process_case(case, split_of[case.case], settings, staging))
            except VolumeError as err:
                errors.append(str(err))
            progress.update()
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = {pool.submit(process_case, c, split_of[c.case], settings, staging): c for c in cases}
            for future in as_completed(futures):
                try:
                    reports.append(future.result())
                except VolumeError as err:
                    errors.append(str(err))
                progress.update()
    progress.close()
    if errors:
        raise VolumeError(
            f"{len(errors)} of {len(cases)} cases failed; nothing was written:\n  " + "\n  ".join(sorted(errors))
        )
    return sorted(reports, key=lambda r: r.case)
