"""Converting a ~300 MB checkpoint next to reading it, measured in the same run.

Target (issue 4): ``sae_hub.convert`` takes <= 2x the time to read the checkpoint. Two reads are timed for each
source, with the file in the page cache (one warm-up first):

* ``read bytes``: ``Path.read_bytes()`` of the checkpoint's files, the cost of reading them at all;
* ``reader``: the source library's own way to get every array into memory: ``np.load`` for Gemma Scope's
  params.npz, ``torch.load(weights_only=True)`` for Qwen Scope's ``.pt``, ``safetensors.torch.load_file`` plus a
  sum over every tensor for lm-saes and SAELens folders. safetensors maps the file lazily, so that reader pays
  neither a copy nor a hash; no tool that writes and hashes the bytes can come within 2x of it.

Conversion = load + write the native folder + sha256 of every source file for the provenance record (on a
thread, while loading and writing). ``write`` is one raw write of the same number of bytes to a new file, the
floor of any conversion. Each run (write and convert alike) starts with the previous run's output deleted: on
the 2-core VM this was tuned on, a 288 MiB write takes 0.06 s into freed page cache but 0.6-1.0 s once outputs
pile up (fresh memory is slow to fault in there; a reader reuses the memory it freed and never pays that).
Median of 5.

    python benchmarks/bench_convert.py [--d-in 2304] [--d-sae 16384]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path


def _median(fn: Callable[[], object], before: Callable[[], None] = lambda: None, repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        before()
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _sources(tmp: Path, d: int, n: int) -> list[tuple[str, Path, dict, Callable[[], object]]]:
    """(name, path, convert options, the source library's reader) for each ~300 MB source format."""
    import numpy as np
    import torch
    from safetensors.torch import load_file, save_file

    from sae_hub import SAE, SAEConfig

    rng = np.random.default_rng(0)

    def arr(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape, dtype=np.float32)

    npz_dir = tmp / "gemma-scope-2b-pt-res" / "layer_12" / "width_16k" / "average_l0_82"
    npz_dir.mkdir(parents=True)
    np.savez(npz_dir / "params.npz", W_enc=arr(d, n), W_dec=arr(n, d), b_enc=arr(n), b_dec=arr(d),
             threshold=np.abs(arr(n)))

    lm_dir = tmp / "lm_saes"
    lm_dir.mkdir()
    (lm_dir / "config.json").write_text(json.dumps({
        "sae_type": "sae", "d_model": d, "expansion_factor": n / d, "use_decoder_bias": True, "act_fn": "jumprelu",
        "norm_activation": "dataset-wise", "sparsity_include_decoder_norm": True, "top_k": 50,
        "hook_point_in": "blocks.12.hook_resid_post", "hook_point_out": "blocks.12.hook_resid_post"}))
    save_file({"W_E": torch.from_numpy(arr(d, n)), "W_D": torch.from_numpy(arr(n, d)),
               "b_E": torch.from_numpy(arr(n)), "b_D": torch.from_numpy(arr(d)),
               "activation_function.log_jumprelu_threshold": torch.from_numpy(arr(n)),
               "dataset_average_activation_norm.blocks.12.hook_resid_post": torch.tensor(50.0)},
              str(lm_dir / "sae_weights.safetensors"))

    qwen = tmp / "SAE-Res-Qwen3-8B-W16K-L0_50" / "layer12.sae.pt"
    qwen.parent.mkdir()
    torch.save({"W_enc": torch.from_numpy(arr(n, d)), "W_dec": torch.from_numpy(arr(d, n)),
                "b_enc": torch.from_numpy(arr(n)), "b_dec": torch.from_numpy(arr(d))}, qwen)

    st_dir = tmp / "saelens"
    SAE(SAEConfig(architecture="jumprelu", d_in=d, d_sae=n)).save_pretrained(st_dir)

    def read_npz() -> object:
        with np.load(npz_dir / "params.npz", allow_pickle=False) as z:
            return {k: z[k] for k in z.files}

    def read_st(folder: Path) -> Callable[[], object]:
        return lambda: sum(float(t.sum()) for t in load_file(str(folder / "sae_weights.safetensors")).values())

    return [
        ("Gemma Scope params.npz", npz_dir, {}, read_npz),
        ("Qwen Scope layer.sae.pt", qwen, {}, lambda: torch.load(qwen, weights_only=True)),
        ("lm-saes (safetensors)", lm_dir, {}, read_st(lm_dir)),
        ("SAELens folder", st_dir, {}, read_st(st_dir)),
    ]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--d-in", type=int, default=2304)
    ap.add_argument("--d-sae", type=int, default=16384)
    args = ap.parse_args()

    from sae_hub import convert

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp_p = Path(tmp)
        out = tmp_p / "out"

        def clear() -> None:
            if out.is_dir():
                shutil.rmtree(out)
            elif out.exists():
                out.unlink()

        for name, src, options, reader in _sources(tmp_p, args.d_in, args.d_sae):
            files = [f for f in (src.iterdir() if src.is_dir() else [src]) if f.is_file()]
            size = sum(f.stat().st_size for f in files) / 2**20
            reader()  # warm the page cache
            t_bytes = _median(lambda files=files: [f.read_bytes() for f in files])
            t_reader = _median(reader)
            payload = max(files, key=lambda f: f.stat().st_size).read_bytes()

            def write_raw(payload: bytes = payload) -> None:
                with open(out, "wb") as f:
                    f.write(payload)

            t_write = _median(write_raw, before=clear)
            del payload
            t_conv = _median(lambda src=src, options=options: convert(src, out, progress=False, **options),
                             before=clear)
            clear()
            rows.append((name, size, t_bytes, t_reader, t_write, t_conv))
    print(f"{'source':24s} {'MiB':>5s} {'read bytes':>10s} {'reader':>7s} {'write':>6s} {'convert':>8s} "
          f"{'conv/read bytes':>15s} {'conv/reader':>11s}")
    for name, size, t_bytes, t_reader, t_write, t_conv in rows:
        print(f"{name:24s} {size:5.0f} {t_bytes:10.3f} {t_reader:7.3f} {t_write:6.3f} {t_conv:8.3f} "
              f"{t_conv / t_bytes:15.2f} {t_conv / t_reader:11.2f}")
    print("target: convert <= 2x read (seconds, median of 5). 'reader' for safetensors sources maps the file "
          "lazily: it neither copies nor hashes the bytes, which a conversion must (the sha256 of 288 MiB alone "
          "takes about as long as reading it).")


if __name__ == "__main__":
    main()
