"""The search space: a YAML mapping of config keys to distributions (`load_space`), each key and
both ends of each range checked against the config schema before any trial runs."""

from __future__ import annotations

import contextlib
import copy
import math
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from cifarkit.config import (
    Config,
    all_keys,
    config_from_dict,
    config_to_dict,
    read_config_text,
    unknown_key_message,
    yaml_load,
)
from cifarkit.errors import ConfigError
from cifarkit.models import list_models
from cifarkit.safecsv import looks_numeric

KINDS = ("uniform", "log_uniform", "int", "choice")
MAX_CHOICES = 1000  # values of one choice in a space file (each is validated as a config before any trial)


@dataclass(frozen=True)
class Dist:
    """One key's distribution: `kind` in KINDS, `low`/`high` for ranges, `step` and `log` for
    ints, `choices` for a choice."""
    kind: str
    low: float = 0.0
    high: float = 0.0
    step: float | None = None
    log: bool = False
    choices: tuple = ()

    def suggest(self, trial: Any, key: str) -> Any:
        """The trial's value for `key` (Optuna's suggest_* for this kind)."""
        if self.kind == "choice":
            return trial.suggest_categorical(key, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(key, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(key, self.low, self.high, log=self.kind == "log_uniform", step=self.step)

    def ends(self) -> list[Any]:
        """The values that must each make a valid config: both ends of a range, every choice."""
        if self.kind == "choice":
            return list(self.choices)
        if self.kind == "int":
            return [int(self.low), int(self.high)]
        return [self.low, self.high]


def _number(v: Any, key: str, where: str) -> float:
    if isinstance(v, str):  # YAML 1.1 reads 1e-4 (no dot) as a string; the config takes it as a number too
        with contextlib.suppress(ValueError):
            v = float(v)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ConfigError(f"{where}{key}: {v!r} is not a finite number")
    return float(v)


def set_values(base: dict[str, Any], values: dict[str, Any], where: str = "") -> Config:
    """`base` (a config dict) with each dotted key set to its value, as a validated `Config`.

    The values go into the dict as they are (no text round trip that could turn 1e-05 into a
    string or re-read a string as a number)."""
    d = copy.deepcopy(base)
    for key, value in values.items():
        cur = d
        *parents, last = key.split(".")
        for part in parents:
            cur = cur.setdefault(part, {})
            if not isinstance(cur, dict):
                raise ConfigError(f"{where}{key}: {part} is not a section of the config")
        cur[last] = value
    return config_from_dict(d, where=where)


def parse_dist(key: str, spec: Any, where: str) -> Dist:
    """One entry of a space file -> `Dist`, checked for shape and range (not yet against the config).

    Raises:
        ConfigError: not a mapping with one known kind, an empty range, the log of a value <= 0, ...
    """
    if not isinstance(spec, dict) or len([k for k in spec if k in KINDS]) != 1:
        raise ConfigError(f"{where}{key}: expected one of {{uniform: [lo, hi]}}, {{log_uniform: [lo, hi]}}, "
                          f"{{int: [lo, hi], step: 1}}, {{choice: [a, b, ...]}}; got {spec!r}")
    kind = next(k for k in spec if k in KINDS)
    extra = set(spec) - {kind} - ({"step", "log"} if kind == "int" else {"step"} if kind == "uniform" else set())
    if extra:
        raise ConfigError(f"{where}{key}: {kind} takes no {', '.join(sorted(map(str, extra)))}")
    v = spec[kind]
    if kind == "choice":
        if not isinstance(v, list) or not v:
            raise ConfigError(f"{where}{key}: choice needs a non-empty list of values")
        if any(isinstance(c, (dict, list)) for c in v):
            raise ConfigError(f"{where}{key}: choice values must be plain values (numbers, strings, true/false)")
        if len(v) > MAX_CHOICES:  # each is checked against the config below; a range says more in one line
            raise ConfigError(f"{where}{key}: choice lists {len(v):,} values, more than {MAX_CHOICES:,}; use "
                              "{int: [lo, hi]} or {uniform: [lo, hi]} for a range")
        # Optuna finds a choice by ==, so 1 is True and 1.0: a set (hash agrees with ==) sees those as one
        if len(set(v)) != len(v):
            raise ConfigError(f"{where}{key}: choice lists a value twice (or two that compare equal, like 1 and true)")
        if key.startswith("model.kwargs."):  # no schema converts them later: YAML 1.1 reads 1e-3 as a string
            v = [_number(c, key, where) if isinstance(c, str) and looks_numeric(c) else c for c in v]
        return Dist("choice", choices=tuple(v))
    if not isinstance(v, list) or len(v) != 2:
        raise ConfigError(f"{where}{key}: {kind} needs [low, high], got {v!r}")
    lo, hi = (_number(x, key, where) for x in v)
    if not lo < hi:
        raise ConfigError(f"{where}{key}: the range [{v[0]}, {v[1]}] is empty (low must be below high)")
    step = spec.get("step")
    step = None if step is None else _number(step, key, where)
    if step is not None and (_number(step, key, where) <= 0 or _number(step, key, where) > hi - lo):
        raise ConfigError(f"{where}{key}: step {spec['step']!r} must be above 0 and at most high - low")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"{where}{key}: log must be true or false")
    if kind == "int":
        if not (float(lo).is_integer() and float(hi).is_integer() and (step is None or float(step).is_integer())):
            raise ConfigError(f"{where}{key}: int needs whole numbers, got {spec!r}")
        if log and step not in (None, 1):
            raise ConfigError(f"{where}{key}: an int range is either log or stepped, not both")
    if (kind == "log_uniform" or log) and lo <= 0:
        raise ConfigError(f"{where}{key}: a log range needs low > 0 (the log of {v[0]} is undefined)")
    if kind == "log_uniform" and step is not None:
        raise ConfigError(f"{where}{key}: log_uniform takes no step")
    return Dist(kind, lo, hi, step, log)


def _field_type(key: str) -> Any:
    obj: Any = Config()
    for part in key.split(".")[:-1]:
        obj = getattr(obj, part)
    return typing.get_type_hints(type(obj)).get(key.split(".")[-1])


def load_space(path: str | Path, base: Config | dict[str, Any]) -> dict[str, Dist]:
    """Read and check a search space file against the config it will vary.

    Args:
        path: the space YAML (key -> distribution).
        base: the config the trials start from (its values fill every key the space leaves).

    Raises:
        ConfigError: the file is unreadable or empty; a key unknown (with the nearest one); a
            distribution malformed; or an end of a range / a choice that the key cannot take.
    """
    p = Path(path)
    where = f"{p}: "
    try:
        d = yaml_load(read_config_text(p, "search space file"))
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(d, dict) or not d:
        raise ConfigError(f"{p}: a search space is a non-empty mapping of config keys to distributions, "
                          "e.g. `optim.lr: {log_uniform: [1.0e-3, 1.0]}`")
    base_dict = config_to_dict(base) if isinstance(base, Config) else base
    space: dict[str, Dist] = {}
    for key, spec in d.items():
        key = str(key)
        if key not in all_keys() and not key.startswith("model.kwargs."):
            raise ConfigError(unknown_key_message(key, where))
        dist = parse_dist(key, spec, where)
        ftype = None if key.startswith("model.kwargs.") else _field_type(key)  # kwargs: any number
        if dist.kind in ("uniform", "log_uniform") and ftype is int:
            raise ConfigError(f"{where}{key}: takes whole numbers; use {{int: [{int(dist.low)}, {int(dist.high)}]}}")
        if dist.kind != "choice" and ftype not in (int, float) and not key.startswith("model.kwargs."):
            raise ConfigError(f"{where}{key}: is not a number; use {{choice: [...]}}")
        for value in dist.ends():
            if key == "model.name" and not (str(value) in list_models(include_torchvision=True)
                                            or str(value).startswith("timm/")):
                raise ConfigError(f"{where}model.name: {value!r} is not a model cifarkit knows (`cifarkit models`)")
            try:
                set_values(base_dict, {key: value})
            except ConfigError as e:
                raise ConfigError(f"{where}{key}: the value {value!r} is not valid for it ({e})") from None
        space[key] = dist
    return space
