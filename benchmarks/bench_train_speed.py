"""Training throughput: the trainer's TopK step next to a naive dense PyTorch TopK step, in the same run.

    python benchmarks/bench_train_speed.py                 # CPU, both sizes
    python benchmarks/bench_train_speed.py --device cuda   # the same on a GPU

The naive step is what most trainers do by default: dense encoder GEMM, relu, topk, scatter into a dense
[B, d_sae] code, dense decoder GEMM, MSE, full autograd, ``torch.optim.Adam`` (its default implementation). It is
also shown with fused Adam, so the ratio can be read with the optimiser difference taken out.

The trainer's step is ``Trainer.step`` itself (schedule, sparse encoder/decoder, unit-norm projection, fused
Adam, firing tracker, metric accumulators), timed once with an fp32 encoder GEMM and once with a bf16 one (fp32
master weights) where the device has fast bf16. Rounds alternate between the contenders and the median of the
per-round rates is reported, so a noisy neighbour slows both sides alike. Goal on CPU at d_in=768,
d_sae=16384, k=32, batch 2048: >= 6x the naive step.
"""

from __future__ import annotations

import os

# Before torch loads OpenMP: spinning worker threads turn every OpenMP barrier into a scheduler quantum when the
# cores are shared (on a loaded 2-core box, torch.sort of 65k indices took 190 ms instead of 1 ms). Both
# contenders run under the same setting; export OMP_WAIT_POLICY=ACTIVE to measure the other way.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Tensors of tens of MB are mmap'd fresh on every allocation; with 4 KB pages the page faults cost ~20% of a CPU
# step (both contenders allocate such tensors every step). PyTorch then asks for transparent huge pages.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from sae_hub.training.trainer import TrainConfig, Trainer


def cpu_has_fast_bf16() -> bool:
    """AVX512-BF16 or AMX: the CPUs where oneDNN runs bf16 GEMMs at about twice the fp32 rate."""
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        fn = getattr(torch.cpu, probe, None)
        if fn is not None and fn():
            return True
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def naive_step_fn(d: int, n: int, k: int, device: torch.device, fused: bool) -> Callable[[torch.Tensor], None]:
    g = torch.Generator().manual_seed(0)
    W_dec = F.normalize(torch.randn(n, d, generator=g), dim=-1)
    W_enc = torch.nn.Parameter(W_dec.T.contiguous().to(device))
    W_dec = torch.nn.Parameter(W_dec.to(device))
    b_enc = torch.nn.Parameter(torch.zeros(n, device=device))
    b_dec = torch.nn.Parameter(torch.zeros(d, device=device))
    opt = torch.optim.Adam([W_enc, b_enc, W_dec, b_dec], lr=1e-4, **({"fused": True} if fused else {}))

    def step(x: torch.Tensor) -> None:
        pre = F.relu((x - b_dec) @ W_enc + b_enc)
        vals, idx = pre.topk(k, dim=-1)
        f = torch.zeros_like(pre).scatter(-1, idx, vals)
        x_hat = f @ W_dec + b_dec
        loss = (x_hat - x).pow(2).sum(-1).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def trainer_step_fn(d: int, n: int, k: int, batch: int, device: torch.device,
                    bf16: bool) -> Callable[[torch.Tensor], None]:
    cfg = TrainConfig(architecture="topk", d_in=d, d_sae=n, k=k, batch_size=batch, steps=10**6, lr=1e-4,
                      lr_warmup_steps=0, log_every=0, device=str(device), encoder_bf16=bf16)
    tr = Trainer(cfg, torch.zeros(batch, d), progress=False)
    tr.initialise([torch.randn(batch, d, device=device)])
    return tr.step


def bench(d: int, n: int, k: int, batch: int, device: torch.device, rounds: int, steps: int,
          bf16: bool) -> dict[str, float]:
    xs = [torch.randn(batch, d, device=device) for _ in range(4)]
    contenders: dict[str, Callable[[torch.Tensor], None]] = {
        "naive (Adam default)": naive_step_fn(d, n, k, device, fused=False),
        "naive (fused Adam)": naive_step_fn(d, n, k, device, fused=True),
        "trainer fp32": trainer_step_fn(d, n, k, batch, device, bf16=False),
    }
    if bf16:
        contenders["trainer bf16 encoder"] = trainer_step_fn(d, n, k, batch, device, bf16=True)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    rates: dict[str, list[float]] = {name: [] for name in contenders}
    for fn in contenders.values():  # warm-up (allocator, oneDNN primitives, CUDA kernels)
        for x in xs[:2]:
            fn(x)
    sync()
    for _ in range(rounds):
        for name, fn in contenders.items():
            t = time.perf_counter()
            for i in range(steps):
                fn(xs[i % len(xs)])
            sync()
            rates[name].append(steps * batch / (time.perf_counter() - t))
    return {name: statistics.median(r) for name, r in rates.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=None, help="steps per round (default: 3 on CPU, 20 on CUDA)")
    ap.add_argument("--batch", type=int, default=2048)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--sizes", default="768x16384,512x4096", help="comma-separated d_in x d_sae")
    ap.add_argument("--no-bf16", action="store_true")
    args = ap.parse_args()
    device = torch.device(args.device)
    steps = args.steps or (20 if device.type == "cuda" else 3)
    bf16 = not args.no_bf16 and (device.type == "cuda" or cpu_has_fast_bf16())
    torch.set_flush_denormal(True)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    env = " ".join(f"{v}={os.environ.get(v)}" for v in ("OMP_WAIT_POLICY", "THP_MEM_ALLOC_ENABLE"))
    print(f"torch {torch.__version__}; {where}; {env}; "
          f"batch {args.batch}, k {args.k}; bf16 encoder: "
          f"{'yes' if bf16 else 'no (no fast bf16 here)'}; median of {args.rounds} rounds x {steps} steps")
    for size in args.sizes.split(","):
        d, n = (int(v) for v in size.lower().split("x"))
        r = bench(d, n, args.k, args.batch, device, args.rounds, steps, bf16)
        base, base_fused = r["naive (Adam default)"], r["naive (fused Adam)"]
        print(f"\nd_in={d} d_sae={n}")
        for name, rate in r.items():
            print(f"  {name:<22} {rate:>12,.0f} tok/s   {rate / base:5.2f}x naive   "
                  f"{rate / base_fused:5.2f}x naive+fused-Adam")


if __name__ == "__main__":
    main()
