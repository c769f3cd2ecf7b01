"""J_o · v for many parameter directions v at once, from the observations' layer factors.

A step's decomposition maps one direction per group (plus the coupling and the total) to the
observation logits. A vmapped JVP pays a forward-mode pass per direction. Here the observations
are forwarded once (norm layers in eval mode, so samples do not interact) and C backwards give
every layer's output cotangent g_c = ∂z_c/∂y per observation; then for a layer y = W a + b,
    (J_o v)_c = Σ_positions g_c · (V a + v_b),
so all K directions of a layer cost one layer forward of the observations with the K stacked
weight directions as output channels, plus a small contraction with g; or, when fewer
multiply-adds, the layer's J_o formed once from g and the patches and multiplied by the K
directions. A layer whose output reaches the logits only through per-channel elementwise maps,
global pooling and a linear head (the last convolution of most CNNs) has rank-one cotangents per
channel, g_c[ch, s] = u_c[ch] m[ch, s]; it is detected numerically and costs a per-channel inner
product: (J_o v)_c = Σ_ch u_c[ch] Σ_j A[ch, j] V[ch, j] with A = Σ_s m[·, s] ⊗ patch[s]. Normalisation
affine parameters use x̂, and layers the structured plan does not know use exact per-sample
Jacobians.
Everything is evaluated at the parameters and buffers it was built at: build it before the
optimiser step (or pass the saved ones).
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lddyn.dynamics.functional import Params, frozen_state, trainable_params
from lddyn.dynamics.groups import stack_groups
from lddyn.dynamics.layerwise import _forward, _xhat, generic_jacobians
from lddyn.dynamics.structured import Site, cached_plan

Direction = dict[str, Tensor | None]
#: Rank-one test of a layer's class cotangents: residual <= this many machine epsilons x max |g|.
RANK_ONE_ULPS = 64
#: Convolutions whose cotangents were found not to factor (structural: not retested).
_NOT_RANK_ONE: weakref.WeakSet[nn.Module] = weakref.WeakSet()


class ObservationJacobian:
    """Layer factors of J_o at (params, state); ``apply`` maps directions to logit pushes (K, O, C)."""

    def __init__(
        self, model: nn.Module, x_obs: Tensor, params: Params | None = None, state: Params | None = None
    ) -> None:
        params = trainable_params(model) if params is None else params
        state = frozen_state(model) if state is None else state
        plan = cached_plan(model, params, state, x_obs)
        logits, inputs, deltas = _forward(model, plan, params, state, x_obs)
        self.logits = logits.detach()  # (O, C) observation logits, eval mode
        self.sites: list[Site] = plan.sites
        self.o, self.c = logits.shape
        ds = [deltas[s.name] for s in plan.sites]
        # per site: cotangents (O, C, *output shape) and the input (or x̂ of a norm layer)
        self.cot = class_cotangents(logits, ds)
        self.inputs = [
            _xhat(s.module, inputs[s.name]) if s.kind == "norm" else inputs[s.name] for s in plan.sites
        ]
        self.factors = [
            _conv_factor(s, a, g) for s, a, g in zip(plan.sites, self.inputs, self.cot, strict=True)
        ]
        jac = generic_jacobians(model, plan.generic, params, state, x_obs) if plan.generic else {}
        self.generic = {n: j.reshape(self.o * self.c, -1) for n, j in jac.items()}
        self.shapes = {n: p.shape for n, p in params.items()}

    def apply(self, directions: Sequence[Direction]) -> Tensor:
        """J_o · v for each direction v (name -> tensor; missing or None = zero): (K, O, C)."""
        return self.apply_stacked(stack_groups(directions), len(directions))

    def apply_stacked(self, stacked: Mapping[str, Tensor | None], k: int) -> Tensor:
        """J_o · v for K directions stacked per parameter ((K, *shape); missing or None = zero):
        (K, O, C). Group gradients arrive stacked, so no per-direction copies are made."""
        out = self.logits.new_zeros(self.o, self.c, k)
        for site, a, g, factor in zip(self.sites, self.inputs, self.cot, self.factors, strict=True):
            picked = {r: _pick(stacked, full, a) for r, full in site.params.items()}
            if site.kind == "norm":
                out += _norm_push(site, a, g, picked, k)
            else:
                out += _patch_push(site, a, g, picked, k, factor)
        for name, jac in self.generic.items():
            v = _pick(stacked, name, jac)
            if v is not None:
                out += (jac @ v.reshape(k, -1).T).view(self.o, self.c, k)
        return out.permute(2, 0, 1)


def _pick(stacked: Mapping[str, Tensor | None], name: str, like: Tensor) -> Tensor | None:
    v = stacked.get(name)
    return None if v is None else v.to(like)


def class_cotangents(logits: Tensor, outputs: list[Tensor]) -> list[Tensor]:
    """∂z_c/∂y for every class c at every output y: one (O, C, *y.shape[1:]) tensor per output.

    One vmapped backward over the C one-hot seeds (about 30 % faster than C backwards on the
    digits CNN); graphs with an op that has no batching rule take the C backwards instead.
    """
    o, c = logits.shape
    seeds = torch.eye(c, dtype=logits.dtype, device=logits.device)[:, None].expand(c, o, c)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)  # vmap's slow fallback warns: loop instead
            grads = torch.autograd.grad(
                logits,
                outputs,
                grad_outputs=seeds,
                is_grads_batched=True,
                retain_graph=True,
                allow_unused=True,
            )
        return [
            torch.zeros(o, c, *y.shape[1:]).to(y) if g is None else g.transpose(0, 1)
            for g, y in zip(grads, outputs, strict=True)
        ]
    except (RuntimeError, UserWarning):
        pass
    per_class = []
    for k in range(c):
        gk = torch.autograd.grad(logits[:, k].sum(), outputs, retain_graph=k < c - 1, allow_unused=True)
        per_class.append([torch.zeros_like(y) if g is None else g for g, y in zip(gk, outputs, strict=True)])
    return [torch.stack([pc[i] for pc in per_class], 1) for i in range(len(outputs))]


@dataclass
class ConvFactor:
    """Rank-one class cotangents of a Conv2d site: g_c[ch, s] = u[c, ch] m[ch, s] per observation."""

    u: Tensor  # (O, C, out)
    a: Tensor  # (O, out, in·k²): Σ_s m[ch, s] patch[s]


def _conv_factor(site: Site, a: Tensor, g: Tensor) -> ConvFactor | None:
    """The rank-one factor of a Conv2d site's cotangents (O, C, out, *S), when they have one.

    A layer whose cotangents mix positions (anything but the last convolution of a CNN) refuses
    at its first test; it is remembered and not tested again (a recorder asks at every step).
    """
    m = site.module
    if not isinstance(m, nn.Conv2d) or "weight" not in site.params or m in _NOT_RANK_ONE:
        return None
    flat = g.reshape(*g.shape[:3], -1)  # (O, C, out, S)
    if _rank_one(flat[:1]) is None:  # one observation first: a cheap refusal
        _NOT_RANK_ONE.add(m)
        return None
    found = _rank_one(flat)
    if found is None:
        return None
    u, mode = found
    patches = F.unfold(a, m.kernel_size, m.dilation, m.padding, m.stride)  # (O, in·k², S)
    return ConvFactor(u, torch.bmm(mode, patches.transpose(1, 2)))


def _rank_one(flat: Tensor) -> tuple[Tensor, Tensor] | None:
    """(u (O, C, out), m (O, out, S)) with flat = u ⊗ m per (observation, channel), to rounding."""
    o, c, units, positions = flat.shape
    pick = flat.square().sum(3).argmax(1, keepdim=True)  # per (observation, channel) the largest class
    mode = flat.gather(1, pick[..., None].expand(o, 1, units, positions))  # (O, 1, out, S)
    norm = mode.square().sum(3)
    u = (flat * mode).sum(3) / torch.where(norm > 0, norm, torch.ones_like(norm))
    tol = RANK_ONE_ULPS * torch.finfo(flat.dtype).eps * float(flat.abs().max())
    if float((flat - u[..., None] * mode).abs().max()) > tol:
        return None
    return u, mode[:, 0]


def _patch_push(
    site: Site, a: Tensor, g: Tensor, stacked: dict[str, Tensor | None], k: int, factor: ConvFactor | None
) -> Tensor:
    """Σ_positions g_c · (V a + v_b) for a Linear / Conv2d site: (O, C, K)."""
    m, o, c = site.module, g.shape[0], g.shape[1]
    out = g.new_zeros(o, c, k)
    conv = isinstance(m, nn.Conv2d)
    units = m.out_channels if conv else m.out_features
    weight, bias = stacked.get("weight"), stacked.get("bias")
    positions = g[0, 0].numel() // units
    if weight is not None:
        if factor is not None:  # per channel: Σ_j A[ch, j] V[ch, j], then the class coefficients
            per_channel = torch.einsum("oxj,kxj->oxk", factor.a, weight.reshape(k, units, -1))
            out += torch.bmm(factor.u, per_channel)
        elif conv and c * (positions + k) < k * positions:  # fewer multiply-adds: form J_o once
            patches = F.unfold(a, m.kernel_size, m.dilation, m.padding, m.stride)  # (O, in·k², S)
            jac = torch.bmm(g.reshape(o, c * units, -1), patches.transpose(1, 2))  # (O, C·out, in·k²)
            out += (jac.reshape(o * c, -1) @ weight.reshape(k, -1).T).view(o, c, k)
        elif conv:  # the K directions as K·out output channels of one convolution
            y = F.conv2d(a, weight.flatten(0, 1), None, m.stride, m.padding, m.dilation)
            y = y.reshape(o, k, -1)  # (O, K, out·S), output channel major like g
            out += torch.bmm(g.reshape(o, c, -1), y.transpose(1, 2))
        else:
            y = F.linear(a, weight.flatten(0, 1))  # (O, *mid, K·out)
            y = y.reshape(o, -1, k, units).permute(0, 2, 1, 3).reshape(o, k, -1)
            out += torch.bmm(g.reshape(o, c, -1), y.transpose(1, 2))
    if bias is not None:
        g_units = g.reshape(o, c, units, -1).sum(3) if conv else g.reshape(o, c, -1, units).sum(2)
        out += g_units @ bias.T
    return out


def _norm_push(site: Site, xhat: Tensor, g: Tensor, stacked: dict[str, Tensor | None], k: int) -> Tensor:
    """Σ_positions g_c · (γ_v x̂ + β_v) for a norm layer's affine directions: (O, C, K)."""
    o, c = g.shape[0], g.shape[1]
    if isinstance(site.module, nn.LayerNorm):
        width = int(torch.Size(site.module.normalized_shape).numel())
        gx, gs = (g * xhat[:, None]).reshape(o, c, -1, width).sum(2), g.reshape(o, c, -1, width).sum(2)
    else:
        ch = xhat.shape[1]
        gx = (g * xhat[:, None]).reshape(o, c, ch, -1).sum(3)
        gs = g.reshape(o, c, ch, -1).sum(3)
    out = g.new_zeros(o, c, k)
    if stacked.get("weight") is not None:
        out += gx @ stacked["weight"].reshape(k, -1).T
    if stacked.get("bias") is not None:
        out += gs @ stacked["bias"].reshape(k, -1).T
    return out
