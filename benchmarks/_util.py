"""Shared helpers for the benchmark scripts: run a snippet in a fresh interpreter, report time and peak RSS."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys

# VmHWM (peak RSS of this address space) rather than ru_maxrss: Linux carries ru_maxrss across execve, so a
# child would report its parent's peak.
_WRAP = """
import json, sys, time
def _hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
t0 = time.perf_counter()
{setup}
base = _hwm()
t1 = time.perf_counter()
{code}
t2 = time.perf_counter()
peak = _hwm()
print(json.dumps({{"setup_s": t1 - t0, "code_s": t2 - t1, "base_kb": base, "peak_kb": peak}}))
"""


def run_fresh(code: str, setup: str = "pass", repeat: int = 5) -> dict[str, float]:
    """Median over ``repeat`` fresh processes of: wall time of the whole process, time of ``code`` after
    ``setup``, and peak RSS (total, and growth during ``code``) in MiB."""
    runs = []
    for _ in range(repeat):
        import time

        t = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", _WRAP.format(setup=setup, code=code)],
                             capture_output=True, text=True, check=True)
        wall = time.perf_counter() - t
        r = json.loads(out.stdout.strip().splitlines()[-1])
        r["wall_s"] = wall
        runs.append(r)
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    return {
        "wall_s": med["wall_s"],
        "code_s": med["code_s"],
        "peak_mib": med["peak_kb"] / 1024,
        "growth_mib": (med["peak_kb"] - med["base_kb"]) / 1024,
    }
