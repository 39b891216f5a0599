"""The one place that talks to the Hugging Face Hub: ``from_pretrained``, ``get_config``, ``push_to_hub``.

Every byte goes through ``huggingface_hub`` (its cache, revisions, ``HF_ENDPOINT`` mirrors, ``HF_HUB_OFFLINE``,
progress bars and tokens); there is no hand-written HTTP. Only the files the format needs are fetched: a
registry release names its format, so its loader's file patterns decide what is downloaded; a bare repo id is
listed once and the format detected from the names present. With ``local_files_only=True`` or
``HF_HUB_OFFLINE=1`` a cached load makes no HTTP request at all.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import re
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sae_hub.errors import (
    DownloadError,
    FormatDetectionError,
    IntegrityError,
    MissingFileError,
    RegistryError,
    SaeHubError,
    UnknownReleaseError,
)

if TYPE_CHECKING:
    import torch

    from sae_hub.config import SAEConfig
    from sae_hub.loading import Loader
    from sae_hub.releases import Release, SAEEntry
    from sae_hub.sae import SAE

__all__ = ["from_pretrained", "get_config", "push_to_hub"]

_REPO_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
_GLOB = re.compile(r"[*?\[]")


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


def _join(prefix: str, name: str) -> str:
    return f"{prefix}/{name}" if prefix not in ("", ".") else name


def _wrap_hub_error(e: Exception, src: _Source, filename: str | None = None) -> SaeHubError:
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
    if isinstance(e, LocalEntryNotFoundError):
        return MissingFileError(
            f"not in the local cache{rev} and the Hub cannot be reached (offline, or the connection failed): "
            f"{e}", path=where)
    if isinstance(e, EntryNotFoundError):
        return MissingFileError(f"repo {src.repo_id!r}{rev} has no such file", path=where)
    return DownloadError(f"download failed{rev}: {type(e).__name__}: {e}", path=where)


def _download(src: _Source, patterns: list[str], *, offline: bool, force: bool) -> Path:
    """Fetch the files of ``src`` matching ``patterns`` (relative to the SAE folder); return the local folder.

    Literal names are fetched one ``hf_hub_download`` each (a missing optional file is fine); glob patterns
    need the repo listing, which ``snapshot_download`` gets once. Offline, both read only the cache.
    """
    from huggingface_hub import hf_hub_download, snapshot_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    assert src.repo_id is not None
    single_file = src.path and any(fnmatch.fnmatchcase(src.path.rsplit("/", 1)[-1], p) for p in patterns)
    wanted = [src.path] if single_file else [_join(src.path, p) for p in patterns]
    local_root: Path | None = None
    try:
        if any(_GLOB.search(w) for w in wanted):
            root = snapshot_download(src.repo_id, revision=src.revision, allow_patterns=wanted,
                                     local_files_only=offline, force_download=force)
            local_root = Path(root)
        else:
            for name in wanted:
                try:
                    got = Path(hf_hub_download(src.repo_id, name, revision=src.revision, local_files_only=offline,
                                               force_download=force))
                except LocalEntryNotFoundError:
                    continue  # not cached: if the loader needs it, it says which file is missing
                except EntryNotFoundError:
                    continue  # an optional file this repo does not have
                except Exception as e:
                    raise _wrap_hub_error(e, src, name) from e
                local_root = got.parents[len(Path(name).parts) - 1]
    except SaeHubError:
        raise
    except Exception as e:
        raise _wrap_hub_error(e, src) from e
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
    commit = local_root.name if local_root.parent.name == "snapshots" else src.revision
    for f in sorted(target.rglob("*") if target.is_dir() else [target]):
        if f.is_file():
            blob = f.resolve().name
            rec = {"name": f"hf://{src.repo_id}@{commit}/{f.relative_to(local_root).as_posix()}"}
            if re.fullmatch(r"[0-9a-f]{64}", blob):
                rec["sha256"] = blob  # the Hub's etag of an LFS file is its sha256
            src.files.append(rec)
    return target


def _candidate_loaders(src: _Source, offline: bool) -> list[Loader]:
    """Loaders whose file patterns match what the repo has under the SAE path (one listing request)."""
    from sae_hub.loading import _LOADERS, _discover

    _discover()
    if offline:
        return list(_LOADERS.values())
    from huggingface_hub import HfApi

    try:
        names = HfApi().list_repo_files(src.repo_id, revision=src.revision)  # type: ignore[arg-type]
    except Exception as e:
        raise _wrap_hub_error(e, src) from e
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


def _verify_sha256(target: Path, expected: str, label: str) -> None:
    from sae_hub.files import sha256_file

    files = [target] if target.is_file() else [f for f in target.rglob("*") if f.is_file()]
    weights = max(files, key=lambda f: f.stat().st_size)
    actual = sha256_file(weights)
    if actual != expected.lower():
        real = weights.resolve()
        for p in (weights, real):  # drop the bad copy so a later load downloads it again
            with contextlib.suppress(OSError):
                p.unlink()
        raise IntegrityError(f"sha256 {actual} differs from the registry's {expected}; the file was not used and "
                             "was removed from the cache", path=f"{label} ({weights.name})")


def _apply_registry(cfg: SAEConfig, src: _Source) -> None:
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
    import dataclasses

    fields = {f.name for f in dataclasses.fields(cfg)} - {"provenance", "extra"}
    for key, value in entry.config.items():
        if key not in fields:
            raise RegistryError(f"config override {key!r} is not an SAEConfig field", path=rel.source,
                                field=f"{rel.name}/{entry.id}")
        setattr(cfg, key, value)
    if entry.config:
        cfg.__post_init__()


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
        _verify_sha256(target, src.entry.sha256, src.label)
    with warnings.catch_warnings():
        if src.entry is not None and src.entry.norm_scaling_factor is not None:
            warnings.filterwarnings("ignore", message=".*norm_scaling_factor.*")
        cfg, tensors, where = load_local(target, format=fmt, options=options)
    _apply_registry(cfg, src)
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
        cfg = load_local_config(target, format=fmt, options=options)
    elif (fmt is not None and src.repo_id is not None and not offline
          and (stub := _header_stub(src, get_loader(fmt))) is not None):
        with stub as folder:
            cfg, _, _ = load_local(Path(folder) / src.path if src.path not in ("", ".") else Path(folder),
                                   format=fmt, options=options)
    else:
        target, fmt = _local_target(src, offline, False)
        cfg, _, _ = load_local(target, format=fmt, options=options)
    _apply_registry(cfg, src)
    if src.files:
        cfg.provenance.source_files = src.files
    return cfg


_SMALL_TENSOR = 1 << 16  # bytes: tensors up to this size (scalars, norms) are fetched for real


def _header_stub(src: _Source, loader: Loader) -> tempfile.TemporaryDirectory[str] | None:
    """A local stand-in of an SAE folder whose safetensors files hold only the real header and small tensors.

    Config files are fetched normally; each ``.safetensors`` file is read remotely by byte ranges
    (``HfFileSystem``): its header (shapes, dtypes) and tensors under 64 KiB (norm constants and the like), and
    written as a sparse file of the right size with zeros elsewhere. The loader then builds the config from it
    without the weights being downloaded. Returns None when the format's files are not all of that kind (e.g.
    ``.npz``/``.pt`` weights), so the caller falls back to a full fetch.
    """
    import json
    import struct

    from huggingface_hub import HfApi, HfFileSystem, hf_hub_download

    assert src.repo_id is not None
    prefix = "" if src.path in ("", ".") else src.path.rstrip("/") + "/"
    try:
        listing = HfApi().list_repo_files(src.repo_id, revision=src.revision)
    except Exception as e:
        raise _wrap_hub_error(e, src) from e
    names = [n for n in listing if n.startswith(prefix) and loader.matching_files([n[len(prefix):]])]
    if not names or any(not n.endswith((".safetensors", ".json", ".yaml", ".yml", ".txt")) for n in names):
        return None
    tmp = tempfile.TemporaryDirectory(prefix="sae-hub-config-")
    fs = HfFileSystem(skip_instance_cache=True)
    try:
        for name in names:
            dest = Path(tmp.name) / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            if not name.endswith(".safetensors"):
                Path(dest).write_bytes(Path(hf_hub_download(src.repo_id, name, revision=src.revision)).read_bytes())
                continue
            with fs.open(f"{src.repo_id}/{name}", "rb", revision=src.revision, block_size=1 << 16) as f:
                size = f.size
                (n,) = struct.unpack("<Q", f.read(8))
                raw = f.read(n)
                header = json.loads(raw)
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
        raise _wrap_hub_error(e, src) from e
    for name in names:
        src.files.append({"name": f"hf://{src.repo_id}@{src.revision or 'main'}/{name}"})
    return tmp


def model_card(sae: SAE, repo_id: str) -> str:
    """README.md for an uploaded SAE: ``library_name: sae-hub`` front matter, what it is, how to load it."""
    c = sae.cfg
    tags = ["sae-hub", "sparse-autoencoder", f"sae-{c.architecture}"]
    if c.is_transcoder:
        tags.append("transcoder")
    lines = ["---", "library_name: sae-hub", "tags:"] + [f"- {t}" for t in tags]
    if c.model_name and "/" in c.model_name:
        lines.append(f"base_model: {c.model_name}")
    if c.license:
        lines.append(f"license: {c.license}")
    lines += ["---", "", f"# {c.architecture} SAE on {c.model_name or 'a model'} at `{c.hook_name or '?'}`", "",
              "| field | value |", "|---|---|"]
    rows = {"architecture": c.architecture, "d_in": c.d_in, "d_sae": c.d_sae, "k": c.k, "model": c.model_name,
            "hook": c.hook_name, "hook (output)": c.hook_name_out if c.is_transcoder else None,
            "dtype": c.dtype, "context size": c.context_size, "dataset": c.dataset_path}
    lines += [f"| {k} | {v} |" for k, v in rows.items() if v is not None]
    metrics = c.extra.get("metrics")
    if isinstance(metrics, dict) and metrics:
        lines += ["", "## Training metrics", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in metrics.items()]
    lines += ["", "## Usage", "", "```python", "from sae_hub import SAE", "",
              f"sae = SAE.from_pretrained({repo_id!r}, '.')", "```", "",
              "Saved in the SAELens 6 layout (`cfg.json` + `sae_weights.safetensors`): it also loads with "
              "`sae_lens.SAE.load_from_disk`.", ""]
    return "\n".join(lines)


def push_to_hub(sae: SAE, repo_id: str, path_in_repo: str | None = None, *, revision: str | None = None,
                private: bool | None = None, commit_message: str | None = None, token: str | None = None,
                sparsity: torch.Tensor | None = None) -> str:
    """Upload ``sae`` in the native format plus a model card; returns the commit URL/oid."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            sae.save_pretrained(folder, sparsity=sparsity)
            if not path_in_repo:
                (folder / "README.md").write_text(model_card(sae, repo_id), encoding="utf-8")
            info = api.upload_folder(
                repo_id=repo_id, folder_path=os.fspath(folder), path_in_repo=path_in_repo or "",
                revision=revision,
                commit_message=commit_message or f"Upload {sae.cfg.architecture} SAE with sae-hub",
            )
    except SaeHubError:
        raise
    except Exception as e:
        raise DownloadError(f"upload failed: {type(e).__name__}: {e}", path=f"hf://{repo_id}") from e
    return str(getattr(info, "commit_url", info))
