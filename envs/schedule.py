"""When the physics changes and to what: a step-counted schedule of values, with no simulator in it.

The schedule counts env steps. Every `change_every` steps a mark passes; the switch to the next
value waits for the next episode boundary (reset), so an episode never changes physics midway.

Phase k begins at the k-th mark (phase 0 at the first reset). Its value depends only on the seed
(or the explicit list) and on k, never on how long episodes were.

`spacing="since_last_change"` times the switches as the paper's official code did: a switch happens
at the first episode end more than `change_every` steps after the previous switch (the first one
counts from step 0), so phases last slightly longer than `change_every` and drift later than the
marks. Values are still drawn per phase, so phase k has the same value under either spacing. If several marks pass within one
episode (only possible with a small `change_every`), the reset jumps straight to the newest phase:
the skipped phases' values are never applied, but their draws are still consumed so the sequence
stays the same.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

DEFAULT_CHANGE_EVERY = 2_000_000

AfterLast = Literal["cycle", "hold"]
AFTER_LAST_CHOICES = ("cycle", "hold")
Spacing = Literal["fixed", "since_last_change"]
SPACING_CHOICES = ("fixed", "since_last_change")

# Mixed into the seed so the schedule's stream is independent of the env's own np_random, which
# gymnasium seeds from the same integer.
_STREAM_TAG = 0x5CED

_STATE_KEYS = ("kind", "steps", "phase", "pending", "value", "started", "rng")


def _check_positive_finite(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{what} must be a number, got {type(value).__name__} ({value!r})")
    value = float(value)
    if not math.isfinite(value) or value <= 0.0:
        raise ValueError(f"{what} must be a positive finite number, got {value!r}")
    return value


def _check_int(value: Any, what: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{what} must be an integer, got {type(value).__name__} ({value!r})")
    if value < minimum:
        raise ValueError(f"{what} must be >= {minimum}, got {value}")
    return int(value)


class ValueSchedule:
    """A sequence of positive values (friction, mass scale...), one per phase, switched at resets.

    Args:
        kind: name of the quantity (also the `info` key), e.g. "friction"; checked on restore.
        change_every: env steps between marks (>= 1).
        value_range: (low, high) for log-uniform draws; used when `values` is None. low == high is allowed.
        values: explicit values for phases 0, 1, 2, ...; replaces the random draws.
        after_last: with `values`, what follows the last one: "cycle" starts again from the first,
            "hold" keeps the last value for good.
        seed: seeds the draws; None means "use the seed of the first reset" (see `start`).
        spacing: "fixed" switches at the first reset after each multiple of `change_every`;
            "since_last_change" at the first reset more than `change_every` steps after the last switch.
    """

    def __init__(
        self,
        kind: str,
        *,
        change_every: int = DEFAULT_CHANGE_EVERY,
        value_range: Sequence[float] = (0.02, 2.0),
        values: Sequence[float] | None = None,
        after_last: AfterLast = "cycle",
        seed: int | None = None,
        spacing: Spacing = "fixed",
    ) -> None:
        self.kind = kind
        self.change_every = _check_int(change_every, "change_every", 1)
        self.value_range = self._check_range(value_range, kind)
        self.values = None if values is None else self._check_values(values, kind)
        if after_last not in AFTER_LAST_CHOICES:
            raise ValueError(f"after_last must be one of {AFTER_LAST_CHOICES}, got {after_last!r}")
        self.after_last = after_last
        self.seed = None if seed is None else _check_int(seed, "schedule_seed", 0)
        if spacing not in SPACING_CHOICES:
            raise ValueError(f"spacing must be one of {SPACING_CHOICES}, got {spacing!r}")
        self.spacing = spacing
        self.last_change = 0  # index (0-based) of the step whose episode end made the last switch

        self.steps = 0
        self.phase = 0
        self.pending = False
        self.value: float | None = None
        self.started = False
        self._rng: np.random.Generator | None = None
        self._next_mark = self.change_every
        self._log_range = (math.log(self.value_range[0]), math.log(self.value_range[1]))

    @staticmethod
    def _check_range(value_range: Sequence[float], kind: str) -> tuple[float, float]:
        pair = _as_tuple(value_range)
        if pair is None or len(pair) != 2:
            raise TypeError(f"{kind} value_range must be a pair (low, high), got {value_range!r}")
        low = _check_positive_finite(pair[0], f"{kind} value_range low")
        high = _check_positive_finite(pair[1], f"{kind} value_range high")
        if low > high:
            raise ValueError(f"{kind} value_range must have low <= high, got low={low} > high={high}")
        return low, high

    @staticmethod
    def _check_values(values: Sequence[float], kind: str) -> tuple[float, ...]:
        items = _as_tuple(values)
        if items is None:
            raise TypeError(f"{kind} values must be a list of numbers, got {values!r}")
        if len(items) == 0:
            raise ValueError(f"{kind} values must not be empty")
        return tuple(_check_positive_finite(v, f"{kind} value #{i}") for i, v in enumerate(items))

    # -- the schedule ----------------------------------------------------------------------------

    def start(self, env_seed: int | None) -> float:
        """Seed the draws and set phase 0's value; called once, at the first reset.

        The explicit `seed` wins; otherwise the seed of the first reset; with neither, fresh OS
        entropy (not repeatable).
        """
        seed = self.seed if self.seed is not None else env_seed
        entropy = None if seed is None else [int(seed), _STREAM_TAG]
        self._rng = np.random.default_rng(entropy)
        self.started = True
        self.phase = 0
        self.value = self._value_of_next_phase(0)
        self._sync_marks()
        return self.value

    def count_step(self) -> None:
        """One env step happened; note a passed mark (the switch waits for the next reset)."""
        self.steps += 1
        if self.spacing == "since_last_change":
            self.pending = self.steps - 1 - self.last_change > self.change_every
        elif self.steps >= self._next_mark:
            self.pending = True
            self._next_mark = (self.steps // self.change_every + 1) * self.change_every

    def advance(self) -> bool:
        """At an episode boundary: move to the newest phase if a mark passed. Returns True if it did."""
        if not self.pending:
            return False
        if self.spacing == "since_last_change":
            self.phase += 1
            self.value = self._value_of_next_phase(self.phase)
            self.last_change, self.pending = self.steps - 1, False
            return True
        target = self.steps // self.change_every
        while self.phase < target:
            self.phase += 1
            self.value = self._value_of_next_phase(self.phase)
        self.pending = False
        return True

    def _value_of_next_phase(self, phase: int) -> float:
        if self.values is not None:
            n = len(self.values)
            return self.values[phase % n] if self.after_last == "cycle" else self.values[min(phase, n - 1)]
        assert self._rng is not None
        return math.exp(self._rng.uniform(*self._log_range))

    def _sync_marks(self) -> None:
        self._next_mark = (self.steps // self.change_every + 1) * self.change_every

    # -- save / restore --------------------------------------------------------------------------

    def get_state(self) -> dict[str, Any]:
        """Plain dict (ints, floats, bools, str, nested dicts) that JSON and torch.save(weights_only) take."""
        return {
            "kind": self.kind,
            "steps": self.steps,
            "phase": self.phase,
            "pending": self.pending,
            "value": self.value,
            "started": self.started,
            "rng": None if self._rng is None else _plain(self._rng.bit_generator.state),
            "last_change": self.last_change,
        }

    def set_state(self, state: dict[str, Any]) -> None:
        """Continue from a state made by `get_state`: same values and switch points from there on."""
        if not isinstance(state, dict):
            raise TypeError(f"schedule state must be a dict, got {type(state).__name__}")
        missing = [k for k in _STATE_KEYS if k not in state]
        if missing:
            raise ValueError(f"schedule state is missing {missing}; expected keys {list(_STATE_KEYS)}")
        if state["kind"] != self.kind:
            raise ValueError(f"schedule state is for {state['kind']!r}, this env schedules {self.kind!r}")
        steps = _check_int(state["steps"], "schedule state steps", 0)
        phase = _check_int(state["phase"], "schedule state phase", 0)
        started = bool(state["started"])
        value = None if state["value"] is None else _check_positive_finite(state["value"], "schedule state value")
        if started and value is None:
            raise ValueError("schedule state is started but has no value")
        rng = None
        if state["rng"] is not None:
            rng = np.random.default_rng()
            try:
                rng.bit_generator.state = state["rng"]
            except (TypeError, ValueError, KeyError) as e:
                raise ValueError(f"schedule state has an unusable generator state: {e}") from e
        elif started and self.values is None:
            raise ValueError("schedule state is started but has no generator state for the random draws")

        self.steps, self.phase, self.started, self.value, self._rng = steps, phase, started, value, rng
        self.pending = bool(state["pending"])
        # States saved before "since_last_change" existed have no last_change; their spacing was fixed.
        self.last_change = _check_int(state.get("last_change", 0), "schedule state last_change", 0)
        self._sync_marks()


def _as_tuple(obj: Any) -> tuple | None:
    """A list, tuple or 1-D array as a tuple; None for anything else (a string is not a list of numbers)."""
    if isinstance(obj, (str, bytes, dict)):
        return None
    try:
        return tuple(obj)
    except TypeError:
        return None


def _plain(obj: Any) -> Any:
    """numpy scalars -> Python numbers, recursively, so the state is plain data."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, np.generic):
        return obj.item()
    return obj
