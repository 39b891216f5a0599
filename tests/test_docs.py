"""The reference notes the code cites live in ``docs/`` and every citation resolves.

Docstrings used to cite notes outside the repository, which a clone does not have. These tests keep it that
way: no source file may point outside the repository for its reference notes, and every
``docs/<file>.md#<anchor>`` a file cites must name an existing doc and one of its heading anchors, computed
the way GitHub renders them (github-slugger), so the links work on GitHub as well as here.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
# Built from parts so this file does not contain the strings it forbids.
FORBIDDEN = ("../" + "shared", "shared" + "/reference")
# Folders whose docstrings and comments may cite the docs; the forbidden-pointer rule applies to all of them.
CODE_DIRS = ("sae_hub", "loaders", "benchmarks", "tests", "tutorials")
TEXT_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".toml", ".txt", ".ipynb", ".json", ".cfg"}
CITATION = re.compile(r"docs/([A-Za-z0-9_.-]+\.md)#([^\s`'\")\]>,;]+)")
LOCAL_LINK = re.compile(r"\]\(([A-Za-z0-9_.-]+\.md)?#([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's heading anchor: lower case, punctuation except ``-``/``_`` dropped, each space a hyphen.

    Markdown decoration (inline code, emphasis, link targets) is stripped first, as GitHub slugs the rendered
    text. Unicode letters and digits are kept, like github-slugger.
    """
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # [text](target) -> text
    text = text.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(doc: Path) -> set[str]:
    """Every heading anchor of a markdown file (duplicates numbered ``-1``, ``-2``, ... as GitHub does)."""
    seen: dict[str, int] = {}
    out: set[str] = set()
    in_fence = False
    for line in doc.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            in_fence = not in_fence
            continue
        m = re.match(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$", line)
        if in_fence or not m:
            continue
        base = slug(m.group(2))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def text_files(*dirs: str) -> Iterator[Path]:
    for d in dirs:
        for p in sorted((ROOT / d).rglob("*")):
            if (p.is_file() and p.suffix in TEXT_SUFFIXES and "__pycache__" not in p.parts
                    and "fixtures" not in p.parts and ".ipynb_checkpoints" not in p.parts):
                yield p


def read(p: Path) -> str:
    return p.read_text(encoding="utf-8", errors="replace")


# ------------------------------------------------------------------------------------------------ the slugger


@pytest.mark.parametrize("heading, expected", [
    # github-slugger's documented behaviour
    ("Hello World", "hello-world"),
    ("C++ & Java", "c--java"),
    ("dictionary_learning", "dictionary_learning"),
    ("Привет non-latin 你好", "привет-non-latin-你好"),
    ("`lm-saes` eras", "lm-saes-eras"),
    ("See [formats](formats.md)", "see-formats"),
])
def test_slug_matches_github(heading: str, expected: str) -> None:
    assert slug(heading) == expected


def test_duplicate_headings_are_numbered(tmp_path: Path) -> None:
    doc = tmp_path / "d.md"
    doc.write_text("# Sources\n\n```\n# not a heading\n```\n## Sources\n### Sources\n", encoding="utf-8")
    assert anchors(doc) == {"sources", "sources-1", "sources-2"}


# ------------------------------------------------------------------------------------------------ the rules


def test_no_pointer_outside_the_repository() -> None:
    """No file under the code folders cites notes that only exist next to the repository."""
    offenders = [
        f"{p.relative_to(ROOT)}:{i}: {line.strip()}"
        for p in text_files(*CODE_DIRS)
        for i, line in enumerate(read(p).splitlines(), 1)
        if any(s in line for s in FORBIDDEN)
    ]
    assert not offenders, "cite docs/<file>.md#<anchor> instead:\n" + "\n".join(offenders)


def test_every_cited_anchor_exists() -> None:
    """Each ``docs/<file>.md#<anchor>`` in the code, the README and the docs names a real heading."""
    sources = [*text_files(*CODE_DIRS), ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
    cited: list[tuple[str, str, str]] = []
    for p in sources:
        for m in CITATION.finditer(read(p)):
            cited.append((str(p.relative_to(ROOT)), m.group(1), m.group(2).rstrip(".:")))
    assert cited, "no docs/<file>.md#<anchor> citation found: the code should point into docs/"
    bad = [f"{where}: docs/{name}#{anchor}" for where, name, anchor in cited
           if not (DOCS / name).is_file() or anchor not in anchors(DOCS / name)]
    assert not bad, "unresolved citations:\n" + "\n".join(bad)


def test_links_inside_docs_resolve() -> None:
    """``[text](#anchor)`` and ``[text](other.md#anchor)`` links between the docs point at real headings."""
    bad = []
    for doc in sorted(DOCS.glob("*.md")):
        for m in LOCAL_LINK.finditer(read(doc)):
            target = DOCS / m.group(1) if m.group(1) else doc
            if not target.is_file() or m.group(2) not in anchors(target):
                bad.append(f"{doc.name}: {m.group(0)}")
    assert not bad, "\n".join(bad)


def test_every_loader_has_a_formats_section() -> None:
    """Each built-in loader module has a section in docs/formats.md named after its format."""
    have = anchors(DOCS / "formats.md")
    modules = sorted(p.stem for p in (ROOT / "loaders").glob("*.py") if p.stem != "__init__")
    assert modules
    missing = [m for m in modules if m.replace("_", "-") not in have]
    assert not missing, f"docs/formats.md lacks a section for: {missing}"
