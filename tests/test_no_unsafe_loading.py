"""Static guard: no code in sae_hub/ or loaders/ can unpickle a file with code execution.

Walks the AST of every module: ``torch.load`` must pass ``weights_only=True``; ``pickle.load``/``loads``,
``dill``/``cloudpickle`` loads and ``numpy.load(allow_pickle=True)`` must not appear at all. (The safe
unpickler subclasses ``pickle.Unpickler`` with an allow-list; that class is tested in test_safe_pickle.py.)
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted([*ROOT.glob("sae_hub/**/*.py"), *ROOT.glob("loaders/**/*.py")])


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    if isinstance(node, ast.Name):
        return node.id
    return "?"


def _const_kw(call: ast.Call, name: str) -> object:
    for kw in call.keywords:
        if kw.arg == name:
            return kw.value.value if isinstance(kw.value, ast.Constant) else "<dynamic>"
    return "<missing>"


def _problems(source: str) -> list[str]:
    problems = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        if name.endswith("torch.load") and _const_kw(node, "weights_only") is not True:
            problems.append(f"line {node.lineno}: torch.load without weights_only=True")
        if name in {"pickle.load", "pickle.loads", "dill.load", "dill.loads", "cloudpickle.load",
                    "cloudpickle.loads", "marshal.loads"}:
            problems.append(f"line {node.lineno}: {name}")
        if name.endswith(("np.load", "numpy.load")) and _const_kw(node, "allow_pickle") is not False:
            problems.append(f"line {node.lineno}: numpy.load without allow_pickle=False")
    return problems


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_unsafe_deserialisation(path):
    problems = _problems(path.read_text(encoding="utf-8"))
    assert not problems, problems


def test_the_guard_flags_unsafe_calls():
    bad = ("import torch, pickle, numpy as np\n"
           "torch.load(f)\ntorch.load(f, weights_only=False)\npickle.load(f)\nnp.load(f)\n"
           "np.load(f, allow_pickle=True)\ntorch.load(f, weights_only=True)\nnp.load(f, allow_pickle=False)\n")
    assert [p.split(":")[0] for p in _problems(bad)] == [f"line {i}" for i in (2, 3, 4, 5, 6)]


def test_the_guard_sees_every_module():
    assert len(SOURCES) > 15 and any(p.name == "safe_pickle.py" for p in SOURCES)
