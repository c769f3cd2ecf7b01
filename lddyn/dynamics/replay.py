"""The decoupled backward replayed on the training graph itself: no second forward.

The training forward's autograd graph already holds every activation of the step. Walking it from
the step's logits, seeded with the per-sample logit gradients G, gives the decoupled cotangents
when three kinds of node are treated differently from autograd's own backward:

* a BatchNorm node in train mode passes δx = γ · invstd · δy (its batch statistics held constant)
  instead of its own backward, which also routes through the statistics and couples the samples;
* a structured site (Linear, Conv2d, normalisation affine) records its output cotangent δ and its
  input (x̂ for a norm layer), then pushes only the input cotangent: no weight gradient is formed;
* accumulate-grad nodes are never entered, so no ``.grad`` is touched.

Every other node is called as autograd would call it. Calling a node keeps its saved tensors, so
the trainer's backward of the same graph runs afterwards unchanged. Anything unfamiliar (a norm
layer with another backward node, mixed dtypes, a layer called twice) returns None: the caller
then re-forwards (``decoupled``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from lddyn.dynamics.layerwise import _xhat

Node = Any  # torch.autograd.graph.Node (its Python type is not importable for annotations)
Edge = tuple[Node, int]
ACCUMULATE = "torch::autograd::AccumulateGrad"
BATCH_NORM = "NativeBatchNormBackward0"
NORM_NODES = {nn.LayerNorm: "NativeLayerNormBackward0", nn.GroupNorm: "NativeGroupNormBackward0"}


@dataclass
class LayerCall:
    """One call of a structured layer in a training forward, as its forward hook saw it."""

    module: nn.Module
    input: Tensor  # the layer's input, still in the graph
    node: Node  # grad_fn of the layer's output
    output_nr: int


class Unfamiliar(Exception):
    """The graph holds something the replay does not reproduce exactly."""


def replay_cotangents(
    roots: Sequence[tuple[Tensor, Tensor]], layers: Sequence[LayerCall]
) -> list[tuple[Tensor, Tensor]] | None:
    """Per layer call (input or x̂, output cotangent δ) of the decoupled backward seeded at ``roots``.

    ``roots``: (output tensor of a training forward, its seed). None when the graph cannot be
    replayed exactly.
    """
    try:
        with torch.no_grad():
            return _Replay(layers).run(roots)
    except Unfamiliar:
        return None


class _Replay:
    def __init__(self, layers: Sequence[LayerCall]) -> None:
        self.layers = list(layers)
        self.at: dict[Node, int] = {}
        for i, call in enumerate(self.layers):
            if call.node is None or call.node in self.at:
                raise Unfamiliar("a layer output without its own graph node")
            self.at[call.node] = i
        self.edges: dict[Node, list[Edge]] = {}

    def children(self, node: Node) -> list[Edge]:
        """Edges the replay follows out of ``node`` (never into accumulate-grad nodes), memoised."""
        if node not in self.edges:
            self.edges[node] = self._children(node)
        return self.edges[node]

    def _children(self, node: Node) -> list[Edge]:
        i = self.at.get(node)
        if i is not None:
            x = self.layers[i].input
            return [(x.grad_fn, x.output_nr)] if x.grad_fn is not None else []
        if node.name() == BATCH_NORM:
            first = node.next_functions[0]
            return [first] if first[0] is not None else []
        return [(n, nr) for n, nr in node.next_functions if n is not None and n.name() != ACCUMULATE]

    def run(self, roots: Sequence[tuple[Tensor, Tensor]]) -> list[tuple[Tensor, Tensor]]:
        starts = [(t.grad_fn, t.output_nr, seed) for t, seed in roots if t.grad_fn is not None]
        useful = self._useful([s[0] for s in starts])
        waiting: dict[Node, int] = {}
        for node in useful:
            for child, _ in self.children(node):
                if child in useful:
                    waiting[child] = waiting.get(child, 0) + 1
        grads: dict[Node, list[Tensor | None]] = {}
        for node, nr, seed in starts:
            if node in useful:
                _add(grads, node, nr, seed)
        ready = [n for n in dict.fromkeys(s[0] for s in starts) if n in useful and not waiting.get(n)]
        out: list[tuple[Tensor, Tensor] | None] = [None] * len(self.layers)
        while ready:
            node = ready.pop()
            pushed = self._backward(node, grads.pop(node, [None]), out)
            for (child, nr), g in zip(self.children(node), pushed, strict=True):
                if child not in useful:
                    continue
                if g is not None:
                    _add(grads, child, nr, g)
                waiting[child] -= 1
                if not waiting[child]:
                    ready.append(child)
        if any(o is None for o in out):
            raise Unfamiliar("a layer call the seeds never reach")
        return out  # type: ignore[return-value]

    def _useful(self, starts: list[Node]) -> set[Node]:
        """Nodes reachable from the roots from which some layer call is reachable."""
        state: dict[Node, bool] = {}
        for start in starts:
            stack = [(start, False)]
            while stack:
                node, expanded = stack.pop()
                if expanded:
                    state[node] = node in self.at or any(state.get(c, False) for c, _ in self.children(node))
                elif node not in state:
                    state[node] = False  # marked on the first visit, decided after its children (post-order)
                    stack.append((node, True))
                    stack.extend((c, False) for c, _ in self.children(node) if c not in state)
        return {n for n, keep in state.items() if keep}

    def _backward(self, node: Node, grads: list[Tensor | None], out: list) -> list[Tensor | None]:
        """Cotangents pushed along ``children(node)``."""
        i = self.at.get(node)
        if i is not None:
            call = self.layers[i]
            delta = grads[call.output_nr] if call.output_nr < len(grads) else None
            if delta is None:
                raise Unfamiliar("a layer output without a cotangent")
            feature, pushed = _layer_backward(call, node, delta, grads)
            out[i] = (feature, delta)
            return [pushed] if call.input.grad_fn is not None else []
        if all(g is None for g in grads):
            return [None] * len(self.children(node))
        if "BatchNorm" in node.name() and node.name() != BATCH_NORM:  # cuDNN, MIOpen, ...: unknown saves
            raise Unfamiliar(f"batch-norm node {node.name()}")
        if node.name() == BATCH_NORM:
            if node.next_functions[0][0] is None:
                return []
            return [_batch_norm_input_grad(node, grads[0]) if node._saved_training else _call(node, grads)[0]]
        result = _call(node, grads)
        return [
            g
            for (n, _), g in zip(node.next_functions, result, strict=True)
            if n is not None and n.name() != ACCUMULATE
        ]


def _add(grads: dict[Node, list[Tensor | None]], node: Node, nr: int, g: Tensor) -> None:
    slots = grads.setdefault(node, [None] * max(len(node._input_metadata), nr + 1))
    slots[nr] = g if slots[nr] is None else slots[nr] + g


def _call(node: Node, grads: list[Tensor | None]) -> tuple[Tensor | None, ...]:
    n = len(node._input_metadata)
    result = node(*(grads + [None] * (n - len(grads)))[:n])
    return (result,) if isinstance(result, Tensor) or result is None else tuple(result)


def _channel_view(v: Tensor, like: Tensor) -> Tensor:
    return v.view((1, -1) + (1,) * (like.dim() - 2))


def _batch_norm_input_grad(node: Node, delta: Tensor) -> Tensor:
    """δx with the batch statistics held constant: γ · invstd · δy."""
    scale = node._saved_result2
    weight = node._saved_weight
    if weight is not None:
        scale = scale * weight
    return delta * _channel_view(scale.to(delta.dtype), delta)


def _layer_backward(call: LayerCall, node: Node, delta: Tensor, grads: list) -> tuple[Tensor, Tensor | None]:
    """(the layer's input or x̂, the cotangent of its input) for one structured layer call."""
    m, a = call.module, call.input
    if delta.dtype != a.dtype:
        raise Unfamiliar(f"mixed dtypes {a.dtype} and {delta.dtype} (autocast)")
    needs_input = a.grad_fn is not None
    if isinstance(m, nn.Conv2d):
        pushed = None
        if needs_input:
            pushed = torch.ops.aten.convolution_backward(
                delta,
                a,
                m.weight,
                None,
                m.stride,
                m.padding,
                m.dilation,
                False,
                [0, 0],
                m.groups,
                [True, False, False],
            )[0]
        return a.detach(), pushed
    if isinstance(m, nn.Linear):
        return a.detach(), (delta @ m.weight.to(delta.dtype)) if needs_input else None
    if isinstance(m, _BatchNorm):
        if node.name() != BATCH_NORM:
            raise Unfamiliar(f"BatchNorm output node {node.name()}")
        if not node._saved_training:
            return _xhat(m, a.detach()), (_call(node, grads)[0] if needs_input else None)
        mean, invstd = node._saved_result1, node._saved_result2
        xhat = (a.detach() - _channel_view(mean, a)) * _channel_view(invstd, a)
        return xhat, (_batch_norm_input_grad(node, delta) if needs_input else None)
    for kind, name in NORM_NODES.items():
        if isinstance(m, kind):
            if node.name() != name or (needs_input and node.next_functions[0][0] is not a.grad_fn):
                raise Unfamiliar(f"{type(m).__name__} output node {node.name()}")
            return _xhat(m, a.detach()), (_call(node, grads)[0] if needs_input else None)
    raise Unfamiliar(f"no replay rule for {type(m).__name__}")
