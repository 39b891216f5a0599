"""Converting a ~300 MB checkpoint next to reading it, measured in the same run.

Target (issue 4): ``sae_hub.convert`` takes <= 2x the time to read the source. "Read" is the source format's
own reader materialising every array (``np.load`` for Gemma Scope's params.npz, ``safetensors.torch.load_file``
plus a touch of every tensor for a SAELens folder). Conversion = load + sha256 of the sources (provenance) +
write the native folder. Writing a new ~300 MB file is the floor of any conversion, so the time of one raw
write of the same bytes is printed too. The file is in the page cache for both (one warm-up read first). Median of 3.

    python benchmarks/bench_convert.py [--d-in 2304] [--d-sae 16384]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def _median(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--d-in", type=int, default=2304)
    ap.add_argument("--d-sae", type=int, default=16384)
    args = ap.parse_args()

    import numpy as np
    import torch
    from safetensors.torch import load_file

    from sae_hub import SAE, SAEConfig, convert

    d, n = args.d_in, args.d_sae
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_p = Path(tmp)
        npz_dir = tmp_p / "layer_12" / "width_16k" / "average_l0_82"
        npz_dir.mkdir(parents=True)
        arrays = {"W_enc": rng.standard_normal((d, n), dtype=np.float32),
                  "W_dec": rng.standard_normal((n, d), dtype=np.float32),
                  "b_enc": rng.standard_normal(n, dtype=np.float32),
                  "b_dec": rng.standard_normal(d, dtype=np.float32),
                  "threshold": np.abs(rng.standard_normal(n, dtype=np.float32))}
        np.savez(npz_dir / "params.npz", **arrays)
        del arrays
        st_dir = tmp_p / "saelens"
        SAE(SAEConfig(architecture="jumprelu", d_in=d, d_sae=n)).save_pretrained(st_dir)

        def read_npz():
            with np.load(npz_dir / "params.npz", allow_pickle=False) as z:
                return {k: z[k] for k in z.files}

        def read_st():
            sd = load_file(str(st_dir / "sae_weights.safetensors"))
            return sum(float(t.sum()) for t in sd.values())

        rows = []
        for name, src, reader in (("Gemma Scope params.npz", npz_dir, read_npz),
                                  ("SAELens folder", st_dir, read_st)):
            size = sum(f.stat().st_size for f in src.iterdir()) / 2**20
            reader()  # warm the page cache
            t_read = _median(reader)
            big = max(src.iterdir(), key=lambda f: f.stat().st_size)
            payload = big.read_bytes()

            def write_raw(payload: bytes = payload) -> None:
                with open(tmp_p / f"raw-{time.perf_counter_ns()}.bin", "wb") as f:
                    f.write(payload)

            t_copy = _median(write_raw)
            del payload
            counter = iter(range(100))
            t_conv = _median(lambda src=src, counter=counter: convert(src, tmp_p / f"out{next(counter)}",
                                                                      progress=False))
            rows.append((name, size, t_read, t_copy, t_conv))
        del torch
    print(f"{'source':26s} {'MiB':>6s} {'read s':>8s} {'write s':>8s} {'convert s':>10s} {'conv/read':>10s} "
          f"{'conv/(read+write)':>18s}")
    for name, size, t_read, t_write, t_conv in rows:
        print(f"{name:26s} {size:6.0f} {t_read:8.3f} {t_write:8.3f} {t_conv:10.3f} {t_conv / t_read:10.2f} "
              f"{t_conv / (t_read + t_write):18.2f}")
    print("target: convert <= 2x read. 'write' is writing the same number of bytes to a new file with one raw "
          "f.write: the floor of any tool that produces a new file, which no reader pays.")


if __name__ == "__main__":
    main()
