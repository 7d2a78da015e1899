"""Option fields are typed with their set (``segexp.config.options``): OmegaConf holds members, and every bad
value is reported at once, with its full key and the choices, before OmegaConf refuses the first."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from omegaconf import OmegaConf

from segexp.config.commands import validate_check_config, validate_evaluate_config, validate_infer_config
from segexp.config.options import LargeImages, Layout, MaskFormat, Norm, Option, Precision, SliceAxis, Split
from segexp.config.schema import ConfigError, to_dict
from segexp.training.loop import validate_run_config

from .conftest import compose_config

EVALUATE = ["run=x", "paths.root=/tmp"]
INFER = ["run=x", "input=y", "paths.root=/tmp"]


def _refusal(check: Any, cfg: Any) -> str:
    with pytest.raises(ConfigError) as caught:
        check(cfg)
    return str(caught.value)


def test_every_option_set_member_is_named_as_its_value() -> None:
    """OmegaConf converts a string by member name and dumps the name: both must be the value."""
    for options in Option.__subclasses__():
        assert [m.name for m in options] == [m.value for m in options], options
        assert all(m.value.isidentifier() for m in options), options


def test_a_bad_option_is_named_with_its_full_key_and_the_choices(tmp_path: Path) -> None:
    message = _refusal(validate_run_config, compose_config([f"paths.root={tmp_path}", "dataset.layout=folders"]))
    assert "dataset.layout: expected one of ['auto', 'splits', 'flat'], got 'folders'" in message
    infer = compose_config([*INFER, "window=cardiac_cta", "window.mode=auto"], "infer")
    message = _refusal(validate_infer_config, infer)
    assert "window.mode: expected one of ['fixed', 'percentile', 'ct_zscore', 'zscore'], got 'auto'" in message


def test_bad_options_of_different_sections_are_reported_together(tmp_path: Path) -> None:
    cfg = compose_config(
        [
            f"paths.root={tmp_path}",
            "training.precision=half",
            "dataset.on_bad_file=ignore",
            "model.norm=layer",
            "training.epochs=0",
        ]
    )
    message = _refusal(validate_run_config, cfg)
    for text in (
        "training.precision: expected one of ['auto', 'fp32', 'bf16', 'fp16'], got 'half'",
        "dataset.on_bad_file: expected one of ['error', 'skip'], got 'ignore'",
        "model.norm: expected one of ['batch', 'instance', 'group', 'none'], got 'layer'",
        "training.epochs: must be >= 1, got 0",  # the other rules still run with the options given
    ):
        assert text in message


def test_bad_options_come_with_the_unknown_keys(tmp_path: Path) -> None:
    message = _refusal(
        validate_run_config, compose_config([f"paths.root={tmp_path}", "+training.epoch=3", "training.postprocess=x"])
    )
    assert "training.epoch: unknown key" in message
    assert "training.postprocess: expected one of ['auto', 'none'], got 'x'" in message


def test_an_interpolated_option_is_checked_by_its_value(tmp_path: Path) -> None:
    root = f"paths.root={tmp_path}"
    cfg = validate_run_config(compose_config([root, "dataset.layout=auto", "training.precision=${dataset.layout}"]))
    assert cfg.training.precision is Precision.auto
    message = _refusal(validate_run_config, compose_config([root, "training.precision=${dataset.mask_format}"]))
    assert "training.precision: expected one of ['auto', 'fp32', 'bf16', 'fp16'], got 'rgb'" in message


def test_good_strings_become_members(tmp_path: Path) -> None:
    cfg = validate_run_config(compose_config([f"paths.root={tmp_path}", "training.precision=bf16", "model.norm=group"]))
    assert cfg.training.precision is Precision.bf16
    assert cfg.model.norm is Norm.group
    assert isinstance(cfg.dataset.layout, Layout) and isinstance(cfg.dataset.mask_format, MaskFormat)
    assert cfg.training.precision == "bf16" and f"{cfg.training.precision!r}" == "'bf16'"  # still reads as the string
    assert validate_evaluate_config(compose_config([*EVALUATE, "split=valid"], "evaluate")).split is Split.valid
    infer = validate_infer_config(compose_config([*INFER, "large_images=tile"], "infer"))
    assert infer.large_images is LargeImages.tile
    check = validate_check_config(compose_config(["axis=coronal", "paths.root=/tmp"], "check"))
    assert check.axis is SliceAxis.coronal


def test_a_typed_config_dumps_its_options_as_plain_strings(tmp_path: Path) -> None:
    cfg = validate_run_config(compose_config([f"paths.root={tmp_path}", "training.precision=fp16"]))
    loaded = yaml.safe_load(OmegaConf.to_yaml(cfg))
    assert loaded["training"]["precision"] == "fp16" and type(loaded["training"]["precision"]) is str
    assert loaded["model"]["norm"] == str(cfg.model.norm) and type(loaded["model"]["norm"]) is str
    assert loaded == to_dict(cfg, resolve=True)  # the plain dict the run folder and MLflow get
    yaml.safe_dump(to_dict(cfg, resolve=True))  # no member left: safe_dump refuses one
    again = validate_run_config(OmegaConf.create(loaded))
    assert again.training.precision is Precision.fp16 and again.dataset.layout == cfg.dataset.layout
