"""Compare sae-hub's shipped release table (registry/*.yaml) with SAELens's ``pretrained_saes.yaml``.

    python benchmarks/compare_saelens_registry.py [PATH/TO/pretrained_saes.yaml] [--quiet]

Without a path, the file is looked up in an installed ``sae_lens`` package (found without importing it).
Reports: SAEs in SAELens, the releases/SAEs of the families sae-hub covers, for every covered SAE whether
(release, sae id) resolves to the same (repo_id, path) -- printing mismatches and the coverage "N of M" -- and
whether the recorded facts (l0, neuronpedia, variance_explained, norm_scaling_factor) agree; then the time to
list all releases in a fresh process and the YAML size against SAELens's file. Exit status 1 on any mismatch.

Formats whose loader is not registered yet are stubbed in this process (and in the expansion-timing subprocess)
so the registry validates; the names are printed.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import yaml

# SAELens conversion_func -> sae-hub loader name, for the families sae-hub ships.
COVERED: dict[str | None, str] = {
    None: "saelens",
    "gemma_2": "gemma-scope",
    "gemma_2_transcoder": "gemma-scope",
    "gemma_3": "gemma-scope-2",
    "llama_scope": "lm-saes",
    "llama_scope_r1_distill": "lm-saes",
    "dictionary_learning_1": "dictionary-learning",
    "qwen_scope": "qwen-scope",
    "goodfire": "goodfire",
    "mwhanna_transcoder": "circuit-tracer-transcoder",
    "mntss_clt_layer_transcoder": "clt-source-layer",
    "connor_rob_hook_z": "connor-rob-hook-z",
    "deepseek_r1": "deepseek-r1",
    "temporal": "temporal-sae",
}
FACTS = ("l0", "neuronpedia", "variance_explained", "norm_scaling_factor")
REPO = Path(__file__).resolve().parent.parent

STUB_CODE = """
import sae_hub.loading as _l
for _n in {names!r}:
    if _n not in _l.list_loaders():
        _l.register_loader(_n, files=["*"], detect=lambda p: False)(lambda p, o: None)
"""


def find_saelens_yaml() -> Path:
    spec = importlib.util.find_spec("sae_lens")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("sae_lens is not installed: pass the path to its pretrained_saes.yaml")
    for loc in spec.submodule_search_locations:
        p = Path(loc) / "pretrained_saes.yaml"
        if p.is_file():
            return p
    sys.exit("the installed sae_lens has no pretrained_saes.yaml: pass its path")


def stub_missing_loaders(names: set[str]) -> list[str]:
    """Register do-nothing loaders for formats not provided yet (this process only)."""
    import sae_hub

    missing = sorted(n for n in names if n not in sae_hub.list_loaders())
    for name in missing:
        sae_hub.register_loader(name, files=["*"], detect=lambda p: False)(lambda p, o: None)
    return missing


def _fact(value: object) -> object:
    if value is None:
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    return str(value)


def compare(saelens: dict, quiet: bool) -> tuple[int, int]:
    """Print the comparison; return (coverage, number of problems)."""
    from sae_hub import releases

    ours = {name: releases.get_release(name) for name in releases.list_releases()}
    total = sum(len(rel["saes"]) for rel in saelens.values())
    by_func_rel, by_func_sae = Counter(), Counter()
    for rel in saelens.values():
        by_func_rel[rel.get("conversion_func")] += 1
        by_func_sae[rel.get("conversion_func")] += len(rel["saes"])

    problems: list[str] = []
    fact_problems: list[str] = []
    covered = 0
    ours_by_format_rel, ours_by_format_sae = Counter(), Counter()
    for rel in ours.values():
        ours_by_format_rel[rel.format] += 1
        ours_by_format_sae[rel.format] += len(rel.saes)

    for name, rel in saelens.items():
        func = rel.get("conversion_func")
        mine = ours.get(name)
        if func not in COVERED:
            if mine is not None:
                problems.append(f"{name}: conversion_func {func!r} is not a covered family but the registry has it")
            continue
        if mine is None:
            problems.append(f"{name}: release missing ({len(rel['saes'])} SAEs, conversion_func {func!r})")
            continue
        if mine.format != COVERED[func]:
            problems.append(f"{name}: format {mine.format!r}, expected {COVERED[func]!r}")
        if mine.repo_id != rel["repo_id"]:
            problems.append(f"{name}: repo_id {mine.repo_id!r} != SAELens {rel['repo_id']!r}")
        if mine.model != rel["model"]:
            problems.append(f"{name}: model {mine.model!r} != SAELens {rel['model']!r}")
        seen = set()
        for sae in rel["saes"]:
            sid = sae["id"]
            seen.add(sid)
            path = str(sae["path"]) if isinstance(sae["path"], int) else sae["path"]
            entry = mine.saes.get(sid)
            if entry is None:
                problems.append(f"{name} / {sid}: SAE missing")
                continue
            if mine.repo_id == rel["repo_id"] and entry.path == path:
                covered += 1
            else:
                problems.append(f"{name} / {sid}: resolves to ({mine.repo_id}, {entry.path}), "
                                f"SAELens ({rel['repo_id']}, {path})")
            for fact in FACTS:
                want, got = _fact(sae.get(fact)), _fact(getattr(entry, fact))
                if want != got:
                    fact_problems.append(f"{name} / {sid}: {fact} {got!r} != SAELens {want!r}")
        extra = sorted(set(mine.saes) - seen)
        if extra:
            problems.append(f"{name}: {len(extra)} SAE id(s) not in SAELens, e.g. {extra[:3]}")
    not_in_saelens = sorted(set(ours) - set(saelens))

    print(f"SAELens: {len(saelens)} releases, {total:,} SAEs")
    print("\nfamily (SAELens conversion_func -> sae-hub format): SAELens releases/SAEs | sae-hub releases/SAEs")
    for func, fmt in COVERED.items():
        print(f"  {func!s:24} -> {fmt:20} {by_func_rel[func]:4} / {by_func_sae[func]:5}")
    for fmt in sorted(set(COVERED.values())):
        print(f"  sae-hub format {fmt:22} {ours_by_format_rel[fmt]:4} releases / {ours_by_format_sae[fmt]:5} SAEs")
    excluded = {f: (by_func_rel[f], by_func_sae[f]) for f in by_func_rel if f not in COVERED}
    print("  not covered: " + ", ".join(f"{f} ({r} releases / {s} SAEs)" for f, (r, s) in sorted(excluded.items())))
    if not_in_saelens:
        print(f"  sae-hub releases not in SAELens: {', '.join(not_in_saelens)}")

    print(f"\ncoverage: {covered:,} of {total:,} SAELens SAEs resolve to the same (repo_id, path) "
          f"({covered / total:.1%}); {sum(by_func_sae[f] for f in COVERED):,} SAEs are in covered families")
    print(f"resolution mismatches: {len(problems)}")
    for line in problems[: (20 if quiet else None)]:
        print("  " + line)
    print(f"fact mismatches (l0, neuronpedia, variance_explained, norm_scaling_factor): {len(fact_problems)}")
    for line in fact_problems[: (20 if quiet else None)]:
        print("  " + line)
    return covered, len(problems) + len(fact_problems)


def _run(code: str, cache: str) -> str:
    env = {**os.environ, "SAE_HUB_CACHE": cache}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=env,
                         check=False)
    if out.returncode != 0:
        raise RuntimeError(out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "subprocess failed")
    return out.stdout.strip().splitlines()[-1]


def timings(stubbed: list[str], repeats: int = 5) -> None:
    """Fresh-process timings of ``list_releases()`` minus the import, cold (YAML parsed) and warm (JSON cache).

    sae_hub.releases caches each parsed file as JSON under $SAE_HUB_CACHE/registry; a temporary cache folder is
    used here so "cold" really parses the YAML and the user's cache is left alone.
    """
    listing = ("import time\nt0 = time.perf_counter()\nimport sae_hub.releases as r\nt1 = time.perf_counter()\n"
               "r.list_releases()\nt2 = time.perf_counter()\nimport sys\n"
               "print((t1 - t0) * 1e3, (t2 - t1) * 1e3, int('torch' in sys.modules))\n")
    stub = STUB_CODE.format(names=stubbed) if stubbed else ""
    expand = ("import time\nimport sae_hub.releases as r\nimport sae_hub.loading as l\nt0 = time.perf_counter()\n"
              "l.list_loaders()\nt1 = time.perf_counter()\n" + stub + "names = r.list_releases()\n"
              "t2 = time.perf_counter()\nn = sum(len(r.get_release(x).saes) for x in names)\n"
              "t3 = time.perf_counter()\nprint((t1 - t0) * 1e3, (t3 - t2) * 1e3, n)\n")
    imp, cold, warm, disc, exp = [], [], [], [], []
    torch_imported = False
    n_saes = 0
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as cache:
            a, b, t = _run(listing, cache).split()
            imp.append(float(a))
            cold.append(float(b))
            torch_imported |= t == "1"
            a, b, t = _run(listing, cache).split()
            warm.append(float(b))
            torch_imported |= t == "1"
            d, e, n = _run(expand, cache).split()
            disc.append(float(d))
            exp.append(float(e))
            n_saes = int(n)
    med = statistics.median

    def verdict(ms: float) -> str:
        return "met" if ms < 50 else "NOT met"

    print(f"\nfresh-process timings (median of {repeats}):")
    print(f"  import sae_hub.releases:                          {med(imp):8.1f} ms")
    print(f"  list_releases() after the import, cold cache:     {med(cold):8.1f} ms  (parses the YAML; target "
          f"< 50 ms {verdict(med(cold))})")
    print(f"  list_releases() after the import, warm cache:     {med(warm):8.1f} ms  (JSON cache; target "
          f"< 50 ms {verdict(med(warm))})")
    print(f"  listing imported torch: {'yes' if torch_imported else 'no'}")
    print(f"  first get_release(): loader discovery (imports torch) {med(disc):8.1f} ms; then expanding every "
          f"release ({n_saes:,} SAEs) {med(exp):.1f} ms")


def sizes(saelens_path: Path) -> None:
    import sae_hub.registry as shipped

    files = sorted(p for d in shipped.__path__ for p in Path(d).glob("*.yaml"))
    total = sum(p.stat().st_size for p in files)
    ref = saelens_path.stat().st_size
    print(f"\nYAML size: {total / 1e3:.1f} kB in {len(files)} files vs SAELens {ref / 1e6:.2f} MB "
          f"({total / ref:.1%})")
    for p in files:
        print(f"  {p.name:28} {p.stat().st_size / 1e3:8.1f} kB")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("saelens_yaml", nargs="?", type=Path, help="SAELens pretrained_saes.yaml (default: installed)")
    ap.add_argument("--quiet", action="store_true", help="print at most 20 mismatches per kind")
    ap.add_argument("--repeats", type=int, default=5, help="fresh processes per timing (default 5)")
    args = ap.parse_args()
    path = args.saelens_yaml or find_saelens_yaml()
    saelens = yaml.load(path.read_text(encoding="utf-8"), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    print(f"SAELens table: {path}")

    import sae_hub.registry as shipped

    used = set()
    for d in shipped.__path__:
        for p in Path(d).glob("*.yaml"):
            doc = yaml.load(p.read_text(encoding="utf-8"), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
            used |= {r["format"] for r in doc.get("releases", [])}
    stubbed = stub_missing_loaders(used | set(COVERED.values()))
    print(f"stubbed loaders (not registered yet): {', '.join(stubbed) if stubbed else 'none'}\n")

    _, n_problems = compare(saelens, args.quiet)
    timings(stubbed, args.repeats)
    sizes(path)
    return 1 if n_problems else 0


if __name__ == "__main__":
    sys.exit(main())
