"""Chunked logit lens (``sae_hub.analysis.logit_lens``): time and peak memory next to the full matrix.

Targets (issue 6): the logit lens never materialises ``W_dec @ W_U`` ([d_sae, d_vocab]); its working memory is
bounded by the chunk (default budget 512 MiB) whatever d_sae is, and it is not slower than computing the
full matrix and reducing it.

Case A (fits in RAM both ways): d_sae=16384, d_vocab=50257, d_model=768 (GPT-2 small). The full matrix is
3.3 GB fp32; "unchunked" is the naive code: ``full = W_dec @ W_U``, ``topk``/bottom-k, and the four moments
over the full matrix (float32 torch ops, which need a few more full-size temporaries). "chunked" computes the
same outputs (moments: float32 two-pass, combined in float64). "chunked + enrichment" adds five token sets
(id masks of 50%, 20%, 5%, 2% and 1% of the vocabulary), which needs a full sort of every row; the unchunked
equivalent (sort values + int64 order + int64 running sums of 16384 x 50257) would need ~20 GB and is not run.

Case B (does not fit): d_sae=65536, d_vocab=256000, d_model=2304 (Gemma-2-2B-like). The full matrix would be
67 GB. The whole SAE and W_U are in memory; the lens runs on the first 128 and the first ``--b-features``
features (the working memory is capped by the budget, not by the number of features), and the full-SAE time
is extrapolated from the two runs (fixed cost + per-feature slope; the work is per feature). ``--cuda`` runs
the whole of case B on a GPU instead (and checks CPU/CUDA parity at a small size).

Each measurement is a fresh interpreter: inputs are built in setup, then the peak-RSS mark is reset
(``/proc/self/clear_refs``), so "growth" is the peak during the measured call minus the RSS before it.
Seeds fixed; 2 CPU threads unless the machine has more. Times on a shared machine are noisy: run it alone.

    python benchmarks/bench_logit_lens.py [--a-d-sae 16384] [--b-features 1024] [--skip-a] [--skip-b]
    python benchmarks/bench_logit_lens.py --cuda [--budget-mb 4096]   # on a GPU: parity + the full case B
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

_WRAP = """
import json, time
def _status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
import torch
torch.manual_seed(0)
{setup}
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
base = _status("VmRSS")
t = time.perf_counter()
{code}
dt = time.perf_counter() - t
print(json.dumps({{"s": dt, "base_mib": base, "peak_mib": _status("VmHWM"), "threads": torch.get_num_threads()}}))
"""

_SETUP_A = """
from sae_hub import SAE, SAEConfig
from sae_hub.analysis import logit_lens
d_sae, V, d = {d_sae}, {V}, {d}
sae = SAE(SAEConfig(architecture="relu", d_in=d, d_sae=d_sae, hook_name="blocks.6.hook_resid_post"))
W_U = torch.randn(d, V) * 0.02
g = torch.Generator().manual_seed(1)
sets = {{f"s{{p}}": torch.rand(V, generator=g) < p for p in (0.5, 0.2, 0.05, 0.02, 0.01)}}
"""

_NAIVE = """
with torch.no_grad():
    full = sae.W_dec @ W_U
    top = full.topk({k}, dim=1)
    bottom = full.topk({k}, dim=1, largest=False)
    mean = full.mean(1, keepdim=True)
    std = full.std(1, correction=0, keepdim=True)
    z = (full - mean) / std
    skew = z.pow(3).mean(1)
    kurt = z.pow(4).mean(1) - 3
    del z, full
"""

_CHUNKED = "r = logit_lens(sae, W_U, k={k}, builtin_sets=False{sets}{features})"


def run(setup: str, code: str) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-c", _WRAP.format(setup=setup, code=code)], capture_output=True,
                         text=True)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    r = json.loads(out.stdout.strip().splitlines()[-1])
    r["growth_mib"] = r["peak_mib"] - r["base_mib"]
    return r


def line(name: str, r: dict[str, float], extra: str = "") -> None:
    print(f"  {name:34s} {r['s']:8.1f} s   peak growth {r['growth_mib']:8.0f} MiB   "
          f"(RSS before {r['base_mib']:6.0f} MiB){extra}", flush=True)


def case_a(args: argparse.Namespace) -> None:
    d_sae, V, d, k = args.a_d_sae, 50257, 768, 10
    full_mib = d_sae * V * 4 / 2**20
    print(f"Case A: d_sae={d_sae}, d_vocab={V}, d_model={d}; full matrix {full_mib:,.0f} MiB fp32", flush=True)
    setup = _SETUP_A.format(d_sae=d_sae, V=V, d=d)
    naive = run(setup, _NAIVE.format(k=k))
    line("unchunked (full matrix)", naive, f"   = {naive['growth_mib'] / full_mib:.2f}x the full matrix")
    chunked = run(setup, _CHUNKED.format(k=k, sets="", features=""))
    line("chunked (same outputs)", chunked,
         f"   time {chunked['s'] / naive['s']:.2f}x, memory {chunked['growth_mib'] / naive['growth_mib']:.3f}x"
         " of unchunked")
    enr = run(setup, _CHUNKED.format(k=k, sets=", token_sets=sets", features=""))
    line("chunked + 5-set enrichment", enr, f"   time {enr['s'] / naive['s']:.2f}x of unchunked (no enrichment)")
    print(f"  threads: {naive['threads']}", flush=True)


def case_b(args: argparse.Namespace) -> None:
    d_sae, V, d, k = 65536, 256000, 2304, 10
    print(f"Case B: d_sae={d_sae}, d_vocab={V}, d_model={d}; full matrix {d_sae * V * 4 / 1e9:.1f} GB fp32 "
          "(not materialised)", flush=True)
    setup = _SETUP_A.format(d_sae=d_sae, V=V, d=d)
    n1, n2 = 128, args.b_features
    floor = run(setup, f"with torch.no_grad():\n    y = sae.W_dec[:{n2}] @ W_U")
    line(f"matmul alone, {n2} features (floor)", floor)
    for label, sets in (("chunked", ""), ("chunked + enrichment", ", token_sets=sets")):
        r1 = run(setup, _CHUNKED.format(k=k, sets=sets, features=f", features=range({n1})"))
        line(f"{label}, {n1} features", r1)
        r2 = run(setup, _CHUNKED.format(k=k, sets=sets, features=f", features=range({n2})"))
        per = max(r2["s"] - r1["s"], 0.0) / (n2 - n1)  # per-feature cost, without the fixed part
        fixed = max(r1["s"] - per * n1, 0.0)
        total_min = (fixed + per * d_sae) / 60
        line(f"{label}, {n2} features", r2,
             f"   = {r2['s'] / floor['s']:.2f}x the bare matmul -> {per * 1e3:.1f} ms/feature + {fixed:.1f} s "
             f"fixed: all {d_sae} ~{total_min:.0f} min")
    print(f"  the W_U (d_model x d_vocab fp32) alone is {d * V * 4 / 2**20:,.0f} MiB; the SAE "
          f"{2 * d * d_sae * 4 / 2**20:,.0f} MiB; both are in 'RSS before'", flush=True)


def case_cuda(args: argparse.Namespace) -> None:
    """On a GPU: CPU/CUDA parity at a small size, then the whole d_sae=65536 x d_vocab=256000 lens."""
    import torch

    from sae_hub import SAE, SAEConfig
    from sae_hub.analysis import logit_lens

    dev = torch.device("cuda")
    print(f"CUDA: {torch.cuda.get_device_name(0)}, torch {torch.__version__}", flush=True)
    torch.manual_seed(0)
    d_sae, V, d = 512, 50257, 768
    sae = SAE(SAEConfig(architecture="relu", d_in=d, d_sae=d_sae, hook_name="blocks.6.hook_resid_post"))
    W_U = torch.randn(d, V) * 0.02
    g = torch.Generator().manual_seed(1)
    sets = {f"s{p}": torch.rand(V, generator=g) < p for p in (0.5, 0.2, 0.05, 0.02, 0.01)}
    cpu = logit_lens(sae, W_U, builtin_sets=False, token_sets=sets)
    gpu = logit_lens(sae.to(dev), W_U.to(dev), builtin_sets=False, token_sets=sets)
    same_top = (cpu.top_ids == gpu.top_ids).float().mean().item()
    dm = (cpu.moments - gpu.moments).abs()
    dm[:, :2] /= cpu.moments[:, 1:2]  # mean and std relative to the std; skewness, kurtosis absolute
    worst = ", ".join(f"{n} {v:.1e}" for n, v in zip(("mean/std", "std/std", "skew", "kurt"),
                                                      dm.max(0).values.tolist(), strict=True))
    print(f"  parity (d_sae={d_sae}, V={V}): top-k ids equal {same_top:.4%}, max |top value diff| "
          f"{(cpu.top_values - gpu.top_values).abs().max().item():.2e}, max moment diffs: {worst}, "
          f"max |enrichment diff| {(cpu.enrichment - gpu.enrichment).abs().max().item():.2e}", flush=True)

    d_sae, V, d = 65536, 256000, 2304
    sae = SAE(SAEConfig(architecture="relu", d_in=d, d_sae=d_sae), device=dev)
    W_U = torch.randn(d, V, device=dev) * 0.02
    sets = {f"s{p}": (torch.rand(V, generator=g) < p) for p in (0.5, 0.2, 0.05, 0.02, 0.01)}
    for label, kw in (("chunked", {}), ("chunked + 5-set enrichment", {"token_sets": sets})):
        for budget in (512, args.budget_mb):
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            t = time.perf_counter()
            logit_lens(sae, W_U, builtin_sets=False, memory_budget_mb=budget, **kw)
            torch.cuda.synchronize()
            dt = time.perf_counter() - t
            growth = (torch.cuda.max_memory_allocated() - base) / 2**20
            print(f"  {label:28s} all {d_sae} features, budget {budget:5d} MiB: {dt:7.1f} s, peak GPU growth "
                  f"{growth:7.0f} MiB (full matrix would be {d_sae * V * 4 / 2**30:.1f} GiB)", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--a-d-sae", type=int, default=16384)
    ap.add_argument("--b-features", type=int, default=1024)
    ap.add_argument("--skip-a", action="store_true")
    ap.add_argument("--skip-b", action="store_true")
    ap.add_argument("--cuda", action="store_true", help="run the GPU parity + full case B instead")
    ap.add_argument("--budget-mb", type=int, default=4096, help="second memory budget tried with --cuda")
    args = ap.parse_args()
    if args.cuda:
        case_cuda(args)
        return
    print(f"cpus: {os.cpu_count()}, load average at start: {os.getloadavg()[0]:.1f}", flush=True)
    t = time.perf_counter()
    if not args.skip_a:
        case_a(args)
    if not args.skip_b:
        case_b(args)
    print(f"total {time.perf_counter() - t:.0f} s", flush=True)


if __name__ == "__main__":
    main()
