"""Packaging and import hygiene: what a user installs, and what ``import sae_hub`` costs."""

from __future__ import annotations

import email.parser
import re
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


SHADOW_CHECK = """
import importlib, pkgutil, sys
for pkg_name in ("sae_hub", "sae_hub.training", "sae_hub.analysis"):
    pkg = importlib.import_module(pkg_name)
    for info in pkgutil.iter_modules(pkg.__path__):  # every submodule, imported the way a user's code might
        if info.name == "__main__":
            continue
        try:
            importlib.import_module(f"{pkg_name}.{info.name}")
        except ImportError:  # an optional dependency missing: that submodule cannot shadow anything
            pass
    for name in pkg.__all__:
        value = getattr(pkg, name)
        if name in getattr(pkg, "_SUBMODULES", ()):  # exported as modules on purpose (sae_hub.analysis.plots)
            continue
        assert not isinstance(value, type(sys)), f"{pkg_name}.{name} is the module {value.__name__}, not the export"
"""


def test_lazy_exports_are_not_shadowed_by_a_submodule_of_the_same_name():
    """``from sae_hub.training import evaluate`` was the *module* evaluate.py once anything had imported
    ``sae_hub.training.evaluate`` (the import system binds a submodule onto its package), and the call failed
    with "'module' object is not callable" depending on import order. Every lazy export stays the object."""
    out = subprocess.run([sys.executable, "-c", SHADOW_CHECK], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]


def test_loaders_and_registry_import_from_any_directory():
    out = subprocess.run(
        [sys.executable, "-c", "import sae_hub.loaders.saelens, sae_hub.registry; print('ok')"],
        capture_output=True, text=True, cwd="/",
    )
    assert out.stdout.strip() == "ok", out.stderr


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel ``pip wheel .`` builds from the checkout (no dependencies fetched, the installed setuptools)."""
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(ROOT)],
        check=True, capture_output=True,
    )
    (built,) = out.glob("sae_hub-*.whl")
    return built


@pytest.mark.slow
def test_wheel_contains_loaders_registry_yaml_and_py_typed(wheel):
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


def _metadata(wheel: Path) -> email.message.Message:
    with zipfile.ZipFile(wheel) as z:
        name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        return email.parser.Parser().parsestr(z.read(name).decode())


def _requires(meta: email.message.Message) -> tuple[set[str], dict[str, set[str]]]:
    """Core requirement names, and each extra's requirement names with ``sae-hub[x]`` self-references expanded."""
    from packaging.requirements import Requirement

    core: set[str] = set()
    direct: dict[str, list[Requirement]] = {e: [] for e in meta.get_all("Provides-Extra")}
    for line in meta.get_all("Requires-Dist"):
        req = Requirement(line)
        if req.marker is None:
            core.add(req.name)
            continue
        (extra,) = re.findall(r'extra == "([^"]+)"', str(req.marker))
        direct[extra].append(req)

    def expand(extra: str) -> set[str]:
        names: set[str] = set()
        for req in direct[extra]:
            names |= set().union(*(expand(e) for e in req.extras)) if req.name == "sae-hub" else {req.name}
        return names

    return core, {e: expand(e) for e in direct}


@pytest.mark.slow
def test_wheel_metadata_is_complete_and_the_extras_are_split(wheel):
    meta = _metadata(wheel)
    init = (ROOT / "sae_hub" / "__init__.py").read_text()
    assert meta["Version"] == re.search(r'^__version__ = "([^"]+)"', init, re.M).group(1)  # the one source
    assert meta["Name"] == "sae-hub" and meta["Requires-Python"] == ">=3.10"
    assert meta["License-Expression"] == "MIT" and meta.get_all("License-File") == ["LICENSE"]
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in zipfile.ZipFile(wheel).namelist())
    urls = dict(u.split(", ", 1) for u in meta.get_all("Project-URL"))
    assert {"Homepage", "Source", "Issues", "Documentation"} <= set(urls)
    assert all(u.startswith("https://") for u in urls.values())
    classifiers = meta.get_all("Classifier")
    assert "Typing :: Typed" in classifiers and "Programming Language :: Python :: 3 :: Only" in classifiers
    assert not [c for c in classifiers if c.startswith("License ::")]  # PEP 639: the SPDX expression instead
    assert "sparse autoencoder" in meta["Keywords"] and meta["Author"] and meta["Summary"]

    core, extras = _requires(meta)
    assert core == {"torch", "huggingface-hub", "safetensors", "pyyaml", "msgspec", "tqdm", "numpy"}
    assert extras["analysis"] == {"plotly", "requests", "pandas"}
    assert extras["lens"] == {"transformer-lens", "transformers", "datasets"}
    assert extras["train"] == extras["lens"] | {"scipy"}
    assert extras["all"] == extras["analysis"] | extras["train"]
    assert extras["test"] >= extras["all"] | {"pytest"}

    from sae_hub.extras import EXTRAS  # the table the import helper's messages come from says the same

    assert {e: set(d) for e, d in EXTRAS.items()} == {e: extras[e] for e in EXTRAS}


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
