"""Import cost of sae-hub next to torch's, measured in the same run (fresh interpreter per sample).

Target (issue 2): ``python -c "import sae_hub"`` within 1.10x the wall time and peak RSS of
``python -c "import torch"``. ``from sae_hub import SAE`` (which needs torch) is shown too, since that is what
a notebook actually runs.

    python benchmarks/bench_import.py [--repeat 7]
"""

from __future__ import annotations

import argparse

from _util import run_fresh


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    rows = {
        "python (nothing)": "pass",
        "import torch": "import torch",
        "import sae_hub": "import sae_hub",
        "from sae_hub import SAE": "from sae_hub import SAE",
    }
    res = {name: run_fresh(code, repeat=args.repeat) for name, code in rows.items()}
    base = res["import torch"]
    print(f"{'command':28s} {'wall ms':>9s} {'peak MiB':>9s} {'wall/torch':>11s} {'RSS/torch':>10s}")
    for name, r in res.items():
        print(f"{name:28s} {r['wall_s'] * 1000:9.0f} {r['peak_mib']:9.1f} "
              f"{r['wall_s'] / base['wall_s']:11.2f} {r['peak_mib'] / base['peak_mib']:10.2f}")


if __name__ == "__main__":
    main()
