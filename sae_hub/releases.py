"""The release table: named releases of pretrained SAEs, read from YAML files (one per family).

A family file (``registry/<family>.yaml``) holds a list of releases::

    releases:
      - name: gemma-scope-2b-pt-res              # required, unique across all files
        model: gemma-2-2b                         # required: the model the SAEs read from
        repo_id: google/gemma-scope-2b-pt-res     # a Hub repo ... (exactly one of repo_id / local_path)
        # local_path: /shared/saes/my-release     # ... or a folder (relative paths: to the YAML file)
        format: gemma-scope                       # required: a registered loader name
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
          - id: layer_{layer}/width_{width}/average_l0_{l0}   # a compact entry: expands to many SAEs
            expand:                                # each row is crossed over its list values;
              - {layer: "0..25", width: 16k, l0: [20, 41]}    # "a..b" is an inclusive integer range
            l0: "{l0}"

Every string of an SAE entry may use ``{var}`` templates filled from its ``vars``/``expand`` row; numeric
fields given as templates are converted after filling. The schema is checked when a file is read (unknown
keys, missing fields, duplicate release names, a format no loader provides) and each release's SAE list when
it is first expanded (duplicate ids); every error is a :class:`~sae_hub.errors.RegistryError` naming the file
and the entry.

User registries extend the shipped one: files named in ``SAE_HUB_REGISTRY`` (paths separated by
``os.pathsep``; folders mean every ``*.yaml`` inside), :func:`add` (a path, a dict, or ``hf://org/repo/file.yaml``
fetched through huggingface_hub). A user release that collides with an existing name is an error unless
``replace=True``.
"""

from __future__ import annotations

import difflib
import fnmatch
import itertools
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sae_hub.errors import RegistryError, UnknownReleaseError, UnknownSAEError

__all__ = [
    "Release",
    "SAEEntry",
    "add",
    "entry_for",
    "get_release",
    "list_releases",
    "list_saes",
    "reset",
    "resolve",
]

_RELEASE_KEYS = {"name", "model", "repo_id", "local_path", "format", "revision", "hook", "hook_out", "links",
                 "license", "config", "saes", "description"}
_SAE_KEYS = {"id", "path", "l0", "neuronpedia", "variance_explained", "norm_scaling_factor", "sha256", "config",
             "hook", "hook_out", "vars", "expand"}
_NUMERIC = {"l0": float, "variance_explained": float, "norm_scaling_factor": float}
_TEMPLATE = re.compile(r"\{(\w+)\}")
_RANGE = re.compile(r"^\s*(-?\d+)\s*\.\.\s*(-?\d+)\s*$")


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
    raw_saes: list[dict[str, Any]] = field(default_factory=list, repr=False)
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
                    path=rel.source, field=rel.name,
                )
            table[rel.name] = rel


_TABLE = _Table()


def _shipped_files() -> list[Path]:
    import sae_hub.registry as shipped

    return sorted(p for d in shipped.__path__ for p in Path(d).glob("*.yaml"))


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


def _yaml_load(text: str, source: str) -> Any:
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        return yaml.load(text, Loader=loader)
    except yaml.YAMLError as e:
        raise RegistryError(f"not valid YAML: {e}", path=source) from None


def _cache_dir() -> Path:
    root = os.environ.get("SAE_HUB_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "sae_hub")
    return Path(root) / "registry"


def _load_doc(path: Path) -> Any:
    """Parse a registry YAML file, through a JSON cache keyed by path, size and mtime.

    YAML parsing costs ~0.7 s per MB even with libyaml; JSON of the same data loads ~80x faster, which keeps
    listing every release within a few milliseconds in a fresh process. The cache is a pure optimisation:
    unwritable or corrupt cache files are ignored.
    """
    import json
    import zlib

    st = path.stat()
    where = zlib.crc32(os.path.abspath(path).encode())
    cached = _cache_dir() / f"{path.stem}-{where:08x}-{st.st_size}-{st.st_mtime_ns}.json"
    try:
        return json.loads(cached.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        pass
    doc = _yaml_load(path.read_text(encoding="utf-8"), str(path))
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_name(f".{cached.name}.{os.getpid()}")
        tmp.write_text(json.dumps(doc), encoding="utf-8")
        os.replace(tmp, cached)
    except (OSError, TypeError, ValueError):
        pass
    return doc


def _read_file(path: Path, *, check_formats: bool = True) -> list[Release]:
    return _parse(_load_doc(path), str(path), base=path.parent, check_formats=check_formats)


def _parse(doc: Any, source: str, base: Path | None = None, *, check_formats: bool = True) -> list[Release]:
    """Validate one family document and build its releases (SAE lists are expanded later, lazily).

    ``check_formats=False`` defers the "is the format a registered loader" check to :func:`get_release`:
    listing must not import the loaders (they import torch); the shipped files are checked by the test suite.
    """
    if not isinstance(doc, dict) or set(doc) - {"releases", "family", "description"} or "releases" not in doc:
        raise RegistryError("a registry file is a mapping with a 'releases' list", path=source)
    items = doc["releases"]
    if not isinstance(items, list):
        raise RegistryError("'releases' must be a list", path=source, field="releases")
    out: list[Release] = []
    seen: set[str] = set()
    for i, item in enumerate(items):
        where = item.get("name", f"releases[{i}]") if isinstance(item, dict) else f"releases[{i}]"
        if not isinstance(item, dict):
            raise RegistryError("a release must be a mapping", path=source, field=str(where))
        unknown = sorted(set(item) - _RELEASE_KEYS)
        if unknown:
            raise RegistryError(f"release {where!r}: unknown key(s) {unknown}; allowed: {sorted(_RELEASE_KEYS)}",
                                path=source, field=str(where))
        for key in ("name", "model", "format", "saes"):
            if item.get(key) in (None, "", []):
                raise RegistryError(f"release {where!r}: missing required field {key!r}", path=source,
                                    field=str(where))
        if (item.get("repo_id") in (None, "")) == (item.get("local_path") in (None, "")):
            raise RegistryError(f"release {where!r}: give exactly one of repo_id or local_path", path=source,
                                field=str(where))
        name = str(item["name"])
        if name in seen:
            raise RegistryError(f"duplicate release name {name!r}", path=source, field=name)
        seen.add(name)
        if not isinstance(item["saes"], list):
            raise RegistryError(f"release {name!r}: 'saes' must be a list", path=source, field=name)
        local = item.get("local_path")
        if local is not None and base is not None and not Path(local).expanduser().is_absolute():
            local = str((base / local).resolve())
        if check_formats:
            _check_format(str(item["format"]), name, source)
        out.append(Release(
            name=name, model=str(item["model"]), format=str(item["format"]), source=source,
            repo_id=item.get("repo_id"), local_path=local, revision=item.get("revision"),
            hook=item.get("hook"), hook_out=item.get("hook_out"), links=dict(item.get("links") or {}),
            license=item.get("license"), description=item.get("description"),
            config=dict(item.get("config") or {}), raw_saes=item["saes"],
        ))
    return out


def _check_format(fmt: str, name: str, source: str) -> None:
    from sae_hub.loading import list_loaders

    loaders = list_loaders()
    if fmt not in loaders:
        raise RegistryError(f"release {name!r}: format {fmt!r} is not provided by any loader "
                            f"(known: {', '.join(loaders)})", path=source, field=name)


def _rows(expand: Any, where: str, source: str) -> Iterator[dict[str, Any]]:
    if expand is None:
        yield {}
        return
    if not isinstance(expand, list) or not all(isinstance(r, dict) for r in expand):
        raise RegistryError(f"{where}: 'expand' must be a list of mappings", path=source, field=where)
    for row in expand:
        axes = []
        for key, value in row.items():
            if isinstance(value, str) and (m := _RANGE.match(value)):
                lo, hi = int(m.group(1)), int(m.group(2))
                values: list[Any] = list(range(lo, hi + 1))
            elif isinstance(value, list):
                values = value
            else:
                values = [value]
            axes.append([(key, v) for v in values])
        for combo in itertools.product(*axes):
            yield dict(combo)


def _fill(value: Any, env: Mapping[str, Any], where: str, source: str) -> Any:
    if isinstance(value, str) and "{" in value:
        try:
            return _TEMPLATE.sub(lambda m: str(env[m.group(1)]), value)
        except KeyError as e:
            raise RegistryError(f"{where}: template variable {e.args[0]!r} is not defined", path=source,
                                field=where) from None
    if isinstance(value, dict):
        return {k: _fill(v, env, where, source) for k, v in value.items()}
    return value


def _expand_saes(rel: Release) -> dict[str, SAEEntry]:
    out: dict[str, SAEEntry] = {}
    for i, raw in enumerate(rel.raw_saes):
        where = f"{rel.name}.saes[{i}]"
        if not isinstance(raw, dict):
            raise RegistryError(f"{where}: an SAE entry must be a mapping", path=rel.source, field=where)
        unknown = sorted(set(raw) - _SAE_KEYS)
        if unknown:
            raise RegistryError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(_SAE_KEYS)}",
                                path=rel.source, field=where)
        if raw.get("id") in (None, ""):
            raise RegistryError(f"{where}: missing required field 'id'", path=rel.source, field=where)
        base_vars = raw.get("vars") or {}
        for row in _rows(raw.get("expand"), where, rel.source):
            env = {**base_vars, **row}
            sae_id = str(_fill(raw["id"], env, where, rel.source))
            vals: dict[str, Any] = {}
            for key in ("path", "neuronpedia", "sha256", "l0", "variance_explained", "norm_scaling_factor"):
                if key in raw and raw[key] is not None:
                    vals[key] = _fill(raw[key], env, where, rel.source)
            for key, kind in _NUMERIC.items():
                if key in vals:
                    try:
                        vals[key] = kind(vals[key])
                    except (TypeError, ValueError):
                        raise RegistryError(f"{where}: {key} must be a number, got {vals[key]!r}",
                                            path=rel.source, field=sae_id) from None
            hook = _fill(raw.get("hook", rel.hook), env, where, rel.source)
            hook_out = _fill(raw.get("hook_out", rel.hook_out), env, where, rel.source)
            if sae_id in out:
                raise RegistryError(f"release {rel.name!r}: duplicate sae id {sae_id!r}", path=rel.source,
                                    field=sae_id)
            out[sae_id] = SAEEntry(
                id=sae_id, path=str(vals.pop("path", sae_id)), hook=hook, hook_out=hook_out,
                config={**rel.config, **_fill(raw.get("config") or {}, env, where, rel.source)},
                **vals,
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


def get_release(name: str) -> Release:
    """The release called ``name``; an unknown name lists the closest ones (or the release for a repo id)."""
    table = _TABLE.get()
    rel = table.get(name)
    if rel is not None:
        if not rel._format_checked:
            _check_format(rel.format, rel.name, rel.source)
            rel._format_checked = True
        return rel
    by_repo = sorted(r.name for r in table.values() if r.repo_id == name)
    if by_repo:
        raise UnknownReleaseError(
            f"{name!r} is a Hub repo id, not a release name; the registry knows it as release(s) "
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


def add(source: str | os.PathLike[str] | Mapping[str, Any], *, replace: bool = False,
        validate: bool = True) -> list[str]:
    """Add releases from a YAML file, a dict (same schema), or ``hf://org/repo[@revision]/path.yaml``.

    Returns the names added. With ``validate`` (default) every SAE list is expanded now, so mistakes show up
    at registration rather than at first use.
    """
    if isinstance(source, Mapping):
        releases = _parse(dict(source), "<dict>")
    else:
        text = str(source)
        if text.startswith("hf://"):
            path = _fetch_hf_yaml(text)
            releases = _read_file(path)
            for r in releases:
                r.source = text
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


def _fetch_hf_yaml(url: str) -> Path:
    """``hf://org/repo[@rev]/path/in/repo.yaml`` -> local cached path, via huggingface_hub."""
    from huggingface_hub import hf_hub_download

    rest = url.removeprefix("hf://")
    parts = rest.split("/")
    if len(parts) < 3:
        raise RegistryError("expected hf://org/repo/path/to/registry.yaml", path=url)
    repo, _, revision = parts[1].partition("@")
    repo_id = f"{parts[0]}/{repo}"
    try:
        return Path(hf_hub_download(repo_id, "/".join(parts[2:]), revision=revision or None))
    except Exception as e:
        raise RegistryError(f"could not fetch registry file: {type(e).__name__}: {e}", path=url) from e


def reset() -> None:
    """Forget added releases and re-read the shipped and SAE_HUB_REGISTRY files on next use."""
    _TABLE.releases = None


def entry_for(repo_id: str, *, name: str | None = None, model: str, saes: list[Mapping[str, Any]] | None = None,
              format: str = "saelens", revision: str | None = None, **extra: Any) -> str:
    """The YAML release entry to publish SAEs uploaded to ``repo_id`` (printed and returned).

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
    text = yaml.safe_dump({"releases": [entry]}, sort_keys=False)
    print(text)
    return text
