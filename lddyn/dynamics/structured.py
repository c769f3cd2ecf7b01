"""Which layers' Jacobians are formed from activations and cotangents, and how (the plan).

Linear, Conv2d and norm-affine layers called once per forward are *sites* (``jacobian`` forms
their rows from inputs and output cotangents); anything else (a custom module with its own
``nn.Parameter``, grouped convolutions, a module called twice) takes the exact generic route,
per-sample ``jacrev``. ``build_plan`` routes every parameter; ``NTKPlan`` shows the routes.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.func import functional_call

from lddyn.dynamics.contract import gram_cost, jacobian_cost
from lddyn.dynamics.functional import Params
from lddyn.dynamics.observations import BATCH_NORMS, OWN, observing


@dataclass
class Site:
    """One layer handled structurally. ``route`` is "gram" or "jacobian" for a patch weight."""

    name: str
    module: nn.Module
    kind: str  # "patch" (Linear/Conv2d) or "norm"
    params: dict[str, str]  # role ("weight"/"bias") -> full parameter name, trainable only
    s: int = 1  # output positions
    k: int = 0  # patch length (inputs per output unit)
    o: int = 0  # output units (channels)
    route: str = "jacobian"


@dataclass(frozen=True)
class Route:
    """How one trainable parameter enters the kernel."""

    param: str
    module: str
    layer: str
    route: str  # "gram", "jacobian" (per-layer), "norm-affine", "bias", "generic"
    numel: int


@dataclass
class NTKPlan:
    """The implementation, each parameter's route, and the evaluation mode, for inspection."""

    impl: str
    routes: list[Route]
    mode: str = "normalisation layers in eval mode (running statistics); buffers never updated"
    sites: list[Site] = field(default_factory=list, repr=False)
    generic: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"eNTK plan: impl={self.impl}; {self.mode}"]
        lines += [f"  {r.param:<40} {r.layer:<14} {r.numel:>9}  {r.route}" for r in self.routes]
        return "\n".join(lines)


def structured_kind(module: nn.Module) -> str | None:
    """Structured kind of a module, or None when its parameters take the generic route."""
    if isinstance(module, nn.Linear):
        return "patch"
    if isinstance(module, nn.Conv2d):
        plain = module.groups == 1 and module.padding_mode == "zeros" and not isinstance(module.padding, str)
        return "patch" if plain else None
    if isinstance(module, BATCH_NORMS):
        return "norm" if module.affine else None
    if isinstance(module, (nn.LayerNorm, nn.GroupNorm)):
        return "norm"
    return None


def _own_trainable(module: nn.Module, prefix: str) -> dict[str, str]:
    pre = f"{prefix}." if prefix else ""
    return {n: pre + n for n, p in module.named_parameters(recurse=False) if p.requires_grad}


def _probe(model: nn.Module, params: Params, state: Params, x: Tensor) -> dict[str, tuple[int, tuple, tuple]]:
    """Calls, input shape and output shape of every module with own parameters, on one sample."""
    seen: dict[str, tuple[int, tuple, tuple]] = {}

    def hook(name: str):  # noqa: ANN202
        def fn(mod: nn.Module, args: tuple, out: Tensor) -> None:
            calls = seen.get(name, (0, (), ()))[0] + 1
            seen[name] = (calls, tuple(args[0].shape[1:]), tuple(out.shape[1:]))

        return fn

    handles = [
        m.register_forward_hook(hook(n))
        for n, m in model.named_modules()
        if any(True for _ in m.parameters(recurse=False))
    ]
    try:
        with torch.no_grad(), observing(model, OWN):  # shapes only: no buffer needed
            functional_call(model, (params, state), (x[:1],))
    finally:
        for h in handles:
            h.remove()
    return seen


def _site(name: str, module: nn.Module, kind: str, own: dict[str, str], shapes: tuple) -> Site:
    _, in_shape, out_shape = shapes
    site = Site(name, module, kind, own)
    if kind == "patch":
        site.o = out_shape[0] if isinstance(module, nn.Conv2d) else out_shape[-1]
        site.s = _numel(out_shape) // site.o
        site.k = module.weight[0].numel()
    return site


def build_plan(model: nn.Module, params: Params, state: Params, x: Tensor) -> NTKPlan:
    """Route every trainable parameter: structured sites where possible, generic otherwise."""
    shapes = _probe(model, params, state, x)
    sites, generic, routes = [], [], []
    for name, module in model.named_modules():
        own = _own_trainable(module, name)
        if not own:
            continue
        kind = structured_kind(module)
        calls = shapes.get(name, (0, (), ()))[0]
        if kind is None or calls != 1:  # unknown layer, unused, or weight sharing: exact generic path
            generic += list(own.values())
        else:
            sites.append(_site(name, module, kind, own, shapes[name]))
    plan = NTKPlan("structured", routes, sites=sites, generic=generic)
    _fill_routes(plan, model)
    return plan


_PLANS: weakref.WeakKeyDictionary[nn.Module, dict[tuple, NTKPlan]] = weakref.WeakKeyDictionary()


def cached_plan(model: nn.Module, params: Params, state: Params, x: Tensor) -> NTKPlan:
    """``build_plan`` once per model structure and input shape (a recorder asks at every step).

    The plan must not be changed by the caller (``choose_routes`` does: use ``build_plan``).
    """
    key = (
        tuple((n, id(m)) for n, m in model.named_modules()),
        tuple(params),
        tuple(x.shape[1:]),
        x.dtype,
        x.device,
    )
    plans = _PLANS.setdefault(model, {})
    if key not in plans:
        plans.clear()
        plans[key] = build_plan(model, params, state, x)
    return plans[key]


def _fill_routes(plan: NTKPlan, model: nn.Module) -> None:
    numel = {n: p.numel() for n, p in model.named_parameters()}
    layer = {
        f"{n}.{pn}" if n else pn: type(m).__name__
        for n, m in model.named_modules()
        for pn, _ in m.named_parameters(recurse=False)
    }
    plan.routes.clear()
    for site in plan.sites:
        for role, full in site.params.items():
            route = "norm-affine" if site.kind == "norm" else ("bias" if role == "bias" else site.route)
            plan.routes.append(Route(full, site.name, layer[full], route, numel[full]))
    for full in plan.generic:
        plan.routes.append(Route(full, full.rpartition(".")[0], layer[full], "generic", numel[full]))


def choose_routes(plan: NTKPlan, model: nn.Module, n1: int, n2: int, c: int) -> None:
    """Per patch weight, the cheaper of the Gram route and a per-layer Jacobian (by multiply-adds)."""
    for site in plan.sites:
        if site.kind == "patch" and "weight" in site.params:
            dims = (n1, n2, c, site.s, site.k, site.o)
            site.route = "gram" if gram_cost(*dims) < jacobian_cost(*dims) else "jacobian"
    _fill_routes(plan, model)


def jac_layout(plan: NTKPlan, params: Params) -> list[tuple[str, int]]:
    """(parameter, numel) of every Jacobian column block, in column order."""
    cols = []
    for site in plan.sites:
        for role, full in site.params.items():
            if not (site.kind == "patch" and role == "weight" and site.route == "gram"):
                cols.append((full, params[full].numel()))
    return cols + [(full, params[full].numel()) for full in plan.generic]


def bytes_per_sample(plan: NTKPlan, params: Params, c: int, itemsize: int) -> float:
    """Peak feature memory per sample: Jacobian columns, Gram features and the C cotangents."""
    jac = sum(n for _, n in jac_layout(plan, params)) * c
    patch = [s for s in plan.sites if s.kind == "patch"]
    gram = sum(s.s * (s.k + c * s.o) for s in patch if s.route == "gram")
    capture = sum(4 * s.s * s.o + s.s * s.k for s in patch)  # activations, deltas, one class of g, patches
    return float(itemsize * (jac + gram + capture) * 1.25)


def _numel(shape: tuple) -> int:
    out = 1
    for d in shape:
        out *= d
    return out
