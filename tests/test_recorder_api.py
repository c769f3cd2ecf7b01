"""The public recorder from a user's own loop: what it refuses, what it says, what it reads."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lddyn.dynamics import GradientCheckError, ObservationSet, Recorder
from tests import dynref
from tests.dynref import D64, Step

ROOT = Path(__file__).resolve().parents[1]


def sets_for(model: nn.Module) -> list[ObservationSet]:
    shape = dynref.shape_of(model)
    return [
        ObservationSet("test", torch.randn(3, *shape, dtype=D64), labels=torch.tensor([0, 1, 2])),
        ObservationSet("baseline", torch.zeros(1, *shape, dtype=D64), norm="own"),
    ]


def one_step(  # noqa: ANN201
    rec: Recorder,
    model: nn.Module,
    opt,  # noqa: ANN001
    step: Step,
    scale: float = 1.0,
    extra: float = 0.0,
    update=None,  # noqa: ANN001
    keep: list | None = None,
):
    """A user's step; the registered sup losses are ``scale`` times the ones back-propagated and the
    loss gets an unregistered ``extra`` · ‖head.weight‖². ``update`` replaces ``opt.step()``;
    ``keep`` receives the step's logits and losses, as a trainer keeping its terms would."""
    with rec.step() as s:
        z_lb, l_lb, z_ulb, l_ulb = step.losses(model)
        s.term("sup", logits=z_lb, losses=l_lb * scale, source_class=step.y)
        s.term("unsup", logits=z_ulb, losses=l_ulb, source_class=step.pseudo)
        opt.zero_grad()
        (l_lb.sum() + l_ulb.sum() + extra * model.head.weight.square().sum()).backward()
        (update or opt.step)()
    if keep is not None:
        keep += [z_lb, l_lb, z_ulb, l_ulb]
    return s


def test_the_own_loop_example_runs_as_documented() -> None:
    """docs/own-loop.md's example, executed as written: rows of every quantity come back."""
    text = (ROOT / "docs" / "own-loop.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    assert len(code.strip().splitlines()) <= 40
    scope: dict = {}
    exec(compile(code, "own-loop.md", "exec"), scope)  # noqa: S102
    rows = scope["rows"]
    assert set(rows.quantity) == {"kg", "gd_logp", "update_logp", "measured", "bn_drift", "residual"}
    assert set(rows.term.dropna()) >= {"sup", "bn_coupling"}
    assert rows.step.nunique() == 1 and rows.value.notna().all()


@pytest.mark.parametrize("scale, extra", [(64.0, 0.0), (1.0, 0.5)])
def test_a_loss_the_terms_do_not_explain_is_refused_before_the_step(scale: float, extra: float) -> None:
    """A wrong per-sample normalisation (64x) or an unregistered loss: one clear error, raised
    before optimizer.step(), so the parameters are untouched."""
    model = dynref.mlp("batch")
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    before = copy.deepcopy(model.state_dict())
    rec = Recorder(model, opt, sets_for(model))
    with pytest.raises(GradientCheckError, match="sup" if scale != 1 else "head.weight"):
        one_step(rec, model, opt, Step((1, 4, 4)), scale=scale, extra=extra)
    for k, v in model.named_parameters():
        assert torch.equal(v, before[k])
    assert all("forward" not in vars(m) for m in model.modules())  # the block cleaned up
    one_step(rec, model, opt, Step((1, 4, 4)))  # and the recorder still works


def test_terms_after_backward_are_refused() -> None:
    model = dynref.mlp("batch")
    rec = Recorder(model, torch.optim.SGD(model.parameters(), lr=0.1), sets_for(model))
    with pytest.raises(ValueError, match="before backward"), rec.step() as s:
        z = model(torch.randn(4, 1, 4, 4, dtype=D64))["logits"]
        losses = F.cross_entropy(z, torch.zeros(4, dtype=torch.long), reduction="none")
        losses.sum().backward()
        s.term("sup", logits=z.detach(), losses=losses.detach())


def test_an_optimizer_the_split_does_not_know_still_gets_kg_and_gd_logp() -> None:
    model = dynref.mlp("batch")
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-4)
    rec = Recorder(model, opt, sets_for(model))
    with pytest.warns(UserWarning, match="SGD, torch.optim.Adam and torch.optim.AdamW, not RMSprop"):
        s = one_step(rec, model, opt, Step((1, 4, 4)))
    rows = s.rows()
    assert {"kg", "gd_logp"} <= set(rows.quantity)
    parts = set(rows[rows.quantity == "update_logp"].part)
    assert parts == {"step"}  # the whole update, unsplit
    r = s.results["test"]
    assert float(r["residual"][0].abs().max()) < 0.05 * float(r["measured"][0].abs().max())


def test_dropout_is_switched_off_and_said_and_randomness_is_refused() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.Dropout(0.5), nn.Linear(8, 3)).to(D64)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(4, 1, 4, 4, dtype=D64)
    with pytest.warns(UserWarning, match="Dropout switched off at observation forwards"):
        Recorder(model, opt, [ObservationSet("test", x)])

    class Noisy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(16, 3).to(D64)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.lin(x.flatten(1)) + torch.randn(len(x), 3, dtype=D64)

    noisy = Noisy()
    with pytest.raises(ValueError, match="'test': two forwards of the same inputs differ"):
        Recorder(noisy, torch.optim.SGD(noisy.parameters(), lr=0.1), [ObservationSet("test", x)])


class TupleNet(nn.Module):
    """A model returning (features, logits): the recorder is told how to read it."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.BatchNorm1d(8), nn.Tanh())
        self.head = nn.Linear(8, dynref.C)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feat = self.body(x)
        return feat, self.head(feat)


def test_a_tuple_model_and_a_head_on_stored_features() -> None:
    """Logits read by a user reader; a term on detached stored features (no forward row) takes the
    per-group backward and still matches the independent Jacobian times its gradient."""
    model = TupleNet().to(D64).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x_obs = torch.randn(3, 1, 4, 4, dtype=D64)
    rec = Recorder(model, opt, [ObservationSet("test", x_obs)], logits=lambda out: out[1])
    x, y = torch.randn(6, 1, 4, 4, dtype=D64), torch.randint(0, dynref.C, (6,))
    bank = torch.randn(5, 8, dtype=D64)  # stored features: only the head sees them
    model0 = copy.deepcopy(model)
    with rec.step() as s:
        z = model(x)[1]
        l_sup = F.cross_entropy(z, y, reduction="none") / 6
        z_mem = model.head(bank)
        l_mem = F.cross_entropy(z_mem, torch.arange(5) % dynref.C, reduction="none") / 5
        s.term("sup", logits=z, losses=l_sup)
        s.term("mem", logits=z_mem, losses=l_mem)
        opt.zero_grad()
        (l_sup.sum() + l_mem.sum()).backward()
        opt.step()
    kg = {m["term"]: v for v, m in zip(*s.results["test"]["kg"], strict=True)}
    m0 = copy.deepcopy(model0).eval()
    params = list(m0.parameters())
    jac = torch.stack(
        [
            torch.cat(
                [
                    g.reshape(-1)
                    for g in torch.autograd.grad(
                        m0(x_obs)[1][o, c], params, allow_unused=True, materialize_grads=True
                    )
                ]
            )
            for o in range(3)
            for c in range(dynref.C)
        ]
    ).view(3, dynref.C, -1)
    twin = copy.deepcopy(model0)
    g_mem = torch.autograd.grad(
        F.cross_entropy(twin.head(bank), torch.arange(5) % dynref.C, reduction="sum") / 5,
        list(twin.parameters()),
        allow_unused=True,
        materialize_grads=True,
    )
    torch.testing.assert_close(kg["mem"], jac @ dynref.flat(g_mem), rtol=1e-9, atol=1e-12)


def test_bad_observation_sets_name_the_value() -> None:
    with pytest.raises(ValueError, match="norm='eval' is not one of"):
        ObservationSet("test", torch.zeros(2, 3), norm="eval")
    with pytest.raises(ValueError, match="labels has 3 entries"):
        ObservationSet("test", torch.zeros(2, 3), labels=torch.zeros(3))


def test_a_term_on_a_slice_of_another_terms_logits_passes_the_gradient_check() -> None:
    """FreeMatch's fairness term sits on rows of the consistency term's logits: the gradient the
    loss sends to those logits is both terms', and the recorder expects exactly that."""
    model = dynref.mlp("batch")
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    rec = Recorder(model, opt, sets_for(model))
    x, y = torch.randn(8, 1, 4, 4, dtype=D64), torch.randint(0, dynref.C, (8,))
    with rec.step() as s:
        z = model(x)["logits"]
        main = F.cross_entropy(z, y, reduction="none") / 8
        part = z[2:5]
        extra = 0.1 * torch.softmax(part, -1)[:, 0]
        s.term("main", logits=z, losses=main)
        s.term("extra", logits=part, losses=extra)
        opt.zero_grad()
        (main.sum() + extra.sum()).backward()
        opt.step()
    assert set(s.rows().term.dropna()) == {"main", "extra", "bn_coupling"}


def test_a_finished_step_leaves_nothing_on_tensors_that_outlive_it() -> None:
    """A trainer may keep a step's loss terms; the step's record, its captured activations and
    hooks must not ride along (they once held ~60 MB per recorded step on digits)."""
    import gc
    import weakref

    from lddyn.dynamics.capture import StepCapture

    model = dynref.cnn(smooth=False)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    rec, step = Recorder(model, opt, sets_for(model)), Step(dynref.shape_of(model))
    kept: list = []  # the caller's tensors live on
    for _ in range(2):
        s = one_step(rec, model, opt, step, keep=kept)
        ref = weakref.ref(s)
        del s
    gc.collect()
    assert ref() is None
    assert not [o for o in gc.get_objects() if isinstance(o, StepCapture)]


def test_a_step_without_optimizer_step_records_the_change_the_block_made() -> None:
    """A hand-written update (no ``optimizer.step()``): no optimiser split is invented; the whole
    change is the block's own part, and it explains the measured change to first order."""
    model = dynref.mlp("layer")
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    rec, step = Recorder(model, opt, sets_for(model)), Step((1, 4, 4))

    @torch.no_grad()
    def by_hand() -> None:
        for p in model.parameters():
            p -= 1e-3 * p.grad

    s = one_step(rec, model, opt, step, update=by_hand)
    rows = s.rows()
    assert set(rows[rows.quantity == "update_logp"].part) == {"post_step"}
    r = s.results["test"]
    assert float(r["residual"][0].abs().max()) < 0.01 * float(r["measured"][0].abs().max())


def test_the_dynamics_package_stays_under_2000_lines() -> None:
    """A recorded value must stay followable through a handful of small files (issue 13)."""
    import lddyn.dynamics

    folder = Path(lddyn.dynamics.__file__).parent
    lines = sum(len(p.read_text().splitlines()) for p in folder.glob("*.py"))
    assert lines < 2000, f"lddyn/dynamics/ has {lines} lines"
