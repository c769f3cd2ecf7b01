"""Files from elsewhere cannot run code: dataset pickles and checkpoints that would create a file
when unpickled are refused with one line naming them, and the file is never created; files in the
real formats (Python 2 CIFAR batches from numpy 1, any pickle protocol, our own checkpoints) load."""

from __future__ import annotations

import json
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from lddyn.config import load_config, preset_names
from lddyn.data.cifar import load_cifar
from lddyn.data.errors import DataFileError
from lddyn.data.smallimagenet import read_batch
from lddyn.train.callbacks.checkpoint import read_checkpoint, save_checkpoint
from lddyn.train.run import build_callbacks
from lddyn.train.trainer import Trainer
from tests.conftest import cli, overrides
from tests.test_cifar_source import write_cifar10


class CreatesFile:
    """Unpickling this calls ``open(target, "w")``: the file appearing means code ran."""

    def __init__(self, target: Path) -> None:
        self.target = str(target)

    def __reduce__(self) -> tuple:
        return (open, (self.target, "w"))


class RunsCommand:
    """Unpickling this runs a shell command through ``os.system``."""

    def __init__(self, target: Path) -> None:
        self.target = str(target)

    def __reduce__(self) -> tuple:
        import os

        return (os.system, (f"touch {self.target}",))


def py2_cifar_batch(data: np.ndarray, labels: list[int]) -> bytes:
    """A batch as the CIFAR authors' Python 2 cPickle wrote it (protocol 2, numpy 1 module paths,
    keys as Python 2 str): written opcode by opcode, since Python 3 cannot write this form."""

    def text(b: bytes) -> bytes:
        return b"U" + bytes([len(b)]) + b

    def integer(n: int) -> bytes:
        return b"J" + struct.pack("<i", n)

    raw = data.tobytes()
    dtype = (b"cnumpy\ndtype\n" + text(b"u1") + integer(0) + integer(1) + b"\x87R("
             + integer(3) + text(b"|") + b"NNN" + integer(-1) + integer(-1) + integer(0) + b"tb")  # fmt: skip
    array = (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + integer(0) + b"\x85" + text(b"b")
             + b"\x87R(" + integer(1) + integer(data.shape[0]) + integer(data.shape[1]) + b"\x86" + dtype
             + b"\x89T" + struct.pack("<I", len(raw)) + raw + b"tb")  # fmt: skip
    labels_list = b"](" + b"".join(integer(v) for v in labels) + b"e"
    return b"\x80\x02}(" + text(b"data") + array + text(b"labels") + labels_list + b"u."


@pytest.mark.parametrize("payload", [CreatesFile, RunsCommand])
def test_crafted_cifar_batch_is_refused_and_runs_nothing(tmp_path: Path, payload: type) -> None:
    folder = write_cifar10(tmp_path)
    target = tmp_path / "pwned"
    labels = list(range(10))
    entry = {b"data": np.zeros((10, 3072), np.uint8), b"labels": labels, b"extra": payload(target)}
    (folder / "data_batch_2").write_bytes(pickle.dumps(entry))
    with pytest.raises(DataFileError, match=r"data_batch_2 asks to call (io\.open|posix\.system)") as info:
        load_cifar("cifar10", tmp_path, "train")
    assert "\n" not in str(info.value)
    assert not target.exists()


def test_crafted_small_imagenet_batch_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "pwned"
    path = tmp_path / "val_data"
    path.write_bytes(pickle.dumps({"data": CreatesFile(target), "labels": [1]}))
    with pytest.raises(DataFileError, match="val_data asks to call io.open"):
        read_batch(path, 32, 127)
    assert not target.exists()


def test_real_formats_still_load(tmp_path: Path) -> None:
    folder = write_cifar10(tmp_path)
    rng = np.random.default_rng(1)
    data = rng.integers(0, 256, (10, 3072), dtype=np.uint8)
    (folder / "data_batch_1").write_bytes(py2_cifar_batch(data, list(range(10))))
    for i, protocol in zip((2, 3, 4), (0, 2, 5), strict=True):  # every protocol numpy 2 writes
        entry = {b"data": data[::-1].copy(), b"labels": [np.int64(v) for v in range(10)], b"name": "b"}
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(entry, protocol=protocol))
    x, y = load_cifar("cifar10", tmp_path, "train")
    assert (x[:10].reshape(10, -1) == data).all() and y[:10].tolist() == list(range(10))
    assert (x[10:20].reshape(10, -1) == data[::-1]).all()
    side_data = rng.integers(0, 256, (3, 3 * 32 * 32), dtype=np.uint8)
    path = tmp_path / "train_data_batch_1"
    path.write_bytes(pickle.dumps({"data": side_data, "labels": [1, 2, 127], "mean": side_data.mean(0)}))
    images, labels = read_batch(path, 32, 127)
    assert images.shape == (3, 3, 32, 32) and labels.tolist() == [1, 2, 127]


def test_crafted_checkpoint_is_refused_on_resume(tmp_path: Path) -> None:
    run = tmp_path / "run"
    short = ("train.steps=20", "train.eval_every=10", "train.checkpoint_every=10")
    proc = subprocess_run(run, *short, "train.steps=40")
    assert proc.returncode == 0, proc.stderr
    info = json.loads((run / "run.json").read_text())
    info["status"] = "interrupted"  # as a killed run would be
    (run / "run.json").write_text(json.dumps(info))
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)  # our own checkpoints: plain types only
    target = tmp_path / "pwned"
    torch.save({**ckpt, "note": CreatesFile(target)}, run / "checkpoint.pt")
    before = (run / "run.json").read_text()
    proc = cli("run", "--resume", str(run), "-q", "--no-plot", check=False)
    assert proc.returncode == 2 and not target.exists()
    assert "checkpoint.pt" in proc.stderr and "refusing to load" in proc.stderr
    assert "io.open" in proc.stderr and proc.stderr.count("\n") == 1
    assert (run / "run.json").read_text() == before  # nothing recorded is changed by a refusal


def subprocess_run(run: Path, *pairs: str):  # noqa: ANN201
    return cli("run", "-p", "digits-fixmatch", "--out", str(run), "-q", "--no-plot", *overrides(*pairs))


@pytest.mark.parametrize("preset", sorted(p for p in preset_names() if p.startswith("digits-")))
def test_every_method_checkpoint_loads_with_weights_only(tmp_path: Path, preset: str) -> None:
    cfg = load_config(
        preset, ["train.steps=20", "ssl.batch_size=16", "train.threads=1", "probe.baseline=true"]
    )
    trainer = Trainer(cfg, tmp_path, build_callbacks(cfg, progress=False))
    trainer.dispatch("train_start")
    for _ in range(2):
        trainer.dispatch("step_end", *trainer.train_step())
    save_checkpoint(trainer, tmp_path / "checkpoint.pt")
    ckpt = read_checkpoint(tmp_path / "checkpoint.pt")  # weights_only=True: plain types only
    assert ckpt["state"]["step"] == 2 and set(ckpt["methods"]) == {m.name for m in trainer.methods}
