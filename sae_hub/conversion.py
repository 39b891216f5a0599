"""Convert checkpoints of any supported format to the native (SAELens 6) format, or to circuit-tracer's.

``convert(src, dst)`` loads with the format's loader (autodetected unless ``format`` is given), applies only
the transforms asked for (dtype, decoder-norm folding), records them and the source files' sha256 in the
config's provenance, and writes each output folder whole under a hidden temp name before swapping it into
place. A folder holding many SAEs converts each one into the matching sub-folder of ``dst`` under a single
progress bar.

``convert(src, dst, to="circuit-tracer")`` writes ONE circuit-tracer 0.5.0 folder at ``dst`` (see
:func:`sae_hub.multilayer.save_circuit_tracer` for the files): from a transcoder set or CLT (any multi-layer
loader), from a folder of single-layer SAE transcoders (one per layer, placed by their ``blocks.L.`` hooks), or
from one transcoder. Why a single-layer SAE needs preparing first (:func:`circuit_tracer_ready`): circuit-tracer
computes ``F.linear(x, W_enc, b_enc)`` then ReLU or ``z * (z > threshold)``, with nothing before or after, so
what an SAE does around that is folded into the weights where that is exact, and refused where it is not.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from sae_hub.errors import ConfigError, FormatDetectionError, IncompatibleSaveError, MissingFileError

if TYPE_CHECKING:
    from sae_hub.multilayer import MultiLayerDictionary
    from sae_hub.sae import SAE

__all__ = ["TARGETS", "circuit_tracer_ready", "convert", "find_saes"]

TARGETS = ("native", "circuit-tracer")
# convert() options meant for the circuit-tracer writer, not the loader (a circuit-tracer loader takes the two hooks
# as well, and then gets them too)
_CT_WRITER_OPTIONS = ("feature_input_hook", "feature_output_hook", "scan")


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


def circuit_tracer_ready(sae: SAE) -> SAE:
    """A copy of ``sae`` that computes the same as circuit-tracer's ``SingleLayerTranscoder`` would from its weights,
    each exact fold recorded in the copy's provenance; what no fold makes exact is an IncompatibleSaveError.

    Folds: ``apply_b_dec_to_input`` moves into ``b_enc`` (:meth:`~sae_hub.SAE.fold_input_centering`); a constant
    ``norm_scaling_factor`` into ``W_enc``/``W_dec``/``b_dec``
    (:meth:`~sae_hub.SAE.fold_activation_norm_scaling_factor`; the skip already reads the raw input); negative
    JumpReLU thresholds become 0, because an SAE computes ``relu(z) * (z > t)``, which for ``t < 0`` is
    ``z * (z > 0)``, circuit-tracer's ``z * (z > t)`` at ``t = 0`` (equal for every ``z``). An SAE (not a
    transcoder) writes back where it reads. Refused: topk (circuit-tracer's loaders build ReLU or JumpReLU only),
    gated, per-token normalisations (statistics of each input that no weight holds) and hook_z reshaping.
    """
    from sae_hub.config import PER_TOKEN_NORMALIZATIONS
    from sae_hub.sae import SAE

    c = sae.cfg
    if c.architecture not in ("relu", "jumprelu"):
        raise IncompatibleSaveError(f"circuit-tracer 0.5.0 cannot hold a {c.architecture} SAE: its loaders build "
                                    "ReLU, or JumpReLU when a threshold is stored", field="architecture")
    if c.normalize_activations in PER_TOKEN_NORMALIZATIONS:
        raise IncompatibleSaveError(f"circuit-tracer 0.5.0 cannot normalise each input ({c.normalize_activations}):"
                                    " its transcoders apply their weights to the raw activation",
                                    field="normalize_activations")
    if c.reshape_activations != "none":
        raise IncompatibleSaveError(f"circuit-tracer 0.5.0 reads one activation vector per position; this SAE "
                                    f"reshapes its input ({c.reshape_activations})", field="reshape_activations")
    copy = SAE(c.replace(), _tensors={k: v.detach().clone() for k, v in sae.state_dict().items()})
    cfg = copy.cfg
    with torch.no_grad():
        if cfg.apply_b_dec_to_input:
            copy.fold_input_centering()
        if cfg.norm_scaling_factor is not None or cfg.norm_scaling_factor_out is not None:
            if cfg.norm_scaling_factor is None:  # only an output factor: the input one is 1
                cfg.norm_scaling_factor = 1.0
            copy.fold_activation_norm_scaling_factor()
        if cfg.normalize_activations == "expected_average_only_in":  # no factor recorded: a no-op (SAELens 6 too)
            cfg.normalize_activations = "none"
            cfg.record("normalize_activations expected_average_only_in without a factor is a no-op: dropped")
        if cfg.architecture == "jumprelu":
            th = copy.get_parameter("threshold")
            neg = int((th < 0).sum())
            if neg:
                th.clamp_(min=0)
                cfg.record(f"{neg} negative JumpReLU threshold(s) set to 0: relu(z)*(z>t) == z*(z>0) for t<0 (exact)")
    if not cfg.is_transcoder and cfg.hook_name_out is None:
        cfg.hook_name_out = cfg.hook_name
    return copy


def _ct_source(src: Path, jobs: list[tuple[Path, str]], dtype: torch.dtype | str | None,
               options: dict[str, Any]) -> tuple[MultiLayerDictionary, list[tuple[Path, Future[str]]]]:
    """The dictionary to write for ``jobs`` (what was detected under ``src``) and the source files its loaders
    read, each with its sha256 being computed."""
    from sae_hub.files import dtype_to_str
    from sae_hub.loading import get_loader, load_local
    from sae_hub.multilayer import MultiLayerDictionary, layer_of
    from sae_hub.sae import SAE

    loaders = [get_loader(fmt) for _, fmt in jobs]
    multi = [path for (path, _), ld in zip(jobs, loaders, strict=True) if ld.kind == "multilayer"]
    if multi and len(jobs) > 1:
        raise ConfigError(f"{src} holds a multi-layer dictionary ({multi[0]}) beside other checkpoints; convert "
                          "one at a time", path=src, field="src")
    hashed: list[tuple[Path, Future[str]]] = []

    def load(path: Path, fmt: str, kind: str) -> tuple[Any, dict[str, torch.Tensor], str]:
        ld = get_loader(fmt)
        files = [path / n for n in ld.files_in(path)] if path.is_dir() else [path]
        futures = _hash_sources(files)
        opts = {k: v for k, v in options.items() if k not in _CT_WRITER_OPTIONS or k in ld.options}
        cfg, tensors, where = load_local(path, format=fmt, options=opts, kind=kind)
        base = path if path.is_dir() else path.parent
        read = {rec["name"] for rec in cfg.provenance.source_files}  # what the loader says it actually read
        hashed.extend((f, futures[str(f)]) for f in files if str(f.relative_to(base)) in read or f.name in read)
        return cfg, tensors, where

    try:
        if multi:
            cfg, tensors, where = load(*jobs[0], "multilayer")
            stored = next(iter(tensors.values())).dtype
            d = MultiLayerDictionary.from_state_dict(cfg, tensors, dtype=dtype, source=where)
            if dtype is not None and d.dtype != stored:
                cfg.record(f"cast {dtype_to_str(stored)}->{dtype_to_str(d.dtype)}")
            return d, hashed
        saes: list[SAE] = []
        for path, fmt in jobs:
            cfg, tensors, where = load(path, fmt, "sae")
            try:
                saes.append(circuit_tracer_ready(SAE.from_state_dict(cfg, tensors, dtype=dtype, source=where)))
            except IncompatibleSaveError as e:
                raise IncompatibleSaveError(e.message, path=path, field=e.field) from None
        layers = [layer_of(s.cfg.hook_name) for s in saes]
        if len(saes) > 1 and None in layers:
            bad = layers.index(None)
            raise IncompatibleSaveError(f"cannot tell which layer this SAE reads (hook_name "
                                        f"{saes[bad].cfg.hook_name!r}): a transcoder set places each SAE by its "
                                        "blocks.L. hook", path=jobs[bad][0], field="hook_name")
        d = MultiLayerDictionary.from_saes(saes)
        d.cfg.provenance.source_format = saes[0].cfg.provenance.source_format
        d.cfg.provenance.conversions = [f"layer {layer or 0}: {c}" for layer, s in sorted(
            zip(layers, saes, strict=True), key=lambda p: p[0] or 0) for c in s.cfg.provenance.conversions]
        return d, hashed
    except BaseException:
        for _, fut in hashed:
            fut.cancel()
        raise


def _convert_circuit_tracer(src: Path, dst: Path, format: str | None, dtype: torch.dtype | str | None,
                            options: dict[str, Any]) -> Path:
    from sae_hub.multilayer import circuit_tracer_files, save_circuit_tracer

    jobs: list[tuple[Path, str]] = [(src, format)] if format is not None else list(find_saes(src))
    if not jobs:
        raise FormatDetectionError("no SAE checkpoint found under this folder", path=src)
    writer = {k: options[k] for k in _CT_WRITER_OPTIONS if k in options}
    d, hashed = _ct_source(src, jobs, dtype, options)
    try:
        circuit_tracer_files(d, src, **writer)  # refuse before waiting for the hashes or writing anything
    except BaseException:
        for _, fut in hashed:
            fut.cancel()
        raise
    d.cfg.provenance.source_files = [
        {"name": str(f.relative_to(src)) if src.is_dir() else f.name, "sha256": fut.result()} for f, fut in hashed]
    return save_circuit_tracer(d, dst, **writer)


def convert(src: str | os.PathLike[str], dst: str | os.PathLike[str], *, format: str | None = None,
            dtype: torch.dtype | str | None = None, fold_decoder_norm: bool = False, progress: bool = True,
            saelens_compatible: bool = True, to: str = "native", **options: Any) -> list[Path]:
    """Write ``src`` (a checkpoint, or a folder of many) in the native format under ``dst``.

    ``to="circuit-tracer"`` writes ``src`` (a transcoder set or CLT, a folder of single-layer transcoders, or one
    transcoder) as ONE circuit-tracer 0.5.0 folder ``dst`` that circuit-tracer's own loaders read as the same
    computation; returns ``[dst]``. The options ``feature_input_hook`` / ``feature_output_hook`` (relative to a
    block, e.g. ``mlp.hook_in``) and ``scan`` go to its config.yaml where the source does not say; exact folds are
    recorded there under ``sae_hub.provenance``; what circuit-tracer cannot hold raises IncompatibleSaveError
    naming the field before anything is written (:func:`circuit_tracer_ready`,
    :func:`sae_hub.multilayer.circuit_tracer_files`).

    Returns the folders written. ``options`` go to the loader (e.g. ``top_k=`` for overcomplete state dicts).
    Converting then loading gives the same outputs as loading the source directly, except for the transforms
    asked for here, which the config records. Each folder is written whole and swapped into place, as
    :meth:`~sae_hub.SAE.save_pretrained` does; ``saelens_compatible`` is the same switch as there (a constant
    scaling factor is folded so SAELens computes the same; what SAELens cannot compute is refused unless
    ``saelens_compatible=False``, which writes sae-hub-only folders).
    """
    src_p, dst_p = Path(src), Path(dst)
    if to not in TARGETS:
        raise ConfigError(f"unknown target format {to!r}; expected one of {', '.join(TARGETS)}", field="to")
    if not src_p.exists():
        raise MissingFileError("no such file or folder", path=src_p)
    if to == "circuit-tracer":
        if fold_decoder_norm:
            raise ConfigError("fold_decoder_norm is for native output; circuit-tracer files keep the decoder as "
                              "it is", field="fold_decoder_norm")
        return [_convert_circuit_tracer(src_p, dst_p, format, dtype, options)]
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
