"""The exact update torch.optim.SGD / Adam / AdamW will make, split linearly into parts.

With the optimiser state *before* ``step()`` and gradient pieces g_g (Σ_g g_g = g), the update is
affine in g for a per-element preconditioner P: Δθ = −P ⊙ Σ_g g_g + carry − P ⊙ wd·θ − lr·wd_dec·θ,
so each piece's share is −P ⊙ g_g. Adam's P comes from the full gradient (v_t), shared by all:
    P = lr (1 − β1) / (1 − β1^t) / (√(v̂_t) + eps),  v̂_t = v_t / (1 − β2^t),
    carry = −lr β1 m_{t−1} / (1 − β1^t) / (√(v̂_t) + eps).
SGD (momentum μ, dampening τ): P = lr when there is no buffer yet (times 1 + μ with Nesterov);
afterwards P = lr (1 − τ) with carry −lr μ buf, or Nesterov P = lr (1 + μ (1 − τ)), carry −lr μ² buf.
Parts: "groups" (every gradient piece's share), "carry" (momentum / first moment), "weight_decay"
(coupled, inside the gradient), "decoupled_wd" (AdamW's θ ← (1 − lr·wd) θ).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

GROUPS, CARRY, WEIGHT_DECAY, DECOUPLED_WD = "groups", "carry", "weight_decay", "decoupled_wd"


@dataclass
class Rule:
    """One parameter's update as P, carry and decay coefficients: Δθ = −P⊙g + carry − P⊙wd·θ − dec·θ."""

    precond: Tensor | float  # P, per element or scalar
    carry: Tensor | None
    wd: float  # coupled weight decay (in the gradient)
    decoupled: float  # lr·wd of a decoupled decay (AdamW)
    sign: float  # −1 with ``maximize``


def _sgd_rule(group: dict, state: dict, p: Tensor) -> Rule:
    lr, mu, damp = float(group["lr"]), group["momentum"], group.get("dampening", 0.0)
    sign = -1.0 if group.get("maximize", False) else 1.0
    buf = state.get("momentum_buffer")
    if mu == 0:
        return Rule(lr, None, group["weight_decay"], 0.0, sign)
    if buf is None:  # the first step copies the gradient into the buffer
        return Rule(lr * (1 + mu if group["nesterov"] else 1.0), None, group["weight_decay"], 0.0, sign)
    if group["nesterov"]:
        return Rule(lr * (1 + mu * (1 - damp)), -lr * mu * mu * buf, group["weight_decay"], 0.0, sign)
    return Rule(lr * (1 - damp), -lr * mu * buf, group["weight_decay"], 0.0, sign)


def _adam_rule(group: dict, state: dict, p: Tensor, grad: Tensor) -> Rule:
    lr, (b1, b2), eps, wd = float(group["lr"]), group["betas"], group["eps"], group["weight_decay"]
    decoupled = bool(group.get("decoupled_weight_decay", False))
    sign = -1.0 if group.get("maximize", False) else 1.0
    t = float(state["step"]) + 1 if "step" in state else 1.0
    g = sign * grad + (wd * p if wd and not decoupled else 0.0)
    v = b2 * state["exp_avg_sq"] + (1 - b2) * g * g if state else (1 - b2) * g * g
    if group.get("amsgrad", False) and state:
        v = torch.maximum(state["max_exp_avg_sq"], v)
    bc1, bc2 = 1 - b1**t, 1 - b2**t
    denom = v.sqrt() / bc2**0.5 + eps
    carry = -lr * b1 * state["exp_avg"] / bc1 / denom if state else None
    return Rule(
        lr * (1 - b1) / bc1 / denom, carry, 0.0 if decoupled else wd, lr * wd if decoupled else 0.0, sign
    )


SUPPORTED = "torch.optim.SGD, torch.optim.Adam and torch.optim.AdamW"


class UnsupportedOptimizer(NotImplementedError):
    """The update split does not know this optimiser (the gradient parts are still recorded)."""


def param_rule(optimizer: torch.optim.Optimizer, group: dict, p: Tensor, grad: Tensor) -> Rule:
    """The rule for one parameter from its optimiser group and state (read, never written)."""
    state = optimizer.state.get(p, {})
    if isinstance(optimizer, torch.optim.Adam):  # AdamW subclasses Adam (decoupled_weight_decay)
        return _adam_rule(group, state, p.detach(), grad)
    if isinstance(optimizer, torch.optim.SGD):
        return _sgd_rule(group, state, p.detach())
    raise UnsupportedOptimizer(
        f"the update split (update_logp) knows {SUPPORTED}, not {type(optimizer).__name__}; "
        "kg and gd_logp are recorded without it"
    )


def split_update(
    optimizer: torch.optim.Optimizer, named: dict[str, Tensor], stacked: dict[str, Tensor]
) -> dict[str, dict[str, Tensor]]:
    """part -> parameter name -> Δθ_part of the coming ``optimizer.step()``; call just before it.

    ``stacked[name]`` holds (K, *shape) gradient pieces summing to ``p.grad`` (the groups and the
    coupling); their part, GROUPS, is (K, *shape): −P ⊙ each piece. CARRY, WEIGHT_DECAY and
    DECOUPLED_WD are (*shape), absent where zero. Parameters without a gradient are skipped, as
    the optimiser does.
    """
    ids = {id(p): n for n, p in named.items()}
    parts: dict[str, dict[str, Tensor]] = {GROUPS: {}, CARRY: {}, WEIGHT_DECAY: {}, DECOUPLED_WD: {}}
    for group in optimizer.param_groups:
        for p in group["params"]:
            name = ids.get(id(p))
            if name is None or p.grad is None:
                continue
            rule, theta = param_rule(optimizer, group, p, p.grad), p.detach()
            parts[GROUPS][name] = stacked[name] * (-rule.sign * rule.precond)
            if rule.carry is not None:  # parts that are zero stay absent
                parts[CARRY][name] = rule.carry
            if rule.wd:
                parts[WEIGHT_DECAY][name] = -rule.precond * rule.wd * theta
            if rule.decoupled:
                parts[DECOUPLED_WD][name] = -rule.decoupled * theta
    return parts
