"""CUDA check of the core SAE (run where a GPU is present; CI has none, so the test suite covers CPU only).

1. Parity: every real-library fixture in tests/fixtures loads with ``device="cuda"`` and reproduces the
   library's codes/recon within 1e-5 (fp32; TF32 matmuls are switched off for this part).
2. bf16 on CUDA: thresholds and top-k are decided in float32 (the planted case where bf16 arithmetic would
   flip ``z > threshold``), and the sparse top-k path equals the dense one.
3. Throughput of encode+decode at d_in=2304, d_sae=16384, batch 4096: dense decode vs the sparse top-k path
   (``encode_topk`` + ``decode_sparse``), fp32 and bf16, printed side by side.

    python benchmarks/check_cuda.py
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from sae_hub import SAE, SAEConfig

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"


def parity() -> None:
    from safetensors.torch import load_file

    torch.backends.cuda.matmul.allow_tf32 = False
    worst = 0.0
    cases = [p for lib in ("sae_lens", "llamascopium", "overcomplete", "nanosae") for p in (FIXTURES / lib).iterdir()]
    for case in sorted(cases):
        try:
            sae = SAE.load_from_disk(case, device="cuda")
        except Exception as e:  # batchtopk llamascopium refuses by design
            print(f"  {case.parent.name}/{case.name:28s} refused: {type(e).__name__}")
            continue
        ref = load_file(case / "reference.safetensors")
        x = ref.get("x").cuda()
        with torch.no_grad():
            codes = sae.encode(x)
            recon = sae.decode(codes)
        key = "codes"
        err_c = (codes.cpu() - ref[key]).abs().max().item()
        err_r = (recon.cpu() - ref["recon"]).abs().max().item()
        worst = max(worst, err_c, err_r)
        print(f"  {case.parent.name}/{case.name:28s} codes {err_c:.1e} recon {err_r:.1e}")
    print(f"parity on CUDA: worst max-abs error {worst:.2e} ({'ok' if worst <= 1e-5 else 'FAIL'})")


def bf16_checks() -> None:
    sae = SAE(SAEConfig(architecture="jumprelu", d_in=1, d_sae=1, dtype="bfloat16"), device="cuda")
    with torch.no_grad():
        sae.W_enc.fill_(2.0**-9)
        sae.b_enc.fill_(1.0)
        sae.threshold.fill_(1.0)
        fired = sae.encode(torch.ones(1, 1, device="cuda")).item() > 0
    print(f"bf16 threshold decided in float32 on CUDA: {'ok' if fired else 'FAIL'}")
    topk = SAE(SAEConfig(architecture="topk", d_in=256, d_sae=4096, k=32, apply_b_dec_to_input=True,
                         dtype="bfloat16"), device="cuda")
    x = torch.randn(512, 256, device="cuda")
    with torch.no_grad():
        v, i = topk.encode_topk(x)
        dense = topk.encode(x)
        same_sel = torch.equal(torch.zeros_like(dense).scatter(-1, i, v), dense)
        diff = (topk.decode_sparse(v, i).float() - topk.decode(dense).float()).abs().max().item()
    print(f"bf16 sparse top-k path == dense on CUDA: selection {'ok' if same_sel else 'FAIL'}, decode diff {diff:.1e}")


def throughput() -> None:
    torch.backends.cuda.matmul.allow_tf32 = True
    print("encode+decode, d_in=2304, d_sae=16384, k=64, batch 4096 (tokens/s, median of 20):")
    for dtype in ("float32", "bfloat16"):
        sae = SAE(SAEConfig(architecture="topk", d_in=2304, d_sae=16384, k=64, dtype=dtype), device="cuda")
        x = torch.randn(4096, 2304, device="cuda")

        def dense(sae: SAE = sae, x: torch.Tensor = x) -> torch.Tensor:
            return sae.decode(sae.encode(x))

        def sparse(sae: SAE = sae, x: torch.Tensor = x) -> torch.Tensor:
            return sae.decode_sparse(*sae.encode_topk(x))

        res = {}
        for name, fn in (("dense", dense), ("sparse", sparse)):
            with torch.no_grad():
                for _ in range(3):
                    fn()
                torch.cuda.synchronize()
                times = []
                for _ in range(20):
                    t = time.perf_counter()
                    fn()
                    torch.cuda.synchronize()
                    times.append(time.perf_counter() - t)
            res[name] = 4096 / sorted(times)[len(times) // 2]
        print(f"  {dtype:9s} dense {res['dense']:12,.0f}  sparse {res['sparse']:12,.0f}  "
              f"sparse/dense {res['sparse'] / res['dense']:.2f}")


def main() -> None:
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device")
    print(torch.cuda.get_device_name(), "torch", torch.__version__)
    parity()
    bf16_checks()
    throughput()


if __name__ == "__main__":
    main()
