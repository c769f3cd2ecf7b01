"""Tidy records of dynamics tensors: one value per row, its coordinates as columns.

A block is a tensor of values (P, O, C) (P parts or groups, O observations, C target classes)
plus one metadata dict per part; ``block`` flattens it into numpy columns. Missing coordinates
(a key the grouping did not use, a part with no group) are null: NaN in the float columns that
carry integer keys while building, None in the object columns. ``frame`` types them once per
step (nullable integers, categoricals): a recorded step writes thousands of rows, and converting
Python objects row by row cost more than the step's mathematics.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor

KEY_COLUMNS = ("term", "source_class", "correct", "status")
#: Key columns holding integers (NaN while building, nullable integers in a frame).
INT_KEYS = ("source_class", "correct", "status", "index")


def block(
    step: int, obs_ids: Tensor, values: Tensor, meta: Sequence[dict], quantity: str, extra: Sequence[str] = ()
) -> dict[str, np.ndarray]:
    """Columns for values (P, O, C): step, observation, target_class, keys, quantity, value."""
    p, o, c = values.shape
    n = p * o * c
    cols: dict[str, np.ndarray] = {
        "step": np.full(n, int(step), dtype=np.int64),
        "observation": np.tile(np.repeat(obs_ids.cpu().numpy().astype(np.int64), c), p),
        "target_class": np.tile(np.arange(c, dtype=np.int64), p * o),
    }
    for key in (*KEY_COLUMNS, *extra):
        vals = [m.get(key) for m in meta]
        if key in INT_KEYS:
            per_part = np.array([np.nan if v is None else int(v) for v in vals], dtype=np.float64)
        else:
            per_part = np.empty(p, dtype=object)
            per_part[:] = vals
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


def frame(cols: dict[str, np.ndarray]) -> pd.DataFrame:
    """A typed frame: integer keys as nullable integers, object columns as categoricals."""
    data: dict[str, object] = {}
    for name, col in cols.items():
        if name in INT_KEYS:
            missing = np.isnan(col)
            data[name] = pd.arrays.IntegerArray(np.where(missing, 0, col).astype(np.int64), missing)
        elif col.dtype == object:
            codes, uniques = pd.factorize(col, use_na_sentinel=True)
            data[name] = pd.Categorical.from_codes(codes, categories=pd.Index(uniques, dtype=object))
        else:
            data[name] = col
    return pd.DataFrame(data, copy=False)


def rows(cols: dict[str, np.ndarray]) -> list[dict]:
    """Row records (plain Python values, None where null) from columns."""
    keys = list(cols)
    lists = [_plain(cols[k]) if k in INT_KEYS else cols[k].tolist() for k in keys]
    return [dict(zip(keys, vals, strict=True)) for vals in zip(*lists, strict=True)]


def _plain(col: np.ndarray) -> list:
    return [None if np.isnan(v) else int(v) for v in col.tolist()]
