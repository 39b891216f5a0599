"""What the release table's fast reader (:mod:`sae_hub.releases`) and its validator
(:mod:`sae_hub.registry_schema`) must agree on: size limits, the ``{var}`` template syntax, ``"a..b"`` ranges
and the wording of a bad numeric fact.

A module of its own so the dependency runs one way: ``releases`` imports the validator only when a file is not
in its cache (the validator brings msgspec), and the validator needs these rules without importing
``releases`` back. Nothing here imports more than :mod:`sae_hub.errors`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from sae_hub.errors import RegistryError

__all__ = ["HINTS", "MAX_DEPTH", "MAX_FILE_BYTES", "MAX_NODES", "MAX_SAES_PER_FILE", "MAX_SAES_PER_RELEASE",
           "NUMERIC_FACTS", "TEMPLATE", "axes", "short"]

# Limits. The shipped table is ~230 KB in 7 files, ~36k YAML nodes, at most 8,784 SAEs per file and 536 per
# release, nested 8 levels: every limit leaves one to two orders of magnitude of room for real release tables
# while keeping a hostile file to about a second of parsing and a few hundred MB at worst.
MAX_FILE_BYTES = 8 << 20  # bytes of one release-table file
MAX_NODES = 1_000_000  # YAML nodes of one file, counting every alias as the full node it stands for
MAX_DEPTH = 32  # nesting levels of one file (the schema needs 8)
MAX_SAES_PER_RELEASE = 50_000  # SAEs one release (and so one entry) may expand to
MAX_SAES_PER_FILE = 100_000  # SAEs all releases of one file (or one add() call) may expand to

NUMERIC_FACTS = ("l0", "variance_explained", "norm_scaling_factor")  # converted to float after template filling
TEMPLATE = re.compile(r"\{(\w+)\}")
_RANGE_LIKE = re.compile(r"^\s*(-?\d+)\s*\.\.\s*(-?\d+)\s*$")

#: What a field must be, in words, for error messages of both the validator and the expansion.
HINTS = {
    "sha256": "a 64-digit hex string (the sha256 of the weights file) or a {var} template",
    "norm_scaling_factor": "a finite positive number or a {var} template",
    "l0": "a finite number >= 0 or a {var} template",
    "variance_explained": "a finite number or a {var} template",
    "repo_id": "a Hub repo id 'org/name'",
    "name": "a non-empty name without whitespace",
}


def short(value: Any) -> str:
    """``repr(value)``, cut to 80 characters for an error message."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def axes(row: Mapping[str, Any], at: str, source: str) -> list[tuple[str, range | list[Any]]]:
    """One ``expand`` row as (variable, values) axes; ``"a..b"`` becomes a lazy inclusive range."""
    out: list[tuple[str, range | list[Any]]] = []
    for key, value in row.items():
        if isinstance(value, str) and (m := _RANGE_LIKE.match(value)):
            if max(len(m[1].lstrip("-")), len(m[2].lstrip("-"))) > 12:
                raise RegistryError(f"range {value!r}: bounds of at most 12 digits", path=source, field=f"{at}.{key}")
            lo, hi = int(m[1]), int(m[2])
            if lo > hi:
                raise RegistryError(f"range {value!r} is empty (a..b needs a <= b)", path=source, field=f"{at}.{key}")
            out.append((key, range(lo, hi + 1)))
        elif isinstance(value, list):
            out.append((key, value))
        else:
            out.append((key, [value]))
    return out
