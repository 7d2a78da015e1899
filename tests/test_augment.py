"""Tests for segexp.data.runtime.augment (config -> albumentations pipeline, paired warps) and segexp.evaluation.viz."""

from __future__ import annotations

import pickle
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from segexp.data.io.rgb_map import default_palette
from segexp.data.runtime.augment import (
    AugmentationError,
    Augmenter,
    augment_pair,
    build_augmentation,
    sample_seed,
)
from segexp.evaluation.viz import (
    hstack_panels,
    image_truth_prediction,
    overlay_mask,
    save_png,
)

CONF = Path(__file__).resolve().parents[1] / "conf"
PRESETS = sorted(p.stem for p in (CONF / "augmentation").glob("*.yaml"))
STEP = 40  # image intensity per class in the alignment fixture


def preset(name: str, *overrides: str):
    """``cfg.augmentation`` of ``conf/augmentation/<name>.yaml`` composed with Hydra."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name=f"augmentation/{name}", overrides=list(overrides))
    return cfg.augmentation


def block_mask(size: int = 96) -> np.ndarray:
    """Big rectangular blocks of classes 1..4 on background 0 (asymmetric layout)."""
    mask = np.zeros((size, size), np.uint8)
    s = size // 8
    mask[1 * s : 4 * s, 1 * s : 3 * s] = 1
    mask[1 * s : 3 * s, 4 * s : 7 * s] = 2
    mask[5 * s : 7 * s, 1 * s : 5 * s] = 3
    mask[4 * s : 6 * s, 6 * s : 8 * s] = 4  # touches the right edge
    return mask


def decode(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image.astype(np.float32) / STEP), 0, 4).astype(np.uint8)


def interior(mask: np.ndarray, radius: int = 2) -> np.ndarray:
    """Pixels whose (2r+1)^2 neighbourhood holds a single label."""
    k = np.ones((2 * radius + 1, 2 * radius + 1), np.uint8)
    return cv2.dilate(mask, k) == cv2.erode(mask, k)


@pytest.fixture(scope="module")
def full() -> Augmenter:
    return Augmenter(preset("full").transforms)


# --------------------------------------------------------------------------- presets


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_instantiates(name: str) -> None:
    raw = preset(name)  # composed: a preset may build on another (spatial on full)
    assert raw.name == name
    assert OmegaConf.is_dict(raw.transforms)
    pipeline = build_augmentation(raw.transforms)
    if name == "none":
        assert pipeline is None
    else:
        assert len(pipeline.transforms) == len([v for v in raw.transforms.values() if v is not None])
    # plain dicts work too
    build_augmentation(OmegaConf.to_container(raw.transforms))


def test_expected_presets_exist() -> None:
    assert {"none", "flips", "full"} <= set(PRESETS)
    assert Augmenter(preset("full").transforms).names == [
        "hflip",
        "vflip",
        "rotate",
        "shear",
        "scale",
        "elastic",
        "barrel",
        "pincushion",
    ]


def test_spatial_preset_is_full_without_the_mirrors() -> None:
    full = preset("full").transforms
    spatial = preset("spatial").transforms
    assert Augmenter(spatial).names == [n for n in Augmenter(full).names if n not in ("hflip", "vflip")]
    pipeline = build_augmentation(spatial)
    kinds = {type(t).__name__ for t in pipeline.transforms}
    assert not kinds & {"HorizontalFlip", "VerticalFlip"}
    for name in Augmenter(spatial).names:  # the same transforms with the same settings as full's
        assert spatial[name] == full[name]


def test_none_preset_builds_nothing() -> None:
    assert build_augmentation(preset("none").transforms) is None
    assert build_augmentation(None) is None
    assert build_augmentation({"a": None}) is None
    aug = Augmenter(preset("none").transforms)
    assert not aug.enabled
    image, mask = np.arange(64, dtype=np.uint8).reshape(8, 8), block_mask(8)
    out_image, out_mask = aug(image, mask, 3)
    assert np.array_equal(out_image, image) and np.array_equal(out_mask, mask)


def test_barrel_and_pincushion_signs() -> None:
    t = preset("full").transforms
    assert t.barrel.distort_limit[0] > 0 and t.barrel.distort_limit[1] > 0
    assert t.pincushion.distort_limit[0] < 0 and t.pincushion.distort_limit[1] < 0
    # barrel shrinks the picture towards the centre (corners become fill 0), pincushion
    # magnifies it: a centred square loses / gains area
    image = np.full((64, 64), 200, np.uint8)
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 16:48] = 1
    area = {}
    for name in ("barrel", "pincushion"):
        only = {name: {**OmegaConf.to_container(t[name]), "p": 1.0}}
        out_image, out_mask = Augmenter(only)(image, mask, 0)
        area[name] = int(out_mask.sum())
        corner = out_image[0, 0]
        assert (corner == 0) if name == "barrel" else (corner == 200)
    assert area["barrel"] < int(mask.sum()) < area["pincushion"], area


def test_command_line_style_overrides() -> None:
    aug = Augmenter(
        preset(
            "full",
            "augmentation.transforms.elastic=null",
            "augmentation.transforms.rotate.p=0.2",
            "+augmentation.transforms.blur={_target_:albumentations.GaussianBlur,p:0.2}",
        ).transforms
    )
    assert "elastic" not in aug.names and aug.names[-1] == "blur"


def test_p_out_of_range_names_the_key() -> None:
    with pytest.raises(AugmentationError, match=r"augmentation\.transforms\.rotate .*albumentations\.Affine.*p"):
        build_augmentation(preset("full", "augmentation.transforms.rotate.p=1.5").transforms)
    with pytest.raises(AugmentationError, match=r"augmentation\.transforms\.vflip"):
        Augmenter(preset("flips", "augmentation.transforms.vflip.p=-0.1").transforms)


def test_unknown_target_names_the_key() -> None:
    cfg = preset("full", "augmentation.transforms.shear._target_=albumentations.NoSuchTransform")
    with pytest.raises(AugmentationError) as info:
        build_augmentation(cfg.transforms)
    message = str(info.value)
    assert "augmentation.transforms.shear" in message and "albumentations.NoSuchTransform" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("entry", "pattern"),
    [
        ({"p": 0.5}, "missing _target_"),
        ("HorizontalFlip", "expected a mapping"),
        ({"_target_": "collections.OrderedDict"}, "not an albumentations transform"),
        ({"_target_": "albumentations.Affine", "rotat": 10}, "rotat"),
        ({"_target_": "albumentations.Affine", "rotate": "abc"}, "rotate"),
    ],
)
def test_bad_entries(entry, pattern: str) -> None:
    with pytest.raises(AugmentationError, match=rf"augmentation\.transforms\.bad.*{pattern}"):
        build_augmentation({"bad": entry})


def test_transforms_must_be_a_mapping() -> None:
    with pytest.raises(AugmentationError, match="mapping"):
        build_augmentation([{"_target_": "albumentations.HorizontalFlip"}])  # type: ignore[arg-type]


# --------------------------------------------------------------------------- warps


def test_full_preset_keeps_image_and_mask_aligned(full: Augmenter) -> None:
    mask = block_mask()
    image = (mask * STEP).astype(np.uint8)
    classes = set(np.unique(mask).tolist())
    agree = total = 0
    warped = 0
    for seed in range(48):
        out_image, out_mask = full(image, mask, sample_seed(7, 0, seed))
        assert out_image.shape == image.shape and out_image.dtype == np.uint8
        assert out_mask.shape == mask.shape and out_mask.dtype == np.uint8
        assert set(np.unique(out_mask).tolist()) <= classes
        keep = interior(out_mask)
        agree += int((decode(out_image)[keep] == out_mask[keep]).sum())
        total += int(keep.sum())
        warped += not np.array_equal(out_mask, mask)
    assert warped > 40
    assert agree / total >= 0.97, agree / total

    # the check can fail: image and mask warped with different seeds disagree
    bad_agree = bad_total = 0
    for seed in range(8):
        out_image, _ = full(image, mask, 1000 + seed)
        _, out_mask = full(image, mask, 2000 + seed)
        keep = interior(out_mask)
        bad_agree += int((decode(out_image)[keep] == out_mask[keep]).sum())
        bad_total += int(keep.sum())
    assert bad_agree / bad_total < 0.9


def test_reproducible(full: Augmenter) -> None:
    mask = block_mask()
    image = np.random.default_rng(0).integers(0, 256, mask.shape, dtype=np.uint8)
    a = full(image, mask, 123)
    b = full(image, mask, 123)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    # independent of the history of calls
    full(image, mask, 5)
    c = full(image, mask, 123)
    assert np.array_equal(a[0], c[0]) and np.array_equal(a[1], c[1])
    # different seeds give different results (a few seeds only fire flips and may
    # coincide: P(no warp fires) ~ 0.13 for the full preset)
    outs = {full(image, mask, s)[0].tobytes() for s in range(20)}
    assert len(outs) >= 15
    assert not np.array_equal(full(image, mask, 1)[0], full(image, mask, 2)[0])


def test_augment_pair_with_a_plain_pipeline() -> None:
    pipeline = build_augmentation(preset("full").transforms)
    mask = block_mask()
    image = (mask * STEP).astype(np.uint8)
    a = augment_pair(pipeline, image, mask, 9)
    b = augment_pair(pipeline, image, mask, 9)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert augment_pair(None, image, mask, 9)[1] is not mask


def test_flips_preset_only_flips_and_flips_independently() -> None:
    aug = Augmenter(preset("flips").transforms)
    mask = block_mask(32)
    image = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    variants = {
        (): lambda a: a,
        ("hflip",): lambda a: a[:, ::-1],
        ("vflip",): lambda a: a[::-1],
        ("hflip", "vflip"): lambda a: a[::-1, ::-1],
    }
    counts = dict.fromkeys(variants, 0)
    for seed in range(200):
        out_image, out_mask, fired = aug.apply(image, mask, sample_seed(0, 1, seed))
        flip = variants[tuple(fired)]
        assert np.array_equal(out_image, flip(image)) and np.array_equal(out_mask, flip(mask))
        counts[tuple(fired)] += 1
    # each transform has its own random stream: all four combinations occur (~50 each)
    assert min(counts.values()) >= 25, counts


def test_image_layout_is_preserved(full: Augmenter) -> None:
    mask = block_mask(48)
    gray = (mask * STEP).astype(np.uint8)
    rgb = np.stack([gray, 255 - gray, gray // 2], axis=2)
    for seed in range(6):
        g, m = full(gray, mask, seed)
        assert g.shape == (48, 48) and g.dtype == np.uint8 and m.shape == (48, 48)
        c, m2 = full(rgb, mask, seed)
        assert c.shape == (48, 48, 3) and c.dtype == np.uint8
        assert np.array_equal(m, m2)  # same seed -> same warp whatever the channels


def test_bad_inputs_are_rejected(full: Augmenter) -> None:
    mask = block_mask(16)
    with pytest.raises(TypeError):
        full(mask.astype(np.float32), mask, 0)
    with pytest.raises(ValueError, match="differ"):
        full(np.zeros((8, 8), np.uint8), mask, 0)


def test_non_nearest_mask_interpolation_is_caught() -> None:
    aug = Augmenter(
        {"rotate": {"_target_": "albumentations.Affine", "rotate": [20, 30], "mask_interpolation": 1, "p": 1.0}}
    )
    mask = np.zeros((32, 32), np.uint8)
    mask[:, 16:] = 4
    with pytest.raises(AugmentationError, match="mask_interpolation"):
        aug(np.zeros((32, 32), np.uint8), mask, 0)


def test_sample_seed() -> None:
    s = sample_seed(42, 3, 17)
    assert s == sample_seed(42, 3, 17) and 0 <= s < 2**32
    seeds = {sample_seed(42, e, i) for e in range(5) for i in range(100)}
    assert len(seeds) == 500
    assert sample_seed(42, 0, 1) != sample_seed(42, 1, 0)
    with pytest.raises(ValueError):
        sample_seed(-1, 0, 0)


def test_augmenter_pickles(full: Augmenter) -> None:
    mask = block_mask()
    image = (mask * STEP).astype(np.uint8)
    before = [full(image, mask, s) for s in range(6)]
    clone = pickle.loads(pickle.dumps(full))
    assert clone.names == full.names
    for s, (bi, bm) in enumerate(before):
        ci, cm = clone(image, mask, s)
        assert np.array_equal(bi, ci) and np.array_equal(bm, cm)


def test_augmenter_is_thread_safe(full: Augmenter) -> None:
    mask = block_mask()
    image = np.random.default_rng(2).integers(0, 256, mask.shape, dtype=np.uint8)
    seeds = [sample_seed(3, 0, i) for i in range(64)]
    sequential = [full(image, mask, s) for s in seeds]
    with ThreadPoolExecutor(max_workers=4) as pool:
        threaded = list(pool.map(lambda s: full(image, mask, s), seeds))
    for (si, sm), (ti, tm) in zip(sequential, threaded, strict=True):
        assert np.array_equal(si, ti) and np.array_equal(sm, tm)


# --------------------------------------------------------------------------- viz


def test_palette() -> None:
    pal = default_palette(20)
    assert pal.shape == (20, 3) and pal.dtype == np.uint8
    assert (pal[0] == 0).all()
    assert len({tuple(c) for c in pal.tolist()}) == 20


def test_overlay_mask() -> None:
    mask = block_mask(64)
    pal = default_palette(5)
    for image in (np.full((64, 64), 100, np.uint8), np.full((64, 64, 3), (10, 100, 200), np.uint8)):
        out = overlay_mask(image, mask, pal)
        assert out.shape == (64, 64, 3) and out.dtype == np.uint8
        rgb = image if image.ndim == 3 else np.repeat(image[:, :, None], 3, 2)
        assert np.array_equal(out[mask == 0], rgb[mask == 0])  # background untouched
        assert (out[mask > 0] != rgb[mask > 0]).any(axis=1).all()  # every class pixel tinted
        # contour in full colour on the block edge, blend inside
        s = 64 // 8
        assert tuple(out[s, s + 3]) == tuple(pal[1])
        assert tuple(out[2 * s, s + 4]) != tuple(pal[1])
    with pytest.raises(ValueError):
        overlay_mask(np.zeros((64, 64), np.uint8), mask, default_palette(3))


def test_panels_and_png(tmp_path: Path) -> None:
    mask = block_mask(40)
    image = (mask * STEP).astype(np.uint8)
    fig = image_truth_prediction(image, mask, np.zeros_like(mask), default_palette(5))
    assert fig.dtype == np.uint8 and fig.ndim == 3
    assert fig.shape[1] == 3 * 40 + 2 * 4 and fig.shape[0] > 40  # title strip on top
    plain = hstack_panels([image, np.zeros((30, 20, 3), np.uint8)], gap=2)
    assert plain.shape == (40, 40 + 2 + 20, 3)
    red = np.zeros((4, 4, 3), np.uint8)
    red[..., 0] = 255
    path = save_png(tmp_path / "sub" / "red.png", red)
    assert tuple(cv2.imread(str(path))[0, 0]) == (0, 0, 255)  # BGR on disk = red
