"""The model group: each network declares itself, with its typed parameters and its start-up rules.

``model.name`` picks a :class:`Network` from :func:`networks`. A network module of
``segexp.models`` provides

* a dataclass of its keys, derived from :class:`ModelParams` (the keys every network has:
  input size, channels, classes, normalisation, dropout), each field ``MISSING`` (the
  preset ``conf/model/<name>.yaml`` holds the defaults, one per key, with a comment);
* ``rules(params) -> list[str]``: problems with the values, each naming its ``model.<key>``;
* ``build(**params) -> keras.Model``;
* ``NETWORK = Network("<name>", build, Params, rules)`` at module level: :func:`networks` finds it
  by importing every module of ``segexp.models`` (``import segexp.models`` does, so every network's
  Keras layers are registered before a saved model is loaded).

Adding a network is that one module and its preset, no edit to a central list: the model choice lists
derive from :func:`networks` (``${networks:}`` in ``conf/hparams_search/architecture_optuna.yaml``,
:data:`RESOLVERS`). A network defined outside ``segexp.models`` joins with :func:`register_network`.
:func:`check_model_config` refuses unknown keys, wrong types and broken rules with one message per
key, before anything is built.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, fields
from functools import cache
from pathlib import Path
from typing import Any

import keras
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from segexp.config.options import Norm
from segexp.config.schema import merge_typed
from segexp.core.errors import ConfigError, raise_config_problems
from segexp.data.io.intensity import UINT8_ENCODING, InputEncoding

#: Keys that were renamed or replaced: an old key is refused with this hint.
RENAMED = {
    "batch_norm": "replaced by model.norm: batch | instance | group | none (batch_norm=true is norm=batch)",
}


@dataclass
class ModelParams:
    """Keys every network has (``conf/model/<name>.yaml``)."""

    name: str = MISSING  # registry key
    image_height: int = MISSING  # input height in pixels
    image_width: int = MISSING  # input width in pixels
    image_channels: int = MISSING  # 1 grey, 3 RGB, or as many as segexp-prepare stacked (dataset.json's storage)
    num_classes: int = MISSING  # output classes incl. background; 1: sigmoid head for binary tasks
    norm: Norm = MISSING  # normalisation after each hidden conv
    norm_groups: int = MISSING  # groups of norm=group
    dropout_rate: float = MISSING  # dropout rate (its place is the network's)


def common_rules(m: Any) -> list[str]:
    """Rules of the keys every network has."""
    errors = []
    for key in ("image_height", "image_width", "num_classes"):
        if m[key] < 1:
            errors.append(f"model.{key}: must be >= 1, got {m[key]}")
    if m.image_channels < 1:
        errors.append(
            f"model.image_channels: must be >= 1 (1 grey, 3 RGB, or the windows segexp-prepare stacked), "
            f"got {m.image_channels}"
        )
    if m.norm_groups < 1:
        errors.append(f"model.norm_groups: must be >= 1, got {m.norm_groups}")
    return errors


def divisible_size_rules(m: Any, levels: int, what: str) -> list[str]:
    """``image_height`` and ``image_width`` must be multiples of ``2**(levels-1)`` (``what`` names the key)."""
    factor = 2 ** (levels - 1)
    return [
        f"model.{key}: {m[key]} is not divisible by 2**({what}-1) = {factor} ({what}={levels}); "
        f"use a multiple of {factor} or fewer levels"
        for key in ("image_height", "image_width")
        if levels >= 1 and m[key] % factor
    ]


@dataclass(frozen=True)
class Network:
    """One entry of the model group: a network module's ``NETWORK``."""

    name: str  # model.name, and its preset conf/model/<name>.yaml
    build: Callable[..., keras.Model]  # keyword arguments: the params' fields except ``name``
    params: type[ModelParams]  # dataclass of its keys
    rules: Callable[[Any], list[str]]  # value problems, each naming its model.<key>


#: Networks defined outside ``segexp.models`` (:func:`register_network`), by name.
_REGISTERED: dict[str, Network] = {}


@cache
def _declared() -> dict[str, Network]:
    """The ``NETWORK`` of every module of ``segexp.models``, by name (the modules are imported once)."""
    found: dict[str, Network] = {}
    for module in sorted(m.name for m in pkgutil.iter_modules([str(Path(__file__).parent)])):
        network = getattr(importlib.import_module(f"{__package__}.{module}"), "NETWORK", None)
        if isinstance(network, Network):
            if network.name in found:
                raise RuntimeError(f"segexp.models.{module}: network {network.name!r} is declared twice")
            found[network.name] = network
    return found


def networks() -> dict[str, Network]:
    """Every network by ``model.name``: those declared in ``segexp.models``, then the registered ones."""
    return {**_declared(), **_REGISTERED}


def register_network(network: Network) -> None:
    """Add ``network``, defined outside ``segexp.models``, to the model group as ``model.name=<its name>``."""
    if network.name in _declared():
        raise ValueError(f"network {network.name!r} is segexp's own (segexp.models); choose another name")
    _REGISTERED[network.name] = network


def unregister_network(name: str) -> None:
    """Remove the network ``name`` added by :func:`register_network` (segexp's own stay)."""
    _REGISTERED.pop(name, None)


def network_choices() -> str:
    """``${networks:}``: every network's name, sorted and comma-separated, as Hydra's ``choice(...)`` takes them."""
    return ", ".join(sorted(networks()))


#: The resolvers of this layer, for :func:`segexp.config.resolvers.register_resolvers` (whose layer cannot
#: import the models): ``${networks:}`` is :func:`network_choices`.
RESOLVERS: dict[str, Callable[..., Any]] = {"networks": network_choices}


def _unknown(name: Any) -> str:
    return f"model.name: unknown model {name!r}; available: {', '.join(sorted(networks()))}"


def check_model_config(model: DictConfig | dict[str, Any]) -> tuple[DictConfig | None, list[str]]:
    """``(typed params, problems)`` of a ``model`` config section; typed is None when a key is unusable."""
    model = model if isinstance(model, DictConfig) else OmegaConf.create(dict(model))
    name = model.get("name")
    known = networks()
    if name not in known:
        return None, [_unknown(name)]
    network = known[name]
    declared = {f.name for f in fields(network.params)}
    problems = [
        f"model.{key!s}: {RENAMED[key]}"
        if key in RENAMED
        else f"model.{key!s}: unknown key for model {name}; expected one of {sorted(declared)}"
        for key in model.keys()
        if key not in declared
    ]
    missing = sorted(declared - set(model.keys()))
    problems += [f"model.{key}: model {name} needs a value (conf/model/{name}.yaml sets it)" for key in missing]
    if problems:
        return None, problems
    try:
        typed, problems = merge_typed(model, network.params, "model.")  # options (model.norm) checked by their set
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", "") or "?"
        return None, [f"model.{key.removeprefix('model.')}: {str(err).splitlines()[0]}"]
    problems += common_rules(typed)
    return typed, problems or network.rules(typed)


def validate_model_config(model: DictConfig | dict[str, Any]) -> DictConfig:
    """The typed ``model`` section, or :class:`ConfigError` listing every problem."""
    typed, problems = check_model_config(model)
    raise_config_problems(problems)
    assert typed is not None  # check_model_config returns None only together with problems, raised above
    return typed


def build_model(name: str, input_encoding: InputEncoding = UINT8_ENCODING, **params: Any) -> keras.Model:
    """Build the registered network ``name`` from its params (keys its builder does not take are ignored), its
    input reading stored images of ``input_encoding`` (the dataset's: 8-bit unless ``dataset.json`` says so).

    A network registered from outside whose builder has no ``input_encoding`` parameter takes 8-bit images
    only: other stored images are a :class:`ConfigError`.
    """
    known = networks()
    if name not in known:
        raise ConfigError(_unknown(name))
    builder = known[name].build
    accepted = inspect.signature(builder).parameters
    if "input_encoding" in accepted:
        params = {**params, "input_encoding": input_encoding}
    elif input_encoding != UINT8_ENCODING:
        raise ConfigError(
            f"model.name: network {name!r} reads 8-bit images only (its builder takes no input_encoding), but the "
            f"dataset stores {input_encoding.dtype} slices (dataset.json's storage)"
        )
    return builder(**{k: v for k, v in params.items() if k in accepted})
