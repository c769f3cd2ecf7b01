"""BMB, alternate sampling, FlexMatch and FreeMatch: each rule against its definition (docs/methods.md).

Loss terms and weights are checked through the dynamics recorder's per-term split: the logit
gradient G it reads per term must equal weight * (softmax(z) - target) / norm with the weights
docs/methods.md defines, computed here independently from the model outputs.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lddyn.config import load_config
from lddyn.data.samplers import Batch
from lddyn.dynamics import ObservationSet, Recorder, StepRecord
from lddyn.losses import LossTerm, total_loss
from lddyn.methods.alternate import SEMI, AlternateConfig, phase_plan
from lddyn.methods.bank import BalancedBank, CountEstimate, Drawn, relative_weights
from lddyn.methods.flexmatch import UNUSED, learning_status
from lddyn.methods.freematch import fairness
from lddyn.train.step import pseudo_targets
from lddyn.train.trainer import Trainer


def make_trainer(tmp_path: Path, preset: str, *extra: str) -> Trainer:
    cfg = load_config(preset, ["train.steps=50", "ssl.batch_size=16", "train.threads=1", *extra])
    return Trainer(cfg, tmp_path)


def expected_G(term: LossTerm, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """G = dL/dz of a soft-CE term: weight * (softmax(z) - target) / norm."""
    probs = torch.softmax(term.loss_logits().detach(), -1)
    return weight[:, None] * (probs - targets) / term.norm


def recorded_step(tr: Trainer, step: int, probe=None) -> tuple[StepRecord, object, list[LossTerm]]:  # noqa: ANN001
    """One trainer step recorded through the public Recorder at six test images, by term;
    ``probe(terms)`` runs inside the step, before the backward."""
    x_obs = tr.aug.normalize(tr.data.x_test[:6])
    rec = Recorder(tr.model, tr.optimizer, [ObservationSet("test", x_obs)], by=("term",))
    tr.model.train()
    with rec.step(step) as s:
        ctx = tr.context(step)
        terms = tr.step_terms(ctx)
        for t in terms:
            s.term(t.name, logits=t.logits, losses=t.per_sample())
        if probe is not None:
            probe(terms)
        tr.optimizer.zero_grad()
        total_loss(terms).backward()
        tr.optimizer.step()
    return s, ctx, terms


def logit_grads(terms: list[LossTerm]) -> dict[str, torch.Tensor]:
    """G = ∂L_t/∂z_t of every term from autograd (what the recorder reads), graph kept."""
    return {t.name: torch.autograd.grad(t.loss(), t.logits, retain_graph=True)[0] for t in terms}


def reached(model: torch.nn.Module, loss: torch.Tensor) -> set[str]:
    """The parameters a loss's graph reaches."""
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    grads = torch.autograd.grad(loss, list(named.values()), retain_graph=True, allow_unused=True)
    return {n for n, g in zip(named, grads, strict=True) if g is not None}


# --- the memory bank ---------------------------------------------------------------------------------


def candidates(labels: torch.Tensor, dim: int = 4) -> Drawn:
    n = len(labels)
    return Drawn(torch.randn(n, dim), labels, torch.arange(n), labels.clone())


def test_entry_probability_rules() -> None:
    bank = BalancedBank(capacity=12, dim=4, num_classes=3, beta=3.0)
    assert torch.equal(bank.entry_prob(), torch.ones(3))  # empty bank: everything enters
    gen = torch.Generator().manual_seed(0)
    bank.enqueue(candidates(torch.tensor([0, 0, 1])), gen)
    p = bank.entry_prob()  # class 2 absent: it alone can enter
    assert p[2] == 1 and p[0] < 1e-6 and p[1] < 1e-6
    bank.enqueue(candidates(torch.tensor([2])), gen)
    counts = bank.counts().double()
    torch.testing.assert_close(bank.entry_prob().double(), (counts.min() / counts) ** 3, rtol=1e-6, atol=0)


def test_bank_stays_class_balanced_under_a_skewed_stream() -> None:
    gen = torch.Generator().manual_seed(1)
    share = torch.tensor([0.70, 0.20, 0.07, 0.03])
    bank = BalancedBank(capacity=40, dim=4, num_classes=4, beta=3.0)
    seen, held = torch.zeros(4), torch.zeros(4)
    for i in range(300):
        labels = torch.multinomial(share, 16, replacement=True, generator=gen)
        seen += torch.bincount(labels, minlength=4)
        bank.enqueue(candidates(labels), gen)
        if i >= 100:
            held += bank.counts()
    assert bank.filled == 40
    assert seen[0] / seen[3] > 15  # the stream is skewed ...
    held_share = held / held.sum()
    assert held_share.max() / held_share.min() < 2, held_share  # ... the bank is close to balanced


def test_dequeue_removes_the_common_class_first() -> None:
    bank = BalancedBank(capacity=10, dim=4, num_classes=4, beta=3.0)
    gen = torch.Generator().manual_seed(2)
    bank.label[:] = torch.tensor([0] * 7 + [1, 2, 3])
    before = bank.counts()
    admitted = bank.enqueue(candidates(torch.tensor([1, 1, 1])), gen)  # class 1 ties the minimum: p_in = 1
    after = bank.counts()
    assert admitted >= 1
    assert after[1] == before[1] + admitted and after[0] == before[0] - admitted
    assert after[2] == before[2] and after[3] == before[3]


def test_reversed_sampling_favours_classes_rare_in_the_unlabeled_estimate() -> None:
    bank = BalancedBank(capacity=30, dim=4, num_classes=3, beta=3.0)
    bank.label[:] = torch.arange(3).repeat(10)
    estimate = torch.tensor([100.0, 10.0, 1.0])
    gamma = 0.75
    pi = estimate**-gamma / (estimate**-gamma).sum()
    gen = torch.Generator().manual_seed(3)
    labels = torch.cat([bank.draw(30, pi, gen).label for _ in range(600)])
    share = torch.bincount(labels, minlength=3).double() / len(labels)
    torch.testing.assert_close(share, pi.double(), atol=0.015, rtol=0)
    assert len(bank.draw(64, pi, torch.Generator()).label) == 30  # capped at the fill count


def test_count_estimate_is_a_running_mean_and_resets() -> None:
    est = CountEstimate(3)
    assert torch.equal(relative_weights(est.value(), 1.5), torch.ones(3))  # no data: weights 1
    est.update(torch.tensor([4, 2, 0]))
    est.update(torch.tensor([2, 2, 2]))
    torch.testing.assert_close(est.value(), torch.tensor([3.0, 2.0, 1.0], dtype=torch.double))
    est.reset()
    assert est.steps == 0 and not est.value().any()


# --- BMB terms ---------------------------------------------------------------------------------------


@pytest.fixture
def bmb_step(tmp_path: Path):  # noqa: ANN201
    tr = make_trainer(
        tmp_path, "digits-bmb", "methods.bmb.warmup=0.1", "methods.bmb.tau=0.138", "ssl.tau=0.138"
    )
    bmb = tr.methods[0]
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(10).repeat(5)
    bmb.bank.enqueue(Drawn(torch.randn(50, tr.model.feat_dim), labels, labels, labels), gen)
    bmb.estimate.update(torch.tensor([9, 7, 5, 4, 3, 3, 2, 1, 1, 1]))
    ctx = tr.context(10)
    return tr, bmb, ctx, tr.step_terms(ctx)


def test_bmb_terms_and_weights_through_the_recorder(bmb_step) -> None:  # noqa: ANN001
    tr, bmb, ctx, terms = bmb_step
    assert ctx.phase == "main" and tr.context(5).phase == "warmup"
    names = [t.name for t in terms]
    assert names == ["sup", "unsup", "sup_aux", "unsup_aux", "mem"]
    assert len(names) == 2 + bmb.extra_terms  # what the recorder's row estimate counts
    G = logit_grads(terms)
    t = {term.name: term for term in terms}
    counts = tr.info.lb_counts.double()
    y = t["sup"].source_class
    w = ((counts.min() / counts) ** 1.5)[y].float()
    torch.testing.assert_close(G["sup_aux"], expected_G(t["sup_aux"], w, F.one_hot(y, 10).float()))
    q_a = torch.softmax(ctx.outputs["weak"]["aux_logits"], -1)
    conf, pseudo = q_a.max(-1)
    est = torch.tensor([9, 7, 5, 4, 3, 3, 2, 1, 1, 1]).double()
    v = ((est.min() / est) ** 1.5)[pseudo].float() * (conf >= 0.138).float()
    assert 0 < (conf >= 0.138).sum() < len(conf)  # the mask is exercised both ways
    torch.testing.assert_close(G["unsup_aux"], expected_G(t["unsup_aux"], v.repeat(2), q_a.repeat(2, 1)))
    q_b = torch.softmax(ctx.outputs["weak"]["base_logits"], -1)
    m_b = (q_b.max(-1).values >= 0.138).float().repeat(2)
    target_b = F.one_hot(q_b.argmax(-1), 10).float().repeat(2, 1)
    torch.testing.assert_close(G["unsup"], expected_G(t["unsup"], m_b, target_b))
    assert t["unsup_aux"].norm == t["unsup"].norm == 2 * len(conf)
    mem = t["mem"]
    assert mem.norm == 32 and len(mem.source_class) == 32
    target = F.one_hot(mem.source_class, 10).float()
    torch.testing.assert_close(G["mem"], expected_G(mem, torch.full((32,), 0.25), target))


def test_bmb_memory_term_reaches_only_the_auxiliary_head(bmb_step) -> None:  # noqa: ANN001
    tr, bmb, ctx, terms = bmb_step
    mem = next(t for t in terms if t.name == "mem")
    assert reached(tr.model, mem.loss()) == {"heads.aux.weight", "heads.aux.bias"}


def test_bmb_memory_term_through_the_recorder(tmp_path: Path) -> None:
    """Recorded through the public Recorder, the memory term (a head on stored features, no
    forward row) pushes the observations by the head-only update: feat_o · dWᵀ + db."""
    tr = make_trainer(tmp_path, "digits-bmb", "methods.bmb.warmup=0.1", "methods.bmb.tau=0.138")
    labels = torch.arange(10).repeat(5)
    tr.methods[0].bank.enqueue(
        Drawn(torch.randn(50, tr.model.feat_dim), labels, labels, labels), torch.Generator()
    )
    x_obs = tr.aug.normalize(tr.data.x_test[:6])
    with torch.no_grad():
        tr.model.eval()
        feat = tr.model(x_obs)["feat"]
    head, grads = tr.model.heads.aux, []

    def head_grads(terms: list[LossTerm]) -> None:
        mem = next(t for t in terms if t.name == "mem")
        grads.extend(torch.autograd.grad(mem.loss(), [head.weight, head.bias], retain_graph=True))

    s, _, _ = recorded_step(tr, 10, head_grads)
    g_w, g_b = grads
    kg = {m["term"]: v for v, m in zip(*s.results["test"]["kg"], strict=True)}
    torch.testing.assert_close(kg["mem"], feat @ g_w.T + g_b, rtol=1e-4, atol=1e-6)
    assert {"sup", "unsup", "sup_aux", "unsup_aux", "mem", "bn_coupling"} == set(kg)


def test_bmb_warmup_trains_supervised_terms_only_and_predicts_from_the_aux_head(tmp_path: Path) -> None:
    tr = make_trainer(tmp_path, "digits-bmb", "methods.bmb.warmup=0.5")
    ctx = tr.context(3)
    assert ctx.phase == "warmup"
    assert [t.name for t in tr.step_terms(ctx)] == ["sup", "sup_aux"]
    out = tr.model(tr.aug.normalize(tr.data.x_test[:4]))
    assert torch.equal(out["logits"], out["aux_logits"]) and not torch.equal(
        out["logits"], out["base_logits"]
    )
    assert any(k.startswith("heads.aux.") for k in tr.ema_model.state_dict())


def test_bmb_after_step_fills_the_bank_and_updates_the_estimate(tmp_path: Path) -> None:
    tr = make_trainer(tmp_path, "digits-bmb", "methods.bmb.tau=0.0", "methods.bmb.warmup=0.0")
    bmb = tr.methods[0]
    ctx, terms = tr.train_step()
    q = torch.softmax(ctx.outputs["weak"]["aux_logits"], -1)
    expected = torch.bincount(q.argmax(-1), minlength=10).double()
    torch.testing.assert_close(bmb.estimate.value(), expected)
    assert bmb.bank.filled > 0
    strong_labels = ctx.outputs["strong"]["aux_logits"].argmax(-1)
    stored = bmb.bank.label[bmb.bank.label >= 0]
    assert set(stored.tolist()) <= set(strong_labels.tolist())


def batch(index: torch.Tensor) -> Batch:
    return Batch(index, torch.ones(len(index)), torch.zeros(len(index), dtype=torch.long))


# --- FlexMatch ---------------------------------------------------------------------------------------


def test_flexmatch_learning_status_with_and_without_warmup() -> None:
    selected = torch.tensor([0, 0, 0, 1] + [UNUSED] * 6)
    torch.testing.assert_close(learning_status(selected, 3, warmup=True), torch.tensor([0.5, 1 / 6, 0.0]))
    torch.testing.assert_close(learning_status(selected, 3, warmup=False), torch.tensor([1.0, 1 / 3, 0.0]))
    assert not learning_status(torch.full((5,), UNUSED), 3, warmup=True).any()


def test_flexmatch_thresholds_follow_the_learning_status(tmp_path: Path) -> None:
    tr = make_trainer(tmp_path, "digits-flexmatch")
    flex, n = tr.methods[0], len(tr.data.y_ulb)
    ctx = tr.context(1)
    probs = torch.full((8, 10), 0.01)
    probs[:, 0] = 0.91  # confident class-0 predictions, below tau = 0.95 ...
    assert flex.adjust_mask(ctx, probs, torch.zeros(8)).all()  # ... still kept: T = 0 at the start
    # class 0 becomes confident on many samples: its threshold rises, the others stay at 0
    sharp = torch.full((8, 10), 0.0)
    sharp[:, 0] = 1.0
    for start in range(0, 40, 8):
        ctx.probs, ctx.ulb = sharp, batch(torch.arange(start, start + 8))
        flex.after_step(ctx, [])
    beta0 = 40 / max(40, n - 40)
    t0 = 0.95 * beta0 / (2 - beta0)
    torch.testing.assert_close(flex.thresholds()[0], torch.tensor(t0))
    assert not flex.thresholds()[1:].any()
    mask = flex.adjust_mask(ctx, probs, torch.zeros(8))
    assert bool(mask.all()) == (t0 <= 0.91)
    # a later confident prediction overwrites the sample's class
    sharp2 = torch.zeros(8, 10)
    sharp2[:, 3] = 1.0
    ctx.probs, ctx.ulb = sharp2, batch(torch.arange(8))
    flex.after_step(ctx, [])
    assert (flex.selected[:8] == 3).all() and int((flex.selected == 0).sum()) == 32


def test_flexmatch_composes_with_cdmad_adjusted_probabilities(tmp_path: Path) -> None:
    tr = make_trainer(tmp_path, "digits-flexmatch-cdmad", "methods.cdmad.start_step=0")
    flex = tr.methods[0]
    flex.status = torch.linspace(0, 1, 10)
    u_w = tr.aug.weak(tr.data.x_ulb[:24], tr.gen_aug)
    ctx = tr.context(10)
    _, pseudo, mask = pseudo_targets(tr, ctx, u_w)
    z = ctx.outputs["weak"]["logits"]
    b = ctx.baseline_logits()
    probs = torch.softmax(z - b, -1)
    torch.testing.assert_close(ctx.probs, probs)
    conf = probs.max(-1).values
    expected = (conf >= flex.thresholds()[probs.argmax(-1)]).float()
    assert torch.equal(mask, expected) and torch.equal(pseudo, probs.argmax(-1))


# --- FreeMatch ---------------------------------------------------------------------------------------


def test_freematch_thresholds_follow_their_ema(tmp_path: Path) -> None:
    tr = make_trainer(tmp_path, "digits-freematch", "methods.freematch.momentum=0.9")
    free = tr.methods[0]
    probs = torch.softmax(torch.randn(16, 10, generator=torch.Generator().manual_seed(0)) * 3, -1)
    conf, pseudo = probs.max(-1)
    ctx = tr.context(1)
    for k in range(1, 4):
        mask = free.adjust_mask(ctx, probs, torch.zeros(16))
        # constant input: the EMA moves from 1/C towards its target geometrically
        tau_k = conf.mean() + (0.1 - conf.mean()) * 0.9**k
        torch.testing.assert_close(free.global_threshold.float(), tau_k.float())
        p_k = probs.mean(0) + (0.1 - probs.mean(0)) * 0.9**k
        torch.testing.assert_close(free.p_model.float(), p_k.float())
        hist = torch.bincount(pseudo, minlength=10).float() / 16
        torch.testing.assert_close(free.label_hist.float(), hist + (0.1 - hist) * 0.9**k)
        local = tau_k * p_k / p_k.max()
        torch.testing.assert_close(free.local_thresholds(), local.float())
        assert torch.equal(mask, (conf >= local[pseudo]).float())  # masked with the updated state


def test_freematch_fairness_term_has_the_batch_value_and_gradient(tmp_path: Path) -> None:
    tr = make_trainer(tmp_path, "digits-freematch", "ssl.tau=0.0")
    free = tr.methods[0]
    free.p_model = torch.softmax(torch.arange(10.0, dtype=torch.double) / 5, 0)
    free.label_hist = torch.softmax(-torch.arange(10.0, dtype=torch.double) / 7, 0)
    free.global_threshold = torch.tensor(0.0, dtype=torch.double)  # every sample kept
    ctx = tr.context(1)
    terms = tr.step_terms(ctx)
    assert [t.name for t in terms] == ["sup", "unsup", "fair"]
    assert len(terms) == 2 + free.extra_terms  # what the recorder's row estimate counts
    unsup, fair = terms[1], terms[2]
    # the batch form, straight from the definition
    z = unsup.logits
    p = torch.softmax(z, -1)
    h_bar = torch.bincount(p.argmax(-1).detach(), minlength=10).to(p) / len(p)
    direct = 0.001 * fairness(p.mean(0), h_bar, free.p_model.to(p), free.label_hist.to(p))
    torch.testing.assert_close(fair.loss(), direct)
    (g_direct,) = torch.autograd.grad(direct, z, retain_graph=True)
    torch.testing.assert_close(logit_grads(terms)["fair"], g_direct)


# --- alternate sampling ------------------------------------------------------------------------------


def test_phase_plan_keeps_the_ratios_and_every_phase() -> None:
    cfg = AlternateConfig(name="alternate")
    plan = phase_plan(cfg, 1000, n_lb=100, n_ulb=300, lb_batch=10, ulb_batch=30)
    assert [p.name for p in plan][:4] == ["init", "init_classifier", "loop1_semi", "loop1_classifier"]
    assert len(plan) == 12 and plan[-1].end == 1000
    ends = [0] + [p.end for p in plan]
    lengths = [b - a for a, b in zip(ends, ends[1:], strict=False)]
    assert min(lengths) >= 1
    weights = [40 * 10, 5 * 10] + [8 * 10, 5 * 10] * 5  # epochs x steps per epoch (100/10, 400/40)
    for length, w in zip(lengths, weights, strict=True):
        assert abs(length - 1000 * w / sum(weights)) <= 1.5
    tiny = phase_plan(cfg, 12, n_lb=100, n_ulb=300)
    assert [p.end for p in tiny] == list(range(1, 13))
    with pytest.raises(ValueError, match="train.steps=11"):
        phase_plan(cfg, 11, n_lb=100, n_ulb=300)


def test_alternate_classifier_phase_trains_only_the_balanced_head(tmp_path: Path) -> None:
    tr = make_trainer(tmp_path, "digits-alternate", "train.steps=60")
    alt = tr.methods[0]
    step = next(p for p in alt.plan if p.name == "init_classifier").end
    tr.state.step = step - 1
    body = {k: v.clone() for k, v in tr.model.state_dict().items() if not k.startswith("heads.")}
    ctx, terms = tr.train_step()
    assert ctx.phase == "init_classifier" and [t.name for t in terms] == ["sup_balanced"]
    assert tr.streams["labeled"].balanced
    after = tr.model.state_dict()
    for k, v in body.items():  # encoder, base head and BatchNorm statistics untouched
        assert torch.equal(after[k], v), k
    names = reached(tr.model, total_loss(tr.step_terms(tr.context(step))))
    assert names == {"heads.balanced.weight", "heads.balanced.bias"}


def test_alternate_semi_phase_labels_and_temporal_targets(tmp_path: Path) -> None:
    tr = make_trainer(tmp_path, "digits-alternate", "train.steps=60")
    alt = tr.methods[0]
    semi = next(p for p in alt.plan if p.kind == SEMI)
    ctx = tr.context(semi.end)
    assert ctx.phase == "loop1_semi"
    with torch.no_grad():
        tr.model.eval()
        out = tr.model(tr.aug.normalize(tr.data.x_ulb))
        out_lb = tr.model(tr.aug.normalize(tr.data.x_lb))
    tr.model.train()
    terms = tr.step_terms(ctx)
    assert torch.equal(alt.pseudo, out["balanced_logits"].argmax(-1))  # stage 1: labels from g
    torch.testing.assert_close(alt.previous[: len(tr.data.y_lb)], torch.softmax(out_lb["base_logits"], -1))
    t = {term.name: term for term in terms}
    assert list(t) == ["sup", "pseudo", "temporal_lb", "temporal_ulb"]
    assert len(terms) == 2 + alt.extra_terms  # the most terms of any phase: the row estimate's count
    n = 16 + 32
    assert all(term.norm == n for term in terms)
    ulb = ctx.ulb.index
    assert torch.equal(t["pseudo"].source_class, alt.pseudo[ulb])
    torch.testing.assert_close(t["temporal_ulb"].targets, alt.previous[len(tr.data.y_lb) + ulb])
    G = logit_grads(terms)
    torch.testing.assert_close(
        G["temporal_ulb"], expected_G(t["temporal_ulb"], torch.ones(32), t["temporal_ulb"].targets)
    )
    torch.testing.assert_close(
        G["pseudo"], expected_G(t["pseudo"], torch.ones(32), F.one_hot(alt.pseudo[ulb], 10).float())
    )
    # gradient to f and g' only: g (the balanced head) is not reached in stage 2
    names = reached(tr.model, total_loss(terms))
    assert "heads.balanced.weight" not in names and "base.head.weight" in names
    loss = total_loss(terms)
    loss.backward()
    tr.optimizer.step()
    alt.after_step(ctx, terms)  # the visit's prediction becomes the next target
    p_now = torch.softmax(ctx.outputs["unlabeled"]["base_logits"].detach(), -1)
    torch.testing.assert_close(alt.previous[len(tr.data.y_lb) + ulb], p_now)


# --- state ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", ["digits-bmb", "digits-alternate", "digits-flexmatch", "digits-freematch"])
def test_method_state_round_trips(tmp_path: Path, preset: str) -> None:
    tr = make_trainer(tmp_path / "a", preset, "methods.bmb.tau=0.0" if "bmb" in preset else "train.seed=0")
    for _ in range(3):
        tr.train_step()
    other = make_trainer(tmp_path / "b", preset, "methods.bmb.tau=0.0" if "bmb" in preset else "train.seed=0")
    state = tr.methods[0].state_dict()
    other.methods[0].load_state_dict(state)
    assert state
    assert_same(state, other.methods[0].state_dict())


def assert_same(a: object, b: object, where: str = "state") -> None:
    """Equal nested state: dicts key by key, tensors element by element (and dtype), the rest by ==."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    else:
        assert a == b, where


def test_flexmatch_consistency_weights_through_the_recorder(tmp_path: Path) -> None:
    tr = make_trainer(tmp_path, "digits-flexmatch")
    flex = tr.methods[0]
    first = tr.context(1)
    tr.step_terms(first)  # a first batch shows the untrained model's confidence level
    level = float(first.probs.max(-1).values.median())
    m = level / 0.95  # a status whose threshold T = 0.95 M(beta) sits at that level
    flex.status = torch.full((10,), 2 * m / (1 + m))
    ctx = tr.context(2)
    terms = tr.step_terms(ctx)
    conf, pseudo = ctx.probs.max(-1)
    mask = (conf >= (0.95 * flex.status / (2 - flex.status))[pseudo]).float()
    assert 0 < mask.sum() < len(mask)
    G = logit_grads(terms)
    unsup = terms[1]
    target = F.one_hot(pseudo, 10).float().repeat(2, 1)
    torch.testing.assert_close(G["unsup"], expected_G(unsup, mask.repeat(2), target))


@pytest.mark.parametrize(
    "preset", ["digits-bmb", "digits-alternate", "digits-flexmatch-dytrim", "digits-freematch-cdmad"]
)
def test_checkpoint_resume_continues_exactly(tmp_path: Path, preset: str) -> None:
    from lddyn.train.callbacks.checkpoint import load_trainer_state, trainer_state

    extra = ("train.steps=14", "methods.bmb.tau=0.2") if "bmb" in preset else ("train.steps=14",)
    if "cdmad" in preset or "dytrim" in preset:
        extra += ("methods.cdmad.start_step=3",)
    straight = make_trainer(tmp_path / "a", preset, *extra)
    for _ in range(14):
        straight.train_step()
    first = make_trainer(tmp_path / "b", preset, *extra)
    for _ in range(7):
        first.train_step()
    state = trainer_state(first)
    resumed = make_trainer(tmp_path / "c", preset, *extra)
    load_trainer_state(resumed, state)
    for _ in range(7):
        resumed.train_step()
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert_same(trainer_state(straight)["methods"], trainer_state(resumed)["methods"])


def test_at_most_one_method_builds_the_step(tmp_path: Path) -> None:
    from lddyn.methods.base import Method

    class OtherBase(Method):
        name = "other_base"

        def build_terms(self, trainer: Trainer, ctx: object) -> list[LossTerm]:
            return []

    tr = make_trainer(tmp_path, "digits-alternate")
    assert tr.term_builder is tr.methods[0]
    tr.methods.append(OtherBase(tr.methods[0].cfg, tr.info))
    with pytest.raises(ValueError, match="alternate.*other_base"):
        tr._term_builder()
