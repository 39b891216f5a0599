"""The command line's shape: ``python -m sae_hub`` works, ``formats`` lists the loader registry, and library helpers
the CLI uses are library functions (the demo does not import from the CLI)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_python_dash_m_sae_hub_runs_the_cli():
    out = subprocess.run([sys.executable, "-m", "sae_hub", "--help"], capture_output=True, text=True, check=True)
    assert "usage: sae-hub" in out.stdout
    for name in ("convert", "formats", "inspect", "list", "train", "upload"):
        assert name in out.stdout


def test_formats_lists_every_registered_loader_with_its_files():
    from sae_hub.loading import get_loader, list_loaders

    out = subprocess.run([sys.executable, "-m", "sae_hub", "formats", "--files"], capture_output=True, text=True,
                         check=True).stdout
    for name in list_loaders():
        assert any(line.startswith(name + " ") for line in out.splitlines()), name
        assert ", ".join(get_loader(name).files) in out


def test_no_module_imports_from_the_cli():
    """The CLI sits at the top: library modules never import it (they used to borrow ``describe``/``_boot_model``)."""
    offenders = []
    for path in (ROOT / "sae_hub").rglob("*.py"):
        if path.name in ("cli.py", "__main__.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module == "sae_hub.cli":
                offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


def test_every_subcommand_is_declared_next_to_its_handler():
    from sae_hub import cli

    parser = cli._parser()
    names = {c.name for c in cli._COMMANDS}
    assert {"demo", "list", "info", "formats", "inspect", "convert", "train", "cache-activations", "upload"} <= names
    args = parser.parse_args(["inspect", "x"])
    assert args.func.__name__ == "_inspect"
