"""Epoch sampling: fixed steps per epoch, seeded draws, foreground oversampling, class presence cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from segexp.data.io.slices import MaskDecoder, find_pairs
from segexp.data.runtime.sampling import EpochSampler, cached_class_presence, class_presence
from tests.conftest import TINY_COLOURS, write_tiny_dataset

# 10 slices, 4 classes: class 1 in every slice, class 2 in slices 0-1, class 3 only in slice 7.
PRESENCE = np.zeros((10, 4), bool)
PRESENCE[:, 0] = True
PRESENCE[:, 1] = True
PRESENCE[[0, 1], 2] = True
PRESENCE[7, 3] = True


def test_one_pass_is_a_seeded_permutation() -> None:
    sampler = EpochSampler(10, 4, seed=1)
    assert len(sampler) == 10
    first = sampler.epoch(0)
    assert sorted(first) == list(range(10))
    assert np.array_equal(first, EpochSampler(10, 4, seed=1).epoch(0))
    assert not np.array_equal(first, sampler.epoch(1))


def test_steps_per_epoch_draws_with_replacement_independent_of_the_dataset_size() -> None:
    sampler = EpochSampler(3, 4, seed=0, steps_per_epoch=5)
    indices = sampler.epoch(0)
    assert len(sampler) == len(indices) == 20
    assert set(indices) <= {0, 1, 2} and len(set(indices)) == 3  # 20 draws from 3 slices: repeats


def test_draws_depend_only_on_seed_epoch_and_position() -> None:
    a = EpochSampler(10, 4, seed=3, steps_per_epoch=6, foreground_fraction=0.5, presence=PRESENCE)
    b = EpochSampler(10, 4, seed=3, steps_per_epoch=6, foreground_fraction=0.5, presence=PRESENCE)
    assert np.array_equal(a.epoch(4), b.epoch(4))  # a resumed run sees epoch 4 exactly as before
    assert not np.array_equal(a.epoch(4), a.epoch(5))
    assert not np.array_equal(a.epoch(4), EpochSampler(10, 4, seed=4, steps_per_epoch=6).epoch(4))
    # more steps only append draws: the first positions do not move
    longer = EpochSampler(10, 4, seed=3, steps_per_epoch=9, foreground_fraction=0.5, presence=PRESENCE)
    assert np.array_equal(longer.epoch(4)[:24], a.epoch(4))


def test_forced_slots_hold_a_foreground_class_chosen_uniformly() -> None:
    """The last round(f * B) slots of each batch hold a slice with a foreground class; the
    class is uniform over the classes present, so class 3 (one slice of ten) fills about a
    third of the forced slots although it is in 10 % of the slices."""
    sampler = EpochSampler(10, 3, seed=0, steps_per_epoch=3000, foreground_fraction=0.33, presence=PRESENCE)
    assert sampler.forced_slots() == 1
    indices = sampler.epoch(0).reshape(-1, 3)
    forced, free = indices[:, 2], indices[:, :2].ravel()
    # P(slice 7) = P(class 3) + P(class 1) * 1/10; P(slices 0-1) = P(class 2) + P(class 1) * 2/10
    assert np.mean(forced == 7) == pytest.approx(1 / 3 + 1 / 30, abs=0.02)
    assert np.mean(np.isin(forced, [0, 1])) == pytest.approx(1 / 3 + 2 / 30, abs=0.02)
    assert np.mean(free == 7) == pytest.approx(1 / 10, abs=0.02)  # uniform slots: uniform over slices


def test_no_foreground_anywhere_means_no_forced_slots() -> None:
    presence = np.zeros((5, 3), bool)
    presence[:, 0] = True
    sampler = EpochSampler(5, 4, steps_per_epoch=2, foreground_fraction=1.0, presence=presence)
    assert sampler.forced_slots() == 0
    assert len(sampler.epoch(0)) == 8


def test_presence_rows_must_match_the_slices() -> None:
    with pytest.raises(ValueError, match="3 rows for 10 slices"):
        EpochSampler(10, 4, steps_per_epoch=1, presence=PRESENCE[:3])


def test_class_presence_is_read_from_the_masks_and_cached(tmp_path: Path, monkeypatch) -> None:
    root = write_tiny_dataset(tmp_path / "d", {"train": 4})
    pairs = find_pairs(root / "train" / "images", root / "train" / "masks", r"^(?P<case>.+)_\d+$")
    decoder = MaskDecoder("rgb", 3, TINY_COLOURS)
    expected = np.stack([np.bincount(decoder(p.mask).ravel(), minlength=3) > 0 for p in pairs])
    presence = cached_class_presence(pairs, decoder, tmp_path / "cache")
    assert np.array_equal(presence, expected)
    assert len(list((tmp_path / "cache" / "class_presence").glob("*.npz"))) == 1

    def fail(*args, **kwargs):
        raise AssertionError("masks read again")

    monkeypatch.setattr("segexp.data.runtime.sampling.class_presence", fail)
    assert np.array_equal(cached_class_presence(pairs, decoder, tmp_path / "cache"), expected)
    monkeypatch.undo()
    # a changed mask file is a new key: read again
    pairs[0].mask.write_bytes(pairs[1].mask.read_bytes())
    changed = cached_class_presence(pairs, decoder, tmp_path / "cache")
    assert np.array_equal(changed[0], expected[1])
    assert np.array_equal(class_presence(pairs, decoder), changed)
