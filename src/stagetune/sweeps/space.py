"""The search space of a study, read from ``hydra.sweeper.params`` and the command line.

Each key is a config key; its value says how to draw it, in Hydra's sweep grammar (what
hydra-optuna-sweeper accepted, so old configs keep working) or as a mapping:

===============================  ==========================================  =====================
grammar                          mapping                                      Optuna distribution
===============================  ==========================================  =====================
``interval(1e-4, 1e-1)``         ``{type: float, low: 1e-4, high: 1e-1}``     float, uniform
``tag(log, interval(1e-4, 1))``  ``{type: float, low: 1e-4, high: 1, log: true}``  float, log-uniform
``interval(2, 64)`` (ints)       ``{type: int, low: 2, high: 64}``            int
``tag(log, interval(2, 64))``    ``{type: int, low: 2, high: 64, log: true}`` int, log-uniform
``range(8, 65, 8)``              ``{type: int, low: 8, high: 64, step: 8}``   int with a step (the
                                                                              grammar's stop is
                                                                              exclusive, as Python's)
``choice(adam, sgd)``, ``a,b``   ``{type: categorical, choices: [adam, sgd]}``  categorical
===============================  ==========================================  =====================

Any other value is fixed: every trial gets it as it is.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep, Transformer
from hydra.errors import HydraException
from omegaconf import DictConfig, ListConfig, OmegaConf
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from stagetune.errors import ConfigError

TYPES = ("float", "int", "categorical")


@dataclass
class SearchSpace:
    """The distributions to draw, and the overrides every trial gets unchanged."""

    distributions: dict[str, BaseDistribution] = field(default_factory=dict)
    fixed: list[str] = field(default_factory=list)

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        """Draw every parameter for ``trial`` through Optuna's public ``suggest_*`` calls."""
        values = {}
        for name, dist in self.distributions.items():
            if isinstance(dist, CategoricalDistribution):
                values[name] = trial.suggest_categorical(name, list(dist.choices))
            elif isinstance(dist, IntDistribution):
                values[name] = trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
            else:
                values[name] = trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)
        return values

    def overrides(self, values: Mapping[str, Any]) -> list[str]:
        """The command-line overrides of one trial: its drawn values, then the fixed ones."""
        return [f"{name}={render(value)}" for name, value in values.items()] + list(self.fixed)

    def grid(self) -> dict[str, list[Any]]:
        """Every value of every parameter, for the grid sampler; continuous ones cannot be gridded."""
        out = {}
        for name, dist in self.distributions.items():
            if isinstance(dist, CategoricalDistribution):
                out[name] = list(dist.choices)
            elif dist.step is not None and not dist.log:
                n = int(round((dist.high - dist.low) / dist.step)) + 1
                out[name] = [dist.low + i * dist.step for i in range(n)]
            else:
                raise ConfigError(f"hydra.sweeper.params.{name}", str(dist), "the grid sampler needs choice(...) or range(...) values")
        return out


def render(value: Any) -> str:
    """A value as Hydra's override grammar reads it back unchanged."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, int):
        return str(value)
    text = str(value)
    plain = text and all(c.isalnum() or c in "._-/" for c in text) and not text[0].isdigit()
    return text if plain else "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def search_space(params: DictConfig | Mapping | None, arguments: Iterable[str]) -> SearchSpace:
    """Config ``params`` first, then the command line's overrides (which win for the same key)."""
    space = SearchSpace()
    grammar: list[str] = []
    for key, value in (params or {}).items():
        if isinstance(value, (DictConfig, Mapping)):
            space.distributions[str(key)] = from_mapping(str(key), OmegaConf.to_container(value) if isinstance(value, DictConfig) else dict(value))
        else:
            grammar.append(f"{key}={value}")
    grammar.extend(arguments)
    try:
        parsed = OverridesParser.create().parse_overrides(grammar)
    except HydraException as err:
        raise ConfigError("hydra.sweeper.params", grammar, str(err).splitlines()[0]) from None
    fixed: dict[str, str] = {}
    for override in parsed:
        name = override.get_key_element()
        dist = from_override(override)
        if dist is None:
            space.distributions.pop(name, None)
            fixed[name] = override.input_line
        else:
            fixed.pop(name, None)
            space.distributions[name] = dist
    space.fixed = list(fixed.values())
    return space


def from_mapping(key: str, spec: dict) -> BaseDistribution:
    where = f"hydra.sweeper.params.{key}"
    kind = spec.get("type")
    if kind not in TYPES:
        raise ConfigError(f"{where}.type", kind, "allowed: " + ", ".join(TYPES))
    unknown = set(spec) - {"type", "low", "high", "log", "step", "choices"}
    if unknown:
        raise ConfigError(where, spec, f"unknown keys {sorted(unknown)}; allowed: type, low, high, log, step, choices")
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, (list, ListConfig)) or not choices:
            raise ConfigError(f"{where}.choices", choices, "a non-empty list of values")
        return CategoricalDistribution(list(choices))
    low, high = spec.get("low"), spec.get("high")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in (low, high)) or low > high:
        raise ConfigError(where, spec, "low and high must be numbers with low <= high")
    log, step = bool(spec.get("log", False)), spec.get("step")
    if log and (low <= 0 or step is not None):
        raise ConfigError(where, spec, "a log-uniform range needs low > 0 and no step")
    try:
        if kind == "int":
            return IntDistribution(int(low), int(high), log=log, step=int(step) if step is not None else 1)
        return FloatDistribution(float(low), float(high), log=log, step=float(step) if step is not None else None)
    except ValueError as err:
        raise ConfigError(where, spec, str(err)) from None


def from_override(override: Override) -> BaseDistribution | None:
    """The distribution an override's sweep describes; ``None`` for a plain value."""
    if not override.is_sweep_override():
        return None
    value = override.value()
    where = f"hydra.sweeper.params.{override.get_key_element()}"
    try:
        if override.is_choice_sweep() or (isinstance(value, RangeSweep) and value.shuffle):
            assert isinstance(value, (ChoiceSweep, RangeSweep))
            return CategoricalDistribution(list(override.sweep_iterator(transformer=Transformer.encode)))
        if isinstance(value, RangeSweep):
            start, stop, step = value.start, value.stop, value.step if value.step is not None else 1
            values = list(override.sweep_iterator())
            if not values:
                raise ValueError("the range is empty")
            if all(isinstance(v, int) for v in (start, stop, step)):
                return IntDistribution(int(values[0]), int(values[-1]), step=int(step))
            return FloatDistribution(float(values[0]), float(values[-1]), step=float(step))
        if isinstance(value, IntervalSweep):
            log = "log" in value.tags
            if isinstance(value.start, int) and isinstance(value.end, int):
                return IntDistribution(value.start, value.end, log=log)
            return FloatDistribution(float(value.start), float(value.end), log=log)
    except (ValueError, AssertionError) as err:
        raise ConfigError(where, override.input_line, str(err)) from None
    raise ConfigError(where, override.input_line, "a sweep is interval(...), tag(log, interval(...)), range(...) or choice(...)")
