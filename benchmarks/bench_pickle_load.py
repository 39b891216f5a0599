"""Pickle loading (``sae_hub.safe_pickle``) next to plain ``torch.load(weights_only=True)``, measured in one run.

Issue 13 moved safe_pickle onto torch's own weights_only unpickler; its target is "no regression beyond noise".
What can be compared is the floor torch itself sets on the same file:

* small files: ``torch.load(weights_only=True)`` (module pickles with inert dummy classes registered under the
  names ``torch.serialization.get_unsafe_globals_in_checkpoint`` lists, so torch can read them; peek against
  ``map_location="meta"``). Target: within ~2x.
* a generated 256 MiB state dict, load + sum of every tensor (what using the weights costs): the floor is
  ``torch.load(weights_only=True, mmap=True)``. Target: within 10%.

sae-hub rows are "cold" (its scan cache cleared before each call: the first load of a file); "detect + load" is
what a loader does (``peek`` for detection, then the load, which reuses the scan). Calls are interleaved round by
round; min and median over the rounds (the machine may be shared: the min is the steadier figure). Ratios use the
mins. ``--compare NAME=FILE`` times another ``safe_pickle.py`` (e.g. an older one from git) in the same rounds:

    git show 9bcb6c0:sae_hub/safe_pickle.py > /tmp/old_safe_pickle.py
    python benchmarks/bench_pickle_load.py --compare old=/tmp/old_safe_pickle.py
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
MODULE_PT = FIXTURES / "overcomplete" / "topk" / "module.pt"
STATE_PT = FIXTURES / "overcomplete" / "topk" / "state_dict.pt"


def _module_from(name: str, file: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", file)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@contextlib.contextmanager
def _dummies_for(paths: list[Path]) -> Iterator[None]:
    """Register plain dummy classes under every global torch would refuse in ``paths`` (the reference loads)."""
    import torch

    names = sorted({n for p in paths for n in torch.serialization.get_unsafe_globals_in_checkpoint(p)})
    with torch.serialization.safe_globals([(type(n.rsplit(".", 1)[-1], (), {}), n) for n in names]):
        yield


def _cold(sp: ModuleType, fn: Callable[[], Any]) -> Callable[[], Any]:
    """``fn`` with safe_pickle's caches emptied first (versions without them are always cold)."""

    def run() -> Any:
        for cache in ("_SCAN_CACHE", "_PEEK_CACHE"):
            getattr(sp, cache, {}).clear()
        return fn()

    return run


def _time(cases: dict[str, Callable[[], Any]], rounds: int) -> dict[str, tuple[float, float]]:
    """(min, median) seconds per case over ``rounds`` interleaved rounds (each starting one case later, so no
    case always follows the same one), after one warm-up call each."""
    for fn in cases.values():
        fn()
    samples: dict[str, list[float]] = {k: [] for k in cases}
    order = list(cases.items())
    for r in range(rounds):
        for name, fn in order[r % len(order):] + order[:r % len(order)]:
            t = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - t)
    return {k: (min(v), statistics.median(v)) for k, v in samples.items()}


def _report(title: str, res: dict[str, tuple[float, float]], floor: str) -> None:
    print(f"\n{title}")
    base = res[floor][0]
    for name, (lo, med) in res.items():
        print(f"  {name:44s} min {lo * 1e3:8.2f} ms   median {med * 1e3:8.2f} ms   {lo / base:5.2f}x floor")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=30, help="rounds for the small files")
    ap.add_argument("--big-rounds", type=int, default=7, help="rounds for the 256 MiB file")
    ap.add_argument("--big-mib", type=int, default=256)
    ap.add_argument("--compare", action="append", default=[], metavar="NAME=FILE",
                    help="another safe_pickle.py to time in the same rounds")
    args = ap.parse_args()

    import torch

    sys.path.insert(0, str(ROOT))
    import sae_hub.safe_pickle as sp

    impls: dict[str, ModuleType] = {"sae_hub": sp}
    for spec in args.compare:
        name, _, file = spec.partition("=")
        impls[name] = _module_from(name, file)
    fixtures = sorted(FIXTURES.rglob("*.pt"))
    v = sys.version_info
    print(f"torch {torch.__version__}, python {v.major}.{v.minor}.{v.micro}; min and median of interleaved rounds")

    def load_all(load: Callable[[Path], Any]) -> Callable[[], None]:
        return lambda: [load(p) for p in fixtures]

    def ref(path: Path, **kw: Any) -> Callable[[], Any]:
        return lambda: torch.load(path, weights_only=True, **kw)

    with _dummies_for(fixtures):
        small: dict[str, dict[str, Callable[[], Any]]] = {
            f"{MODULE_PT.relative_to(FIXTURES)}: full load": {
                "torch.load(weights_only) [floor]": ref(MODULE_PT, map_location="cpu"),
                **{f"{n} safe_load": _cold(m, lambda m=m: m.safe_load(MODULE_PT)) for n, m in impls.items()}},
            f"{MODULE_PT.relative_to(FIXTURES)}: peek (shapes only)": {
                "torch.load(weights_only, meta) [floor]": ref(MODULE_PT, map_location="meta"),
                **{f"{n} safe_load(skeleton=True)": _cold(m, lambda m=m: m.safe_load(MODULE_PT, skeleton=True))
                   for n, m in impls.items()}},
            f"{MODULE_PT.relative_to(FIXTURES)}: detect + load (peek, then safe_load)": {
                "torch.load(weights_only) x2 [floor]": lambda: (ref(MODULE_PT, map_location="meta")(),
                                                                 ref(MODULE_PT, map_location="cpu")()),
                **{f"{n} peek + safe_load": _cold(m, lambda m=m: (m.peek(MODULE_PT), m.safe_load(MODULE_PT)))
                   for n, m in impls.items()}},
            f"{STATE_PT.relative_to(FIXTURES)}: state dict load": {
                "torch.load(weights_only) [floor]": ref(STATE_PT, map_location="cpu"),
                **{f"{n} load_weights_only": _cold(m, lambda m=m: m.load_weights_only(STATE_PT))
                   for n, m in impls.items()}},
            f"all {len(fixtures)} .pt fixtures, each loaded once (summed)": {
                "torch.load(weights_only) [floor]": load_all(lambda p: torch.load(p, weights_only=True)),
                **{f"{n} safe_load": _cold(m, load_all(m.safe_load)) for n, m in impls.items()}},
        }
        for title, cases in small.items():
            _report(title, _time(cases, args.rounds), next(iter(cases)))

    with tempfile.TemporaryDirectory() as tmp:
        big = Path(tmp) / "big.pt"
        d_in, d_sae = 2048, args.big_mib * 2**20 // (2 * 4 * 2048)
        g = torch.Generator().manual_seed(0)
        torch.save({"W_enc": torch.randn(d_in, d_sae, generator=g), "W_dec": torch.randn(d_sae, d_in, generator=g),
                    "b_enc": torch.zeros(d_sae), "b_dec": torch.zeros(d_in)}, big)
        big.read_bytes()  # in the page cache for every contender

        def summed(load: Callable[[], dict[str, torch.Tensor]]) -> Callable[[], float]:
            return lambda: sum(float(t.sum()) for t in load().values())

        cases = {
            "torch.load(weights_only, mmap) + sum [floor]": summed(ref(big, mmap=True)),
            **{f"{n} load_weights_only + sum": summed(lambda m=m: m.load_weights_only(big)) for n, m in impls.items()},
            "torch.load(weights_only, mmap) alone": ref(big, mmap=True),
            **{f"{n} load_weights_only alone": lambda m=m: m.load_weights_only(big) for n, m in impls.items()},
        }
        mib = big.stat().st_size / 2**20
        _report(f"generated {mib:.0f} MiB state dict (d_in {d_in}, d_sae {d_sae}, fp32): load + sum of every tensor",
                _time(cases, args.big_rounds), next(iter(cases)))

if __name__ == "__main__":
    main()
