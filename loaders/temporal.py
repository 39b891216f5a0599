"""canrager's temporal SAEs (``canrager/temporalSAEs``: ``<model>/layer_L/temporal/conf.yaml`` +
``latest_ckpt.safetensors``; SAELens ``conversion_func: temporal``) -> :class:`sae_hub.temporal.TemporalSAE`, exactly.

Facts, from the authors' code (github.com/eslubana/temporalSAEs: ``sae/saeTemporal.py``, ``sae/utils.py``,
``train_temporal_saes.py``, ``utils/logging.py``) and SAELens 6.54's ``temporal_sae_huggingface_loader``:

* ``conf.yaml`` is the Hydra training config dumped as YAML. The model is built from ``llm.dimin`` (``d_in``),
  ``int(dimin * sae.exp_factor)`` (``d_sae``, the original's rule), ``sae.n_heads``, ``sae.n_attn_layers``,
  ``sae.bottleneck_factor``, ``sae.sae_diff_type``, ``sae.kval_topk``, ``sae.tied_weights``, and
  ``sae.inference_mode_batchtopk`` (default false); training fed it ``activations * sae.scaling_factor``.
* ``latest_ckpt.safetensors`` is the model's ``state_dict()``: ``D [d_sae, d_in]`` (decoder), ``b [1, d_in]``,
  ``E [d_in, d_sae]`` when untied, ``expected_min_act [1]`` for batchtopk, and per attention layer ``i`` the
  ``nn.Linear`` weights ``attn_layers.i.{q_target,k_ctx} [d_sae // bottleneck_factor, d_sae]``,
  ``attn_layers.i.{v_ctx,c_proj} [d_sae, d_sae]`` (``[out, in]``) and their biases.

Conversion: ``W_dec = D``, ``b_dec = b[0]``, ``W_enc = E``, ``threshold = expected_min_act[0]``,
``attn.i.W_q = q_target.weight.T`` (likewise ``W_k``/``k_ctx``, ``W_v``/``v_ctx``, ``W_o``/``c_proj``), biases as they
are: transposes and reshapes only (views of the memory-mapped file), nothing computed.

Refused, with the reason: ``sae_diff_type: batchtopk`` with ``inference_mode_batchtopk`` false (the original then
keeps the top ``k * batch * seq`` codes of the whole batch and updates ``expected_min_act`` in every forward, so a
sequence's codes depend on the rest of the batch; set the conf field to true for its threshold, inference mode).
The hook is not in the files: ``blocks.L.hook_resid_post`` where a path component reads ``layer_L`` (SAELens's rule;
the authors cache the output of decoder layer ``L``), else unknown; a release's hook wins.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import torch

from sae_hub.errors import ConfigError, CorruptFileError, MissingFileError, ShapeMismatchError, UnsupportedSAEError
from sae_hub.files import read_config_bytes, read_safetensors
from sae_hub.loading import register_loader
from sae_hub.temporal import DIFF_TYPES, TemporalConfig

__all__ = ["detect", "load"]

CONF, CKPT = "conf.yaml", "latest_ckpt.safetensors"
_LINEARS = (("q_target", "q"), ("k_ctx", "k"), ("v_ctx", "v"), ("c_proj", "o"))


def detect(path: Path) -> bool:
    """A folder with ``conf.yaml`` and ``latest_ckpt.safetensors``."""
    return path.is_dir() and (path / CONF).is_file() and (path / CKPT).is_file()


def _field(section: dict[str, Any], name: str, conf: Path, where: str, kind: str, *, default: Any = ...) -> Any:
    """``section[name]`` checked to be a ``kind`` (``int`` > 0, ``number`` > 0, ``bool``, ``str``)."""
    if name not in section or section[name] is None:
        if default is not ...:
            return default
        raise ConfigError(f"conf.yaml has no {where}.{name}", path=conf, field=f"{where}.{name}")
    v = section[name]
    ok = {"int": isinstance(v, int) and not isinstance(v, bool) and v > 0,
          "number": isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0,
          "bool": isinstance(v, bool), "str": isinstance(v, str)}[kind]
    if not ok:
        what = {"int": "a positive integer", "number": "a finite number > 0", "bool": "true or false",
                "str": "a string"}[kind]
        raise ConfigError(f"{where}.{name} must be {what}, got {v!r}", path=conf, field=f"{where}.{name}")
    return v


def _config(folder: Path) -> TemporalConfig:
    """The config from ``conf.yaml``, every field checked (errors name ``conf.yaml`` and the field)."""
    import yaml

    conf = folder / CONF
    if not conf.is_file():
        raise MissingFileError("a temporal SAE folder has conf.yaml", path=conf)
    try:
        raw = yaml.safe_load(read_config_bytes(conf))
    except yaml.YAMLError as e:
        raise CorruptFileError(f"not valid YAML: {e}", path=conf) from None
    if not isinstance(raw, dict):
        raise ConfigError("conf.yaml must be a mapping", path=conf)
    for sec in ("llm", "sae"):
        if not isinstance(raw.get(sec), dict):
            raise ConfigError(f"conf.yaml has no {sec}: mapping", path=conf, field=sec)
    llm, sae = raw["llm"], raw["sae"]
    sae_type = _field(sae, "sae_type", conf, "sae", "str", default="temporal")
    if sae_type != "temporal":
        raise ConfigError(f"sae.sae_type is {sae_type!r}; this loader reads temporal SAEs", path=conf,
                          field="sae.sae_type")
    d_in = _field(llm, "dimin", conf, "llm", "int")
    exp = _field(sae, "exp_factor", conf, "sae", "number")
    diff = _field(sae, "sae_diff_type", conf, "sae", "str")
    if diff not in DIFF_TYPES:
        raise ConfigError(f"sae.sae_diff_type {diff!r} is not one of {', '.join(DIFF_TYPES)}", path=conf,
                          field="sae.sae_diff_type")
    k = _field(sae, "kval_topk", conf, "sae", "int") if diff in ("topk", "batchtopk") else None
    if diff == "batchtopk" and not _field(sae, "inference_mode_batchtopk", conf, "sae", "bool", default=False):
        raise UnsupportedSAEError(
            "sae_diff_type batchtopk with inference_mode_batchtopk false: the original keeps the top k*batch*seq codes "
            "of the whole batch (a sequence's codes depend on the other sequences) and updates expected_min_act on "
            "every forward, which is not a function of one sequence; set sae.inference_mode_batchtopk: true in "
            "conf.yaml to load its threshold (inference) mode", path=conf, field="sae.inference_mode_batchtopk")
    fields = {name: _field(sae, name, conf, "sae", kind) for name, kind in (
        ("n_heads", "int"), ("n_attn_layers", "int"), ("bottleneck_factor", "int"), ("tied_weights", "bool"),
        ("scaling_factor", "number"))}
    try:  # each field is well-typed; what remains is whether they fit together
        cfg = TemporalConfig(
            d_in=d_in, d_sae=int(d_in * exp), sae_diff_type=diff, k=k, **fields,
            model_name=llm.get("model_hf_name") if isinstance(llm.get("model_hf_name"), str) else None)
    except ConfigError as e:  # a combination of fields that does not fit: name the conf field
        conf_field = {"k": "sae.kval_topk", "d_sae": "sae.exp_factor", "d_in": "llm.dimin"}.get(
            e.field or "", f"sae.{e.field}")
        raise type(e)(e.message, path=conf, field=conf_field) from None
    m = next((re.fullmatch(r"layer_(\d+)", part) for part in reversed(folder.resolve().parts)
              if re.fullmatch(r"layer_(\d+)", part)), None)
    if m is not None:
        cfg.hook_name = f"blocks.{int(m.group(1))}.hook_resid_post"
    data = raw.get("data")
    if isinstance(data, dict) and isinstance(data.get("dtype"), str):
        cfg.extra["training_autocast_dtype"] = data["dtype"]
    return cfg


def _expected(cfg: TemporalConfig) -> dict[str, tuple[int, ...]]:
    """The checkpoint's keys and shapes (``b`` checked separately: ``[1, d_in]`` or ``[d_in]``)."""
    n, d, a = cfg.d_sae, cfg.d_in, cfg.d_attn
    out: dict[str, tuple[int, ...]] = {"D": (n, d), "b": (1, d)}
    if not cfg.tied_weights:
        out["E"] = (d, n)
    if cfg.sae_diff_type == "batchtopk":
        out["expected_min_act"] = (1,)
    for i in range(cfg.n_attn_layers):
        for name, width in (("q_target", a), ("k_ctx", a), ("v_ctx", n), ("c_proj", n)):
            out[f"attn_layers.{i}.{name}.weight"] = (width, n)
            out[f"attn_layers.{i}.{name}.bias"] = (width,)
    return out


@register_loader("temporal-sae", files=[CONF, CKPT], detect=detect, kind="temporal",  # type: ignore[arg-type]
                 description="canrager temporal SAEs (conf.yaml + latest_ckpt.safetensors) -> sae_hub.TemporalSAE")
def load(path: Path, options: dict[str, Any]) -> tuple[TemporalConfig, dict[str, torch.Tensor]]:
    """Read a temporal SAE folder into a :class:`TemporalConfig` and canonical tensors (see the module docstring)."""
    folder = path if path.is_dir() else path.parent
    cfg = _config(folder)
    ckpt = folder / CKPT
    if not ckpt.is_file():
        raise MissingFileError("a temporal SAE folder has latest_ckpt.safetensors", path=ckpt)
    sd, _ = read_safetensors(ckpt)
    expected = _expected(cfg)
    missing = [k for k in expected if k not in sd]
    if missing:
        raise ShapeMismatchError(f"missing tensor(s) {missing[:8]} for the temporal SAE conf.yaml describes",
                                 path=ckpt, field=missing[0])
    unexpected = sorted(k for k in sd if k not in expected)
    if unexpected:
        raise ShapeMismatchError(f"unexpected tensor(s) {unexpected[:8]} for the temporal SAE conf.yaml describes "
                                 f"(tied_weights={cfg.tied_weights}, sae_diff_type={cfg.sae_diff_type!r}, "
                                 f"n_attn_layers={cfg.n_attn_layers})", path=ckpt, field=unexpected[0])
    for key, shape in expected.items():
        t = sd[key]
        ok = tuple(t.shape) == shape or (key == "b" and tuple(t.shape) == (cfg.d_in,))
        if not ok:
            raise ShapeMismatchError(f"tensor {key} has shape {list(t.shape)}; conf.yaml (d_in={cfg.d_in}, "
                                     f"d_sae={cfg.d_sae}, d_attn={cfg.d_attn}) needs {list(shape)}", path=ckpt,
                                     field=key)
        if not t.is_floating_point():
            raise ShapeMismatchError(f"tensor {key} has dtype {t.dtype}; weights must be floating point", path=ckpt,
                                     field=key)
    out = {"W_dec": sd["D"], "b_dec": sd["b"].reshape(cfg.d_in)}
    if not cfg.tied_weights:
        out["W_enc"] = sd["E"]
    if cfg.sae_diff_type == "batchtopk":
        out["threshold"] = sd["expected_min_act"].reshape(())
    for i in range(cfg.n_attn_layers):
        for name, short in _LINEARS:
            out[f"attn.{i}.W_{short}"] = sd[f"attn_layers.{i}.{name}.weight"].T
            out[f"attn.{i}.b_{short}"] = sd[f"attn_layers.{i}.{name}.bias"]
    return cfg, out
