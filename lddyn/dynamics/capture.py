"""What a recorded step's training forwards leave behind for the decoupled group gradients.

While a step is recorded, every grad-enabled forward of the model is captured: the input of each
structured layer (Linear, Conv2d, norm affine) and a zero tensor added to that layer's output,
whose gradient in any backward is the layer's output cotangent (robust to in-place operations
after the layer). Train-mode BatchNorm runs through ``DecoupledBatchNorm``: its forward and its
running-statistics update are the module's own; its backward is the module's own gradient, except
inside the recorder's decoupled pass, where the batch statistics are held constant:
δx = γ·σ_B⁻¹·δy. Everything is public PyTorch (hooks, an ``autograd.Function`` and an instance
``forward`` attribute), installed for the recorded step only and removed after it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from lddyn.dynamics.functional import LogitsReader
from lddyn.dynamics.norms import BATCH, BATCH_NORMS, RUNNING, batch_stats, channel_view
from lddyn.dynamics.structured import structured_kind


class Switch:
    """Which backward ``DecoupledBatchNorm`` takes: the module's own, or batch statistics held."""

    decoupled = False


def _batch_training(m: nn.Module) -> bool:
    return m.training or (m.running_mean is None and m.running_var is None)


class DecoupledBatchNorm(torch.autograd.Function):
    """A train-mode BatchNorm whose backward holds the batch statistics constant on request."""

    @staticmethod
    def forward(
        ctx, x: Tensor, weight: Tensor | None, bias: Tensor | None, module: nn.Module, switch: Switch
    ):  # noqa: ANN001, ANN205
        ctx.module, ctx.switch = module, switch
        ctx.save_for_backward(x, weight, bias)
        return type(module).forward(module, x)  # the module's own output and buffer update

    @staticmethod
    def backward(ctx, gy: Tensor):  # noqa: ANN001, ANN205
        x, w, b = ctx.saved_tensors
        eps = ctx.module.eps
        if ctx.switch.decoupled:
            invstd = batch_stats(x, eps)[1]
            return gy * channel_view(invstd if w is None else w * invstd, x), None, None, None, None
        need = ctx.needs_input_grad[:3]
        with torch.enable_grad():  # the module's own gradient, recomputed through its own kernels
            xd, wd, bd = (
                None if t is None else t.detach().requires_grad_(n)
                for t, n in zip((x, w, b), need, strict=True)
            )
            y = F.batch_norm(xd, None, None, wd, bd, True, 0.0, eps)
            wanted = [t for t in (xd, wd, bd) if t is not None and t.requires_grad]
            got = iter(torch.autograd.grad(y, wanted, gy))
        return *(next(got) if t is not None and t.requires_grad else None for t in (xd, wd, bd)), None, None


@dataclass
class LayerCall:
    """One structured layer call inside a captured forward: its input and the output's zero delta."""

    module: nn.Module
    input: Tensor  # detached
    delta: Tensor  # zeros like the output, requires grad: its gradient is the output cotangent
    mode: str  # normalisation of a norm layer's x̂: "batch" (train-mode BatchNorm) or "running"


@dataclass
class ForwardCall:
    """One grad-enabled forward of the model: rows, structured layer calls, the logits it returned."""

    rows: int
    layers: list[LayerCall] = field(default_factory=list)
    outputs: list[Tensor] = field(default_factory=list)  # tensors shaped like the logits


def _tensors(out: object) -> list[Tensor]:
    if isinstance(out, Tensor):
        return [out]
    values = out.values() if isinstance(out, dict) else out if isinstance(out, (tuple, list)) else []
    return [v for v in values if isinstance(v, Tensor)]


class StepCapture:
    """Installed on a model for one recorded step; ``remove`` leaves the model as it was."""

    def __init__(self, model: nn.Module, read: LogitsReader) -> None:
        self.model, self.read, self.switch = model, read, Switch()
        self.calls: list[ForwardCall] = []
        self._current: ForwardCall | None = None
        self._depth = 0
        self._patched = [m for m in model.modules() if isinstance(m, BATCH_NORMS)]
        for m in self._patched:
            m.forward = self._batch_norm(m)
        self._handles: list[RemovableHandle] = [
            model.register_forward_pre_hook(self._start),
            model.register_forward_hook(self._end),
        ]
        for m in model.modules():
            if structured_kind(m) and any(p.requires_grad for p in m.parameters(recurse=False)):
                self._handles.append(m.register_forward_hook(self._layer))

    def _batch_norm(self, m: nn.Module):  # noqa: ANN202
        def forward(x: Tensor) -> Tensor:
            if not (_batch_training(m) and torch.is_grad_enabled()):
                return type(m).forward(m, x)
            return DecoupledBatchNorm.apply(x, m.weight, m.bias, m, self.switch)

        return forward

    def _start(self, module: nn.Module, args: tuple) -> None:
        self._depth += 1
        first = next((a for a in args if isinstance(a, Tensor)), None)
        if self._depth == 1 and torch.is_grad_enabled() and first is not None:
            self._current = ForwardCall(len(first))

    def _layer(self, module: nn.Module, args: tuple, out: object) -> Tensor | None:
        call = self._current
        if call is None or not isinstance(out, Tensor) or not out.requires_grad or not args:
            return None
        mode = BATCH if isinstance(module, BATCH_NORMS) and _batch_training(module) else RUNNING
        delta = torch.zeros_like(out, requires_grad=True)
        call.layers.append(LayerCall(module, args[0].detach(), delta, mode))
        return out + delta

    def _end(self, module: nn.Module, args: tuple, out: object) -> None:
        self._depth -= 1
        call, self._current = (self._current, None) if self._depth == 0 else (None, self._current)
        if call is None:
            return
        logits = self.read(out)
        same = [t for t in _tensors(out) if t is not logits and t.shape == logits.shape]
        call.outputs = [t for t in [logits, *same] if t.requires_grad]
        self.calls.append(call)

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        for m in self._patched:
            del m.forward
        self._handles, self._patched, self._depth = [], [], 0
