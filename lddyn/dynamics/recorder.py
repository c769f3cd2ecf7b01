"""The dynamics recorder: the first-order dynamics of recorded training steps, from any loop.

``with rec.step() as s:`` around a step, terms registered by ``s.term(...)``, then ``s.rows()``
(docs/own-loop.md). Entering saves θ0, b0 and forms J_o (``jacobian``) and installs the capture;
``s.term`` reads G; the backward's start takes the group gradients (``groups``); just before
``optimizer.step()`` the gradient is checked, the coupling set and the update split
(``optim_split``); leaving measures the change and maps every direction to the observations.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from contextlib import contextmanager

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lddyn.dynamics import tidy
from lddyn.dynamics.capture import StepCapture
from lddyn.dynamics.functional import LogitsReader, clone_state, frozen_state, output_logits, sensitivity
from lddyn.dynamics.groups import (
    COUPLING_TERM,
    DECOUPLED,
    EXACT,
    Term,
    decoupled_sums,
    group_backward,
    group_ids,
)
from lddyn.dynamics.jacobian import ObservationJacobian
from lddyn.dynamics.observations import BATCH, RUNNING, ObservationSet, observed_logits
from lddyn.dynamics.optim_split import (
    CARRY,
    DECOUPLED_WD,
    GROUPS,
    WEIGHT_DECAY,
    UnsupportedOptimizer,
    split_update,
)

RESERVED = ("step", "observation", "target_class", "part", "quantity", "value")
DROPOUT = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)
POST_STEP, STEP = "post_step", "step"


class GradientCheckError(RuntimeError):
    """The gradient the optimiser stepped with is not the registered terms' gradient."""


class Recorder:
    """Records steps of ``model`` trained by ``optimizer`` at fixed observation sets.

    ``by``: grouping keys (``term`` and columns given to ``StepRecord.term``); ``logits``: reads
    the logits from the model's output; ``groups``: ``decoupled`` or ``exact`` (docs/dynamics.md).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        observations: Sequence[ObservationSet],
        by: Sequence[str] = ("term",),
        *,
        logits: LogitsReader = output_logits,
        groups: str = DECOUPLED,
    ) -> None:
        names = [s.name for s in observations]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"observation sets need distinct names, got {names}")
        bad = [k for k in by if k in RESERVED or not isinstance(k, str)]
        if bad or groups not in (DECOUPLED, EXACT):
            raise ValueError(
                f"by={tuple(by)} (reserved: {RESERVED}), groups={groups!r} ({DECOUPLED} | {EXACT})"
            )
        self.model, self.optimizer, self.sets = model, optimizer, list(observations)
        self.read, self.groups, self.by = logits, groups, tuple(by)
        self.keys = ("term", *[k for k in self.by if k != "term"], "part")
        sizes = np.cumsum([0] + [len(s.x) for s in self.sets])
        self.obs_ids = [np.arange(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)]
        self.steps = 0
        self.unsplit_reason: str | None = None
        self._check_observations()

    def _check_observations(self) -> None:
        """Dropout is off at observation forwards (said once); other randomness is refused."""
        dropout = sorted({type(m).__name__ for m in self.model.modules() if isinstance(m, DROPOUT)})
        if dropout:
            warnings.warn(f"{', '.join(dropout)} switched off at observation forwards", stacklevel=3)
        for s in self.sets:
            once, again = (observed_logits(self.model, s, read=self.read) for _ in range(2))
            if not torch.equal(once, again):
                raise ValueError(
                    f"observation set {s.name!r}: two forwards of the same inputs differ; "
                    "the model is random at observation forwards (eval mode): remove the randomness"
                )

    def observations(self) -> pd.DataFrame:
        """The ``observations`` table: id, set name (``kind``), norm, label and dataset index of each."""
        frames = []
        for s, ids in zip(self.sets, self.obs_ids, strict=True):
            n = len(ids)
            labels = np.full(n, -1) if s.labels is None else s.labels.cpu().numpy()
            index = np.full(n, -1) if s.index is None else s.index.cpu().numpy()
            cols = {"observation": ids, "kind": s.name, "norm": s.norm, "true_label": labels}
            frames.append(pd.DataFrame({**cols, "dataset_index": index}))
        return pd.concat(frames, ignore_index=True)

    def step(self, step: int | None = None) -> StepRecord:
        """The context of one recorded step (numbered ``step``, default: one more than the last)."""
        self.steps = self.steps + 1 if step is None else step
        return StepRecord(self, self.steps)


class StepRecord:
    """One recorded step: enter before the step's first forward, leave after its last update."""

    def __init__(self, recorder: Recorder, step: int) -> None:
        self.rec, self.step = recorder, step
        self.terms: list[Term] = []
        self.results: dict[str, dict[str, tuple[Tensor, list[dict]]]] = {}  # set -> quantity -> values
        self._frame: pd.DataFrame | None = None
        self._inner = False
        self._stacked: dict[str, Tensor] | None = None
        self._parts: dict[str, dict[str, Tensor]] | None = None
        self._theta_opt: dict[str, Tensor] | None = None

    # --- entering ---------------------------------------------------------------------------------
    def __enter__(self) -> StepRecord:
        model, opt = self.rec.model, self.rec.optimizer
        self.named = {n: p for n, p in model.named_parameters() if p.requires_grad}
        self.theta0, self.state0 = clone_state(self.named), clone_state(frozen_state(model))
        self.jac = ObservationJacobian(model, self.rec.sets, self.rec.read)
        self.capture = StepCapture(model, self.rec.read)
        self._handles = [
            opt.register_step_pre_hook(self._before_step),
            opt.register_step_post_hook(self._after_step),
        ]
        return self

    def term(
        self, name: str, *, logits: Tensor, losses: Tensor, inputs: Tensor | None = None, **columns: object
    ) -> None:
        """Register a loss term: per-sample ``losses`` (N,) of ``logits`` (N, C), summing to the term's
        share of the loss you back-propagate, and per-sample grouping ``columns`` (N,) each.
        ``inputs``: the batch the logits came from (optional; ``s.terms`` keeps it, e.g. for
        per-sample values with ``empirical_ntk``)."""
        n = len(logits)
        if not logits.requires_grad or losses.shape != (n,):
            raise ValueError(
                f"term {name!r}: logits {tuple(logits.shape)} must carry the training graph and "
                f"losses {tuple(losses.shape)} be one value per row; register terms before backward()"
            )
        cols = {}
        for key, v in columns.items():
            arr = v.detach().cpu().numpy() if isinstance(v, Tensor) else np.asarray(v, dtype=object)
            if len(arr) != n:
                raise ValueError(f"term {name!r}: column {key!r} has {len(arr)} values for {n} rows")
            cols[key] = arr
        with self._own_pass():
            G = torch.autograd.grad(losses.sum(), logits, retain_graph=True)[0].detach()
        term = Term(name, logits, losses, cols, G, inputs)
        self._handles.append(logits.register_hook(lambda g: None if self._inner else term.seen.append(g)))
        self._handles.append(
            torch.autograd.graph.register_multi_grad_hook([losses], self._on_backward, mode="any")
        )
        self.terms.append(term)

    @contextmanager
    def _own_pass(self):  # noqa: ANN202
        self._inner = True  # the recorder's own backward passes: the hooks stand aside
        yield
        self._inner = False

    # --- during backward: the group gradients on the live graph -----------------------------------
    def _on_backward(self, _grad: Tensor) -> None:
        if self._stacked is not None or self._inner:
            return
        with torch.enable_grad(), self._own_pass():
            # what the registered losses send to each logits tensor (terms may share or slice one)
            self._logits = list({id(t.logits): t.logits for t in self.terms}.values())
            total = sum(t.losses.sum() for t in self.terms)
            self._expected = torch.autograd.grad(total, self._logits, retain_graph=True, allow_unused=True)
            self.group_keys, ids = group_ids(self.terms, self.rec.by)
            g, sw = len(self.group_keys), self.capture.switch
            if self.rec.groups == EXACT:
                self._stacked = group_backward(self.terms, ids, g, self.named, sw, decoupled=False)
            else:
                self._stacked = decoupled_sums(self.terms, ids, g, self.capture.calls, sw, self.named)

    # --- just before and after optimizer.step() ---------------------------------------------------
    def _before_step(self, optimizer: torch.optim.Optimizer, *_: object, split: bool = True) -> None:
        if self._stacked is None:
            raise GradientCheckError(
                "no backward through the registered terms' losses before optimizer.step(): "
                "register every term with s.term(...) before calling backward()"
            )
        self._check_gradients()
        for n, p in self.named.items():  # the last row: what the groups do not explain (the coupling)
            s = self._stacked[n]
            s[-1] = (torch.zeros_like(p) if p.grad is None else p.grad) - s[:-1].sum(0)
        self.lr = float(optimizer.param_groups[0]["lr"])
        try:  # (no split when the optimiser never stepped: its update did not happen)
            self._parts = split_update(optimizer, self.named, self._stacked) if split else None
        except UnsupportedOptimizer as exc:  # said once per recorder
            if self.rec.unsplit_reason is None:
                warnings.warn(str(exc), stacklevel=2)
            self.rec.unsplit_reason = str(exc)

    def _after_step(self, optimizer: torch.optim.Optimizer, *_: object) -> None:
        self._theta_opt = clone_state(self.named)

    def _check_gradients(self) -> None:
        """∂L/∂logits as the trained loss delivered it against the registered terms' G; ∇θL against
        Σ_g ∇θL_g for parameters whose group sums are exact (after every train-mode BatchNorm)."""
        seen = {id(t.logits): t.seen for t in self.terms}
        for logits, want in zip(self._logits, self._expected, strict=True):
            got = seen[id(logits)][-1] if seen[id(logits)] else None  # from the last backward
            want = torch.zeros_like(logits) if want is None else want
            scale = float(want.abs().max())
            err = float("inf") if got is None else float((got - want).abs().max())
            if not err <= 1e-5 * scale + 1e-30:
                names = [t.name for t in self.terms if t.logits is logits]
                raise GradientCheckError(
                    f"terms {names}: the loss back-propagated sends ∂L/∂logits differing "
                    f"from the registered per-sample losses' by {err:.3g} (max |G| {scale:.3g}); the loss "
                    "must be the sum of the registered losses, normalised as trained (a per-sample norm?)"
                )
        for n in self._exact_params():
            p, s = self.named[n], self._stacked[n][:-1].sum(0)
            grad = torch.zeros_like(p) if p.grad is None else p.grad
            if float((grad - s).abs().max()) > 1e-3 * float(grad.abs().max()) + 1e-12:
                raise GradientCheckError(
                    f"∇θL of {n} is not the sum of the registered terms' gradients: "
                    "the optimiser steps with a gradient the terms do not explain "
                    "(an unregistered loss, clipping or scaling between backward and step)"
                )

    def _exact_params(self) -> list[str]:
        if self.rec.groups == EXACT:
            return list(self.named)
        coupled: set[nn.Module] = set()
        for call in self.capture.calls:
            last = max((i for i, lc in enumerate(call.layers) if lc.mode == BATCH), default=-1)
            coupled |= {lc.module for lc in call.layers[: last + 1]}
        modules = {lc.module for call in self.capture.calls for lc in call.layers} - coupled
        ids = {id(p) for m in modules for p in m.parameters(recurse=False)}
        return [n for n, p in self.named.items() if id(p) in ids]

    # --- leaving ----------------------------------------------------------------------------------
    def __exit__(self, exc_type: object, exc: object, tb: object) -> bool:
        self.capture.remove()
        for h in self._handles:  # the terms' tensors may outlive the step: nothing of it stays on them
            h.remove()
        try:
            if exc_type is None:
                self._frame = self._finish()
        finally:  # keep the rows and results, drop the step's working memory (the captured calls too)
            self.jac = self.capture = self._stacked = self._parts = self.state0 = None  # type: ignore[assignment]
        return False

    def rows(self) -> pd.DataFrame:
        """The step's tidy rows (columns: step, observation, target_class, keys, quantity, value)."""
        if self._frame is None:
            raise RuntimeError("rows() is available after the `with rec.step()` block has ended")
        return self._frame

    def _directions(self) -> tuple[list[dict[str, Tensor]], list[dict], list[dict]]:
        """Blocks of directions, each parameter -> (K_i, *shape): the gradient pieces, then each
        piece's share of the update and the update's other parts; and their row labels."""
        keys = [dict(zip(self.rec.by, k, strict=True)) for k in self.group_keys]
        metas = [{**k, "part": "group"} for k in keys]
        if self.rec.groups == DECOUPLED:
            metas.append({"term": COUPLING_TERM, "part": "group"})
        rows = len(metas)
        pieces = {n: s[:rows] for n, s in self._stacked.items()}
        theta1 = {n: p.detach() for n, p in self.named.items()}
        if self._theta_opt is None:  # the optimiser never stepped: every change is the block's own
            self._theta_opt = self.theta0
        extra, blocks = {POST_STEP: {n: theta1[n] - self._theta_opt[n] for n in theta1}}, [pieces]
        if self._parts is None:
            extra[STEP] = {n: self._theta_opt[n] - self.theta0[n] for n in theta1}
        else:
            blocks.append({n: g[:rows] for n, g in self._parts[GROUPS].items()})
            extra.update({k: self._parts[k] for k in (CARRY, WEIGHT_DECAY, DECOUPLED_WD)})
        extra = {k: v for k, v in extra.items() if any(bool(t.any()) for t in v.values())}
        zero = {n: torch.zeros_like(t) for n, t in theta1.items()}
        filled = [{**zero, **v} for v in extra.values()]  # a row per part, absent parameters zero
        blocks += [{n: torch.stack([f[n] for f in filled]) for n in theta1}] if extra else []
        parts = ([dict(m) for m in metas] if self._parts is not None else []) + [{"part": k} for k in extra]
        return blocks, metas, parts

    @torch.no_grad()
    def _finish(self) -> pd.DataFrame:
        if self._stacked is None:
            raise GradientCheckError("the block ended without a backward through the registered terms")
        if self._parts is None and self._theta_opt is None:  # no optimiser step: coupling from .grad
            self._before_step(self.rec.optimizer, split=False)
        blocks, metas, parts = self._directions()
        ng = len(metas)
        model, sets, read = self.rec.model, self.rec.sets, self.rec.read
        pushes, probs = self.jac.apply(blocks), F.softmax(self.jac.logits, -1)
        logp0, logp1 = (
            F.log_softmax(self.jac.logits, -1),
            F.log_softmax(observed_logits(model, sets, read=read), -1),
        )
        drift = torch.zeros_like(logp1)
        running = torch.cat([torch.full((len(s.x),), s.norm == RUNNING) for s in sets]).to(drift.device)
        if running.any():  # the buffers' share of the change: at θ1, buffers after against before
            at_b0 = observed_logits(model, [s for s in sets if s.norm == RUNNING], None, self.state0, read)
            drift[running] = logp1[running] - F.log_softmax(at_b0, -1)  # rows of the running sets, in order
        measured = logp1 - logp0
        blocks, empty, start = [], [{}], 0
        for s, ids in zip(sets, self.rec.obs_ids, strict=True):
            rows = slice(start, start + len(ids))
            start += len(ids)
            kg, upd = pushes[:ng, rows], sensitivity(pushes[ng:, rows], probs[rows])
            self.results[s.name] = {
                "kg": (kg, metas),
                "gd_logp": (-self.lr * sensitivity(kg, probs[rows]), metas),
                "update_logp": (upd, parts),
                "measured": (measured[None, rows], empty),
                "bn_drift": (drift[None, rows], empty),
                "residual": ((measured[rows] - upd.sum(0) - drift[rows])[None], empty),
            }
            blocks += [(q, v, m, ids) for q, (v, m) in self.results[s.name].items()]
        return tidy.step_frame(self.step, blocks, self.rec.keys)
