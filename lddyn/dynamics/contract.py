"""Kernel contractions over per-sample features, and the blocking that bounds their memory.

Jacobian column blocks J (n, C, P) give K[i, j, c, d] = J1[i, c] · J2[j, d], one GEMM per block;
a factored block (``LazyJac``) is formed in small sample chunks while contracting. A Gram-route
weight (patches p (n, S, K), cotangents g (C, n, S, O); J_ic = Σ_s g_ic[s] ⊗ p_i[s]) gives
K[i, j, c, d] = Σ_{s,t} (g_ic[s] · g_jd[t]) (p_i[s] · p_j[t]), as PP = p1 p2ᵀ, M = PP·g2, g1·M.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

#: Elements of a factored Jacobian formed at once while contracting (~16 MB in float32).
LAZY_CHUNK_ELEMS = 1 << 22


class LazyJac:
    """A weight Jacobian J[i, c] = Σ_s g[i, c, :, s] ⊗ p[i, s] kept as its factors.

    g: (n, C, O, S) output cotangents, p: (n, S, K) patches. ``rows`` forms J for a sample range
    with one batched GEMM of C·O rows per sample; ``full`` forms and caches the whole block.
    """

    def __init__(self, g: Tensor, p: Tensor) -> None:
        self.g, self.p, self._full = g, p, None
        self.shape = (g.shape[0], g.shape[1], g.shape[2] * p.shape[2])

    def rows(self, lo: int, hi: int) -> Tensor:
        n, c, o, s = self.g[lo:hi].shape
        return torch.bmm(self.g[lo:hi].reshape(n, c * o, s), self.p[lo:hi]).view(n, c, -1)

    def full(self) -> Tensor:
        if self._full is None:
            self._full = self.rows(0, self.shape[0])
        return self._full


@dataclass
class Features:
    """Per-sample features of a chunk: Jacobian column blocks plus the Gram-route layers."""

    jac: list[Tensor | LazyJac] = field(default_factory=list)  # blocks (n, C, P_b), same on both sides
    grams: list[tuple[Tensor, Tensor]] = field(default_factory=list)  # [(p (n,S,K), g (C,n,S,O))]


def contract_jac(j1: list[Tensor | LazyJac], j2: list[Tensor | LazyJac]) -> Tensor:
    """Σ_blocks J1 J2ᵀ: (n1, n2, C, C).

    Accumulates every block into one transposed (n2·C, n1·C) matrix with ``addmm``; a factored
    block on the x2 side is formed in chunks of about 4 M elements and contracted at once.
    """
    n1, c, _ = j1[0].shape
    n2 = j2[0].shape[0]
    acc = (j1[0].g if isinstance(j1[0], LazyJac) else j1[0]).new_zeros(n2 * c, n1 * c)
    for a, b in zip(j1, j2, strict=True):
        a = (a.full() if isinstance(a, LazyJac) else a).reshape(n1 * c, -1)
        step = max(1, LAZY_CHUNK_ELEMS // (c * b.shape[2])) if isinstance(b, LazyJac) else n2
        for lo in range(0, n2, step):
            hi = min(n2, lo + step)
            bb = b.rows(lo, hi) if isinstance(b, LazyJac) else b[lo:hi]
            acc[lo * c : hi * c].addmm_(bb.reshape((hi - lo) * c, -1), a.T)
    return acc.view(n2, c, n1, c).permute(2, 0, 3, 1)


def contract_gram(p1: Tensor, g1: Tensor, p2: Tensor, g2: Tensor, max_elems: int) -> Tensor:
    """Σ_{s,t} (g1[c,i,s]·g2[d,j,t]) (p1[i,s]·p2[j,t]) over chunks of j.

    Chunks keep the intermediates (n1·S·T·jc for PP, n1·S·O·jc per class for M) near a few
    million elements, where the batched products run from cache; ``max_elems`` caps it further.
    """
    n1, s, _ = p1.shape
    n2, t, _ = p2.shape
    c, o = g1.shape[0], g1.shape[3]
    step = max(2, min(n2, min(max_elems, 1 << 22) // max(n1 * s * (t + o), 1)))
    p1 = p1.contiguous()
    out = p1.new_empty((n1, n2, c, c))
    g1r = g1.permute(1, 0, 2, 3).reshape(n1, c, s * o)  # (i, c, (s,o))
    for j in range(0, n2, step):
        sl = slice(j, min(n2, j + step))
        _gram_block(p1, g1r, p2[sl], g2[:, sl], out[:, sl])
    return out


def _gram_block(p1: Tensor, g1r: Tensor, p2: Tensor, g2: Tensor, out: Tensor) -> None:
    """Write K[i, j, c, d] for a chunk of j into ``out`` (n1, jc, C, C); no large copies."""
    n1, s, k = p1.shape
    n2, t, _ = p2.shape
    c, o = g2.shape[0], g2.shape[3]
    pp = p1.reshape(n1 * s, k) @ p2.reshape(n2 * t, k).T  # PP[(i,s), (j,t)]
    ppj = pp.view(n1 * s, n2, t).transpose(0, 1)  # (j, (i,s), t), strided
    for d in range(c):
        m = torch.bmm(ppj, g2[d])  # M_d[j, (i,s), o] = Σ_t PP[(i,s),(j,t)] g2[d,j,t,o]
        m = m.view(n2, n1, s * o).permute(1, 2, 0)  # (i, (s,o), j)
        out[:, :, :, d] = torch.bmm(g1r, m).transpose(1, 2)  # Σ_{(s,o)} g1[i,c,(s,o)] M_d


def contract(f1: Features, f2: Features, max_elems: int) -> Tensor:
    """The kernel block between two feature chunks: Jacobian part plus every Gram layer."""
    out = contract_jac(f1.jac, f2.jac) if f1.jac else None
    for (p1, g1), (p2, g2) in zip(f1.grams, f2.grams, strict=True):
        part = contract_gram(p1, g1, p2, g2, max_elems)
        out = part if out is None else out + part
    if out is None:
        raise ValueError("the model has no trainable parameters: the eNTK is empty")
    return out


def gram_cost(n1: int, n2: int, c: int, s: int, k: int, o: int) -> float:
    """Multiply-adds of the Gram route for one layer (PP, then M, then the final contraction)."""
    return n1 * n2 * (s * s * k + s * s * c * o + c * c * o * s)


def jacobian_cost(n1: int, n2: int, c: int, s: int, k: int, o: int) -> float:
    """Multiply-adds of forming per-sample layer Jacobians (C·O·K·S each) and contracting them."""
    return n1 * n2 * c * c * o * k + (n1 + n2) * c * o * k * s


def block_plan(n1: int, n2: int, bytes1: float, bytes2: float, budget: float) -> tuple[bool, int, int]:
    """(x1 is the outer side, outer chunk, inner chunk) with the least feature-building work.

    Features of an outer chunk are built once; inner chunks are rebuilt for every outer chunk
    unless the whole inner side fits next to the outer chunk, when it is built once and kept.
    Work = samples built + 2 per chunk built (small batches run less efficiently). Always at
    least one sample per side, whatever the budget.
    """
    best: tuple[int, tuple[bool, int, int]] | None = None
    for x1_outer in (True, False):
        no, ni, bo, bi = (n1, n2, bytes1, bytes2) if x1_outer else (n2, n1, bytes2, bytes1)
        for co in range(1, no + 1):
            ci = min(ni, int((budget - co * bo) // max(bi, 1.0)))
            if ci < 1:
                break
            outer, inner = -(-no // co), -(-ni // ci)
            builds = inner if ci == ni else outer * inner
            work = no + (ni if ci == ni else outer * ni) + 2 * (outer + builds)
            if best is None or work < best[0]:
                best = (work, (x1_outer, co, ci))
    return (True, 1, 1) if best is None else best[1]


Feats = Callable[[slice], Features]


def blockwise(
    n1: int, n2: int, feats1: Feats, feats2: Feats, combine: Callable, plan: tuple[bool, int, int], same: bool
) -> Tensor:
    """Assemble the (n1, n2, ...) kernel block by block following ``block_plan``.

    When ``same`` (x2 is x1) and one chunk covers everything, the features are built once.
    """
    x1_outer, co, ci = plan
    no, ni = (n1, n2) if x1_outer else (n2, n1)
    f_outer, f_inner = (feats1, feats2) if x1_outer else (feats2, feats1)
    keep, kept, out = ci >= ni, None, None
    for i in range(0, no, co):
        so = slice(i, min(no, i + co))
        fo = f_outer(so)
        for j in range(0, ni, ci):
            si = slice(j, min(ni, j + ci))
            if same and co >= no and keep:
                fi = fo
            else:
                fi = kept if kept is not None else f_inner(si)
                kept = fi if keep else None
            block = combine(fo, fi) if x1_outer else combine(fi, fo)
            s1, s2 = (so, si) if x1_outer else (si, so)
            if out is None:
                out = block.new_empty((n1, n2, *block.shape[2:]))
            out[s1, s2] = block
        del fo
    assert out is not None
    return out
