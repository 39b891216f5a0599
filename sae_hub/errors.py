"""The one exception hierarchy of sae-hub.

Every bad input a user can hand us (a missing or truncated file, a malformed config, shapes that disagree,
an unknown release, an unsafe pickle, a variant we cannot represent) surfaces as a subclass of
:class:`SaeHubError` whose message names the file and the field at fault. Callers can catch the whole family
with one ``except SaeHubError`` or a precise subclass; several subclasses also derive from the matching
builtin (``FileNotFoundError``, ``ValueError``, ``LookupError``) so generic handlers keep working.
"""

from __future__ import annotations

from os import PathLike
from typing import Any

__all__ = [
    "ConfigError",
    "CorruptFileError",
    "DownloadError",
    "FormatDetectionError",
    "IncompatibleSaveError",
    "IntegrityError",
    "LoaderRegistrationError",
    "MissingDependencyError",
    "MissingFileError",
    "NeuronpediaError",
    "RegistryError",
    "SaeHubError",
    "ShapeMismatchError",
    "UnknownArchitectureError",
    "UnknownReleaseError",
    "UnknownSAEError",
    "UnsafeCheckpointError",
    "UnsupportedSAEError",
]


class SaeHubError(Exception):
    """Base class of every error sae-hub raises on purpose.

    ``path`` is the file (or folder) at fault and ``field`` the key or config field, when known; both are also
    part of the message so a traceback alone says where to look.
    """

    def __init__(
        self, message: str, *, path: str | PathLike[str] | None = None, field: str | None = None
    ) -> None:
        self.path = str(path) if path is not None else None
        self.field = field
        where = []
        if self.path is not None:
            where.append(f"file {self.path}")
        if field is not None:
            where.append(f"field {field!r}")
        full = f"{message} ({', '.join(where)})" if where else message
        super().__init__(full)
        self.message = message

    def __reduce__(self) -> tuple[Any, ...]:  # keep pickling (multiprocessing) working with kw-only args
        return (_rebuild, (type(self), self.message, self.path, self.field))


def _rebuild(cls: type[SaeHubError], message: str, path: str | None, field: str | None) -> SaeHubError:
    return cls(message, path=path, field=field)


class MissingFileError(SaeHubError, FileNotFoundError):
    """A file the format needs is not there."""


class CorruptFileError(SaeHubError, ValueError):
    """A file exists but cannot be parsed: truncated safetensors, invalid JSON, bad header."""


class ConfigError(SaeHubError, ValueError):
    """A config is well-formed but wrong: a required field is missing or a value is invalid."""


class UnknownArchitectureError(ConfigError):
    """The config names an architecture sae-hub does not implement."""


class ShapeMismatchError(ConfigError):
    """A tensor's shape or presence disagrees with the config."""


class IncompatibleSaveError(ConfigError):
    """A save was asked to be SAELens-compatible but SAELens cannot compute this SAE as sae-hub does (the
    message says why; ``saelens_compatible=False`` writes a folder only sae-hub loads)."""


class UnsupportedSAEError(SaeHubError, NotImplementedError):
    """The checkpoint is valid but its variant cannot be represented faithfully (the message says why)."""


class UnsafeCheckpointError(SaeHubError):
    """A pickle references a global outside the allow-list; nothing from it was executed."""


class FormatDetectionError(SaeHubError):
    """No loader, or more than one, recognises a folder; the message lists what was found and tried."""


class LoaderRegistrationError(SaeHubError):
    """A loader name is registered twice in the loader registry, or a loader is malformed."""


class RegistryError(ConfigError):
    """A release-table YAML breaks the schema (unknown key, duplicate name, missing field, unknown format)."""


class UnknownReleaseError(SaeHubError, LookupError):
    """No release of that name; the message lists the closest matches."""


class UnknownSAEError(SaeHubError, LookupError):
    """The release exists but has no SAE of that id; the message lists the closest matches."""


class DownloadError(SaeHubError, OSError):
    """Fetching a file from the Hub failed after retries."""


class IntegrityError(SaeHubError):
    """A file's bytes differ from the hash the Hub states for them or the sha256 the release table pins; the file
    was not used."""


class MissingDependencyError(SaeHubError, ImportError):
    """An optional package a function needs is not installed; the message names the extra that brings it
    (``pip install 'sae-hub[analysis]'``). ``module`` is the package, ``extra`` the extra; it is an
    ``ImportError`` too, so ``except ImportError`` around optional features keeps working."""

    def __init__(self, message: str, *, module: str | None = None, extra: str | None = None,
                 path: str | PathLike[str] | None = None, field: str | None = None) -> None:
        super().__init__(message, path=path, field=field)
        self.module = module
        self.extra = extra
        self.name = module  # ImportError's attribute: the module that could not be imported

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_dep, (self.message, self.module, self.extra, self.path, self.field))


def _rebuild_dep(message: str, module: str | None, extra: str | None, path: str | None,
                 field: str | None) -> MissingDependencyError:
    return MissingDependencyError(message, module=module, extra=extra, path=path, field=field)


class NeuronpediaError(DownloadError):
    """Fetching from Neuronpedia failed; ``url`` is the request, ``status`` the HTTP status if one came back."""

    def __init__(self, message: str, *, url: str | None = None, status: int | None = None,
                 path: str | None = None, field: str | None = None) -> None:
        super().__init__(message, path=path, field=field)
        self.url = url
        self.status = status

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_np, (self.message, self.url, self.status, self.path, self.field))


def _rebuild_np(message: str, url: str | None, status: int | None, path: str | None,
                field: str | None) -> NeuronpediaError:
    return NeuronpediaError(message, url=url, status=status, path=path, field=field)
