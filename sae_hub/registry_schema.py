"""The declared schema of a release-table file (``registry/*.yaml``), and the JSON Schema generated from it.

One declaration serves three purposes: strict validation of every registry document (shipped files,
``SAE_HUB_REGISTRY`` files, ``registry.add(...)`` paths, dicts and ``hf://`` files), the error path of a bad
value (``releases[3].saes[0].l0``), and ``registry/schema.json``, the JSON Schema editors use to complete and
check registry YAML (``python -m sae_hub.registry_schema > registry/schema.json`` regenerates it; a test checks
the shipped copy is current). What a per-field type cannot say stays in :mod:`sae_hub.releases`: exactly one of
``repo_id`` / ``local_path``, unique release names and SAE ids, templates that name defined variables, and the
cap on how many SAEs an entry may expand to.

Why msgspec rather than pydantic: both validate strictly and generate JSON Schema, but this module is imported
whenever a registry file has to be (re)validated, so its cost lands on ``list_releases()`` after an upgrade or
an edit. Measured here (Python 3.11, warm disk): ``import msgspec`` 17-19 ms; ``import pydantic`` 33-42 ms,
and ~110 ms including building one small model (pydantic compiles a validator per model at class creation).
msgspec's ``convert(..., strict=True)`` refuses every implicit coercion (``"5"`` for an int, ``true`` for a
number), runs in C, and is one dependency-free wheel. Neither is imported by ``import sae_hub`` or by listing
releases from the validated-document cache.

Why ``config`` is declared field by field: an override is applied with ``setattr`` onto a loaded
:class:`~sae_hub.config.SAEConfig`, so an unknown field, a wrong type or an invalid value must be refused here,
where the error can name the YAML file and ``releases[i].saes[j].config.<key>``, not at load time. The
declaration is derived from ``SAEConfig``'s own fields and annotations (a new field appears automatically),
with the value constraints ``SAEConfig.__post_init__`` enforces (architectures, normalisations, positive
sizes, finite positive scaling factors). Non-string fields also accept a ``{var}`` template, converted to the
field's type after filling.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import types
import typing
from typing import Annotated, Any, Literal, Union

import msgspec
from msgspec import UNSET, Meta, UnsetType

from sae_hub.config import ARCHITECTURES, NORMALIZATIONS, SAEConfig
from sae_hub.releases import MAX_SAES_PER_RELEASE

__all__ = [
    "MAX_STR",
    "SAE",
    "ConfigOverrides",
    "File",
    "Release",
    "config_field_types",
    "json_schema",
    "json_schema_text",
]

MAX_STR = 512  # characters of a string an SAE entry may hold, before and after template filling
_FMAX = sys.float_info.max  # `le=_FMAX` refuses inf (and every bound refuses nan): numbers must be finite

TEMPLATE_PATTERN = r"\{\w+\}"
Template = Annotated[str, Meta(pattern=TEMPLATE_PATTERN, max_length=MAX_STR,
                               description="a string with {var} placeholders, converted after filling")]
Text = Annotated[str, Meta(min_length=1, max_length=MAX_STR)]
ShortText = Annotated[str, Meta(max_length=MAX_STR)]
VarName = Annotated[str, Meta(pattern=r"^\w+$", max_length=64)]
Scalar = ShortText | int | Annotated[float, Meta(ge=-_FMAX, le=_FMAX)] | bool
NonNegative = Annotated[float, Meta(ge=0, le=_FMAX)]
Finite = Annotated[float, Meta(ge=-_FMAX, le=_FMAX)]
Positive = Annotated[float, Meta(gt=0, le=_FMAX)]
PositiveInt = Annotated[int, Meta(gt=0)]
Sha256 = Annotated[str, Meta(pattern=r"^([0-9a-fA-F]{64}|.*\{\w+\}.*)$", max_length=MAX_STR,
                             description="sha256 of the weights file: 64 hex digits (or a {var} template)")]
RepoId = Annotated[str, Meta(pattern=r"^[\w.-]+/[\w.-]+$", max_length=200, description="a Hub repo id: org/name")]
ExpandRow = dict[VarName, Scalar | Annotated[list[Scalar], Meta(min_length=1)]]
Vars = dict[VarName, Scalar]
Links = dict[Text, Text]


def config_field_types() -> dict[str, Any]:
    """SAEConfig fields a registry ``config:`` may override, each with the type (and constraints) it accepts."""
    hints = typing.get_type_hints(SAEConfig)
    special: dict[str, Any] = {
        "architecture": Literal[ARCHITECTURES],  # type: ignore[valid-type]
        "normalize_activations": Literal[NORMALIZATIONS],  # type: ignore[valid-type]
        "reshape_activations": Literal["none", "hook_z"],
        "d_in": PositiveInt, "d_sae": PositiveInt, "d_out": PositiveInt | None, "k": PositiveInt | None,
        "norm_scaling_factor": Positive | None, "norm_scaling_factor_out": Positive | None,
        "context_size": PositiveInt | None, "hook_head_index": Annotated[int, Meta(ge=0)] | None,
    }
    out: dict[str, Any] = {}
    for f in dataclasses.fields(SAEConfig):
        if f.name in ("provenance", "extra"):
            continue
        out[f.name] = special.get(f.name, hints[f.name])
    return out


def _takes_strings(tp: Any) -> bool:
    """True when ``tp`` (or a member of its union) is a string type: then a template is just a string."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) is Literal:
        return any(isinstance(a, str) for a in args)
    if typing.get_origin(tp) is Annotated:
        return _takes_strings(args[0])
    if args and typing.get_origin(tp) in (Union, types.UnionType):
        return any(_takes_strings(a) for a in args)
    return tp is str


ConfigOverrides = msgspec.defstruct(
    "ConfigOverrides",
    [(name, tp | UnsetType if _takes_strings(tp) else tp | Template | UnsetType, UNSET)
     for name, tp in config_field_types().items()],
    kw_only=True, forbid_unknown_fields=True, omit_defaults=True, module=__name__,
)
ConfigOverrides.__doc__ = "SAEConfig fields to set on every SAE of the entry (applied after loading)."


class SAE(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """One SAE of a release, or a compact entry that ``expand`` rows turn into many."""

    id: Text
    path: ShortText | None = None
    l0: NonNegative | Template | None = None
    neuronpedia: Text | None = None
    variance_explained: Finite | Template | None = None
    norm_scaling_factor: Positive | Template | None = None
    sha256: Sha256 | None = None
    config: ConfigOverrides | None = None  # type: ignore[valid-type]
    hook: Text | None = None
    hook_out: Text | None = None
    vars: Vars | None = None
    expand: Annotated[list[ExpandRow], Meta(min_length=1)] | None = None


class Release(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """A named set of SAEs in one Hub repo or local folder (exactly one of repo_id / local_path)."""

    name: Annotated[str, Meta(min_length=1, max_length=MAX_STR, pattern=r"^\S+$")]
    model: Text
    format: Text
    saes: Annotated[list[SAE], Meta(min_length=1)]
    repo_id: RepoId | None = None
    local_path: Annotated[str, Meta(min_length=1, max_length=4096)] | None = None
    revision: Annotated[str, Meta(min_length=1, max_length=256)] | None = None
    hook: Text | None = None
    hook_out: Text | None = None
    links: Links | None = None
    license: Text | None = None
    description: str | None = None
    config: ConfigOverrides | None = None  # type: ignore[valid-type]


class File(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """A registry file: a list of releases, optionally with the family it holds and a description."""

    releases: list[Release]
    family: str | None = None
    description: str | None = None


def json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a registry file, generated from the declaration above."""
    schema = msgspec.json.schema(File)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "sae-hub release table",
        "description": "A registry/*.yaml file of sae-hub (see sae_hub/releases.py). Rules beyond per-field "
                       "types are checked by sae-hub itself: exactly one of repo_id/local_path, unique names "
                       f"and SAE ids, defined template variables, at most {MAX_SAES_PER_RELEASE:,} SAEs per release.",
        **schema,
    }


def json_schema_text() -> str:
    """``json_schema()`` as the text shipped in ``registry/schema.json`` (stable key order, trailing newline)."""
    return json.dumps(json_schema(), indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    sys.stdout.write(json_schema_text())
