"""Loading a ~300 MB native SAE (d_in 2304, d_sae 16384, fp32) next to ``safetensors.torch.load_file``.

Targets (issue 2): ``SAE.load_from_disk`` <= 2x the time of ``load_file`` on the same file, and peak RSS
growth <= 1.1x the file size. Each sample is a fresh interpreter with the file in the page cache (one warm-up
read first). "load" is the call alone (sae-hub maps the file, so pages are read on first touch); "load+touch"
also reads every weight once (a full forward pass touches them all), so it counts what the weights cost in RAM.

    python benchmarks/bench_load.py [--d-in 2304] [--d-sae 16384] [--repeat 5]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from _util import run_fresh


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--d-in", type=int, default=2304)
    ap.add_argument("--d-sae", type=int, default=16384)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()

    import torch

    from sae_hub import SAE, SAEConfig

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "sae"
        cfg = SAEConfig(architecture="jumprelu", d_in=args.d_in, d_sae=args.d_sae)
        SAE(cfg).save_pretrained(folder)
        weights = folder / "sae_weights.safetensors"
        size_mib = weights.stat().st_size / 2**20
        weights.read_bytes()  # warm the page cache once for both contenders
        setup_st = "import torch; from safetensors.torch import load_file"
        setup_sh = "import torch; from sae_hub import SAE"
        touch = "\n_ = sum(float(t.float().sum()) for t in {})"
        cases = {
            "safetensors load_file": (setup_st, f"sd = load_file({str(weights)!r})", "sd.values()"),
            "SAE.load_from_disk": (setup_sh, f"sae = SAE.load_from_disk({str(folder)!r})", "sae.parameters()"),
        }
        res = {}
        for name, (setup, code, params) in cases.items():
            res[name] = run_fresh(code, setup=setup, repeat=args.repeat)
            res[name + " +touch"] = run_fresh(code + touch.format(params), setup=setup, repeat=args.repeat)
        from safetensors.torch import load_file

        SAE.load_from_disk(folder)  # one-time costs (loader discovery) out of the steady-state numbers
        steady = {"safetensors load_file": lambda: load_file(str(weights)),
                  "SAE.load_from_disk": lambda: SAE.load_from_disk(folder)}
        per_call = {name: _median_call_s(fn) for name, fn in steady.items()}
    del torch
    print(f"file: {size_mib:.0f} MiB (d_in={args.d_in}, d_sae={args.d_sae}, fp32)")
    print("steady state, in one process (median of 7 x 50 calls, interleaved):")
    for name, t in per_call.items():
        print(f"  {name:28s} {t * 1e6:9.0f} us")
    ratio = per_call["SAE.load_from_disk"] / per_call["safetensors load_file"]
    print(f"  time ratio SAE.load_from_disk / load_file: {ratio:.2f}  (target <= 2)")
    print("first load in a fresh process (median of fresh interpreters):")
    print(f"{'case':30s} {'time ms':>9s} {'RSS growth MiB':>15s} {'growth/file':>12s}")
    for name, r in res.items():
        print(f"{name:30s} {r['code_s'] * 1000:9.1f} {r['growth_mib']:15.1f} {r['growth_mib'] / size_mib:12.2f}")
    st, sh = res["safetensors load_file"], res["SAE.load_from_disk"]
    print(f"time ratio  SAE.load_from_disk / load_file (first call, incl. loader discovery): "
          f"{sh['code_s'] / st['code_s']:.2f}")
    print(f"time ratio  with every weight read: "
          f"{res['SAE.load_from_disk +touch']['code_s'] / res['safetensors load_file +touch']['code_s']:.2f}")
    print(f"RSS growth  SAE.load_from_disk / file size: {sh['growth_mib'] / size_mib:.3f}  (target <= 1.1)")
    print(f"RSS growth  with every weight read / file size: "
          f"{res['SAE.load_from_disk +touch']['growth_mib'] / size_mib:.3f}  (target <= 1.1)")


def _median_call_s(fn: object, rounds: int = 7, calls: int = 50) -> float:
    import statistics
    import time

    samples = []
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(calls):
            fn()  # type: ignore[operator]
        samples.append((time.perf_counter() - t) / calls)
    return statistics.median(samples)


if __name__ == "__main__":
    main()
