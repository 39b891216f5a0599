#!/usr/bin/env python3
"""Set up a virtual environment for sae-hub and run the demo or the test suite.

Usage (from the repository root, with nothing but Python >= 3.10):

    python3 .ci/bootstrap.py demo    # create .venv, install sae-hub[analysis], run `sae-hub demo`
    python3 .ci/bootstrap.py test    # create .venv, install sae-hub[test], run ruff, mypy and pytest; then the
                                     # SAELens compat suite in .venv-compat, the circuit-tracer suite in
                                     # .venv-ct and the core-only suite in .venv-core
    python3 .ci/bootstrap.py ct      # only the circuit-tracer environment and its suite

Torch is installed first, pinned to 2.13.0, when the environment has none: an unpinned ``torch``
requirement would pull the newest CUDA build (several GB). If the Python running this script already
has torch, the virtual environment is created with access to it and that torch is kept.
Packages are installed with ``uv`` (on PATH, or pip-installed into the new environment first; several times
faster than pip at resolving and unpacking), given the same sources pip is configured with (``pip config list``:
find-links, index URLs, constraints), because uv reads none of pip's configuration: so the local CPU torch wheel
is still the one taken. ``SAE_HUB_NO_UV=1``, or uv failing to install, means pip.
Stdlib only: this runs before anything is installed.
"""

from __future__ import annotations

import os
import shlex
import shutil
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


# A third environment with sae-hub's core dependencies only (`pip install .`, no extras): tests/core_only proves that
# a loader-only user can load every format, list releases and fetch configs, and that each optional feature names
# the extra to install. Never created with the system site-packages: a package there would fake an extra.
CORE_VENV = Path(os.environ.get("SAE_HUB_CORE_VENV", ROOT / ".venv-core"))
CORE_REQUIREMENTS = ("pytest>=8",)


# A fourth environment with circuit-tracer 0.5.0 itself: tests/compat_circuit_tracer proves that circuit-tracer's own
# loaders read what `convert(..., to="circuit-tracer")` writes and compute the same features and outputs. Its own
# environment because circuit-tracer pins huggingface-hub<1 and transformers<=4.57.3, which the main environment's
# extras have outgrown; sae-hub's core dependencies accept both. Torch stays the one installed first (a constraints
# file pins it: circuit-tracer's `torch>=2.0` must never pull another build).
CT_VENV = Path(os.environ.get("SAE_HUB_CT_VENV", ROOT / ".venv-ct"))
CT_REQUIREMENTS = ("circuit-tracer==0.5.0", "pytest>=8")


def core_job_plan() -> dict[str, object]:
    """What the core-only job installs and runs (tests/test_extras.py checks it).

    pytest runs through the environment's ``pytest`` script, not ``python -m pytest``: ``-m`` puts the working
    directory (the checkout, with its own ``sae_hub/``) first on ``sys.path``, and the test would exercise the
    checkout instead of the installed wheel. ``SAE_HUB_CORE_ONLY=installed`` makes a skip there a failure and
    checks that ``sae_hub`` comes from site-packages.
    """
    bindir = CORE_VENV / ("Scripts" if os.name == "nt" else "bin")
    return {"venv": CORE_VENV, "install": ["."], "requirements": list(CORE_REQUIREMENTS),
            "env": {"SAE_HUB_CORE_ONLY": "installed"},
            "command": [bindir / "pytest", "-q", "-p", "no:cacheprovider", "tests/core_only"]}


def pip_sources() -> list[str]:
    """pip's configured package sources as ``uv pip install`` arguments.

    ``pip config list`` prints ``scope.key='value'`` lines (``:env:`` for PIP_* variables); uv reads none of them,
    and without them it would fetch a CUDA torch from PyPI instead of the local CPU wheel pip is pointed at.
    """
    out = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
    flags = {"find-links": "--find-links", "index-url": "--index-url", "extra-index-url": "--extra-index-url",
             "constraint": "--constraint"}
    args: list[str] = []
    seen: set[tuple[str, str]] = set()
    for line in out.splitlines():
        key, sep, value = line.partition("=")
        name = key.rsplit(".", 1)[-1]
        if not sep or name not in flags:
            continue
        for item in shlex.split(value):
            for part in item.split():
                if (name, part) not in seen:
                    seen.add((name, part))
                    args += [flags[name], part]
    if any(a == "--extra-index-url" for a in args):
        args += ["--index-strategy", "unsafe-best-match"]  # pip's behaviour: best version across all indexes
    return args


def installer(py: Path) -> list[str | Path]:
    """The install command for the environment of ``py``: uv when it is on PATH (or installed into that environment
    with pip first: one small wheel, and uv then installs everything else several times faster), else pip.
    ``SAE_HUB_NO_UV=1`` forces pip."""
    pip: list[str | Path] = [py, "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    if os.environ.get("SAE_HUB_NO_UV") == "1":
        return pip
    uv = shutil.which("uv") or str(py.parent / "uv")
    if not Path(uv).exists():
        got = subprocess.run([*map(str, pip), "uv"], capture_output=True, text=True)
        if got.returncode != 0 or not Path(uv).exists():
            print("uv could not be installed; using pip", flush=True)
            return pip
    return [uv, "pip", "install", "--quiet", "--python", py, *pip_sources()]


def ensure_venv(extras: str, *, venv_dir: Path = VENV, extra_requirements: tuple[str, ...] = (),
                editable: bool = True, isolated: bool = False, keep_torch: bool = False) -> Path:
    """Create ``venv_dir`` if needed and install sae-hub with ``extras`` into it (editable unless told otherwise).

    ``isolated`` never shares the system site-packages (its torch included: the pinned one is installed).
    A non-editable install is rebuilt from the checkout every time (uv would otherwise reuse a cached build of an
    unchanged pyproject.toml and test stale code). ``keep_torch`` installs the requirements under a constraints
    file naming the torch the environment already has, so no requirement can replace it.
    """
    py = venv_dir / ("Scripts" if os.name == "nt" else "bin") / "python"
    if not py.exists():
        system_torch = has_torch(sys.executable) and not isolated
        print(f"creating {venv_dir} (system torch {'found, kept' if system_torch else 'not used'})", flush=True)
        venv.EnvBuilder(with_pip=True, system_site_packages=system_torch).create(venv_dir)
    pip = installer(py)
    if not has_torch(py):
        run(*pip, TORCH_PIN)
    target = f".[{extras}]" if extras else "."
    if keep_torch:
        pip = [*pip, "--constraint", torch_constraint(py, venv_dir)]
    if editable:
        run(*pip, *extra_requirements, "-e", target)
    elif Path(str(pip[0])).name == "uv":
        run(*pip, "--reinstall-package", "sae-hub", *extra_requirements, target)
    else:
        run(*pip, *extra_requirements, target)
        run(*pip, "--force-reinstall", "--no-deps", target)
    return py


def torch_constraint(py: Path, venv_dir: Path) -> Path:
    """A constraints file pinning the torch that ``py`` imports (its public version: ``2.13.0+cpu`` -> ``2.13.0``,
    which the local build still satisfies), written into ``venv_dir``."""
    version = subprocess.run([str(py), "-c", "import torch; print(torch.__version__)"], capture_output=True,
                             text=True, check=True).stdout.strip().split("+")[0]
    path = venv_dir / "torch-constraint.txt"
    path.write_text(f"torch=={version}\n")
    return path


def ct_job() -> None:
    """Build .venv-ct (circuit-tracer 0.5.0 + sae-hub's core + pytest, torch kept) and run
    tests/compat_circuit_tracer there; prints how long each took (CI time this job adds)."""
    t0 = time.time()
    py = ensure_venv("", venv_dir=CT_VENV, extra_requirements=CT_REQUIREMENTS, keep_torch=True)
    t1 = time.time()
    run(py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/compat_circuit_tracer")
    print(f"circuit-tracer env: installed in {t1 - t0:.0f} s, tests in {time.time() - t1:.0f} s", flush=True)


def core_job() -> None:
    """Build .venv-core (core dependencies + pytest) and run tests/core_only there; prints how long each took."""
    plan = core_job_plan()
    t0 = time.time()
    ensure_venv("", venv_dir=CORE_VENV, extra_requirements=CORE_REQUIREMENTS, editable=False, isolated=True)
    t1 = time.time()
    run(*plan["command"], env={**os.environ, **plan["env"]})  # type: ignore[misc, dict-item]
    print(f"core-only env: installed in {t1 - t0:.0f} s, tests in {time.time() - t1:.0f} s", flush=True)


def main() -> int:
    job = sys.argv[1] if len(sys.argv) > 1 else "test"
    start = time.time()
    if job == "demo":
        py = ensure_venv("analysis")  # plotly for the demo's HTML report
        run(py, "-m", "sae_hub.cli", "demo", *sys.argv[2:])
    elif job == "test":
        py = ensure_venv("test")
        run(py, "-m", "ruff", "check", ".")
        run(py, "-m", "mypy")  # [tool.mypy] in pyproject.toml: files = ["sae_hub", "loaders"]
        # pytest exits 5 when it collects nothing; check=True turns that (and any failure) into an error.
        run(py, "-m", "pytest", "-q", "-p", "no:cacheprovider", *sys.argv[2:])
        if not sys.argv[2:]:
            compat = ensure_venv("", venv_dir=COMPAT_VENV, extra_requirements=COMPAT_REQUIREMENTS)
            run(compat, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/compat")
            ct_job()
            core_job()
    elif job == "ct":
        ct_job()
    else:
        print(f"unknown job {job!r}; use 'demo', 'test' or 'ct'", file=sys.stderr)
        return 2
    print(f"{job}: done in {time.time() - start:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except subprocess.CalledProcessError as e:
        print(f"failed (exit {e.returncode}): {' '.join(map(str, e.cmd))}", file=sys.stderr)
        sys.exit(e.returncode or 1)
