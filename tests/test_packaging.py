"""Packaging and import hygiene: what a user installs, and what ``import sae_hub`` costs."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("transformer_lens", "transformers", "plotly", "requests", "pandas")


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys; print('\\n'.join(sys.modules))"],
        capture_output=True, text=True, check=True, cwd="/",
    )
    return set(out.stdout.split())


@pytest.mark.parametrize("code", [
    "import sae_hub",
    "from sae_hub import SAE, SAEConfig",
    f"from sae_hub import SAE; SAE.load_from_disk({str(ROOT / 'tests/fixtures/sae_lens/topk')!r})",
])
def test_import_does_not_pull_heavy_dependencies(code):
    loaded = _modules_after(code)
    assert not [m for m in HEAVY if m in loaded]


def test_plain_import_does_not_even_import_torch():
    assert "torch" not in _modules_after("import sae_hub; sae_hub.__version__")


def test_loaders_and_registry_import_from_any_directory():
    out = subprocess.run(
        [sys.executable, "-c", "import sae_hub.loaders.saelens, sae_hub.registry; print('ok')"],
        capture_output=True, text=True, cwd="/",
    )
    assert out.stdout.strip() == "ok", out.stderr


@pytest.mark.slow
def test_wheel_contains_loaders_registry_yaml_and_py_typed(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path),
         str(ROOT)],
        check=True, capture_output=True,
    )
    (wheel,) = tmp_path.glob("sae_hub-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    yaml_in_repo = sorted(p.name for p in (ROOT / "registry").glob("*.yaml"))
    loaders_in_repo = sorted(p.name for p in (ROOT / "loaders").glob("*.py"))
    assert loaders_in_repo, "no loader modules"
    for name in loaders_in_repo:
        assert f"sae_hub/loaders/{name}" in names, name
    for name in yaml_in_repo:
        assert f"sae_hub/registry/{name}" in names, name
    assert "sae_hub/registry/__init__.py" in names
    for sub in ("analysis", "training"):
        for module in sorted((ROOT / "sae_hub" / sub).glob("*.py")):
            assert f"sae_hub/{sub}/{module.name}" in names, module
    assert "sae_hub/py.typed" in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "sae-hub = sae_hub.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
    assert not [n for n in names if n.startswith(("tests/", "loaders/", "registry/"))]


def test_cli_help_and_one_line_errors():
    help_out = subprocess.run([sys.executable, "-m", "sae_hub.cli", "--help"], capture_output=True, text=True)
    assert help_out.returncode == 0
    for cmd in ("demo", "inspect"):
        assert cmd in help_out.stdout
    err = subprocess.run([sys.executable, "-m", "sae_hub.cli", "inspect", "/no/such/sae"],
                         capture_output=True, text=True)
    assert err.returncode == 1
    assert err.stderr.strip().count("\n") == 0 and "Traceback" not in err.stderr
    assert "no such file" in err.stderr


def test_cli_inspect_describes_a_checkpoint():
    out = subprocess.run([sys.executable, "-m", "sae_hub.cli", "inspect", str(ROOT / "tests/fixtures/sae_lens/gated")],
                         capture_output=True, text=True, check=True)
    assert "gated" in out.stdout and "W_enc [16, 64]" in out.stdout and "saelens" in out.stdout
