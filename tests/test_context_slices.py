"""2.5D context (issue 30): ``segexp-prepare context_slices=k`` stacks each slice's neighbours as channels,
``dataset.context_slices`` checks it, and segexp-infer builds the same samples from a volume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from segexp.config.schema import ConfigError
from segexp.data.io.context import context_indices, context_stack
from segexp.data.io.slices import read_image
from segexp.data.prepare.volumes_to_slices import prepare
from segexp.data.runtime.dataset import open_dataset
from segexp.evaluation import prediction
from segexp.evaluation.prediction import infer
from segexp.tracking.runs import open_run

from .conftest import compose_config
from .test_intensity_spacing import make_run, oracle
from .test_prepare import compose_prepare

#: Every slice kept (empty ones too), so the k = 0 slices hold every neighbour of the k = 1 slices.
ALL_SLICES = ("split.ratios={train:0.6,valid:0.2,test:0.2}", "empty_fraction=1")


def manifest(out: Path) -> dict:
    return json.loads((out / "dataset.json").read_text())


def stored_slices(out: Path, split: str = "train") -> dict[str, np.ndarray]:
    channels = manifest(out)["storage"]["channels"]
    return {p.stem: read_image(p, channels) for p in sorted((out / split / "images").iterdir())}


def test_neighbour_indices_repeat_the_border() -> None:
    assert context_indices(0, 5, 2) == [0, 0, 0, 1, 2]
    assert context_indices(4, 5, 1) == [3, 4, 4]
    assert context_indices(2, 5, 0) == [2]
    assert context_indices(0, 1, 2) == [0, 0, 0, 0, 0]
    with pytest.raises(ValueError, match="context_slices must be >= 0"):
        context_indices(0, 5, -1)


def test_the_stack_is_offset_major() -> None:
    volume = np.arange(4 * 2 * 2 * 2).reshape(4, 2, 2, 2)  # 4 slices of 2x2, 2 channels each
    stacked = context_stack(volume.__getitem__, 0, 4, 1)
    assert stacked.shape == (2, 2, 6)
    assert np.array_equal(stacked, np.concatenate([volume[0], volume[0], volume[1]], axis=2))
    grey = np.arange(3 * 2 * 2).reshape(3, 2, 2)
    assert np.array_equal(context_stack(grey.__getitem__, 1, 3, 1), np.stack([grey[0], grey[1], grey[2]], axis=2))


def test_prepare_stacks_the_neighbours_of_every_kept_slice(tmp_path: Path) -> None:
    plain = prepare(compose_prepare(tmp_path, *ALL_SLICES, f"out_dir={tmp_path / 'k0'}"))
    k1 = prepare(compose_prepare(tmp_path, *ALL_SLICES, "context_slices=1", f"out_dir={tmp_path / 'k1'}"))
    k2 = prepare(compose_prepare(tmp_path, *ALL_SLICES, "context_slices=2", f"out_dir={tmp_path / 'k2'}"))
    assert manifest(k1)["storage"] | {} == {**manifest(k1)["storage"], "channels": 3, "context_slices": 1}
    assert manifest(k2)["storage"]["channels"] == 5 and manifest(k2)["storage"]["format"] == "npy"
    assert manifest(plain)["storage"]["context_slices"] == 0
    flat, one, two = stored_slices(plain), stored_slices(k1), stored_slices(k2)
    assert flat.keys() == one.keys() == two.keys()
    checked = 0
    for name, centre in flat.items():
        case, index = name.rsplit("_", 1)
        i, total = int(index), manifest(plain)["cases"][case]["slices_total"]
        digits = len(index)
        neighbours = [flat[f"{case}_{j:0{digits}d}"][..., 0] for j in context_indices(i, total, 2)]
        assert np.array_equal(one[name], np.stack(neighbours[1:4], axis=2)), name
        assert np.array_equal(two[name], np.stack(neighbours, axis=2)), name
        assert np.array_equal(two[name][..., 2], centre[..., 0])
        checked += 1
    assert checked == len(flat) > 12
    # an edge slice repeats the border: slice 0's left neighbour is itself
    first = next(n for n in one if n.endswith("_000"))
    assert np.array_equal(one[first][..., 0], one[first][..., 1])


def test_dataset_context_slices_must_match_the_stored_slices(tmp_path: Path) -> None:
    out = prepare(compose_prepare(tmp_path, *ALL_SLICES, "context_slices=1"))

    def dataset(*overrides: str):
        cfg = compose_config([f"paths.root={tmp_path}", "dataset=phantom_prepared", f"dataset.root={out}", *overrides])
        return open_dataset(cfg.dataset, 6)

    assert (dataset().context_slices, dataset().channels) == (1, 3)  # null: as stored
    assert dataset("dataset.context_slices=1").channels == 3
    with pytest.raises(ConfigError, match=r"dataset.context_slices=2: .* carry 1 neighbour\(s\) per side"):
        dataset("dataset.context_slices=2")
    with pytest.raises(ConfigError, match="segexp-prepare context_slices=2"):
        dataset("dataset.context_slices=2")
    plain = prepare(compose_prepare(tmp_path, *ALL_SLICES, f"out_dir={tmp_path / 'plain'}"))
    cfg = compose_config([f"paths.root={tmp_path}", "dataset=phantom_prepared", f"dataset.root={plain}"])
    cfg.dataset.context_slices = 1
    with pytest.raises(ConfigError, match="carry no neighbouring slices"):
        open_dataset(cfg.dataset, 6)


@pytest.mark.parametrize("value", ["-1", "two"])
def test_bad_context_settings_name_the_key(tmp_path: Path, value: str) -> None:
    from segexp.config.schema import validate_train_config

    with pytest.raises((ConfigError, ValueError), match="context_slices"):
        prepare(compose_prepare(tmp_path, f"context_slices={value}"))
    if value == "-1":
        with pytest.raises(ConfigError, match="dataset.context_slices"):
            validate_train_config(compose_config([f"paths.root={tmp_path}", f"dataset.context_slices={value}"]))


def test_infer_builds_the_samples_the_training_slices_are(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Train/infer parity: the batch segexp-infer feeds the model for a volume is, slice for slice, the stored
    training slices of that volume (32x32 phantom, model input 32x32, so no resize on either side)."""
    out = prepare(compose_prepare(tmp_path, *ALL_SLICES, "context_slices=1"))
    m = manifest(out)
    case = m["splits"]["test"][0]
    volume = Path(m["source"]) / m["cases"][case]["image"]["file"]
    run = open_run(str(make_run(tmp_path, oracle(channels=3), out, channels=3)))
    fed: list[np.ndarray] = []
    real = prediction.predict_batches

    def spy(model, batch, **kwargs):
        fed.append(np.array(batch))
        return real(model, batch, **kwargs)

    monkeypatch.setattr(prediction, "predict_batches", spy)
    assert infer(run, volume, tmp_path / "pred") == []
    fed_slices = np.concatenate(fed)
    stored = stored_slices(out, "test")
    assert len(fed_slices) == m["cases"][case]["slices_total"] == len(stored)
    for i, name in enumerate(sorted(stored)):
        assert np.array_equal(fed_slices[i], stored[name]), name
