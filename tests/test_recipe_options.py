"""The switches between lddyn's defaults and the released code's iteration, each seen where a user sees it."""

from __future__ import annotations

import io
import math
from pathlib import Path

import pytest
import torch

from lddyn.config import PRESET_DIR, ConfigError, load_config
from lddyn.losses import LossTerm
from lddyn.methods.dytrim import DyTrim, DyTrimConfig
from lddyn.train.callbacks import EMA
from lddyn.train.callbacks.checkpoint import load_trainer_state, trainer_state
from lddyn.train.trainer import Trainer
from tests.conftest import cli

RELEASED = {
    "ssl": {"log_eps": 1e-8, "loader_restart": 500, "loader_lookahead": 8},
    "train": {"ema_counts": "frozen"},
    "dytrim": {"prune_first_pass": False, "labeled_prior": "pass", "epoch_steps": 500},
}
NOT_RELEASED_CODE = (
    "digits-",
    "fixmatch-classic",
    "-alternate",
    "-bmb",
)  # other recipes, or no released code


def trainer(tmp_path: Path, preset: str = "digits-dytrim", *extra: str) -> Trainer:
    cfg = load_config(preset, ["train.steps=12", "ssl.batch_size=16", "train.threads=1", *extra])
    return Trainer(cfg, tmp_path, callbacks=[EMA()])


def steps(tr: Trainer, n: int) -> None:
    for _ in range(n):
        ctx, terms = tr.train_step()
        tr.dispatch("step_end", ctx, terms)


def term(logits: list[float], target: int, log_eps: float) -> LossTerm:
    z = torch.tensor([logits], requires_grad=True)
    one_hot = torch.nn.functional.one_hot(torch.tensor([target]), len(logits)).float()
    return LossTerm("sup", z, one_hot, torch.ones(1), 1.0, torch.zeros(1), torch.zeros(1), torch.zeros(1),
                    torch.zeros(1), log_eps=log_eps)  # fmt: skip


def test_log_eps_caps_a_confident_mistake_at_18_4_nats() -> None:
    exact, released = term([40.0, 0.0, 0.0], 1, 0.0), term([40.0, 0.0, 0.0], 1, 1e-8)
    assert float(exact.loss().detach()) == pytest.approx(40.0, abs=1e-5)
    assert float(released.loss().detach()) == pytest.approx(-math.log(1e-8), rel=1e-6)  # 18.42 nats
    (g_exact,) = torch.autograd.grad(exact.loss(), exact.logits)
    (g_released,) = torch.autograd.grad(released.loss(), released.logits)
    assert g_exact[0, 1] == pytest.approx(-1.0) and abs(float(g_released[0, 1])) < 1e-8  # no push left
    mild = term([1.0, 0.5, -0.2], 0, 1e-8)  # a likely class: the two losses agree to the epsilon
    assert float(mild.loss().detach()) == pytest.approx(
        float(term([1.0, 0.5, -0.2], 0, 0.0).loss().detach()), abs=1e-7
    )


def test_log_eps_reaches_the_step_and_dytrim_scores(tmp_path: Path) -> None:
    tr = trainer(tmp_path, "digits-dytrim", "ssl.log_eps=1e-8")
    steps(tr, 1)
    ctx, terms = tr.train_step()
    assert [t.log_eps for t in terms] == [1e-8, 1e-8]
    sup = terms[0]
    expected = -(sup.targets * torch.log(torch.softmax(sup.logits, -1) + 1e-8)).sum(-1)
    dy = next(m for m in tr.methods if isinstance(m, DyTrim))
    torch.testing.assert_close(dy.scores_lb[sup.index], expected.detach().double())


def test_ema_counts_frozen_leaves_the_ema_step_counters_at_zero(tmp_path: Path) -> None:
    counters = {}
    for mode in ("copy", "frozen"):
        tr = trainer(tmp_path / mode, "digits-fixmatch", f"train.ema_counts={mode}")
        steps(tr, 3)
        ema = tr.ema_model.state_dict()
        counters[mode] = {k: int(v) for k, v in ema.items() if k.endswith("num_batches_tracked")}
        student = tr.model.state_dict()
        assert all(int(student[k]) == 3 * 4 for k in counters[mode])  # 4 train-mode forwards a step
    assert set(counters["copy"].values()) == {12} and set(counters["frozen"].values()) == {0}


def test_float64_training_step(tmp_path: Path) -> None:
    tr = trainer(tmp_path, "digits-dytrim", "train.dtype=float64", "methods.cdmad.start_step=1")
    seen: list[torch.dtype] = []
    tr.model.register_forward_pre_hook(lambda m, args: seen.append(args[0].dtype))
    steps(tr, 2)
    floats = [
        v
        for v in (*tr.model.state_dict().values(), *tr.ema_model.state_dict().values())
        if v.is_floating_point()
    ]
    assert floats and all(v.dtype == torch.float64 for v in floats)
    moments = [s[k] for s in tr.optimizer.state.values() for k in ("exp_avg", "exp_avg_sq")]
    assert moments and all(m.dtype == torch.float64 for m in moments)
    assert seen and set(seen) == {torch.float64}  # baseline, weak, labeled and strong batches
    dy = next(m for m in tr.methods if isinstance(m, DyTrim))
    assert dy.prior.dtype == torch.float64  # pi(I) in the model's dtype after the switch
    assert all(v.dtype == torch.float32 for v in trainer(tmp_path / "b").model.state_dict().values()
               if v.is_floating_point())  # fmt: skip


def test_float64_with_bf16_is_refused_by_the_cli(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="train.precision"):
        load_config("digits-dytrim", ["train.dtype=float64", "train.precision=bf16"])
    bad = ["--set", "train.dtype=float64", "--set", "train.precision=bf16"]
    proc = cli("run", "--out", str(tmp_path / "r"), *bad, check=False)
    assert proc.returncode == 2 and "train.precision" in proc.stderr and "float64" in proc.stderr
    assert not (tmp_path / "r").exists()
    proc = cli("run", "--out", str(tmp_path / "r"), "--set", "train.dtype=float16", check=False)
    assert proc.returncode == 2 and "train.dtype" in proc.stderr and "float32 | float64" in proc.stderr


def test_released_first_pass_and_prior_pass(tmp_path: Path) -> None:
    released = ("methods.dytrim.prune_first_pass=false", "methods.dytrim.labeled_prior=pass")
    tr = trainer(tmp_path / "a", "digits-dytrim", *released)
    dy = next(m for m in tr.methods if isinstance(m, DyTrim))
    n = len(tr.data.y_lb)
    assert len(dy.prior_sample) == n - n % 16 and len(set(dy.prior_sample.tolist())) == len(dy.prior_sample)
    counts = torch.bincount(tr.data.y_lb[dy.prior_sample], minlength=10)
    assert dy.frequencies.dtype == torch.float64 and torch.equal(
        dy.frequencies, counts.double() / counts.sum()
    )
    steps(tr, 1)
    assert tr.streams["labeled"].passes == 1 and tr.streams["labeled"].pool_size == n  # unpruned first pass
    default = trainer(tmp_path / "b", "digits-dytrim")
    steps(default, 1)
    assert default.streams["labeled"].pool_size < n  # lddyn prunes it with the exact frequencies


def test_resume_keeps_the_released_pass_state(tmp_path: Path) -> None:
    """A checkpoint mid-pass, with a pool drawn ahead, resumes to the same run."""
    rules = (
        "ssl.loader_restart=6",
        "ssl.loader_lookahead=6",
        "methods.dytrim.prune_first_pass=false",
        "methods.dytrim.labeled_prior=pass",
        "methods.dytrim.epoch_steps=6",
        "train.ema_counts=frozen",
    )
    whole = trainer(tmp_path / "a", "digits-dytrim", *rules)
    steps(whole, 12)
    first = trainer(tmp_path / "b", "digits-dytrim", *rules)
    steps(first, 7)
    buffer = io.BytesIO()
    torch.save(trainer_state(first), buffer)
    assert any(s.pending is not None for s in first.streams.values())
    resumed = trainer(tmp_path / "c", "digits-dytrim", *rules)
    load_trainer_state(resumed, torch.load(io.BytesIO(buffer.getvalue()), weights_only=True))
    steps(resumed, 5)
    for key, value in whole.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    for which, stream in whole.streams.items():
        assert (
            torch.equal(stream.order, resumed.streams[which].order)
            and stream.passes == resumed.streams[which].passes
        )


def test_published_presets_select_the_released_iteration() -> None:
    published = [
        p for p in sorted(PRESET_DIR.rglob("*.yaml")) if not any(k in p.name for k in NOT_RELEASED_CODE)
    ]
    assert len(published) >= 40 and any(p.stem == "reference" for p in published)
    for path in published:
        cfg = load_config(str(path))
        for key, value in RELEASED["ssl"].items():
            assert getattr(cfg.ssl, key) == value, (path.stem, key)
        assert cfg.train.ema_counts == "frozen", path.stem
        for method in cfg.methods:
            if isinstance(method, DyTrimConfig):
                assert {k: getattr(method, k) for k in RELEASED["dytrim"]} == RELEASED["dytrim"], path.stem
    for path in PRESET_DIR.glob("digits-*.yaml"):  # the digits presets keep lddyn's behaviour
        cfg = load_config(str(path))
        assert (cfg.ssl.log_eps, cfg.ssl.loader_restart, cfg.ssl.loader_lookahead) == (0.0, 0, 0), path.stem
        assert cfg.train.ema_counts == "copy" and cfg.train.dtype == "float32", path.stem
