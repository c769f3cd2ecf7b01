"""eNTK benchmark: lddyn against the PyTorch NTK-tutorial recipes.

One run, one machine, the same models and inputs for every method:

* digits CNN (``build_model("cnn", num_classes=10, image_shape=(1, 8, 8))``) at O=32 x B=256;
* WRN-28-2 at CIFAR size (3x32x32) at O in {8, 32} x B in {64, 256} (``--quick``: 8 x 64).

The recorder's step decomposition has its own benchmark (bench/bench_recorder.py).

Peers are the two ``torch.func`` recipes of the PyTorch "Neural Tangent Kernels" tutorial,
copied below: Jacobian contraction (vmap(jacrev) + einsum) and NTK-vector products
(vmap(vmap(vjp -> jvp))). The NTK-vector-product recipe vmaps over all (x1, x2) pairs at once
and would hold N1·N2·C parameter-sized rows (~31 GB for the CNN at 32 x 256), so it runs one
x1 row at a time here; it is skipped on WRN (N1·N2·C single-sample VJP+JVP passes).

Measurements. Time: all methods of one model and size run in one fresh subprocess; each is
called once to warm up (first touches of memory and oneDNN primitive creation are slow on this
VM), then ``--repeats`` rounds call every method in turn, so load from other jobs hits all
methods alike; time = the fastest round. Memory: one fresh subprocess per method and size calls
it once; peak RSS (``ru_maxrss``) minus the RSS after model and inputs were built, i.e. the whole
process including every torch allocation. GFLOP/s
counts the useful work of a dense Jacobian contraction, 2·N1·C·N2·C·P, for every method, against
the float32 matmul peak (2048^3 GEMM) measured at the start of the same run. Children inherit
the environment: torch's OpenMP defaults unless you set ``OMP_WAIT_POLICY`` (on a machine shared
with busy neighbours, ``OMP_WAIT_POLICY=PASSIVE`` keeps their spinning workers from slowing
small-op code by up to 10x; on an idle machine it slows small-op code instead). Cases whose peer
would need more than 60% of available RAM (Jacobians of (N1+N2)·C·P floats) are skipped.

    python bench/bench_entk.py            # full
    python bench/bench_entk.py --quick    # CNN + WRN at 8 x 64
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.func import functional_call, jacrev, jvp, vjp, vmap

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lddyn.dynamics import empirical_ntk  # noqa: E402
from lddyn.models import build_model  # noqa: E402

MODELS = {"cnn": (1, 8, 8), "wrn28_2": (3, 32, 32)}
LDDYN = ("lddyn:structured", "lddyn:jacobian")
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


def make_call(case: dict, method: str):  # noqa: ANN201
    """A zero-argument callable running ``method`` on the case's model and inputs."""
    torch.set_num_threads(case["threads"])
    model, x1, x2 = setup(case)
    one = {**case, "method": method}
    return kernel_call(one, model, x1, x2)


def run_memory(case: dict) -> dict:
    """Peak RSS increase of one call, alone in this process."""
    call = make_call(case, case["methods"][0])
    base = rss_mb()
    call()
    return {"peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base}


def run_timing(case: dict) -> dict:
    """Warm every method up once, then time them in interleaved rounds (noise hits all alike)."""
    calls = {m: make_call(case, m) for m in case["methods"]}
    for call in calls.values():
        call()
    times: dict[str, list[float]] = {m: [] for m in calls}
    for _ in range(case["repeats"]):
        for m, call in calls.items():
            times[m].append(_timed(call))
    return {"times": times}


# --- the driver ---------------------------------------------------------------------------------


def run_peak(case: dict) -> dict:
    """Float32 matmul peak: the best of 5 timed 2048^3 GEMMs, in GFLOP/s."""
    torch.set_num_threads(case["threads"])
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(5))
    return {"gflops": 2 * 2048**3 / best / 1e9}


def _timed(fn) -> float:  # noqa: ANN001
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def available_mb() -> float:
    with open("/proc/meminfo") as f:
        info = dict(line.split(":", 1) for line in f)
    return int(info["MemAvailable"].split()[0]) / 1024


@functools.cache
def num_params(name: str) -> int:
    return sum(p.numel() for p in build_model(name, num_classes=10, image_shape=MODELS[name]).parameters())


def groups(args: argparse.Namespace) -> list[dict]:
    """Benchmark groups: one model and size, the methods compared on it."""
    common = {"threads": args.threads, "budget_mb": args.budget_mb}
    out = [
        {
            **common,
            "kind": "ntk",
            "model": "cnn",
            "o": 32,
            "b": 256,
            "methods": list(LDDYN + PEERS),
            "repeats": args.repeats,
        }
    ]
    sizes = [(8, 64)] if args.quick else [(8, 64), (8, 256), (32, 64), (32, 256)]
    for o, b in sizes:
        methods = ["lddyn:structured", "lddyn:jacobian", "torch.func:jacobian"]
        out.append(
            {
                **common,
                "kind": "ntk",
                "model": "wrn28_2",
                "o": o,
                "b": b,
                "methods": methods,
                "repeats": args.wrn_repeats,
            }
        )
    return [g for g in out if any(args.only in f"{g['model']}:{m}" for m in g["methods"])]


def skip_reason(group: dict, method: str) -> str | None:
    """Skip a dense-Jacobian peer whose Jacobians alone would not fit in 60% of free RAM."""
    if method.startswith("lddyn:"):
        return None  # lddyn chunks under its memory budget
    need = (group["o"] + group["b"]) * 10 * num_params(group["model"]) * 4 / 2**20
    if need > 0.6 * available_mb():
        return f"skipped: its Jacobians need ~{need / 1024:.0f} GB"
    return None


def spawn(case: dict, mode: str, timeout: float) -> dict:
    cmd = [sys.executable, __file__, "--case", json.dumps({**case, "mode": mode})]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout > {timeout:.0f} s"}
    if proc.returncode != 0:
        return {"error": f"exit {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_group(group: dict, args: argparse.Namespace) -> list[dict]:
    """Timing in one process (interleaved), then memory in one process per method."""
    base = {k: v for k, v in group.items() if k != "methods"}
    wanted = [m for m in group["methods"] if args.only in f"{group['model']}:{m}"]
    runnable = [m for m in wanted if skip_reason(group, m) is None]
    timing = spawn({**group, "methods": runnable}, "timing", args.timeout) if runnable else {"times": {}}
    results = []
    for m in wanted:
        row = {**base, "method": m}
        if (reason := skip_reason(group, m)) or (reason := timing.get("error")):
            results.append({**row, "error": reason})
            continue
        mem = spawn({**group, "methods": [m]}, "memory", args.timeout)
        times = timing["times"][m]
        results.append(
            {**row, "time_s": min(times), "times": times, "peak_mb": mem.get("peak_mb", float("nan"))}
        )
        print(json.dumps({k: v for k, v in results[-1].items() if k != "times"}), flush=True)
    return results


def _same(a: dict, b: dict) -> bool:
    return (a["kind"], a["model"], a["o"], a["b"]) == (b["kind"], b["model"], b["o"], b["b"])


def report(results: list[dict], peak: float) -> None:
    """Table: speed-up = peer time / method time (>1: faster), mem = method / peer peak RSS."""
    print(f"float32 matmul peak: {peak:.0f} GFLOP/s; threads={results[0]['threads']}")
    print(
        f"{'model':8} {'O':>3} {'B':>4} {'method':20} {'time s':>8} {'peak MB':>8} {'x jac':>6}"
        f" {'mem/jac':>7} {'x best':>6} {'GFLOP/s':>8} {'%peak':>6}"
    )
    for r in results:
        line = f"{r['model']:8} {r['o']:>3} {r['b']:>4} {r['method']:20}"
        if "error" in r:
            print(f"{line} {r['error']}")
            continue
        peers = [p for p in results if _same(p, r) and p["method"] in PEERS and "time_s" in p]
        jac = next((p for p in peers if p["method"] == "torch.func:jacobian"), None)
        best = min(peers, key=lambda p: p["time_s"]) if peers else None
        x_jac = f"{jac['time_s'] / r['time_s']:6.2f}" if jac else f"{'-':>6}"
        mem = f"{r['peak_mb'] / jac['peak_mb']:7.2f}" if jac and jac["peak_mb"] > 0 else f"{'-':>7}"
        x_best = f"{best['time_s'] / r['time_s']:6.2f}" if best else f"{'-':>6}"
        gf = _gflops(r)
        gfs = f"{gf:8.1f} {100 * gf / peak:6.1f}" if gf else f"{'-':>8} {'-':>6}"
        print(f"{line} {r['time_s']:8.3f} {r['peak_mb']:8.0f} {x_jac} {mem} {x_best} {gfs}")


def _gflops(r: dict) -> float:
    return 2 * r["o"] * 10 * r["b"] * 10 * num_params(r["model"]) / r["time_s"] / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="WRN at O=8, B=64 only")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--repeats", type=int, default=3, help="timed rounds (digits CNN)")
    ap.add_argument("--wrn-repeats", type=int, default=1, help="timed rounds (WRN-28-2)")
    ap.add_argument("--budget-mb", type=float, default=1024.0, help="lddyn memory_budget_mb")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per case")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--only", default="", help="run cases whose 'model:method' contains this")
    ap.add_argument("--case", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.case:
        case = json.loads(args.case)
        runner = {"memory": run_memory, "timing": run_timing, "peak": run_peak}[case["mode"]]
        print(json.dumps(runner(case)))
        return
    policy = os.environ.get("OMP_WAIT_POLICY", "unset")
    print(f"load average before: {os.getloadavg()}, OMP_WAIT_POLICY={policy}")
    peak = spawn({"threads": args.threads}, "peak", args.timeout)["gflops"]
    results = [r for g in groups(args) for r in run_group(g, args)]
    report(results, peak)
    print(f"load average after: {os.getloadavg()}")
    if args.json:
        args.json.write_text(json.dumps({"matmul_gflops": peak, "results": results}, indent=1))


if __name__ == "__main__":
    main()
