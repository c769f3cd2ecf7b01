"""Config field helpers: a default plus a check, and the one error a bad value raises.

Every field carries its allowed range in its metadata (``check``, ``allowed``), so a bad value
fails before training with one message naming the key, the value and what is allowed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import field
from typing import Any


class ConfigError(ValueError):
    """A config key with a value outside what is allowed."""

    def __init__(self, key: str, value: object, allowed: str) -> None:
        super().__init__(f"config key {key!r} has value {value!r}; allowed: {allowed}")
        self.key, self.value, self.allowed = key, value, allowed


Check = Callable[[Any], bool]


def _f(default: Any, check: Check | None = None, allowed: str = "", **kw: Any) -> Any:
    meta = {"check": check, "allowed": allowed}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: default, metadata=meta, **kw)
    return field(default=default, metadata=meta, **kw)


def positive(default: float) -> Any:
    return _f(default, lambda v: v > 0, "> 0")


def non_negative(default: float) -> Any:
    return _f(default, lambda v: v >= 0, ">= 0")


def at_least(default: float, lo: float) -> Any:
    return _f(default, lambda v: v >= lo, f">= {lo}")


def unit_open_closed(default: float) -> Any:
    return _f(default, lambda v: 0 < v <= 1, "in (0, 1]")


def unit_closed(default: float) -> Any:
    return _f(default, lambda v: 0 <= v <= 1, "in [0, 1]")


def one_of(default: str, *choices: str) -> Any:
    return _f(default, lambda v: v in choices, " | ".join(choices))
