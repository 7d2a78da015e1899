"""``segexp-infer``: predict PNG/JPG slices or whole CT volumes (NIfTI, MHA/MHD, NRRD, DICOM series) with a
trained run.

* PNG/JPG: each image is resized to the model input (as in training) or, with
  ``large_images=tile``, predicted by sliding window at its own size; writes
  class-index masks, colour masks through the run's rgb_map and overlays.
* Volumes, any format of :mod:`segexp.data.io.volume_files` (a folder of DICOM files is one series; a
  folder of PNG/JPG stays a slice folder): the volume is reoriented to RAS, its intensities mapped exactly as
  the training data's (``dataset.json`` of the run's dataset, or ``window=...``:
  :func:`~segexp.data.io.intensity.normalise_volume`), every slice along the training axis resampled to the
  training's in-plane spacing, canvas and size (:class:`~segexp.data.io.resample.SliceGrid`, as segexp-prepare
  did) and predicted in batches; the probabilities go back linearly onto the volume's own slices before the
  argmax, and the label volume is written back in the input's own orientation and format: **same shape
  and geometry (origin, spacing, direction) as the input**, so it overlays the CT in 3D Slicer or ITK-SNAP:
  ``<name>_pred.nii.gz`` / ``.mha`` / ``.nrrd`` (a DICOM input: NIfTI, or ``output_format``). Plus an overlay
  montage PNG.
* ``save_probabilities``: also the model's probabilities (before postprocessing), for ensembling
  across configurations later: ``probabilities/<stem>.npz`` per image, ``<name>_probabilities.nii.gz``
  per volume (NIfTI whatever the input's format: :func:`probability_image`; :func:`write_png_probabilities`).

The predictor is one trained run or the fold ensemble of a cross-validation
(:mod:`segexp.evaluation.ensemble`): anything with :class:`~segexp.tracking.runs.ModelSource`'s surface.

One unreadable or unsuitable file is reported and skipped; finished outputs stay,
and the summary at the end lists what failed (exit status 1 when anything did).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import nibabel as nib
import numpy as np
from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform

from segexp.core.errors import InferenceInputError
from segexp.core.files import atomic_write_path
from segexp.data.io.context import context_stack
from segexp.data.io.dicom_seg import write_dicom_seg
from segexp.data.io.intensity import normalise_volume
from segexp.data.io.resample import canvas_fill, slice_grid
from segexp.data.io.rgb_map import class_colours, encode_rgb_mask
from segexp.data.io.slices import IMAGE_SUFFIXES, DataError, case_id, read_image, resize_image
from segexp.data.io.volume_files import (
    VOLUME_SUFFIXES,
    VolumeFile,
    is_dicom_file,
    is_dicom_folder,
    nifti_like,
    save_nifti,
    volume_stem,
    write_label_volume,
)
from segexp.data.io.volumes import (
    VolumeCase,
    VolumeError,
    load_case,
    num_slices,
    slice_pixel_spacing,
    stack_slices,
    volume_slice,
)
from segexp.evaluation.inference import (
    predict_batches,
    predict_images,
    probabilities_to_classes,
)
from segexp.evaluation.postprocess import Postprocessing, for_run
from segexp.evaluation.reports import check_model_fits, slice_index
from segexp.evaluation.viz import (
    hstack_panels,
    overlay_mask,
    save_png,
    vstack_rows,
)
from segexp.tracking.runs import ModelSource

log = logging.getLogger(__name__)

#: The folder of the PNG inputs' probabilities (one ``<stem>.npz`` each, the array under the key ``probabilities``).
PROBABILITIES_DIR = "probabilities"
#: NIfTI probabilities are stored as uint8 ``q = round(255 p)`` with ``scl_slope = 1/255`` (readers get ``q/255``).
PROBABILITY_LEVELS = 255


def is_volume(path: Path) -> bool:
    """A volume input: a volume file (NIfTI, MHA/MHD, NRRD), a DICOM file or a folder of DICOM files."""
    if path.is_dir():
        return is_dicom_folder(path)
    return path.name.lower().endswith(tuple(VOLUME_SUFFIXES)) or is_dicom_file(path)


def list_inputs(source: Path) -> list[Path]:
    """The inputs at ``source``: a file; a folder of DICOM files (one series); or a folder's PNG/JPG and volume
    files and its subfolders of DICOM files (one series each), not recursive."""
    if source.is_file():
        return [source]
    if not source.is_dir():
        raise DataError(f"input: {source} does not exist")
    entries = [p for p in sorted(source.iterdir()) if not p.name.startswith(".")]
    if any(p.is_file() and is_dicom_file(p) for p in entries):
        others = [p.name for p in entries if p.is_file() and (p.suffix.lower() in IMAGE_SUFFIXES or is_volume(p))]
        others = [name for name in others if not is_dicom_file(source / name)]
        if others:
            raise DataError(
                f"input: {source} holds DICOM files (one series) and other images or volumes "
                f"({', '.join(others[:5])}); keep a DICOM series in a folder of its own"
            )
        return [source]
    files = [p for p in entries if (p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES) or is_volume(p)]
    if not files:
        raise DataError(f"input: no PNG/JPG files, volume files (NIfTI, MHA/MHD, NRRD) or DICOM folders in {source}")
    return files


def resize_probabilities(probs: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize ``(h, w, K)`` probabilities linearly (channel-wise) to ``(height, width, K)``."""
    if probs.shape[:2] == (height, width):
        return probs
    out = cv2.resize(probs, (width, height), interpolation=cv2.INTER_LINEAR)
    return out.reshape(height, width, probs.shape[-1])


def _model_size(model: Any) -> tuple[int, int]:
    return int(model.input_shape[1]), int(model.input_shape[2])


def model_input_dtype(model: Any) -> np.dtype:
    """The stored dtype the model's input takes (uint8, or uint16 for 16-bit slices); uint8 for a stand-in
    without Keras inputs."""
    inputs = getattr(model, "inputs", None)
    return np.dtype(str(inputs[0].dtype)) if inputs else np.dtype(np.uint8)


def predict_png_files(
    model: Any,
    paths: Sequence[Path],
    out_dir: Path,
    colours: np.ndarray,
    *,
    batch_size: int,
    flip_tta: bool,
    large_images: str,
    overlap: float,
    chunk: int = 64,
    postprocessing: Postprocessing | None = None,
    case_pattern: str = r"^(?P<case>.+)$",
    save_probabilities: bool = False,
) -> list[str]:
    """Predict image files (``chunk`` at a time) and write masks, colour masks and overlays; returns the failures.

    With ``postprocessing``, its rules act on each case's slices stacked in slice order (the case and slice
    number from the file name by ``case_pattern``, as in training; a name it does not match is its own case).
    With ``save_probabilities`` also each image's probabilities (:func:`write_png_probabilities`)."""
    failures: list[str] = []
    rules = postprocessing if postprocessing is not None and postprocessing.active else None
    masks: dict[Path, np.ndarray] = {}  # only with postprocessing: a case's slices may span chunks
    for start in range(0, len(paths), chunk):
        predicted, bad = _png_probabilities(
            model,
            paths[start : start + chunk],
            batch_size=batch_size,
            flip_tta=flip_tta,
            large_images=large_images,
            overlap=overlap,
        )
        failures += bad
        if save_probabilities:
            for path, (_, prob) in predicted.items():
                write_png_probabilities(out_dir / PROBABILITIES_DIR / f"{path.stem}.npz", prob)
        found = {path: (image, probabilities_to_classes(prob)) for path, (image, prob) in predicted.items()}
        del predicted
        if rules is None:
            for path, (image, mask) in found.items():
                _write_png_outputs(path, image, mask, out_dir, colours)
            continue
        masks.update((path, mask) for path, (_, mask) in found.items())
    if rules is not None:
        channels = int(model.input_shape[-1])
        for path, mask in _postprocess_by_case(masks, rules, case_pattern).items():
            # read again for its overlay: holding every image until the last chunk would cost their memory
            _write_png_outputs(path, read_image(path, channels, model_input_dtype(model)), mask, out_dir, colours)
    return failures


def write_png_probabilities(path: Path, probs: np.ndarray) -> Path:
    """``probs`` ``(H, W, K)`` (one channel for a sigmoid head) as float16 under the key ``probabilities`` of the
    compressed ``.npz`` at ``path`` (as nnU-Net's ``--save_probabilities``), written atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write_path(path) as tmp, open(tmp, "wb") as f:  # a file object: np.savez adds no suffix to it
        np.savez_compressed(f, probabilities=np.asarray(probs, np.float16))
    return path


def _write_png_outputs(path: Path, image: np.ndarray, mask: np.ndarray, out_dir: Path, colours: np.ndarray) -> None:
    """``masks/``, ``colour/`` and ``overlays/`` PNGs of one predicted file, each written atomically."""
    for sub, array in (
        ("masks", mask),
        ("colour", encode_rgb_mask(mask, colours)[..., ::-1]),
        ("overlays", overlay_mask(image, mask, colours)[..., ::-1]),
    ):
        (out_dir / sub).mkdir(parents=True, exist_ok=True)
        with atomic_write_path(out_dir / sub / f"{path.stem}.png") as tmp:
            if not cv2.imwrite(str(tmp), array):
                raise OSError(f"could not write {out_dir / sub / f'{path.stem}.png'}")


def _postprocess_by_case(
    masks: dict[Path, np.ndarray], postprocessing: Postprocessing, case_pattern: str
) -> dict[Path, np.ndarray]:
    cases: dict[str, list[Path]] = {}
    for path in masks:
        cases.setdefault(case_id(path.stem, case_pattern, strict=False), []).append(path)
    out = dict(masks)
    for members in cases.values():
        members.sort(key=lambda p: slice_index(p.stem, case_pattern))
        if len({masks[p].shape for p in members}) == 1:
            stacked = postprocessing.apply(np.stack([masks[p] for p in members]))
            out.update(zip(members, stacked))
        else:  # slices of different sizes do not stack: each slice on its own
            out.update((p, postprocessing.apply(masks[p])) for p in members)
    return out


def _png_probabilities(
    model: Any, paths: Sequence[Path], *, batch_size: int, flip_tta: bool, large_images: str, overlap: float
) -> tuple[dict[Path, tuple[np.ndarray, np.ndarray]], list[str]]:
    """``{path: (image, probabilities (H, W, K) at the image's size)}`` of the readable files of one chunk, and
    the failures."""
    failures, images, good = [], [], []
    channels = int(model.input_shape[-1])
    height, width = _model_size(model)
    for path in paths:
        try:
            images.append(read_image(path, channels, model_input_dtype(model)))
            good.append(path)
        except DataError as err:  # the training reader's error, naming the file
            failures.append(str(err))
    if not images:
        return {}, failures
    if large_images == "resize":
        batch = np.stack([resize_image(im, height, width) for im in images])
        probs: np.ndarray | list[np.ndarray] = predict_batches(model, batch, batch_size=batch_size, flip_tta=flip_tta)
        probs = [resize_probabilities(p, *im.shape[:2]) for p, im in zip(probs, images)]
    else:
        probs = predict_images(model, images, batch_size=batch_size, flip_tta=flip_tta, tiled=True, overlap=overlap)
    return {path: (image, prob) for path, image, prob in zip(good, images, probs)}, failures


@dataclass(frozen=True)
class VolumeRecipe:
    """How the run's training slices were cut from volumes (its ``dataset.json``): the intensity ``window``
    (:func:`~segexp.data.io.intensity.normalise_volume`'s, statistics included; None without a manifest), the
    slicing ``axis``, the in-plane target ``spacing`` ``(row, col)`` mm, the ``canvas`` and the ``size``
    (``(rows, cols)``; None: not used), and the 2.5D ``context_slices`` per side (:mod:`segexp.data.io.context`)."""

    window: dict[str, Any] | None = None
    axis: str = "axial"
    spacing: tuple[float, float] | None = None
    canvas: tuple[int, int] | None = None
    size: tuple[int, int] | None = None
    context_slices: int = 0


def _pair(value: Any) -> Any:
    """A manifest's ``[a, b]`` as a tuple (a single number: both); None for null."""
    if value is None:
        return None
    return (value, value) if isinstance(value, (int, float)) else tuple(value)


def training_recipe(run: ModelSource) -> VolumeRecipe:
    """The :class:`VolumeRecipe` of the run's training data (from its ``dataset.json``; defaults without one)."""
    try:
        manifest = json.loads((Path(run.config.dataset.root) / "dataset.json").read_text())
    except (OSError, ValueError, KeyError, TypeError):
        return VolumeRecipe()
    spacing = manifest.get("spacing") or {}
    return VolumeRecipe(
        manifest.get("window"),
        manifest.get("axis", "axial"),
        _pair(spacing.get("target_mm")),
        _pair(spacing.get("canvas")),
        _pair(manifest.get("size")),
        int((manifest.get("storage") or {}).get("context_slices", 0)),
    )


def training_window(run: ModelSource) -> tuple[dict[str, Any] | None, str]:
    """Window settings and slicing axis of the run's training data (from its ``dataset.json``)."""
    recipe = training_recipe(run)
    return recipe.window, recipe.axis


def window_like_training(volume: np.ndarray, window: dict[str, Any]) -> np.ndarray:
    """The training's intensity mapping (``window`` as in the dataset's manifest or ``conf/window``) of a volume:
    the stored values, uint8 (or uint16; ``(x, y, z, C)`` for stacked windows)."""
    return normalise_volume(volume, window).stored


def predict_volume(
    model: Any,
    path: Path,
    out_dir: Path,
    colours: np.ndarray,
    window: dict[str, Any],
    axis: str,
    *,
    batch_size: int,
    flip_tta: bool,
    chunk: int = 32,
    postprocessing: Postprocessing | None = None,
    save_probabilities: bool = False,
    output_format: str = "auto",
    class_names: Sequence[str] = (),
    recipe: VolumeRecipe | None = None,
) -> Path:
    """Predict every slice of one volume (any format, a DICOM folder included); write ``<name>_pred.<ext>`` in
    the input's format (``output_format``: :func:`~segexp.data.io.volume_files.write_label_volume`) with its
    shape and geometry (``dicom_seg``: a DICOM series as DICOM-SEG ``<name>_pred.dcm``, its segments named by
    ``class_names``: :func:`~segexp.data.io.dicom_seg.write_dicom_seg`) + a montage, and with
    ``save_probabilities`` ``<name>_probabilities.nii.gz``
    (:func:`probability_image`).

    Each slice is made as segexp-prepare made the training slices (``recipe``: spacing, canvas, size; the
    intensities by ``window``) and resized to the model input as the training loader did
    (:func:`~segexp.data.io.slices.resize_image`); the probabilities go back onto the volume's slice linearly
    (:meth:`~segexp.data.io.resample.SliceGrid.probabilities`), then the argmax.

    Speed (BENCHMARKS.md): the volume is read in its stored dtype and windowed through a
    lookup table (no float copy); slices are predicted ``chunk`` at a time while a second
    thread turns the previous chunk's probabilities into labels (resize back, argmax), so
    that post-processing hides behind the model.
    """
    recipe = recipe or VolumeRecipe(window, axis)
    name = volume_stem(path)
    try:
        loaded = load_case(VolumeCase(name, path, None), image_dtype=None)
        normalised = normalise_volume(loaded.image, window)
    except (VolumeError, OSError, nib.filebasedimages.ImageFileError, ValueError) as err:
        raise InferenceInputError(f"{path}: {err}") from err
    channels = int(model.input_shape[-1])
    height, width = _model_size(model)
    stored = normalised.stored
    k = recipe.context_slices
    stored_channels = (1 if stored.ndim == 3 else stored.shape[3]) * (2 * k + 1)
    if normalised.encoding.dtype != model_input_dtype(model) or stored_channels not in (1, channels):
        context = f" ({k} neighbouring slice(s) per side stacked, as the training slices)" if k else ""
        raise InferenceInputError(
            f"{path}: the window {window.get('name', window.get('mode'))!r} gives {stored_channels}-channel "
            f"{normalised.encoding.dtype} slices{context}, the model takes {channels}-channel "
            f"{model_input_dtype(model)} ones"
        )
    fill = canvas_fill(stored, 2 * k + 1)  # segexp-prepare's canvas padding
    spacing = slice_pixel_spacing(loaded.spacing, axis)
    original_affine, like = loaded.original_affine, loaded.source
    del loaded  # the stored copy is all that is needed from here on
    n = num_slices(stored, axis)
    slices = [volume_slice(stored, axis, i) for i in range(n)]
    grid = slice_grid(slices[0].shape[:2], spacing, recipe.spacing, recipe.canvas, recipe.size)
    batch = np.empty((n, height, width, channels), stored.dtype)
    for i in range(n):
        sample = context_stack(slices.__getitem__, i, n, k)  # as segexp-prepare stacked the training slices
        batch[i] = resize_image(grid.image(sample, fill), height, width)
    labels = np.empty((n, *slices[0].shape[:2]), np.uint8)
    num_outputs = int(model.output_shape[-1])
    quantised = np.empty((*labels.shape, num_outputs), np.uint8) if save_probabilities else None
    background = np.eye(num_outputs, dtype=np.float32)[0] if num_outputs > 1 else np.zeros(1, np.float32)

    def to_labels(start: int, probs: np.ndarray) -> None:
        for j, p in enumerate(probs):
            resized = grid.probabilities(p, background)
            labels[start + j] = probabilities_to_classes(resized)
            if quantised is not None:
                quantised[start + j] = quantise_probabilities(resized)

    chunk = max(chunk - chunk % batch_size, batch_size)  # whole batches, so every call has one shape
    with ThreadPoolExecutor(max_workers=1) as post:
        pending = [
            post.submit(
                to_labels,
                start,
                predict_batches(model, batch[start : start + chunk], batch_size=batch_size, flip_tta=flip_tta),
            )
            for start in range(0, n, chunk)
        ]
        for future in pending:
            future.result()
    if postprocessing is not None and postprocessing.active:
        labels = postprocessing.apply(labels)  # 3D components over the volume's slices
    canonical = stack_slices(labels, axis)
    original = _to_original_orientation(canonical, original_affine)
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        if output_format == "dicom_seg" and like.format == "dicom":
            target = write_dicom_seg(original, like, out_dir / f"{name}_pred", class_names)
        else:
            own = "auto" if output_format == "dicom_seg" else output_format
            target = write_label_volume(original, like, out_dir / f"{name}_pred", own)
    except VolumeError as err:  # DICOM-SEG without highdicom, or a series it refuses
        raise InferenceInputError(str(err)) from err
    if quantised is not None:
        per_class = [stack_slices(quantised[..., c], axis) for c in range(num_outputs)]
        del quantised
        volume = _to_original_orientation(np.stack(per_class, axis=-1), original_affine)
        volume = volume.reshape(*like.shape[:3], num_outputs)
        save_nifti(probability_image(like, volume), out_dir / f"{name}_probabilities.nii.gz")
    save_png(out_dir / f"{name}_montage.png", montage(slices, labels, colours))
    return target


def quantise_probabilities(probs: np.ndarray) -> np.ndarray:
    """``q = round(255 p)`` as uint8 (``p`` clipped to [0, 1]); ``q / 255`` is within 1/510 of ``p``."""
    return np.rint(np.clip(probs, 0.0, 1.0) * PROBABILITY_LEVELS).astype(np.uint8)


def probability_image(source: VolumeFile, quantised: np.ndarray) -> nib.Nifti1Image:
    """The 4D probability volume ``(X, Y, Z, K)`` (one channel for a sigmoid head) in ``source``'s geometry, as
    NIfTI whatever ``source``'s format (MHA and NRRD have no scale factor):
    uint8 ``q`` (:func:`quantise_probabilities`) with ``scl_slope = 1/255``, so readers (nibabel's
    ``get_fdata``, ITK, 3D Slicer) see ``p = q / 255``.

    Why uint8 and not float32 (NIfTI-1 has no float16): a quarter of the memory and disk (a 512 x 512 x 300 CT
    with 8 classes: 0.6 GB instead of 2.5 GB, held whole while written), and the step 1/255 (error at most
    1/510) is far below what the mean of several models' probabilities needs to decide a voxel's class."""
    image = nifti_like(np.asarray(quantised, np.uint8), source)
    image.header.set_slope_inter(1.0 / PROBABILITY_LEVELS, 0.0)
    return image


def _to_original_orientation(canonical: np.ndarray, original_affine: np.ndarray) -> np.ndarray:
    """Undo the RAS reorientation of :func:`segexp.data.io.volumes.load_case` (flips/permutations only)."""
    back = ornt_transform(axcodes2ornt(("R", "A", "S")), io_orientation(original_affine))
    return np.ascontiguousarray(apply_orientation(canonical, back))


def montage(
    slices: Sequence[np.ndarray] | np.ndarray,
    labels: Sequence[np.ndarray] | np.ndarray,
    colours: np.ndarray,
    count: int = 12,
) -> np.ndarray:
    """Overlays of ``count`` evenly spaced slices, preferring those with predicted foreground."""
    with_fg = [i for i, lab in enumerate(labels) if lab.any()] or list(range(len(labels)))
    picks = sorted({with_fg[int(round(k))] for k in np.linspace(0, len(with_fg) - 1, min(count, len(with_fg)))})
    panels = [overlay_mask(slices[i], labels[i], colours) for i in picks]
    rows = [
        hstack_panels(panels[r : r + 4], [f"slice {i}" for i in picks[r : r + 4]]) for r in range(0, len(panels), 4)
    ]
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows]
    return vstack_rows(rows)


def infer(
    source: ModelSource,
    inputs: Path,
    out_dir: Path,
    *,
    batch_size: int = 8,
    flip_tta: bool = False,
    large_images: str = "resize",
    overlap: float = 0.5,
    window: dict[str, Any] | None = None,
    precision: str = "fp32",
    postprocess: str = "auto",
    save_probabilities: bool = False,
    output_format: str = "auto",
) -> list[str]:
    """Predict every input under ``inputs`` with ``source`` (one trained run, or a fold ensemble:
    :func:`segexp.evaluation.ensemble.open_source`) into ``out_dir`` computing in ``precision`` (resolved: fp32,
    bf16, fp16), after its postprocessing rules (``postprocess`` auto; a fold ensemble's are its
    cross-validation's) or without (none); with ``save_probabilities`` also the probabilities before them.
    Volumes are written in their own format, or in ``output_format`` (``auto``: the input's; a DICOM series:
    NIfTI; ``dicom_seg``: a DICOM series as DICOM-SEG, other volumes as ``auto``). Returns the failures (one line
    per bad file)."""
    cfg = source.config
    class_names = source.class_names
    colours = class_colours(class_names, cfg.dataset.get("rgb_map"))
    paths = list_inputs(inputs)
    postprocessing = for_run(source, postprocess)
    if postprocessing is not None and postprocessing.active:
        log.info(
            "postprocessing (chosen on held-out cases): %s",
            "; ".join(f"{n}: {r.describe()}" for n, r in postprocessing.active.items()),
        )
    model = source.load_model(precision)
    check_model_fits(model, len(class_names), int(cfg.model.image_channels))
    recipe = training_recipe(source)
    window = window or recipe.window
    axis = recipe.axis
    failures: list[str] = []
    volumes = [p for p in paths if is_volume(p)]
    images = [p for p in paths if not is_volume(p)]
    if images:
        failures += predict_png_files(
            model,
            images,
            out_dir,
            colours,
            batch_size=batch_size,
            flip_tta=flip_tta,
            large_images=large_images,
            overlap=overlap,
            postprocessing=postprocessing,
            case_pattern=str(cfg.dataset.case_pattern),
            save_probabilities=save_probabilities,
        )
    for path in volumes:
        if window is None:
            failures.append(
                f"{path}: volume input needs the training's window, but {cfg.dataset.root} has no dataset.json; "
                "pass one, e.g. window=cardiac_cta"
            )
            continue
        try:
            target = predict_volume(
                model,
                path,
                out_dir,
                colours,
                window,
                axis,
                batch_size=batch_size,
                flip_tta=flip_tta,
                postprocessing=postprocessing,
                save_probabilities=save_probabilities,
                output_format=output_format,
                class_names=class_names,
                recipe=recipe,
            )
            log.info("%s -> %s", path.name, target)
        except InferenceInputError as err:
            failures.append(str(err))
    done = len(paths) - len(failures)
    log.info("predicted %d of %d inputs into %s", done, len(paths), out_dir)
    for failure in failures:
        log.error("skipped: %s", failure)
    return failures
