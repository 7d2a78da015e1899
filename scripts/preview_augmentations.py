#!/usr/bin/env python
"""Render a grid of augmented image/mask overlays for one or more augmentation presets.

Each row is one sample: the original overlay, then ``--variants`` augmented overlays,
each titled with its variant index and the config names of the transforms that fired.
Masks are drawn as coloured overlays with 1-px contours, so a misaligned warp shows up
as outlines that no longer follow the image edges.

Examples::

    python scripts/preview_augmentations.py                      # full preset, synthetic input
    python scripts/preview_augmentations.py --preset flips,full
    python scripts/preview_augmentations.py --preset full --out docs/augmentation_full.png
    python scripts/preview_augmentations.py --images data/train/images --masks data/train/masks \\
        --rgb-map conf/dataset/phantom.yaml
    python scripts/preview_augmentations.py augmentation.transforms.rotate.p=1   # Hydra overrides

Only the ``augmentation/<preset>`` config group is composed (not ``train.yaml``), so the
overrides use the same keys as in a training run: ``augmentation.transforms.<name>...``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
CONF_DIR = REPO / "conf"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")

if str(REPO) not in sys.path:  # allow running from a checkout without installing
    sys.path.insert(0, str(REPO))

from segexp.data.io.rgb_map import default_palette  # noqa: E402
from segexp.data.runtime.augment import AugmentationError, Augmenter, sample_seed  # noqa: E402
from segexp.evaluation.viz import (  # noqa: E402
    hstack_panels,
    overlay_mask,
    save_png,
    vstack_rows,
)

# ----------------------------------------------------------------------------- config


def available_presets() -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / "augmentation").glob("*.yaml"))


def compose_preset(preset: str, overrides: Sequence[str]):
    """Compose ``augmentation/<preset>`` with Hydra (+ overrides); return cfg.augmentation."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name=f"augmentation/{preset}", overrides=list(overrides))
    return cfg.augmentation


# ----------------------------------------------------------------------------- inputs


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    arr = arr.astype(np.float64)
    lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        return np.zeros(arr.shape, np.uint8)
    return np.clip(np.rint((arr - lo) * 255.0 / (hi - lo)), 0, 255).astype(np.uint8)


def read_image(path: Path) -> np.ndarray:
    arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise ValueError(f"cannot read image {path}")
    if arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[:, :, :3]
    if arr.ndim == 3:
        arr = cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)
        if np.array_equal(arr[:, :, 0], arr[:, :, 1]) and np.array_equal(arr[:, :, 0], arr[:, :, 2]):
            arr = arr[:, :, 0]
    return _to_uint8(arr)


def read_mask(path: Path, colours: list[list[int]] | None) -> np.ndarray:
    arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise ValueError(f"cannot read mask {path}")
    if arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[:, :, :3]
    if colours is not None:
        from segexp.data.io.rgb_map import decode_rgb_mask

        if arr.ndim == 2:
            arr = np.repeat(arr[:, :, None], 3, axis=2)
        return decode_rgb_mask(cv2.cvtColor(arr, cv2.COLOR_BGR2RGB), colours, source=path)
    if arr.ndim == 3:
        if not (np.array_equal(arr[:, :, 0], arr[:, :, 1]) and np.array_equal(arr[:, :, 0], arr[:, :, 2])):
            raise ValueError(f"{path}: colour mask found; pass --rgb-map to decode it")
        arr = arr[:, :, 0]
    if arr.dtype != np.uint8:
        if int(arr.max()) > 255:
            raise ValueError(f"{path}: class index {int(arr.max())} does not fit in uint8")
        arr = arr.astype(np.uint8)
    return arr


def parse_rgb_map(value: str) -> list[list[int]]:
    """``--rgb-map``: a YAML file (a dataset config with ``rgb_map:``, or the map itself)
    or an inline YAML string, e.g. ``'{background: [0,0,0], vessel: [255,0,0]}'``."""
    from omegaconf import OmegaConf

    path = Path(value)
    try:
        data = OmegaConf.to_container(OmegaConf.load(path)) if path.is_file() else None
        if data is None:
            import yaml

            data = yaml.safe_load(value)
    except Exception as exc:  # noqa: BLE001
        raise argparse.ArgumentTypeError(f"cannot parse --rgb-map {value!r}: {exc}") from None
    if isinstance(data, dict) and "rgb_map" in data:
        data = data["rgb_map"]
    if isinstance(data, dict):
        data = list(data.values())
    ok = (
        isinstance(data, list)
        and data
        and all(isinstance(c, (list, tuple)) and len(c) == 3 and all(isinstance(v, int) for v in c) for c in data)
    )
    if not ok:
        raise argparse.ArgumentTypeError(
            f"--rgb-map {value!r}: expected a mapping class -> [r, g, b] (or a file with rgb_map:), got {data!r}"
        )
    return [list(c) for c in data]


def _fit(image: np.ndarray, mask: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Resize so the longer side is ``size`` (image linear, mask nearest)."""
    h, w = mask.shape
    if size <= 0 or max(h, w) == size:
        return image, mask
    f = size / max(h, w)
    nh, nw = max(1, round(h * f)), max(1, round(w * f))
    image = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR)
    mask = cv2.resize(mask, (nw, nh), interpolation=cv2.INTER_NEAREST)
    return image, mask


def folder_samples(
    images: Path, masks: Path, colours: list[list[int]] | None, count: int, size: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    def stems(folder: Path) -> dict[str, Path]:
        return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}

    img_files, mask_files = stems(images), stems(masks)
    common = sorted(set(img_files) & set(mask_files))
    if not common:
        raise ValueError(f"no image/mask pairs with matching file names in {images} and {masks}")
    picks = np.unique(np.linspace(0, len(common) - 1, num=min(count, len(common))).round().astype(int))
    out = []
    for i in picks:
        image = read_image(img_files[common[i]])
        mask = read_mask(mask_files[common[i]], colours)
        if image.shape[:2] != mask.shape:
            raise ValueError(f"{common[i]}: image {image.shape[:2]} and mask {mask.shape} differ in size")
        out.append(_fit(image, mask, size))
    return out


def grid_samples(count: int, size: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Synthetic inputs: a grid image (shows distortions) with a few labelled shapes."""
    out = []
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    step = max(8, size // 12)
    for _ in range(count):
        image = (30 + 40 * (xx + yy) / (2 * size)).astype(np.float32)
        image[(yy % step) == 0] = 200
        image[(xx % step) == 0] = 200
        mask = np.zeros((size, size), np.uint8)
        c = rng.uniform(0.3, 0.7, 2) * size
        r = rng.uniform(0.12, 0.2) * size
        cv2.circle(mask, (int(c[0]), int(c[1])), int(r), 1, -1)
        x0, y0 = (rng.uniform(0.05, 0.45, 2) * size).astype(int)
        cv2.rectangle(mask, (x0, y0), (x0 + size // 4, y0 + size // 6), 2, -1)
        pts = (rng.uniform(0.55, 0.95, (3, 2)) * size).astype(np.int32)
        cv2.fillPoly(mask, [pts], 3)
        for cls, value in ((1, 120), (2, 160), (3, 230)):
            image[mask == cls] = 0.5 * image[mask == cls] + 0.5 * value
        out.append((np.clip(image, 0, 255).astype(np.uint8), mask))
    return out


def phantom_samples(count: int, size: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Slices from segexp.data.phantom (raises if the module or its API is not there)."""
    from segexp.data import phantom  # type: ignore[attr-defined]

    num_slices = max(count * 3, 12)
    hu, labels = phantom.make_phantom_volume(seed=seed, size=size, num_slices=num_slices)
    level, width = phantom.PHANTOM_WINDOW
    volume = np.asarray(phantom.window_to_uint8(hu, level, width))
    labels = np.asarray(labels)
    if volume.shape != labels.shape or volume.ndim != 3:
        raise ValueError(f"unexpected phantom shapes {volume.shape} / {labels.shape}")
    axis = 0 if volume.shape[0] == num_slices else (2 if volume.shape[2] == num_slices else None)
    if axis is None:
        raise ValueError(f"cannot find the slice axis of phantom volume {volume.shape}")
    volume, labels = np.moveaxis(volume, axis, 0), np.moveaxis(labels, axis, 0)
    # Prefer slices with the most labelled structures.
    richness = [len(np.unique(s)) * 1e6 + int((s > 0).sum()) for s in labels]
    order = np.argsort(richness)[::-1][:count]
    return [(volume[i].astype(np.uint8), labels[i].astype(np.uint8)) for i in sorted(order)]


# ----------------------------------------------------------------------------- render


def render(
    augmenter: Augmenter,
    samples: Sequence[tuple[np.ndarray, np.ndarray]],
    colours: np.ndarray,
    variants: int,
    seed: int,
) -> np.ndarray:
    rows = []
    for index, (image, mask) in enumerate(samples):
        panels = [overlay_mask(image, mask, colours)]
        titles = [f"sample {index}: original"]
        for v in range(variants):
            aug_image, aug_mask, fired = augmenter.apply(image, mask, sample_seed(seed, v, index))
            panels.append(overlay_mask(aug_image, aug_mask, colours))
            titles.append(f"#{v} " + ("+".join(fired) if fired else "(none)"))
        rows.append(hstack_panels(panels, titles))
    return vstack_rows(rows, gap=6)


def _split_presets(values: Sequence[str] | None) -> list[str]:
    presets: list[str] = []
    for value in values or ["full"]:
        presets += [v.strip() for v in value.split(",") if v.strip()]
    return list(dict.fromkeys(presets))


def _out_path(out: str | None, preset: str, many: bool) -> Path:
    if out is None:
        return REPO / "outputs" / f"augmentation_preview_{preset}.png"
    if "{preset}" in out:
        return Path(out.format(preset=preset))
    path = Path(out)
    return path.with_name(f"{path.stem}_{preset}{path.suffix or '.png'}") if many else path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Render augmented image/mask overlays for augmentation presets.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Presets: " + ", ".join(available_presets()),
    )
    parser.add_argument(
        "--preset",
        action="append",
        metavar="NAME[,NAME]",
        help="augmentation preset(s) under conf/augmentation (repeatable or comma list; default full)",
    )
    parser.add_argument("--images", type=Path, help="folder with image PNGs (paired with --masks by file name)")
    parser.add_argument("--masks", type=Path, help="folder with mask PNGs (class indices, or colours with --rgb-map)")
    parser.add_argument(
        "--rgb-map",
        type=parse_rgb_map,
        default=None,
        help="decode colour masks: a dataset YAML with rgb_map:, or '{background: [0,0,0], x: [255,0,0]}'",
    )
    parser.add_argument(
        "--source",
        choices=("auto", "phantom", "grid"),
        default="auto",
        help="synthetic input when no --images: phantom slices (auto: if available) or a grid",
    )
    parser.add_argument("--size", type=int, default=256, help="resize inputs so the longer side is SIZE (0: keep)")
    parser.add_argument("--samples", type=int, default=4, help="rows: number of input samples")
    parser.add_argument("--variants", type=int, default=6, help="augmented variants per sample")
    parser.add_argument("--seed", type=int, default=0, help="seed for inputs and augmentations")
    parser.add_argument(
        "--out",
        default=None,
        help="output PNG (default outputs/augmentation_preview_<preset>.png; "
        "'{preset}' in the name is replaced, several presets get a _<preset> suffix)",
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. augmentation.transforms.rotate.p=1")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)

    presets = _split_presets(args.preset)
    known = available_presets()
    for preset in presets:
        if preset not in known:
            parser.error(f"unknown preset {preset!r}; available: {', '.join(known)}")
    if args.samples < 1 or args.variants < 0 or args.seed < 0:
        parser.error("--samples must be >= 1, --variants >= 0 and --seed >= 0")
    if (args.images is None) != (args.masks is None):
        parser.error("--images and --masks go together")
    for flag, folder in (("--images", args.images), ("--masks", args.masks)):
        if folder is not None and not folder.is_dir():
            parser.error(f"{flag}: folder {folder} does not exist")

    try:
        if args.images is not None:
            samples = folder_samples(args.images, args.masks, args.rgb_map, args.samples, args.size)
            source = str(args.images)
        else:
            samples, source = None, "grid"
            if args.source in ("auto", "phantom"):
                try:
                    samples, source = phantom_samples(args.samples, args.size or 256, args.seed), "phantom"
                except Exception as exc:  # noqa: BLE001 - optional module, fall back
                    if args.source == "phantom":
                        parser.error(f"--source phantom: {type(exc).__name__}: {exc}")
            if samples is None:
                samples = grid_samples(args.samples, args.size or 256, args.seed)
    except ValueError as exc:
        parser.error(str(exc))

    num_classes = max(int(m.max()) for _, m in samples) + 1
    if args.rgb_map is not None:
        num_classes = max(num_classes, len(args.rgb_map))
        colours = np.asarray(args.rgb_map, dtype=np.uint8)
        if not colours[1:].any(axis=1).all():  # keep overlays visible even for black classes
            colours = default_palette(num_classes)
    else:
        colours = default_palette(num_classes)

    for preset in presets:
        try:
            cfg = compose_preset(preset, args.overrides)
            augmenter = Augmenter(cfg.transforms)
        except AugmentationError as exc:
            parser.error(str(exc))
        except Exception as exc:  # noqa: BLE001 - Hydra composition errors
            parser.error(f"cannot compose augmentation/{preset}: {type(exc).__name__}: {exc}")
        grid = render(augmenter, samples, colours, args.variants, args.seed)
        out = save_png(_out_path(args.out, preset, len(presets) > 1), grid)
        print(f"{preset}: {augmenter!r} on {len(samples)} {source} samples -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
