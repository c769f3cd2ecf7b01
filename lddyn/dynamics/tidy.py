"""Tidy rows of a recorded step: one value per row, its coordinates as columns.

A block is a quantity's values (P parts, O observations, C target classes) with one metadata dict
per part (missing keys are null). Columns are typed once per step (nullable integers,
categoricals): converting thousands of Python objects row by row would cost more than the maths.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor

#: (quantity, values (P, O, C), one meta dict per part, the O observation ids)
Block = tuple[str, Tensor, Sequence[dict], np.ndarray]


def _typed(per_part: list, repeat: np.ndarray) -> pd.api.extensions.ExtensionArray:
    """A nullable integer column when every value is an integer, else a categorical one."""
    present = [v for v in per_part if v is not None]
    if present and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in present):
        values = np.array([0 if v is None else int(v) for v in per_part], dtype=np.int64)
        missing = np.array([v is None for v in per_part])
        return pd.arrays.IntegerArray(np.repeat(values, repeat), np.repeat(missing, repeat))
    codes, uniques = pd.factorize(pd.Series(per_part, dtype=object), use_na_sentinel=True)
    return pd.Categorical.from_codes(np.repeat(codes, repeat), categories=pd.Index(uniques, dtype=object))


def step_frame(step: int, blocks: Sequence[Block], keys: Sequence[str]) -> pd.DataFrame:
    """Columns: step, observation, target_class, every key, quantity, value (float64)."""
    parts = [(quantity, meta) for quantity, _, metas, _ in blocks for meta in metas]
    repeat = np.concatenate([np.full(len(metas), v.shape[1] * v.shape[2]) for _, v, metas, _ in blocks])
    obs = [np.tile(np.repeat(ids.astype(np.int64), v.shape[2]), v.shape[0]) for _, v, _, ids in blocks]
    cls = [np.tile(np.arange(v.shape[2], dtype=np.int64), v.shape[0] * v.shape[1]) for _, v, _, _ in blocks]
    cols: dict[str, object] = {
        "step": np.full(int(repeat.sum()), int(step), dtype=np.int64),
        "observation": np.concatenate(obs),
        "target_class": np.concatenate(cls),
    }
    for key in keys:
        cols[key] = _typed([meta.get(key) for _, meta in parts], repeat)
    cols["quantity"] = _typed([q for q, _ in parts], repeat)
    values = torch.cat([v.detach().reshape(-1).to(torch.float64) for _, v, _, _ in blocks])
    cols["value"] = values.cpu().numpy()
    return pd.DataFrame(cols, copy=False)
