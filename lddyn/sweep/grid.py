"""A sweep grid: seeds x settings (a preset plus overrides) x methods, expanded into run specs.

Grid file (YAML)::

    name: digits-methods            # output folder: runs/sweeps/<name> unless --out is given
    seeds: [0, 1, 2]
    set: [train.steps=1500]         # overrides for every run
    settings:                       # name -> preset and its own overrides
      g20: {preset: digits-fixmatch}
      g50: {preset: digits-fixmatch, set: [data.imb_ratio=50, data.imb_ratio_u=50]}
    methods:                        # name -> method list (names, or mappings with options)
      fixmatch: []
      cdmad: [cdmad]
      dytrim: [cdmad, {name: dytrim, keep_rate: 0.3}]
    executor: {name: local, workers: 2}

A run directory is ``<out>/<setting>-<method>-s<seed>``: the same grid always gives the same names.
A method named in the list keeps the options the setting's preset gives it (so ``[cdmad, dytrim]``
on the digits-dytrim preset keeps its start steps); options written in the grid override those.
Every config is built and validated before anything runs.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from lddyn.config import ConfigError, RunConfig, apply_override, build_config, load_preset
from lddyn.overrides import describe_differences, differences

GRID_KEYS = ("name", "seeds", "set", "settings", "methods", "executor", "out")
NAME = re.compile(r"^[A-Za-z0-9_.+=-]+$")


class SweepError(ValueError):
    """A run directory that the grid cannot take over."""


@dataclass(frozen=True)
class RunSpec:
    """One run of the grid: where it lives and exactly what it runs."""

    name: str
    run_dir: Path
    config: RunConfig
    setting: str
    method: str
    seed: int


@dataclass(frozen=True)
class Grid:
    name: str
    seeds: tuple[int, ...]
    settings: dict[str, dict[str, Any]]
    methods: dict[str, list[Any]] | None  # None: every setting keeps its preset's methods
    common: tuple[str, ...] = ()
    executor: dict[str, Any] = field(default_factory=lambda: {"name": "local"})
    out: str | None = None
    overrides: tuple[str, ...] = ()  # ``lddyn sweep --set``: after the grid's and the setting's own


def _require(cond: bool, key: str, value: object, allowed: str) -> None:
    if not cond:
        raise ConfigError(key, value, allowed)


def _names(mapping: object, key: str) -> dict[str, Any]:
    _require(isinstance(mapping, dict) and len(mapping) > 0, key, mapping, "a non-empty mapping of names")
    for name in mapping:  # type: ignore[union-attr]
        _require(bool(NAME.match(str(name))), f"{key}.{name}", name, "a name of letters, digits and _.+=-")
    return dict(mapping)  # type: ignore[arg-type]


def parse_grid(raw: object, default_name: str = "sweep") -> Grid:
    """Check a loaded grid mapping: keys, seeds, settings, methods, executor."""
    _require(isinstance(raw, dict), "grid", raw, "a YAML mapping")
    assert isinstance(raw, dict)
    unknown = sorted(set(raw) - set(GRID_KEYS))
    _require(not unknown, f"grid.{unknown[0] if unknown else ''}", None, f"one of the keys {list(GRID_KEYS)}")
    seeds = raw.get("seeds", [0])
    _require(isinstance(seeds, list) and len(seeds) > 0 and all(isinstance(s, int) for s in seeds),
             "grid.seeds", seeds, "a non-empty list of integers")  # fmt: skip
    _require(len(set(seeds)) == len(seeds), "grid.seeds", seeds, "distinct seeds")
    settings = _names(raw.get("settings"), "grid.settings")
    for name, spec in settings.items():
        _require(isinstance(spec, dict) and "preset" in spec and set(spec) <= {"preset", "set"},
                 f"grid.settings.{name}", spec, "{preset: NAME, set: [key=value, ...]}")  # fmt: skip
    methods = _names(raw["methods"], "grid.methods") if "methods" in raw else None
    for name, entries in (methods or {}).items():
        _require(
            isinstance(entries, list), f"grid.methods.{name}", entries, "a list of method names or mappings"
        )
    executor = raw.get("executor", {"name": "local"})
    executor = {"name": executor} if isinstance(executor, str) else executor
    _require(isinstance(executor, dict), "grid.executor", executor, "a name or {name: local | submitit, ...}")
    common = raw.get("set", [])
    _require(isinstance(common, list), "grid.set", common, "a list of key=value overrides")
    name = str(raw.get("name", default_name))
    _require(bool(NAME.match(name)), "grid.name", name, "a name of letters, digits and _.+=-")
    return Grid(name, tuple(seeds), settings, methods, tuple(common), executor, raw.get("out"))


def load_grid(path: str | Path) -> Grid:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"grid file {path} does not exist")
    return parse_grid(yaml.safe_load(path.read_text()), default_name=path.stem.split(".")[0])


def with_overrides(grid: Grid, overrides: list[str]) -> Grid:
    """The grid with ``--set`` overrides for every run (the seeds stay the grid's own)."""
    for assignment in overrides:
        if assignment.split("=", 1)[0].strip() == "train.seed":
            raise ConfigError("--set train.seed", assignment, "the grid's seeds: [...] list instead")
    return replace(grid, overrides=(*grid.overrides, *overrides))


def _method_entries(
    entries: list[Any], preset_methods: list[dict[str, Any]], key: str
) -> list[dict[str, Any]]:
    """Method mappings: the preset's options for a named method, updated by the grid's own."""
    out = []
    for entry in entries:
        spec = {"name": entry} if isinstance(entry, str) else entry
        _require(
            isinstance(spec, dict) and "name" in spec,
            key,
            entry,
            "a method name or {name: ..., option: value}",
        )
        base = next((m for m in preset_methods if m.get("name") == spec["name"]), {})
        out.append({**base, **spec})
    return out


def build_spec_config(grid: Grid, setting: str, method: str | None, seed: int) -> RunConfig:
    spec = grid.settings[setting]
    raw = load_preset(spec["preset"])
    for assignment in [*grid.common, *spec.get("set", []), *grid.overrides]:
        apply_override(raw, assignment)
    if method is not None and grid.methods is not None:
        raw["methods"] = _method_entries(
            grid.methods[method], raw.get("methods") or [], f"grid.methods.{method}"
        )
    raw.setdefault("train", {})["seed"] = seed
    return build_config(raw)


def plan(grid: Grid, out: str | Path) -> list[RunSpec]:
    """Every run of the grid, settings x methods x seeds, configs validated, names deterministic."""
    out = Path(out)
    methods: list[str | None] = list(grid.methods) if grid.methods is not None else [None]
    specs = []
    for setting in grid.settings:
        for method in methods:
            for seed in grid.seeds:
                name = "-".join(p for p in (setting, method, f"s{seed}") if p is not None)
                cfg = build_spec_config(grid, setting, method, seed)
                specs.append(RunSpec(name, out / name, cfg, setting, method or "preset", seed))
    return specs


def run_state(spec: RunSpec) -> str:
    """``new`` (nothing there), ``finished`` (skip), or ``resume`` (killed or failed: continue it).

    A directory holding a different config is an error: the grid changed under a finished sweep.
    """
    info_path = spec.run_dir / "run.json"
    if not info_path.exists():
        if spec.run_dir.exists() and any(spec.run_dir.iterdir()):
            raise SweepError(f"{spec.run_dir} holds files but no run.json; move them away to run {spec.name}")
        return "new"
    info = json.loads(info_path.read_text())
    wanted = json.loads(json.dumps(spec.config.to_dict(), default=str))
    if info.get("config") != wanted:
        diff = differences(info.get("config", {}), wanted)
        raise SweepError(
            f"{spec.run_dir} holds a run whose config differs from the grid's: "
            f"{describe_differences(diff, 'run', 'grid')}; rename the setting or remove the directory"
        )
    return "finished" if info.get("status") == "finished" else "resume"
