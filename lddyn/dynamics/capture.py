"""What a recorded step's training forwards leave behind for the decoupled group gradients.

Every grad-enabled forward of a recorded step is captured: each structured layer's input, and a
hook keeping its output's cotangent in the decoupled pass (a tensor hook sees the gradient of the
value the layer returned, even if a later operation changes it in place). Train-mode BatchNorm runs
through ``DecoupledBatchNorm``: PyTorch's own kernels and running-statistics update, except in the
decoupled pass, which holds the batch statistics: δx = γ·σ_B⁻¹·δy. Public PyTorch only (hooks, an
``autograd.Function``, an instance ``forward``), installed for the step and removed after it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from lddyn.dynamics.functional import LogitsReader
from lddyn.dynamics.observations import BATCH, BATCH_NORMS, RUNNING, channel_view
from lddyn.dynamics.structured import structured_kind


class Switch:  # which backward ``DecoupledBatchNorm`` takes: the module's own, or statistics held
    decoupled = False
    stats: tuple[Tensor, Tensor] | None = None  # the last train-mode call's (mean, 1/σ)


def _batch_training(m: nn.Module) -> bool:
    return m.training or (m.running_mean is None and m.running_var is None)


def _update_factor(m: nn.Module) -> float:
    """The running-statistics factor of this train-mode call, counting it as the module does."""
    factor = 0.0 if m.momentum is None else m.momentum
    if m.training and m.track_running_stats and m.num_batches_tracked is not None:
        m.num_batches_tracked.add_(1)
        factor = 1.0 / float(m.num_batches_tracked) if m.momentum is None else m.momentum
    return factor


class DecoupledBatchNorm(torch.autograd.Function):
    """A train-mode BatchNorm whose backward holds the batch statistics constant on request."""

    @staticmethod
    def forward(
        ctx, x: Tensor, weight: Tensor | None, bias: Tensor | None, module: nn.Module, switch: Switch
    ):  # noqa: ANN001, ANN205
        m, track = module, module.training and module.track_running_stats
        rm, rv = (m.running_mean, m.running_var) if track else (None, None)
        y, mean, invstd = torch.native_batch_norm(x, weight, bias, rm, rv, True, _update_factor(m), m.eps)
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.eps, ctx.switch = m.eps, switch
        switch.stats = (mean, invstd)  # for this call's x̂ (``StepCapture._layer``)
        return y

    @staticmethod
    def backward(ctx, gy: Tensor):  # noqa: ANN001, ANN205
        x, w, mean, invstd = ctx.saved_tensors
        if ctx.switch.decoupled:
            return gy * channel_view(invstd if w is None else w * invstd, x), None, None, None, None
        need = list(ctx.needs_input_grad[:3])
        gx, gw, gb = torch.ops.aten.native_batch_norm_backward(
            gy, x, w, None, None, mean, invstd, True, ctx.eps, need
        )
        return gx if need[0] else None, gw if need[1] else None, gb if need[2] else None, None, None


@dataclass
class LayerCall:
    """One structured layer call inside a captured forward: its input, and its output's cotangent
    once the decoupled pass has run."""

    module: nn.Module
    input: Tensor  # detached
    mode: str  # normalisation of a norm layer's x̂: "batch" (train-mode BatchNorm) or "running"
    stats: tuple[Tensor, Tensor] | None = None  # train-mode BatchNorm: the batch's (mean, 1/σ)
    cotangent: Tensor | None = None


@dataclass
class ForwardCall:
    """One grad-enabled forward of the model: rows, structured layer calls, the logits it returned."""

    rows: int
    layers: list[LayerCall] = field(default_factory=list)
    outputs: list[Tensor] = field(default_factory=list)  # tensors shaped like the logits
    # parameters of the layers fed by no graph (the first convolution): where the pass stops
    bottom: list[Tensor] = field(default_factory=list)


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

    def _layer(self, module: nn.Module, args: tuple, out: object) -> None:
        call = self._current
        if call is None or not isinstance(out, Tensor) or not out.requires_grad or not args:
            return
        batch = isinstance(module, BATCH_NORMS) and _batch_training(module)
        layer = LayerCall(module, args[0].detach(), BATCH if batch else RUNNING)
        if batch:
            layer.stats, self.switch.stats = self.switch.stats, None
        self._handles.append(out.register_hook(self._keep(layer)))
        call.layers.append(layer)
        if not args[0].requires_grad:
            call.bottom += [p for p in module.parameters(recurse=False) if p.requires_grad]

    def _keep(self, layer: LayerCall):  # noqa: ANN202
        def hook(g: Tensor) -> None:
            if self.switch.decoupled:
                layer.cotangent = g

        return hook

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
