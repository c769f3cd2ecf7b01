"""eNTK and step-decomposition benchmark: lddyn against the PyTorch NTK-tutorial recipes.

One run, one machine, the same models and inputs for every method:

* digits CNN (``build_model("cnn", num_classes=10, image_shape=(1, 8, 8))``) at O=32 x B=256;
* WRN-28-2 at CIFAR size (3x32x32) at O in {8, 32} x B in {64, 256} (``--quick``: 8 x 64);
* the grouped decomposition on the CNN: 10 groups (one backward each) + one vmapped JVP at the
  32 observations, the total alone (one backward + one JVP), and a plain training
  forward+backward for reference.

Peers are the two ``torch.func`` recipes of the PyTorch "Neural Tangent Kernels" tutorial,
copied below: Jacobian contraction (vmap(jacrev) + einsum) and NTK-vector products
(vmap(vmap(vjp -> jvp))). The NTK-vector-product recipe vmaps over all (x1, x2) pairs at once
and would hold N1·N2·C parameter-sized rows (~31 GB for the CNN at 32 x 256), so it runs one
x1 row at a time here; it is skipped on WRN (N1·N2·C single-sample VJP+JVP passes).

Measurements. Each case runs in a fresh subprocess: build model and inputs, one warm-up call at
the same sizes (first touches of memory and oneDNN primitive creation are slow on this VM),
then ``--repeats`` timed calls; time = the fastest. Memory = peak RSS (``ru_maxrss``) minus the
RSS after model and inputs were built: the whole process, torch allocations included. GFLOP/s
counts the useful work of a dense Jacobian contraction, 2·N1·C·N2·C·P, for every method, against
the float32 matmul peak (2048^3 GEMM) measured at the start of the same run. Cases whose peer
would need more than 60% of available RAM (Jacobians of (N1+N2)·C·P floats) are skipped.

    python bench/bench_entk.py            # full
    python bench/bench_entk.py --quick    # CNN + WRN at 8 x 64
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.func import functional_call, jacrev, jvp, vjp, vmap

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lddyn.dynamics import decompose_step, empirical_ntk, group_gradients  # noqa: E402
from lddyn.losses import LossTerm  # noqa: E402
from lddyn.models import build_model  # noqa: E402

MODELS = {"cnn": (1, 8, 8), "wrn28_2": (3, 32, 32)}
LDDYN = ("lddyn:structured", "lddyn:jacobian", "lddyn:ntk_vp")
PEERS = ("torch.func:jacobian", "torch.func:ntk_vp")


# --- the tutorial's recipes ---------------------------------------------------------------------


def tutorial_jacobian_contraction(fnet_single, params, x1, x2):  # noqa: ANN001, ANN201
    jac1 = vmap(jacrev(fnet_single), (None, 0))(params, x1)
    jac1 = [j.flatten(2) for j in jac1.values()]
    jac2 = vmap(jacrev(fnet_single), (None, 0))(params, x2)
    jac2 = [j.flatten(2) for j in jac2.values()]
    result = torch.stack([torch.einsum("Naf,Mbf->NMab", j1, j2) for j1, j2 in zip(jac1, jac2, strict=True)])
    return result.sum(0)


def tutorial_ntk_vps(func, params, x1, x2):  # noqa: ANN001, ANN201
    def get_ntk(x1, x2):  # noqa: ANN001, ANN202
        def func_x1(params):  # noqa: ANN001, ANN202
            return func(params, x1)

        def func_x2(params):  # noqa: ANN001, ANN202
            return func(params, x2)

        output, vjp_fn = vjp(func_x1, params)

        def get_ntk_slice(vec):  # noqa: ANN001, ANN202
            vjps = vjp_fn(vec)
            _, jvps = jvp(func_x2, (params,), vjps)
            return jvps

        basis = torch.eye(output.numel(), dtype=output.dtype, device=output.device).view(output.numel(), -1)
        return vmap(get_ntk_slice)(basis)

    return vmap(vmap(get_ntk, (None, 0)), (0, None))(x1, x2)


def tutorial_ntk_vps_rowwise(func, params, x1, x2):  # noqa: ANN001, ANN201
    return torch.cat([tutorial_ntk_vps(func, params, x1[i : i + 1], x2) for i in range(len(x1))])


# --- one case, in a child process ---------------------------------------------------------------


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def setup(case: dict) -> tuple:
    torch.manual_seed(0)
    model = build_model(case["model"], num_classes=10, image_shape=MODELS[case["model"]]).eval()
    x1 = torch.randn(case["o"], *MODELS[case["model"]])
    x2 = torch.randn(case["b"], *MODELS[case["model"]])
    return model, x1, x2


def kernel_call(case: dict, model: torch.nn.Module, x1: torch.Tensor, x2: torch.Tensor):  # noqa: ANN201
    method = case["method"]
    if method.startswith("lddyn:"):
        impl = method.split(":")[1]
        return lambda: empirical_ntk(model, x1, x2, impl=impl, memory_budget_mb=case["budget_mb"])
    params = {k: v.detach() for k, v in model.named_parameters()}

    def fnet_single(params, x):  # noqa: ANN001, ANN202
        return functional_call(model, params, (x.unsqueeze(0),))["logits"].squeeze(0)

    if method == "torch.func:jacobian":
        return lambda: tutorial_jacobian_contraction(fnet_single, params, x1, x2)
    return lambda: tutorial_ntk_vps_rowwise(fnet_single, params, x1, x2)


def training_terms(model: torch.nn.Module, x: torch.Tensor, groups: int) -> list[LossTerm]:
    """One supervised term over B samples from a train-mode forward (BN batch statistics)."""
    model.train()
    z = model(x)["logits"]
    y = torch.arange(len(x)) % groups
    n = len(x)
    return [
        LossTerm("sup", z, F.one_hot(y, z.shape[1]).float(), torch.ones(n), float(n), torch.arange(n), y, y,
                 torch.zeros(n, dtype=torch.long))
    ]


def decomposition_call(case: dict, model: torch.nn.Module, x_obs: torch.Tensor, x_train: torch.Tensor):  # noqa: ANN201
    if case["method"] == "train-step":
        def step() -> None:
            model.zero_grad(set_to_none=True)
            sum(t.loss() for t in training_terms(model, x_train, 10)).backward()
        return step
    terms = training_terms(model, x_train, 10)
    by = ("source_class",) if case["method"] == "lddyn:grouped" else ()

    def run():  # noqa: ANN202
        grads = group_gradients(model, terms, by, with_total=False)
        return decompose_step(model, terms, x_obs, lr=0.1, by=by, grads=grads)

    return run


def run_case(case: dict) -> dict:
    torch.set_num_threads(case["threads"])
    model, x1, x2 = setup(case)
    call = (decomposition_call if case["kind"] == "decompose" else kernel_call)(case, model, x1, x2)
    base = rss_mb()
    call()  # warm-up at the same sizes
    times = []
    for _ in range(case["repeats"]):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {**case, "time_s": min(times), "times": times, "peak_mb": peak - base}


# --- the driver ---------------------------------------------------------------------------------


def matmul_peak(threads: int) -> float:
    torch.set_num_threads(threads)
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(5))
    return 2 * 2048**3 / best / 1e9


def _timed(fn) -> float:  # noqa: ANN001
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def available_mb() -> float:
    with open("/proc/meminfo") as f:
        info = dict(line.split(":", 1) for line in f)
    return int(info["MemAvailable"].split()[0]) / 1024


def num_params(name: str) -> int:
    return sum(p.numel() for p in build_model(name, num_classes=10, image_shape=MODELS[name]).parameters())


def cases(args: argparse.Namespace) -> list[dict]:
    common = {"threads": args.threads, "repeats": args.repeats, "budget_mb": args.budget_mb}
    out = [{**common, "kind": "ntk", "model": "cnn", "o": 32, "b": 256, "method": m} for m in LDDYN + PEERS]
    sizes = [(8, 64)] if args.quick else [(8, 64), (8, 256), (32, 64), (32, 256)]
    for o, b in sizes:
        for m in ("lddyn:structured", "lddyn:jacobian", "torch.func:jacobian"):
            out.append({**common, "kind": "ntk", "model": "wrn28_2", "o": o, "b": b, "method": m})
    for m in ("lddyn:grouped", "lddyn:total", "train-step"):
        out.append({**common, "kind": "decompose", "model": "cnn", "o": 32, "b": 256, "method": m})
    return out


def skip_reason(case: dict) -> str | None:
    """Skip a dense-Jacobian method whose Jacobians alone would not fit in 60% of free RAM."""
    if case["kind"] != "ntk" or case["method"] == "lddyn:structured":
        return None
    if case["method"] == "lddyn:jacobian":
        return None  # chunked under the budget
    need = (case["o"] + case["b"]) * 10 * num_params(case["model"]) * 4 / 2**20
    if need > 0.6 * available_mb():
        return f"skipped: Jacobians need ~{need / 1024:.0f} GB"
    return None


def spawn(case: dict, timeout: float) -> dict:
    reason = skip_reason(case)
    if reason:
        return {**case, "error": reason}
    cmd = [sys.executable, __file__, "--case", json.dumps(case)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {**case, "error": f"timeout > {timeout:.0f} s"}
    if proc.returncode != 0:
        return {**case, "error": f"exit {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def report(results: list[dict], peak: float) -> None:
    print(f"float32 matmul peak: {peak:.0f} GFLOP/s; threads={results[0]['threads']}")
    header = f"{'model':8} {'O':>3} {'B':>4} {'method':20} {'time s':>8} {'peak MB':>8} {'x best peer':>11}"
    print(header + f" {'mem/peer':>8} {'GFLOP/s':>8} {'%peak':>6}")
    for r in results:
        key = (r["kind"], r["model"], r["o"], r["b"])
        peers = [p for p in results if (p["kind"], p["model"], p["o"], p["b"]) == key and p["method"] in PEERS]
        peers = [p for p in peers if "time_s" in p]
        line = f"{r['model']:8} {r['o']:>3} {r['b']:>4} {r['method']:20}"
        if "error" in r:
            print(f"{line} {r['error']}")
            continue
        best = min(peers, key=lambda p: p["time_s"]) if peers else None
        ratio = f"{r['time_s'] / best['time_s']:.2f}" if best else "-"
        mem = f"{r['peak_mb'] / best['peak_mb']:.2f}" if best and best["peak_mb"] > 0 else "-"
        gf = _gflops(r) if r["kind"] == "ntk" else None
        gfs = f"{gf:8.1f} {100 * gf / peak:6.1f}" if gf else f"{'-':>8} {'-':>6}"
        print(f"{line} {r['time_s']:8.3f} {r['peak_mb']:8.0f} {ratio:>11} {mem:>8} {gfs}")


def _gflops(r: dict) -> float:
    return 2 * r["o"] * 10 * r["b"] * 10 * num_params(r["model"]) / r["time_s"] / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="WRN at O=8, B=64 only")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--budget-mb", type=float, default=1024.0, help="lddyn memory_budget_mb")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per case")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--only", default="", help="run cases whose 'model:method' contains this")
    ap.add_argument("--case", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.case:
        print(json.dumps(run_case(json.loads(args.case))))
        return
    print(f"load average before: {os.getloadavg()}")
    peak = matmul_peak(args.threads)
    results = []
    for case in cases(args):
        if args.only in f"{case['model']}:{case['method']}":
            results.append(spawn(case, args.timeout))
            print(json.dumps({k: v for k, v in results[-1].items() if k != "times"}), flush=True)
    report(results, peak)
    print(f"load average after: {os.getloadavg()}")
    if args.json:
        args.json.write_text(json.dumps({"matmul_gflops": peak, "results": results}, indent=1))


if __name__ == "__main__":
    main()
