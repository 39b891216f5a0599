"""circuit-tracer (0.5.0) per-layer transcoder sets and cross-layer transcoders (CLTs), as its ``to_safetensors`` writes
them and its Hub repos carry them.

Transcoder set (``TranscoderSet.to_safetensors(dir)``; mwhanna's Qwen3 / Gemma repos): one ``layer_{i}.safetensors``
per layer ``i = 0..n-1`` with ``W_enc [d_sae, d_in]`` (``F.linear`` orientation: ``z = x @ W_enc.T + b_enc``),
``W_dec [d_sae, d_out]``, ``b_enc [d_sae]``, ``b_dec [d_out]``, optional ``activation_function.threshold [d_sae]``
(JumpReLU, ``z * (z > threshold)``; else ReLU) and optional ``W_skip [d_out, d_in]`` (output ``+ x @ W_skip.T``).
Loaded as a :class:`~sae_hub.multilayer.MultiLayerDictionary` of kind ``transcoder_set`` (format
``circuit-tracer-transcoders``); one ``layer_{i}.safetensors`` file alone loads as an ``SAE`` transcoder (format
``circuit-tracer-transcoder``), exact when no threshold is negative.

CLT (``CrossLayerTranscoder.to_safetensors(dir)``): per source layer ``i``, ``W_enc_{i}.safetensors`` holding
``W_enc_{i} [d_sae, d_in]``, ``b_enc_{i} [d_sae]``, ``b_dec_{i} [d_out]`` (the bias of TARGET layer ``i``) and,
for JumpReLU, ``threshold_{i} [d_sae]``; and ``W_dec_{i}.safetensors`` holding ``W_dec_{i} [d_sae, n - i, d_out]``
(slot ``j`` decodes into layer ``i + j``). circuit-tracer's in-memory ``W_skip`` is never written by
``to_safetensors``, so these files never have one. Format ``circuit-tracer-clt``.

Hooks: the repo's ``config.yaml`` (``model_kind``, ``model_name``, ``feature_input_hook``, ``feature_output_hook``,
optionally ``transcoders``) names hook points relative to a block; layer ``L`` reads ``blocks.L.<feature_input_hook>``
and writes ``blocks.L.<feature_output_hook>``, spelled exactly as the config has them (``hook_resid_mid`` ->
``hook_mlp_out`` for Gemma/Llama; ``mlp.hook_in`` -> ``mlp.hook_out``, the hook points circuit-tracer's
ReplacementMLP adds around each MLP, for mwhanna's Qwen3 sets). mwhanna's ``wandb-config.yaml`` (also spelled
``wanb-config.yaml``) gives ``d_model`` / ``d_feature``, checked against the tensors. Without a config the hooks
are unknown (None) unless the options ``feature_input_hook`` / ``feature_output_hook`` / ``model_name`` give them.

Strictness: a layer missing from ``0..n-1``, a file without one of its tensors or with a tensor it should not
hold, widths that disagree across files, or a CLT decoder whose target count is not ``n - i`` is a typed error
naming the file and the tensor; nothing is guessed.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from sae_hub.config import SAEConfig
from sae_hub.errors import (
    ConfigError,
    CorruptFileError,
    MissingFileError,
    SaeHubError,
    ShapeMismatchError,
    UnsupportedSAEError,
)
from sae_hub.files import read_config_bytes, read_safetensors, read_safetensors_header
from sae_hub.loading import register_loader
from sae_hub.multilayer import MultiLayerConfig

__all__ = ["detect_clt", "detect_transcoder", "detect_transcoder_set", "load_clt", "load_transcoder",
           "load_transcoder_set"]

CONFIG = "config.yaml"
WANDB_CONFIGS = ("wandb-config.yaml", "wanb-config.yaml")
OPTIONS = ("feature_input_hook", "feature_output_hook", "model_name")
_LAYER_FILE = re.compile(r"layer_(\d+)\.safetensors")
_CLT_FILE = re.compile(r"W_(enc|dec)_(\d+)\.safetensors")
_PLT_REQUIRED = ("W_enc", "W_dec", "b_enc", "b_dec")
_PLT_OPTIONAL = ("activation_function.threshold", "W_skip")


# ---------------------------------------------------------------------- detection


def _layer_files(folder: Path) -> dict[int, Path]:
    out: dict[int, Path] = {}
    for p in folder.iterdir():
        m = _LAYER_FILE.fullmatch(p.name)
        if m and p.is_file():
            out[int(m.group(1))] = p
    return out


def _is_plt_header(path: Path) -> bool:
    try:
        keys = set(read_safetensors_header(path).keys())
    except SaeHubError:
        return False
    return set(_PLT_REQUIRED) <= keys and keys <= set(_PLT_REQUIRED) | set(_PLT_OPTIONAL)


def detect_transcoder_set(path: Path) -> bool:
    """A folder of ``layer_{i}.safetensors`` files whose lowest-numbered one holds circuit-tracer's keys."""
    if not path.is_dir():
        return False
    files = _layer_files(path)
    return bool(files) and _is_plt_header(files[min(files)])


def detect_transcoder(path: Path) -> bool:
    """One ``layer_{i}.safetensors`` file holding circuit-tracer's per-layer transcoder keys."""
    return path.is_file() and _LAYER_FILE.fullmatch(path.name) is not None and _is_plt_header(path)


def detect_clt(path: Path) -> bool:
    """A folder with ``W_enc_0.safetensors`` (circuit-tracer CLT files; the rest are checked on load)."""
    return path.is_dir() and (path / "W_enc_0.safetensors").is_file()


# ---------------------------------------------------------------------- configs


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(read_config_bytes(path))
    except yaml.YAMLError as e:
        raise CorruptFileError(f"not valid YAML: {e}", path=path) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"expected a mapping at the top level, got {type(data).__name__}", path=path)
    return data


def _str_field(cfg: dict[str, Any], key: str, path: Path) -> str | None:
    value = cfg.get(key)
    if value is not None and not isinstance(value, str):
        raise ConfigError(f"{key} must be a string, got {value!r}", path=path, field=key)
    return value


def _repo_config(folder: Path, kind: str, options: dict[str, Any]) -> dict[str, Any]:
    """Model name and relative hooks from ``config.yaml`` (options override), checked against ``kind``."""
    info: dict[str, Any] = {"model_name": None, "feature_input_hook": None, "feature_output_hook": None}
    cfg_path = folder / CONFIG
    if cfg_path.is_file():
        cfg = _read_yaml(cfg_path)
        model_kind = cfg.get("model_kind")
        if model_kind is not None and model_kind != kind:
            raise ConfigError(f"config.yaml says model_kind {model_kind!r}, but the files are a {kind}",
                              path=cfg_path, field="model_kind")
        for key in info:
            info[key] = _str_field(cfg, key, cfg_path)
        listed = cfg.get("transcoders")
        if listed is not None:
            _check_listed(listed, cfg_path)
        info["scan"] = cfg.get("scan")
    for key in OPTIONS:
        value = options.get(key)
        if value is not None:
            if not isinstance(value, str) or not value:
                raise ConfigError(f"option {key} must be a non-empty string, got {value!r}", field=key)
            info[key] = value
    return info


def _check_listed(listed: Any, cfg_path: Path) -> None:
    """``transcoders:`` may list the layer files (plain or ``hf://`` paths); entries that are not this folder's
    ``layer_{i}.safetensors`` in order mean the weights live elsewhere, which a pure loader of local files cannot
    follow: refused, naming the entry."""
    if not isinstance(listed, list) or not all(isinstance(x, str) for x in listed):
        raise ConfigError("transcoders must be a list of paths", path=cfg_path, field="transcoders")
    for i, entry in enumerate(listed):
        base = entry.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
        if base != f"layer_{i}.safetensors":
            raise UnsupportedSAEError(
                f"transcoders[{i}] is {entry!r}: this config points at weights outside this folder's "
                f"layer_{{i}}.safetensors files; load those files instead", path=cfg_path, field="transcoders")


def _wandb_widths(folder: Path) -> tuple[Path, dict[str, int]] | None:
    for name in WANDB_CONFIGS:
        p = folder / name
        if p.is_file():
            cfg = _read_yaml(p)
            widths = {}
            for key in ("d_model", "d_feature"):
                entry = cfg.get(key)
                value = entry.get("value") if isinstance(entry, dict) else entry
                if value is not None:
                    if not isinstance(value, int) or isinstance(value, bool):
                        raise ConfigError(f"{key} must be an integer, got {value!r}", path=p, field=key)
                    widths[key] = value
            return p, widths
    return None


def _hooks(info: dict[str, Any], layers: list[int]) -> tuple[list[str | None], list[str | None]]:
    hin, hout = info.get("feature_input_hook"), info.get("feature_output_hook")
    return ([f"blocks.{L}.{hin}" if hin else None for L in layers],
            [f"blocks.{L}.{hout}" if hout else None for L in layers])


# ---------------------------------------------------------------------- tensors


def _shape(t: torch.Tensor, want: tuple[int, ...], path: Path, key: str, what: str) -> None:
    if tuple(t.shape) != want:
        raise ShapeMismatchError(f"tensor {key} has shape {list(t.shape)}, expected {list(want)} ({what})",
                                 path=path, field=key)


def _floating(tensors: dict[str, torch.Tensor], path: Path) -> None:
    for key, t in tensors.items():
        if not t.is_floating_point():
            raise ShapeMismatchError(f"tensor {key} has dtype {t.dtype}; weights must be floating point", path=path,
                                     field=key)


def _read_plt(path: Path) -> dict[str, torch.Tensor]:
    """One ``layer_{i}.safetensors``: its tensors, checked against each other (shapes in the file's own terms)."""
    t, _ = read_safetensors(path)
    for key in _PLT_REQUIRED:
        if key not in t:
            raise ShapeMismatchError(f"no tensor {key} in this circuit-tracer transcoder file (it has {sorted(t)})",
                                     path=path, field=key)
    extra = sorted(set(t) - set(_PLT_REQUIRED) - set(_PLT_OPTIONAL))
    if extra:
        raise ShapeMismatchError(f"unexpected tensor {extra[0]} in a circuit-tracer transcoder file (it may hold "
                                 f"{list(_PLT_REQUIRED + _PLT_OPTIONAL)})", path=path, field=extra[0])
    _floating(t, path)
    if t["W_enc"].dim() != 2:
        raise ShapeMismatchError(f"tensor W_enc has shape {list(t['W_enc'].shape)}, expected [d_sae, d_in]",
                                 path=path, field="W_enc")
    d_sae, d_in = t["W_enc"].shape
    if t["W_dec"].dim() != 2 or t["W_dec"].shape[0] != d_sae:
        raise ShapeMismatchError(f"tensor W_dec has shape {list(t['W_dec'].shape)}, expected [d_sae={d_sae}, d_out]",
                                 path=path, field="W_dec")
    d_out = t["W_dec"].shape[1]
    _shape(t["b_enc"], (d_sae,), path, "b_enc", "[d_sae]")
    _shape(t["b_dec"], (d_out,), path, "b_dec", "[d_out]")
    th = t.get("activation_function.threshold")
    if th is not None:
        if th.numel() == 1 and th.dim() <= 1:  # a scalar JumpReLU threshold: the same for every feature
            t["activation_function.threshold"] = th.reshape(()).expand(d_sae)
        else:
            _shape(th, (d_sae,), path, "activation_function.threshold", "[d_sae]")
    if "W_skip" in t:
        _shape(t["W_skip"], (d_out, d_in), path, "W_skip", "[d_out, d_in]")
    return t


# ---------------------------------------------------------------------- transcoder sets


# LoadFn is typed for SAE loaders; kind="multilayer" loaders return a MultiLayerConfig (see register_loader).
@register_loader("circuit-tracer-transcoders", files=["layer_*.safetensors", CONFIG, *WANDB_CONFIGS],  # type: ignore[arg-type]
                 detect=detect_transcoder_set, options=OPTIONS, kind="multilayer",
                 description="circuit-tracer per-layer transcoder set (layer_{i}.safetensors [+ config.yaml])")
def load_transcoder_set(path: Path, options: dict[str, Any]) -> tuple[MultiLayerConfig, dict[str, torch.Tensor]]:
    """circuit-tracer transcoder set folder: ``layer_{i}.safetensors`` for every ``i`` in ``0..n-1``."""
    folder = path
    if not folder.is_dir():
        raise UnsupportedSAEError("a circuit-tracer transcoder set is a folder of layer_{i}.safetensors files",
                                  path=path)
    files = _layer_files(folder)
    if not files:
        raise MissingFileError("no layer_{i}.safetensors files in this folder", path=folder)
    n = max(files) + 1
    for i in range(n):
        if i not in files:
            raise MissingFileError(f"layer {i} is missing: circuit-tracer sets cover layers 0..{n - 1} without a gap",
                                   path=folder / f"layer_{i}.safetensors", field="W_enc")
    info = _repo_config(folder, "transcoder_set", options)
    layers = list(range(n))
    per = [_read_plt(files[i]) for i in layers]
    first = per[0]
    d_in, d_out = first["W_enc"].shape[1], first["W_dec"].shape[1]
    jump, skip = "activation_function.threshold" in first, "W_skip" in first
    for i, t in enumerate(per):
        p = files[i]
        if t["W_enc"].shape[1] != d_in:
            raise ShapeMismatchError(f"tensor W_enc reads d_in={t['W_enc'].shape[1]}, layer_0 reads d_in={d_in}",
                                     path=p, field="W_enc")
        if t["W_dec"].shape[1] != d_out:
            raise ShapeMismatchError(f"tensor W_dec writes d_out={t['W_dec'].shape[1]}, layer_0 writes {d_out}",
                                     path=p, field="W_dec")
        for key, want in (("activation_function.threshold", jump), ("W_skip", skip)):
            if (key in t) != want:
                raise UnsupportedSAEError(
                    f"tensor {key} is {'present' if key in t else 'absent'} here but "
                    f"{'present' if want else 'absent'} in layer_0.safetensors: one set has one activation and one "
                    "skip layout", path=p, field=key)
    widths = _wandb_widths(folder)
    if widths is not None:
        wpath, w = widths
        if w.get("d_model") not in (None, d_in):
            raise ShapeMismatchError(f"d_model is {w['d_model']}, the layer files read d_in={d_in}", path=wpath,
                                     field="d_model")
        bad = [i for i, t in enumerate(per) if w.get("d_feature") not in (None, t["W_enc"].shape[0])]
        if bad:
            raise ShapeMismatchError(f"d_feature is {w['d_feature']}, layer_{bad[0]}.safetensors has "
                                     f"{per[bad[0]]['W_enc'].shape[0]} features", path=wpath, field="d_feature")
    hin, hout = _hooks(info, layers)
    cfg = MultiLayerConfig(
        kind="transcoder_set", layers=layers, d_in=d_in, d_out=d_out, d_sae=[t["W_enc"].shape[0] for t in per],
        architecture="jumprelu" if jump else "relu", has_skip=skip, model_name=info.get("model_name"),
        hook_names_in=hin, hook_names_out=hout,
        extra={k: info[k] for k in ("feature_input_hook", "feature_output_hook", "scan") if info.get(k) is not None},
    )
    cfg.record("W_enc transposed ([d_sae, d_in] -> [d_in, d_sae]); W_dec given a target axis of length 1")
    tensors: dict[str, torch.Tensor] = {}
    for i, t in enumerate(per):
        tensors[f"W_enc.{i}"] = t["W_enc"].T
        tensors[f"b_enc.{i}"] = t["b_enc"]
        tensors[f"W_dec.{i}"] = t["W_dec"][:, None, :]
        tensors[f"b_dec.{i}"] = t["b_dec"]
        if jump:
            tensors[f"threshold.{i}"] = t["activation_function.threshold"]
        if skip:
            tensors[f"W_skip.{i}"] = t["W_skip"]
    return cfg, tensors


@register_loader("circuit-tracer-transcoder", files=["layer_*.safetensors", CONFIG, *WANDB_CONFIGS],
                 detect=detect_transcoder, options=OPTIONS,
                 description="one circuit-tracer per-layer transcoder file (layer_{i}.safetensors) as an SAE")
def load_transcoder(path: Path, options: dict[str, Any]) -> tuple[SAEConfig, dict[str, torch.Tensor]]:
    """One ``layer_{i}.safetensors`` as an SAE transcoder; hooks from the ``config.yaml`` beside it."""
    if path.is_dir():
        raise UnsupportedSAEError("this is a folder: a circuit-tracer transcoder set loads with "
                                  "sae_hub.MultiLayerDictionary.load_from_disk; SAE.load_from_disk takes one "
                                  "layer_{i}.safetensors file", path=path)
    m = _LAYER_FILE.fullmatch(path.name)
    if m is None:
        raise UnsupportedSAEError("a circuit-tracer transcoder file is named layer_{i}.safetensors", path=path)
    layer = int(m.group(1))
    t = _read_plt(path)
    info = _repo_config(path.parent, "transcoder_set", options)
    th = t.get("activation_function.threshold")
    if th is not None and bool((th < 0).any()):
        raise UnsupportedSAEError(
            f"{int((th < 0).sum())} negative threshold(s): circuit-tracer computes z*(z>threshold), which passes "
            "negative values an SAE's relu(z)*(z>threshold) zeroes; load the folder with "
            "MultiLayerDictionary.load_from_disk, which computes it exactly", path=path,
            field="activation_function.threshold")
    hin, hout = _hooks(info, [layer])
    d_sae, d_in = t["W_enc"].shape
    cfg = SAEConfig(
        architecture="jumprelu" if th is not None else "relu", d_in=d_in, d_sae=d_sae, d_out=t["W_dec"].shape[1],
        has_skip="W_skip" in t, dtype=str(t["W_enc"].dtype).removeprefix("torch."),
        model_name=info.get("model_name"), hook_name=hin[0], hook_name_out=hout[0],
    )
    cfg.record("W_enc transposed ([d_sae, d_in] -> [d_in, d_sae])")
    out = {"W_enc": t["W_enc"].T, "b_enc": t["b_enc"], "W_dec": t["W_dec"], "b_dec": t["b_dec"]}
    if th is not None:
        out["threshold"] = th
    if "W_skip" in t:
        out["W_skip"] = t["W_skip"]
    return cfg, out


# ---------------------------------------------------------------------- CLTs


def _clt_files(folder: Path) -> tuple[dict[int, Path], dict[int, Path]]:
    enc: dict[int, Path] = {}
    dec: dict[int, Path] = {}
    for p in folder.iterdir():
        m = _CLT_FILE.fullmatch(p.name)
        if m and p.is_file():
            (enc if m.group(1) == "enc" else dec)[int(m.group(2))] = p
    return enc, dec


@register_loader("circuit-tracer-clt", files=["W_enc_*.safetensors", "W_dec_*.safetensors", CONFIG],  # type: ignore[arg-type]
                 detect=detect_clt, options=OPTIONS, kind="multilayer",
                 description="circuit-tracer cross-layer transcoder (W_enc_{i}/W_dec_{i}.safetensors [+ config.yaml])")
def load_clt(path: Path, options: dict[str, Any]) -> tuple[MultiLayerConfig, dict[str, torch.Tensor]]:
    """circuit-tracer CLT folder: ``W_enc_{i}.safetensors`` and ``W_dec_{i}.safetensors`` for every ``i`` in
    ``0..n-1``."""
    folder = path
    if not folder.is_dir():
        raise UnsupportedSAEError("a circuit-tracer CLT is a folder of W_enc_{i}/W_dec_{i}.safetensors files",
                                  path=path)
    enc, dec = _clt_files(folder)
    n = max([*enc, *dec]) + 1 if enc or dec else 0
    if n == 0:
        raise MissingFileError("no W_enc_{i}.safetensors files in this folder", path=folder)
    for i in range(n):
        for kind, files in (("enc", enc), ("dec", dec)):
            if i not in files:
                raise MissingFileError(
                    f"layer {i} is missing its W_{kind}_{i}.safetensors (found W_enc for layers {sorted(enc)}, "
                    f"W_dec for layers {sorted(dec)}; a CLT covers layers 0..{n - 1} without a gap)",
                    path=folder / f"W_{kind}_{i}.safetensors", field=f"W_{kind}_{i}")
    info = _repo_config(folder, "cross_layer_transcoder", options)
    tensors: dict[str, torch.Tensor] = {}
    d_sae = d_in = d_out = None
    jump = None
    for i in range(n):
        pe, pd = enc[i], dec[i]
        te, _ = read_safetensors(pe)
        td, _ = read_safetensors(pd)
        want_e = [f"W_enc_{i}", f"b_enc_{i}", f"b_dec_{i}"]
        for key in want_e:
            if key not in te:
                raise ShapeMismatchError(f"no tensor {key} in {pe.name} (it has {sorted(te)})", path=pe, field=key)
        has_th = f"threshold_{i}" in te
        if jump is None:
            jump = has_th
        elif has_th != jump:
            raise ShapeMismatchError(
                f"tensor threshold_{i} is {'present' if has_th else 'absent'} here but "
                f"{'present' if jump else 'absent'} in W_enc_0.safetensors: one CLT has one activation",
                path=pe, field=f"threshold_{i}")
        extra = sorted(set(te) - set(want_e) - {f"threshold_{i}"})
        if extra:
            raise ShapeMismatchError(f"unexpected tensor {extra[0]} in {pe.name} (it may hold {want_e} and "
                                     f"threshold_{i})", path=pe, field=extra[0])
        if f"W_dec_{i}" not in td:
            raise ShapeMismatchError(f"no tensor W_dec_{i} in {pd.name} (it has {sorted(td)})", path=pd,
                                     field=f"W_dec_{i}")
        extra = sorted(set(td) - {f"W_dec_{i}"})
        if extra:
            raise ShapeMismatchError(f"unexpected tensor {extra[0]} in {pd.name} (it holds W_dec_{i} only)", path=pd,
                                     field=extra[0])
        _floating(te, pe)
        _floating(td, pd)
        W_enc, W_dec = te[f"W_enc_{i}"], td[f"W_dec_{i}"]
        if W_enc.dim() != 2:
            raise ShapeMismatchError(f"tensor W_enc_{i} has shape {list(W_enc.shape)}, expected [d_sae, d_in]",
                                     path=pe, field=f"W_enc_{i}")
        if d_sae is None:
            d_sae, d_in = W_enc.shape
        elif tuple(W_enc.shape) != (d_sae, d_in):
            raise ShapeMismatchError(f"tensor W_enc_{i} has shape {list(W_enc.shape)}, W_enc_0 has "
                                     f"{[d_sae, d_in]}: every layer of a CLT has the same d_sae and d_in",
                                     path=pe, field=f"W_enc_{i}")
        if W_dec.dim() != 3 or W_dec.shape[0] != d_sae:
            raise ShapeMismatchError(f"tensor W_dec_{i} has shape {list(W_dec.shape)}, expected "
                                     f"[d_sae={d_sae}, n_targets={n - i}, d_out]", path=pd, field=f"W_dec_{i}")
        if W_dec.shape[1] != n - i:
            raise ShapeMismatchError(
                f"tensor W_dec_{i} decodes to {W_dec.shape[1]} target layers; with {n} layers, source layer {i} "
                f"writes to layers {i}..{n - 1}, so it needs {n - i}", path=pd, field=f"W_dec_{i}")
        if d_out is None:
            d_out = W_dec.shape[2]
        elif W_dec.shape[2] != d_out:
            raise ShapeMismatchError(f"tensor W_dec_{i} writes d_out={W_dec.shape[2]}, W_dec_0 writes {d_out}",
                                     path=pd, field=f"W_dec_{i}")
        _shape(te[f"b_enc_{i}"], (d_sae,), pe, f"b_enc_{i}", "[d_sae]")
        _shape(te[f"b_dec_{i}"], (d_out,), pe, f"b_dec_{i}", "[d_out]")
        tensors[f"W_enc.{i}"] = W_enc.T
        tensors[f"b_enc.{i}"] = te[f"b_enc_{i}"]
        tensors[f"b_dec.{i}"] = te[f"b_dec_{i}"]
        tensors[f"W_dec.{i}"] = W_dec
        if has_th:
            th = te[f"threshold_{i}"]
            if th.numel() == d_sae and th.dim() in (1, 2):  # [d_sae], or [1, d_sae] as the in-memory layout
                th = th.reshape(d_sae)
            _shape(th, (d_sae,), pe, f"threshold_{i}", "[d_sae]")
            tensors[f"threshold.{i}"] = th
    assert d_sae is not None and d_in is not None and d_out is not None
    layers = list(range(n))
    hin, hout = _hooks(info, layers)
    cfg = MultiLayerConfig(
        kind="clt", layers=layers, d_in=d_in, d_out=d_out, d_sae=d_sae, architecture="jumprelu" if jump else "relu",
        model_name=info.get("model_name"), hook_names_in=hin, hook_names_out=hout,
        extra={k: info[k] for k in ("feature_input_hook", "feature_output_hook", "scan") if info.get(k) is not None},
    )
    cfg.record("W_enc_{i} transposed ([d_sae, d_in] -> [d_in, d_sae]); b_dec_{i} is target layer i's bias")
    return cfg, tensors
