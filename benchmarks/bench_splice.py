"""Overhead of sae-hub's hook plumbing on a plain ``transformers`` model (issue 14's speed targets).

Model: a randomly initialised GPT-2-small-sized ``GPT2LMHeadModel`` (12 layers, d_model 768, 12 heads, vocab
50257), float32, eval, eager attention; one sequence of 128 tokens. SAE: ReLU, d_in 768, d_sae 6144, on
``blocks.5.hook_resid_post`` (a LayerNorm family: the read centres the residual, the write puts the mean back,
the per-forward mean bookkeeping runs: the most plumbing any site has).

Two ratios, printed in one run (targets in brackets):

* ``run_with_saes(hf, tokens, sae, stop_early=True)`` / (bare forward cut at the same layer by a plain torch hook
  + ``sae.encode`` of that activation)  [<= 1.05]
* forward under ``splice(hf, sae, use_error_term=True)`` / (bare full forward + the SAE's own cost: encode and
  decode of that activation)  [<= 1.05]

Every variant is timed once per round, rounds interleaved (other processes share the CPU), and the medians of
``--rounds`` rounds are reported. Timing runs on one thread by default (``--threads``) so a busy machine disturbs
the numbers less. Run: ``python benchmarks/bench_splice.py [--rounds 25] [--device cpu|cuda]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

LAYER = 5
SEQ = 128


class _Cut(Exception):
    pass


def build(device: str) -> tuple[Any, Any, torch.Tensor]:
    from transformers import GPT2Config, GPT2LMHeadModel

    from sae_hub import SAE, SAEConfig

    torch.manual_seed(0)
    cfg = GPT2Config(n_embd=768, n_layer=12, n_head=12, n_positions=1024, vocab_size=50257)
    model = GPT2LMHeadModel(cfg).eval().to(device)
    model.config._attn_implementation = "eager"
    sae = SAE(SAEConfig(architecture="relu", d_in=768, d_sae=6144, hook_name=f"blocks.{LAYER}.hook_resid_post"))
    with torch.no_grad():
        for p in sae.parameters():
            p.normal_(0, 0.02)
    sae = sae.to(device)
    tokens = torch.randint(0, cfg.vocab_size, (1, SEQ), device=device)
    return model, sae, tokens


def timed(fn: Callable[[], Any], device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=25)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    from sae_hub import run_with_saes, splice
    from sae_hub.adapters import adapt

    model, sae, tokens = build(args.device)
    block = model.transformer.h[LAYER]
    adapter = adapt(model)  # what a user would pass is the model; adapt() is cheap either way
    captured: dict[str, torch.Tensor] = {}

    def cut(module: torch.nn.Module, args_: Any, output: Any) -> None:
        captured["x"] = output[0] if isinstance(output, tuple) else output
        raise _Cut

    def bare_truncated() -> None:
        h = block.register_forward_hook(cut)
        try:
            with torch.no_grad():
                model(input_ids=tokens, use_cache=False)
        except _Cut:
            pass
        finally:
            h.remove()

    def bare_full() -> None:
        with torch.no_grad():
            model(input_ids=tokens, use_cache=False)

    bare_truncated()
    x = captured["x"]

    def encode() -> None:
        with torch.no_grad():
            sae.encode(x)

    def encode_decode() -> None:
        with torch.no_grad():
            sae.decode(sae.encode(x))

    def ours_stop_early() -> None:
        run_with_saes(model, tokens, sae, stop_early=True)

    def ours_splice() -> None:
        with torch.no_grad(), splice(model, sae, use_error_term=True):
            adapter.forward(tokens)

    variants = {"bare_truncated": bare_truncated, "encode": encode, "stop_early": ours_stop_early,
                "bare_full": bare_full, "encode_decode": encode_decode, "splice_err": ours_splice}
    for fn in variants.values():  # warm-up
        fn()
        fn()
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.rounds):
        for name, fn in variants.items():
            times[name].append(timed(fn, args.device))
    med = {k: statistics.median(v) for k, v in times.items()}
    r1 = med["stop_early"] / (med["bare_truncated"] + med["encode"])
    r2 = med["splice_err"] / (med["bare_full"] + med["encode_decode"])
    print(f"device={args.device} threads={torch.get_num_threads()} rounds={args.rounds} "
          f"(GPT-2-small-sized random model, seq {SEQ}, SAE 768x6144 at layer {LAYER})")
    for k, v in med.items():
        print(f"  median {k:15s} {v * 1e3:9.2f} ms")
    print(f"run_with_saes(stop_early) / (bare truncated + encode) = {r1:.3f}  [target <= 1.05]")
    print(f"splice(error term) forward / (bare forward + encode + decode) = {r2:.3f}  [target <= 1.05]")


if __name__ == "__main__":
    main()
