"""The loader registry: how sae-hub learns to read a checkpoint format.

A loader is a pure function from local files to ``(SAEConfig, state_dict)`` with tensors already in
canonical orientation (see :mod:`sae_hub.sae`), plus a ``detect`` predicate for autodetection and the glob
patterns of the files it may read (so the hub downloads only those). Loaders never download and never run
code from a checkpoint.

Built-in loaders live one module per format in ``sae_hub.loaders``; third-party packages add theirs through
the ``sae_hub.loaders`` entry-point group, or by calling :func:`register_loader` directly::

    @sae_hub.register_loader("my-format", files=["weights.safetensors", "meta.json"], detect=my_detect)
    def load_my_format(path: Path, options: dict) -> tuple[SAEConfig, dict[str, torch.Tensor]]:
        ...
"""

from __future__ import annotations

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
    SaeHubError,
)

if TYPE_CHECKING:
    import torch

    from sae_hub.config import SAEConfig

__all__ = ["Loader", "detect_format", "get_loader", "list_loaders", "load_local", "register_loader"]

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
        found = set()
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
_plugins_discovered = False


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
) -> Callable[[LoadFn], LoadFn]:
    """Decorator registering ``load(path, options) -> (SAEConfig, state_dict)`` as format ``name``.

    ``files`` are glob patterns, relative to the SAE folder, of every file the loader may read (to detect a
    folder, only loaders one of whose patterns matches a name in it are asked); ``detect`` says whether a
    local folder/file is in this format; ``options`` are the keyword options it accepts
    (anything else passed to ``load_from_disk`` is rejected). Registering a taken name is an error unless
    ``replace=True``. Formats whose config can be read without the weights also give ``config_files`` (the
    patterns of those files) and ``load_config(path, options) -> SAEConfig``, so ``SAE.get_config`` fetches
    only those.
    """
    if not name or not isinstance(name, str):
        raise LoaderRegistrationError(f"a loader needs a non-empty string name, got {name!r}")
    if not callable(detect):
        raise LoaderRegistrationError(f"loader {name!r}: detect must be callable")
    patterns = tuple(files)
    if not patterns:
        raise LoaderRegistrationError(f"loader {name!r}: declare the files it reads")

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
        _LOADERS[name] = Loader(name, fn, detect, patterns, tuple(options), doc, tuple(config_files), load_config)
        _DETECTED.clear()
        return fn

    return decorator


def _discover(*, plugins: bool = False) -> None:
    """Import the built-in loader modules once, on first use; with ``plugins``, the entry points as well.

    Entry points are scanned only when needed (listing loaders, a format name no built-in provides, or a path
    no built-in recognises): reading every installed distribution's metadata costs milliseconds, more than
    loading an SAE. So built-in formats win autodetection; pass ``format=`` to pick a plugin explicitly.
    """
    global _discovered, _plugins_discovered
    if not _discovered:
        _discovered = True
        import sae_hub.loaders as builtin

        for info in pkgutil.iter_modules(builtin.__path__):
            if not info.name.startswith("_"):
                importlib.import_module(f"{builtin.__name__}.{info.name}")
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


_DETECTED: dict[tuple[str, int, int, int], str] = {}


def detect_format(path: str | Path) -> str:
    """The name of the one loader that recognises ``path``; none or several is a :class:`FormatDetectionError`.

    Results are remembered per (path, inode, mtime, number of loaders): renaming or adding files changes a
    folder's mtime, and registering a loader changes the count, so a stale answer cannot be returned.
    """
    p = Path(path)
    try:
        st = os.stat(p)
        if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
            _check_path(p)  # raises: a FIFO/device, which detect functions would open
        key: tuple[str, int, int, int] | None = (os.fspath(p), st.st_ino, st.st_mtime_ns, len(_LOADERS))
        if key in _DETECTED:
            return _DETECTED[key]  # type: ignore[index]
    except OSError:
        key = None
    name = _detect_format(p)
    if key is not None:
        _DETECTED[key] = name
    return name


def _detect_hits(p: Path, names: set[str] | None) -> list[str]:
    hits = []
    for loader in list(_LOADERS.values()):
        if names is not None and not loader.could_match(names):
            continue
        try:
            if loader.detect(p):
                hits.append(loader.name)
        except SaeHubError:
            raise
        except Exception:  # a third-party detect that crashes on a foreign folder just does not match
            continue
    return hits


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


def _detect_format(p: Path) -> str:
    _check_path(p)
    names = _entry_names(p)
    _discover()
    hits = _detect_hits(p, names)
    if not hits and not _plugins_discovered:
        _discover(plugins=True)
        hits = _detect_hits(p, names)
    if len(hits) == 1:
        return hits[0]
    found = sorted(str(c.relative_to(p)) for c in p.rglob("*") if c.is_file())[:30] if p.is_dir() else [p.name]
    if not hits:
        raise FormatDetectionError(
            f"no loader recognises this; found {found}; tried {', '.join(sorted(_LOADERS))}. "
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


def load_local_config(path: str | Path, *, format: str, options: Mapping[str, Any] | None = None) -> SAEConfig:
    """Only the config, through the loader's ``load_config`` (no weights read)."""
    p = Path(path)
    loader = get_loader(format)
    if loader.load_config is None:
        raise ConfigError(f"loader {format!r} cannot read a config without the weights", field="format")
    _check_path(p)
    opts = _checked_options(loader, p, options)
    try:
        cfg = loader.load_config(p, opts)
    except SaeHubError as e:
        _named(e, p)
        raise
    except Exception as e:
        raise CorruptFileError(f"loader {format!r} could not read this: {type(e).__name__}: {e}", path=p) from e
    if cfg.provenance.source_format is None:
        cfg.provenance.source_format = format
    return cfg


def load_local(
    path: str | Path, *, format: str | None = None, options: Mapping[str, Any] | None = None
) -> tuple[SAEConfig, dict[str, torch.Tensor], str]:
    """Run a loader on local files: ``(config, canonical state_dict, source path)``.

    Fills in provenance (format and files read) and turns any non-sae-hub exception a loader lets escape
    into a :class:`CorruptFileError` naming the loader and the path.
    """
    p = Path(path)
    if format is None:
        name = detect_format(p)  # also refuses a missing path, a FIFO or a device
    else:
        _check_path(p)  # missing, or a FIFO/device that would block or never end
        name = format
    loader = get_loader(name)
    opts = _checked_options(loader, p, options)
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
    return cfg, state_dict, str(p)
