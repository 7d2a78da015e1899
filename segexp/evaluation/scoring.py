"""Per-structure evaluation scores of hard segmentations (numpy / scipy only).

Masks are class-index integer arrays (``uint8`` inside segexp), either 2D slices
``(H, W)`` or 3D volumes of stacked slices ``(S, H, W)``. Class 0 is background
and is **excluded from every reported score**: :func:`score_classes` scores the
foreground classes ``1 .. num_classes-1`` one by one, nnU-Net style, and
:func:`aggregate` summarises them over cases. The only score that counts the
background, :func:`dice_including_background`, exists to compare with the
original tool and is labelled as such.

Definitions, for one foreground structure of one case, from the voxel counts of
the binary masks ``T`` (truth) and ``P`` (prediction):
``TP = |T ∧ P|``, ``FP = |¬T ∧ P|``, ``FN = |T ∧ ¬P|``:

- ``Dice = 2 TP / (2 TP + FP + FN)``
- ``IoU = TP / (TP + FP + FN)``
- ``precision = TP / (TP + FP)``
- ``recall = TP / (TP + FN)``
- ``HD95``: 95th-percentile symmetric Hausdorff distance between the surfaces,
  in mm when a voxel ``spacing`` is given (in voxels otherwise), exactly as
  MONAI's ``monai.metrics.compute_hausdorff_distance(percentile=95)`` (matched
  against MONAI 1.5.0: ``get_mask_edges``, ``get_edge_surface_distance``,
  ``get_surface_distance`` and ``_compute_percentile_hausdorff_distance`` in
  ``monai/metrics/{utils,hausdorff_distance}.py``; medpy takes its surfaces
  the same way):

  * surface (MONAI: *edges*) of a mask ``M`` = the voxels of ``M`` with at
    least one **face** neighbour outside ``M`` (4 in 2D, 6 in 3D; not the
    diagonal ones): ``M & ~binary_erosion(M)`` with scipy's default structuring
    element ``generate_binary_structure(ndim, 1)`` and ``border_value=0``.
    A voxel on the array border counts as surface: outside the array is
    background (MONAI crops to the union's bounding box plus a one-voxel margin,
    zero-padding where that margin leaves the array, then erodes with
    ``border_value=0``; both give the same surfaces);
  * directed distances ``d(A→B)``: for each surface voxel of ``A``, the exact
    Euclidean distance (``scipy.ndimage.distance_transform_edt`` of the
    complement of the *surface* of ``B``, ``sampling=spacing``, so anisotropic
    voxels are handled) to the nearest surface voxel of ``B``;
  * ``HD95 = max(percentile95(d(T→P)), percentile95(d(P→T)))`` with
    ``numpy.percentile``'s default linear interpolation (MONAI's
    ``torch.quantile`` interpolates the same way). segexp computes in float64,
    MONAI's distances are float32: values agree to ~1e-6 relative.

- ``NSD`` (normalised surface Dice, Nikolov et al. 2021, arXiv:1809.04430;
  Maier-Hein et al. 2024, "Metrics reloaded") at a tolerance ``tau`` (mm with a
  ``spacing``, voxels otherwise): the fraction of both surfaces that lies within
  ``tau`` of the other, from the same surfaces and directed distances as HD95::

      NSD = (|{d in d(T→P): d <= tau}| + |{d in d(P→T): d <= tau}|) / (|d(T→P)| + |d(P→T)|)

  i.e. ``(|S_T ∩ B_tau(S_P)| + |S_P ∩ B_tau(S_T)|) / (|S_T| + |S_P|)`` with the
  surfaces counted in voxels, exactly MONAI's
  ``monai.metrics.compute_surface_dice(class_thresholds=[tau])`` with its default
  ``use_subvoxels=False`` (``monai/metrics/surface_dice.py``, the same
  ``get_edge_surface_distance`` edges as HD95; ``<=`` tau). ``tau = 0`` counts
  the surface voxels the two surfaces share. The tolerance is per class
  (:func:`class_tolerances`; config ``training.nsd_tolerance_mm`` /
  segexp-evaluate's ``nsd_tolerance_mm``).
- ``ASSD`` (average symmetric surface distance): the mean of all directed
  distances of both directions pooled, ``mean(d(T→P) ∪ d(P→T))``, in mm (voxels
  without spacing), exactly MONAI's
  ``compute_average_surface_distance(symmetric=True)`` (which concatenates the
  two directions before the mean; the mean of the two directed means differs
  when the surfaces differ in size).

  The one deliberate difference from MONAI is the empty-mask convention below:
  a structure present in exactly one mask scores the field-of-view diagonal
  (HD95 and ASSD) where MONAI gives ``inf``; absent from both is NaN in both
  (NSD too; MONAI's NSD is 0 where exactly one mask is empty, as here).

Conventions for empty masks (never a free 1.0):

- **absent in both** truth and prediction (``TP = FP = FN = 0``): Dice, IoU,
  precision, recall, HD95, NSD and ASSD are all NaN (MONAI: NaN too). The structure is *not applicable* to
  that case and is left out of every mean (nnU-Net does the same).
- **present in exactly one** of them: Dice = IoU = 0.
  Precision is NaN when nothing was predicted (``0/0``) and 0 when something
  was predicted but the structure is absent in truth. Recall is NaN when the
  structure is absent in truth (``0/0``) and 0 when it was missed.
  NSD = 0 (no surface voxel of the present mask is near the absent one; MONAI
  gives 0 too). HD95 and ASSD are the **worst-case penalty**: the diagonal of the array's field of view,
  ``sqrt(sum_i (n_i * spacing_i)^2)`` for an array of shape ``(n_1, ...)``
  (in mm, or voxels without spacing). It is larger than any distance two voxels
  of the array can have, so a missed or hallucinated structure always scores
  worse than any real prediction; it is finite (not ``inf``) so means stay
  finite.

Surface distances are only computed when both masks are non-empty, on the
bounding box of their union plus a one-voxel margin (which gives exactly the
same surfaces and distances as the full array).

:func:`aggregate` reports, per class name and per score, the mean, standard
deviation (population, ``ddof=0``), median and ``n`` over the cases where that
score is not NaN, and ``foreground_mean``: for each score, the mean over
classes of the per-class means, ignoring classes whose mean is NaN (absent from
every case). Undefined values are ``None`` in its JSON-safe output.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from segexp.config.options import Metric, values

__all__ = [
    "METRICS",
    "ClassScore",
    "aggregate",
    "assd",
    "class_tolerances",
    "dice_including_background",
    "hd95",
    "nsd",
    "score_class",
    "score_classes",
    "surface",
    "to_json_safe",
]

#: The float scores of a :class:`ClassScore`, in reporting order.
METRICS: tuple[str, ...] = values(Metric)

_NAN = math.nan

#: NSD tolerance in mm (voxels without spacing) where no other is set: the config default.
DEFAULT_NSD_TOLERANCE_MM = 1.0


@dataclass(frozen=True)
class ClassScore:
    """Scores of one foreground structure in one case (see the module docstring).

    Float scores are NaN where undefined; ``n_truth = TP + FN`` and
    ``n_pred = TP + FP`` are the voxel counts of the structure in truth and
    prediction. ``nsd`` and ``assd`` come last (with NaN defaults) so that
    positional construction of the earlier fields still works.
    """

    dice: float
    iou: float
    precision: float
    recall: float
    hd95: float
    tp: int
    fp: int
    fn: int
    n_truth: int
    n_pred: int
    nsd: float = _NAN
    assd: float = _NAN

    def as_dict(self) -> dict[str, float | int]:
        """Plain ``{field: value}`` (NaN kept; see :func:`to_json_safe` for JSON)."""
        return dataclasses.asdict(self)


# ---------------------------------------------------------------- validation
def _check_spacing(spacing: Sequence[float] | None, ndim: int) -> tuple[float, ...]:
    if spacing is None:
        return (1.0,) * ndim
    values = tuple(float(s) for s in np.asarray(spacing, dtype=float).ravel())
    if len(values) != ndim:
        raise ValueError(f"spacing must have one value per array axis ({ndim}), got {tuple(spacing)!r}")
    if not all(math.isfinite(s) and s > 0 for s in values):
        raise ValueError(f"spacing values must be finite and > 0, got {values!r}")
    return values


def _as_bool_mask(mask: np.ndarray, name: str) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.dtype == bool:
        return mask
    if not (np.issubdtype(mask.dtype, np.integer) or np.issubdtype(mask.dtype, np.floating)):
        raise TypeError(f"{name} must be a boolean mask, got dtype {mask.dtype}")
    if mask.size and not np.isin(mask, (0, 1)).all():
        raise ValueError(
            f"{name} must be a boolean (0/1) mask, got values {np.unique(mask)[:10].tolist()}"
            " (pass `labels == k` for one class of a class-index mask)"
        )
    return mask.astype(bool)


def _check_pair(truth: np.ndarray, pred: np.ndarray) -> None:
    if truth.shape != pred.shape:
        raise ValueError(f"truth and prediction shapes differ: truth {truth.shape}, prediction {pred.shape}")
    if truth.ndim < 1 or truth.size == 0:
        raise ValueError(f"masks must be non-empty arrays, got shape {truth.shape}")


def _checked_masks(truth: np.ndarray, pred: np.ndarray, num_classes: int) -> tuple[int, np.ndarray, np.ndarray]:
    """``(num_classes, truth, pred)`` checked: same shape, integer class indices below ``num_classes``."""
    num_classes = _check_num_classes(num_classes)
    truth, pred = np.asarray(truth), np.asarray(pred)
    _check_pair(truth, pred)
    return num_classes, _check_labels(truth, num_classes, "truth"), _check_labels(pred, num_classes, "prediction")


def _check_labels(labels: np.ndarray, num_classes: int, name: str) -> np.ndarray:
    labels = np.asarray(labels)
    if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool):
        raise TypeError(f"{name} must be a class-index integer mask, got dtype {labels.dtype}")
    if labels.size:
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= num_classes:
            bad = np.unique(labels[(labels < 0) | (labels >= num_classes)])
            raise ValueError(
                f"{name} has class values {bad[:10].tolist()} outside [0, {num_classes - 1}]"
                f" (num_classes={num_classes})"
            )
    return labels


def _check_num_classes(num_classes: int) -> int:
    if isinstance(num_classes, bool) or int(num_classes) != num_classes or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2 (background + foreground), got {num_classes!r}")
    return int(num_classes)


# ---------------------------------------------------------------- distances
def surface(mask: np.ndarray) -> np.ndarray:
    """Surface voxels of a boolean mask, MONAI's edges: voxels of ``mask`` with a
    background **face** neighbour (4 in 2D, 6 in 3D; diagonal neighbours do not
    count), i.e. ``mask & ~binary_erosion(mask)`` with scipy's default
    (face-connected) structuring element; voxels on the array border count as
    surface (``border_value=0``)."""
    mask = np.asarray(mask, dtype=bool)
    face = ndimage.generate_binary_structure(mask.ndim, 1)
    eroded = ndimage.binary_erosion(mask, structure=face, border_value=0)
    return mask & ~eroded


def _worst_distance(shape: Sequence[int], spacing: Sequence[float]) -> float:
    """Diagonal of the array's field of view: ``sqrt(sum (n_i * spacing_i)^2)``."""
    return float(math.sqrt(sum((n * s) ** 2 for n, s in zip(shape, spacing))))


def _union_crop(a: np.ndarray, b: np.ndarray) -> tuple[slice, ...]:
    """Bounding box of ``a | b`` grown by one voxel (clipped to the array)."""
    union = a | b
    crop = []
    for axis in range(union.ndim):
        other = tuple(i for i in range(union.ndim) if i != axis)
        hit = np.flatnonzero(union.any(axis=other))
        crop.append(slice(max(int(hit[0]) - 1, 0), min(int(hit[-1]) + 2, union.shape[axis])))
    return tuple(crop)


def _check_tolerance(tolerance_mm: float) -> float:
    if isinstance(tolerance_mm, bool) or not isinstance(tolerance_mm, (int, float, np.integer, np.floating)):
        raise TypeError(f"NSD tolerance must be a number (mm, or voxels without spacing), got {tolerance_mm!r}")
    value = float(tolerance_mm)
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"NSD tolerance must be finite and >= 0, got {tolerance_mm!r}")
    return value


def _pair_spacing(
    a: np.ndarray, b: np.ndarray, spacing: Sequence[float] | None
) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    a = _as_bool_mask(a, "a")
    b = _as_bool_mask(b, "b")
    _check_pair(a, b)
    return a, b, _check_spacing(spacing, a.ndim)


def hd95(a: np.ndarray, b: np.ndarray, spacing: Sequence[float] | None = None) -> float:
    """95th-percentile symmetric surface (Hausdorff) distance of two boolean masks.

    ``max(percentile95(d(A→B)), percentile95(d(B→A)))`` over face-connected
    surface voxels, as MONAI's ``compute_hausdorff_distance(percentile=95)``
    (see the module docstring); NaN when both masks are empty, the field-of-view
    diagonal when exactly one is (MONAI: ``inf``).
    """
    a, b, sp = _pair_spacing(a, b, spacing)
    return _surface_scores(a, b, sp, DEFAULT_NSD_TOLERANCE_MM)[0]


def nsd(
    a: np.ndarray,
    b: np.ndarray,
    spacing: Sequence[float] | None = None,
    tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM,
) -> float:
    """Normalised surface Dice of two boolean masks at ``tolerance_mm`` (mm with ``spacing``, else voxels).

    ``(|{d(A→B) <= tol}| + |{d(B→A) <= tol}|) / (|S_A| + |S_B|)`` over the same face-connected surface voxels
    and exact Euclidean distances as :func:`hd95`, as MONAI's ``compute_surface_dice(class_thresholds=[tol])``
    with ``use_subvoxels=False`` (surfaces counted in voxels; see the module docstring). Symmetric in ``a`` and
    ``b``; NaN when both masks are empty, 0 when exactly one is (MONAI: the same).
    """
    a, b, sp = _pair_spacing(a, b, spacing)
    return _surface_scores(a, b, sp, _check_tolerance(tolerance_mm))[1]


def assd(a: np.ndarray, b: np.ndarray, spacing: Sequence[float] | None = None) -> float:
    """Average symmetric surface distance of two boolean masks (mm with ``spacing``, else voxels).

    The mean of the directed distances of both directions pooled, ``mean(d(A→B) ∪ d(B→A))``, over the same
    surfaces as :func:`hd95`, as MONAI's ``compute_average_surface_distance(symmetric=True)``; NaN when both
    masks are empty, the field-of-view diagonal when exactly one is (MONAI: ``inf``).
    """
    a, b, sp = _pair_spacing(a, b, spacing)
    return _surface_scores(a, b, sp, DEFAULT_NSD_TOLERANCE_MM)[2]


def _surface_scores(
    a: np.ndarray, b: np.ndarray, spacing: tuple[float, ...], tolerance: float
) -> tuple[float, float, float]:
    """``(HD95, NSD at tolerance, ASSD)`` of two checked boolean masks, with the empty-mask conventions."""
    has_a, has_b = bool(a.any()), bool(b.any())
    if not has_a and not has_b:
        return _NAN, _NAN, _NAN
    if has_a != has_b:
        worst = _worst_distance(a.shape, spacing)
        return worst, 0.0, worst
    d_ab, d_ba = _surface_distances(a, b, spacing)
    hd = float(max(np.percentile(d_ab, 95), np.percentile(d_ba, 95)))
    within = int(np.count_nonzero(d_ab <= tolerance)) + int(np.count_nonzero(d_ba <= tolerance))
    both = np.concatenate([d_ab, d_ba])
    return hd, within / both.size, float(both.mean())


def _surface_distances(a: np.ndarray, b: np.ndarray, spacing: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Directed distances ``(d(A→B), d(B→A))``: for each surface voxel of one non-empty mask, the Euclidean
    distance (mm with ``spacing``) to the nearest surface voxel of the other."""
    # Cropping with a one-voxel margin keeps every surface voxel (the margin is
    # background, or the true array border) and all of them are inside the crop,
    # so the nearest-surface distances are unchanged.
    crop = _union_crop(a, b)
    a, b = a[crop], b[crop]
    surf_a, surf_b = surface(a), surface(b)
    dist_to_b = ndimage.distance_transform_edt(~surf_b, sampling=spacing)
    dist_to_a = ndimage.distance_transform_edt(~surf_a, sampling=spacing)
    return dist_to_b[surf_a], dist_to_a[surf_b]


def class_tolerances(setting: float | Mapping[str, float], class_names: Sequence[str]) -> dict[int, float]:
    """``{foreground class index: NSD tolerance}`` from the config's ``nsd_tolerance_mm``: one number for every
    class, or a mapping ``{class name: tolerance}`` whose ``default`` entry covers the classes it does not name
    (``class_names[k]`` names class ``k``, background at 0, never scored). Raises ``ValueError`` for a name that
    is not a foreground class, a mapping without ``default`` that leaves a class out, or a bad tolerance."""
    names = list(class_names)
    if not isinstance(setting, Mapping):
        value = _check_tolerance(setting)
        return {k: value for k in range(1, len(names))}
    entries = {str(key): _check_tolerance(value) for key, value in setting.items()}
    unknown = sorted(set(entries) - set(names[1:]) - {"default"})
    if unknown:
        raise ValueError(f"nsd_tolerance_mm names {unknown}, not foreground classes of {names[1:]} (or `default`)")
    out = {}
    for k, name in enumerate(names[1:], start=1):
        if name in entries:
            out[k] = entries[name]
        elif "default" in entries:
            out[k] = entries["default"]
        else:
            raise ValueError(f"nsd_tolerance_mm gives no tolerance for class {name!r} and no `default`")
    return out


# ---------------------------------------------------------------- scores
def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 else _NAN


def _from_counts(tp: int, fp: int, fn: int, distances: tuple[float, float, float]) -> ClassScore:
    tp, fp, fn = int(tp), int(fp), int(fn)
    hd, nsd_value, assd_value = distances
    return ClassScore(
        dice=_ratio(2.0 * tp, 2.0 * tp + fp + fn),
        iou=_ratio(float(tp), float(tp + fp + fn)),
        precision=_ratio(float(tp), float(tp + fp)),
        recall=_ratio(float(tp), float(tp + fn)),
        hd95=float(hd),
        tp=tp,
        fp=fp,
        fn=fn,
        n_truth=tp + fn,
        n_pred=tp + fp,
        nsd=float(nsd_value),
        assd=float(assd_value),
    )


def score_class(
    truth_mask: np.ndarray,
    pred_mask: np.ndarray,
    spacing: Sequence[float] | None = None,
    nsd_tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM,
) -> ClassScore:
    """Scores of one binary structure (2D or 3D boolean masks of the same shape).

    ``spacing``: voxel size in mm per array axis (``None``: 1 per axis, distances
    in voxels); ``nsd_tolerance_mm``: the NSD tolerance, in the same units.
    Definitions and empty-mask conventions: see the module docstring.
    """
    t = _as_bool_mask(truth_mask, "truth_mask")
    p = _as_bool_mask(pred_mask, "pred_mask")
    _check_pair(t, p)
    sp = _check_spacing(spacing, t.ndim)
    tolerance = _check_tolerance(nsd_tolerance_mm)
    tp = int(np.count_nonzero(t & p))
    n_t = int(np.count_nonzero(t))
    n_p = int(np.count_nonzero(p))
    return _from_counts(tp, n_p - tp, n_t - tp, _surface_scores(t, p, sp, tolerance))


_CHUNK = 1 << 22  # voxels per bincount chunk: bounds temporary memory on large volumes


def _confusion(truth: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    """``(C, C)`` int64 confusion matrix ``[truth class, predicted class]``."""
    t, p = truth.ravel(), pred.ravel()
    counts = np.zeros(num_classes * num_classes, dtype=np.int64)
    for start in range(0, t.size, _CHUNK):
        codes = t[start : start + _CHUNK].astype(np.intp) * num_classes
        codes += p[start : start + _CHUNK]
        counts += np.bincount(codes, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def score_classes(
    truth: np.ndarray,
    pred: np.ndarray,
    num_classes: int,
    spacing: Sequence[float] | None = None,
    nsd_tolerance_mm: float | Mapping[int, float] = DEFAULT_NSD_TOLERANCE_MM,
) -> dict[int, ClassScore]:
    """Scores of every foreground class ``1 .. num_classes-1`` of one case.

    ``truth`` and ``pred`` are class-index masks of the same shape (2D slice or
    3D volume); class 0 (background) is not scored. ``nsd_tolerance_mm``: one
    NSD tolerance for every class, or ``{class index: tolerance}`` for each
    (:func:`class_tolerances`), in the units of ``spacing``. Returns
    ``{class index: ClassScore}``. Counts come from one confusion matrix
    (``bincount``); distances are computed per class only where both masks of
    the class are non-empty.
    """
    num_classes, truth, pred = _checked_masks(truth, pred, num_classes)
    sp = _check_spacing(spacing, truth.ndim)
    if isinstance(nsd_tolerance_mm, Mapping):
        missing = [k for k in range(1, num_classes) if k not in nsd_tolerance_mm]
        if missing:
            raise ValueError(f"nsd_tolerance_mm has no tolerance for classes {missing}")
        tolerances = {k: _check_tolerance(nsd_tolerance_mm[k]) for k in range(1, num_classes)}
    else:
        tolerances = dict.fromkeys(range(1, num_classes), _check_tolerance(nsd_tolerance_mm))

    confusion = _confusion(truth, pred, num_classes)  # rows: truth, columns: prediction
    tp = np.diag(confusion)
    n_truth = confusion.sum(axis=1)
    n_pred = confusion.sum(axis=0)

    scores: dict[int, ClassScore] = {}
    for k in range(1, num_classes):
        n_t, n_p = int(n_truth[k]), int(n_pred[k])
        if n_t and n_p:
            distances = _surface_scores(truth == k, pred == k, sp, tolerances[k])
        elif n_t or n_p:
            worst = _worst_distance(truth.shape, sp)
            distances = (worst, 0.0, worst)
        else:
            distances = (_NAN, _NAN, _NAN)
        scores[k] = _from_counts(int(tp[k]), n_p - int(tp[k]), n_t - int(tp[k]), distances)
    return scores


# ---------------------------------------------------------------- aggregation
def _summary(values: Sequence[float]) -> dict[str, float | int]:
    arr = np.asarray(values, dtype=float)
    arr = arr[~np.isnan(arr)]
    if arr.size == 0:
        return {"mean": _NAN, "std": _NAN, "median": _NAN, "n": 0}
    return {
        "mean": float(arr.mean()),
        "std": float(arr.std()),
        "median": float(np.median(arr)),
        "n": int(arr.size),
    }


def aggregate(
    scores: Sequence[Mapping[int, ClassScore]],
    class_names: Sequence[str],
) -> dict[str, Any]:
    """Summarise per-case scores (one :func:`score_classes` result per case).

    ``class_names[k]`` is the name of class index ``k`` (background at 0, as in
    ``dataset.class_names``); every case must score the same foreground classes.
    Returns a JSON-safe dict (NaN → ``None``)::

        {
          "n_cases": N,
          "per_class": {name: {metric: {"mean", "std", "median", "n"}}},
          "foreground_mean": {metric: mean over classes of the per-class means},
        }

    for ``metric`` in :data:`METRICS` (``dice, iou, hd95, precision, recall, nsd, assd``). A per-class
    statistic uses only the cases where that metric is not NaN (``n`` counts
    them; ``std`` is the population standard deviation). ``foreground_mean``
    ignores classes whose per-class mean is NaN (absent from every case).
    """
    scores = list(scores)
    class_names = list(class_names)
    if not scores:
        raise ValueError("aggregate needs at least one case")
    keys = sorted(scores[0])
    for i, case in enumerate(scores):
        if sorted(case) != keys:
            raise ValueError(
                f"case {i} scores classes {sorted(case)} but case 0 scores {keys};"
                " every case must score the same classes"
            )
    for k in keys:
        if isinstance(k, bool) or int(k) != k or not 1 <= k < len(class_names):
            raise ValueError(
                f"class index {k!r} is not a foreground class of class_names {class_names!r}"
                " (class 0 is background and is never scored)"
            )
    names = [class_names[k] for k in keys]
    if len(set(names)) != len(names):
        raise ValueError(f"class names are not unique: {names!r}")

    per_class: dict[str, dict[str, dict[str, float | int]]] = {}
    for k, name in zip(keys, names):
        per_class[name] = {metric: _summary([getattr(case[k], metric) for case in scores]) for metric in METRICS}
    foreground_mean: dict[str, float] = {}
    for metric in METRICS:
        means = np.asarray([per_class[n][metric]["mean"] for n in names], dtype=float)
        means = means[~np.isnan(means)]
        foreground_mean[metric] = float(means.mean()) if means.size else _NAN
    return to_json_safe({"n_cases": len(scores), "per_class": per_class, "foreground_mean": foreground_mean})


def to_json_safe(obj: Any) -> Any:
    """Recursively convert to plain JSON types: NaN / ±inf → ``None``, numpy
    scalars and arrays → Python numbers and lists, tuples → lists,
    :class:`ClassScore` (any dataclass) → dict, mapping keys → ``str`` unless
    already ``str``/``int``. ``json.dumps(to_json_safe(x), allow_nan=False)`` works."""
    if obj is None or isinstance(obj, (str, bool)):
        return obj
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        value = float(obj)
        return value if math.isfinite(value) else None
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_json_safe(dataclasses.asdict(obj))
    if isinstance(obj, Mapping):
        out = {}
        for key, value in obj.items():
            if isinstance(key, np.integer):
                key = int(key)
            elif not isinstance(key, (str, int)) or isinstance(key, bool):
                key = str(key)
            out[key] = to_json_safe(value)
        return out
    if isinstance(obj, np.ndarray):
        return to_json_safe(obj.tolist())
    if isinstance(obj, (list, tuple)):
        return [to_json_safe(v) for v in obj]
    return obj


# ---------------------------------------------------------------- original score
def dice_including_background(truth: np.ndarray, pred: np.ndarray, num_classes: int) -> float:
    """The original tool's single "Dice", for comparison ONLY — it INCLUDES background.

    Computed on one-hot hard labels over ALL classes, background included:
    ``2 Σ(onehot_t · onehot_p) / (Σ onehot_t + Σ onehot_p)``. Every voxel has
    exactly one label in each one-hot, so this equals the fraction of voxels
    whose class is right (pixel accuracy). On cardiac CT, where background is
    > 95 % of the voxels, it is dominated by background: a prediction that is
    all background scores > 0.9 while every foreground Dice is 0. Do not use it
    to judge a model; use :func:`score_classes` / :func:`aggregate`.
    """
    num_classes, truth, pred = _checked_masks(truth, pred, num_classes)
    overlap = np.count_nonzero(truth == pred)  # Σ onehot_t · onehot_p
    total = 2 * truth.size  # Σ onehot_t + Σ onehot_p
    return float(2.0 * overlap / total)
