"""Paired image/mask augmentation built from config (albumentations 2.0).

The ``augmentation`` config group holds ``transforms``: a mapping from a short name to
a ``_target_`` entry (or ``null`` to switch that transform off)::

    transforms:
      hflip: {_target_: albumentations.HorizontalFlip, p: 0.5}
      rotate: {_target_: albumentations.Affine, rotate: [-15, 15], p: 0.5}

:func:`build_augmentation` instantiates the entries in order into one
``albumentations.Compose``; :func:`augment_pair` applies it to an image and its mask
with an explicit seed so that every (seed, epoch, sample) triple is reproducible
(:func:`sample_seed`). :class:`Augmenter` wraps both for data loaders: it is
picklable (multiprocessing workers) and keeps one pipeline per thread.

Seeding note: ``Compose.set_random_seed(s)`` hands the *same* seed to every child
transform, which makes their random draws identical (e.g. HorizontalFlip and
VerticalFlip with the same ``p`` would always fire together, and rotation/shear
ranges would be correlated). :func:`seed_pipeline` therefore gives every transform
its own seed derived from ``(seed, position)`` with ``numpy.random.SeedSequence``.
"""

from __future__ import annotations

import copy
import threading
import warnings
from collections.abc import Mapping
from typing import Any

import albumentations as A
import numpy as np
from albumentations.core.composition import BaseCompose
from albumentations.core.transforms_interface import BasicTransform
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

from segexp.core.errors import AugmentationError

__all__ = [
    "AugmentationError",
    "Augmenter",
    "augment_pair",
    "build_augmentation",
    "sample_seed",
    "seed_pipeline",
]

_CONFIG_PREFIX = "augmentation.transforms"


# --------------------------------------------------------------------------- build


def _one_line(exc: BaseException) -> str:
    """Condense an instantiate failure into one readable line (innermost useful reason)."""
    # Hydra wraps the real error (ImportError, pydantic ValidationError, TypeError)
    # in an InstantiationException whose own text adds little; walk to the root cause.
    seen = []
    cur: BaseException | None = exc
    while cur is not None and cur not in seen:
        seen.append(cur)
        cur = cur.__cause__
    reason = seen[-1]
    errors = getattr(reason, "errors", None)
    if type(reason).__name__ == "ValidationError" and callable(errors):  # pydantic
        try:
            parts = [
                f"{'.'.join(str(x) for x in err.get('loc', ())) or 'value'}: {err.get('msg')} "
                f"(got {err.get('input')!r})"
                for err in errors()
            ]
            return "invalid arguments: " + "; ".join(parts)
        except Exception:  # noqa: BLE001 - fall back to the plain text below
            pass
    text = str(reason)
    lines = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("For further information visit"):
            continue
        if "set env var HYDRA_FULL_ERROR" in line:
            line = line.split(", set env var HYDRA_FULL_ERROR")[0]
        lines.append(line)
    joined = "; ".join(lines) if lines else type(reason).__name__
    if type(reason).__name__ not in ("ValueError", "ImportError", "InstantiationException"):
        joined = f"{type(reason).__name__}: {joined}"
    return joined


def _plain(cfg: Any) -> Any:
    """DictConfig/ListConfig -> plain containers (resolved); other values are deep-copied."""
    if isinstance(cfg, (DictConfig, ListConfig)):
        return OmegaConf.to_container(cfg, resolve=True)
    return copy.deepcopy(cfg)


def _check_p(obj: Any, key: str, target: str) -> None:
    p = getattr(obj, "p", None)
    if p is None:
        return
    try:
        ok = 0.0 <= float(p) <= 1.0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise AugmentationError(f"{key} ({target}): p must lie in [0, 1], got {p!r}")
    for child in getattr(obj, "transforms", None) or ():
        _check_p(child, key, target)


def _instantiate_entry(name: str, entry: Any) -> BasicTransform | BaseCompose:
    key = f"{_CONFIG_PREFIX}.{name}"
    if isinstance(entry, DictConfig):
        entry = OmegaConf.to_container(entry, resolve=True)
    if not isinstance(entry, Mapping):
        raise AugmentationError(f"{key}: expected a mapping with a _target_ (or null to disable), got {entry!r}")
    target = entry.get("_target_")
    if not target or not isinstance(target, str):
        raise AugmentationError(
            f"{key}: missing _target_ (e.g. _target_: albumentations.HorizontalFlip), got {dict(entry)!r}"
        )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            obj = instantiate(entry, _convert_="all")
        except Exception as exc:  # noqa: BLE001 - any failure is a config error for the user
            raise AugmentationError(f"{key} ({target}): {_one_line(exc)}") from exc
    for w in caught:
        message = str(w.message)
        # albumentations only warns about unknown keyword arguments; treat them as errors
        # so that a typo (`rotat: 30`) does not silently become a no-op.
        if "are not valid for transform" in message:
            raise AugmentationError(f"{key} ({target}): {message}")
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if not isinstance(obj, (BasicTransform, BaseCompose)):
        raise AugmentationError(
            f"{key} ({target}): not an albumentations transform (got {type(obj).__module__}.{type(obj).__qualname__})"
        )
    _check_p(obj, key, target)
    return obj


def _build(transforms: Mapping[str, Any] | None) -> tuple[A.Compose | None, list[str]]:
    if transforms is None:
        return None, []
    if isinstance(transforms, DictConfig):
        items = list(transforms.items_ex(resolve=False))
    elif isinstance(transforms, Mapping):
        items = list(transforms.items())
    else:
        raise AugmentationError(
            f"{_CONFIG_PREFIX} must be a mapping from a name to a transform config, "
            f"got {type(transforms).__name__}: {transforms!r}"
        )
    built: list[BasicTransform | BaseCompose] = []
    names: list[str] = []
    for name, entry in items:
        if entry is None:
            continue
        built.append(_instantiate_entry(str(name), entry))
        names.append(str(name))
    if not built:
        return None, []
    return A.Compose(built), names


def build_augmentation(transforms: Mapping[str, Any] | None) -> A.Compose | None:
    """Instantiate ``augmentation.transforms`` into an ``albumentations.Compose``.

    ``transforms`` maps a name to a ``_target_`` entry (DictConfig or plain dict); null
    entries are skipped; the order of the mapping is the order of application. Returns
    ``None`` when nothing is left. Any bad entry raises :class:`AugmentationError`
    naming ``augmentation.transforms.<name>`` and its target.
    """
    return _build(transforms)[0]


# --------------------------------------------------------------------------- seeds


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """Return a well-mixed 32-bit seed for sample ``index`` in ``epoch`` of run ``seed``."""
    parts = (seed, epoch, index)
    for label, value in zip(("seed", "epoch", "index"), parts, strict=True):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"sample_seed: {label} must be a non-negative int, got {value!r}")
    state = np.random.SeedSequence([int(v) for v in parts]).generate_state(1, dtype=np.uint32)
    return int(state[0])


def _child_seed(seed: int, position: int) -> int:
    return int(np.random.SeedSequence([seed, position]).generate_state(1, dtype=np.uint32)[0])


def seed_pipeline(pipeline: BaseCompose | BasicTransform, seed: int) -> None:
    """Seed ``pipeline`` and give each (nested) transform its own derived seed."""
    seed = int(seed)
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    pipeline.set_random_seed(seed)
    for position, child in enumerate(getattr(pipeline, "transforms", None) or ()):
        if isinstance(child, (BaseCompose, BasicTransform)):
            seed_pipeline(child, _child_seed(seed, position))


# --------------------------------------------------------------------------- apply


def _mask_fills(pipeline: Any) -> set[int]:
    fills: set[int] = set()
    for child in getattr(pipeline, "transforms", None) or ():
        value = getattr(child, "fill_mask", None)
        if isinstance(value, (int, float, np.integer, np.floating)):
            fills.add(int(value))
        elif isinstance(value, (tuple, list)) and len(value) == 1:
            fills.add(int(value[0]))
        fills |= _mask_fills(child)
    return fills


#: Stored image dtypes the augmentation takes (albumentations' geometric transforms keep them, any channels).
_IMAGE_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16))


def _check_inputs(image: np.ndarray, mask: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.dtype not in _IMAGE_DTYPES:
        raise TypeError(f"image must be a uint8 or uint16 numpy array, got {getattr(image, 'dtype', type(image))}")
    if not isinstance(mask, np.ndarray) or mask.dtype != np.uint8:
        raise TypeError(f"mask must be a uint8 numpy array, got {getattr(mask, 'dtype', type(mask))}")
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] >= 1)):
        raise ValueError(f"image must be (H, W) or (H, W, C), got shape {image.shape}")
    if mask.ndim != 2:
        raise ValueError(f"mask must be (H, W) class indices, got shape {mask.shape}")
    if image.shape[:2] != mask.shape:
        raise ValueError(f"image {image.shape[:2]} and mask {mask.shape} differ in size")


def augment_pair(
    pipeline: A.Compose | None, image: np.ndarray, mask: np.ndarray, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Apply ``pipeline`` to ``image`` and ``mask`` with the same random draws.

    The result depends only on ``(pipeline config, image, mask, seed)``, never on earlier
    calls. Returns ``(image, mask)``: an image of the input's dtype (uint8, or uint16 for 16-bit slices) and
    layout ((H, W) stays (H, W), (H, W, C) stays (H, W, C)) and a ``uint8`` mask whose values
    are input classes or the transforms' ``fill_mask`` (0, background, in the presets)
    where the warp pulled in pixels from outside the image. A pipeline that invents
    other labels (non-nearest ``mask_interpolation``) raises :class:`AugmentationError`.

    Not thread-safe: albumentations transforms keep per-call state and their random
    generators on the object, so the caller must own one pipeline per thread (use
    :class:`Augmenter`, which does this for you). ``pipeline=None`` returns copies.
    """
    _check_inputs(image, mask)
    if pipeline is None:
        return image.copy(), mask.copy()
    seed_pipeline(pipeline, seed)
    out = pipeline(image=image, mask=mask)
    out_image = np.asarray(out["image"])
    out_mask = np.asarray(out["mask"])

    if out_image.dtype != image.dtype:
        out_image = np.clip(np.rint(out_image), 0, np.iinfo(image.dtype).max).astype(image.dtype)
    if image.ndim == 2 and out_image.ndim == 3 and out_image.shape[2] == 1:
        out_image = out_image[:, :, 0]
    elif image.ndim == 3 and out_image.ndim == 2:
        out_image = (
            out_image[:, :, None] if image.shape[2] == 1 else np.repeat(out_image[:, :, None], image.shape[2], 2)
        )
    if out_image.ndim == 3 and image.ndim == 3 and out_image.shape[2] != image.shape[2]:
        raise AugmentationError(
            f"augmentation changed the number of image channels from {image.shape[2]} to {out_image.shape[2]}"
        )

    if out_mask.ndim == 3 and out_mask.shape[2] == 1:
        out_mask = out_mask[:, :, 0]
    if out_mask.dtype != np.uint8:
        out_mask = out_mask.astype(np.uint8)
    if out_mask.shape != out_image.shape[:2]:
        raise AugmentationError(
            f"augmentation produced image {out_image.shape[:2]} and mask {out_mask.shape} of different sizes"
        )

    allowed = np.zeros(256, dtype=bool)
    allowed[np.flatnonzero(np.bincount(mask.ravel(), minlength=256))] = True
    for fill in _mask_fills(pipeline):
        if 0 <= fill <= 255:
            allowed[fill] = True
    produced = np.flatnonzero(np.bincount(out_mask.ravel(), minlength=256))
    invented = [int(v) for v in produced if not allowed[v]]
    if invented:
        raise AugmentationError(
            f"augmentation invented mask labels {invented} not present in the input "
            f"{np.flatnonzero(allowed).tolist()}; mask transforms must use mask_interpolation: 0 (nearest)"
        )
    return np.ascontiguousarray(out_image), np.ascontiguousarray(out_mask)


def _applied(transform: Any) -> bool:
    if isinstance(transform, BaseCompose):
        return any(_applied(child) for child in transform.transforms)
    return bool(getattr(transform, "params", None))


class Augmenter:
    """Picklable, thread-safe wrapper around ``augmentation.transforms``.

    ``Augmenter(cfg.augmentation.transforms)`` validates the config at once (raising
    :class:`AugmentationError`) and then, on each thread that calls it, lazily makes a
    private deep copy of the pipeline, so worker threads never share transform state.
    Pickling keeps only the plain config; the pipeline is rebuilt on unpickling (e.g. in
    a multiprocessing worker), which gives identical results for identical seeds.
    """

    def __init__(self, transforms_cfg: Mapping[str, Any] | None) -> None:
        self._cfg = _plain(transforms_cfg)
        self._template, self._names = _build(self._cfg)
        self._local = threading.local()

    @property
    def enabled(self) -> bool:
        """False when the config holds no transforms (the Augmenter is the identity)."""
        return self._template is not None

    @property
    def names(self) -> list[str]:
        """Config names of the active transforms, in order of application."""
        return list(self._names)

    @property
    def config(self) -> Any:
        """The plain (dict) config this Augmenter was built from."""
        return copy.deepcopy(self._cfg)

    def _pipeline(self) -> A.Compose | None:
        if self._template is None:
            return None
        pipeline = getattr(self._local, "pipeline", None)
        if pipeline is None:
            pipeline = copy.deepcopy(self._template)
            self._local.pipeline = pipeline
        return pipeline

    def __call__(self, image: np.ndarray, mask: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """Augment one pair with ``seed`` (see :func:`augment_pair`)."""
        return augment_pair(self._pipeline(), image, mask, seed)

    def apply(self, image: np.ndarray, mask: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """Like ``__call__`` but also return the names of the transforms that fired."""
        pipeline = self._pipeline()
        out_image, out_mask = augment_pair(pipeline, image, mask, seed)
        if pipeline is None:
            return out_image, out_mask, []
        fired = [n for n, t in zip(self._names, pipeline.transforms, strict=True) if _applied(t)]
        return out_image, out_mask, fired

    def __getstate__(self) -> dict[str, Any]:
        return {"cfg": self._cfg}

    def __setstate__(self, state: dict[str, Any]) -> None:
        type(self).__init__(self, state["cfg"])

    def __repr__(self) -> str:
        return f"Augmenter({', '.join(self._names) or 'identity'})"
