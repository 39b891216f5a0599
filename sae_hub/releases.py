"""The release table: named releases of pretrained SAEs, read from YAML files (one per family).

A family file (``registry/<family>.yaml``) holds a list of releases::

    releases:
      - name: gemma-scope-2b-pt-res              # required, unique across all files
        model: gemma-2-2b                         # required: the model the SAEs read from
        repo_id: google/gemma-scope-2b-pt-res     # a Hub repo ... (exactly one of repo_id / local_path)
        # local_path: /shared/saes/my-release     # ... or a folder (relative paths: to the YAML file)
        format: gemma-scope                       # required: a registered loader name
        kind: sae                                 # optional: sae | transcoder | transcoder_set | clt | crosscoder |
                                                  # temporal (shown in listings; default from hook_out)
        revision: 0123abcd...                     # optional pin (commit sha, branch or tag)
        hook: blocks.{layer}.hook_resid_post      # optional hook-name template for every SAE
        hook_out: ...                             # optional output hook template (transcoders)
        links: {model: https://..., paper: ...}   # optional
        license: apache-2.0                       # optional
        config: {apply_b_dec_to_input: false}     # optional SAEConfig overrides for every SAE
        saes:                                     # required
          - id: layer_3/width_16k/canonical       # required
            path: layer_3/width_16k/average_l0_53 # folder or file inside the repo (default: id)
            l0: 53                                 # optional facts: l0, neuronpedia, variance_explained,
            neuronpedia: gemma-2-2b/3-gemmascope-res-16k  # norm_scaling_factor, sha256 (of the weights)
            vars: {layer: 3}                      # values for the release's templates
          - id: layer_{layer}                     # one layer of a CLT stored as per-layer files at the root:
            path: '{layer}'                       #   files: the only files to fetch (relative to the release
            files: [W_enc_{layer}.safetensors, W_dec_{layer}.safetensors, config.yaml]  # root, not to path)
            options: {layer: '{layer}'}           #   options: loader options for this SAE
            expand: [{layer: "0..25"}]
          - id: layer_{layer}/width_{width}/average_l0_{l0}   # a compact entry: expands to many SAEs
            expand:                                # each row is crossed over its list values;
              - {layer: "0..25", width: 16k, l0: [20, 41]}    # "a..b" is an inclusive integer range
            l0: "{l0}"

Every string of an SAE entry may use ``{var}`` templates filled from its ``vars``/``expand`` row; numeric
fields (and non-string ``config`` overrides) given as templates are converted after filling.

Validation. The per-field schema is declared once, in :mod:`sae_hub.registry_schema` (msgspec; why msgspec
is said there), which also generates ``registry/schema.json`` for editors. This module adds what a field type
cannot say: exactly one of ``repo_id``/``local_path``, unique release names, templates that name defined
variables, well-formed ``"a..b"`` ranges, and a cap on how many SAEs an entry, a release
(:data:`MAX_SAES_PER_RELEASE`) and a file (:data:`MAX_SAES_PER_FILE`) expand to, computed from the ranges
before anything is expanded. All of that runs when a file is read; the one check that needs the expansion
(duplicate SAE ids, and numeric/sha256 templates after filling) runs when a release's SAE list is first used,
or at once in :func:`add`. The loader named by ``format`` is checked in :func:`get_release` (listing must not
import the loaders: they import torch). Every error is a :class:`~sae_hub.errors.RegistryError` naming the file
and the entry path, e.g. ``releases[3].saes[0].l0``.

Parsing is bounded: a file is at most :data:`MAX_FILE_BYTES`, strict UTF-8, one YAML document, nested at most
:data:`MAX_DEPTH` levels, and at most :data:`MAX_NODES` nodes once aliases are expanded (so "billion laughs"
alias bombs and deep anchor chains are refused while parsing, in time linear in the file). Duplicate mapping
keys are refused (YAML would silently keep the last), as are tags other than plain scalars, maps and lists
(no ``!!python/...``, ``!!binary``, ``!!set``) and recursive aliases. The YAML is read from libyaml's event
stream (C speed) by a small non-recursive builder (:func:`sae_hub.registry_schema.load_yaml`) rather than by
PyYAML's composer and constructor, which recurse per nesting level and cannot count alias expansion; plain
scalars are typed by PyYAML's own resolver and constructors, so values mean exactly what ``yaml.safe_load``
makes of them. It is also ~1.8x faster than ``yaml.load`` with the C loader on the shipped files.

Caching. YAML parsing and validation cost ~0.1 s for the shipped files; the validated document is cached as
JSON (keyed by file path, size, mtime and the validating code's own files), which keeps ``list_releases()`` in
a fresh process within a few milliseconds: a cache hit imports neither PyYAML, msgspec nor
:mod:`sae_hub.registry_schema`. The cache is a pure optimisation: unwritable, stale or corrupt cache files are
ignored.

User release tables extend the shipped one: files named in ``SAE_HUB_REGISTRY`` (paths separated by
``os.pathsep``; folders mean every ``*.yaml`` inside), :func:`add` (a path, a dict, or an ``hf://`` URI such as
``hf://org/repo/reg.yaml``, ``hf://datasets/org/repo@v1/reg.yaml`` or ``hf://org/repo@refs/pr/1/reg.yaml``,
parsed by huggingface_hub and fetched through it). A user release that collides with an existing name is an
error unless ``replace=True``.

Resolving. :func:`locate` turns ``(release, sae_id)`` (or a bare Hub repo id and a path in it) into a
:class:`Source` before any file is touched: where the files are, in which format, at which revision, and the
release-table facts to hand the loader (:meth:`Source.facts`). ``SAE.from_pretrained`` then fetches
(:func:`sae_hub.hub.fetch`) and loads (:func:`sae_hub.loading.load_local`) it. This module never imports
the hub for that, only for ``hf://`` table files (:func:`add`), so the dependency runs one way.
"""

from __future__ import annotations

import contextlib
import difflib
import fnmatch
import functools
import itertools
import math
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from sae_hub.errors import RegistryError, UnknownReleaseError, UnknownSAEError
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

if TYPE_CHECKING:
    from huggingface_hub.hf_file_system import HfFileSystemResolvedRepositoryPath

    from sae_hub.loading import Facts

__all__ = [
    "MAX_DEPTH",
    "MAX_FILE_BYTES",
    "MAX_NODES",
    "MAX_SAES_PER_FILE",
    "MAX_SAES_PER_RELEASE",
    "Release",
    "SAEEntry",
    "Source",
    "add",
    "entry_for",
    "get_release",
    "list_releases",
    "list_saes",
    "locate",
    "release_table",
    "reset",
    "resolve",
]

_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")
_REPO_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


@dataclass(frozen=True)
class SAEEntry:
    """One SAE of a release, templates filled in."""

    id: str
    path: str
    l0: float | None = None
    neuronpedia: str | None = None
    variance_explained: float | None = None
    norm_scaling_factor: float | None = None
    sha256: str | None = None
    hook: str | None = None
    hook_out: str | None = None
    config: Mapping[str, Any] = field(default_factory=dict)
    origin: str | None = None  # the YAML entry it came from, e.g. "releases[3].saes[0]", for error messages
    files: tuple[str, ...] | None = None  # the only files to fetch, relative to the release root (not to path)
    options: Mapping[str, Any] = field(default_factory=dict)  # loader options the release table gives this SAE


@dataclass
class Release:
    """A named set of SAEs in one Hub repo (or local folder), in one format."""

    name: str
    model: str
    format: str
    source: str  # the YAML file it came from, for error messages
    repo_id: str | None = None
    local_path: str | None = None
    revision: str | None = None
    hook: str | None = None
    hook_out: str | None = None
    links: Mapping[str, str] = field(default_factory=dict)
    license: str | None = None
    description: str | None = None
    config: Mapping[str, Any] = field(default_factory=dict)
    declared_kind: str | None = None  # the YAML's ``kind``; see :attr:`kind`
    raw_saes: list[dict[str, Any]] = field(default_factory=list, repr=False)
    index: int | None = None  # position in its file's 'releases' list, for error paths
    _saes: dict[str, SAEEntry] | None = field(default=None, repr=False)
    _format_checked: bool = field(default=False, repr=False)

    @property
    def saes(self) -> dict[str, SAEEntry]:
        """The release's SAEs by id (compact entries expanded and validated on first access)."""
        if self._saes is None:
            self._saes = _expand_saes(self)
        return self._saes

    @property
    def location(self) -> str:
        return self.repo_id or self.local_path or "?"

    @property
    def kind(self) -> str:
        """What the release holds (see ``KINDS`` in :mod:`sae_hub.registry_schema`): the YAML's ``kind``, else
        ``transcoder`` when it names an output hook, else ``sae``. Read without expanding or importing loaders, so
        listings stay cheap."""
        if self.declared_kind:
            return self.declared_kind
        return "transcoder" if self.hook_out or any("hook_out" in s for s in self.raw_saes) else "sae"

    @property
    def where(self) -> str:
        """This release's entry path in its file (``releases[3]``)."""
        return f"releases[{self.index}]" if self.index is not None else f"releases[{self.name!r}]"

    def facts(self, entry: SAEEntry) -> Facts:
        """What this release states about ``entry`` beyond its files, for the loader
        (:func:`sae_hub.loading.apply_facts`); errors in them name this release's YAML file and the entry."""
        from sae_hub.loading import Facts

        return Facts(release=self.name, sae_id=entry.id, source=self.source,
                     origin=entry.origin or f"{self.name}/{entry.id}", model=self.model, hook=entry.hook,
                     hook_out=entry.hook_out, neuronpedia=entry.neuronpedia, license=self.license,
                     norm_scaling_factor=entry.norm_scaling_factor, l0=entry.l0,
                     variance_explained=entry.variance_explained, config=dict(entry.config))


def _normal_path(path: str) -> str:
    """A path inside a repo or folder, normalised once: no leading/trailing ``/``, and ``""`` for the root
    (``"."`` and ``"/"`` too), so no caller has to know the spellings of "the root"."""
    path = path.strip("/")
    return "" if path in ("", ".") else path


@dataclass(frozen=True)
class Source:
    """Where one SAE's files are, decided before any I/O: a Hub repo (and revision) or a local folder, the path
    of the SAE inside it, its format if known, and the release entry it came from (None for a bare repo id).

    ``path`` is normalised once, here (``""`` is the root); :meth:`join` and :meth:`under` are the only places
    that combine it with a name or a folder.
    """

    repo_id: str | None
    local_root: Path | None
    path: str
    format: str | None = None
    revision: str | None = None
    release: Release | None = field(default=None, repr=False)
    entry: SAEEntry | None = field(default=None, repr=False)

    @property
    def files(self) -> tuple[str, ...] | None:
        """The release table's list of this SAE's files (relative to the repo root), when it gives one: then only
        those are fetched (one layer of a CLT stored as per-layer files fetches that layer's files alone)."""
        return self.entry.files if self.entry is not None else None

    @property
    def options(self) -> dict[str, Any]:
        """Loader options the release table gives this SAE (a caller's own options win over them)."""
        return dict(self.entry.options) if self.entry is not None else {}

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", _normal_path(self.path))

    @property
    def is_root(self) -> bool:
        """The SAE is the whole repo (or folder), not a folder or file inside it."""
        return self.path == ""

    def join(self, name: str) -> str:
        """``name`` (relative to the SAE folder) as a path in the repo."""
        return f"{self.path}/{name}" if self.path else name

    def under(self, root: Path) -> Path:
        """The SAE inside ``root`` (a snapshot or the release's local folder)."""
        return root / self.path if self.path else root

    @property
    def label(self) -> str:
        """``org/repo/path`` (or the local folder), for messages."""
        where = self.repo_id or str(self.local_root)
        return f"{where}/{self.path}" if self.path else where

    @property
    def facts(self) -> Facts | None:
        """The release table's facts for the loader; None for a bare repo id."""
        return self.release.facts(self.entry) if self.release is not None and self.entry is not None else None

    @property
    def sha256(self) -> str | None:
        """The release table's pin of the SAE's weights file, if any."""
        return self.entry.sha256 if self.entry is not None else None


class _Table:
    """All releases known to this process: shipped files, SAE_HUB_REGISTRY files, and ``add()`` calls."""

    def __init__(self) -> None:
        self.releases: dict[str, Release] | None = None

    def get(self) -> dict[str, Release]:
        if self.releases is None:
            self.releases = {}
            for path in [*_shipped_files(), *_env_files()]:
                self._merge(_read_file(path, check_formats=False), replace=False)
        return self.releases

    def _merge(self, releases: list[Release], *, replace: bool) -> None:
        table = self.releases if self.releases is not None else self.get()
        for rel in releases:
            old = table.get(rel.name)
            if old is not None and not replace:
                raise RegistryError(
                    f"duplicate release name {rel.name!r} (also defined in {old.source}); "
                    "use replace=True to override a release on purpose",
                    path=rel.source, field=f"{rel.where}.name",
                )
        for rel in releases:
            table[rel.name] = rel


_TABLE = _Table()


def _shipped_files() -> list[Path]:
    """The YAML files installed as ``sae_hub.registry``, found without importing that package (which re-exports
    this module's functions: importing it from here would make the two import each other)."""
    import importlib.util

    spec = importlib.util.find_spec("sae_hub.registry")
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    return sorted(p for d in folders for p in Path(d).glob("*.yaml"))


def _env_files() -> list[Path]:
    out: list[Path] = []
    for item in filter(None, os.environ.get("SAE_HUB_REGISTRY", "").split(os.pathsep)):
        p = Path(item).expanduser()
        if p.is_dir():
            out.extend(sorted(p.glob("*.yaml")))
        elif p.is_file():
            out.append(p)
        else:
            raise RegistryError("SAE_HUB_REGISTRY names a path that does not exist", path=p)
    return out


@functools.cache
def _code_token() -> str:
    """Changes whenever the code that validates (and so shapes the cached documents) changes."""
    import zlib

    here = Path(__file__).resolve().parent
    parts = []
    for name in ("releases.py", "release_rules.py", "registry_schema.py", "config.py"):
        try:
            st = (here / name).stat()
            parts.append(f"{st.st_size}:{st.st_mtime_ns}")
        except OSError:
            parts.append("-")
    return f"{zlib.crc32(';'.join(parts).encode()):08x}"


def _cache_dir() -> Path:
    root = os.environ.get("SAE_HUB_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "sae_hub")
    return Path(root) / "registry"


def _read_file(path: Path, *, source: str | None = None, check_formats: bool = True) -> list[Release]:
    """Read, validate and build one registry file, through a cache of the validated document.

    The cache (JSON, keyed by path, size, mtime and :func:`_code_token`) holds only documents that passed
    validation, so a hit skips parsing and validation: listing releases in a fresh process reads a few small
    JSON files and imports neither PyYAML nor msgspec.
    """
    import json
    import zlib

    source = source or str(path)
    try:
        st = path.stat()
    except OSError as e:
        raise RegistryError(f"cannot read registry file: {e.strerror or e}", path=source) from None
    where = zlib.crc32(os.path.abspath(path).encode())
    cached = _cache_dir() / f"{path.stem}-{where:08x}-{st.st_size}-{st.st_mtime_ns}-{_code_token()}.json"
    releases: list[Release] | None = None
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError, AttributeError):  # no or a bad cache
        releases = _build(json.loads(cached.read_bytes()), source, path.parent)
    if releases is None:
        if st.st_size > MAX_FILE_BYTES:  # before reading: a huge file costs nothing
            raise RegistryError(f"file is {st.st_size:,} bytes; a registry file may hold at most "
                                f"{MAX_FILE_BYTES:,}", path=source)
        try:
            with open(path, "rb") as f:  # read(n) allocates n up front: ask for what stat promised, plus one
                data = f.read(st.st_size + 1)
        except OSError as e:
            raise RegistryError(f"cannot read registry file: {e.strerror or e}", path=source) from None
        if len(data) != st.st_size:
            raise RegistryError("the file changed while it was read; try again", path=source)
        norm = _validate(_yaml_load(data, source), source)
        releases = _build(norm, source, path.parent)
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_name(f".{cached.name}.{os.getpid()}")
            tmp.write_text(json.dumps(norm, separators=(",", ":")), encoding="utf-8")
            os.replace(tmp, cached)
        except (OSError, TypeError, ValueError):
            pass
    if check_formats:
        for rel in releases:
            _check_format(rel)
    return releases


def _yaml_load(data: bytes | str, source: str) -> Any:
    """A registry document from YAML bytes, bounded: see :func:`sae_hub.registry_schema.load_yaml`."""
    from sae_hub.registry_schema import load_yaml

    return load_yaml(data, source)


def _validate(doc: Any, source: str) -> dict[str, Any]:
    """The normalised document, or a RegistryError: see :func:`sae_hub.registry_schema.validate`."""
    from sae_hub.registry_schema import validate

    return validate(doc, source)


def _parse(doc: Any, source: str, base: Path | None = None, *, check_formats: bool = True) -> list[Release]:
    """Validate one registry document (already parsed, e.g. a dict) and build its releases."""
    releases = _build(_validate(doc, source), source, base)
    if check_formats:
        for rel in releases:
            _check_format(rel)
    return releases


def _build(norm: Mapping[str, Any], source: str, base: Path | None) -> list[Release]:
    """Release objects from a validated document (fresh or from the cache); validates nothing."""
    out: list[Release] = []
    for i, item in enumerate(norm["releases"]):
        local = item.get("local_path")
        if local is not None:
            p = Path(local).expanduser()
            local = str(p if p.is_absolute() or base is None else (base / p).resolve())
        out.append(Release(
            name=item["name"], model=item["model"], format=item["format"], source=source,
            repo_id=item.get("repo_id"), local_path=local, revision=item.get("revision"),
            hook=item.get("hook"), hook_out=item.get("hook_out"), links=dict(item.get("links") or {}),
            license=item.get("license"), description=item.get("description"),
            config=dict(item.get("config") or {}), raw_saes=item["saes"], index=i,
            declared_kind=item.get("kind"),
        ))
    return out


def _check_format(rel: Release) -> None:
    from sae_hub.loading import list_loaders

    loaders = list_loaders()
    if rel.format not in loaders:
        raise RegistryError(f"release {rel.name!r}: format {rel.format!r} is not provided by any loader "
                            f"(known: {', '.join(loaders)})", path=rel.source, field=f"{rel.where}.format")


# ---------------------------------------------------------------------------- expansion


def _rows(expand: list[Mapping[str, Any]] | None, at: str, source: str) -> Iterator[dict[str, Any]]:
    if not expand:
        yield {}
        return
    for r, row in enumerate(expand):
        row_axes = axes(row, f"{at}.expand[{r}]", source)
        names = [name for name, _ in row_axes]
        for combo in itertools.product(*(values for _, values in row_axes)):
            yield dict(zip(names, combo, strict=True))


def _fill(value: Any, env: Mapping[str, Any], rel: Release, where: str) -> Any:
    if isinstance(value, str) and "{" in value:
        try:
            out = TEMPLATE.sub(lambda m: str(env[m.group(1)]), value)
        except KeyError as e:
            raise RegistryError(f"release {rel.name!r}: template variable {e.args[0]!r} is not defined",
                                path=rel.source, field=where) from None
        if len(out) > 512:
            raise RegistryError(f"release {rel.name!r}: {out[:60]!r}... is {len(out):,} characters once filled; "
                                "at most 512", path=rel.source, field=where)
        return out
    return value


def _number(key: str, value: Any, rel: Release, where: str, sae_id: str) -> float:
    """A numeric fact after template filling: finite, and >= 0 (l0) or > 0 (norm_scaling_factor)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    ok = math.isfinite(number) and (key != "l0" or number >= 0) and (key != "norm_scaling_factor" or number > 0)
    if not ok:
        raise RegistryError(f"release {rel.name!r}, SAE {sae_id!r}: {key} must be {HINTS[key].split(' or ')[0]}, "
                            f"got {short(value)}", path=rel.source, field=where)
    return number


@functools.cache
def _config_types() -> dict[str, tuple[Any, bool]]:
    from sae_hub import registry_schema as schema

    return {name: (tp, schema.takes_strings(tp)) for name, tp in schema.config_field_types().items()}


def _config_value(key: str, value: Any, env: Mapping[str, Any], rel: Release, where: str) -> Any:
    """A config override, its template filled and converted to the SAEConfig field's type (validated)."""
    if not (isinstance(value, str) and "{" in value):
        return value  # validated by the schema
    filled = _fill(value, env, rel, where)
    tp, takes_strings = _config_types()[key]
    if takes_strings:
        return filled
    import msgspec

    try:
        return msgspec.convert(filled, tp, strict=False)
    except msgspec.ValidationError as e:
        raise RegistryError(f"release {rel.name!r}: config {key} = {filled!r} after filling: {e}",
                            path=rel.source, field=where) from None


def _expand_saes(rel: Release) -> dict[str, SAEEntry]:
    out: dict[str, SAEEntry] = {}
    at = rel.where
    for j, raw in enumerate(rel.raw_saes):
        sat = f"{at}.saes[{j}]"
        base_vars = raw.get("vars") or {}
        hook = raw.get("hook", rel.hook)
        hook_at = f"{sat}.hook" if "hook" in raw else f"{at}.hook"
        hook_out = raw.get("hook_out", rel.hook_out)
        hook_out_at = f"{sat}.hook_out" if "hook_out" in raw else f"{at}.hook_out"
        config = {**{k: (v, f"{at}.config.{k}") for k, v in rel.config.items()},
                  **{k: (v, f"{sat}.config.{k}") for k, v in (raw.get("config") or {}).items()}}
        for row in _rows(raw.get("expand"), sat, rel.source):
            env = {**base_vars, **row}
            sae_id = str(_fill(raw["id"], env, rel, f"{sat}.id"))
            vals: dict[str, Any] = {}
            for key in ("path", "neuronpedia", "sha256"):
                if raw.get(key) is not None:
                    vals[key] = _fill(raw[key], env, rel, f"{sat}.{key}")
            if "sha256" in vals and not _SHA256.match(vals["sha256"]):
                raise RegistryError(f"release {rel.name!r}, SAE {sae_id!r}: sha256 must be 64 hex digits, got "
                                    f"{short(vals['sha256'])}", path=rel.source, field=f"{sat}.sha256")
            for key in NUMERIC_FACTS:
                if raw.get(key) is not None:
                    vals[key] = _number(key, _fill(raw[key], env, rel, f"{sat}.{key}"), rel, f"{sat}.{key}", sae_id)
            if sae_id in out:
                raise RegistryError(f"release {rel.name!r}: duplicate sae id {sae_id!r}", path=rel.source,
                                    field=f"{sat}.id")
            files = None
            if raw.get("files") is not None:
                files = tuple(_normal_path(str(_fill(f, env, rel, f"{sat}.files[{n}]")))
                              for n, f in enumerate(raw["files"]))
                bad = [f for f in files if not f or ".." in f.split("/")]
                if bad:
                    raise RegistryError(f"release {rel.name!r}, SAE {sae_id!r}: files must be paths inside the repo, "
                                        f"got {short(bad[0])}", path=rel.source, field=f"{sat}.files")
            options = {k: _fill(v, env, rel, f"{sat}.options.{k}") for k, v in (raw.get("options") or {}).items()}
            out[sae_id] = SAEEntry(
                id=sae_id, path=str(vals.pop("path", sae_id)),
                hook=_fill(hook, env, rel, hook_at), hook_out=_fill(hook_out, env, rel, hook_out_at),
                config={k: _config_value(k, v, env, rel, where) for k, (v, where) in config.items()},
                origin=sat, files=files, options=options, **vals,
            )
    return out


# ---------------------------------------------------------------------------- public API


def _natural_key(s: str) -> list[Any]:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", s)]


def list_releases(pattern: str | None = None, model: str | None = None) -> list[str]:
    """Release names, naturally sorted, optionally filtered by an fnmatch ``pattern`` and a ``model`` pattern."""
    out = []
    for name, rel in _TABLE.get().items():
        if pattern is not None and not fnmatch.fnmatchcase(name, pattern):
            continue
        if model is not None and not fnmatch.fnmatchcase(rel.model, model) and rel.model != model:
            continue
        out.append(name)
    return sorted(out, key=_natural_key)


def release_table() -> dict[str, Release]:
    """Every release known to this process, by name: shipped files, ``SAE_HUB_REGISTRY`` files and :func:`add`
    calls. Their formats are not checked against the loader registry here (that imports the loaders, and so
    torch); :func:`get_release` checks them."""
    return dict(_TABLE.get())


def get_release(name: str) -> Release:
    """The release called ``name``; an unknown name lists the closest ones (or the release for a repo id)."""
    table = _TABLE.get()
    rel = table.get(name)
    if rel is not None:
        if not rel._format_checked:
            _check_format(rel)
            rel._format_checked = True
        return rel
    by_repo = sorted(r.name for r in table.values() if r.repo_id == name)
    if by_repo:
        raise UnknownReleaseError(
            f"{name!r} is a Hub repo id, not a release name; the release table lists it as release(s) "
            f"{', '.join(by_repo)}: use SAE.from_pretrained({by_repo[0]!r}, <sae_id>)", field=name)
    close = difflib.get_close_matches(name, list(table), n=5, cutoff=0.5)
    hint = f"; closest: {', '.join(close)}" if close else ""
    raise UnknownReleaseError(f"unknown release {name!r}{hint}", field=name)


def list_saes(release: str) -> list[str]:
    """The SAE ids of a release, naturally sorted."""
    return sorted(get_release(release).saes, key=_natural_key)


def resolve(release: str, sae_id: str) -> tuple[Release, SAEEntry]:
    """The release and SAE entry for ``(release, sae_id)``; an unknown id lists the closest ones."""
    rel = get_release(release)
    entry = rel.saes.get(sae_id)
    if entry is None:
        close = difflib.get_close_matches(sae_id, list(rel.saes), n=5, cutoff=0.5)
        hint = f"; closest: {', '.join(close)}" if close else f"; it has {len(rel.saes)} SAEs, e.g. " + ", ".join(
            list_saes(release)[:5])
        raise UnknownSAEError(f"release {release!r} has no SAE {sae_id!r}{hint}", field=sae_id)
    return rel, entry


def locate(release: str, sae_id: str, *, revision: str | None = None, format: str | None = None) -> Source:
    """Where SAE ``sae_id`` of ``release`` is, before anything is fetched (see :class:`Source`).

    ``release`` is a release name, or a Hub repo id ``org/name`` the release table does not list, whose
    ``sae_id`` is then the folder (or file) inside the repo and whose format is detected unless ``format`` names a
    loader. A repo id that the table does list is refused with the release names to use (its facts, pins and
    hook names would otherwise be silently skipped). ``revision``/``format`` override the release's.
    """
    try:
        rel, entry = resolve(release, sae_id)
    except UnknownReleaseError:
        table = _TABLE.get()
        known_repo = any(r.repo_id == release for r in table.values())
        if known_repo or not _REPO_ID.match(release) or release in table:
            raise
        return Source(repo_id=release, local_root=None, path=sae_id, format=format, revision=revision)
    return Source(repo_id=rel.repo_id, local_root=Path(rel.local_path) if rel.local_path else None,
                  path=entry.path, format=format or rel.format, revision=revision or rel.revision,
                  release=rel, entry=entry)


def add(source: str | os.PathLike[str] | Mapping[str, Any], *, replace: bool = False,
        validate: bool = True) -> list[str]:
    """Add releases from a YAML file, a dict (same schema), or an ``hf://`` URI of a YAML file in a Hub repo.

    ``hf://org/repo/path.yaml``, ``hf://org/repo@revision/path.yaml`` (``@refs/pr/1`` included) and
    ``hf://datasets/org/repo/path.yaml`` are parsed by huggingface_hub's own URI parser. Returns the names
    added. With ``validate`` (default) every SAE list is expanded now, so mistakes that only show after
    expansion (duplicate ids, filled numbers) show up at registration rather than at first use.
    """
    if isinstance(source, Mapping):
        releases = _parse(source, "<dict>")
    else:
        text = os.fspath(source)
        if text.startswith("hf://"):
            releases = _read_file(_fetch_hf_yaml(text), source=text)
        else:
            p = Path(text).expanduser()
            if not p.is_file():
                raise RegistryError("registry file not found", path=p)
            releases = _read_file(p)
    if validate:
        for r in releases:
            _ = r.saes
    _TABLE._merge(releases, replace=replace)
    return [r.name for r in releases]


def _split_hf_uri(url: str) -> tuple[str, str, str | None, str]:
    """``(repo_type, repo_id, revision, path_in_repo)`` of an ``hf://`` URI, by huggingface_hub's parser.

    Recent huggingface_hub releases have ``parse_hf_uri`` (pure: no request); older ones only resolve through
    ``HfFileSystem.resolve_path`` (which also checks the repo and revision exist, one request).
    """
    try:
        from huggingface_hub import parse_hf_uri
    except ImportError:
        return _split_hf_uri_fs(url)
    try:
        uri = parse_hf_uri(url)
    except ValueError as e:
        raise RegistryError(f"not a valid hf:// URI: {e}", path=url) from None
    if uri.type == "bucket":
        raise RegistryError("registry files are read from Hub repos (models, datasets, spaces), not buckets",
                            path=url)
    return uri.type, uri.id, uri.revision, uri.path_in_repo


def _split_hf_uri_fs(url: str) -> tuple[str, str, str | None, str]:
    """The same as :func:`_split_hf_uri` through ``HfFileSystem`` (huggingface_hub versions before parse_hf_uri)."""
    from huggingface_hub import HfFileSystem

    try:
        resolved = HfFileSystem(skip_instance_cache=True).resolve_path(url)
    except (ValueError, NotImplementedError, OSError) as e:
        raise RegistryError(f"cannot resolve hf:// URI: {type(e).__name__}: {e}", path=url) from None
    if not hasattr(resolved, "repo_id"):
        raise RegistryError("registry files are read from Hub repos, not buckets", path=url)
    # a repo path (hasattr above); a cast, not isinstance: the class has this name only in recent releases
    repo = cast("HfFileSystemResolvedRepositoryPath", resolved)
    return repo.repo_type, repo.repo_id, repo.revision, repo.path_in_repo


def _fetch_hf_yaml(url: str) -> Path:
    """``hf://[type/]org/repo[@rev]/path/in/repo.yaml`` -> local cached path, via huggingface_hub.

    Fetched by :func:`sae_hub.hub.fetch_hub_file`, so the bytes are checked against the Hub's hash and a dead Hub
    is a DownloadError naming its cause (not a RegistryError: the YAML is not at fault); the error keeps its
    type and names the URL as written.
    """
    from sae_hub.errors import SaeHubError
    from sae_hub.hub import fetch_hub_file

    repo_type, repo_id, revision, filename = _split_hf_uri(url)
    if not filename:
        raise RegistryError("expected hf://[datasets/]org/repo[@revision]/path/to/registry.yaml: no file named",
                            path=url)
    try:
        return fetch_hub_file(repo_id, filename, repo_type=repo_type, revision=revision)
    except SaeHubError as e:
        raise type(e)(f"could not fetch registry file: {e.message}", path=url, field=e.field) from e


def reset() -> None:
    """Forget added releases and re-read the shipped and SAE_HUB_REGISTRY files on next use."""
    _TABLE.releases = None


def entry_for(repo_id: str, *, name: str | None = None, model: str, saes: list[Mapping[str, Any]] | None = None,
              format: str = "saelens", revision: str | None = None, **extra: Any) -> str:
    """The YAML release entry to publish SAEs uploaded to ``repo_id``, as text (print it, or write it to a file).

    ``saes`` is a list of ``{"id": ..., "path": ..., "l0": ...}``; by default one SAE at the repo root.
    """
    import yaml

    entry: dict[str, Any] = {"name": name or repo_id.split("/")[-1], "model": model, "repo_id": repo_id,
                             "format": format}
    if revision:
        entry["revision"] = revision
    entry.update(extra)
    entry["saes"] = [dict(s) for s in (saes or [{"id": "default", "path": "."}])]
    _parse({"releases": [entry]}, "<entry_for>")  # validate before handing it out
    return yaml.safe_dump({"releases": [entry]}, sort_keys=False)
