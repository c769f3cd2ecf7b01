"""The device options that also run on a CPU: device choice, bf16 autocast, channels-last,
deterministic kernels, in-place compile, host-resident data. No GPU is needed."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lddyn.config import ConfigError, load_config
from lddyn.train.device import batch_images, place_data, resolve_device
from lddyn.train.trainer import Trainer

BASE = ["train.threads=1", "train.steps=4"]


def trainer(tmp_path: Path, *extra: str) -> Trainer:
    return Trainer(load_config("digits-fixmatch", [*BASE, *extra]), tmp_path)


def step_losses(t: Trainer, steps: int = 2) -> list[float]:
    out = []
    for _ in range(steps):
        _, terms = t.train_step()
        out.append(sum(float(term.loss().detach()) for term in terms))
    return out


def test_auto_device_follows_what_is_visible() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="train.device"):
            resolve_device("cuda")


@pytest.mark.parametrize(
    ("key", "value"),
    [("train.device", "tpu"), ("train.precision", "fp16"), ("train.data_placement", "disk"),
     ("distributed.batch_scope", "node"), ("distributed.backend", "mpi")],
)  # fmt: skip
def test_bad_device_options_name_the_key(key: str, value: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as info:
        load_config("digits-fixmatch", [f"{key}={value}"])
    assert value in str(info.value)


def test_bf16_autocast_on_cpu_keeps_float32_losses(tmp_path: Path) -> None:
    fp32 = trainer(tmp_path / "a")
    bf16 = trainer(tmp_path / "b", "train.precision=bf16")
    _, terms = bf16.train_step()
    assert all(t.logits.dtype == torch.float32 for t in terms)  # the forward hook casts back
    ref, low = step_losses(fp32, 1)[0], float(sum(t.loss().detach() for t in terms))
    assert low != ref  # the forwards really ran in bf16 ...
    assert abs(low - ref) < 0.05 * ref  # ... and stayed close to float32
    assert not torch.is_autocast_enabled("cpu")  # the context ends with the step


def test_channels_last_changes_layout_not_results(tmp_path: Path) -> None:
    plain, nhwc = trainer(tmp_path / "a"), trainer(tmp_path / "b", "train.channels_last=true")
    conv = next(m for m in nhwc.model.modules() if isinstance(m, torch.nn.Conv2d) and m.in_channels > 1)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert not conv.weight.is_contiguous()
    a, b = step_losses(plain), step_losses(nhwc)
    assert a == pytest.approx(b, rel=1e-4)


def test_deterministic_flag_sets_and_clears_torch_mode(tmp_path: Path) -> None:
    try:
        a = trainer(tmp_path / "a", "train.deterministic=true")
        assert torch.are_deterministic_algorithms_enabled()
        b = trainer(tmp_path / "b", "train.deterministic=true")
        assert step_losses(a) == step_losses(b)  # same seed, deterministic kernels: bit-identical
        trainer(tmp_path / "c")
        assert not torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(False)


def test_compile_is_in_place_and_leaves_the_ema_model_eager(tmp_path: Path) -> None:
    t = trainer(tmp_path, "train.compile=true")  # compiling itself happens lazily, at the first forward
    assert getattr(t.model, "_compiled_call_impl", None) is not None
    assert getattr(t.ema_model, "_compiled_call_impl", None) is None
    assert list(t.model.state_dict()) == list(t.ema_model.state_dict())  # no "_orig_mod." prefix


def test_host_placement_gathers_batches_onto_the_device(tmp_path: Path) -> None:
    t = trainer(tmp_path)
    data = place_data(t.data, torch.device("cpu"), "host")
    index = torch.tensor([3, 0, 3])
    picked = batch_images(data.x_ulb, index, torch.device("cpu"))
    assert torch.equal(picked, data.x_ulb[index]) and picked.shape[0] == 3
