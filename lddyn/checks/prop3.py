"""Proposition 3, checked numerically: is pi(I_k) = softmax(b) for every baseline colour k?

The baseline image I_k = k * 1 is a solid colour. When every normalisation layer computes its
statistics from the input itself along axes over which the features of I_k are constant (BatchNorm
in batch-statistics mode fed copies of I_k, on an MLP or on a CNN whose convolutions keep a
constant map constant), each normalised feature is (h - mean) / sqrt(var + eps) = 0, so the
network outputs its *bias path* b whatever k is, and pi(I_k) = softmax(b).

The bias path b is what the network outputs when every normalised feature is zero, i.e. when every
norm layer outputs its shift beta. Per architecture (lddyn.models):

- MLP (linear -> norm -> ReLU, twice -> head): b = W_head ReLU(beta_2) + b_head.
- small CNN (conv -> BN -> ReLU blocks -> average pool -> head): the last BN outputs the constant map
  beta_3, pooling keeps it, so b = W_head ReLU(beta_3) + b_head.
- WRN-28-2 (pre-activation blocks, final BN -> LeakyReLU -> pool -> head):
  b = W_head LeakyReLU(beta_final) + b_head; the residual sums before the final BN are functions
  of normalised features only, so they collapse with them.
- no normalisation: there is no normalised feature; b is the output at the zero image (the path of
  the biases alone), so the comparison says how far pi(I_k) moves from pi(I_0).

``bias_path_logits`` computes b generically by replacing every norm layer's output with its shift
(forward hooks) and feeding a zero image, which equals the closed forms above.

Where the assumptions do not hold the check reports what happens instead: running statistics
leave BN affine in k (invariance fails), LayerNorm normalises across the features of one sample,
which the first linear layer does not make constant (fails), zero padding makes border pixels of a
convolved solid image differ from the interior, so batch statistics of the map are not those of a
constant (approximately: the scale of k is normalised away, its sign is not).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import pandas as pd
import torch
from torch import Tensor, nn

from lddyn.models import build_model

NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)
DEFAULT_GRID = (-2.0, -0.5, 0.0, 0.5, 2.0)
EXACT_TOL = 1e-9  # float64 forwards: a centred-logit change above this is not rounding
APPROX_REL = 0.25  # moves by at most this share of the logits' spread over noise images


@dataclass(frozen=True)
class Case:
    """One network and forward mode; ``inside`` says whether Proposition 3's assumptions hold."""

    name: str
    model: str
    norm: str
    train: bool  # True: batch statistics; False: running statistics
    image_shape: tuple[int, int, int]
    inside: bool
    why: str  # what the assumptions predict, or which one is broken and what that does
    padding: str = "zeros"
    bn_eps: float = 1e-5
    num_classes: int = 10


DIGITS = (1, 8, 8)
CIFAR = (3, 32, 32)
CASES: tuple[Case, ...] = (
    Case("mlp BN-batch", "mlp", "batch", True, DIGITS, True,
         "batch statistics of copies of I_k zero every normalised feature"),
    Case("mlp BN-running", "mlp", "batch", False, DIGITS, False,
         "running statistics do not normalise the input away: BN is affine in k"),
    Case("mlp LayerNorm", "mlp", "layer", True, DIGITS, False,
         "LayerNorm normalises across features, and W*1 + c is not constant across them: "
         "the features keep a k-dependent direction"),
    Case("mlp no-norm", "mlp", "none", True, DIGITS, False,
         "nothing normalises: the logits are piecewise linear in k"),
    Case("cnn BN-batch", "cnn", "batch", True, DIGITS, False,
         "zero padding makes border pixels differ, so a solid map is not constant: "
         "the scale of k is normalised away, its sign and the border pattern are not"),
    Case("cnn BN-batch repl-pad", "cnn", "batch", True, DIGITS, True,
         "replicate padding keeps a solid map constant: every normalised feature is zero",
         padding="replicate"),
    Case("cnn BN-running", "cnn", "batch", False, DIGITS, False,
         "running statistics do not normalise the input away: BN is affine in k"),
    Case("wrn28_2 BN-batch", "wrn28_2", "batch", True, CIFAR, False,
         "zero padding makes border pixels differ (a smaller share of a 32x32 map, but stride-2 "
         "stages shrink the maps): the scale of k is normalised away, its sign is not"),
    Case("wrn28_2 BN-batch repl-pad", "wrn28_2", "batch", True, CIFAR, False,
         "exact in exact arithmetic, but a BN with zero batch variance multiplies 1-ulp pixel "
         "differences by about gamma/sqrt(eps); over 25 BNs rounding grows to a visible size",
         padding="replicate"),
    Case("wrn28_2 BN-batch repl-pad eps=0.1", "wrn28_2", "batch", True, CIFAR, True,
         "replicate padding keeps a solid map constant, and eps = 0.1 stops BN amplifying rounding",
         padding="replicate", bn_eps=0.1),
)  # fmt: skip


def make_model(case: Case, seed: int = 0) -> nn.Module:
    """The case's network in float64 with 'trained-ish' weights: random init plus perturbed
    norm shifts/scales, biases and running statistics, so that b is not trivially zero."""
    torch.manual_seed(seed)
    model = build_model(
        case.model,
        num_classes=case.num_classes,
        image_shape=case.image_shape,
        norm=case.norm,
        bn_eps=case.bn_eps,
    ).double()
    perturb(model, torch.Generator().manual_seed(seed))
    if case.padding != "zeros":
        for conv in model.modules():
            if isinstance(conv, nn.Conv2d):
                conv.padding_mode = case.padding
    return model.train(case.train)


@torch.no_grad()
def perturb(model: nn.Module, gen: torch.Generator, scale: float = 0.5) -> None:
    """Random shifts of norm affine parameters, layer biases and BN running statistics, in place."""

    def noise(t: Tensor) -> Tensor:
        return torch.randn(t.shape, generator=gen, dtype=t.dtype) * scale

    for m in model.modules():
        if isinstance(m, NORMS) and m.weight is not None:
            m.weight.add_(noise(m.weight)).abs_()
            m.bias.copy_(noise(m.bias) * 2)
        elif isinstance(m, (nn.Linear, nn.Conv2d)) and m.bias is not None:
            m.bias.add_(noise(m.bias))
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            m.running_mean.copy_(noise(m.running_mean) * 2)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen, dtype=torch.float64) + 0.5)


@contextmanager
def zero_normalised_features(model: nn.Module) -> Iterator[None]:
    """Within the block every norm layer outputs its shift beta (zero normalised features)."""

    def hook(module: nn.Module, _inputs: tuple, out: Tensor) -> Tensor:
        if getattr(module, "bias", None) is None:
            return torch.zeros_like(out)
        shape = [1] * out.dim()
        channel = -1 if isinstance(module, nn.LayerNorm) else 1
        shape[channel] = -1
        return module.bias.view(shape).expand_as(out).clone()

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, NORMS)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def solid_logits(model: nn.Module, k: float, image_shape: Sequence[int]) -> Tensor:
    """Logits (C,) on I_k; two copies where BatchNorm1d needs two samples (same statistics)."""
    copies = 2 if any(isinstance(m, nn.BatchNorm1d) for m in model.modules()) else 1
    x = torch.full((copies, *image_shape), float(k), dtype=torch.float64)
    return model(x)["logits"][0]


@torch.no_grad()
def bias_path_logits(model: nn.Module, image_shape: Sequence[int]) -> Tensor:
    """b: the logits with every normalised feature set to zero, at the zero image."""
    with zero_normalised_features(model):
        return solid_logits(model, 0.0, image_shape)


def verdict(absolute: float, relative: float) -> str:
    """exact (rounding only) / approximate (moves less than APPROX_REL of the data's spread) / fails."""
    if absolute <= EXACT_TOL:
        return "exact"
    return "approximate" if relative <= APPROX_REL else "fails"


def centred(logits: Tensor) -> Tensor:
    """Logits minus their class mean: softmax cannot see a common shift, so neither do the spreads."""
    return logits - logits.mean(-1, keepdim=True)


def spread(logits: Tensor) -> float:
    """Largest change of any centred logit across the rows (colours k, or images)."""
    z = centred(logits)
    return float((z.max(0).values - z.min(0).values).max()) if len(z) else 0.0


@torch.no_grad()
def data_spread(model: nn.Module, image_shape: Sequence[int], n: int = 16, seed: int = 1) -> float:
    """The scale against which 'approximately' is judged: the spread over N(0, 1) noise images."""
    x = torch.randn(n, *image_shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return spread(model(x)["logits"])


def check_case(case: Case, grid: Sequence[float] = DEFAULT_GRID, seed: int = 0) -> dict:
    """One row: spread of the logits across k, distance to the bias path b, and two verdicts.

    Both are measured on centred logits and also relative to how much the same model's logits move
    across noise images. ``invariance`` judges the spread across k, ``bias_path`` the largest
    distance to b. A case inside the assumptions contradicts the proposition unless both are exact.
    """
    model = make_model(case, seed)
    logits = torch.stack([solid_logits(model, k, case.image_shape) for k in grid])  # (K, C)
    b = bias_path_logits(model, case.image_shape)
    scale = data_spread(model, case.image_shape)
    k_spread, dist = spread(logits), float((centred(logits) - centred(b)).abs().max())
    found = {"invariance": verdict(k_spread, k_spread / scale), "bias_path": verdict(dist, dist / scale)}
    return dict(
        case=case.name,
        inside=case.inside,
        logit_spread=k_spread,
        rel_spread=k_spread / scale,
        spread_k_pos=spread(logits[torch.tensor(grid) > 0]),
        dist_b=dist,
        rel_dist_b=dist / scale,
        prob_dist_b=float((logits.softmax(-1) - b.softmax(-1)).abs().max()),
        **found,
        contradicts=case.inside and set(found.values()) != {"exact"},
        why=case.why,
    )


def check_prop3(
    cases: Sequence[Case] = CASES, grid: Sequence[float] = DEFAULT_GRID, seed: int = 0
) -> pd.DataFrame:
    """One row per case; ``contradicts`` marks a case inside the assumptions that is not exact."""
    return pd.DataFrame([check_case(case, grid, seed) for case in cases])
