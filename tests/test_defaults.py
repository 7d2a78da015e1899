"""Every config default lives in one place: the YAML under conf/ (the schemas only type and check it)."""

from __future__ import annotations

import dataclasses
import inspect
import typing

from omegaconf import MISSING

from segexp.config import commands, schema
from segexp.models import networks
from segexp.models.registry import ModelParams
from segexp.tracking.store import OutagePolicy

from .conftest import compose_config


def leaf_defaults(cls: type, prefix: str = "") -> dict[str, object]:
    """Full key -> default of every field of ``cls`` that is not MISSING (nested sections recurse)."""
    found = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        nested = next(
            (t for t in (hints[f.name], *typing.get_args(hints[f.name])) if dataclasses.is_dataclass(t)), None
        )
        if nested is not None and f.default_factory is not dataclasses.MISSING:
            found.update(leaf_defaults(nested, f"{prefix}{f.name}."))
        elif f.default is not MISSING:
            found[prefix + f.name] = f.default if f.default is not dataclasses.MISSING else f.default_factory
    return found


def schemas() -> list[type]:
    classes = [
        c for m in (schema, commands) for _, c in inspect.getmembers(m, inspect.isclass) if dataclasses.is_dataclass(c)
    ]
    return classes + [ModelParams] + [n.params for n in networks().values()]


#: Entries of maps the user writes (``volumes.classes.<name>``): no YAML can hold their defaults.
ENTRY_SCHEMAS = {commands.VolumeClassConfig}


def test_schemas_hold_no_defaults() -> None:
    assert len(schemas()) > 10
    offenders = {cls.__name__: d for cls in schemas() if cls not in ENTRY_SCHEMAS and (d := leaf_defaults(cls))}
    assert offenders == {}, "defaults belong in conf/*.yaml, one per key, with a comment"


def test_every_network_preset_sets_exactly_its_declared_keys() -> None:
    for name, network in networks().items():
        declared = {f.name for f in dataclasses.fields(network.params)}
        cfg = compose_config([f"model={name}"])
        assert set(cfg.model.keys()) == declared, name


def test_the_outage_policy_defaults_are_the_yaml_ones() -> None:
    outage = compose_config(["tracking=sqlite"]).tracking.outage
    policy = OutagePolicy()
    assert {k: float(v) for k, v in outage.items()} == {k: float(getattr(policy, k)) for k in outage}
