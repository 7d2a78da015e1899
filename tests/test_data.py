"""Slice folders: pairing, mask decoding, patient splits and the streaming loader."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from segexp.data.io.rgb_map import decode_rgb_mask, encode_rgb_mask
from segexp.data.io.slices import (
    DataError,
    MaskDecoder,
    find_pairs,
    load_pair,
    split_pairs,
)
from segexp.data.runtime.augment import Augmenter
from segexp.data.runtime.dataset import open_dataset
from segexp.data.runtime.loader import MAIN_THREAD, SliceLoader
from segexp.data.runtime.sampling import EpochSampler

from .conftest import (
    HOCM_MINI,
    TINY_COLOURS,
    compose_config,
    tiny_pair,
    write_tiny_dataset,
)

HOCM_COLOURS = [
    [0, 0, 0],
    [255, 0, 255],
    [0, 255, 255],
    [0, 0, 255],
    [0, 255, 0],
    [255, 255, 0],
    [255, 0, 0],
    [110, 110, 110],
]


def test_rgb_map_round_trip_through_png(tmp_path: Path) -> None:
    mask = np.random.default_rng(0).integers(0, len(HOCM_COLOURS), (40, 50)).astype(np.uint8)
    path = tmp_path / "m.png"
    cv2.imwrite(str(path), encode_rgb_mask(mask, HOCM_COLOURS)[..., ::-1])
    assert np.array_equal(MaskDecoder("rgb", 8, HOCM_COLOURS)(path), mask)


def test_unknown_colour_names_file_and_colour(tmp_path: Path) -> None:
    rgb = encode_rgb_mask(np.zeros((8, 8), np.uint8), TINY_COLOURS)
    rgb[2, 3] = (12, 34, 56)
    path = tmp_path / "bad_007.png"
    cv2.imwrite(str(path), rgb[..., ::-1])
    with pytest.raises(DataError, match=r"bad_007\.png.*\(12, 34, 56\)"):
        MaskDecoder("rgb", 3, TINY_COLOURS)(path)


def test_blended_edge_colour_is_rejected() -> None:
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[0, 0] = (128, 0, 128)  # an anti-aliased edge between background and (255, 0, 255)
    with pytest.raises(ValueError, match=r"\(128, 0, 128\)"):
        decode_rgb_mask(rgb, HOCM_COLOURS, "edge.png")


def test_binary_and_index_masks(tmp_path: Path) -> None:
    grey = np.array([[0, 127], [128, 255]], np.uint8)
    cv2.imwrite(str(tmp_path / "b.png"), grey)
    assert MaskDecoder("binary", 2, threshold=128)(tmp_path / "b.png").tolist() == [[0, 0], [1, 1]]
    cv2.imwrite(str(tmp_path / "i.png"), np.array([[0, 1], [2, 3]], np.uint8))
    assert MaskDecoder("index", 4)(tmp_path / "i.png").tolist() == [[0, 1], [2, 3]]
    with pytest.raises(DataError, match=r"i\.png.*values \[3\]"):
        MaskDecoder("index", 3)(tmp_path / "i.png")


def test_missing_partners_are_listed(tmp_path: Path) -> None:
    root = write_tiny_dataset(tmp_path / "d", {"train": 3})
    (root / "train" / "masks" / "case0_001.png").unlink()
    (root / "train" / "images" / "case0_002.png").rename(root / "train" / "images" / "case0_099.png")
    with pytest.raises(DataError) as info:
        find_pairs(root / "train" / "images", root / "train" / "masks", r"^(?P<case>.+)_\d+$")
    text = str(info.value)
    assert "images without a mask" in text and "case0_001" in text and "case0_099" in text
    assert "masks without an image" in text and "case0_002" in text


def test_grayscale_and_rgb_images_and_nearest_resize(tmp_path: Path) -> None:
    root = write_tiny_dataset(tmp_path / "d", {"train": 1}, size=32)
    pair = find_pairs(root / "train" / "images", root / "train" / "masks", r"^(?P<case>.+)_\d+$")[0]
    decoder = MaskDecoder("rgb", 3, TINY_COLOURS)
    grey, mask = load_pair(pair, decoder, channels=1, height=32, width=32)
    rgb, _ = load_pair(pair, decoder, channels=3, height=32, width=32)
    assert grey.shape == (32, 32, 1) and rgb.shape == (32, 32, 3)
    assert np.array_equal(rgb[..., 0], grey[..., 0])
    small_img, small_mask = load_pair(pair, decoder, channels=1, height=16, width=16)
    assert small_img.shape == (16, 16, 1) and small_mask.dtype == np.uint8
    assert set(np.unique(small_mask)) <= set(np.unique(mask))  # nearest: no new labels


def test_image_and_mask_size_mismatch_names_both(tmp_path: Path) -> None:
    root = write_tiny_dataset(tmp_path / "d", {"train": 1})
    mask_path = root / "train" / "masks" / "case0_000.png"
    cv2.imwrite(str(mask_path), np.zeros((10, 12, 3), np.uint8))
    pair = find_pairs(root / "train" / "images", root / "train" / "masks", r"^(?P<case>.+)_\d+$")[0]
    with pytest.raises(DataError, match=r"case0_000\.png is 32x32 but its mask .*case0_000\.png is 12x10"):
        load_pair(pair, MaskDecoder("rgb", 3, TINY_COLOURS), 1, 32, 32)


def test_flat_layout_splits_by_case_without_leak(tmp_path: Path) -> None:
    root = tmp_path / "flat"
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True)
    for case in ("p1", "p2", "p3"):
        for i in range(3):
            image, mask = tiny_pair(i)
            cv2.imwrite(str(root / "images" / f"{case}_{i}.png"), image)
            cv2.imwrite(str(root / "masks" / f"{case}_{i}.png"), encode_rgb_mask(mask, TINY_COLOURS)[..., ::-1])
    kw = dict(
        layout="flat",
        splits={},
        cases={"train": ["p1", "p3"], "valid": ["p2"]},
        case_pattern=r"^(?P<case>.+)_(?P<slice>\d+)$",
    )
    train = split_pairs(root, "train", **kw)
    valid = split_pairs(root, "valid", **kw)
    assert {p.case for p in train} == {"p1", "p3"} and len(train) == 6
    assert {p.case for p in valid} == {"p2"}
    with pytest.raises(DataError, match=r"dataset\.cases\.valid.*p9"):
        split_pairs(root, "valid", **{**kw, "cases": {"valid": ["p9"]}})


def test_same_case_in_two_split_folders_is_a_leak(tmp_path: Path) -> None:
    root = write_tiny_dataset(tmp_path / "d", {"train": 2, "valid": 2})
    (root / "valid" / "images" / "case1_000.png").rename(root / "valid" / "images" / "case0_050.png")
    (root / "valid" / "masks" / "case1_000.png").rename(root / "valid" / "masks" / "case0_050.png")
    cfg = compose_config(
        [
            "dataset=folder",
            f"dataset.root={root}",
            "dataset.class_names=[background,square,disc]",
            "dataset.rgb_map={background:[0,0,0],square:[255,0,0],disc:[0,255,0]}",
        ]
    )
    with pytest.raises(DataError, match=r"case 'case0' has slices in both the 'train' and 'valid'"):
        open_dataset(cfg.dataset, 3)


def _loader(root: Path, shuffle: bool = False, **kw) -> SliceLoader:
    pairs = find_pairs(root / "train" / "images", root / "train" / "masks", r"^(?P<case>.+)_\d+$")
    sampler = EpochSampler(len(pairs), 3, seed=kw.get("seed", 0)) if shuffle else None  # one shuffled pass
    return SliceLoader(
        pairs, MaskDecoder("rgb", 3, TINY_COLOURS), image_size=(32, 32), channels=1, batch_size=3, sampler=sampler, **kw
    )


def test_loader_batches_are_uint8_class_indices(tmp_path: Path) -> None:
    loader = _loader(write_tiny_dataset(tmp_path / "d", {"train": 7}))
    assert len(loader) == 3
    x, y = loader[0]
    assert x.shape == (3, 32, 32, 1) and x.dtype == np.uint8
    assert y.shape == (3, 32, 32) and y.dtype == np.uint8 and set(np.unique(y)) <= {0, 1, 2}
    assert loader[2][0].shape[0] == 1  # the last, partial batch
    with pytest.raises(IndexError):
        loader[3]


def test_loader_is_reproducible_per_seed_epoch_index(tmp_path: Path) -> None:
    root = write_tiny_dataset(tmp_path / "d", {"train": 6})
    augmenter = Augmenter(compose_config(["augmentation=full"]).augmentation.transforms)
    a = _loader(root, augmenter=augmenter, shuffle=True, seed=3)
    b = _loader(root, augmenter=augmenter, shuffle=True, seed=3)
    first = [a[i] for i in range(len(a))]
    assert all(
        np.array_equal(u[0], v[0]) and np.array_equal(u[1], v[1]) for u, v in zip(first, (b[i] for i in range(len(b))))
    )
    a.on_epoch_end()
    second = [a[i] for i in range(len(a))]
    assert not all(np.array_equal(u[0], v[0]) for u, v in zip(first, second))  # new order and new draws
    b.on_epoch_end()
    assert np.array_equal(b[1][0], second[1][0])  # same (seed, epoch, index) -> same batch


def test_loader_streams_from_disk(tmp_path: Path) -> None:
    """Files are read when a batch is asked for, not up front: a file removed later is noticed then."""
    root = write_tiny_dataset(tmp_path / "d", {"train": 6})
    loader = _loader(root)
    (root / "train" / "images" / "case0_004.png").unlink()
    loader[0]
    with pytest.raises(DataError, match=r"case0_004\.png: cannot read image"):
        loader[1]


def test_validation_loader_never_augments(tmp_path: Path) -> None:
    from segexp.training.loop import build_loaders

    root = write_tiny_dataset(tmp_path / "d")
    cfg = compose_config(
        [
            "dataset=folder",
            f"dataset.root={root}",
            "dataset.class_names=[background,square,disc]",
            "dataset.rgb_map={background:[0,0,0],square:[255,0,0],disc:[0,255,0]}",
            "model.image_height=32",
            "model.image_width=32",
            "model.num_layers=3",
        ]
    )
    dataset = open_dataset(cfg.dataset, 3)
    train, valid = build_loaders(
        cfg.model,
        cfg.training,
        dataset,
        Augmenter(cfg.augmentation.transforms),
        seed=cfg.seed,
        on_bad_file=cfg.dataset.on_bad_file,
        cache_dir=tmp_path / "cache",
    )
    assert train.augmenter is not None and train.sampler is not None
    assert valid.augmenter is None and valid.sampler is None


@pytest.mark.skipif(not HOCM_MINI.is_dir(), reason="../shared/data/hocmvalves_mini is absent")
def test_hocmvalves_mini_decodes_exactly() -> None:
    cfg = compose_config(["experiment=hocmvalves_mini", f"dataset.root={HOCM_MINI}"])
    dataset = open_dataset(cfg.dataset, 8)
    assert dataset.cases("train") == ["10001"] and dataset.cases("valid") == ["10002"]
    assert len(dataset.pairs["train"]) == 14 and len(dataset.pairs["valid"]) == 22
    counts = np.zeros(8, np.int64)
    for pair in dataset.pairs["train"] + dataset.pairs["valid"]:
        counts += np.bincount(dataset.decoder(pair.mask).ravel(), minlength=8)
    # README of the data: LA 191k, Myo 132k, LV 64k, AO 59k, MV 3.0k, AV 2.3k, excised 2.1k pixels.
    assert round(counts[4], -3) == 191_000 and round(counts[6], -3) == 132_000 and counts[1:].min() > 2000


def test_loader_cache_keeps_read_pairs_up_to_its_bound(tmp_path: Path) -> None:
    """With cache_mb, a pair read once is served from memory (a file removed later is not read again);
    pairs beyond the bound stream from disk, and cached and streamed batches are identical."""
    root = write_tiny_dataset(tmp_path / "d", {"train": 6})
    streamed = _loader(root)
    expected = [streamed[i] for i in range(len(streamed))]
    cached = _loader(root, loader=replace(MAIN_THREAD, cache_mb=1.0))
    first = [cached[i] for i in range(len(cached))]
    (root / "train" / "images" / "case0_004.png").unlink()
    again = [cached[i] for i in range(len(cached))]
    for a, b, c in zip(expected, first, again):
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[0], c[0]) and np.array_equal(a[1], c[1])
    one_pair = 32 * 32 * 2 / 2**20  # image + mask at 32x32, in MiB
    bounded = _loader(
        write_tiny_dataset(tmp_path / "e", {"train": 6}), loader=replace(MAIN_THREAD, cache_mb=2.5 * one_pair)
    )
    bounded[0]
    assert len(bounded._cache) == 2  # the bound holds two pairs; the third streams
