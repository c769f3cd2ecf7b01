"""``run.json``: what ran (config, seeds, versions, command, git revision) and how it ended."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
import uuid
from importlib import metadata
from pathlib import Path
from typing import Any

STATUSES = ("running", "finished", "failed", "interrupted")
PACKAGES = ("lddyn", "torch", "kornia", "numpy", "pandas", "pyarrow", "duckdb", "scikit-learn")


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def git_revision() -> str | None:
    root = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str))
    os.replace(tmp, path)


def read_run_json(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / "run.json"
    if not path.exists():
        raise FileNotFoundError(f"{run_dir} is not an lddyn run directory (no run.json)")
    return json.loads(path.read_text())


def new_run_json(config: dict[str, Any], seeds: dict[str, int]) -> dict[str, Any]:
    return {
        "run_id": uuid.uuid4().hex[:12],
        "status": "running",
        "config": config,
        "seeds": seeds,
        "versions": package_versions(),
        "command": sys.argv,
        "git_revision": git_revision(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "schema_version": 1,
    }


def set_status(run_dir: Path, status: str, **extra: Any) -> None:
    if status not in STATUSES:
        raise ValueError(f"status {status!r} is not one of {STATUSES}")
    info = read_run_json(run_dir)
    info.update(status=status, updated=time.strftime("%Y-%m-%dT%H:%M:%S%z"), **extra)
    write_json_atomic(run_dir / "run.json", info)


def record_extension(run_dir: Path, config: dict[str, Any], at_step: int, old_steps: int) -> None:
    """A resume that grew train.steps: the new config, and the history of the change."""
    info = read_run_json(run_dir)
    change = {"at_step": at_step, "steps_before": old_steps, "steps_after": config["train"]["steps"]}
    info.update(config=config, extensions=[*info.get("extensions", []), change])
    write_json_atomic(run_dir / "run.json", info)
