"""The declared schema of a release-table file (``registry/*.yaml``), the JSON Schema generated from it, and the
bounded reader and validator of such files.

This is the cold path of :mod:`sae_hub.releases`: it is imported only when a registry file is not in the cache of
validated documents (first use, an edit, an upgrade) or for ``registry.add(dict)``, so neither its code nor
msgspec and PyYAML cost anything when releases are listed from the cache.

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
import math
import re
import sys
import types
import typing
from collections.abc import Mapping
from typing import Annotated, Any, Literal, NoReturn, Union

import msgspec
from msgspec import UNSET, Meta, UnsetType

from sae_hub.config import ARCHITECTURES, NORMALIZATIONS, SAEConfig
from sae_hub.errors import RegistryError
from sae_hub.release_rules import (
    HINTS,
    MAX_DEPTH,
    MAX_FILE_BYTES,
    MAX_NODES,
    MAX_SAES_PER_FILE,
    MAX_SAES_PER_RELEASE,
    NUMERIC_FACTS,
    TEMPLATE,
    axes,
    short,
)

__all__ = [
    "KINDS",
    "MAX_STR",
    "SAE",
    "ConfigOverrides",
    "File",
    "Release",
    "config_field_types",
    "json_schema",
    "json_schema_text",
    "load_yaml",
    "takes_strings",
    "validate",
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
#: What a release holds (shown by ``sae-hub list``): single-layer SAEs (``sae``), single-layer transcoders
#: (``transcoder``), a per-layer transcoder set (``transcoder_set``: one id per layer, or the whole set), a
#: cross-layer transcoder (``clt``: the whole CLT, or one source layer per id), a crosscoder, or temporal SAEs.
#: Absent: ``transcoder`` when the release names an output hook (``hook_out``), else ``sae``.
KINDS = ("sae", "transcoder", "transcoder_set", "clt", "crosscoder", "temporal")
Kind = Literal[KINDS]  # type: ignore[valid-type]
#: Loader options the release table hands the loader for one SAE (e.g. ``layer`` of a CLT file set); the user's
#: own options win. Strings may be ``{var}`` templates.
LoaderOptions = dict[VarName, Scalar]


def config_field_types() -> dict[str, Any]:
    """SAEConfig fields a registry ``config:`` may override, each with the type (and constraints) it accepts."""
    hints = typing.get_type_hints(SAEConfig)
    special: dict[str, Any] = {
        "architecture": Literal[ARCHITECTURES],
        "normalize_activations": Literal[NORMALIZATIONS],
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


def takes_strings(tp: Any) -> bool:
    """True when ``tp`` (or a member of its union) is a string type: then a template is just a string."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) is Literal:
        return any(isinstance(a, str) for a in args)
    if typing.get_origin(tp) is Annotated:
        return takes_strings(args[0])
    if args and typing.get_origin(tp) in (Union, types.UnionType):
        return any(takes_strings(a) for a in args)
    return tp is str


ConfigOverrides = msgspec.defstruct(
    "ConfigOverrides",
    [(name, tp | UnsetType if takes_strings(tp) else tp | Template | UnsetType, UNSET)
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
    files: Annotated[list[Text], Meta(min_length=1, max_length=64)] | None = None
    options: LoaderOptions | None = None
    vars: Vars | None = None
    expand: Annotated[list[ExpandRow], Meta(min_length=1)] | None = None


class Release(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """A named set of SAEs in one Hub repo or local folder (exactly one of repo_id / local_path)."""

    name: Annotated[str, Meta(min_length=1, max_length=MAX_STR, pattern=r"^\S+$")]
    model: Text
    format: Text
    saes: Annotated[list[SAE], Meta(min_length=1)]
    kind: Kind | None = None
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


# ---------------------------------------------------------------------------- reading a registry file


class _Frame:
    """An open mapping or sequence while building from the event stream."""

    __slots__ = ("anchor", "height", "is_map", "key", "merges", "start", "value")

    def __init__(self, value: Any, is_map: bool, anchor: str | None, start: int) -> None:
        self.value = value
        self.is_map = is_map
        self.anchor = anchor
        self.start = start  # node count before this node: its expanded size is the count at its end minus this
        self.height = 0  # nesting levels below this node
        self.key: Any = _NO_KEY
        self.merges: list[dict[Any, Any]] | None = None


_NO_KEY = object()  # a mapping frame waiting for its next key
_MERGE = object()  # the YAML merge key ``<<`` in key position
_Y = "tag:yaml.org,2002:"
_SCALAR_TAGS = frozenset(_Y + t for t in ("null", "bool", "int", "float", "str", "timestamp"))


def load_yaml(data: bytes | str, source: str) -> Any:
    """Parse one registry document with the limits above; every failure is a RegistryError naming ``source``."""
    import yaml

    if len(data) > MAX_FILE_BYTES:
        raise RegistryError(f"file is {len(data):,} bytes; a registry file may hold at most {MAX_FILE_BYTES:,}",
                            path=source)
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            line = data.count(b"\n", 0, e.start) + 1
            raise RegistryError(f"not UTF-8 text: byte 0x{data[e.start]:02x} at line {line} (offset {e.start})",
                                path=source) from None
    else:
        text = data
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)(text.removeprefix("\ufeff"))
    try:
        return _build_from_events(loader, yaml, source)
    except yaml.YAMLError as e:
        raise RegistryError(f"not valid YAML: {e}", path=source) from None
    finally:
        loader.dispose()


def _build_from_events(loader: Any, yaml: Any, source: str) -> Any:
    """Python objects from libyaml's events, without recursion, counting nodes and depth as aliases expand."""
    from yaml import events as ev

    constructors = loader.yaml_constructors
    anchors: dict[str, tuple[Any, int, int]] = {}  # name -> (value, expanded node count, height)
    open_anchors: set[str] = set()
    stack: list[_Frame] = []
    roots: list[Any] = []
    nodes = 0
    documents = 0

    def fail(message: str, event: Any, extra: str | None = None) -> NoReturn:
        parts = []
        for f in stack:
            if not f.is_map:
                parts.append(f"[{len(f.value)}]")
            elif f.key is not _NO_KEY and f.key is not _MERGE:
                parts.append(f".{f.key}")
        if extra is not None:
            parts.append(f".{extra}")
        mark = getattr(event, "start_mark", None)
        line = f" (line {mark.line + 1})" if mark is not None else ""
        raise RegistryError(message + line, path=source, field="".join(parts).lstrip(".") or None)

    def count(n: int, event: Any) -> None:
        nonlocal nodes
        nodes += n
        if nodes > MAX_NODES:
            raise_too_many(event)

    def raise_too_many(event: Any) -> NoReturn:
        fail(f"more than {MAX_NODES:,} YAML nodes once aliases are expanded (an alias bomb?); "
             "split the file or repeat fewer aliases", event)

    def attach(value: Any, height: int, event: Any) -> None:
        if not stack:
            roots.append(value)
            return
        top = stack[-1]
        if height > top.height:
            top.height = height
        if not top.is_map:
            top.value.append(value)
        elif top.key is _NO_KEY:
            if isinstance(value, (dict, list)):
                fail("a mapping key must be a plain scalar, not a mapping or list", event)
            if value is _MERGE:
                if top.merges is not None:
                    fail("more than one merge key '<<' in one mapping", event)
                top.merges = []
            else:
                try:
                    duplicate = value in top.value
                except TypeError:
                    fail(f"unhashable mapping key {value!r}", event)
                if duplicate:
                    fail(f"duplicate key {value!r} in one mapping (YAML would keep only the last one)", event,
                         extra=str(value))
            top.key = value
        else:
            if top.key is _MERGE:
                sources = value if isinstance(value, list) else [value]
                if not sources or not all(isinstance(s, dict) for s in sources):
                    fail("a merge key '<<' takes a mapping or a list of mappings", event)
                assert top.merges is not None
                top.merges.extend(sources)
            else:
                top.value[top.key] = value
            top.key = _NO_KEY

    while loader.check_event():
        event = loader.get_event()
        kind = type(event)
        if kind is ev.ScalarEvent:
            count(1, event)
            tag = event.tag
            if tag is None or tag == "!":
                tag = loader.resolve(yaml.ScalarNode, event.value, event.implicit)
            if tag == _Y + "str":
                value: Any = event.value
            elif tag == _Y + "merge":
                in_key = bool(stack) and stack[-1].is_map and stack[-1].key is _NO_KEY
                value = _MERGE if in_key else event.value
            elif tag in _SCALAR_TAGS:
                node = yaml.ScalarNode(tag, event.value, event.start_mark, event.end_mark, event.style)
                try:
                    value = constructors[tag](loader, node)
                except Exception as e:  # e.g. an int with more digits than Python converts
                    fail(f"cannot read {event.value[:40]!r} as {tag.removeprefix(_Y)}: {type(e).__name__}: "
                         f"{str(e)[:200]}", event)
            else:
                fail(f"YAML tag {tag!r} is not allowed in a registry file (plain values, mappings and lists only)",
                     event)
            if event.anchor is not None:
                anchors[event.anchor] = (value, 1, 0)
            attach(value, 0, event)
        elif kind is ev.MappingStartEvent or kind is ev.SequenceStartEvent:
            is_map = kind is ev.MappingStartEvent
            if event.tag not in (None, "!", _Y + ("map" if is_map else "seq")):
                fail(f"YAML tag {event.tag!r} is not allowed in a registry file (plain values, mappings and "
                     "lists only)", event)
            count(1, event)
            if len(stack) >= MAX_DEPTH:
                fail(f"nested more than {MAX_DEPTH} levels deep", event)
            if event.anchor is not None:
                open_anchors.add(event.anchor)
            stack.append(_Frame({} if is_map else [], is_map, event.anchor, nodes - 1))
        elif kind is ev.MappingEndEvent or kind is ev.SequenceEndEvent:
            frame = stack.pop()
            value = frame.value
            if frame.merges:  # YAML merge: explicit keys win, then earlier merged mappings over later ones
                merged: dict[Any, Any] = {}
                for m in reversed(frame.merges):
                    merged.update(m)
                merged.update(value)
                value = merged
            if frame.anchor is not None:
                anchors[frame.anchor] = (value, nodes - frame.start, frame.height + 1)
                open_anchors.discard(frame.anchor)
            attach(value, frame.height + 1, event)
        elif kind is ev.AliasEvent:
            name = event.anchor
            if name in open_anchors:
                fail(f"alias *{name} refers to a node that contains it (a recursive structure)", event)
            if name not in anchors:
                fail(f"alias *{name} refers to an undefined anchor", event)
            value, size, height = anchors[name]
            count(size, event)
            if len(stack) + height > MAX_DEPTH:
                fail(f"alias *{name} nests the document more than {MAX_DEPTH} levels deep", event)
            attach(value, height, event)
        elif kind is ev.DocumentStartEvent:
            documents += 1
            if documents > 1:
                fail("a registry file holds one YAML document, this one has several", event)
    return roots[0] if roots else None


# ---------------------------------------------------------------------------- validation


def validate(doc: Any, source: str) -> dict[str, Any]:
    """The schema (msgspec, strict) then the cross-field rules; returns the normalised document (plain data)."""
    if not isinstance(doc, Mapping) or "releases" not in doc:
        got = type(doc).__name__ if not isinstance(doc, Mapping) else f"keys {sorted(map(str, doc))}"
        raise RegistryError(f"a registry file is a mapping with a 'releases' list (got {got})", path=source)
    try:
        parsed = msgspec.convert(doc, File, strict=True)
    except msgspec.ValidationError as e:
        raise _schema_error(str(e), doc, source) from None
    norm: dict[str, Any] = msgspec.to_builtins(parsed)
    _check(norm, source)
    return norm


def _schema_error(text: str, doc: Any, source: str) -> RegistryError:
    """A RegistryError from a msgspec message, with the entry path, the release name and a plain message."""
    m = re.match(r"^(?P<msg>.*?)(?: - at `(?P<key>key)` in `\$(?P<kpath>[^`]*)`| - at `\$(?P<path>[^`]*)`)?$",
                 text, re.S)
    assert m is not None
    msg, path = m["msg"], (m["path"] if m["path"] is not None else m["kpath"]) or ""
    parts = re.findall(r"\.(\w+)|\[(\d+|\.\.\.)\]", path)
    comps: list[str | int] = [name if name else (idx if idx == "..." else int(idx)) for name, idx in parts]
    # msgspec writes a dict key as [...]: find which one by validating the entries one at a time
    node: Any = doc
    for i, c in enumerate(comps):
        if c == "..." and isinstance(node, Mapping):
            before = comps[i - 2: i]
            expected = ({"vars": Vars, "links": Links}.get(str(before[-1])) if before else None)
            if expected is None and len(before) == 2 and before[0] == "expand":
                expected = ExpandRow
            comps[i] = _first_bad_key(node, expected) if expected is not None else "..."
        c = comps[i]  # re-read: the "..." case above may have replaced it
        if isinstance(node, Mapping):
            node = node.get(c) if c in node else None
        elif isinstance(node, list) and isinstance(c, int) and c < len(node):
            node = node[c]
        else:
            node = None
    if m["key"]:
        msg = f"a key: {msg}"
    unknown = re.match(r"Object contains unknown field `(.*)`$", msg)
    missing = re.match(r"Object missing required field `(.*)`$", msg)
    if unknown or missing:
        key = (unknown or missing)[1]  # type: ignore[index]
        owner = _owner(comps)
        comps.append(key)
        if unknown:
            allowed = sorted(owner.__struct_fields__) if owner is not None else []
            msg = f"unknown key {key!r}; allowed: {', '.join(allowed)}"
        else:
            msg = f"missing required field {key!r}"
    elif msg.endswith("got `null`") and comps and isinstance(comps[-1], str):
        msg = f"missing required field {comps[-1]!r} (it is null)"
    elif comps and isinstance(comps[-1], str) and comps[-1] in HINTS:
        msg = f"{comps[-1]} must be {HINTS[comps[-1]]}, got {short(node)}"
    elif TEMPLATE_PATTERN.replace("\\", "\\\\") in msg and len(comps) >= 2 and comps[-2] == "config":
        tp = config_field_types()[str(comps[-1])]
        msg = f"{comps[-1]} must be {_describe(tp)} or a {{var}} template, got {short(node)}"
    field_path = "".join(f"[{c}]" if isinstance(c, int) else f".{c}" for c in comps).lstrip(".")
    label = ""
    if len(comps) >= 2 and comps[0] == "releases" and isinstance(comps[1], int):
        rels = doc.get("releases")
        item = rels[comps[1]] if isinstance(rels, list) and comps[1] < len(rels) else None
        if isinstance(item, Mapping) and isinstance(item.get("name"), str):
            label = f"release {item['name']!r}: "
    return RegistryError(f"{label}{msg}", path=source, field=field_path or None)


def _describe(tp: Any) -> str:
    """Plain words for a config field's type, for error messages."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) is typing.Annotated:
        return _describe(args[0])
    if len(args) < len(typing.get_args(tp)):  # Optional
        return f"{_describe(args[0])} (or null)"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(tp, str(tp))


def _owner(comps: list[str | int]) -> Any:
    """The declared struct at an entry path (for listing its allowed keys)."""
    tail = [c for c in comps if not isinstance(c, int)]
    if not tail:
        return File
    return {"releases": Release, "saes": SAE, "config": ConfigOverrides}.get(str(tail[-1]))


def _first_bad_key(mapping: Mapping[Any, Any], expected: Any) -> str:
    for key, value in mapping.items():
        try:
            msgspec.convert({key: value}, expected, strict=True)
        except msgspec.ValidationError:
            return str(key)
    return "..."


def _check(norm: dict[str, Any], source: str) -> None:
    """Cross-field rules, before anything is expanded: counts come from the ranges' lengths."""
    seen: dict[str, int] = {}
    file_total = 0
    for i, rel in enumerate(norm["releases"]):
        at = f"releases[{i}]"
        label = f"release {rel['name']!r}"
        if ("repo_id" in rel) == ("local_path" in rel):
            raise RegistryError(f"{label}: give exactly one of repo_id or local_path", path=source, field=at)
        if rel["name"] in seen:
            raise RegistryError(f"duplicate release name {rel['name']!r} (also releases[{seen[rel['name']]}])",
                                path=source, field=f"{at}.name")
        seen[rel["name"]] = i
        release_total = 0
        for j, sae in enumerate(rel["saes"]):
            sat = f"{at}.saes[{j}]"
            used = _template_uses(rel, sae, at, sat)
            names = {name for _, found in used for name in found}
            base_vars = set(sae.get("vars") or {})
            entry_total = 0
            for r, row in enumerate(sae.get("expand") or [{}]):
                entry_total += math.prod(len(values) for _, values in axes(row, f"{sat}.expand[{r}]", source))
                if not names <= base_vars.union(row):
                    defined = base_vars.union(row)
                    where, name = next((w, n) for w, found in used for n in found if n not in defined)
                    have = ", ".join(sorted(defined)) or "none"
                    raise RegistryError(f"{label}: template variable {name!r} is not defined (defined here: {have})",
                                        path=source, field=where)
            if entry_total > MAX_SAES_PER_RELEASE:
                raise RegistryError(f"{label}: this entry expands to {entry_total:,} SAEs; a release may hold at "
                                    f"most {MAX_SAES_PER_RELEASE:,}", path=source, field=f"{sat}.expand")
            release_total += entry_total
        if release_total > MAX_SAES_PER_RELEASE:
            raise RegistryError(f"{label}: expands to {release_total:,} SAEs; a release may hold at most "
                                f"{MAX_SAES_PER_RELEASE:,}", path=source, field=f"{at}.saes")
        file_total += release_total
        if file_total > MAX_SAES_PER_FILE:
            raise RegistryError(f"the releases up to {label} expand to {file_total:,} SAEs; one registry file may "
                                f"hold at most {MAX_SAES_PER_FILE:,}", path=source, field=at)


def _template_uses(rel: Mapping[str, Any], sae: Mapping[str, Any], at: str, sat: str) -> list[tuple[str, list[str]]]:
    """(entry path, template variable names) of every string an SAE entry fills: its own fields, the release's
    hooks it inherits, and the release's and its own ``config`` values."""
    fields: list[tuple[str, Any]] = [(f"{sat}.{k}", sae.get(k)) for k in ("id", "path", "neuronpedia", "sha256",
                                                                          *NUMERIC_FACTS)]
    fields.extend((f"{sat}.files[{n}]", f) for n, f in enumerate(sae.get("files") or []))
    fields.extend((f"{sat}.options.{k}", v) for k, v in (sae.get("options") or {}).items())
    for key in ("hook", "hook_out"):
        fields.append((f"{sat}.{key}", sae[key]) if key in sae else (f"{at}.{key}", rel.get(key)))
    config = {**{k: (f"{at}.config.{k}", v) for k, v in (rel.get("config") or {}).items()},
              **{k: (f"{sat}.config.{k}", v) for k, v in (sae.get("config") or {}).items()}}
    fields.extend(config.values())
    return [(where, TEMPLATE.findall(value)) for where, value in fields if isinstance(value, str) and "{" in value]


if __name__ == "__main__":
    sys.stdout.write(json_schema_text())
