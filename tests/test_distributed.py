"""``torchrun`` with 2 CPU processes (gloo) takes the same steps as one process at the same global
batch: every table equals the single-process run's up to float rounding."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

from lddyn.config import ConfigError
from lddyn.sinks.parquet import read_table
from lddyn.train.distributed import Distributed, GlobalBatchNorm, convert_batch_norm
from tests.conftest import ROOT, cli, overrides

# Float rounding differs (summation order of the BN statistics and of the gradient average) and
# grows by about 3x every 5 steps through Adam's normalised updates: 20 steps keep it near 1e-6.
# Once CDMAD subtracts the baseline image's logits (a solid image whose BN spread is near zero),
# the baseline table's logits move by up to 1e-3: the same as between two single-process runs
# that differ only in train.threads (1 vs 2), measured at 9.3e-4 on this config.
TOLERANCE = {"metrics": 1.01 / 50, "baseline": 2e-3}  # metrics: one test image per class may flip
ARGS = (
    "train.steps=20",
    "train.eval_every=10",
    "train.checkpoint_every=10",
    "probe.every=10",
    "methods.cdmad.start_step=10",  # the debiased path and DyTrim's prior are active
    "methods.dytrim.prior_start_step=10",
    "record.dynamics=false",  # the recorder records in one process
)


def torchrun(out: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    command += ["-m", "lddyn.cli.main", "run", "--preset", "digits-dytrim", "--probe", "baseline"]
    command += ["--out", str(out), "-q", "--no-plot", *overrides(*ARGS, *extra)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def comparable(run: Path, table: str) -> pd.DataFrame:
    frame = read_table(run, table)
    if table == "train":
        frame = frame[frame.quantity != "wall_seconds"]
    return frame.reset_index(drop=True)


@pytest.mark.slow
def test_two_processes_equal_one_at_the_same_global_batch(tmp_path: Path) -> None:
    single, multi = tmp_path / "single", tmp_path / "multi"
    cli("run", "--preset", "digits-dytrim", "--probe", "baseline", "--out", str(single), "-q", "--no-plot",
        *overrides(*ARGS))  # fmt: skip
    # batch sizes stated per device: 16 labeled + 32 unlabeled per process = the preset's global 32 + 64
    proc = torchrun(multi, "distributed.batch_scope=per_device", "ssl.batch_size=16")
    assert proc.stdout.count("final evaluation") == 1  # only rank 0 reports
    assert json.loads((multi / "run.json").read_text())["status"] == "finished"
    assert (multi / "checkpoint.pt").exists() and not list(multi.glob("*/.*.tmp"))
    for table in ("train", "pruning", "baseline", "metrics"):
        a, b = comparable(single, table), comparable(multi, table)
        assert len(a) > 0 and len(a) == len(b), table  # no rank wrote a second copy of a row
        atol = TOLERANCE.get(table, 1e-5)
        pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-4, atol=atol, obj=table)
    train = comparable(single, "train")
    assert train[train.quantity == "loss"].value.nunique() > 1  # the run really trained


def test_global_batch_and_slices_of_one_rank() -> None:
    d = Distributed(rank=1, world=2)
    assert d.global_batch(32) == 32 and torch.equal(d.shard(torch.arange(6)), torch.tensor([3, 4, 5]))
    with pytest.raises(ConfigError, match="ssl.batch_size"):
        d.global_batch(33)
    assert Distributed(rank=0, world=2, batch_scope="per_device").global_batch(16) == 32
    assert torch.equal(Distributed().shard(torch.arange(5)), torch.arange(5))  # one process: untouched


def test_global_batch_norm_is_plain_batch_norm_in_one_process() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(64, 5), nn.BatchNorm1d(5)
    )
    reference = copy.deepcopy(model)
    converted = convert_batch_norm(model)
    norms = [m for m in converted.modules() if isinstance(m, GlobalBatchNorm)]
    assert len(norms) == 2 and [m.vector_input for m in norms] == [False, True]
    x = torch.randn(8, 3, 6, 6)
    assert torch.allclose(converted(x), reference(x), atol=1e-6)
    assert torch.allclose(norms[0].running_var, reference[1].running_var)  # buffers updated the same way
