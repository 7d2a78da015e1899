"""The NSD tolerance keys: ``training.nsd_tolerance_mm`` and segexp-evaluate's ``nsd_tolerance_mm``."""

from __future__ import annotations

import pytest

from segexp.config.commands import validate_evaluate_config
from segexp.config.schema import validate_train_config
from segexp.core.errors import ConfigError

from .conftest import compose_config


def test_default_tolerance_is_one() -> None:
    assert compose_config(["paths.root=/tmp"]).training.nsd_tolerance_mm == 1.0
    assert compose_config(["run=x", "paths.root=/tmp"], "evaluate").nsd_tolerance_mm is None


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("-1.0", r"training.nsd_tolerance_mm: expected a number >= 0"),
        ("true", r"training.nsd_tolerance_mm: expected a number >= 0"),
        ("{default: -2}", r"training.nsd_tolerance_mm.default: expected a number >= 0"),
    ],
)
def test_bad_training_tolerance_is_refused(value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        validate_train_config(compose_config(["paths.root=/tmp", f"training.nsd_tolerance_mm={value}"]))


def test_per_class_tolerance_checked_against_the_class_names() -> None:
    base = ["paths.root=/tmp"]
    names = list(compose_config(base).dataset.class_names)
    assert names[:2] == ["background", "LV"] and "LA" in names  # the default dataset's classes
    typed = validate_train_config(compose_config([*base, "training.nsd_tolerance_mm={LV: 0.5, default: 2}"]))
    assert dict(typed.training.nsd_tolerance_mm) == {"LV": 0.5, "default": 2}
    with pytest.raises(ConfigError, match=r"\['RV'\] are not foreground classes"):
        validate_train_config(compose_config([*base, "training.nsd_tolerance_mm={RV: 0.5, default: 2}"]))
    with pytest.raises(ConfigError, match=r"no tolerance for \[.*'LA'.*\]: name them or give a default"):
        validate_train_config(compose_config([*base, "training.nsd_tolerance_mm={LV: 0.5}"]))


def test_evaluate_tolerance() -> None:
    base = ["run=x", "paths.root=/tmp"]
    assert validate_evaluate_config(compose_config([*base, "nsd_tolerance_mm=2.5"], "evaluate")).nsd_tolerance_mm == 2.5
    with pytest.raises(ConfigError, match=r"nsd_tolerance_mm: expected a number >= 0"):
        validate_evaluate_config(compose_config([*base, "nsd_tolerance_mm=-1"], "evaluate"))
