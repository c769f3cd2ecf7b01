"""Debiasing methods as plug-ins, composed as an ordered list (see ``base.Method``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from lddyn.config import ConfigError, MethodConfig, build_section
from lddyn.methods import (  # noqa: F401  (register)
    alternate,
    bmb,
    cdmad,
    dytrim,
    flexmatch,
    freematch,
    logit_adjust,
    resample,
    reweight,
)
from lddyn.methods.base import EvalContext, Method, RunInfo, StepContext
from lddyn.methods.registry import METHODS
from lddyn.suggest import hint


def build_method_configs(raw: Sequence[Mapping[str, Any] | str]) -> tuple[MethodConfig, ...]:
    """Validate the ``methods`` list of a config; each entry is a name or a mapping with ``name``."""
    if not isinstance(raw, (list, tuple)):
        raise ConfigError("methods", raw, "a list of methods")
    out, seen = [], set()
    for i, entry in enumerate(raw):
        entry = {"name": entry} if isinstance(entry, str) else dict(entry)
        name = entry.get("name")
        if name not in METHODS:
            raise ConfigError(f"methods[{i}].name", name, " | ".join(METHODS.names()) + hint(name, METHODS))
        if name in seen:
            raise ConfigError(f"methods[{i}].name", name, "each method at most once")
        seen.add(name)
        out.append(build_section(METHODS.get(name).Config, entry, f"methods.{name}."))
    return tuple(out)


def build_methods(configs: Sequence[MethodConfig], info: RunInfo) -> list[Method]:
    return [METHODS.get(c.name)(c, info) for c in configs]


__all__ = [
    "METHODS",
    "EvalContext",
    "Method",
    "RunInfo",
    "StepContext",
    "build_method_configs",
    "build_methods",
]
