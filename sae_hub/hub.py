"""The one place that talks to the Hugging Face Hub: fetching an SAE's files (:func:`fetch`), one other file
(:func:`fetch_hub_file`), and uploading a saved folder with its model card (:func:`push_folder`).

The hub returns files; the SAE builds itself. Like ``huggingface_hub``'s ``ModelHubMixin``, the model class owns
``from_pretrained``/``push_to_hub`` and this module never needs the model: ``SAE.from_pretrained`` is
:func:`sae_hub.releases.locate` (where, before any I/O) -> :func:`fetch` (download and verify) ->
:func:`sae_hub.loading.load_local` -> ``SAE.from_state_dict``, the same tail as ``SAE.load_from_disk``;
``SAE.push_to_hub`` saves into a temporary folder and hands it to :func:`push_folder`.

Every byte goes through ``huggingface_hub`` (its cache, revisions, ``HF_ENDPOINT`` mirrors, ``HF_HUB_OFFLINE``,
progress bars and tokens); there is no hand-written HTTP. Only the files the format needs are fetched: a
release names its format, so its loader's file patterns decide what is downloaded; a bare repo id is listed
once, only the files some format could read are fetched, and the format is detected once, on those files.
With ``local_files_only=True`` or ``HF_HUB_OFFLINE=1`` a cached load makes no HTTP request at all.

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
import dataclasses
import fnmatch
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict, cast

from sae_hub.errors import (
    CorruptFileError,
    DownloadError,
    FormatDetectionError,
    IntegrityError,
    MissingFileError,
    SaeHubError,
)

if TYPE_CHECKING:
    from typing import Protocol

    import torch
    from huggingface_hub import HfApi, ModelCardData

    from sae_hub.config import SAEConfig
    from sae_hub.loading import Facts, Loader
    from sae_hub.releases import Source

    class HasConfig(Protocol):
        """An SAE, as the card functions see it."""

        cfg: SAEConfig

__all__ = ["Fetched", "fetch", "fetch_hub_file", "load_located", "model_card", "push_folder", "root_card"]

_GLOB = re.compile(r"[*?\[]")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX40 = re.compile(r"[0-9a-f]{40}")
_TEXT_SUFFIXES = (".json", ".yaml", ".yml", ".txt", ".md")  # config/docs: never the weights a release pins
_MARKERS = ".sae_hub_verified"  # inside a cached repo folder, beside blobs/ (huggingface_hub's scans ignore it)


@dataclass
class Fetched:
    """What :func:`fetch` got: the SAE's local file or folder (``path``) and format, and the record of every
    file taken from the HF cache, which the context evicts if the loader finds one unreadable.

    ``files`` becomes the config's provenance (``hf://repo@commit/name`` and the sha256 verified or computed);
    ``config_only`` says ``path`` holds only the format's config files (read it with
    :func:`sae_hub.loading.load_local_config`).
    """

    repo_id: str | None
    revision: str | None = None
    repo_type: str | None = None  # None: a model repo (SAEs); "dataset" etc. only for fetch_hub_file
    label: str = ""
    path: Path = field(default_factory=Path)
    format: str = ""
    config_only: bool = False
    commit: str | None = None
    files: list[dict[str, str]] = field(default_factory=list)
    #: Files this fetch took from the HF cache: (path in the repo, snapshot path, sha256 checked or computed).
    fetched: list[tuple[str, Path, str]] = field(default_factory=list)
    #: The folder the loader reads that ``fetched`` names are relative to (a snapshot, or a header stub).
    root: Path | None = None


def _offline(local_files_only: bool | None) -> bool:
    if local_files_only is not None:
        return local_files_only
    import huggingface_hub.constants as c

    return bool(c.HF_HUB_OFFLINE)


class _Library(TypedDict):
    """The keyword arguments :func:`_library` returns (a TypedDict so that ``**_library()`` type-checks against
    huggingface_hub's overloads)."""

    library_name: str
    library_version: str


def _library() -> _Library:
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


def _wrap_hub_error(e: Exception, src: Fetched, filename: str | None = None, *, offline: bool) -> SaeHubError:
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


def _download(src: Source, got: Fetched, patterns: list[str], *, offline: bool, force: bool) -> Path:
    """Fetch the files of ``src`` matching ``patterns`` (relative to the SAE folder); return the SAE's local path.

    Literal names are fetched one ``hf_hub_download`` each (a file the repo does not have is fine: the loader
    says which one it needed); glob patterns need the repo listing, which ``snapshot_download`` gets once.
    Offline, both read only the cache. Every file is then checked (:func:`_verify_fetched`) and recorded in
    ``got``.
    """
    from huggingface_hub import hf_hub_download, snapshot_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    assert src.repo_id is not None
    single_file = not src.is_root and any(fnmatch.fnmatchcase(src.path.rsplit("/", 1)[-1], p) for p in patterns)
    wanted = [src.path] if single_file else [src.join(p) for p in patterns]
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
                    downloaded = Path(hf_hub_download(src.repo_id, name, revision=src.revision,
                                                      local_files_only=offline, force_download=force, **_library()))
                except LocalEntryNotFoundError as e:
                    if offline:
                        continue  # not cached: if the loader needs it, it says which file is missing
                    raise _wrap_hub_error(e, got, name, offline=offline) from e  # the Hub did not answer
                except EntryNotFoundError:
                    continue  # the Hub says this repo has no such file (an optional one)
                except Exception as e:
                    raise _wrap_hub_error(e, got, name, offline=offline) from e
                local_root = downloaded.parents[len(Path(name).parts) - 1]
                if downloaded.is_dir():  # offline, a "*" pattern made the SAE folder look like a file: take its files
                    fetched += [(f.relative_to(local_root).as_posix(), f) for f in sorted(downloaded.rglob("*"))
                                if f.is_file()]
                else:
                    fetched.append((name, downloaded))
    except SaeHubError:
        raise
    except Exception as e:
        raise _wrap_hub_error(e, got, src.path or None, offline=offline) from e
    if local_root is None:
        if offline:
            raise MissingFileError(f"no file of {src.label} is in the local cache (offline mode): load it once "
                                   "with network access, or unset HF_HUB_OFFLINE / local_files_only",
                                   path=f"hf://{src.label}")
        raise MissingFileError(f"none of the files this format needs ({', '.join(patterns)}) exist here",
                               path=f"hf://{src.label}")
    target = src.under(local_root)
    if not target.exists():
        raise MissingFileError(f"repo has no file or folder {src.path!r} for this format", path=f"hf://{src.label}")
    got.commit = local_root.name if local_root.parent.name == "snapshots" else src.revision
    got.root = local_root
    _verify_fetched(got, fetched, offline=offline)
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


def _remote_hashes(src: Fetched, names: list[str]) -> dict[str, tuple[str, str]]:
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
        elif blob_id := getattr(info, "blob_id", None):  # a RepoFolder has none
            out[info.path] = ("git-sha1", str(blob_id).lower())
    return out


def _verify_fetched(src: Fetched, fetched: list[tuple[str, Path]], *, offline: bool) -> None:
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


def _record(src: Fetched, name: str, link: Path, sha256: str) -> None:
    src.fetched.append((name, link, sha256))
    src.files.append({"name": f"hf://{src.repo_id}@{src.commit}/{name}", "sha256": sha256})


def _evict_unparseable(got: Fetched, err: CorruptFileError) -> CorruptFileError:
    """A loader could not parse a file: if it came from the HF cache, evict it so the next load re-fetches it.

    Without this a damaged cached file (whose name, and maybe marker, look right) fails every load until
    ``force_download=True``. ``got.root`` is the folder the loader read, to map the error's path to a repo
    path. An error naming the folder rather than one file evicts every file this load took from the cache.
    """
    if not got.fetched or err.path is None or got.root is None:
        return err
    bad = Path(err.path)
    try:
        rel = bad.relative_to(got.root).as_posix()
    except ValueError:
        return err
    folder = "" if rel == "." else rel + "/"
    victims = [(n, link) for n, link, _ in got.fetched if n == rel] or [
        (n, link) for n, link, _ in got.fetched if n.startswith(folder)]
    if not victims:
        return err
    gone = [n for n, link in victims if _evict(link)]
    if not gone:
        return err
    note = (f"; {', '.join(gone)} {'was' if len(gone) == 1 else 'were'} evicted from the local Hub cache "
            f"(hf://{got.repo_id}), so the next online load downloads {'it' if len(gone) == 1 else 'them'} again")
    return CorruptFileError(err.message + note, path=err.path, field=err.field)


def _candidate_loaders(src: Source, got: Fetched) -> list[Loader]:
    """Loaders whose file patterns match what the repo has under the SAE path (one listing request): the files
    worth fetching. Which of them it is, detection decides once, on the fetched files."""
    from sae_hub.loading import candidate_loaders, loaders

    try:
        names = _hf_api().list_repo_files(src.repo_id, revision=src.revision)  # type: ignore[arg-type]
    except Exception as e:
        raise _wrap_hub_error(e, got, src.path or None, offline=False) from e
    prefix = src.join("")
    inside = [n[len(prefix):] for n in names if n.startswith(prefix)]
    if not src.is_root and src.path in names:
        inside = [src.path.rsplit("/", 1)[-1]]
    hits = candidate_loaders(inside)
    if not hits:
        raise FormatDetectionError(
            f"no loader recognises the files under {src.path or '/'!r}: found {inside[:20]}; tried "
            f"{', '.join(sorted(loaders()))}", path=f"hf://{src.label}")
    return hits


def _verify_pin(got: Fetched, target: Path, expected: str, label: str) -> None:
    """The release table's ``sha256`` pin (of the SAE's largest file, its weights) against the bytes we will load.

    For a Hub file the hash is the one :func:`_verify_fetched` already checked or computed (a cached load
    hashes nothing again); a mismatch evicts it like any other bad download. A local release folder is the
    user's own data: it is hashed, and never deleted. Config and text files are never the pinned file: when the
    weights are absent (offline after a refused download, a repo without them) there is nothing to compare, and
    the loader says which file is missing, rather than the pin blaming (and evicting) a good ``cfg.json``.
    """
    from sae_hub.files import sha256_file

    expected = expected.lower()
    if got.fetched:
        weights = [t for t in got.fetched if not t[0].lower().endswith(_TEXT_SUFFIXES)]
        if not weights:
            return
        name, link, actual = max(weights, key=lambda t: t[1].stat().st_size)
        if actual == expected:
            return
        gone = _evict(link)
        where = ("was removed from the local cache (blob and snapshot link), so the next load downloads it again"
                 if gone else "could not be removed from the cache")
        raise IntegrityError(f"{got.repo_id}: {name}: sha256 {actual} differs from the release table's pin "
                             f"{expected}; the file was not used and {where}",
                             path=f"hf://{got.repo_id}@{got.commit}/{name}", field="sha256")
    files = [target] if target.is_file() else [f for f in target.rglob("*") if f.is_file()]
    files = [f for f in files if not f.name.lower().endswith(_TEXT_SUFFIXES)]
    if not files:
        return
    local = max(files, key=lambda f: f.stat().st_size)
    actual = sha256_file(local)
    if actual != expected:
        raise IntegrityError(f"sha256 {actual} differs from the release table's pin {expected}; the file was not "
                             f"used (release {label})", path=local, field="sha256")


@contextlib.contextmanager
def fetch(src: Source, *, offline: bool | None = None, force: bool = False, config: bool = False,
          ) -> Iterator[Fetched]:
    """The local files of ``src``, downloaded and verified: ``with fetch(src) as got: load_local(got.path, ...)``.

    Downloads only what the format needs (a bare repo: what the listing says some format could read, then the
    format is detected once, among those formats, on the fetched files), checks every cached byte against the
    Hub's hash and the release table's ``sha256`` pin. With ``config=True`` it fetches the least that yields
    the config: the format's config files (``got.config_only``), else the safetensors headers and small tensors
    by byte range (a temporary stand-in folder, removed on exit), else everything. ``offline`` None follows
    ``HF_HUB_OFFLINE``.

    A :class:`CorruptFileError` raised inside the block (a loader could not parse a file) evicts the files it
    names from the HF cache, so the next online load downloads them again; the error says so.
    """
    from sae_hub.loading import detect_format, get_loader

    offline = _offline(offline)
    got = Fetched(repo_id=src.repo_id, revision=src.revision, label=src.label)
    loader = get_loader(src.format) if src.format is not None else None
    stub: tempfile.TemporaryDirectory[str] | None = None
    try:
        if src.local_root is not None:
            got.path = src.local_root if src.files is not None else src.under(src.local_root)
            if not got.path.exists():
                raise MissingFileError("the release's local folder has no such SAE path", path=got.path)
            got.config_only = config and loader is not None and bool(loader.config_files)
            got.format = src.format or detect_format(got.path)
        elif loader is not None and src.files is not None:
            # the release table lists this SAE's files (one layer of a per-layer file set): fetch those alone
            got.format = loader.name
            root = _download(dataclasses.replace(src, path=""), got, list(src.files), offline=offline, force=force)
            # the SAE is its path when that is one of the files (a weights file with a config beside it), else
            # the root holding them (a layer number: the loader picks the layer from its options)
            got.path = root / src.path if src.path in src.files else root
        elif loader is not None:
            got.format = loader.name
            if config and loader.config_files:
                got.config_only = True
                got.path = _download(src, got, list(loader.config_files), offline=offline, force=force)
            elif config and not offline and (stub := _header_stub(src, got, loader)) is not None:
                got.root = Path(stub.name)
                got.path = src.under(got.root)
            else:
                got.path = _download(src, got, list(loader.files), offline=offline, force=force)
        else:
            candidates = None if offline else _candidate_loaders(src, got)
            patterns = sorted({p for ld in candidates for p in ld.files}) if candidates else ["*", "*/*", "*/*/*"]
            got.path = _download(src, got, patterns, offline=offline, force=force)
            got.format = detect_format(got.path, among=[ld.name for ld in candidates] if candidates else None)
        if src.sha256 and not config:
            _verify_pin(got, got.path, src.sha256, src.label)
        try:
            yield got
        except CorruptFileError as e:
            evicted = _evict_unparseable(got, e)
            if evicted is e:
                raise
            raise evicted from e
    finally:
        if stub is not None:
            stub.cleanup()


def load_located(src: Source, *, kind: str, options: dict[str, Any] | None = None, offline: bool | None = None,
                 force: bool = False, facts: Facts | None = None) -> tuple[Any, dict[str, torch.Tensor], str]:
    """``(config, canonical tensors, source)`` of a located release, for the class building ``kind``: a release
    of another kind is refused before any request (naming the call to use), then :func:`fetch` (verified files;
    a corrupt cached file met while loading is evicted) and :func:`sae_hub.loading.load_local` with the
    release's loader options under ``options``. Every ``from_pretrained`` (SAE, multi-layer, crosscoder,
    temporal) is ``locate`` + this + its own ``from_state_dict``."""
    from sae_hub.loading import check_release_kind, load_local

    check_release_kind(src, kind)
    with fetch(src, offline=offline, force=force) as got:
        return load_local(got.path, format=got.format, options={**src.options, **(options or {})}, facts=facts,
                          files=got.files, kind=kind)


def fetch_hub_file(repo_id: str, filename: str, *, repo_type: str | None = None,
                   revision: str | None = None) -> Path:
    """One file that is not part of an SAE (an ``hf://`` release-table YAML) through the HF cache, checked like
    one.

    A bare ``hf_hub_download`` says "cannot find the requested files" both when the Hub did not answer and when
    nothing is cached offline, and never compares the bytes with the ETag. Here a dead Hub or a persistent 5xx
    is a :class:`DownloadError` naming the cause, a file or repo the Hub does not have (or offline, not cached)
    a :class:`MissingFileError`, and bytes that are not what the Hub's hash says an :class:`IntegrityError`
    (the copy is evicted, so the next call downloads it again).
    """
    from huggingface_hub import hf_hub_download

    offline = _offline(None)
    src = Fetched(repo_id=repo_id, revision=revision, repo_type=repo_type, label=f"{repo_id}/{filename}")
    try:
        got = Path(hf_hub_download(repo_id, filename, repo_type=repo_type, revision=revision, **_library()))
    except Exception as e:
        raise _wrap_hub_error(e, src, filename, offline=offline) from e
    src.commit = got.parents[len(Path(filename).parts) - 1].name
    _verify_fetched(src, [(filename, got)], offline=offline)
    return got


_SMALL_TENSOR = 1 << 16  # bytes: tensors up to this size (scalars, norms) are fetched for real


def _header_stub(src: Source, got: Fetched, loader: Loader) -> tempfile.TemporaryDirectory[str] | None:
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
    prefix = src.join("")
    try:
        listing = _hf_api().list_repo_files(src.repo_id, revision=src.revision)
    except Exception as e:
        raise _wrap_hub_error(e, got, src.path or None, offline=False) from e
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
                cached = Path(hf_hub_download(src.repo_id, name, revision=src.revision, **_library()))
                got.commit = cached.parents[len(Path(name).parts) - 1].name
                _verify_fetched(got, [(name, cached)], offline=False)  # a config file is checked like any other
                dest.write_bytes(cached.read_bytes())
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
        raise _wrap_hub_error(e, got, name, offline=False) from e
    for name in names:
        if name.endswith(".safetensors"):  # header only: no hash of the whole file was computed
            got.files.append({"name": f"hf://{src.repo_id}@{src.revision or 'main'}/{name}"})
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


def _config_of(sae: SAEConfig | HasConfig) -> SAEConfig:
    """A card describes a config; callers may hand the SAE itself (anything with ``.cfg``), which this module
    never imports."""
    from sae_hub.config import SAEConfig

    return sae if isinstance(sae, SAEConfig) else sae.cfg


def model_card(sae: SAEConfig | HasConfig, repo_id: str, path_in_repo: str | None = None) -> str:
    """README.md for one uploaded SAE: front matter (``library_name: sae-hub``, tags, ``base_model``, license),
    what it is, a table of facts, training metrics if any, and the ``from_pretrained`` call that loads it.

    Built with ``huggingface_hub.ModelCard``/``ModelCardData`` rather than joined strings: the front matter is YAML
    the Hub parses for the model page, and a model named ``my-org/model: v2`` written as-is made it invalid (the
    page then has no metadata at all). Names shown in the Markdown are put on one line and in code spans, so a
    hook name holding a newline, ``|``, ``#`` or backticks cannot break the heading or the table.
    """
    from huggingface_hub import ModelCard

    c = _config_of(sae)
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


def _listing_row(c: SAEConfig, path: str) -> str:
    return (f"| {_code(path, cell=True)} | {c.architecture} | {c.d_in} → {c.d_sae} | "
            f"{_code(c.hook_name or '', cell=True)} | {_code(c.model_name or '', cell=True)} |")


def _listing(rows: list[str], repo_id: str, path: str) -> str:
    """The section of the root card that sae-hub owns: one table row per SAE folder, and how to load one."""
    return "\n".join([
        _CARD_START, "## SAEs in this repository", "",
        "| path | architecture | d_in → d_sae | hook | model |", "|---|---|---|---|---|", *rows, "",
        "Load one by its path:", "", _usage(repo_id, path), "", _NATIVE_LAYOUT, _CARD_END])


def root_card(existing: str | None, sae: SAEConfig | HasConfig, repo_id: str, path_in_repo: str, *,
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

    cfg = _config_of(sae)
    path = path_in_repo.strip("/")
    row = _listing_row(cfg, path)
    key = row.split(" | ", 1)[0] + " |"
    if existing is None:
        name = _one_line(repo_id.rsplit("/", 1)[-1])
        card = ModelCard(f"---\n{_card_data(cfg).to_yaml()}\n---\n\n# {name}\n\nSparse autoencoders (SAEs) "
                         "uploaded with sae-hub, one folder each.\n\n")
    else:
        try:
            card = ModelCard(existing)
        except Exception as e:  # yaml.YAMLError, or ValueError for metadata that is not a mapping
            raise CorruptFileError(f"the repo's model card cannot be merged: its front matter is not valid card "
                                   f"metadata ({type(e).__name__}: {_one_line(e)}); fix or remove it, nothing was "
                                   "uploaded", path=where, field="front matter") from None
        data = cast("ModelCardData", card.data)  # ModelCard.card_data_class; the stub types it as the base CardData
        tags = data.tags if isinstance(data.tags, list) else [data.tags] if data.tags else []
        data.tags = list(dict.fromkeys([*(str(t) for t in tags), *_sae_tags(cfg)]))
        data.library_name = data.library_name or "sae-hub"
        data.base_model = data.base_model or _base_model(cfg)
        data.license = data.license or cfg.license or None
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


def push_folder(folder: str | os.PathLike[str], cfg: SAEConfig, repo_id: str, path_in_repo: str | None = None, *,
                revision: str | None = None, private: bool | None = None, commit_message: str | None = None,
                token: str | None = None) -> str:
    """Upload a saved SAE folder plus a model card describing ``cfg``, in one commit; returns the commit URL.

    ``SAE.push_to_hub`` saves the SAE into a temporary folder and calls this (as ``ModelHubMixin`` does), so the
    hub needs no SAE and a save that refuses (``IncompatibleSaveError``) stops before anything touches the Hub.
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
    folder = Path(folder)
    parent: str | None = None
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        existing = None
        if prefix:
            parent = api.repo_info(repo_id, revision=revision).sha
            existing = _read_card(api, repo_id, parent) if parent else None
        card = (root_card(existing, cfg, repo_id, prefix, where=f"hf://{repo_id}/README.md") if prefix
                else model_card(cfg, repo_id))
        ops = [CommitOperationAdd(path_in_repo=f"{prefix}/{rel}" if prefix else rel, path_or_fileobj=os.fspath(f))
               for f in sorted(folder.rglob("*")) if f.is_file() and (rel := f.relative_to(folder).as_posix())]
        ops.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=card.encode("utf-8")))
        info = api.create_commit(repo_id, operations=ops, revision=revision, parent_commit=parent,
                                 commit_message=commit_message or f"Upload {cfg.architecture} SAE with sae-hub")
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
