"""Feature recovery on planted ground truth: sae-hub's trainer at its *defaults*, next to SAELens's, same samples.

    python benchmarks/bench_train_quality.py                          # realistic data, 5M samples, compare
    .venv-compat/bin/python benchmarks/bench_train_quality.py         # ... plus SAELens's TopK trainer
    python benchmarks/bench_train_quality.py --grid --samples 1000000 # defaults over widths x k x datasets
    python benchmarks/bench_train_quality.py --data toy --arch topk,batchtopk,relu,jumprelu
    python benchmarks/bench_train_quality.py --arch topk,batchtopk,matryoshka_batchtopk  # + Matryoshka (its defaults)

Data (``--data``): ``realistic`` is :meth:`SyntheticActivations.realistic` (SynthSAEBench-16k's structure scaled
to 1024 features in d = 256: Zipfian firing in [5e-4, 0.4], hierarchy with mutually exclusive siblings, rank-25
correlated firing, magnitudes |N(4..5, σ)|, a bias; true L0 ≈ 7.2); ``toy`` the independent planted-feature toy
(512 features, L0 5). The token stream is generated once (``--samples`` tokens, recorded as sparse codes) and
replayed in the same order to every trainer, so each sees *exactly* the same samples.

sae-hub runs use ``TrainConfig`` defaults (only architecture, d_sae, k and the length are set). SAELens runs (when
``sae_lens`` is importable, e.g. in ``.venv-compat``) use its ``train_toy_sae`` settings (batch 1024, constant lr,
dead window 1000 steps), at its default lr 3e-4 and at 1e-3. Every SAE is scored by the same code
(:func:`~sae_hub.training.synthetic.evaluate_recovery`, 32k held-out tokens): MCC (Hungarian), MMCS, fraction of
features at cosine > 0.9, F1 of firing, FVU, L0, dead fraction. Goal (issue 16): default TopK MCC >= 0.85 on the
5M-sample realistic set, in no more wall time than SAELens.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from sae_hub.training import SyntheticActivations, TrainConfig, evaluate_recovery, train_sae
from sae_hub.training.config import ARCHITECTURES

CHUNK = 4096  # tokens per generated chunk; batch sizes must divide it or be multiples of it


class Recording:
    """``samples`` tokens of ``data`` (stream seed 0, chunks 0, 1, ...) kept as sparse codes (~60 bytes a token
    instead of 4·d), replayed as dense batches in the same order for any batch size."""

    def __init__(self, data: SyntheticActivations, samples: int, cache: str | None = None) -> None:
        self.data, self.chunks, self.samples = data, [], samples
        name = f"recording_{data.n_features}x{data.d}_{samples}_{_fingerprint(data)}.pt"
        path = Path(cache) / name if cache else None
        if path is not None and path.exists():  # generating 5M realistic tokens takes minutes on a busy box
            self.chunks = torch.load(path, weights_only=True)
            return
        for j in range((samples + CHUNK - 1) // CHUNK):
            codes = data.sample_with_codes(CHUNK, seed=0, index=j)[1]
            rows, cols = codes.nonzero(as_tuple=True)
            offsets = torch.searchsorted(rows, torch.arange(CHUNK))
            self.chunks.append((cols.to(torch.int16), codes[rows, cols], offsets.to(torch.int32)))
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(self.chunks, path)

    def chunk(self, j: int) -> torch.Tensor:
        cols, vals, offs = self.chunks[j]
        d = self.data
        x = F.embedding_bag(cols.long(), d.features, offs.long(), mode="sum", per_sample_weights=vals) + d.bias
        if d.noise_std > 0:  # the same noise every replay
            x += d.noise_std * torch.randn(x.shape, generator=torch.Generator().manual_seed(j))
        return x

    def batches(self, batch: int) -> Iterator[torch.Tensor]:
        buf: list[torch.Tensor] = []
        have = 0
        for j in range(len(self.chunks)):
            buf.append(self.chunk(j))
            have += CHUNK
            while have >= batch:
                x = torch.cat(buf) if len(buf) > 1 else buf[0]
                yield x[:batch]
                rest = x[batch:]
                buf, have = ([rest] if rest.numel() else []), rest.shape[0]


def _fingerprint(data: SyntheticActivations) -> str:
    """A short hash of the generator's dictionary, so a cached recording is never replayed on other features."""
    return hashlib.sha256(data.features.numpy().tobytes()).hexdigest()[:12]


def make_data(name: str) -> SyntheticActivations:
    if name == "realistic":
        return SyntheticActivations.realistic(d=256, n_features=1024, seed=0)
    return SyntheticActivations(d=256, n_features=512, mean_active=5.0, zipf_exponent=0.5,
                                magnitude_range=(0.5, 1.5), noise_std=0.01, seed=0)


def run_sae_hub(rec: Recording, arch: str, d_sae: int, k: int, **overrides: Any) -> tuple[Any, float]:
    cfg = TrainConfig(architecture=arch, d_sae=d_sae, k=k, d_in=rec.data.d, total_tokens=rec.samples, **overrides)
    t = time.perf_counter()
    sae = train_sae(cfg, rec.batches(CHUNK), progress=False)  # the trainer re-cuts chunks into its batch size
    return sae, time.perf_counter() - t


def run_saelens(rec: Recording, d_sae: int, k: int, lr: float, batch: int = 1024) -> tuple[Any, float]:
    """SAELens's TopK trainer with ``train_toy_sae``'s settings, reading the same recorded stream."""
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.training.sae_trainer import SAETrainer

    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=rec.data.d, d_sae=d_sae, k=k, device="cpu"))
    cfg = SAETrainerConfig(
        n_checkpoints=0, checkpoint_path=None, save_final_checkpoint=False,
        total_training_samples=(rec.samples // batch) * batch, device="cpu", autocast=False, lr=lr, lr_end=lr,
        lr_scheduler_name="constant", lr_warm_up_steps=0, adam_beta1=0.9, adam_beta2=0.999, lr_decay_steps=0,
        n_restart_cycles=1, train_batch_size_samples=batch, dead_feature_window=1000, feature_sampling_window=2000,
        logger=LoggingConfig(log_to_wandb=False, eval_every_n_wandb_logs=2**31 - 1), n_batches_for_norm_estimate=1000)
    trainer = SAETrainer(cfg=cfg, sae=sae, data_provider=rec.batches(batch), save_checkpoint_fn=lambda _p: None)
    t = time.perf_counter()
    trainer.fit()
    return sae, time.perf_counter() - t


HEADER = f"{'run':<42} {'time s':>7} {'MCC':>6} {'MMCS':>6} {'>0.9':>6} {'F1':>6} {'FVU':>7} {'L0':>6} {'dead':>6}"


def row(name: str, sae: Any, data: SyntheticActivations, elapsed: float) -> str:
    with torch.no_grad():
        r = evaluate_recovery(sae, data, n_tokens=32768)
    return (f"{name:<42} {elapsed:>7.1f} {r.get('mcc', float('nan')):>6.3f} {r['mmcs']:>6.3f} "
            f"{r['recovered_0.9']:>6.1%} {r['f1']:>6.3f} {r['fvu']:>7.4f} {r['l0']:>6.2f} {r['dead_fraction']:>6.1%}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="realistic", choices=("realistic", "toy"))
    ap.add_argument("--samples", type=int, default=5_000_000)
    ap.add_argument("--arch", default="topk,batchtopk")
    ap.add_argument("--d-sae", type=int, default=1024)
    ap.add_argument("--k", type=int, default=7)
    ap.add_argument("--saelens", default="auto", choices=("auto", "yes", "no"))
    ap.add_argument("--saelens-lr", default="3e-4,1e-3")
    ap.add_argument("--grid", action="store_true", help="defaults over widths 512/2048 x k 5/10 x both datasets")
    ap.add_argument("--override", default="", help="TrainConfig overrides for the sae-hub runs, e.g. lr=1e-3,bat"
                                                   "ch_size=1024 (to study defaults; the table says so)")
    ap.add_argument("--cache", default="", help="folder to keep recorded streams in (reused when present)")
    args = ap.parse_args()
    unknown = sorted(set(args.arch.split(",")) - set(ARCHITECTURES))
    if unknown:  # before recording millions of samples
        ap.error(f"--arch: unknown {unknown}; choose from {','.join(ARCHITECTURES)}")
    cache = args.cache or None
    overrides: dict[str, Any] = {}
    for kv in filter(None, args.override.split(",")):
        key, val = kv.split("=")
        default = getattr(TrainConfig(), key)
        if key == "encoder_bf16" or isinstance(default, bool):
            overrides[key] = val.lower() in ("1", "true")
        elif isinstance(default, str):
            overrides[key] = val
        elif default is None:  # an int knob (batch_size, k_aux, ...) or a float one (lr)
            overrides[key] = int(float(val)) if float(val).is_integer() else float(val)
        else:
            overrides[key] = type(default)(float(val))
    has_saelens = importlib.util.find_spec("sae_lens") is not None
    use_saelens = args.saelens == "yes" or (args.saelens == "auto" and has_saelens and not args.grid)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.samples:,} samples; "
          f"overrides {overrides or 'none (defaults)'}")
    if args.grid:
        for dname in ("toy", "realistic"):
            data = make_data(dname)
            rec = Recording(data, args.samples, cache)
            print(f"\n{dname}: {data.n_features} features in d={data.d}, true L0 {data.true_l0():.2f}\n{HEADER}")
            for d_sae in (512, 2048):
                for k in (5, 10):
                    for arch in args.arch.split(","):
                        sae, el = run_sae_hub(rec, arch, d_sae, k, **overrides)
                        print(row(f"{arch} d_sae={d_sae} k={k}", sae, data, el), flush=True)
        return
    data = make_data(args.data)
    t = time.perf_counter()
    rec = Recording(data, args.samples, cache)
    print(f"{args.data}: {data.n_features} features in d={data.d}, true L0 {data.true_l0():.2f}; recorded in "
          f"{time.perf_counter() - t:.0f} s; SAE width {args.d_sae}, k={args.k}\n\n{HEADER}")
    for arch in args.arch.split(","):
        sae, el = run_sae_hub(rec, arch, args.d_sae, args.k, **overrides)
        print(row(f"sae-hub {arch} (defaults)" if not overrides else f"sae-hub {arch} (overrides)", sae, data,
                  el), flush=True)
    if use_saelens:
        for lr in args.saelens_lr.split(","):
            sae, el = run_saelens(rec, args.d_sae, args.k, float(lr))
            print(row(f"SAELens topk lr={lr} batch 1024", sae, data, el), flush=True)


if __name__ == "__main__":
    main()
