"""A model as a function of explicit parameters and buffers (dicts name -> tensor), never
touching its own state."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn
from torch.func import functional_call

Params = dict[str, Tensor]
LogitsFn = Callable[[Params, Tensor], Tensor]
#: Reads the logits (N, C) from whatever the model's forward returns.
LogitsReader = Callable[[object], Tensor]


def trainable_params(model: nn.Module) -> Params:
    """The trainable parameters (``requires_grad``), detached: the coordinates of J = dz/dθ."""
    return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}


def frozen_state(model: nn.Module) -> Params:
    """Buffers plus non-trainable parameters: held constant in every functional evaluation."""
    state = {n: b for n, b in model.named_buffers()}
    state.update({n: p.detach() for n, p in model.named_parameters() if not p.requires_grad})
    return state


def clone_state(tensors: Params) -> Params:
    return {n: t.detach().clone() for n, t in tensors.items()}


def output_logits(out: object) -> Tensor:
    """Logits from a model output: a tensor, a dict with ``logits``, or a tuple whose first item
    is the logits. Pass your own reader to the recorder for anything else."""
    if isinstance(out, Tensor):
        return out
    if isinstance(out, dict) and isinstance(out.get("logits"), Tensor):
        return out["logits"]
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], Tensor):
        return out[0]
    raise TypeError(
        f"cannot read logits from a model output of type {type(out).__name__}: "
        "return a tensor, a dict with 'logits' or a tuple starting with them, or pass logits=<reader>"
    )


def logits_fn(model: nn.Module, state: Params | None = None, read: LogitsReader = output_logits) -> LogitsFn:
    """``f(params, x) -> logits (N, C)`` through ``functional_call``; the normalisation mode is the
    caller's (``observations.observing``)."""
    state = frozen_state(model) if state is None else state

    def f(params: Params, x: Tensor) -> Tensor:
        return read(functional_call(model, (params, state), (x,)))

    return f


def sensitivity(v: Tensor, probs: Tensor) -> Tensor:
    """Apply T(x) = I − 1·πᵀ to logit-space vectors: d log π = T dz.  v (..., O, C), probs (O, C)."""
    return v - (v * probs).sum(-1, keepdim=True)
