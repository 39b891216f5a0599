"""The one place that talks to the Hugging Face Hub: ``from_pretrained``, ``get_config``, ``push_to_hub``.

Every byte goes through ``huggingface_hub`` (its cache, revisions, ``HF_ENDPOINT`` mirrors, ``HF_HUB_OFFLINE``,
progress bars and tokens); there is no hand-written HTTP. Only the files the format needs are fetched: a
registry release names its format, so its loader's file patterns decide what is downloaded; a bare repo id is
listed once and the format detected from the names present. With ``local_files_only=True`` or
``HF_HUB_OFFLINE=1`` a cached load makes no HTTP request at all.

Every file the cache hands us is checked before a loader reads it. ``huggingface_hub`` names a cached blob by
the ETag the server *sent*, not by the bytes it received, so a blob name proves nothing until the bytes have
been hashed: an LFS file's ETag is its sha256 (``X-Linked-Etag``), a regular file's is its git blob sha1. The
first time we see a blob we hash it and compare; a match is remembered in a small marker next to the cache's
``blobs`` (``.sae_hub_verified/<blob>``, keyed by size, mtime and inode), so a cached load of a multi-GB file
hashes nothing. A mismatch removes the blob and its snapshot link and raises :class:`IntegrityError`; a file a
loader cannot parse is removed the same way, so the next online load downloads it again. A Hub that cannot be
reached (connection refused, timeouts, persistent 5xx) is a :class:`DownloadError`, never "file not found".
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import json
import os
import re
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sae_hub.errors import (
    ConfigError,
    CorruptFileError,
    DownloadError,
    FormatDetectionError,
    IntegrityError,
    MissingFileError,
    RegistryError,
    SaeHubError,
    UnknownReleaseError,
)

if TYPE_CHECKING:
    from collections.abc import Mapping

    import torch
    from huggingface_hub import HfApi, ModelCardData

    from sae_hub.config import SAEConfig
    from sae_hub.loading import Loader
    from sae_hub.releases import Release, SAEEntry
    from sae_hub.sae import SAE

__all__ = ["from_pretrained", "get_config", "push_to_hub"]

_REPO_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
_GLOB = re.compile(r"[*?\[]")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX40 = re.compile(r"[0-9a-f]{40}")
_TEXT_SUFFIXES = (".json", ".yaml", ".yml", ".txt", ".md")  # config/docs: never the weights a registry pins
_MARKERS = ".sae_hub_verified"  # inside a cached repo folder, beside blobs/ (huggingface_hub's scans ignore it)


@dataclass
class _Source:
    """Where an SAE's files live: a Hub repo (+ folder/file inside it) or a local folder, and its format."""

    repo_id: str | None
    local_root: Path | None
    path: str
    format: str | None
    revision: str | None = None
    release: Release | None = None
    entry: SAEEntry | None = None
    files: list[dict[str, str]] = field(default_factory=list)
    #: Files this load took from the HF cache: (path in the repo, snapshot path, sha256 checked or computed).
    fetched: list[tuple[str, Path, str]] = field(default_factory=list)
    commit: str | None = None
    repo_type: str | None = None  # None: a model repo (SAEs); "dataset" etc. only for fetch_hub_file

    @property
    def label(self) -> str:
        where = self.repo_id or str(self.local_root)
        return f"{where}/{self.path}" if self.path not in ("", ".") else where


def _resolve(release: str, sae_id: str, revision: str | None, format: str | None) -> _Source:
    from sae_hub import releases

    try:
        rel, entry = releases.resolve(release, sae_id)
    except UnknownReleaseError:
        table = releases._TABLE.get()
        known_repo = any(r.repo_id == release for r in table.values())
        if known_repo or not _REPO_ID.match(release) or release in table:
            raise
        return _Source(repo_id=release, local_root=None, path=sae_id.strip("/"), format=format, revision=revision)
    return _Source(
        repo_id=rel.repo_id, local_root=Path(rel.local_path) if rel.local_path else None,
        path=entry.path.strip("/"), format=format or rel.format, revision=revision or rel.revision,
        release=rel, entry=entry,
    )


def _offline(local_files_only: bool | None) -> bool:
    if local_files_only is not None:
        return local_files_only
    import huggingface_hub.constants as c

    return bool(c.HF_HUB_OFFLINE)


def _library() -> dict[str, str]:
    """``library_name``/``library_version`` for every huggingface_hub call that takes them.

    The client puts them first in the User-Agent of each request (``sae-hub/0.1.0; hf_hub/...``); that is how the
    Hub attributes downloads and traffic to a library, and how a Hub admin can tell our requests apart. Without
    them every request reads ``unknown/None``.
    """
    from sae_hub import __version__

    return {"library_name": "sae-hub", "library_version": __version__}


def _hf_api(token: str | None = None) -> HfApi:
    """An ``HfApi`` whose every request carries our User-Agent (see :func:`_library`)."""
    from huggingface_hub import HfApi

    return HfApi(token=token, **_library())


def _join(prefix: str, name: str) -> str:
    return f"{prefix}/{name}" if prefix not in ("", ".") else name


def _cause(e: BaseException) -> str:
    """The innermost cause of a client error, in words: huggingface_hub wraps a refused connection or a 503 in a
    generic "cannot find the requested files" message, which alone would send users looking for a typo."""
    chain = [e]
    while chain[-1].__cause__ is not None and len(chain) < 10:
        chain.append(chain[-1].__cause__)
    root = chain[-1]
    response = getattr(root, "response", None)
    status = getattr(response, "status_code", None)
    if isinstance(status, int):
        return f"the Hub answered HTTP {status} ({type(root).__name__})"
    return f"{type(root).__name__}: {root}"


def _wrap_hub_error(e: Exception, src: _Source, filename: str | None = None, *, offline: bool) -> SaeHubError:
    """A client exception as a sae-hub error naming repo and file.

    ``LocalEntryNotFoundError`` means "not cached, and the Hub did not answer": offline that is a missing file,
    online it is a download failure (connection refused, timeout, persistent 5xx), never "no such file".
    """
    import huggingface_hub.constants as constants
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"hf://{src.repo_id}" + (f"/{filename}" if filename else "")
    rev = f" at revision {src.revision!r}" if src.revision else ""
    if isinstance(e, GatedRepoError):
        return DownloadError(f"access to repo {src.repo_id!r} is gated: log in and accept its terms", path=where)
    if isinstance(e, RepositoryNotFoundError):
        return MissingFileError(f"no Hub repo {src.repo_id!r} (or it is private)", path=where)
    if isinstance(e, RevisionNotFoundError):
        return MissingFileError(f"repo {src.repo_id!r} has no revision {src.revision!r}", path=where)
    if isinstance(e, LocalEntryNotFoundError) and offline:
        return MissingFileError(f"not in the local cache{rev} and offline mode is on (HF_HUB_OFFLINE or "
                                "local_files_only): load it once with network access", path=where)
    if isinstance(e, EntryNotFoundError) and not isinstance(e, LocalEntryNotFoundError):
        return MissingFileError(f"repo {src.repo_id!r}{rev} has no such file", path=where)
    return DownloadError(f"could not download from the Hub at {constants.ENDPOINT}{rev} and it is not in the "
                         f"local cache: {_cause(e)}", path=where)


def _download(src: _Source, patterns: list[str], *, offline: bool, force: bool) -> Path:
    """Fetch the files of ``src`` matching ``patterns`` (relative to the SAE folder); return the local folder.

    Literal names are fetched one ``hf_hub_download`` each (a file the repo does not have is fine: the loader
    says which one it needed); glob patterns need the repo listing, which ``snapshot_download`` gets once.
    Offline, both read only the cache. Every file is then checked (:func:`_verify_fetched`).
    """
    from huggingface_hub import hf_hub_download, snapshot_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    assert src.repo_id is not None
    single_file = src.path and any(fnmatch.fnmatchcase(src.path.rsplit("/", 1)[-1], p) for p in patterns)
    wanted = [src.path] if single_file else [_join(src.path, p) for p in patterns]
    local_root: Path | None = None
    fetched: list[tuple[str, Path]] = []
    try:
        if any(_GLOB.search(w) for w in wanted):
            root = snapshot_download(src.repo_id, revision=src.revision, allow_patterns=wanted,
                                     local_files_only=offline, force_download=force, **_library())
            local_root = Path(root)
            for f in sorted(local_root.rglob("*")):
                rel = f.relative_to(local_root).as_posix()
                if f.is_file() and any(fnmatch.fnmatch(rel, w) for w in wanted):
                    fetched.append((rel, f))
        else:
            for name in wanted:
                try:
                    got = Path(hf_hub_download(src.repo_id, name, revision=src.revision, local_files_only=offline,
                                               force_download=force, **_library()))
                except LocalEntryNotFoundError as e:
                    if offline:
                        continue  # not cached: if the loader needs it, it says which file is missing
                    raise _wrap_hub_error(e, src, name, offline=offline) from e  # the Hub did not answer
                except EntryNotFoundError:
                    continue  # the Hub says this repo has no such file (an optional one)
                except Exception as e:
                    raise _wrap_hub_error(e, src, name, offline=offline) from e
                local_root = got.parents[len(Path(name).parts) - 1]
                if got.is_dir():  # offline, a "*" pattern made the SAE folder look like a file: take what it holds
                    fetched += [(f.relative_to(local_root).as_posix(), f) for f in sorted(got.rglob("*"))
                                if f.is_file()]
                else:
                    fetched.append((name, got))
    except SaeHubError:
        raise
    except Exception as e:
        raise _wrap_hub_error(e, src, src.path or None, offline=offline) from e
    if local_root is None:
        if offline:
            raise MissingFileError(f"no file of {src.label} is in the local cache (offline mode): load it once "
                                   "with network access, or unset HF_HUB_OFFLINE / local_files_only",
                                   path=f"hf://{src.label}")
        raise MissingFileError(f"none of the files this format needs ({', '.join(patterns)}) exist here",
                               path=f"hf://{src.label}")
    target = local_root / src.path if src.path not in ("", ".") else local_root
    if not target.exists():
        raise MissingFileError(f"repo has no file or folder {src.path!r} for this format", path=f"hf://{src.label}")
    src.commit = local_root.name if local_root.parent.name == "snapshots" else src.revision
    _verify_fetched(src, fetched, offline=offline)
    return target


# ------------------------------------------------------------------ integrity of what the cache hands us


def _hash_file(path: Path, git_sha1: bool) -> tuple[str, str | None]:
    """sha256 of a file and, if asked, its git blob sha1 (``sha1(b"blob <size>\\0" + data)``), in one pass over
    its memory map (the second digest costs no extra read)."""
    import mmap

    sha = hashlib.sha256()
    git = hashlib.sha1() if git_sha1 else None
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if git is not None:
            git.update(b"blob %d\0" % size)
        if size:
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
                view = memoryview(m)
                try:
                    for start in range(0, size, 1 << 24):
                        part = view[start:start + (1 << 24)]
                        sha.update(part)
                        if git is not None:
                            git.update(part)
                        part.release()
                finally:
                    view.release()
    return sha.hexdigest(), git.hexdigest() if git is not None else None


def _cache_parts(link: Path) -> tuple[Path, Path, Path] | None:
    """(blob, repo cache folder, marker) of a snapshot path in the HF cache; None if it is not in one.

    The blob is the link's target (or the file itself where the cache copies instead of linking); the marker
    is keyed by the blob name, or by the file's place in the snapshot when there is no blob.
    """
    storage = next((p.parent for p in link.parents if p.name == "snapshots"), None)
    if storage is None:
        return None
    blob = link.resolve()
    if blob.parent == storage.resolve() / "blobs":
        key = blob.name
    else:
        key = "file-" + hashlib.sha1(link.relative_to(storage).as_posix().encode()).hexdigest()
    return blob, storage, storage / _MARKERS / key


def _read_marker(marker: Path, st: os.stat_result) -> dict[str, Any] | None:
    """A marker that still describes this exact file (same size, mtime and inode), or None."""
    try:
        data = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or [data.get("size"), data.get("mtime_ns"), data.get("ino")] != [
            st.st_size, st.st_mtime_ns, st.st_ino]:
        return None
    if not isinstance(data.get("sha256"), str) or not _HEX64.fullmatch(data["sha256"]):
        return None
    if data.get("checked") is not None and not (isinstance(data["checked"], str) and ":" in data["checked"]):
        return None
    return data


def _write_marker(marker: Path, st: os.stat_result, sha256: str, checked: str | None) -> None:
    """Remember a hash (atomically; several processes may verify the same blob). Best effort: a read-only cache
    only means the next load hashes again."""
    data = {"sha256": sha256, "checked": checked, "size": st.st_size, "mtime_ns": st.st_mtime_ns,
            "ino": st.st_ino}
    tmp = marker.with_name(f".{marker.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    try:
        marker.parent.mkdir(exist_ok=True)
        tmp.write_text(json.dumps(data), encoding="utf-8")
        os.replace(tmp, marker)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()


def _evict(link: Path) -> bool:
    """Remove a cached file: its blob, its snapshot link and its marker, so the next online load fetches it
    again (huggingface_hub re-downloads when the link is gone; a blob left behind would be linked again).
    Returns whether the bytes are gone."""
    parts = _cache_parts(link)
    paths = [link] if parts is None else [link, parts[0], parts[2]]
    for p in paths:
        with contextlib.suppress(OSError):  # already gone, or a read-only cache (then the caller says so)
            p.unlink()
    return not link.exists() and (parts is None or not parts[0].exists())


def _remote_hashes(src: _Source, names: list[str]) -> dict[str, tuple[str, str]]:
    """The Hub's own hashes of ``names`` from the repo tree ({name: ("sha256" | "git-sha1", hex)}), for files
    whose cached name is not a hash (a mirror with other ETags, or a cache that copies instead of linking)."""
    try:
        infos = _hf_api().get_paths_info(src.repo_id, names, revision=src.commit or src.revision,  # type: ignore[arg-type]
                                       repo_type=src.repo_type)
    except Exception as e:
        raise _wrap_hub_error(e, src, names[0], offline=False) from e
    out: dict[str, tuple[str, str]] = {}
    for info in infos:
        lfs = getattr(info, "lfs", None)
        if lfs is not None and getattr(lfs, "sha256", None):
            out[info.path] = ("sha256", str(lfs.sha256).lower())
        elif getattr(info, "blob_id", None):
            out[info.path] = ("git-sha1", str(info.blob_id).lower())
    return out


def _verify_fetched(src: _Source, fetched: list[tuple[str, Path]], *, offline: bool) -> None:
    """Check each cached file against the Hub's hash of it; record the sha256 in provenance.

    Expected hash: the blob name when it is one (64 hex: the LFS sha256; 40 hex: the git blob sha1), else the
    repo tree's (online only). A marker written after a successful check skips the hash on later loads. A
    file nothing can be checked against (offline, name not a hash) is hashed once and its sha256 recorded as
    computed, not verified; the next online load checks it. A mismatch evicts the file and raises.
    """
    plans: list[tuple[str, Path, tuple[Path, Path, Path], os.stat_result, dict[str, Any] | None]] = []
    unnamed: list[str] = []
    for name, link in fetched:
        parts = _cache_parts(link)
        if parts is None:
            continue  # not from an HF cache: nothing to check it against, nothing to evict
        try:
            st = parts[0].stat()
        except OSError as e:  # evicted by another process between the download and now
            raise MissingFileError(f"the cached file disappeared while loading ({e.strerror}): load again",
                                   path=f"hf://{src.repo_id}@{src.commit}/{name}") from None
        known = _read_marker(parts[2], st)
        plans.append((name, link, parts, st, known))
        blob_name = parts[0].name if parts[0].parent.name == "blobs" else ""
        if not (_HEX64.fullmatch(blob_name) or _HEX40.fullmatch(blob_name)) and not (known and known["checked"]):
            unnamed.append(name)
    remote = _remote_hashes(src, unnamed) if unnamed and not offline else {}
    for name, link, (blob, _storage, marker), st, known in plans:
        blob_name = blob.name if blob.parent.name == "blobs" else ""
        if _HEX64.fullmatch(blob_name):
            kind, expected, source = "sha256", blob_name, "its ETag, the LFS sha256"
        elif _HEX40.fullmatch(blob_name):
            kind, expected, source = "git-sha1", blob_name, "its ETag, the git blob sha1"
        elif name in remote:
            kind, expected = remote[name]
            source = "the repo tree"
        elif known is not None and known["checked"]:
            kind, expected, source = known["checked"].split(":", 1)[0], known["checked"].split(":", 1)[-1], ""
        else:
            kind, expected, source = "", "", ""
        checked = f"{kind}:{expected}" if expected else None
        if known is not None and (known["checked"] == checked or not expected):
            # checked before (or, with nothing to check against, hashed before) and unchanged since
            _record(src, name, link, known["sha256"])
            continue
        if known is not None and kind == "sha256":
            sha256, git = known["sha256"], None  # hashed before, not yet checked against this
        else:
            sha256, git = _hash_file(blob, git_sha1=kind == "git-sha1")
        actual = sha256 if kind == "sha256" else git
        if kind == "git-sha1" and actual != expected and _lfs_pointer_oid(sha256, st.st_size) == expected:
            actual = expected  # an LFS file named by its pointer's git oid: its sha256 is what the pointer says
        if expected and actual != expected:
            gone = _evict(link)
            where = "was removed from the local cache (blob and snapshot link), so the next load downloads it " \
                    "again" if gone else f"could not be removed from the cache: delete {blob}"
            raise IntegrityError(
                f"{src.repo_id}: {name}: the bytes in the local cache have {kind} {actual}, but the Hub says "
                f"{expected} ({source}); the file was not used and {where}",
                path=f"hf://{src.repo_id}@{src.commit}/{name}",
                field=kind)
        _write_marker(marker, st, sha256, checked)
        _record(src, name, link, sha256)


def _lfs_pointer_oid(sha256: str, size: int) -> str:
    """Git oid of the LFS pointer file of content with this sha256 and size: the ``ETag`` the Hub sends for an
    LFS file besides ``X-Linked-Etag``. A mirror or proxy that drops the ``X-Linked-*`` headers makes the client
    name the blob after it, and refusing a correct file there would refuse every LFS file, on every load."""
    pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()
    return hashlib.sha1(b"blob %d\0" % len(pointer) + pointer).hexdigest()


def _record(src: _Source, name: str, link: Path, sha256: str) -> None:
    src.fetched.append((name, link, sha256))
    src.files.append({"name": f"hf://{src.repo_id}@{src.commit}/{name}", "sha256": sha256})


def _evict_unparseable(src: _Source, err: CorruptFileError, root: Path) -> CorruptFileError:
    """A loader could not parse a file: if it came from the HF cache, evict it so the next load re-fetches it.

    Without this a damaged cached file (whose name, and maybe marker, look right) fails every load until
    ``force_download=True``. ``root`` is the folder the loader read, to map the error's path to a repo path.
    An error naming the folder rather than one file evicts every file this load took from the cache.
    """
    if not src.fetched or err.path is None:
        return err
    bad = Path(err.path)
    try:
        rel = bad.relative_to(root).as_posix()
    except ValueError:
        return err
    folder = "" if rel == "." else rel + "/"
    victims = [(n, link) for n, link, _ in src.fetched if n == rel] or [
        (n, link) for n, link, _ in src.fetched if n.startswith(folder)]
    if not victims:
        return err
    gone = [n for n, link in victims if _evict(link)]
    if not gone:
        return err
    note = (f"; {', '.join(gone)} {'was' if len(gone) == 1 else 'were'} evicted from the local Hub cache "
            f"(hf://{src.repo_id}), so the next online load downloads {'it' if len(gone) == 1 else 'them'} again")
    return CorruptFileError(err.message + note, path=err.path, field=err.field)


def _candidate_loaders(src: _Source, offline: bool) -> list[Loader]:
    """Loaders whose file patterns match what the repo has under the SAE path (one listing request)."""
    from sae_hub.loading import _LOADERS, _discover

    _discover()
    if offline:
        return list(_LOADERS.values())
    try:
        names = _hf_api().list_repo_files(src.repo_id, revision=src.revision)  # type: ignore[arg-type]
    except Exception as e:
        raise _wrap_hub_error(e, src, src.path or None, offline=False) from e
    prefix = "" if src.path in ("", ".") else src.path.rstrip("/") + "/"
    inside = [n[len(prefix):] for n in names if n.startswith(prefix)]
    if src.path and src.path in names:
        inside = [src.path.rsplit("/", 1)[-1]]
    hits = [ld for ld in _LOADERS.values() if ld.matching_files(inside)]
    if not hits:
        raise FormatDetectionError(
            f"no loader recognises the files under {src.path or '/'!r}: found {inside[:20]}; tried "
            f"{', '.join(sorted(_LOADERS))}", path=f"hf://{src.label}")
    return hits


def _local_target(src: _Source, offline: bool, force: bool) -> tuple[Path, str]:
    from sae_hub.loading import detect_format, get_loader

    if src.local_root is not None:
        target = src.local_root / src.path if src.path not in ("", ".") else src.local_root
        if not target.exists():
            raise MissingFileError("the release's local folder has no such SAE path", path=target)
        return target, src.format or detect_format(target)
    if src.format is not None:
        return _download(src, list(get_loader(src.format).files), offline=offline, force=force), src.format
    loaders = _candidate_loaders(src, offline)
    patterns = sorted({p for ld in loaders for p in ld.files}) if not offline else ["*", "*/*", "*/*/*"]
    target = _download(src, patterns, offline=offline, force=force)
    return target, detect_format(target)


def _verify_pin(src: _Source, target: Path, expected: str) -> None:
    """The registry's ``sha256`` pin (of the SAE's largest file, its weights) against the bytes we will load.

    For a Hub file the hash is the one :func:`_verify_fetched` already checked or computed (a cached load
    hashes nothing again); a mismatch evicts it like any other bad download. A local release folder is the
    user's own data: it is hashed, and never deleted. Config and text files are never the pinned file: when the
    weights are absent (offline after a refused download, a repo without them) there is nothing to compare, and
    the loader says which file is missing, rather than the pin blaming (and evicting) a good ``cfg.json``.
    """
    from sae_hub.files import sha256_file

    expected = expected.lower()
    if src.fetched:
        weights = [t for t in src.fetched if not t[0].lower().endswith(_TEXT_SUFFIXES)]
        if not weights:
            return
        name, link, actual = max(weights, key=lambda t: t[1].stat().st_size)
        if actual == expected:
            return
        gone = _evict(link)
        where = ("was removed from the local cache (blob and snapshot link), so the next load downloads it again"
                 if gone else "could not be removed from the cache")
        raise IntegrityError(f"{src.repo_id}: {name}: sha256 {actual} differs from the registry's pin {expected}; "
                             f"the file was not used and {where}", path=f"hf://{src.repo_id}@{src.commit}/{name}",
                             field="sha256")
    files = [target] if target.is_file() else [f for f in target.rglob("*") if f.is_file()]
    files = [f for f in files if not f.name.lower().endswith(_TEXT_SUFFIXES)]
    if not files:
        return
    local = max(files, key=lambda f: f.stat().st_size)
    actual = sha256_file(local)
    if actual != expected:
        raise IntegrityError(f"sha256 {actual} differs from the registry's pin {expected}; the file was not used "
                             f"(release {src.label})", path=local, field="sha256")


def _apply_registry(cfg: SAEConfig, src: _Source, tensors: Mapping[str, torch.Tensor] | None = None) -> None:
    rel, entry = src.release, src.entry
    if rel is None or entry is None:
        return
    cfg.model_name = cfg.model_name or rel.model
    if entry.hook:
        cfg.hook_name = entry.hook
    if entry.hook_out:
        cfg.hook_name_out = entry.hook_out
    if entry.neuronpedia:
        cfg.neuronpedia_id = entry.neuronpedia
    if rel.license and not cfg.license:
        cfg.license = rel.license
    if (entry.norm_scaling_factor is not None and cfg.normalize_activations == "expected_average_only_in"
            and cfg.norm_scaling_factor is None):
        cfg.norm_scaling_factor = entry.norm_scaling_factor
    for key in ("l0", "variance_explained"):
        value = getattr(entry, key)
        if value is not None:
            cfg.extra.setdefault(key, value)
    cfg.extra.setdefault("release", {"name": rel.name, "sae_id": entry.id})
    if entry.config:
        _apply_overrides(cfg, src, tensors)


def _apply_overrides(cfg: SAEConfig, src: _Source, tensors: Mapping[str, torch.Tensor] | None) -> None:
    """Apply a registry entry's ``config:`` overrides; an override that does not fit is the registry's error.

    The registry checks each override's type when it reads the YAML, but some values are only wrong for a
    particular SAE (``k`` above its ``d_sae``, a topk-only flag on a jumprelu SAE, a width its weights do not
    have). Those surface here, after the SAE's own files loaded fine, so the error must point at the YAML file
    and entry that set them, not at the downloaded config. A shape check against ``tensors`` runs only when the
    weights fitted before the overrides, so a bad checkpoint is never blamed on the registry.
    """
    import dataclasses

    rel, entry = src.release, src.entry
    assert rel is not None and entry is not None
    origin = getattr(entry, "origin", None) or f"{rel.name}/{entry.id}"
    where = f"release {rel.name!r}, SAE {entry.id!r}"
    shown = ", ".join(f"{k}={v!r}" for k, v in entry.config.items())
    fields = {f.name for f in dataclasses.fields(cfg)} - {"provenance", "extra"}
    for key in entry.config:
        if key not in fields:
            raise RegistryError(f"{where}: config override {key!r} is not an SAEConfig field", path=rel.source,
                                field=f"{origin}.config.{key}")
    fitted = tensors is not None and _shape_problem(cfg, tensors) is None
    for key, value in entry.config.items():
        setattr(cfg, key, value)
    try:
        cfg.__post_init__()
    except (ConfigError, TypeError, ValueError) as e:
        detail = e.message if isinstance(e, SaeHubError) else f"{type(e).__name__}: {e}"
        key = e.field if isinstance(e, SaeHubError) and e.field in entry.config else None
        raise RegistryError(
            f"{where}: config override {f'{key}={entry.config[key]!r}' if key else shown} does not fit this SAE: "
            f"{detail}", path=rel.source, field=f"{origin}.config" + (f".{key}" if key else "")) from e
    if fitted and tensors is not None and (problem := _shape_problem(cfg, tensors)) is not None:
        raise RegistryError(f"{where}: config override(s) {shown} do not fit this SAE's weights: {problem}",
                            path=rel.source, field=f"{origin}.config")


def _shape_problem(cfg: SAEConfig, tensors: Mapping[str, torch.Tensor]) -> str | None:
    """Why ``tensors`` cannot be this config's parameters (what ``SAE.from_state_dict`` would refuse), or None."""
    from sae_hub.sae import param_shapes

    expected = param_shapes(cfg)
    if set(expected) != set(tensors):
        return f"the config needs tensors {sorted(expected)}, the weights have {sorted(tensors)}"
    for key, shape in expected.items():
        if tuple(tensors[key].shape) != shape:
            return f"tensor {key} has shape {list(tensors[key].shape)}, the config needs {list(shape)}"
    return None


def load_config_and_tensors(release: str, sae_id: str, *, revision: str | None = None,
                            force_download: bool = False, local_files_only: bool | None = None,
                            format: str | None = None, options: dict[str, Any] | None = None,
                            ) -> tuple[SAEConfig, dict[str, torch.Tensor], str]:
    """Resolve, fetch and convert: the shared body of :func:`from_pretrained` and :func:`get_config`."""
    from sae_hub.loading import load_local

    src = _resolve(release, sae_id, revision, format)
    offline = _offline(local_files_only)
    target, fmt = _local_target(src, offline, force_download)
    if src.entry is not None and src.entry.sha256:
        _verify_pin(src, target, src.entry.sha256)
    with warnings.catch_warnings():
        if src.entry is not None and src.entry.norm_scaling_factor is not None:
            warnings.filterwarnings("ignore", message=".*norm_scaling_factor.*")
        try:
            cfg, tensors, where = load_local(target, format=fmt, options=options)
        except CorruptFileError as e:
            raise _evict_unparseable(src, e, _snapshot_root(target, src)) from e
    _apply_registry(cfg, src, tensors)
    if src.files:
        cfg.provenance.source_files = src.files
    return cfg, tensors, where


def from_pretrained(release: str, sae_id: str, *, device: str | torch.device = "cpu",
                    dtype: torch.dtype | str | None = None, revision: str | None = None,
                    force_download: bool = False, local_files_only: bool | None = None,
                    format: str | None = None, **options: Any) -> SAE:
    """Load SAE ``sae_id`` of ``release`` (a registry release name, or a Hub repo id ``org/name``).

    For a repo id, ``sae_id`` is the folder (or file) inside the repo and the format is detected unless
    ``format`` names a loader. ``options`` go to the loader. See :mod:`sae_hub.hub`.
    """
    from sae_hub.sae import SAE

    cfg, tensors, where = load_config_and_tensors(
        release, sae_id, revision=revision, force_download=force_download, local_files_only=local_files_only,
        format=format, options=options)
    return SAE.from_state_dict(cfg, tensors, device=device, dtype=dtype, source=where)


def get_config(release: str, sae_id: str, *, revision: str | None = None, local_files_only: bool | None = None,
               format: str | None = None, **options: Any) -> SAEConfig:
    """The config of an SAE, fetching only what the format needs for it.

    For formats whose loader can read the config alone (``config_files``), only those files are fetched. For
    formats whose weights are safetensors, only their headers and small tensors are read (byte ranges) and
    the loader builds the config from them. Otherwise (``.npz``/``.pt`` weights, or offline) the weights are
    fetched (memory-mapped, not read) and their shapes fill the config.
    """
    from sae_hub.loading import get_loader, load_local, load_local_config

    src = _resolve(release, sae_id, revision, format)
    offline = _offline(local_files_only)
    fmt = src.format
    if fmt is not None and get_loader(fmt).config_files:
        loader = get_loader(fmt)
        if src.local_root is not None:
            target = src.local_root / src.path if src.path not in ("", ".") else src.local_root
        else:
            target = _download(src, list(loader.config_files), offline=offline, force=False)
        try:
            cfg = load_local_config(target, format=fmt, options=options)
        except CorruptFileError as e:
            raise _evict_unparseable(src, e, _snapshot_root(target, src)) from e
    elif (fmt is not None and src.repo_id is not None and not offline
          and (stub := _header_stub(src, get_loader(fmt))) is not None):
        with stub as folder:
            try:
                cfg, _, _ = load_local(Path(folder) / src.path if src.path not in ("", ".") else Path(folder),
                                       format=fmt, options=options)
            except CorruptFileError as e:
                raise _evict_unparseable(src, e, Path(folder)) from e
    else:
        target, fmt = _local_target(src, offline, False)
        try:
            cfg, _, _ = load_local(target, format=fmt, options=options)
        except CorruptFileError as e:
            raise _evict_unparseable(src, e, _snapshot_root(target, src)) from e
    _apply_registry(cfg, src)
    if src.files:
        cfg.provenance.source_files = src.files
    return cfg


def _snapshot_root(target: Path, src: _Source) -> Path:
    """The snapshot folder a downloaded ``target`` (``<snapshot>/<src.path>``) lives in."""
    return target.parents[len(Path(src.path).parts) - 1] if src.path not in ("", ".") else target


def fetch_hub_file(repo_id: str, filename: str, *, repo_type: str | None = None,
                   revision: str | None = None) -> Path:
    """One file that is not part of an SAE (an ``hf://`` registry YAML) through the HF cache, checked like one.

    A bare ``hf_hub_download`` says "cannot find the requested files" both when the Hub did not answer and when
    nothing is cached offline, and never compares the bytes with the ETag. Here a dead Hub or a persistent 5xx
    is a :class:`DownloadError` naming the cause, a file or repo the Hub does not have (or offline, not cached)
    a :class:`MissingFileError`, and bytes that are not what the Hub's hash says an :class:`IntegrityError`
    (the copy is evicted, so the next call downloads it again).
    """
    from huggingface_hub import hf_hub_download

    offline = _offline(None)
    src = _Source(repo_id=repo_id, local_root=None, path=filename, format=None, revision=revision,
                  repo_type=repo_type)
    try:
        got = Path(hf_hub_download(repo_id, filename, repo_type=repo_type, revision=revision, **_library()))
    except Exception as e:
        raise _wrap_hub_error(e, src, filename, offline=offline) from e
    src.commit = got.parents[len(Path(filename).parts) - 1].name
    _verify_fetched(src, [(filename, got)], offline=offline)
    return got


_SMALL_TENSOR = 1 << 16  # bytes: tensors up to this size (scalars, norms) are fetched for real


def _header_stub(src: _Source, loader: Loader) -> tempfile.TemporaryDirectory[str] | None:
    """A local stand-in of an SAE folder whose safetensors files hold only the real header and small tensors.

    Config files are fetched normally; each ``.safetensors`` file is read remotely by byte ranges
    (``HfFileSystem``): its header (shapes, dtypes) and tensors under 64 KiB (norm constants and the like), and
    written as a sparse file of the right size with zeros elsewhere. The loader then builds the config from it
    without the weights being downloaded. Returns None when the format's files are not all of that kind (e.g.
    ``.npz``/``.pt`` weights), so the caller falls back to a full fetch.
    """
    import struct

    from huggingface_hub import HfFileSystem, hf_hub_download

    assert src.repo_id is not None
    prefix = "" if src.path in ("", ".") else src.path.rstrip("/") + "/"
    try:
        listing = _hf_api().list_repo_files(src.repo_id, revision=src.revision)
    except Exception as e:
        raise _wrap_hub_error(e, src, src.path or None, offline=False) from e
    names = [n for n in listing if n.startswith(prefix) and loader.matching_files([n[len(prefix):]])]
    if not names or any(not n.endswith((".safetensors", ".json", ".yaml", ".yml", ".txt")) for n in names):
        return None
    tmp = tempfile.TemporaryDirectory(prefix="sae-hub-config-")
    fs = HfFileSystem(skip_instance_cache=True)
    # HfFileSystem takes no library_name; its requests (repo info, range reads) are built by its own HfApi. This
    # instance is fresh (skip_instance_cache), so setting them there touches no filesystem anyone else holds.
    for key, value in _library().items():
        setattr(fs._api, key, value)
    name = names[0]
    try:
        for name in names:
            dest = Path(tmp.name) / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            if not name.endswith(".safetensors"):
                got = Path(hf_hub_download(src.repo_id, name, revision=src.revision, **_library()))
                src.commit = got.parents[len(Path(name).parts) - 1].name
                _verify_fetched(src, [(name, got)], offline=False)  # a config file is checked like any other
                dest.write_bytes(got.read_bytes())
                continue
            with fs.open(f"{src.repo_id}/{name}", "rb", revision=src.revision, block_size=1 << 16) as f:
                size = f.size
                n, raw, header = _remote_safetensors_header(f, size, f"hf://{src.repo_id}/{name}")
                small = []
                for key, info in header.items():
                    if key == "__metadata__":
                        continue
                    begin, end = info["data_offsets"]
                    if end - begin <= _SMALL_TENSOR:
                        f.seek(8 + n + begin)
                        small.append((8 + n + begin, f.read(end - begin)))
            with open(dest, "wb") as out:
                out.write(struct.pack("<Q", n) + raw)
                for offset, data in small:
                    out.seek(offset)
                    out.write(data)
                out.truncate(size)
    except SaeHubError:
        tmp.cleanup()
        raise
    except Exception as e:
        tmp.cleanup()
        raise _wrap_hub_error(e, src, name, offline=False) from e
    for name in names:
        if name.endswith(".safetensors"):  # header only: no hash of the whole file was computed
            src.files.append({"name": f"hf://{src.repo_id}@{src.revision or 'main'}/{name}"})
    return tmp


_MAX_HEADER = 100 << 20  # bytes: safetensors itself refuses larger headers


def _remote_safetensors_header(f: Any, size: int, where: str) -> tuple[int, bytes, dict[str, Any]]:
    """Read and check a remote safetensors header: a damaged file is a :class:`CorruptFileError` (never a
    "download failed"), and a header length field that is garbage never makes us request gigabytes."""
    import struct

    first = f.read(8)
    if len(first) < 8:
        raise CorruptFileError(f"not a safetensors file: only {size} bytes", path=where)
    (n,) = struct.unpack("<Q", first)
    if n > min(size - 8, _MAX_HEADER):
        raise CorruptFileError(f"not a safetensors file or truncated: header claims {n} bytes, file has {size}",
                               path=where)
    raw = f.read(n)
    try:
        header = json.loads(raw)
        ok = isinstance(header, dict) and all(
            k == "__metadata__" or (isinstance(v, dict) and len(v.get("data_offsets", ())) == 2
                                    and all(isinstance(o, int) and 0 <= o <= size for o in v["data_offsets"]))
            for k, v in header.items())
    except ValueError as e:
        raise CorruptFileError(f"safetensors header is not valid JSON: {e}", path=where) from None
    if not ok:
        raise CorruptFileError("malformed tensor entry in safetensors header", path=where)
    return n, raw, header


_HUB_MODEL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]+")
_CARD_START = "<!-- sae-hub: the SAEs in this repo; push_to_hub rewrites this section, edit outside it -->"
_CARD_END = "<!-- /sae-hub -->"
_MAX_CARD_BYTES = 16 << 20  # a model card larger than this is not one; never read it into memory
_NATIVE_LAYOUT = ("Saved in the SAELens 6 layout (`cfg.json` + `sae_weights.safetensors`): it also loads with "
                  "`sae_lens.SAE.load_from_disk`.")


def _one_line(value: object) -> str:
    """``value`` on one Markdown line: line breaks and other control characters become a space (a newline in a
    hook name would otherwise end a heading or a table row)."""
    return _CONTROL.sub(" ", str(value)).strip()


def _code(value: object, *, cell: bool = False) -> str:
    """``value`` as an inline code span that shows it verbatim (a name may hold ``*``, ``#``, ``_``...), fenced by
    more backticks than it contains. In a table cell its ``|`` are escaped: GFM splits cells before code spans."""
    text = _one_line(value)
    if not text:
        return "—"
    fence = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    span = f"{fence}{pad}{text}{pad}{fence}"
    return span.replace("|", "\\|") if cell else span


def _cell(value: object) -> str:
    """A plain table cell: one line, ``|`` escaped."""
    return _one_line(value).replace("|", "\\|")


def _python_block(code: str) -> str:
    """A fenced python block whose fence is longer than any backtick run in ``code`` (a repr can hold some)."""
    fence = "`" * max(3, max((len(run) for run in re.findall(r"`+", code)), default=0) + 1)
    return f"{fence}python\n{code}\n{fence}"


def _usage(repo_id: str, path: str) -> str:
    return _python_block(f"from sae_hub import SAE\n\nsae = SAE.from_pretrained({repo_id!r}, {path!r})")


def _sae_tags(cfg: SAEConfig) -> list[str]:
    tags = ["sae-hub", "sparse-autoencoder", f"sae-{cfg.architecture}"]
    if cfg.is_transcoder:
        tags.append("transcoder")
    return tags


def _base_model(cfg: SAEConfig) -> str | None:
    """The model name as ``base_model`` only when it is a namespaced Hub model id (``org/name``): the Hub links
    and validates that field, and TransformerLens names (``gpt2-small``) or free text are not repos."""
    name = cfg.model_name
    if name and _HUB_MODEL_ID.fullmatch(name) and ".." not in name and "--" not in name:
        return name
    return None


def _card_data(cfg: SAEConfig) -> ModelCardData:
    """The card's front matter, built by huggingface_hub (which quotes whatever YAML needs quoted)."""
    from huggingface_hub import ModelCardData

    return ModelCardData(library_name="sae-hub", tags=_sae_tags(cfg), base_model=_base_model(cfg),
                         license=cfg.license or None)


def model_card(sae: SAE, repo_id: str, path_in_repo: str | None = None) -> str:
    """README.md for one uploaded SAE: front matter (``library_name: sae-hub``, tags, ``base_model``, license),
    what it is, a table of facts, training metrics if any, and the ``from_pretrained`` call that loads it.

    Built with ``huggingface_hub.ModelCard``/``ModelCardData`` rather than joined strings: the front matter is YAML
    the Hub parses for the model page, and a model named ``my-org/model: v2`` written as-is made it invalid (the
    page then has no metadata at all). Names shown in the Markdown are put on one line and in code spans, so a
    hook name holding a newline, ``|``, ``#`` or backticks cannot break the heading or the table.
    """
    from huggingface_hub import ModelCard

    c = sae.cfg
    model = _code(c.model_name) if c.model_name else "a model"
    hook = _code(c.hook_name) if c.hook_name else "an unnamed hook"
    kind = "transcoder" if c.is_transcoder else "sparse autoencoder (SAE)"
    lines = [f"# {c.architecture} SAE on {model} at {hook}", "",
             f"A {c.architecture} {kind} on the activations of {model} at {hook}"
             + (f", predicting {_code(c.hook_name_out)}" if c.is_transcoder and c.hook_name_out else "")
             + f": {c.d_in} inputs, {c.d_sae} features. Uploaded with sae-hub.", "",
             "| field | value |", "|---|---|"]
    rows: dict[str, object] = {
        "architecture": c.architecture, "d_in": c.d_in, "d_sae": c.d_sae, "k": c.k,
        "model": _code(c.model_name, cell=True) if c.model_name else None,
        "hook": _code(c.hook_name, cell=True) if c.hook_name else None,
        "hook (output)": _code(c.hook_name_out, cell=True) if c.is_transcoder and c.hook_name_out else None,
        "dtype": _cell(c.dtype), "context size": c.context_size,
        "dataset": _code(c.dataset_path, cell=True) if c.dataset_path else None}
    lines += [f"| {key} | {value} |" for key, value in rows.items() if value is not None]
    metrics = c.extra.get("metrics")
    if isinstance(metrics, dict) and metrics:
        lines += ["", "## Training metrics", "", "| metric | value |", "|---|---|"]
        lines += [f"| {_cell(k)} | {v:.4g} |" if isinstance(v, float) else f"| {_cell(k)} | {_cell(v)} |"
                  for k, v in metrics.items()]
    lines += ["", "## Usage", "", _usage(repo_id, path_in_repo.strip("/") if path_in_repo else "."), "",
              _NATIVE_LAYOUT, ""]
    return str(ModelCard(f"---\n{_card_data(c).to_yaml()}\n---\n\n" + "\n".join(lines)))


def _listing_row(sae: SAE, path: str) -> str:
    c = sae.cfg
    return (f"| {_code(path, cell=True)} | {c.architecture} | {c.d_in} → {c.d_sae} | "
            f"{_code(c.hook_name or '', cell=True)} | {_code(c.model_name or '', cell=True)} |")


def _listing(rows: list[str], repo_id: str, path: str) -> str:
    """The section of the root card that sae-hub owns: one table row per SAE folder, and how to load one."""
    return "\n".join([
        _CARD_START, "## SAEs in this repository", "",
        "| path | architecture | d_in → d_sae | hook | model |", "|---|---|---|---|---|", *rows, "",
        "Load one by its path:", "", _usage(repo_id, path), "", _NATIVE_LAYOUT, _CARD_END])


def root_card(existing: str | None, sae: SAE, repo_id: str, path_in_repo: str, *,
              where: str = "README.md") -> str:
    """The repo's root README.md after uploading ``sae`` to ``path_in_repo`` (the many-SAEs-per-repo layout).

    With no card yet, a new one lists this SAE. With one, everything its owner wrote is kept: the front matter
    gains our tags (a union; ``library_name``, ``base_model`` and ``license`` are filled only where empty, as they
    are the owner's call) and the section between sae-hub's markers gets this SAE's row (replacing the row of the
    same path, so a re-upload is not listed twice); a card without that section gets it appended. A card whose
    front matter is not valid YAML is a :class:`CorruptFileError` (``where``, field ``front matter``) rather than
    being overwritten: it is someone's text.
    """
    from huggingface_hub import ModelCard

    path = path_in_repo.strip("/")
    row = _listing_row(sae, path)
    key = row.split(" | ", 1)[0] + " |"
    if existing is None:
        name = _one_line(repo_id.rsplit("/", 1)[-1])
        card = ModelCard(f"---\n{_card_data(sae.cfg).to_yaml()}\n---\n\n# {name}\n\nSparse autoencoders (SAEs) "
                         "uploaded with sae-hub, one folder each.\n\n")
    else:
        try:
            card = ModelCard(existing)
        except Exception as e:  # yaml.YAMLError, or ValueError for metadata that is not a mapping
            raise CorruptFileError(f"the repo's model card cannot be merged: its front matter is not valid card "
                                   f"metadata ({type(e).__name__}: {_one_line(e)}); fix or remove it, nothing was "
                                   "uploaded", path=where, field="front matter") from None
        data = card.data
        tags = data.tags if isinstance(data.tags, list) else [data.tags] if data.tags else []
        data.tags = list(dict.fromkeys([*(str(t) for t in tags), *_sae_tags(sae.cfg)]))
        data.library_name = data.library_name or "sae-hub"
        data.base_model = data.base_model or _base_model(sae.cfg)
        data.license = data.license or sae.cfg.license or None
    newline = "\r\n" if "\r\n" in card.text else "\n"
    text = card.text.replace("\r\n", "\n")
    start = text.find(_CARD_START)
    end = text.find(_CARD_END, start) if start >= 0 else -1
    rows: list[str] = []
    if end >= 0:
        block = text[start:end].split("\n")
        if (sep := next((i for i, line in enumerate(block) if line.startswith("|---")), None)) is not None:
            for line in block[sep + 1:]:
                if not line.startswith("|"):
                    break
                rows.append(line)
        before, after = text[:start], text[end + len(_CARD_END):]
    else:
        before, after = text.rstrip("\n") + "\n\n", "\n"
    same = [i for i, line in enumerate(rows) if line.startswith(key)]
    if same:
        rows[same[0]] = row
        rows = [line for i, line in enumerate(rows) if i not in same[1:]]
    else:
        rows.append(row)
    card.text = (before + _listing(rows, repo_id, path) + after).replace("\n", newline)
    return str(card)


def _read_card(api: HfApi, repo_id: str, commit: str) -> str | None:
    """The repo's README.md at ``commit`` as text, or None if it has none."""
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    where = f"hf://{repo_id}/README.md"
    try:
        path = Path(api.hf_hub_download(repo_id, "README.md", revision=commit))
    except EntryNotFoundError as e:
        if not isinstance(e, LocalEntryNotFoundError):
            return None
        raise DownloadError(f"could not read the repo's model card to add this SAE to it: {_cause(e)}",
                            path=where) from e
    except Exception as e:
        raise DownloadError(f"could not read the repo's model card to add this SAE to it: {_cause(e)}",
                            path=where) from e
    if path.stat().st_size > _MAX_CARD_BYTES:
        raise CorruptFileError(f"the repo's model card is {path.stat().st_size} bytes, over the "
                               f"{_MAX_CARD_BYTES >> 20} MiB a card can be; nothing was uploaded", path=where)
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise CorruptFileError(f"the repo's model card is not UTF-8 ({e.reason} at byte {e.start}); nothing was "
                               "uploaded", path=where, field="encoding") from None


def push_to_hub(sae: SAE, repo_id: str, path_in_repo: str | None = None, *, revision: str | None = None,
                private: bool | None = None, commit_message: str | None = None, token: str | None = None,
                sparsity: torch.Tensor | None = None) -> str:
    """Upload ``sae`` in the native format plus a model card, in one commit; returns the commit URL.

    Without ``path_in_repo`` the SAE is the repo and README.md is its card (:func:`model_card`). With it (many
    SAEs per repo) the root README.md is written or merged (:func:`root_card`) so the repo page lists every SAE
    pushed there. The merge reads the card at the branch head and commits on top of that exact commit, so an
    upload that lands in between is never overwritten: this one fails and can simply be repeated.
    """
    from huggingface_hub import CommitOperationAdd
    from huggingface_hub.errors import HfHubHTTPError

    api = _hf_api(token)
    prefix = (path_in_repo or "").strip("/")
    prefix = "" if prefix == "." else prefix  # "." is the root, as in the usage line of a root SAE's card
    parent: str | None = None
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        existing = None
        if prefix:
            parent = api.repo_info(repo_id, revision=revision).sha
            existing = _read_card(api, repo_id, parent) if parent else None
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            sae.save_pretrained(folder, sparsity=sparsity)
            card = (root_card(existing, sae, repo_id, prefix, where=f"hf://{repo_id}/README.md") if prefix
                    else model_card(sae, repo_id))
            ops = [CommitOperationAdd(path_in_repo=_join(prefix, f.relative_to(folder).as_posix()),
                                      path_or_fileobj=os.fspath(f))
                   for f in sorted(folder.rglob("*")) if f.is_file()]
            ops.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=card.encode("utf-8")))
            info = api.create_commit(repo_id, operations=ops, revision=revision, parent_commit=parent,
                                     commit_message=commit_message or f"Upload {sae.cfg.architecture} SAE with sae-hub")
    except SaeHubError:
        raise
    except HfHubHTTPError as e:
        if parent is not None and getattr(e.response, "status_code", None) == 412:
            raise DownloadError("upload refused: the repo changed while its model card was being merged (another "
                                "upload?); nothing was written, push again", path=f"hf://{repo_id}") from e
        raise DownloadError(f"upload failed: {type(e).__name__}: {e}", path=f"hf://{repo_id}") from e
    except Exception as e:
        raise DownloadError(f"upload failed: {type(e).__name__}: {e}", path=f"hf://{repo_id}") from e
    return str(getattr(info, "commit_url", info))
