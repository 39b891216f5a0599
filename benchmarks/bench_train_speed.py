"""Training throughput at the defaults: sae-hub's TopK trainer next to SAELens's and a naive dense step, same run.

    .venv-compat/bin/python benchmarks/bench_train_speed.py              # CPU; SAELens where sae_lens imports
    .venv-compat/bin/python benchmarks/bench_train_speed.py --busy 1     # ... with one CPU-bound process beside it
    python benchmarks/bench_train_speed.py --device cuda                 # the same on a GPU

Contenders, each at what a user gets without setting anything (no ``OMP_WAIT_POLICY``, no thread counts):

- **sae-hub default**: ``Trainer.run`` itself with ``TrainConfig`` defaults (only architecture, sizes, k, batch
  and length are set), so the thread tuner, the schedule, the firing tracker and the metric accumulators all run.
  Its batches come from a generator that times the loop between batch requests; the other contenders' rounds
  run inside that generator, between sae-hub rounds (torch's thread count put back to the process default for
  them), so every contender sees the same neighbours. It is warmed up until the tuner made its first choice.
- **sae-hub (other encoder precision)**: ``Trainer.step`` with ``encoder_bf16`` flipped from the default, at the
  thread count the default run's tuner chose (skipped with ``--no-alt``).
- **SAELens default TopK**: SAELens's own ``TopKTrainingSAE`` (``TopKTrainingSAEConfig`` defaults: dense
  activations, AuxK) stepped by its own ``SAETrainer`` (``SAETrainerConfig`` defaults: Adam lr 3e-4 betas
  (0.9, 0.999), constant schedule, grad-norm clipping at 1, its dead-neuron bookkeeping) exactly as ``fit`` steps
  it (``maybe_reset_sparsity``, ``step``, step counter), only where ``sae_lens`` imports (``.venv-compat``).
- **sparsify default TopK**: EleutherAI sparsify's ``SparseCoder`` stepped as its ``Trainer.fit`` steps one hook
  (see ``sparsify_step_fn``), only where ``sparsify`` imports (install ``eai-sparsify`` beside SAELens in
  ``.venv-compat`` with torch pinned; the CI compat environment does not carry it).
- **naive dense**: dense encoder GEMM, relu, topk, scatter into a dense [B, d_sae] code, dense decoder GEMM, MSE,
  full autograd, ``torch.optim.Adam`` (its default implementation).

Rounds alternate between contenders; each round is ``--steps`` steps; the report gives the median of the
per-round rates and the median of the per-round ratios (a ratio of two rates measured seconds apart), the load
average before and after, and the thread count the tuner chose. Goals on CPU at d_in=768, d_sae=16384, k=32,
batch 2048 (issue 16): >= 5x SAELens's default TopK trainer and >= 6x the naive dense step. On CUDA the same
script gives tokens/s next to SAELens and sparsify at 16k and 64k latents (``--device cuda --sizes
768x16384,768x65536``).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F

from sae_hub.training.trainer import ThreadTuner, TrainConfig, Trainer

Step = Callable[[torch.Tensor], None]


def naive_step_fn(d: int, n: int, k: int, device: torch.device) -> Step:
    """What most trainers do by default: everything dense, full autograd, default Adam."""
    g = torch.Generator().manual_seed(0)
    w = F.normalize(torch.randn(n, d, generator=g), dim=-1)
    W_enc = torch.nn.Parameter(w.T.contiguous().to(device))  # [d, n]
    W_dec = torch.nn.Parameter(w.to(device))  # [n, d]
    b_enc = torch.nn.Parameter(torch.zeros(n, device=device))
    b_dec = torch.nn.Parameter(torch.zeros(d, device=device))
    opt = torch.optim.Adam([W_enc, b_enc, W_dec, b_dec], lr=1e-4)

    def step(x: torch.Tensor) -> None:
        pre = F.relu((x - b_dec) @ W_enc + b_enc)  # [B, n]
        vals, idx = pre.topk(k, dim=-1)  # [B, k]
        f = torch.zeros_like(pre).scatter(-1, idx, vals)  # [B, n]
        x_hat = f @ W_dec + b_dec  # [B, d]
        loss = (x_hat - x).pow(2).sum(-1).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def saelens_step_fn(d: int, n: int, k: int, batch: int, device: torch.device) -> Step:
    """SAELens's default TopK training step, through its own classes (see the module docstring)."""
    from sae_lens.config import SAETrainerConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.training.sae_trainer import SAETrainer

    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=d, d_sae=n, k=k, device=str(device)))
    # SAETrainerConfig's defaults are the runner's (lr 3e-4, Adam betas (0.9, 0.999), constant schedule, dead
    # window 1000); lr_end is the runner's post-init default lr / 10 (used only by cosine schedules)
    cfg = SAETrainerConfig(total_training_samples=batch * 10**9, train_batch_size_samples=batch, device=str(device),
                           lr_end=3e-4 / 10)
    trainer = SAETrainer(cfg=cfg, sae=sae, data_provider=iter(()), save_checkpoint_fn=lambda _p: None)
    trainer.sae.to(cfg.device)

    def step(x: torch.Tensor) -> None:  # the body of SAETrainer.fit's loop, less the progress bar
        trainer.maybe_reset_sparsity()
        trainer.step(x)
        trainer._checkpoint_if_needed()
        trainer.n_training_steps += 1

    return step


def sparsify_step_fn(d: int, n: int, k: int, device: torch.device) -> Step:
    """sparsify's default TopK training step (``eai-sparsify``), through its own classes: ``SparseCoder`` with
    ``SparseCoderConfig`` defaults, its default optimiser (``ScheduleFreeWrapper(SignSGD)``, momentum 0.95, lr
    ``5e-3 / sqrt(n / 2**14)``), and the per-step body of ``sparsify.Trainer.fit`` for one hook with the default
    ``loss_fn="fvu"`` and ``auxk_alpha=0`` (so no dead mask): unit-norm the decoder, forward, backward, remove the
    decoder gradient's parallel component, step, zero the gradients, update the tokens-since-fired counters."""
    from schedulefree import ScheduleFreeWrapper
    from sparsify import SparseCoder, SparseCoderConfig
    from sparsify.sign_sgd import SignSGD

    torch.manual_seed(0)
    sae = SparseCoder(d, SparseCoderConfig(num_latents=n, k=k), device, dtype=torch.float32)
    opt = ScheduleFreeWrapper(SignSGD([{"params": sae.parameters(), "lr": 5e-3 / (n / 2**14) ** 0.5}]),
                              momentum=0.95)
    opt.train()
    since_fired = torch.zeros(n, device=device, dtype=torch.long)
    did_fire = torch.zeros(n, device=device, dtype=torch.bool)

    def step(x: torch.Tensor) -> None:
        sae.set_decoder_norm_to_unit_norm()
        out = sae(x=x, y=x, dead_mask=None)
        did_fire[out.latent_indices.flatten()] = True
        (out.fvu + out.multi_topk_fvu / 8).backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        opt.zero_grad()
        with torch.no_grad():
            since_fired.add_(x.shape[0])
            since_fired[did_fire] = 0
            did_fire.zero_()

    return step


def trainer_cfg(d: int, n: int, k: int, batch: int, device: torch.device, **kw: object) -> TrainConfig:
    return TrainConfig(architecture="topk", d_in=d, d_sae=n, k=k, batch_size=batch, steps=10**9,
                       device=str(device), **kw)  # type: ignore[arg-type]


def trainer_step_fn(cfg: TrainConfig, xs: list[torch.Tensor]) -> Step:
    tr = Trainer(cfg, torch.zeros(cfg.batch_size or 1, cfg.d_in or 1), progress=False)
    tr.initialise(xs[:1])
    return tr.step


def bench(d: int, n: int, k: int, batch: int, device: torch.device, rounds: int, steps: int, alt: bool,
          saelens: bool, sparsify: bool = False) -> tuple[dict[str, list[float]], str, Trainer]:
    """Per-round rates (tokens/s) of every contender, the default trainer's encoder precision, and its Trainer."""
    xs = [torch.randn(batch, d, device=device) for _ in range(4)]
    # what the trainer resolves encoder_bf16=None to at this size on this device
    default_bf16 = bool(Trainer(trainer_cfg(d, n, k, batch, device), xs[0], progress=False).cfg.encoder_bf16)
    others: dict[str, Step] = {}
    if alt:
        others[f"sae-hub encoder_bf16={not default_bf16}"] = trainer_step_fn(
            trainer_cfg(d, n, k, batch, device, encoder_bf16=not default_bf16), xs)
    if saelens:
        others["SAELens default TopK"] = saelens_step_fn(d, n, k, batch, device)
    if sparsify:
        others["sparsify default TopK"] = sparsify_step_fn(d, n, k, device)
    others["naive dense"] = naive_step_fn(d, n, k, device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    default_threads = torch.get_num_threads()
    for fn in others.values():  # warm-up (allocator, oneDNN primitives, CUDA kernels)
        for x in xs[:2]:
            fn(x)
    sync()
    probe = ThreadTuner(default_threads)
    # run() reads its init sample (init_tokens) ahead, then steps through it: the warm-up covers that read-ahead
    # and the tuner's first probe
    tuned = probe.start + len(probe.candidates) * probe.trials + 2 if device.type == "cpu" else 3
    warm = math.ceil(TrainConfig().init_tokens / batch) + tuned
    name = f"sae-hub default (encoder_bf16={default_bf16})"
    rates: dict[str, list[float]] = {name: [], **{o: [] for o in others}}

    def feed() -> Iterator[torch.Tensor]:
        for i in range(warm):  # until the tuner has made its first choice
            yield xs[i % len(xs)]
        for _ in range(rounds):
            sync()
            t = time.perf_counter()
            for i in range(steps):
                yield xs[i % len(xs)]
            sync()  # reached when run() asks for the batch after the round's last step
            rates[name].append(steps * batch / (time.perf_counter() - t))
            chosen = torch.get_num_threads()
            torch.set_num_threads(default_threads)  # the others run as a user would run them
            for other, fn in others.items():
                if other.startswith("sae-hub"):
                    torch.set_num_threads(chosen)
                t = time.perf_counter()
                for i in range(steps):
                    fn(xs[i % len(xs)])
                sync()
                rates[other].append(steps * batch / (time.perf_counter() - t))
                torch.set_num_threads(default_threads)
            torch.set_num_threads(chosen)

    tr = Trainer(trainer_cfg(d, n, k, batch, device), feed(), progress=False)
    with warnings_off():
        tr.run()
    return rates, name, tr


@contextlib.contextmanager
def warnings_off() -> Iterator[None]:
    import warnings

    with warnings.catch_warnings():  # "activations ran out after N of 10**9 steps": the feed ends on purpose
        warnings.simplefilter("ignore")
        yield


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=None, help="steps per round (default: 3 on CPU, 20 on CUDA)")
    ap.add_argument("--batch", type=int, default=2048)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--sizes", default="768x16384", help="comma-separated d_in x d_sae")
    ap.add_argument("--no-alt", action="store_true", help="skip the other encoder precision")
    ap.add_argument("--saelens", default="auto", choices=("auto", "yes", "no"))
    ap.add_argument("--sparsify", default="auto", choices=("auto", "yes", "no"))
    ap.add_argument("--busy", type=int, default=0, help="start this many CPU-bound processes beside the benchmark")
    args = ap.parse_args()
    device = torch.device(args.device)
    steps = args.steps or (20 if device.type == "cuda" else 3)
    saelens = args.saelens == "yes" or (args.saelens == "auto" and importlib.util.find_spec("sae_lens") is not None)
    sparsify = args.sparsify == "yes" or (args.sparsify == "auto"
                                          and importlib.util.find_spec("sparsify") is not None)
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
    try:
        where = (torch.cuda.get_device_name(device) if device.type == "cuda"
                 else f"CPU, torch default {torch.get_num_threads()} threads, {os.cpu_count()} cores")
        env = {v: os.environ.get(v) for v in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "THP_MEM_ALLOC_ENABLE")}
        load0 = os.getloadavg()
        print(f"torch {torch.__version__}; {where}; env {env}; {args.busy} busy process(es) started; "
              f"batch {args.batch}, k {args.k}; median of {args.rounds} rounds x {steps} steps; "
              f"load average {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}", flush=True)
        for size in args.sizes.split(","):
            d, n = (int(v) for v in size.lower().split("x"))
            rates, _, tr = bench(d, n, args.k, args.batch, device, args.rounds, steps, not args.no_alt,
                                    saelens, sparsify)
            tuner = getattr(tr, "thread_tuner", None)
            chosen = f"tuner chose {tuner.chosen} of {tuner.candidates} threads" if tuner is not None else ""
            print(f"\nd_in={d} d_sae={n}  {chosen}")
            refs = [r for r in ("SAELens default TopK", "sparsify default TopK", "naive dense") if r in rates]
            for who, rs in rates.items():
                ratios = "   ".join(
                    f"{statistics.median(a / b for a, b in zip(rs, rates[r], strict=True)):5.2f}x {r}" for r in refs)
                print(f"  {who:<34} {statistics.median(rs):>10,.0f} tok/s   {ratios}   "
                      f"(rounds: {', '.join(f'{v:,.0f}' for v in rs)})", flush=True)
        load1 = os.getloadavg()
        print(f"load average after: {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}")
    finally:
        for p in busy:
            p.kill()
            p.wait()


if __name__ == "__main__":
    main()
