"""J = ∂z/∂θ layer by layer: the recorder's observation Jacobian and the eNTK's features.

One forward of the observation function (``observations.observing``: eval mode, BatchNorm per the
normalisation mode, so samples do not interact) records every site's input (x̂ for norm layers);
a zero tensor added to each site output makes ∂z_c/∂y its gradient. Then, for each class c, one
backward of Σ_n z_c(x_n) gives every sample's cotangent g_c at every site, which is folded into
that site's features at once and dropped. For a layer y = W a + b the Jacobian row of class c is
Σ_s g_c[s] ⊗ a[s]; a norm layer's affine has Σ_s g_c ⊙ x̂ and Σ_s g_c. Parameters of layers the
structured plan does not know take exact per-sample ``jacrev`` rows (``generic_jacobians``).
Layouts: Jacobian blocks (n, C, numel), sample-major like ``jacrev``; Gram features p (n, S, K),
g (C, n, S, O); a large weight block stays factored (``LazyJac``: cotangents and patches).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lddyn.dynamics.contract import Features, LazyJac
from lddyn.dynamics.functional import (
    LogitsReader,
    Params,
    frozen_state,
    logits_fn,
    output_logits,
    trainable_params,
)
from lddyn.dynamics.observations import RUNNING, Mode, ObservationSet, fold, joint_mode, observing, xhat
from lddyn.dynamics.structured import NTKPlan, Site, cached_plan, jac_layout


class PatchBuilder:
    """Linear / Conv2d site: patches once, then per class the weight Jacobian or Gram cotangents."""

    def __init__(self, site: Site, a: Tensor, c: int) -> None:
        m, n = site.module, a.shape[0]
        if isinstance(m, nn.Conv2d):
            p = F.unfold(a, m.kernel_size, m.dilation, m.padding, m.stride)  # (n, K, S)
            self.p = p.transpose(1, 2)  # a view: GEMMs take it transposed
        else:
            self.p = a.reshape(n, -1, a.shape[-1]).contiguous()
        self.site, self.conv = site, isinstance(m, nn.Conv2d)
        s, o = self.p.shape[1], site.o
        has_w = "weight" in site.params
        self.gw = a.new_empty(n, c, o, s) if has_w and site.route == "jacobian" else None
        self.g = a.new_empty(c, n, s, o) if has_w and site.route == "gram" else None
        self.b = a.new_empty(n, c, o) if "bias" in site.params else None

    def add(self, cls: int, g: Tensor) -> None:
        n = g.shape[0]
        gos = g.reshape(n, self.site.o, -1) if self.conv else g.reshape(n, -1, self.site.o).transpose(1, 2)
        if self.gw is not None:
            self.gw[:, cls] = gos
        if self.g is not None:
            self.g[cls] = gos.transpose(1, 2)
        if self.b is not None:
            self.b[:, cls] = gos.sum(2)

    def blocks(self) -> dict[str, Tensor | LazyJac]:
        out: dict[str, Tensor | LazyJac] = {}
        if self.gw is not None:  # Σ_s g[s] ⊗ p[s], formed during the contraction when large
            lazy = LazyJac(self.gw, self.p)
            out["weight"] = lazy if lazy.shape[2] >= 4096 else lazy.full()
        return out if self.b is None else {**out, "bias": self.b}

    def gram(self) -> tuple[Tensor, Tensor] | None:
        return None if self.g is None else (self.p, self.g)


class NormBuilder:
    """BatchNorm / LayerNorm / GroupNorm affine: Σ_positions g ⊙ x̂ and Σ_positions g.

    ``a`` is the layer's normalised input x̂ (taken in the forward, in the observation's mode)."""

    def __init__(self, site: Site, a: Tensor, c: int) -> None:
        self.site, self.xhat = site, a
        d = fold(site.module, a).shape[1]
        self.out = {r: a.new_empty(a.shape[0], c, d) for r in site.params}

    def add(self, cls: int, g: Tensor) -> None:
        if "weight" in self.out:
            self.out["weight"][:, cls] = fold(self.site.module, g * self.xhat)
        if "bias" in self.out:
            self.out["bias"][:, cls] = fold(self.site.module, g)

    def blocks(self) -> dict[str, Tensor]:
        return self.out

    def gram(self) -> None:
        return None


def _forward(
    model: nn.Module, plan: NTKPlan, params: Params, state: Params, x: Tensor, mode: Mode, read: LogitsReader
) -> tuple:
    """Logits plus, per site, (input — x̂ for a norm layer — and a zero delta on the output) from one
    hooked forward of the observation function of ``mode`` at (params, state)."""
    inputs: dict[str, Tensor] = {}
    deltas: dict[str, Tensor] = {}

    def hook(site: Site):  # noqa: ANN202
        def fn(mod: nn.Module, args: tuple, out: Tensor) -> Tensor:
            a = args[0].detach()
            inputs[site.name] = xhat(mod, a, mode) if site.kind == "norm" else a
            deltas[site.name] = torch.zeros_like(out, requires_grad=True)
            return out + deltas[site.name]

        return fn

    handles = [s.module.register_forward_hook(hook(s)) for s in plan.sites]
    try:
        with torch.enable_grad(), observing(model, mode):
            logits = logits_fn(model, state, read)(params, x)
    finally:
        for h in handles:
            h.remove()
    return logits, inputs, deltas


def site_blocks(
    model: nn.Module,
    plan: NTKPlan,
    params: Params,
    state: Params,
    x: Tensor,
    mode: Mode = RUNNING,
    read: LogitsReader = output_logits,
) -> tuple:
    """(logits, per-site Jacobian blocks (param name -> (n, C, numel)), Gram features), C backwards."""
    logits, inputs, deltas = _forward(model, plan, params, state, x, mode, read)
    c = logits.shape[1]
    builders = [
        (NormBuilder if s.kind == "norm" else PatchBuilder)(s, inputs.pop(s.name), c) for s in plan.sites
    ]
    ds = [deltas[s.name] for s in plan.sites]
    for k in range(c):  # a loop of C backwards beats one vmapped backward on CPU
        gk = torch.autograd.grad(logits[:, k].sum(), ds, retain_graph=k < c - 1, allow_unused=True)
        for b, g, d in zip(builders, gk, ds, strict=True):
            b.add(k, torch.zeros_like(d) if g is None else g)
    blocks = {b.site.params[r]: j for b in builders for r, j in b.blocks().items()}
    return logits.detach(), blocks, [g for b in builders if (g := b.gram()) is not None]


def generic_jacobians(
    model: nn.Module,
    names: list[str],
    params: Params,
    state: Params,
    x: Tensor,
    mode: Mode = RUNNING,
    read: LogitsReader = output_logits,
) -> dict[str, Tensor]:
    """Exact per-sample Jacobians (n, C, numel) of the named parameters via vmap(jacrev)."""
    sub = {n: params[n] for n in names}
    rest = {n: p for n, p in params.items() if n not in sub}
    f = logits_fn(model, state, read)
    runs = ((mode, len(x)),) if isinstance(mode, str) else mode
    jac: dict[str, list[Tensor]] = {n: [] for n in names}

    def one(p_sub: Params, xi: Tensor) -> Tensor:
        return f({**rest, **p_sub}, xi[None])[0]

    for part, (name, _) in zip(x.split([rows for _, rows in runs]), runs, strict=True):
        with observing(model, name):
            for n, j in torch.func.vmap(torch.func.jacrev(one), (None, 0))(sub, part).items():
                jac[n].append(j)
    jac = {n: torch.cat(js) for n, js in jac.items()}
    return {n: j.reshape(x.shape[0], j.shape[1], -1) for n, j in jac.items()}


def structured_features(
    model: nn.Module, plan: NTKPlan, params: Params, state: Params, x: Tensor
) -> Features:
    """All features of one chunk: Jacobian blocks in ``jac_layout`` order plus Gram layers.

    Blocks under 4096 columns (biases, norm affines) are merged into one to save small GEMMs.
    """
    blocks, grams = site_blocks(model, plan, params, state, x)[1:] if plan.sites else ({}, [])
    if plan.generic:
        blocks.update(generic_jacobians(model, plan.generic, params, state, x))
    ordered = [blocks.pop(name) for name, _ in jac_layout(plan, params)]
    big = [b for b in ordered if b.shape[-1] >= 4096]
    small = [b for b in ordered if b.shape[-1] < 4096]
    return Features(big + ([torch.cat(small, dim=2)] if small else []), grams)  # type: ignore[list-item]


class ObservationJacobian:
    """J_o of observation sets at the model's current parameters and buffers, per parameter.

    One forward (each row in its set's mode) and C backwards. A block is (O·C, numel) rows or, when
    the cotangents factor per channel, g_c[ch, s] = u_c[ch] m[ch, s] (a last convolution before
    pooling and the head), the factors u (O, C, out) and A = Σ_s m[·, s] ⊗ patch[s]: J_o v is then
    a per-channel product. Build it before the step; ``apply`` works afterwards.
    """

    def __init__(
        self, model: nn.Module, sets: list[ObservationSet], read: LogitsReader = output_logits
    ) -> None:
        params, state = trainable_params(model), frozen_state(model)
        x, mode = torch.cat([s.x for s in sets]), joint_mode(sets)
        plan = cached_plan(model, params, state, x)
        logits, blocks, _ = site_blocks(model, plan, params, state, x, mode, read)
        if plan.generic:
            blocks.update(generic_jacobians(model, plan.generic, params, state, x, mode, read))
        self.logits = logits  # (O, C) before the step
        self.o, self.c = logits.shape
        lazy = {n: _channel_factors(b) if isinstance(b, LazyJac) else None for n, b in blocks.items()}
        self.factored = {n: f for n, f in lazy.items() if f is not None}  # (u (O,C,out), A (O,out,in·k²))
        full = {n: b.full() if isinstance(b, LazyJac) else b for n, b in blocks.items() if lazy[n] is None}
        dense = {n: j.flatten(0, 1) for n, j in full.items()}  # (O·C, numel)
        self.width = {n: j.shape[1] for n, j in dense.items()}
        small = [n for n, w in self.width.items() if w < 4096]  # one product for all small blocks
        self.dense = [([n], j) for n, j in dense.items() if n not in small]
        self.dense += [(small, torch.cat([dense[n] for n in small], 1))] if small else []

    def apply(self, blocks: Sequence[dict[str, Tensor]]) -> Tensor:
        """J_o v for blocks of directions, each parameter -> (K_i, *shape) (absent = zero):
        (Σ K_i, O, C), the blocks' rows in order."""
        sizes = [next(iter(b.values())).shape[0] if b else 0 for b in blocks]
        out = self.logits.new_zeros(sum(sizes), self.o, self.c)
        flat, zero = out.view(len(out), -1), out.new_zeros(1, 1)
        for block, lo, k in zip(blocks, np.cumsum([0, *sizes[:-1]]), sizes, strict=True):
            rows = slice(int(lo), int(lo) + k)
            for names, jac in self.dense:  # (K, numel) x (numel, O·C), into contiguous rows
                v = [block[n].reshape(k, -1) if n in block else zero.expand(k, self.width[n]) for n in names]
                if any(n in block for n in names):
                    flat[rows].addmm_((v[0] if len(v) == 1 else torch.cat(v, 1)).to(flat), jac.T)
            for name, (u, a) in self.factored.items():
                if name in block:
                    v = block[name].reshape(k, a.shape[1], -1).to(a)
                    per_channel = (a * v).sum(2)[:, None] if k == 1 else torch.einsum("oxj,kxj->okx", a, v)
                    out[rows] += torch.einsum("ocx,okx->koc", u, per_channel)
        return out


#: A factor is accepted when the rank-one residual is within this many rounding errors of max |g|.
RANK_ONE_ULPS = 64


def _channel_factors(jac: LazyJac) -> tuple[Tensor, Tensor] | None:
    """(u, A) when g (O, C, out, S) = u ⊗ m per (observation, channel) to rounding, else None."""
    tol = RANK_ONE_ULPS * torch.finfo(jac.g.dtype).eps * max(abs(float(v)) for v in torch.aminmax(jac.g))
    for g in (jac.g[:1], jac.g):  # (O, C, out, S); the first observation alone rejects most layers
        o, c, units, positions = g.shape
        pick = g.square().sum(3).argmax(1, keepdim=True)  # per (observation, channel) the largest class
        mode = g.gather(1, pick[..., None].expand(o, 1, units, positions))  # (O, 1, out, S)
        norm = mode.square().sum(3)
        u = (g * mode).sum(3) / torch.where(norm > 0, norm, torch.ones_like(norm))
        if float((g - u[..., None] * mode).abs().max()) > tol:
            return None
    return u, torch.bmm(mode[:, 0], jac.p)  # patches (O, S, in·k²)
