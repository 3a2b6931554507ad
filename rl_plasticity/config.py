"""Experiment configs: read YAML, apply `--set key=value` overrides, validate against defaults."""

from __future__ import annotations

import copy
import numbers
import difflib
import math
import re
from pathlib import Path
from typing import Any

import yaml

from rl_plasticity.errors import UserError

# --------------------------------------------------------------------------- YAML loading


class ConfigLoader(yaml.SafeLoader):
    """SafeLoader that reads `1e-4`, `3E5` and `1.0e4` as floats and rejects duplicate keys.

    PyYAML follows YAML 1.1, whose float pattern needs a dot and a signed exponent, so learning
    rates written the usual way would silently become strings.
    """

    def construct_mapping(self, node, deep=False):
        # A repeated key silently keeps the last value in PyYAML; in a config that hides mistakes.
        seen: set = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` may be overridden below it
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:  # unhashable key: the base class reports it
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


_SCI_FLOAT = re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+
                            |[-+]?\.[0-9_]+[eE][-+]?[0-9]+)$""", re.X)
ConfigLoader.add_implicit_resolver("tag:yaml.org,2002:float", _SCI_FLOAT, list("-+0123456789."))


def parse_yaml(text: str) -> Any:
    """Parse YAML text with the config loader (scientific floats, no duplicate keys)."""
    return yaml.load(text, Loader=ConfigLoader)  # noqa: S506 - ConfigLoader is a SafeLoader


def read_yaml(path: str | Path) -> dict:
    """Read a YAML config file whose top level is a mapping (an empty file is an empty mapping)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"config file not found: {path}") from None
    except IsADirectoryError:
        raise UserError(f"config file {path} is a directory") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read config file {path}: {e}") from None
    try:
        data = parse_yaml(text)
    except yaml.YAMLError as e:
        raise UserError(f"invalid YAML in {path}{_yaml_where(e)}: {_yaml_problem(e)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping of keys to values, got {type(data).__name__}")
    return data


def _yaml_where(e: yaml.YAMLError) -> str:
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    return f" line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""


def _yaml_problem(e: yaml.YAMLError) -> str:
    problem = getattr(e, "problem", None)
    context = getattr(e, "context", None)
    text = " ".join(p for p in (context, problem) if p) or str(e)
    return " ".join(text.split())  # one line


# --------------------------------------------------------------------------- overrides


def apply_overrides(cfg: dict, overrides: list[str]) -> dict:
    """Return a copy of `cfg` with each `key=value` applied; dotted keys reach into nested mappings.

    Values are parsed as YAML (`1e-4` -> float, `[1, 2]` -> list, `null` -> None).
    """
    out = copy.deepcopy(cfg)
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        parts = key.split(".")
        if not sep or not key or any(not p for p in parts):
            raise UserError(f"malformed override {item!r}: expected KEY=VALUE, e.g. cbp.replacement_rate=1e-4")
        try:
            value = parse_yaml(raw)
        except yaml.YAMLError as e:
            raise UserError(f"malformed value in override {item!r}: {_yaml_problem(e)}") from None
        node = out
        for i, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                prefix = ".".join(parts[: i + 1])
                raise UserError(f"override {item!r}: config key '{prefix}' is not a mapping")
            node = child
        node[parts[-1]] = value
    return out


# --------------------------------------------------------------------------- rules


class Rule:
    """A check on one config value: `problem(value)` says what is wrong, or None."""

    def problem(self, value: Any) -> str | None:
        raise NotImplementedError


class Range(Rule):
    """A number within bounds; `low_open`/`high_open` exclude the bound (Range(low=0, low_open=True): > 0)."""

    def __init__(self, low: float | None = None, high: float | None = None,
                 low_open: bool = False, high_open: bool = False):
        self.low, self.high, self.low_open, self.high_open = low, high, low_open, high_open

    def describe(self) -> str:
        lo = None if self.low is None else ("> " if self.low_open else ">= ") + str(self.low)
        hi = None if self.high is None else ("< " if self.high_open else "<= ") + str(self.high)
        if lo and hi:
            return f"must be in {'(' if self.low_open else '['}{self.low}, {self.high}{')' if self.high_open else ']'}"
        return f"must be {lo or hi}" if (lo or hi) else "must be a number"

    def problem(self, value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            return self.describe()
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return self.describe()
        if self.high is not None and (value >= self.high if self.high_open else value > self.high):
            return self.describe()
        return None

    def __repr__(self) -> str:
        return f"Range({self.describe()})"


class OneOf(Rule):
    """One of a fixed set of values."""

    def __init__(self, *choices: Any):
        self.choices = choices

    def problem(self, value: Any) -> str | None:
        if any(value == c and type(value) is type(c) for c in self.choices):
            return None
        return "must be one of " + ", ".join(repr(c) for c in self.choices)

    def __repr__(self) -> str:
        return f"OneOf{self.choices!r}"


class LayerSizes(Rule):
    """A list of positive integers (hidden-layer widths), with at least `min_len` entries."""

    def __init__(self, min_len: int = 0):
        self.min_len = min_len

    def problem(self, value: Any) -> str | None:
        sizes_ok = isinstance(value, list) and all(isinstance(h, int) and not isinstance(h, bool) and h >= 1
                                                   for h in value)
        if sizes_ok and len(value) >= self.min_len:
            return None
        return "must be a " + ("non-empty " if self.min_len else "") + "list of positive integers"

    def __repr__(self) -> str:
        return f"LayerSizes(min_len={self.min_len})"


class Numbers(Rule):
    """A list of exactly `length` numbers, each obeying `each` (Adam's betas: Numbers(2, Range(0, 1, high_open=True)))."""

    def __init__(self, length: int, each: Range):
        self.length, self.each = length, each

    def problem(self, value: Any) -> str | None:
        if isinstance(value, list) and len(value) == self.length and all(self.each.problem(v) is None for v in value):
            return None
        return f"must be a list of {self.length} numbers, each {self.each.describe().removeprefix('must be ')}"

    def __repr__(self) -> str:
        return f"Numbers({self.length}, {self.each!r})"


# --------------------------------------------------------------------------- validation


def check_options(label: str, rules: dict[str, Rule], options: dict[str, Any]) -> None:
    """Raise ValueError naming the first option that breaks its rule: what constructors of methods and
    optimizers call with `locals()` (their error for Python callers; configs get validate's errors first)."""
    for key, rule in rules.items():
        value = options[key]
        if isinstance(value, numbers.Real) and not isinstance(value, (bool, int, float)):
            value = float(value)  # numpy and other real scalars are checked by value
        problem = rule.problem(value)
        if problem:
            raise ValueError(f"{label} {key} {problem}, got {value!r}")


def validate(cfg: dict, defaults: dict, rules: dict | None = None, where: str = "") -> dict:
    """Return `defaults` deep-merged with `cfg`, checking every key and type, then `rules`.

    Type of each default decides what is accepted: a float takes ints too (converted), an int takes
    integral floats (`2e7`, converted; 2.5 is refused), bool is never a number, None takes anything, a list takes a list, an empty dict takes any mapping.
    `rules` maps dotted keys to a Rule (or a list of them); None values skip their rules.
    `where` is the dotted prefix of `cfg` inside the whole config, used in messages.
    """
    if not isinstance(cfg, dict):
        what = f"config key '{where}'" if where else "a config"
        raise UserError(f"{what} must be a mapping, got {_type_name(cfg)}")
    out = copy.deepcopy(defaults)
    for key, value in cfg.items():
        name = _join(where, str(key))
        if key not in defaults:
            raise UserError(_unknown_key_message(name, where, defaults))
        out[key] = _check_type(name, value, defaults[key])
    for key, rule_or_rules in (rules or {}).items():
        value = _lookup(out, key)
        if value is None:
            continue
        for rule in rule_or_rules if isinstance(rule_or_rules, (list, tuple)) else [rule_or_rules]:
            problem = rule.problem(value)
            if problem:
                raise UserError(f"config key '{_join(where, key)}' {problem}, got {_short_repr(value)}")
    return out


def load_config(path: str | Path, overrides: list[str] | None, defaults: dict, rules: dict | None = None) -> dict:
    """Read a YAML file, apply overrides and validate: the resolved config of one run."""
    return validate(apply_overrides(read_yaml(path), list(overrides or [])), defaults, rules)


def _check_type(name: str, value: Any, default: Any) -> Any:
    if default is None:
        return value
    if isinstance(default, dict):
        if not isinstance(value, dict):
            raise _type_error(name, "mapping", value)
        return copy.deepcopy(value) if not default else validate(value, default, where=name)
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        if isinstance(value, float) and value.is_integer():  # `total_steps: 2e7`, as people write big counts
            return int(value)
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        if isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        ok = isinstance(value, float)
    elif isinstance(default, (list, tuple)):
        if isinstance(value, tuple):  # only Python callers pass tuples; keep configs YAML-shaped
            value = list(value)
        ok = isinstance(value, list)
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise _type_error(name, "list" if isinstance(default, tuple) else _type_name(default), value)
    return value


def _type_error(name: str, expected: str, value: Any) -> UserError:
    return UserError(f"config key '{name}' must be {expected}, got {_type_name(value)} {_short_repr(value)}")


def _short_repr(value: Any, limit: int = 60) -> str:
    text = " ".join(repr(value).split())  # one line, even for a multi-line string
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _type_name(value: Any) -> str:
    """YAML's words for the types a config can hold."""
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "mapping"
    return "null" if value is None else type(value).__name__


def _unknown_key_message(name: str, where: str, defaults: dict) -> str:
    known = [str(k) for k in defaults]
    leaf = name[len(where) + 1:] if where else name
    match = difflib.get_close_matches(leaf, known, n=1, cutoff=0.6)
    if match:
        return f"unknown config key '{name}' (did you mean '{_join(where, match[0])}'?)"
    scope = f"'{where}'" if where else "the top level"
    return f"unknown config key '{name}' (keys allowed at {scope}: {', '.join(sorted(known))})"


def _lookup(cfg: dict, dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(f"rule for '{dotted}' names no config key")  # a bug in the caller's rules
        node = node[part]
    return node


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key
