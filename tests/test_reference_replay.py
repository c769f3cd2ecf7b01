"""The `reference` preset, step for step, against the released DyTrim/CDMAD iteration re-written here.

lddyn trains the `reference` preset (reduced in size by overrides, in float64) on synthetic CIFAR-10
files in the original pickle format, through its own config loader and run path. A callback takes
every model input of each step and lddyn's random draws (which samples form a batch, which
well-learned samples a prune keeps, which labeled samples the prior pass counts), and an
independent implementation of the released code replays the step from the same initial state:
its DataLoader and DyTrimSampler mechanics (drop_last batches, reset when a pass is exhausted,
loaders re-created every epoch, 4 workers x 2 batches read ahead), DyTrim's prune rules and scores,
the WRN-28-2 forward of its models/wrn.py, SemiLoss with its +1e-8, CDMAD's debiasing, Adam and
WeightEMA with its decoupled decay. Every parameter, buffer, EMA entry, Adam moment, DyTrim score,
the labeled bias vector and every pool must agree to float64 rounding after every step.

Only random draws are taken from lddyn, and each is checked to be a draw the released rule allows.
The released order of samples within a pass comes from numpy's global RNG and its ties in the
labeled ranking from numpy's quicksort; neither is reproducible, so pools are compared as sets.
The 500-iteration epoch is shortened to EPOCH steps by overrides; the focused tests at the end check
the loader restarts and the annealing boundary at the published 500 x 500 schedule.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from lddyn.config import load_config
from lddyn.data.samplers import PassRules, RandomPasses
from lddyn.data.sets import SSLData
from lddyn.methods import RunInfo
from lddyn.methods.dytrim import DyTrim, DyTrimConfig
from lddyn.train.events import Callback
from lddyn.train.run import start_run
from tests.test_cifar_source import write_cifar10

EPOCH = 3  # iterations per epoch (the released --val-iteration 500)
STEPS = 9  # 3 epochs (the released --epochs 500)
DEBIAS_EPOCH = 0  # --debiasstart: debiasing for epoch index > this
B, MU, DELTA, RATIO, TAU, AHEAD = 5, 2, 0.75, 0.3, 0.0, 8
LR, BETAS, ADAM_EPS, EMA, WD = 0.0015, (0.9, 0.999), 1e-8, 0.999, 0.04
N_MAX, N_MAX_U, GAMMA = 10, 5, 5
OVERRIDES = [
    f"data.num_max={N_MAX}",
    f"data.num_max_u={N_MAX_U}",
    f"data.imb_ratio={GAMMA}",
    f"data.imb_ratio_u={GAMMA}",
    f"ssl.batch_size={B}",
    f"ssl.loader_restart={EPOCH}",
    f"train.steps={STEPS}",
    "train.dtype=float64",
    "train.threads=1",
    f"train.eval_every={STEPS}",
    f"methods.cdmad.start_step={(DEBIAS_EPOCH + 1) * EPOCH}",
    f"methods.dytrim.prior_start_step={(DEBIAS_EPOCH + 1) * EPOCH}",
    f"methods.dytrim.epoch_steps={EPOCH}",
    f"methods.dytrim.delta={DELTA}",
]
TOL = {"rtol": 1e-10, "atol": 1e-13}
WITH_GRAD = [False, False, True, True, True]  # baseline image, weak views, labeled, strong 1, strong 2


# --- the released data split (train.py make_imb_data, fix_cifar10.train_split) ------------------------


def make_imb_data(max_num: int, gamma: float, k: int = 10) -> list[int]:
    mu = np.power(1 / gamma, 1 / (k - 1))
    return [int(max_num / gamma) if i == k - 1 else int(max_num * np.power(mu, i)) for i in range(k)]


def train_split(labels: np.ndarray, n_l: list[int], n_u: list[int]) -> tuple[list[int], list[int]]:
    lab, unl = [], []
    for c in range(10):
        idx = np.where(labels == c)[0]
        lab += idx[: n_l[c]].tolist()
        unl += idx[: n_l[c] + n_u[c]].tolist()
    return lab, unl


@dataclass
class Pool:
    """The samples of one pass, and the loss weight of every sample of the set."""

    members: set[int]
    weights: Tensor  # (n,) float64, per set index


# --- the released loaders: DyTrimSampler, BatchSampler(drop_last), a prefetching worker iterator --------


class ReleasedSampler:
    """DyTrimSampler: ``reset`` at construction and whenever the current pass is exhausted.

    Items are pool ids: which pool a sample was drawn from is what the replay checks (lddyn's draw
    supplies which samples)."""

    def __init__(self, reset: Callable[[], int], size: Callable[[int], int]) -> None:
        self.reset_fn, self.size = reset, size
        self.reset()

    def reset(self) -> None:
        self.seq = self.reset_fn()
        self.fresh = True  # drawn, not yet iterated
        self.ite: Iterator[int] = iter([])

    def __iter__(self) -> ReleasedSampler:
        self.fresh = False
        self.ite = iter([self.seq] * self.size(self.seq))
        return self

    def __next__(self) -> int:
        try:
            return next(self.ite)
        except StopIteration:
            self.reset()
            raise


def batch_sampler(sampler: ReleasedSampler, size: int) -> Iterator[list[int]]:
    it = iter(sampler)
    while True:
        try:
            yield [next(it) for _ in range(size)]
        except StopIteration:
            return


class LoaderIterator:
    """iter(DataLoader): ``ahead`` index batches are requested at creation, one more per batch served."""

    def __init__(self, sampler: ReleasedSampler, size: int, ahead: int) -> None:
        self.batches, self.ahead, self.queue = batch_sampler(sampler, size), ahead, deque()
        for _ in range(ahead):
            self._put()

    def _put(self) -> None:
        with contextlib.suppress(StopIteration):  # a finished generator stays finished: no second reset
            self.queue.append(next(self.batches))

    def __next__(self) -> int:
        if not self.ahead:
            return next(self.batches)[0]
        if not self.queue:
            raise StopIteration
        pool = self.queue.popleft()[0]
        self._put()
        return pool


@dataclass
class ReleasedLoader:
    """One training loader of train.py: re-created every epoch, and on exhaustion inside an epoch."""

    size: int
    ahead: int
    pools: list[Pool] = field(default_factory=list)  # the pool of each sampler reset, by id
    sampler: ReleasedSampler | None = None
    iterators: int = 0
    it: LoaderIterator | None = None

    def attach(self, reset: Callable[[], Pool]) -> None:
        def next_pool() -> int:
            self.pools.append(reset())
            return len(self.pools) - 1

        self.sampler = ReleasedSampler(next_pool, self.pool_size)

    def pool_size(self, pool: int) -> int:
        return len(self.pools[pool].members)

    def new_iterator(self) -> None:
        self.it, self.iterators = LoaderIterator(self.sampler, self.size, self.ahead), self.iterators + 1

    def next(self) -> int:
        try:
            return next(self.it)
        except StopIteration:
            self.new_iterator()
            return next(self.it)


# --- the released model, loss and optimisers -----------------------------------------------------------


def released_wrn(p: dict[str, Tensor], bn: Callable[[Tensor, str], Tensor], x: Tensor) -> Tensor:
    """models/wrn.py WRN(2): stem; 3 units of 4 residual blocks (widths 32/64/128, strides 1/2/2), the
    first pre-activating the input of both branches; BN-LReLU(0.1)-pool-linear head. Keys are lddyn's
    state_dict names for the same tensors (stem = init_conv, blocks.i = unit(i//4+1)[i%4], head = output)."""

    def lrelu(t: Tensor) -> Tensor:
        return F.leaky_relu(t, 0.1)

    h = F.conv2d(x, p["stem.weight"], padding=1)
    for i in range(12):
        stride, name = (2 if i in (4, 8) else 1), f"blocks.{i}"
        if i == 0:  # activate_before_residual: x itself is replaced by BN-LReLU(x)
            h = lrelu(bn(h, f"{name}.bn1"))
            branch = F.conv2d(h, p[f"{name}.conv1.weight"], stride=stride, padding=1)
        else:
            branch = F.conv2d(
                lrelu(bn(h, f"{name}.bn1")), p[f"{name}.conv1.weight"], stride=stride, padding=1
            )
        branch = F.conv2d(lrelu(bn(branch, f"{name}.bn2")), p[f"{name}.conv2.weight"], padding=1)
        short = p.get(f"{name}.shortcut.weight")
        identity = h if short is None else F.conv2d(h, short, stride=stride)
        h = identity + branch
    f = lrelu(bn(h, "bn")).mean(dim=(2, 3))
    return F.linear(f, p["head.weight"], p["head.bias"])


class ReleasedNet:
    """The student: parameters, BN buffers (running statistics, step counters) and Adam's moments."""

    def __init__(self, state: dict[str, Tensor], param_names: list[str]) -> None:
        self.state = {k: v.detach().clone() for k, v in state.items()}
        self.params = param_names
        self.adam = {
            k: (torch.zeros_like(self.state[k]), torch.zeros_like(self.state[k])) for k in param_names
        }
        self.t = 0

    def forward(self, x: Tensor) -> Tensor:  # train mode: batch statistics, running stats updated
        def bn(h: Tensor, name: str) -> Tensor:
            s = self.state
            s[f"{name}.num_batches_tracked"] += 1
            mean, var = s[f"{name}.running_mean"], s[f"{name}.running_var"]
            return F.batch_norm(h, mean, var, s[f"{name}.weight"], s[f"{name}.bias"], True, 0.1, 1e-5)

        return released_wrn(self.state, bn, x)

    def adam_step(self, grads: dict[str, Tensor]) -> None:
        """torch.optim.Adam(params, lr): bias-corrected moments, eps added to the corrected root."""
        self.t += 1
        b1, b2 = BETAS
        for k, g in grads.items():
            m, v = self.adam[k]
            m.mul_(b1).add_((1 - b1) * g)
            v.mul_(b2).add_((1 - b2) * g * g)
            denom = v.sqrt() / math.sqrt(1 - b2**self.t) + ADAM_EPS
            self.state[k].sub_(LR / (1 - b1**self.t) * m / denom)


def semi_loss(lx: Tensor, tx: Tensor, lu: Tensor, tu: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """train.py SemiLoss: per-sample -sum t log(softmax + 1e-8), the unlabeled one times the mask."""
    loss_x = -(torch.sum(torch.log(F.softmax(lx, dim=1) + 1e-8) * tx, dim=1))
    loss_u = -(torch.sum(torch.log(F.softmax(lu, dim=1) + 1e-8) * tu, dim=1) * mask)
    return loss_x, loss_u


def weight_ema(student: dict[str, Tensor], ema: dict[str, Tensor]) -> None:
    """WeightEMA.step over state_dict order. Its ``.float()`` is the tensor itself for float32 entries (so
    float64 here keeps that in-place meaning) and a copy for integer ones, which stay as they were."""
    for k, param in student.items():
        if not param.is_floating_point():
            continue
        ema[k].mul_(EMA)
        ema[k].add_(param * (1.0 - EMA))
        param.mul_(1 - WD * LR)


# --- the released DyTrim datasets' rules ------------------------------------------------------------------


@dataclass
class ReleasedDyTrim:
    """The DyTrim dataset wrapper's state and prune rules; pools drawn by lddyn are checked, then used."""

    labels_l: Tensor
    n_u: int
    epochs: int
    scores_l: Tensor = field(init=False)
    scores_u: Tensor = field(init=False)
    weights_u: Tensor = field(init=False)
    bias: Tensor = field(init=False)
    epoch: int = 0

    def __post_init__(self) -> None:
        self.scores_l = torch.ones(len(self.labels_l), dtype=torch.float64)
        self.scores_u = torch.ones(self.n_u, dtype=torch.float64)
        self.weights_u = torch.ones(self.n_u, dtype=torch.float64)
        self.bias = torch.zeros(10, dtype=torch.float64)  # biaseddegree = np.zeros(num_class)

    def annealing(self) -> tuple[bool, bool]:
        stop = self.epochs * DELTA
        return self.epoch > stop, self.epoch <= stop + 1

    def check_labeled(self, drawn: Pool | None) -> Pool:
        n = len(self.labels_l)
        full, reset = self.annealing()
        if full:
            expected = set(range(n))
        else:
            assert drawn is not None, "lddyn drew no labeled pool where the released sampler resets"
            expected = set()
            for c in range(10):
                idx = torch.nonzero(self.labels_l == c).flatten()
                keep = int((1 - float(self.bias[c])) * len(idx))  # numpy 1.23 promotes to float64
                kept = [i for i in idx.tolist() if i in drawn.members]
                assert len(kept) == keep, f"class {c}: {len(kept)} kept, the rule keeps {keep}"
                dropped = sorted(set(idx.tolist()) - set(kept))
                if kept and dropped:
                    assert self.scores_l[kept].min() >= self.scores_l[dropped].max(), (
                        f"class {c} keeps low losses"
                    )
                expected |= set(kept)
        assert drawn is not None and drawn.members == expected, "labeled pool"
        assert (drawn.weights == 1).all(), "labeled weights"
        return drawn

    def check_unlabeled(self, drawn: Pool | None) -> Pool:
        assert drawn is not None, "lddyn drew no unlabeled pool where the released sampler resets"
        full, reset = self.annealing()
        if full:
            if reset:
                self.weights_u = torch.ones(self.n_u, dtype=torch.float64)
            assert drawn.members == set(range(self.n_u)), "annealed unlabeled pool"
        else:
            scores = self.scores_u.numpy()
            learned = set(np.where(scores < scores.mean())[0].tolist())
            chosen = drawn.members & learned
            assert drawn.members - learned == set(range(self.n_u)) - learned, "not-learned samples all stay"
            assert len(chosen) == int(RATIO * len(learned)), "well-learned samples kept"
            self.weights_u = torch.ones(self.n_u, dtype=torch.float64)
            self.weights_u[sorted(chosen)] = 1 / RATIO
        torch.testing.assert_close(drawn.weights, self.weights_u, rtol=0, atol=0, msg="unlabeled weights")
        return drawn


# --- lddyn's side: the callback that takes the inputs and replays each step -------------------------------


def stream_pools(stream: RandomPasses) -> tuple[Pool, Pool | None]:
    current = Pool(set(stream.order.tolist()), stream.weight)
    pending = None if stream.pending is None else Pool(set(stream.pending[0].tolist()), stream.pending[1])
    return current, pending


class Replay(Callback):
    """Runs the released iteration next to lddyn's and compares the two after every step."""

    name = "replay"

    def __init__(self, root: Path) -> None:
        self.root, self.inputs, self.report = root, [], []

    def on_train_start(self, trainer) -> None:  # noqa: ANN001
        data, dy = trainer.data, next(m for m in trainer.methods if isinstance(m, DyTrim))
        labels = np.array(sum((read_labels(self.root, f"data_batch_{i}") for i in range(1, 6)), []))
        lab, unl = train_split(labels, make_imb_data(N_MAX, GAMMA), make_imb_data(N_MAX_U, GAMMA))
        assert data.lb_index.tolist() == lab and data.ulb_index.tolist() == unl  # index for index
        self.labels_l = torch.as_tensor(labels[lab])
        student = trainer.model.state_dict()
        assert all(torch.equal(v, trainer.ema_model.state_dict()[k]) for k, v in student.items())
        names = [k for k, _ in trainer.model.named_parameters()]
        self.net, self.ema = ReleasedNet(student, names), {k: v.clone() for k, v in student.items()}
        self.dytrim = ReleasedDyTrim(self.labels_l, len(unl), STEPS // EPOCH)
        self.py = self._compute_py(dy.prior_sample)
        torch.testing.assert_close(dy.frequencies, self.py, rtol=0, atol=0)
        torch.testing.assert_close(dy.prior, self.dytrim.bias, rtol=0, atol=0)  # zero before training
        self.pending: dict[str, Pool | None] = {}
        self.started = False  # resets before training (construction, compute_py's pass) see no lddyn draw
        self.loaders = {"labeled": ReleasedLoader(B, AHEAD), "unlabeled": ReleasedLoader(MU * B, AHEAD)}
        sizes = {"labeled": len(lab), "unlabeled": len(unl)}
        checks = {"labeled": self.dytrim.check_labeled, "unlabeled": self.dytrim.check_unlabeled}
        for which, loader in self.loaders.items():
            loader.attach(lambda w=which: checks[w](self._drawn(w, sizes[w])))
        for _ in self.loaders["labeled"].sampler:  # compute_py: one pass, whose end resets the sampler
            pass
        self.started = True
        trainer.model.register_forward_pre_hook(self._take_input)

    def _drawn(self, which: str, n: int) -> Pool | None:
        if not self.started:  # the rule is deterministic then: every sample, weight 1
            return Pool(set(range(n)), torch.ones(n, dtype=torch.float64))
        return self.pending.get(which)

    def _compute_py(self, counted: Tensor) -> Tensor:
        """compute_py: label frequencies over one drop_last pass of the labeled loader, float64."""
        n = len(self.labels_l)
        assert len(counted) == n - n % B and len(set(counted.tolist())) == len(counted)
        counts = np.bincount(self.labels_l[counted].numpy(), minlength=10)
        assert (counts > 0).all()  # the released dict of frequencies would lose a class otherwise
        return torch.from_numpy(counts / counts.sum())

    def _take_input(self, module, args) -> None:  # noqa: ANN001
        self.inputs.append((args[0].detach().clone(), module.training, torch.is_grad_enabled()))

    def on_step_end(self, trainer, ctx, terms) -> None:  # noqa: ANN001
        step = trainer.state.step
        self.pending = {k: stream_pools(s)[1] for k, s in trainer.streams.items()}
        if (step - 1) % EPOCH == 0:  # train(epoch): set_epoch, then iter() of both loaders
            self.dytrim.epoch = (step - 1) // EPOCH
            for loader in self.loaders.values():
                loader.new_iterator()
        drawn = {which: loader.next() for which, loader in self.loaders.items()}
        self._check_draws(trainer, ctx, drawn)
        weights = {w: self.loaders[w].pools[drawn[w]].weights for w in drawn}
        inputs, self.inputs = self.inputs, []
        released = self._released_step(step, inputs, ctx.lb.index, ctx.ulb.index, weights)
        with torch.no_grad():
            ours = [
                ctx.baseline_logits(),
                ctx.probs,
                ctx.mask,
                ctx.ulb.weight,
                terms[0].loss(),
                terms[1].loss(),
            ]
        self._compare(step, trainer, list(zip(released, ours, released.values(), strict=True)))

    def _check_draws(self, trainer, ctx, drawn: dict[str, int]) -> None:  # noqa: ANN001
        for which, batch in (("labeled", ctx.lb), ("unlabeled", ctx.ulb)):
            loader, stream = self.loaders[which], trainer.streams[which]
            pool = loader.pools[drawn[which]]
            current, pending = stream_pools(stream)
            assert current.members == pool.members, f"{which}: the current pass's pool"
            assert set(batch.index.tolist()) <= pool.members and len(set(batch.index.tolist())) == len(
                batch.index
            )
            assert stream.passes == loader.iterators, f"{which}: passes started"
            assert (pending is None) == (not loader.sampler.fresh), f"{which}: a pool drawn ahead"

    def _released_step(self, step: int, inputs: list, idx_l: Tensor, idx_u: Tensor, w: dict) -> dict:  # noqa: ANN001
        """train.py's iteration on lddyn's inputs, after its loaders produced the batch's pools; returns
        the step's intermediate quantities."""
        assert [x.shape[0] for x, _, _ in inputs] == [1, MU * B, B, MU * B, MU * B]
        assert all(train for _, train, _ in inputs) and [g for _, _, g in inputs] == WITH_GRAD
        black, u_w, x, u_s1, u_s2 = (t for t, _, _ in inputs)
        assert torch.equal(black, torch.zeros(1, 3, 32, 32, dtype=torch.float64))
        net, dy = self.net, self.dytrim
        with torch.no_grad():
            biased = net.forward(black)[0]
            out_u = net.forward(u_w)
            if (step - 1) // EPOCH > DEBIAS_EPOCH:
                out_u = out_u - biased
                dy.bias = F.softmax(biased, dim=0)
            else:
                dy.bias = self.py
            targets_u = F.softmax(out_u, dim=1)
        mask = targets_u.max(dim=1).values.ge(TAU).double().repeat(2)
        for k in net.params:
            net.state[k].requires_grad_(True)
        logits_x, logits_u = net.forward(x), torch.cat([net.forward(u_s1), net.forward(u_s2)])
        targets_x = F.one_hot(self.labels_l[idx_l], 10).double()
        loss_x, loss_u = semi_loss(logits_x, targets_x, logits_u, targets_u.repeat(2, 1), mask)
        dy.scores_l[idx_l] = loss_x.detach()
        dy.scores_u[idx_u] = (loss_u[: len(idx_u)] + loss_u[len(idx_u) :]).detach()
        w_l, w_u = w["labeled"][idx_l], w["unlabeled"][idx_u]
        mean_x, mean_u = torch.mean(loss_x * w_l), torch.mean(loss_u * torch.cat([w_u, w_u]))
        grads = torch.autograd.grad(mean_x + mean_u, [net.state[k] for k in net.params])
        with torch.no_grad():
            for k in net.params:
                net.state[k] = net.state[k].detach()
            net.adam_step(dict(zip(net.params, grads, strict=True)))
            weight_ema(net.state, self.ema)
        return {"baseline_logits": biased, "pseudo_targets": targets_u, "mask": mask[: len(idx_u)],
                "weights_u": w_u, "loss_x": mean_x.detach(), "loss_u": mean_u.detach()}  # fmt: skip

    def _compare(self, step: int, trainer, quantities: list) -> None:  # noqa: ANN001
        dy = next(m for m in trainer.methods if isinstance(m, DyTrim))
        student, ema = trainer.model.state_dict(), trainer.ema_model.state_dict()
        adam = {n: trainer.optimizer.state[p] for n, p in trainer.model.named_parameters()}
        groups = {
            "quantities": quantities,
            "student": [(k, student[k], v) for k, v in self.net.state.items()],
            "ema": [(k, ema[k], v) for k, v in self.ema.items()],
            "adam": [
                (f"{k}.{name}", adam[k][name], m)
                for k, mv in self.net.adam.items()
                for name, m in zip(("exp_avg", "exp_avg_sq"), mv, strict=True)
            ],
            "dytrim": [
                ("scores_lb", dy.scores_lb, self.dytrim.scores_l),
                ("scores_ulb", dy.scores_ulb, self.dytrim.scores_u),
                ("prior", dy.prior, self.dytrim.bias),
            ],
        }
        row: dict = {"step": step}
        for group, items in groups.items():
            bad = [
                f"{key}: {mismatch(ours, theirs)}" for key, ours, theirs in items if mismatch(ours, theirs)
            ]
            assert not bad, (
                f"step {step}, {group}: {len(bad)} of {len(items)} tensors differ, e.g. " + "; ".join(bad[:3])
            )
            row[group] = (len(items), max(scaled_diff(ours, theirs) for _, ours, theirs in items))
        self.report.append(row)


def mismatch(ours: Tensor, theirs: Tensor) -> str:
    """Empty when ``ours`` equals ``theirs`` to float64 rounding (same dtype), else what differs."""
    if ours.dtype != theirs.dtype:
        return f"dtype {ours.dtype}, released {theirs.dtype}"
    diff = (ours.double() - theirs.double()).abs()
    if (diff > TOL["atol"] + TOL["rtol"] * theirs.double().abs()).any():
        return f"max |difference| {float(diff.max()):.3g}"
    return ""


def scaled_diff(a: Tensor, b: Tensor) -> float:
    """max |a - b| relative to the largest entry of b."""
    a, b = a.double(), b.double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300)) if a.numel() else 0.0


def read_labels(root: Path, name: str) -> list[int]:
    import pickle

    with open(root / "cifar-10-batches-py" / name, "rb") as fh:
        return list(pickle.load(fh, encoding="bytes")[b"labels"])


def test_reference_replays_the_released_iteration(tmp_path: Path) -> None:
    write_cifar10(tmp_path / "data", per_class=12)
    replay = Replay(tmp_path / "data")
    cfg = load_config("reference", [f"data.root={tmp_path / 'data'}", *OVERRIDES])
    start_run(cfg, tmp_path / "run", extra=[replay], progress=False)
    assert len(replay.report) == STEPS
    groups = ("quantities", "student", "ema", "adam", "dytrim")
    print("\nstep  tensors compared (largest difference relative to the tensor's largest entry):")
    print("      step quantities | student | EMA | Adam moments | DyTrim scores, prior")
    for r in replay.report:
        cells = " | ".join(f"{r[g][0]:3d} ({r[g][1]:.1e})" for g in groups)
        print(f"{r['step']:4d}  {cells}")


# --- focused: the published 500 x 500 schedule, out of reach of a few replayed steps ---------------------

PUBLISHED = {"epoch": 500, "epochs": 500, "delta": 0.875, "ahead": 8}


def loader_schedule(
    batch: int, sizes: list[int], rules: PassRules | None, steps: int
) -> list[tuple[int, int, int]]:
    """Per training step (pools drawn so far, size of the batch's pool, passes started), from lddyn's
    stream with ``rules``, or from the released loader mechanics when ``rules`` is None."""
    out = []
    if rules is None:
        loader = ReleasedLoader(batch, PUBLISHED["ahead"])
        loader.attach(lambda: Pool(set(range(sizes[len(loader.pools)])), torch.ones(1)))
        for step in range(1, steps + 1):
            if (step - 1) % PUBLISHED["epoch"] == 0:
                loader.new_iterator()
            pool = loader.next()
            out.append((len(loader.pools), len(loader.pools[pool].members), loader.iterators))
        return out
    drawn = []

    def refresh(_: torch.Generator) -> tuple[Tensor, Tensor]:
        drawn.append(sizes[len(drawn)])
        return torch.arange(drawn[-1]), torch.ones(max(sizes), dtype=torch.float64)

    stream, gen = RandomPasses(max(sizes), refresh, rules), torch.Generator().manual_seed(0)
    for _ in range(steps):
        stream.next_batch(batch, gen)
        out.append((len(drawn), stream.pool_size, stream.passes))
    return out


@pytest.mark.parametrize(
    ("batch", "first", "later"),
    [(32, 3720, 2700), (64, 11163, 8000), (64, 33720, 33720)],
    ids=["cifar10-labeled", "cifar10-unlabeled", "cifar10-u1-unlabeled"],
)
def test_loader_restarts_and_read_ahead_at_the_published_schedule(batch: int, first: int, later: int) -> None:
    """Three epochs of the published loaders (500 iterations, 4 workers x 2 batches ahead) against
    RandomPasses with the reference preset's rules: when a new pool is drawn, which pool each batch
    comes from, when a pass starts. CIFAR-10-LT sizes: labeled 3720 then pruned pools of about 2700
    (116 and 85 batches of 32), unlabeled 11163 then about 8000, and 33720 for gamma_u = 1, whose
    526-batch passes never end inside an epoch, so its unlabeled set is never pruned."""
    cfg = load_config("reference")
    rules = PassRules(cfg.ssl.loader_restart, cfg.ssl.loader_lookahead)
    assert (rules.restart_every, rules.lookahead) == (PUBLISHED["epoch"], PUBLISHED["ahead"])
    sizes = [first] + [later + 7 * i * (later != first) for i in range(1, 60)]
    released = loader_schedule(batch, sizes, None, 3 * PUBLISHED["epoch"])
    assert loader_schedule(batch, sizes, rules, 3 * PUBLISHED["epoch"]) == released
    if first == later:  # gamma_u = 1: the pool drawn at construction is the only one
        assert released[-1][0] == 1 and loader_schedule(batch, sizes, PassRules(), 1500)[-1][0] > 1


def released_reset(epoch: int) -> tuple[bool, bool]:
    """DyTrimSampler.reset at the published schedule: (whole set, weights reset to 1)."""
    stop_prune = PUBLISHED["epochs"] * PUBLISHED["delta"]
    return epoch > stop_prune, epoch <= stop_prune + 1


def tiny_dytrim(cfg: DyTrimConfig, steps: int) -> DyTrim:
    y_l, y_u = torch.arange(30) % 10, torch.arange(40) % 10
    x = torch.zeros(len(y_u), 3, 4, 4)
    data = SSLData("tiny", x[:30], y_l, x, y_u, x[:10], y_u[:10], 10, (0.0,) * 3, (1.0,) * 3, y_l, y_u)
    return DyTrim(cfg, RunInfo(data, steps, torch.bincount(y_l), labeled_batch=4, unlabeled_batch=8))


def refreshed(dy: DyTrim, which: str, step: int) -> tuple[Tensor, Tensor]:
    """The pool and weights a stream draws at its first batch, taken during ``step``."""
    dy.progress = float(step - 1)  # steps completed when the batch of ``step`` is drawn
    stream = dy.stream(which)
    stream.next_batch(4, torch.Generator().manual_seed(step))
    return stream.order, stream.weight


def test_annealing_boundary_at_the_published_schedule() -> None:
    """The reference preset anneals at a pool refresh in epoch index > 500 * 0.875 (first step 219,001),
    resets the unlabeled weights only at refreshes up to epoch 438, and prunes until then."""
    dy_cfg = next(m for m in load_config("reference").methods if isinstance(m, DyTrimConfig))
    steps = PUBLISHED["epoch"] * PUBLISHED["epochs"]
    dy = tiny_dytrim(dy_cfg, steps)
    dy.scores_lb, dy.scores_ulb = torch.rand(30, dtype=torch.float64), torch.rand(40, dtype=torch.float64)
    dy.prior = torch.full((10,), 0.5, dtype=torch.float64)
    earlier = torch.where(torch.arange(40) % 3 == 0, 1 / 0.3, 1.0).double()  # weights of an earlier prune
    first_full = None
    for step in [*range(218_740, 219_010), 219_501, 220_001, 249_999]:
        full, reset = released_reset((step - 1) // PUBLISHED["epoch"])
        first_full = first_full or (step if full else None)
        dy.weight_ulb = earlier.clone()
        for which, n in (("labeled", 30), ("unlabeled", 40)):
            pool, weight = refreshed(dy, which, step)
            assert (len(pool) == n) == full, (which, step)
        if full:  # past the boundary the weights are reset once, then kept as they were
            assert torch.equal(weight, torch.ones(40, dtype=torch.float64) if reset else earlier), step
    assert first_full == 219_001
    lddyn_rule = tiny_dytrim(dataclasses.replace(dy_cfg, epoch_steps=0), steps)  # progress > delta * steps
    lddyn_rule.scores_ulb = dy.scores_ulb
    first = next(s for s in range(218_740, 219_010) if len(refreshed(lddyn_rule, "unlabeled", s)[0]) == 40)
    assert first == 218_752
