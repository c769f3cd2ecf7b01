"""Tidy records of dynamics tensors: one value per row, its coordinates as columns.

A block is a tensor of values (P, O, C) (P parts or groups, O observations, C target classes)
plus one metadata dict per part; ``block`` flattens it into columns that a parquet sink writes
as they are. Missing coordinates (a key the grouping did not use, a part with no group) are
None, i.e. null in parquet.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

KEY_COLUMNS = ("term", "source_class", "correct", "status")


def block(
    step: int, obs_ids: Tensor, values: Tensor, meta: Sequence[dict], quantity: str, extra: Sequence[str] = ()
) -> dict[str, np.ndarray]:
    """Columns for values (P, O, C): step, observation, target_class, keys, quantity, value.

    Columns are numpy arrays (object arrays for the keys, so None stays None): a recorded step
    writes thousands of rows, and building them as Python lists cost more than the step itself.
    """
    p, o, c = values.shape
    n = p * o * c
    cols: dict[str, np.ndarray] = {
        "step": np.full(n, int(step), dtype=np.int64),
        "observation": np.tile(np.repeat(obs_ids.cpu().numpy().astype(np.int64), c), p),
        "target_class": np.tile(np.arange(c, dtype=np.int64), p * o),
    }
    for key in (*KEY_COLUMNS, *extra):
        per_part = np.empty(p, dtype=object)
        per_part[:] = [m.get(key) for m in meta]
        cols[key] = np.repeat(per_part, o * c)
    cols["quantity"] = np.full(n, quantity, dtype=object)
    cols["value"] = values.detach().to(torch.float64).reshape(-1).cpu().numpy()
    return cols


def concat(blocks: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Concatenate column blocks with the same columns."""
    if not blocks:
        return {}
    return {k: np.concatenate([b[k] for b in blocks]) for k in blocks[0]}


def constant(cols: dict[str, np.ndarray], name: str, value: object) -> dict[str, np.ndarray]:
    """Add a column holding one value on every row."""
    cols[name] = np.full(len(cols["value"]), value, dtype=object)
    return cols


def rows(cols: dict[str, np.ndarray]) -> list[dict]:
    """Row records (plain Python values) from columns."""
    keys = list(cols)
    lists = [np.asarray(cols[k]).tolist() for k in keys]
    return [dict(zip(keys, vals, strict=True)) for vals in zip(*lists, strict=True)]
