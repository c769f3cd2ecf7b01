"""Multi-process single runs (``torchrun``): one global batch, split across processes.

What makes W processes take the same steps as one process at the same global batch:
* every rank draws the *global* batch indices and augmentation from identically seeded
  generators, then keeps its contiguous slice, so the union of the slices is the single-process
  batch;
* BatchNorm statistics are computed over the global batch (``GlobalBatchNorm``; torch's
  SyncBatchNorm refuses CPU tensors), except for forwards of an input every rank holds in full
  (the baseline image), which keep their own statistics (``replicated_input``);
* each rank's loss is a mean over its slice, so averaging gradients over ranks gives the gradient
  of the global mean;
* after the optimiser step the per-sample loss terms are gathered back into global order, so
  methods with per-sample state (DyTrim scores) and the tables see the single-process step.
Only rank 0 writes tables, checkpoints and run.json.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from lddyn.config import ConfigError, RunConfig
from lddyn.data.samplers import Batch
from lddyn.losses import LossTerm

if TYPE_CHECKING:
    from lddyn.methods.base import StepContext

_SYNC = {"on": True}  # GlobalBatchNorm synchronises unless inside replicated_input()


@contextlib.contextmanager
def replicated_input() -> Iterator[None]:
    """Forwards of an input that every rank holds in full: BatchNorm keeps per-rank statistics."""
    before = _SYNC["on"]
    _SYNC["on"] = False
    try:
        yield
    finally:
        _SYNC["on"] = before


def world_from_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) as torchrun sets them; (0, 1, 0) in a plain process."""
    env = os.environ
    return int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0))


def is_main_process() -> bool:
    return world_from_env()[0] == 0


@dataclass
class Distributed:
    """This process's place in the run; every method is a no-op when ``world == 1``."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    batch_scope: str = "global"
    sync_bn: bool = True
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))

    @classmethod
    def from_config(cls, cfg: RunConfig, device: torch.device) -> Distributed:
        """Join the process group torchrun describes (once per process)."""
        rank, world, local_rank = world_from_env()
        d = cfg.distributed
        if world > 1:
            if cfg.record.dynamics:
                allowed = "false in a multi-process run (--set record.dynamics=false; record in one process)"
                raise ConfigError("record.dynamics", True, allowed)
            if not dist.is_initialized():
                backend = d.backend if d.backend != "auto" else ("nccl" if device.type == "cuda" else "gloo")
                dist.init_process_group(backend)
                atexit.register(_close_group)
        return cls(rank, world, local_rank, d.batch_scope, d.sync_bn, device)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    # --- the batch ---------------------------------------------------------------------------------

    def global_batch(self, size: int, key: str = "ssl.batch_size") -> int:
        """The global batch for a configured ``size`` (global or per device, as the config says)."""
        if self.batch_scope == "per_device":
            return size * self.world
        if size % self.world:
            raise ConfigError(key, size, f"a multiple of the {self.world} processes (global batch scope)")
        return size

    def shard(self, x: Tensor) -> Tensor:
        """This rank's contiguous slice of a global batch."""
        if not self.active:
            return x
        n = len(x) // self.world
        return x[self.rank * n : (self.rank + 1) * n]

    def shard_batch(self, batch: Batch) -> Batch:
        return Batch(self.shard(batch.index), self.shard(batch.weight), self.shard(batch.status))

    # --- model and gradients -----------------------------------------------------------------------

    def prepare_model(self, model: nn.Module) -> nn.Module:
        return convert_batch_norm(model) if self.active and self.sync_bn else model

    def attach(self, optimizer: torch.optim.Optimizer) -> None:
        """Average the gradients over ranks right before every optimiser step."""
        if self.active:
            optimizer.register_step_pre_hook(lambda opt, args, kwargs: self.average_gradients(opt))

    def average_gradients(self, optimizer: torch.optim.Optimizer) -> None:
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world
        for g, new in zip(grads, flat.split([g.numel() for g in grads]), strict=True):
            g.copy_(new.view_as(g))

    def after_step(self, model: nn.Module, ctx: StepContext, terms: list[LossTerm]) -> list[LossTerm]:
        """Global loss terms and context (in single-process order); rank 0's buffers without sync BN."""
        if not self.active:
            return terms
        if not self.sync_bn:  # per-rank BN statistics drift apart; keep rank 0's, as DDP does
            for buffer in model.buffers():
                dist.broadcast(buffer, 0)
        sizes = {True: len(ctx.lb.index) if ctx.lb else 1, False: len(ctx.ulb.index) if ctx.ulb else 1}
        out = [self.gather_term(t, sizes[t.labeled]) for t in terms]
        for name in ("pseudo_label", "mask", "probs"):
            if getattr(ctx, name, None) is not None:
                setattr(ctx, name, self.gather(getattr(ctx, name)))
        ctx.lb, ctx.ulb = self.gather_batch(ctx.lb), self.gather_batch(ctx.ulb)
        return out

    # --- gathering ---------------------------------------------------------------------------------

    def gather(self, x: Tensor, blocks: int = 1) -> Tensor:
        """All ranks' slices in global order; ``x`` holds ``blocks`` consecutive per-view slices."""
        comm = x.detach().to(self.device if self.device.type == "cuda" else "cpu")
        if comm.dtype == torch.bool:
            comm = comm.to(torch.uint8)
        parts = [torch.empty_like(comm) for _ in range(self.world)]
        dist.all_gather(parts, comm.contiguous())
        stacked = torch.stack([p.view(blocks, -1, *p.shape[1:]) for p in parts], dim=1)  # (blocks, W, n, ...)
        return stacked.reshape(-1, *x.shape[1:]).to(device=x.device, dtype=x.dtype)

    def gather_batch(self, batch: Batch | None) -> Batch | None:
        return None if batch is None else Batch(*(self.gather(t) for t in vars(batch).values()))

    def gather_term(self, term: LossTerm, local_size: int) -> LossTerm:
        if len(term.logits) % local_size:
            rows = len(term.logits)
            raise ValueError(f"loss term {term.name!r} has {rows} rows, not a multiple of {local_size}")
        blocks = len(term.logits) // local_size
        changes: dict[str, Any] = {
            name: self.gather(getattr(term, name), blocks)
            for name in ("logits", "targets", "weight", "index", "source_class", "true_class", "status")
        }
        offset = term.logit_offset
        if offset is not None and offset.dim() == 2:
            changes["logit_offset"] = self.gather(offset, blocks)
        return term.with_(**changes, norm=term.norm * self.world, inputs=None)


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks; the backward sums the ranks' upstream gradients (every rank used the sum)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:  # noqa: ANN401
        out = x.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:  # noqa: ANN401
        out = grad.clone()
        dist.all_reduce(out)
        return out


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics are those of the global batch across ranks.

    Differentiable: the all-reduce's backward sums the upstream gradients of every rank, so the
    averaged parameter gradients equal those of one process holding the whole batch. Statistics
    accumulate in float64 on the CPU, as torch's own CPU kernel does.
    """

    vector_input = False  # replaced a BatchNorm1d

    def _check_input_dim(self, x: Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"GlobalBatchNorm expects (N, C, ...) input, got shape {tuple(x.shape)}")

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and _SYNC["on"] and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        dims = [0, *range(2, x.dim())]
        shape = (1, -1, *[1] * (x.dim() - 2))
        acc = torch.float64 if x.device.type == "cpu" else torch.float32
        xa = x.to(acc)
        local_count = torch.tensor([x.numel() / x.shape[1]], dtype=acc, device=x.device)
        total = _AllReduceSum.apply(torch.cat([xa.sum(dims), local_count]))
        count = total[-1].detach()
        mean = total[:-1] / count
        centred = xa - mean.view(shape)
        var = _AllReduceSum.apply(centred.pow(2).sum(dims)) / count
        if self.track_running_stats:
            self._update_running(mean.detach(), var.detach(), float(count))
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out.to(x.dtype)

    @torch.no_grad()
    def _update_running(self, mean: Tensor, var: Tensor, count: float) -> None:
        self.num_batches_tracked.add_(1)
        factor = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
        unbiased = var * count / max(count - 1, 1)
        self.running_mean.mul_(1 - factor).add_(mean.to(self.running_mean.dtype), alpha=factor)
        self.running_var.mul_(1 - factor).add_(unbiased.to(self.running_var.dtype), alpha=factor)


def convert_batch_norm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm (1d/2d/3d) by a GlobalBatchNorm sharing its parameters and buffers."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, GlobalBatchNorm):
        out = GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                              module.track_running_stats)  # fmt: skip
        if module.affine:
            out.weight, out.bias = module.weight, module.bias
        if module.track_running_stats:
            out.running_mean, out.running_var = module.running_mean, module.running_var
            out.num_batches_tracked = module.num_batches_tracked
        out.vector_input = isinstance(module, nn.BatchNorm1d)  # see forward.needs_pair
        out.train(module.training)
        return out
    for name, child in module.named_children():
        module.add_module(name, convert_batch_norm(child))
    return module


class NullSink:
    """The sink of ranks other than 0: rows are computed (every rank runs every callback) but dropped."""

    def add(self, table: str, rows: list[dict[str, Any]]) -> None:
        return None

    def add_columns(self, table: str, columns: object) -> None:
        return None

    def pending(self) -> int:
        return 0

    def flush(self) -> list:
        return []

    def check_parts(self) -> None:
        return None

    def truncate_after(self, step: int) -> list:
        return []


def _close_group() -> None:
    """Leave the group together at exit: a rank tearing down gloo while another still talks aborts."""
    if dist.is_initialized():
        with contextlib.suppress(RuntimeError):
            dist.barrier()
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
