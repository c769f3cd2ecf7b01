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
) -> dict[str, list]:
    """Columns for values (P, O, C): step, observation, target_class, keys, quantity, value."""
    p, o, c = values.shape
    cols: dict[str, list] = {
        "step": [int(step)] * (p * o * c),
        "observation": np.tile(np.repeat(obs_ids.cpu().numpy(), c), p).tolist(),
        "target_class": np.tile(np.arange(c), p * o).tolist(),
    }
    for key in (*KEY_COLUMNS, *extra):
        cols[key] = [v for m in meta for v in [m.get(key)] * (o * c)]
    cols["quantity"] = [quantity] * (p * o * c)
    cols["value"] = values.detach().to(torch.float64).reshape(-1).cpu().tolist()
    return cols


def concat(blocks: Sequence[dict[str, list]]) -> dict[str, list]:
    """Concatenate column blocks with the same columns."""
    if not blocks:
        return {}
    return {k: [v for b in blocks for v in b[k]] for k in blocks[0]}


def rows(cols: dict[str, list]) -> list[dict]:
    """Row records from columns."""
    keys = list(cols)
    return [dict(zip(keys, vals, strict=True)) for vals in zip(*(cols[k] for k in keys), strict=True)]
