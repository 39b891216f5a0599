"""The loader registry: the table of checkpoint formats sae-hub can read, and the one place that runs them.

(The *release table*, named releases of published SAEs, is :mod:`sae_hub.releases`; "registry" here always
means this table of formats.)

A loader is a pure function from local files to ``(SAEConfig, state_dict)`` with tensors already in
canonical orientation (see :mod:`sae_hub.sae`), plus a ``detect`` predicate for autodetection and the glob
patterns of the files it may read (so the hub downloads only those). Loaders never download, never run
code from a checkpoint, and never name each other: where two formats' ``detect`` can both match, the more
specific one declares a higher ``priority`` (see :func:`detect_format`).

Built-in loaders live one module per format in ``sae_hub.loaders``, each registered by the decorator below;
third-party packages add theirs through the ``sae_hub.loaders`` entry-point group, the same way::

    @sae_hub.register_loader("my-format", files=["weights.safetensors", "meta.json"], detect=my_detect)
    def load_my_format(path: Path, options: dict) -> tuple[SAEConfig, dict[str, torch.Tensor]]:
        ...

:func:`load_local` is the single path from files to tensors for every entry point (``SAE.load_from_disk``,
``SAE.from_pretrained``, ``SAE.get_config``, conversion): it runs the loader, fills in provenance, and applies
what a release table states about the SAE (:class:`Facts`) in one documented step, :func:`apply_facts`.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import importlib
import os
import pkgutil
import stat
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sae_hub.errors import (
    ConfigError,
    CorruptFileError,
    FormatDetectionError,
    LoaderRegistrationError,
    MissingFileError,
    RegistryError,
    SaeHubError,
    UnsupportedSAEError,
)

if TYPE_CHECKING:
    import torch

    from sae_hub.config import SAEConfig
    from sae_hub.releases import Source

__all__ = ["KINDS", "Facts", "Loader", "apply_facts", "candidate_loaders", "check_release_kind", "detect_format",
           "get_loader", "list_loaders", "load_local", "load_local_config", "loaders", "register_loader",
           "release_kind"]

LoadFn = Callable[[Path, dict[str, Any]], "tuple[SAEConfig, dict[str, torch.Tensor]]"]
DetectFn = Callable[[Path], bool]
ConfigFn = Callable[[Path, dict[str, Any]], "SAEConfig"]

ENTRY_POINT_GROUP = "sae_hub.loaders"


@dataclass(frozen=True)
class Loader:
    """A registered format: its name, what it reads, how to recognise it, and the function that loads it."""

    name: str
    load: LoadFn
    detect: DetectFn
    files: tuple[str, ...]
    options: tuple[str, ...] = ()
    description: str = ""
    config_files: tuple[str, ...] = ()
    load_config: ConfigFn | None = None
    priority: int = 0
    # what load returns: "sae" (SAEConfig), "multilayer" (MultiLayerConfig), "crosscoder" (CrossCoderConfig) or
    # "temporal" (sae_hub.temporal.TemporalConfig)
    kind: str = "sae"

    @functools.cached_property
    def _heads(self) -> tuple[frozenset[str], tuple[str, ...]]:
        heads = {pat.split("/", 1)[0] for pat in self.files}
        globs = tuple(h for h in heads if any(c in h for c in "*?["))
        return frozenset(heads.difference(globs)), globs

    def could_match(self, entries: set[str]) -> bool:
        """Cheap pre-filter for detecting a folder: does any declared file pattern's first path component match
        one of ``entries`` (the names in the folder)? ``detect`` runs only when it does."""
        literal, globs = self._heads
        if not literal.isdisjoint(entries):
            return True
        return any(fnmatch.fnmatchcase(e, g) for g in globs for e in entries)

    def files_in(self, folder: Path) -> list[str]:
        """The declared files present in ``folder`` (relative names, sorted)."""
        found: set[str] = set()
        for pat in self.files:
            if any(c in pat for c in "*?["):
                found.update(str(c.relative_to(folder)) for c in folder.glob(pat) if c.is_file())
            elif (folder / pat).is_file():
                found.add(pat)
        return sorted(found)

    def matching_files(self, names: Iterable[str]) -> list[str]:
        """Which of ``names`` (paths relative to an SAE folder) this format may read."""
        return sorted(n for n in names if any(fnmatch.fnmatchcase(n, pat) for pat in self.files))


_LOADERS: dict[str, Loader] = {}
_discovered = False
_discovering = False
_plugins_discovered = False


#: Loader kinds: what a loader of each kind returns, described, and the class that builds it (module, name).
#: ``sae_hub.from_pretrained`` dispatches on it, and every class refuses a release of another kind by it.
KINDS: dict[str, tuple[str, str, str]] = {
    "sae": ("a single-layer SAE", "sae_hub.sae", "SAE"),
    "multilayer": ("a multi-layer dictionary (transcoder set or CLT)", "sae_hub.multilayer", "MultiLayerDictionary"),
    "crosscoder": ("a crosscoder (one latent space over several sites)", "sae_hub.multilayer", "CrossCoder"),
    "temporal": ("a temporal SAE (it codes each token partly from the earlier tokens of its sequence, so it is "
                 "not per-token)", "sae_hub.temporal", "TemporalSAE"),
}


def release_kind(src: Source) -> str | None:
    """The kind of dictionary a located release holds, from its format alone (no I/O); None when the format is
    only known after fetching (a bare Hub repo)."""
    return get_loader(src.format).kind if src.format is not None else None


def check_release_kind(src: Source, kind: str) -> None:
    """Refuse, before anything is fetched, a release holding another kind than ``kind``, naming the call to use.

    Why refuse rather than return the other class: each ``from_pretrained`` is typed to return its own class
    (splicing and conversion rely on ``SAE.from_pretrained`` returning an SAE); ``sae_hub.from_pretrained`` is
    the call that returns whatever a release holds.
    """
    held = release_kind(src)
    if held is None or held == kind:
        return
    rel = src.release.name if src.release is not None else src.repo_id
    sid = src.entry.id if src.entry is not None else src.path
    what, _, cls = KINDS[held]
    raise UnsupportedSAEError(f"{rel!r} / {sid!r} is {what} (format {src.format!r}): load it with "
                              f"sae_hub.{cls}.from_pretrained({rel!r}, {sid!r}) (or sae_hub.from_pretrained)",
                              path=f"hf://{src.label}", field="format")


def register_loader(
    name: str,
    *,
    files: Iterable[str],
    detect: DetectFn,
    options: Iterable[str] = (),
    description: str | None = None,
    replace: bool = False,
    config_files: Iterable[str] = (),
    load_config: ConfigFn | None = None,
    priority: int = 0,
    kind: str = "sae",
) -> Callable[[LoadFn], LoadFn]:
    """Decorator registering ``load(path, options) -> (SAEConfig, state_dict)`` as format ``name``.

    ``files`` are glob patterns, relative to the SAE folder, of every file the loader may read (to detect a
    folder, only loaders one of whose patterns matches a name in it are asked); ``detect`` says whether a
    local folder/file is in this format; ``options`` are the keyword options it accepts
    (anything else passed to ``load_from_disk`` is rejected). Registering a taken name is an error unless
    ``replace=True``. Formats whose config can be read without the weights also give ``config_files`` (the
    patterns of those files) and ``load_config(path, options) -> SAEConfig``, so ``SAE.get_config`` fetches
    only those.

    ``priority`` settles detection between formats whose files look alike, without either loader naming the
    other: the more specific format declares the higher number (dictionary_learning's ``ae.pt`` holds the same
    keys as a nanoSAE state dict, so ``dictionary-learning`` has priority 10, everything else 0). See
    :func:`detect_format` for the rule.

    ``kind="multilayer"`` declares a loader of transcoder sets / cross-layer transcoders: its ``load`` returns a
    :class:`sae_hub.multilayer.MultiLayerConfig` and canonical multi-layer tensors, and only
    ``MultiLayerDictionary.load_from_disk`` runs it (``SAE.load_from_disk`` on such files says so).
    """
    if not name or not isinstance(name, str):
        raise LoaderRegistrationError(f"a loader needs a non-empty string name, got {name!r}")
    if not callable(detect):
        raise LoaderRegistrationError(f"loader {name!r}: detect must be callable")
    patterns = tuple(files)
    if not patterns:
        raise LoaderRegistrationError(f"loader {name!r}: declare the files it reads")
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise LoaderRegistrationError(f"loader {name!r}: priority must be an int, got {priority!r}")
    if kind not in KINDS:
        raise LoaderRegistrationError(f"loader {name!r}: kind must be one of {sorted(KINDS)}, got {kind!r}")

    def decorator(fn: LoadFn) -> LoadFn:
        if not callable(fn):
            raise LoaderRegistrationError(f"loader {name!r}: load must be callable")
        _discover()  # built-ins first, so a user loader reusing a built-in name is caught here
        existing = _LOADERS.get(name)
        if existing is not None and not replace and existing.load is not fn:
            raise LoaderRegistrationError(
                f"a loader named {name!r} is already registered (by {existing.load.__module__}); "
                "pass replace=True to override it"
            )
        doc = description if description is not None else (fn.__doc__ or "").strip().split("\n")[0]
        _LOADERS[name] = Loader(name, fn, detect, patterns, tuple(options), doc, tuple(config_files), load_config,
                                priority, kind)
        _DETECTED.clear()
        return fn

    return decorator


def _discover(*, plugins: bool = False) -> None:
    """Import the built-in loader modules once, on first use; with ``plugins``, the entry points as well.

    Entry points are scanned only when needed (listing loaders, a format name no built-in provides, or a path
    no built-in recognises): reading every installed distribution's metadata costs milliseconds, more than
    loading an SAE. So built-in formats win autodetection; pass ``format=`` to pick a plugin explicitly.

    The built-ins count as discovered only once every module imported: an import interrupted half-way (Ctrl-C
    in a notebook, a broken install) is retried on the next use instead of leaving the process without the
    formats that had not been imported yet. ``_discovering`` stops the loader modules' own ``register_loader``
    calls from starting the scan again while it runs.
    """
    global _discovered, _discovering, _plugins_discovered
    if not _discovered and not _discovering:
        _discovering = True
        try:
            import sae_hub.loaders as builtin

            for info in pkgutil.iter_modules(builtin.__path__):
                if not info.name.startswith("_"):
                    importlib.import_module(f"{builtin.__name__}.{info.name}")
            _discovered = True
        finally:
            _discovering = False
    if plugins and not _plugins_discovered:
        _plugins_discovered = True
        from importlib.metadata import entry_points

        for ep in entry_points(group=ENTRY_POINT_GROUP):
            try:
                ep.load()
            except SaeHubError:
                raise
            except Exception as e:
                raise LoaderRegistrationError(
                    f"entry point {ep.name!r} ({ep.value}) in group {ENTRY_POINT_GROUP!r} failed to import: {e!r}"
                ) from e


def list_loaders() -> list[str]:
    """Names of every registered loader (built-in, entry points, and ones registered at run time)."""
    _discover(plugins=True)
    return sorted(_LOADERS)


def loaders() -> dict[str, Loader]:
    """The built-in and already registered loaders by name (a copy: registering goes through
    :func:`register_loader`). Entry points are not scanned, as for detection; :func:`list_loaders` scans them."""
    _discover()
    return dict(_LOADERS)


def candidate_loaders(names: Iterable[str]) -> list[Loader]:
    """The loaders that may read some of ``names`` (paths relative to an SAE folder, e.g. a Hub repo listing):
    those with a declared file pattern matching one. The hub uses it to fetch only files some format could
    read; which format it is, :func:`detect_format` decides on the fetched files (``among`` these)."""
    names = list(names)
    return [ld for ld in loaders().values() if ld.matching_files(names)]


def get_loader(name: str) -> Loader:
    """The loader registered as ``name``; an unknown name lists the known ones."""
    _discover()
    if name not in _LOADERS:
        _discover(plugins=True)
    try:
        return _LOADERS[name]
    except KeyError:
        import difflib

        close = difflib.get_close_matches(name, _LOADERS, n=3, cutoff=0.4)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ConfigError(
            f"no loader named {name!r}{hint} Known loaders: {', '.join(sorted(_LOADERS))}", field="format"
        ) from None


def _entry_names(p: Path) -> set[str] | None:
    """Names in a folder, for the detection pre-filter; None (no filter) for a file, which any loader that
    takes single files may claim whatever its name."""
    try:
        return set(os.listdir(p))
    except OSError:  # a file (NotADirectoryError) or unreadable
        return None


_DETECTED: dict[tuple[str, int, int, int, tuple[str, ...] | None], str] = {}


def detect_format(path: str | os.PathLike[str], *, among: Iterable[str] | None = None) -> str:
    """The name of the one loader that recognises ``path``; none or several is a :class:`FormatDetectionError`.

    Precedence, declared in the registry (``priority``) so that no loader has to name another: when several
    loaders recognise ``path``, those of the highest priority win (several of them: ambiguous). And a file
    inside a folder that a higher-priority format recognises (the folder holding it, or that folder's parent for
    a ``checkpoints/`` file) belongs to that format: lower-priority loaders do not claim it. A
    dictionary_learning trainer folder's other ``.pt`` files are therefore not taken for nanoSAE state dicts.

    ``among`` restricts detection to those loader names (the hub passes the formats whose file patterns matched
    the repo listing: the files of the others were not fetched). Results are remembered per (path, inode, mtime,
    number of loaders, ``among``): renaming or adding files changes a folder's mtime, and registering a loader
    changes the count, so a stale answer cannot be returned.
    """
    p = Path(path)
    among_key = tuple(sorted(among)) if among is not None else None
    try:
        st = os.stat(p)
        if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
            _check_path(p)  # raises: a FIFO/device, which detect functions would open
        key: tuple[str, int, int, int, tuple[str, ...] | None] | None = (
            os.fspath(p), st.st_ino, st.st_mtime_ns, len(_LOADERS), among_key)
        if key in _DETECTED:
            return _DETECTED[key]
    except OSError:
        key = None
    name = _detect_format(p, among_key)
    if key is not None:
        _DETECTED[key] = name
    return name


def _detects(loader: Loader, p: Path) -> bool:
    try:
        return bool(loader.detect(p))
    except SaeHubError:
        raise
    except Exception:  # a third-party detect that crashes on a foreign folder just does not match
        return False


def _detect_hits(p: Path, names: set[str] | None, among: tuple[str, ...] | None) -> tuple[list[str], str | None]:
    """The loaders that win ``p`` under the precedence rule of :func:`detect_format`, and the format whose folder
    claimed the file (None if none did)."""
    hits = [ld for ld in list(_LOADERS.values())
            if (among is None or ld.name in among) and (names is None or ld.could_match(names)) and _detects(ld, p)]
    claimed = None
    if hits and names is None:  # a file: does a higher-priority format own the folder it sits in?
        low = min(ld.priority for ld in hits)
        owners = sorted((ld for ld in _LOADERS.values() if ld.priority > low), key=lambda ld: -ld.priority)
        for folder in (p.parent, p.parent.parent):
            owner = next((ld for ld in owners if _detects(ld, folder)), None)
            if owner is not None:
                claimed = owner.name
                hits = [ld for ld in hits if ld.priority >= owner.priority]
                break
    if hits:
        top = max(ld.priority for ld in hits)
        hits = [ld for ld in hits if ld.priority == top]
    return [ld.name for ld in hits], claimed


def _check_path(p: Path) -> None:
    """A path to load must be a folder or a regular file (symlinks to either are fine).

    Why here: a FIFO blocks whoever opens it and a device never ends, and loaders' ``detect`` functions and
    readers outside :mod:`sae_hub.files` (``torch.load``, ``zipfile``) open the path directly.
    """
    try:
        mode = os.stat(p).st_mode
    except (FileNotFoundError, NotADirectoryError):
        raise MissingFileError("no such file or folder", path=p) from None
    except OSError as e:
        raise CorruptFileError(f"cannot read this path: {e.strerror or e}", path=p) from None
    if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
        raise CorruptFileError("not a regular file or a folder (a FIFO, device or socket); only regular files, "
                               "folders, or symlinks to them, are read", path=p)


def _named(e: SaeHubError, p: Path) -> None:
    """Make ``e`` name ``p`` if it names no file yet (a loader, or an SAEConfig built inside it, raised it without
    one), so every error from loading says which checkpoint it is about; type, field and traceback are kept."""
    if e.path is None:
        e.path = str(p)
        where = [f"file {e.path}"] + ([f"field {e.field!r}"] if e.field is not None else [])
        e.args = (f"{e.message} ({', '.join(where)})", *e.args[1:])


def _detect_format(p: Path, among: tuple[str, ...] | None) -> str:
    _check_path(p)
    names = _entry_names(p)
    _discover()
    hits, claimed = _detect_hits(p, names, among)
    if not hits and not _plugins_discovered:
        _discover(plugins=True)
        hits, claimed = _detect_hits(p, names, among)
    if len(hits) == 1:
        return hits[0]
    found = sorted(str(c.relative_to(p)) for c in p.rglob("*") if c.is_file())[:30] if p.is_dir() else [p.name]
    if not hits:
        inside = (f"; it sits in a {claimed} folder, whose format takes precedence (load the folder)"
                  if claimed else "")
        tried = sorted(among) if among is not None else sorted(_LOADERS)
        raise FormatDetectionError(
            f"no loader recognises this; found {found}; tried {', '.join(tried)}{inside}. "
            "Pass format=... to name one, or register a loader for this format",
            path=p,
        )
    raise FormatDetectionError(
        f"ambiguous: loaders {hits} all recognise this (found {found}); pass format=... to choose", path=p
    )


def _checked_options(loader: Loader, p: Path, options: Mapping[str, Any] | None) -> dict[str, Any]:
    opts = dict(options or {})
    unknown = sorted(set(opts) - set(loader.options))
    if unknown:
        accepted = ", ".join(loader.options) or "none"
        raise ConfigError(f"loader {loader.name!r} does not take option(s) {unknown}; it accepts: {accepted}",
                          path=p, field=unknown[0])
    return opts


@dataclass(frozen=True)
class Facts:
    """What a release table states about one SAE that its own files may not: where it reads from, its
    Neuronpedia id, licence, sparsity and normalisation constants, and ``config:`` overrides.

    Built by :meth:`sae_hub.releases.Release.facts`; handed to :func:`load_local` (and
    :func:`load_local_config`) with the files, so the loader runs once, with what it can take as an option
    (:meth:`options`, e.g. ``norm_scaling_factor`` for SAELens folders, so it has no reason to warn that the
    factor is unknown), and :func:`apply_facts` then applies the rest in one step. ``source`` and ``origin``
    (the YAML file and the entry path in it) are what an override that does not fit is blamed on.
    """

    release: str
    sae_id: str
    source: str
    origin: str
    model: str | None = None
    hook: str | None = None
    hook_out: str | None = None
    neuronpedia: str | None = None
    license: str | None = None
    norm_scaling_factor: float | None = None
    l0: float | None = None
    variance_explained: float | None = None
    config: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"release {self.release!r}, SAE {self.sae_id!r}"

    def options(self, loader: Loader) -> dict[str, Any]:
        """The facts ``loader`` takes as options (it declares them in ``options``); the rest are applied after."""
        known = {"norm_scaling_factor": self.norm_scaling_factor}
        return {k: v for k, v in known.items() if v is not None and k in loader.options}


def apply_facts(cfg: SAEConfig, facts: Facts, tensors: Mapping[str, torch.Tensor] | None = None) -> None:
    """Apply a release table's facts to the config a loader produced: the one step after every loader.

    The SAE's files win where they know better (a model name they record, a licence, a normalisation factor
    they hold); the release table wins for what it is the authority on (hook names, Neuronpedia id), records
    ``l0``/``variance_explained`` and the release in ``cfg.extra``, then applies its ``config:`` overrides.

    The release table checks each override's type when it reads the YAML, but some values are only wrong for a
    particular SAE (``k`` above its ``d_sae``, a topk-only flag on a jumprelu SAE, a width its weights do not
    have). Those surface here, after the SAE's own files loaded fine, so the error is a
    :class:`~sae_hub.errors.RegistryError` naming the YAML file and entry that set them, not the downloaded
    config. A shape check against ``tensors`` runs only when the weights fitted before the overrides, so a bad
    checkpoint is never blamed on the release table.
    """
    cfg.model_name = cfg.model_name or facts.model
    if facts.hook:
        cfg.hook_name = facts.hook
    if facts.hook_out:
        cfg.hook_name_out = facts.hook_out
    if facts.neuronpedia:
        cfg.neuronpedia_id = facts.neuronpedia
    if facts.license and not cfg.license:
        cfg.license = facts.license
    if (facts.norm_scaling_factor is not None and cfg.normalize_activations == "expected_average_only_in"
            and cfg.norm_scaling_factor is None):
        cfg.norm_scaling_factor = facts.norm_scaling_factor
    for key, value in (("l0", facts.l0), ("variance_explained", facts.variance_explained)):
        if value is not None:
            cfg.extra.setdefault(key, value)
    cfg.extra.setdefault("release", {"name": facts.release, "sae_id": facts.sae_id})
    if facts.config:
        _apply_overrides(cfg, facts, tensors)


def _apply_overrides(cfg: SAEConfig, facts: Facts, tensors: Mapping[str, torch.Tensor] | None) -> None:
    shown = ", ".join(f"{k}={v!r}" for k, v in facts.config.items())
    fields = {f.name for f in dataclasses.fields(cfg)} - {"provenance", "extra"}
    for key in facts.config:
        if key not in fields:
            raise RegistryError(f"{facts.label}: config override {key!r} is not an SAEConfig field",
                                path=facts.source, field=f"{facts.origin}.config.{key}")
    fitted = tensors is not None and _shape_problem(cfg, tensors) is None
    for key, value in facts.config.items():
        setattr(cfg, key, value)
    try:
        cfg.__post_init__()
    except (ConfigError, TypeError, ValueError) as e:
        detail = e.message if isinstance(e, SaeHubError) else f"{type(e).__name__}: {e}"
        bad = e.field if isinstance(e, SaeHubError) and e.field in facts.config else None
        raise RegistryError(
            f"{facts.label}: config override {f'{bad}={facts.config[bad]!r}' if bad else shown} does not fit this "
            f"SAE: {detail}", path=facts.source, field=f"{facts.origin}.config" + (f".{bad}" if bad else "")) from e
    if fitted and tensors is not None and (problem := _shape_problem(cfg, tensors)) is not None:
        raise RegistryError(f"{facts.label}: config override(s) {shown} do not fit this SAE's weights: {problem}",
                            path=facts.source, field=f"{facts.origin}.config")


def _shape_problem(cfg: SAEConfig, tensors: Mapping[str, torch.Tensor]) -> str | None:
    """Why ``tensors`` cannot be this config's parameters (what ``SAE.from_state_dict`` would refuse), or None."""
    from sae_hub.config import param_shapes

    expected = param_shapes(cfg)
    if set(expected) != set(tensors):
        return f"the config needs tensors {sorted(expected)}, the weights have {sorted(tensors)}"
    for key, shape in expected.items():
        if tuple(tensors[key].shape) != shape:
            return f"tensor {key} has shape {list(tensors[key].shape)}, the config needs {list(shape)}"
    return None


def _with_facts(loader: Loader, options: Mapping[str, Any] | None, facts: Facts | None) -> dict[str, Any]:
    """The caller's options over the facts the loader takes as options (a user's explicit value wins)."""
    return {**(facts.options(loader) if facts is not None else {}), **(options or {})}


def load_local_config(path: str | os.PathLike[str], *, format: str, options: Mapping[str, Any] | None = None,
                      facts: Facts | None = None, files: list[dict[str, str]] | None = None) -> SAEConfig:
    """Only the config, through the loader's ``load_config`` (no weights read); ``facts`` and ``files`` as for
    :func:`load_local`."""
    p = Path(path)
    loader = get_loader(format)
    if loader.load_config is None:
        raise ConfigError(f"loader {format!r} cannot read a config without the weights", field="format")
    _check_path(p)
    opts = _checked_options(loader, p, _with_facts(loader, options, facts))
    try:
        cfg = loader.load_config(p, opts)
    except SaeHubError as e:
        _named(e, p)
        raise
    except Exception as e:
        raise CorruptFileError(f"loader {format!r} could not read this: {type(e).__name__}: {e}", path=p) from e
    if cfg.provenance.source_format is None:
        cfg.provenance.source_format = format
    if facts is not None:
        apply_facts(cfg, facts)
    if files:
        cfg.provenance.source_files = list(files)
    return cfg


def load_local(
    path: str | os.PathLike[str], *, format: str | None = None, options: Mapping[str, Any] | None = None,
    facts: Facts | None = None, files: list[dict[str, str]] | None = None, kind: str = "sae",
) -> tuple[SAEConfig, dict[str, torch.Tensor], str]:
    """Run a loader on local files: ``(config, canonical state_dict, source path)``.

    Fills in provenance (format and files read) and turns any non-sae-hub exception a loader lets escape
    into a :class:`CorruptFileError` naming the loader and the path. ``facts`` (what a release table says about
    this SAE) reach the loader as the options it takes and are then applied by :func:`apply_facts`; ``files``
    replaces the provenance's file list when the caller knows more than the folder does (the hub's
    ``hf://repo@commit/name`` and the sha256 it verified). ``kind`` is what the caller builds (a key of
    :data:`KINDS`); a loader of another kind is refused before it reads anything, naming the class to use.
    """
    p = Path(path)
    if format is None:
        name = detect_format(p)  # also refuses a missing path, a FIFO or a device
    else:
        _check_path(p)  # missing, or a FIFO/device that would block or never end
        name = format
    loader = get_loader(name)
    if loader.kind != kind:
        what, cls = KINDS[loader.kind][0], KINDS[loader.kind][2]
        raise UnsupportedSAEError(f"format {name!r} holds {what}; load it with sae_hub.{cls}.load_from_disk", path=p,
                                  field="format")
    opts = _checked_options(loader, p, _with_facts(loader, options, facts))
    try:
        cfg, state_dict = loader.load(p, opts)
    except SaeHubError as e:
        _named(e, p)
        raise
    except Exception as e:
        raise CorruptFileError(f"loader {name!r} could not read this: {type(e).__name__}: {e}", path=p) from e
    prov = cfg.provenance
    if prov.source_format is None:
        prov.source_format = name
    if not prov.source_files:
        if p.is_dir():
            prov.source_files = [{"name": n} for n in loader.files_in(p)]
        else:
            prov.source_files = [{"name": p.name}]
    if facts is not None:
        apply_facts(cfg, facts, state_dict)
    if files:
        prov.source_files = list(files)
    return cfg, state_dict, str(p)
