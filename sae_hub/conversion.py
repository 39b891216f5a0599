"""Convert checkpoints of any supported format to the native (SAELens 6) format.

``convert(src, dst)`` loads with the format's loader (autodetected unless ``format`` is given), applies only
the transforms asked for (dtype, decoder-norm folding), records them and the source files' sha256 in the
config's provenance, and writes each output folder whole under a hidden temp name before swapping it into
place. A folder holding many SAEs converts each one into the matching sub-folder of ``dst`` under a single
progress bar.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from sae_hub.errors import FormatDetectionError, IncompatibleSaveError, MissingFileError

__all__ = ["convert", "find_saes"]


def find_saes(root: str | os.PathLike[str]) -> Iterator[tuple[Path, str]]:
    """Every ``(path, format)`` under ``root`` that one loader recognises, outermost first.

    A recognised folder is not searched further (its files belong to it). Hidden names are skipped: among
    them the temp folders an interrupted save leaves behind (:func:`sae_hub.files.is_temp_name`).
    """
    from sae_hub.loading import detect_format

    p = Path(root)
    try:
        yield p, detect_format(p)
        return
    except FormatDetectionError:
        if not p.is_dir():
            raise
    for child in sorted(p.iterdir()):
        if child.name.startswith("."):
            continue
        try:
            yield from find_saes(child)
        except FormatDetectionError:
            continue


def _hash_sources(files: list[Path]) -> dict[str, Future[str]]:
    """sha256 of each source file, computed on worker threads (hashlib releases the GIL) while we convert."""
    from sae_hub.files import sha256_file

    pool = ThreadPoolExecutor(max_workers=2)
    futures = {str(f): pool.submit(sha256_file, f) for f in files}
    pool.shutdown(wait=False)
    return futures


def _convert_one(src: Path, dst: Path, fmt: str, dtype: torch.dtype | str | None, fold_decoder_norm: bool,
                 saelens_compatible: bool, options: dict[str, Any]) -> Path:
    from sae_hub.files import atomic_folder
    from sae_hub.loading import get_loader, load_local
    from sae_hub.sae import NATIVE_FILENAMES, SAE

    loader = get_loader(fmt)
    if src.is_dir():
        files = [src / name for name in loader.files_in(src)]
    else:
        files = [src]
    hashes = _hash_sources(files)
    try:
        cfg, tensors, where = load_local(src, format=fmt, options=options)
        sae = SAE.from_state_dict(cfg, tensors, dtype=dtype, source=where)
        if fold_decoder_norm:
            sae.fold_W_dec_norm()
        target, sae_hub_only = sae._prepare_save(saelens_compatible)  # refuses before anything is written
    except IncompatibleSaveError as e:
        for fut in hashes.values():
            fut.cancel()
        raise IncompatibleSaveError(e.message, path=src, field=e.field) from None
    except BaseException:
        for fut in hashes.values():
            fut.cancel()
        raise
    with atomic_folder(dst, replaces=NATIVE_FILENAMES) as tmp:
        target._save_weights(tmp)  # while the sources are still being hashed
        base = src if src.is_dir() else src.parent
        read = {rec["name"] for rec in cfg.provenance.source_files}  # what the loader says it actually read
        target.cfg.provenance.source_files = [
            {"name": str(f.relative_to(base)), "sha256": hashes[str(f)].result()}
            for f in files if str(f.relative_to(base)) in read or f.name in read
        ]
        target._save_config(tmp, sae_hub_only=sae_hub_only)
    return dst


def convert(src: str | os.PathLike[str], dst: str | os.PathLike[str], *, format: str | None = None,
            dtype: torch.dtype | str | None = None, fold_decoder_norm: bool = False, progress: bool = True,
            saelens_compatible: bool = True, **options: Any) -> list[Path]:
    """Write ``src`` (a checkpoint, or a folder of many) in the native format under ``dst``.

    Returns the folders written. ``options`` go to the loader (e.g. ``top_k=`` for overcomplete state dicts).
    Converting then loading gives the same outputs as loading the source directly, except for the transforms
    asked for here, which the config records. Each folder is written whole and swapped into place, as
    :meth:`~sae_hub.SAE.save_pretrained` does; ``saelens_compatible`` is the same switch as there (a constant
    scaling factor is folded so SAELens computes the same; what SAELens cannot compute is refused unless
    ``saelens_compatible=False``, which writes sae-hub-only folders).
    """
    src_p, dst_p = Path(src), Path(dst)
    if not src_p.exists():
        raise MissingFileError("no such file or folder", path=src_p)
    jobs = [(src_p, format)] if format is not None else list(find_saes(src_p))
    if not jobs:
        raise FormatDetectionError("no SAE checkpoint found under this folder", path=src_p)
    out = []
    from tqdm.auto import tqdm

    bar = tqdm(jobs, desc="converting", unit="sae", disable=not progress or len(jobs) == 1)
    for path, fmt in bar:
        rel = path.relative_to(src_p) if path != src_p else Path()
        target = dst_p / rel.with_suffix("") if path.is_file() and rel != Path() else dst_p / rel
        assert fmt is not None
        bar.set_postfix_str(str(rel) or path.name)
        out.append(_convert_one(path, target, fmt, dtype, fold_decoder_norm, saelens_compatible, options))
    return out
