"""An Optuna search space read from Hydra's sweep syntax, as ``hydra.sweeper.params`` and the command line write it.

Each key is a Hydra override key (``training.learning_rate``, a config group such as ``augmentation``), each value
one of Hydra's sweeps, parsed by Hydra's own ``OverridesParser``:

==================================  =============================================================================
``interval(a, b)``                  uniform float in [a, b] (``FloatDistribution``)
``tag(log, interval(a, b))``        log-uniform float
``tag(int, interval(a, b))``        integer in [a, b] (``IntDistribution``); ``tag(log, int, interval(a, b))`` both
``range(start, stop[, step])``      integers start, start+step, ... < stop, as Hydra's grid counts them (floats:
                                    a float step); ``shuffle(range(...))`` a choice of them
``choice(a, b, ...)`` or ``a,b``    a categorical choice; a list or dict choice (``[3,3]``) goes to Optuna as its
                                    override text and back to Hydra as the list
==================================  =============================================================================

The command line wins over ``params`` for the same key; a key given one value is fixed (no parameter): every
non-sweep override goes to every job unchanged (:attr:`SearchSpace.fixed`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hydra.core.override_parser.types import IntervalSweep, Override, RangeSweep, Transformer

from segexp.core.errors import ConfigError

if TYPE_CHECKING:
    from optuna.distributions import BaseDistribution


@dataclass(frozen=True)
class Parameter:
    """One searched key: its override key, Optuna distribution, and the override text of each choice."""

    key: str  # as the override writes it (``model.base_kernels``, ``+extra``)
    distribution: BaseDistribution
    texts: Mapping[Any, str] = field(default_factory=dict)  # a choice as Optuna stores it -> its override text

    def override(self, value: Any) -> str:
        """The override that applies ``value`` (what Optuna suggested)."""
        return f"{self.key}={self.texts.get(value, value_text(value))}"


@dataclass(frozen=True)
class SearchSpace:
    """The searched parameters by name, and the overrides every job gets unchanged."""

    parameters: dict[str, Parameter]
    fixed: list[str]

    def distributions(self) -> dict[str, BaseDistribution]:
        """``{name: distribution}``, for ``study.ask``."""
        return {name: p.distribution for name, p in self.parameters.items()}

    def overrides(self, params: Mapping[str, Any]) -> list[str]:
        """A trial's job overrides: the fixed ones, then one per suggested parameter."""
        return [*self.fixed, *(self.parameters[name].override(value) for name, value in params.items())]

    def grid(self) -> dict[str, list[Any]]:
        """``{name: values}`` of every grid point's coordinates (Optuna's ``GridSampler``); an interval has no grid."""
        return {name: grid_values(name, p.distribution) for name, p in self.parameters.items()}

    def grid_size(self) -> int:
        """The number of grid points."""
        return math.prod(len(values) for values in self.grid().values())


def value_text(value: Any) -> str:
    """``value`` as an override writes it: ``true``, ``null``, ``0.0003``, a string as is."""
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "null"
    return str(value)


def quoted(text: str) -> str:
    """``text`` as a single-quoted override value that Hydra parses back to ``text`` exactly."""
    doubled = re.sub(r"(\\+)(?='|$)", lambda m: m[1] * 2, text)  # backslashes before a quote or the end escape
    return "'" + doubled.replace("'", "\\'") + "'"


def _choice(key: str, override: Override) -> tuple[BaseDistribution, dict[Any, str]]:
    """A categorical distribution of ``override``'s choices (lists and dicts as their override text)."""
    from optuna.distributions import CategoricalDistribution

    values = list(override.sweep_iterator(transformer=Transformer.encode))
    texts = dict(zip(values, override.sweep_string_iterator()))
    if not values:
        raise ConfigError(f"{key}: {override.input_line}: no choices")
    return CategoricalDistribution(values), texts


def _interval(key: str, override: Override) -> BaseDistribution:
    """A float (or with ``tag(int, ...)`` integer) distribution over ``interval(a, b)``, log-scaled with ``log``."""
    from optuna.distributions import FloatDistribution, IntDistribution

    sweep = override.value()
    assert isinstance(sweep, IntervalSweep) and sweep.start is not None and sweep.end is not None  # Hydra's parse
    low, high, log, whole = sweep.start, sweep.end, "log" in sweep.tags, "int" in sweep.tags
    unknown = set(sweep.tags) - {"log", "int"}
    if unknown:
        raise ConfigError(f"{key}: {override.input_line}: unknown tags {sorted(unknown)}; expected log, int")
    if not low < high or (log and low <= 0):
        raise ConfigError(f"{key}: {override.input_line}: expected low < high{' and low > 0 (log)' if log else ''}")
    if whole:
        if low != int(low) or high != int(high):
            raise ConfigError(f"{key}: {override.input_line}: tag(int, ...) needs whole-number bounds")
        return IntDistribution(int(low), int(high), log=log)
    return FloatDistribution(float(low), float(high), log=log)


def _range(key: str, override: Override) -> tuple[BaseDistribution, dict[Any, str]]:
    """The values of ``range(start, stop, step)`` (stop excluded, as Hydra's grid): integers or stepped floats."""
    from optuna.distributions import FloatDistribution, IntDistribution

    sweep = override.value()
    assert isinstance(sweep, RangeSweep) and sweep.start is not None  # Hydra's parse
    if sweep.shuffle:
        return _choice(key, override)
    values = list(override.sweep_iterator())
    if not values:
        raise ConfigError(f"{key}: {override.input_line}: an empty range")
    start, step = sweep.start, sweep.step
    if all(isinstance(v, int) for v in (start, sweep.stop, step)):
        return IntDistribution(int(start), int(start + step * (len(values) - 1)), step=int(step)), {}
    return FloatDistribution(float(start), float(start + step * (len(values) - 1)), step=float(step)), {}


def parameter(override: Override) -> Parameter:
    """The searched parameter of one sweep override (a :class:`ConfigError` names the key and what is wrong)."""
    key = override.get_key_element()
    texts: dict[Any, str] = {}
    try:
        if override.is_interval_sweep():
            distribution = _interval(key, override)
        elif override.is_range_sweep():
            distribution, texts = _range(key, override)
        elif override.is_choice_sweep():
            distribution, texts = _choice(key, override)
        else:
            raise ConfigError(f"{key}: {override.input_line}: not a sweep Optuna can search")
    except ValueError as err:  # Optuna's own check of a distribution
        raise ConfigError(f"{key}: {override.input_line}: {err}") from err
    return Parameter(key, distribution, texts)


def search_space(params: Mapping[str, Any] | None, arguments: Sequence[str]) -> SearchSpace:
    """The search space of ``params`` (``hydra.sweeper.params``: key -> sweep) and the command line's ``arguments``
    (which win for the same key); the command line's other overrides are :attr:`SearchSpace.fixed`."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    lines = [f"{key}={value}" for key, value in (params or {}).items()]
    found: dict[str, Override] = {}
    fixed: dict[str, str] = {}
    for index, line in enumerate([*lines, *arguments]):
        try:
            override = parser.parse_override(line)
        except Exception as err:  # noqa: BLE001 - Hydra's grammar error, named with its key
            where = "hydra.sweeper.params" if index < len(lines) else "the command line"
            raise ConfigError(f"{line}: not a Hydra override ({where}): {err}") from err
        name = override.get_key_element()
        found.pop(name, None)
        fixed.pop(name, None)
        if override.is_sweep_override():
            found[name] = override
        else:  # one value (a params entry too): given to every job
            fixed[name] = line
    return SearchSpace({name: parameter(o) for name, o in found.items()}, list(fixed.values()))


def grid_values(name: str, distribution: BaseDistribution) -> list[Any]:
    """The grid coordinates of one parameter: its choices, or its stepped range (an interval has none)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if isinstance(distribution, CategoricalDistribution):
        return list(distribution.choices)
    if isinstance(distribution, IntDistribution) and not distribution.log:
        return list(range(distribution.low, distribution.high + 1, distribution.step))
    if isinstance(distribution, FloatDistribution) and distribution.step is not None:
        count = round((distribution.high - distribution.low) / distribution.step) + 1
        return [distribution.low + i * distribution.step for i in range(count)]
    raise ConfigError(
        f"hydra.sweeper.params.{name}: an interval has no grid (hparams_search.sampler=grid); "
        "use choice(...) or range(...), or another sampler"
    )
