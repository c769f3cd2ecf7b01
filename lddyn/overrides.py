"""What a set of ``--set`` overrides changes, and which of them cannot take effect.

Configs are compared as flat dotted keys (``optim.lr``; methods by name: ``methods.dytrim.delta``),
the form the overrides are written in, so a refusal or a warning names exactly the key to look at.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from lddyn.config import RunConfig

# (key prefix, why it is ignored, what turns it on): the switch is read from the effective config.
SWITCHED: tuple[tuple[str, str, str], ...] = (
    ("record.", "record.dynamics", "--record dynamics or --set record.dynamics=true"),
    ("probe.", "probe.baseline", "--probe baseline or --set probe.baseline=true"),
)


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"optim": {"lr": 1}}`` -> ``{"optim.lr": 1}``; the method list is keyed by method name."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if key == "methods" and not prefix and isinstance(value, list):
            out["methods"] = [m.get("name") for m in value]
            for method in value:
                out.update(
                    flatten({k: v for k, v in method.items() if k != "name"}, f"methods.{method['name']}.")
                )
        elif isinstance(value, Mapping):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))  # tuples as lists, as run.json holds them


def differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Dotted key -> (old value, new value) for every key whose value differs (missing = None)."""
    a, b = flatten(_plain(old)), flatten(_plain(new))
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def describe_differences(diff: Mapping[str, tuple[Any, Any]], old: str, new: str, limit: int = 6) -> str:
    """``train.steps: 300 (run) vs 500 (grid), ...``, at most ``limit`` keys then a count."""
    shown = [f"{k}: {a!r} ({old}) vs {b!r} ({new})" for k, (a, b) in list(diff.items())[:limit]]
    more = len(diff) - limit
    return "; ".join(shown) + (f"; and {more} more" if more > 0 else "")


def override_keys(overrides: list[str]) -> list[str]:
    return [item.split("=", 1)[0].strip() for item in overrides if "=" in item]


def inert_overrides(cfg: RunConfig, overrides: list[str], world_size: int = 1) -> list[str]:
    """A warning for each override that the effective config leaves without effect."""
    warnings = []
    for key in override_keys(overrides):
        reason = _why_inert(cfg, key, world_size)
        if reason:
            warnings.append(f"--set {key} has no effect: {reason}")
    return list(dict.fromkeys(warnings))


def _why_inert(cfg: RunConfig, key: str, world_size: int) -> str | None:
    for prefix, switch, how in SWITCHED:
        section, flag = switch.split(".")
        if key.startswith(prefix) and key != switch and not getattr(getattr(cfg, section), flag):
            return f"{switch} is false in this run's config (turn it on with {how})"
    if key in ("optim.momentum", "optim.nesterov") and cfg.optim.name != "sgd":
        return f"optim.name is {cfg.optim.name!r} (momentum and nesterov are SGD's)"
    if key == "optim.betas" and cfg.optim.name != "adam":
        return f"optim.name is {cfg.optim.name!r} (betas are Adam's)"
    if key in ("model.width", "model.norm") and cfg.model.name not in ("cnn", "mlp"):
        return f"model.name is {cfg.model.name!r} (width and norm shape the cnn and mlp only)"
    if (
        key in ("model.bn_momentum", "model.bn_eps")
        and cfg.model.norm != "batch"
        and cfg.model.name in ("cnn", "mlp")
    ):
        return f"model.norm is {cfg.model.norm!r} (no BatchNorm layer)"
    if key.startswith("distributed.") and world_size == 1:
        return "this is a single process (distributed.* applies under torchrun)"
    return None
