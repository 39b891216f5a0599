#!/usr/bin/env python3
"""Set up a virtual environment for sae-hub and run the demo or the test suite.

Usage (from the repository root, with nothing but Python >= 3.10):

    python3 .ci/bootstrap.py demo    # create .venv, install sae-hub, run `sae-hub demo`
    python3 .ci/bootstrap.py test    # create .venv, install sae-hub[test], run ruff and pytest

Torch is installed first, pinned to 2.13.0, when the environment has none: an unpinned ``torch``
requirement would pull the newest CUDA build (several GB). If the Python running this script already
has torch, the virtual environment is created with access to it and that torch is kept.
Stdlib only: this runs before anything is installed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = Path(os.environ.get("SAE_HUB_VENV", ROOT / ".venv"))
TORCH_PIN = "torch==2.13.0"


def run(*cmd: str | Path, **kw: object) -> None:
    print("+", " ".join(map(str, cmd)), flush=True)
    subprocess.run([str(c) for c in cmd], check=True, cwd=ROOT, **kw)  # type: ignore[arg-type]


def has_torch(python: str | Path) -> bool:
    return subprocess.run([str(python), "-c", "import torch"], capture_output=True).returncode == 0


# A second environment with the peers themselves (SAELens 6.54 brings TransformerLens 3): tests/compat proves
# that SAELens loads what sae-hub saves and that splicing works on a TransformerLens 3 HookedTransformer.
COMPAT_VENV = Path(os.environ.get("SAE_HUB_COMPAT_VENV", ROOT / ".venv-compat"))
COMPAT_REQUIREMENTS = ("sae-lens==6.54.12", "pytest>=8")


def ensure_venv(extras: str, *, venv_dir: Path = VENV, extra_requirements: tuple[str, ...] = ()) -> Path:
    py = venv_dir / ("Scripts" if os.name == "nt" else "bin") / "python"
    if not py.exists():
        system_torch = has_torch(sys.executable)
        print(f"creating {venv_dir} (system torch {'found, kept' if system_torch else 'absent'})", flush=True)
        venv.EnvBuilder(with_pip=True, system_site_packages=system_torch).create(venv_dir)
    pip = [py, "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    if not has_torch(py):
        run(*pip, TORCH_PIN)
    run(*pip, *extra_requirements, "-e", f".[{extras}]" if extras else ".")
    return py


def main() -> int:
    job = sys.argv[1] if len(sys.argv) > 1 else "test"
    start = time.time()
    if job == "demo":
        py = ensure_venv("")
        run(py, "-m", "sae_hub.cli", "demo", *sys.argv[2:])
    elif job == "test":
        py = ensure_venv("test")
        run(py, "-m", "ruff", "check", ".")
        # pytest exits 5 when it collects nothing; check=True turns that (and any failure) into an error.
        run(py, "-m", "pytest", "-q", "-p", "no:cacheprovider", *sys.argv[2:])
        if not sys.argv[2:]:
            compat = ensure_venv("", venv_dir=COMPAT_VENV, extra_requirements=COMPAT_REQUIREMENTS)
            run(compat, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/compat")
    else:
        print(f"unknown job {job!r}; use 'demo' or 'test'", file=sys.stderr)
        return 2
    print(f"{job}: done in {time.time() - start:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except subprocess.CalledProcessError as e:
        print(f"failed (exit {e.returncode}): {' '.join(map(str, e.cmd))}", file=sys.stderr)
        sys.exit(e.returncode or 1)
