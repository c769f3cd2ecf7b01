"""Observation sets, and which function of θ an observation is: the normalisation of its forward.

BatchNorm makes the function explicit. Three modes, one ``xhat`` for all of them:

* ``running``: normalised by the running statistics (eval mode); a per-sample function, the one
  a test-time prediction uses. Test images and tracked training samples are observed this way.
* ``own``: each input normalised by its *own* statistics, as a train-mode forward of that input
  alone does (BatchNorm2d: over its spatial positions; BatchNorm1d on vectors: a batch of one
  copy has zero deviation, so x̂ = 0 and the layer outputs its bias). Buffers are never touched.
  CDMAD, DyTrim and the baseline probe forward the baseline image this way, and Proposition 3 is
  about this function, so baseline images are observed this way.
* ``batch``: the training batch's statistics, only used inside a recorded training step.

LayerNorm and GroupNorm normalise each sample by itself. Both observation modes are per-sample,
so one forward can mix them: a ``Mode`` is a name, or runs of rows, ((name, rows), ...).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lddyn.dynamics.functional import LogitsReader, Params, logits_fn, output_logits, trainable_params

#: Layers whose train-mode forward couples samples through batch statistics.
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
RUNNING, OWN, BATCH = "running", "own", "batch"
OBSERVATION_MODES = (RUNNING, OWN)
Mode = str | tuple[tuple[str, int], ...]  # a name, or runs of consecutive rows ((name, rows), ...)
Stats = tuple[Tensor, Tensor] | None  # a batch's (mean, 1/σ) per channel


def channel_view(v: Tensor, a: Tensor) -> Tensor:
    """A per-channel vector shaped to broadcast against ``a`` (N, C, *spatial)."""
    return v.view(1, -1, *([1] * (a.dim() - 2)))


def batch_stats(a: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """(mean, 1/sqrt(var + eps)) per channel over the batch and positions, biased variance."""
    var, mean = torch.var_mean(a, [d for d in range(a.dim()) if d != 1], correction=0)
    return mean, torch.rsqrt(var + eps)


def xhat(module: nn.Module, a: Tensor, mode: Mode, stats: Stats = None, affine: bool = False) -> Tensor:
    """The normalised input of a norm layer in ``mode``, before its affine map (after it with
    ``affine``: the observation forward, one PyTorch kernel per mode).

    ``running`` reads the module's buffers at call time, so inside ``functional_call`` it reads
    the state that was passed in. ``batch`` takes the batch's (mean, 1/σ) from ``stats`` when the
    forward already computed them.
    """
    w, b = (module.weight, module.bias) if affine else (None, None)
    if isinstance(module, nn.LayerNorm):
        return F.layer_norm(a, module.normalized_shape, w, b, module.eps)
    if isinstance(module, nn.GroupNorm):
        return F.group_norm(a, module.num_groups, w, b, module.eps)
    if not isinstance(mode, str):  # runs of rows, each in its own mode
        parts = zip(a.split([rows for _, rows in mode]), mode, strict=True)
        return torch.cat([xhat(module, part, name, affine=affine) for part, (name, _) in parts])
    if mode == RUNNING:
        return F.batch_norm(a, module.running_mean, module.running_var, w, b, False, 0.0, module.eps)
    if mode == OWN and a.dim() > 2:  # each (input, channel) over its positions, as alone in train mode
        return F.instance_norm(a, weight=w, bias=b, eps=module.eps)
    if mode == BATCH:
        mean, invstd = batch_stats(a, module.eps) if stats is None else stats
        y = (a - channel_view(mean, a)) * channel_view(invstd, a)
    else:  # a vector alone: zero deviation from its own mean
        y = torch.zeros_like(a)
    return y if w is None else y * channel_view(w, a) + channel_view(b, a)


def fold(module: nn.Module, t: Tensor) -> Tensor:
    """Σ over positions per affine entry: (N, *) → (N, affine size) (channels, or LayerNorm's shape)."""
    if isinstance(module, nn.LayerNorm):
        width = int(torch.Size(module.normalized_shape).numel())
        return t.reshape(t.shape[0], -1, width).sum(1)
    return t.reshape(t.shape[0], t.shape[1], -1).sum(2)


def _observed_batch_norm(module: nn.Module, mode: Mode):  # noqa: ANN202
    def forward(a: Tensor) -> Tensor:
        return xhat(module, a, mode, affine=module.affine)

    return forward


@contextmanager
def observing(model: nn.Module, mode: Mode) -> Iterator[nn.Module]:
    """The model as the observation function of ``mode``: eval mode (dropout off) with every
    BatchNorm normalising per ``mode``; buffers are read, never written. Restored on exit."""
    names = {mode} if isinstance(mode, str) else {name for name, _ in mode}
    if not names <= set(OBSERVATION_MODES):
        raise ValueError(f"norm={mode!r} is not one of {OBSERVATION_MODES}")
    modes = {m: m.training for m in model.modules()}
    patched = [m for m in model.modules() if isinstance(m, BATCH_NORMS)]
    if RUNNING in names and any(m.running_mean is None for m in patched):
        raise ValueError("norm='running' needs BatchNorm running statistics (track_running_stats=True)")
    model.eval()
    for m in patched:
        m.forward = _observed_batch_norm(m, mode)  # an instance attribute: removed on exit
    try:
        yield model
    finally:
        for m in patched:
            del m.forward
        for m, training in modes.items():
            m.training = training


@dataclass(frozen=True)
class ObservationSet:
    """Inputs whose log-probabilities the recorder follows, and the function they are observed by.

    ``norm``: ``running`` (test images, tracked samples) or ``own`` (baseline images), see above.
    ``labels`` and ``index`` only label the rows of the ``observations`` table.
    """

    name: str
    x: Tensor  # (O, ...) inputs as the model takes them
    norm: str = RUNNING
    labels: Tensor | None = None  # (O,)
    index: Tensor | None = None  # (O,)

    def __post_init__(self) -> None:
        if self.norm not in OBSERVATION_MODES:
            raise ValueError(
                f"ObservationSet {self.name!r}: norm={self.norm!r} is not one of {OBSERVATION_MODES}"
            )
        if self.x.dim() < 2 or len(self.x) == 0:
            raise ValueError(
                f"ObservationSet {self.name!r}: x must be a non-empty batch, got shape {tuple(self.x.shape)}"
            )
        for field_name in ("labels", "index"):
            v = getattr(self, field_name)
            if v is not None and len(v) != len(self.x):
                raise ValueError(
                    f"ObservationSet {self.name!r}: {field_name} has {len(v)} entries, x {len(self.x)}"
                )


def joint_mode(sets: Sequence[ObservationSet]) -> Mode:
    """The normalisation of the sets' inputs concatenated: one name, or the sets' runs of rows."""
    norms = {s.norm for s in sets}
    return norms.pop() if len(norms) == 1 else tuple((s.norm, len(s.x)) for s in sets)


@torch.no_grad()
def observed_logits(
    model: nn.Module,
    sets: ObservationSet | Sequence[ObservationSet],
    params: Params | None = None,
    state: Params | None = None,
    read: LogitsReader = output_logits,
) -> Tensor:
    """The sets' logits (O, C), inputs concatenated, at explicit parameters and buffers (default:
    the model's own)."""
    sets = [sets] if isinstance(sets, ObservationSet) else list(sets)
    params = trainable_params(model) if params is None else params
    with observing(model, joint_mode(sets)):
        return logits_fn(model, state, read)(params, torch.cat([s.x for s in sets]))
