"""overcomplete (KempnerInstitute/overcomplete 0.3.0) and its ``psn`` twin: whole-module pickles and state dicts.

Files: ``module.pt`` (``torch.save(model)``, read with :func:`sae_hub.safe_pickle.safe_load`: nothing from it
runs) or ``state_dict.pt`` (``torch.save(model.state_dict())``). A folder holding both loads ``module.pt``,
which also knows ``top_k`` / ``running_threshold`` / the dictionary normalisation.

Semantics (overcomplete has no decoder bias and no input centering):

* encoder: the default ``linear`` factory entry, ``pre = x @ W.T + b`` (``encoder.final_block.0``), or
  ``mlp_bn_1`` whose eval-mode BatchNorm is folded exactly into ``W, b`` (F6), or an untied
  ``TieableEncoder`` (``encoder.weight`` [+ ``encoder.bias``]). ``codes = relu(pre)``.
* decoder: ``W_dec = normalization(dictionary._weights) * exp(dictionary.multiplier)``, ``b_dec = 0``.
  A module pickled in eval mode carries the ``_fused_dictionary`` the library uses at inference; that is
  used as is. Relaxed-archetypal dictionaries: ``(rowstoch(relu(W)) @ C + clamp_relax(Relax, delta))
  * exp(multiplier)``, exactly as the library fuses them on ``.eval()``.
* ``SAE`` -> relu; ``TopKSAE`` -> topk with ``k = top_k``; ``JumpSAE`` -> jumprelu with
  ``threshold = exp(thresholds)``; ``BatchTopKSAE`` -> its *eval-mode* rule, ``relu(pre) >= running_threshold``,
  i.e. jumprelu with ``threshold = full(d_sae, running_threshold)`` (its ``top_k`` counts activations per
  training *batch* and is never mapped to a per-row k).
* overcomplete keeps activations *equal* to the threshold (``>=``); sae-hub's jumprelu drops them (``>``).
  The two differ only on exact float equality.

State dicts do not say which class wrote them: ``SAE``, ``TopKSAE`` and ``BatchTopKSAE`` have the same keys.
The rule: a ``thresholds`` key means ``JumpSAE``; otherwise the caller must say, with ``top_k=K`` (TopKSAE),
``running_threshold=T`` (BatchTopKSAE, eval mode) or ``architecture="relu"`` (SAE). Nothing is guessed.

Refused with :class:`UnsupportedSAEError` and the reason: ``MpSAE`` / ``OMPSAE`` (matching pursuit),
``QSAE`` (quantised codes), non-linear encoders (``mlp_ln_*``, ``mlp_*_3``, attention, resnet), tied encoders,
BatchNorm without running statistics, and non-ReLU output activations.

Options: ``architecture`` (``relu`` | ``topk`` | ``batchtopk`` | ``jumprelu``), ``top_k``,
``running_threshold``, ``normalization`` (state dicts: ``l2`` | ``max_l2`` | ``l1`` | ``max_l1`` |
``identity``; inferred from the row norms when omitted), ``delta`` (relaxed-archetypal state dicts, default
1.0), ``bn_eps`` (``mlp_bn_1`` state dicts, default 1e-5).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sae_hub.config import SAEConfig
from sae_hub.errors import ConfigError, CorruptFileError, UnsupportedSAEError
from sae_hub.loading import register_loader
from sae_hub.safe_pickle import Stub, module_state_dict, peek_for_detection, qualname_of, safe_load

MODULE_FILE = "module.pt"
STATE_DICT_FILE = "state_dict.pt"
_PREFIXES = ("overcomplete.sae.", "psn.sae.")
_SUPPORTED = {"SAE", "TopKSAE", "BatchTopKSAE", "JumpSAE", "RATopKSAE", "RAJumpSAE"}
_REFUSED = {
    "MpSAE": "MpSAE computes codes by greedy matching pursuit over the dictionary, not by a linear encoder "
             "and a threshold",
    "OMPSAE": "OMPSAE computes codes by orthogonal matching pursuit over the dictionary, not by a linear "
              "encoder and a threshold",
    "QSAE": "QSAE quantises its codes to learned levels, which no relu/jumprelu/topk SAE reproduces",
}
_NORMALIZATIONS = ("l2", "max_l2", "l1", "max_l1", "identity")
_ARCHITECTURES = ("relu", "topk", "batchtopk", "jumprelu")


# ---------------------------------------------------------------------------------------------- detection


def _is_overcomplete_object(obj: Any) -> bool:
    name = qualname_of(obj)
    if name is not None:
        return name.startswith(_PREFIXES)
    if isinstance(obj, Mapping) and obj and all(isinstance(k, str) for k in obj):
        keys = set(obj)
        return bool({"dictionary._weights", "dictionary.W"} & keys) and all(
            k.startswith(("encoder.", "dictionary.")) or k in ("thresholds", "Q") for k in keys
        )
    return False


def _pick(path: Path) -> Path | None:
    """The file to read: ``path`` itself, or ``module.pt`` (preferred) / ``state_dict.pt`` in a folder."""
    if path.is_file():
        return path
    for name in (MODULE_FILE, STATE_DICT_FILE):
        if (path / name).is_file():
            return path / name
    return None


def detect(path: Path) -> bool:
    """A ``.pt`` file, or a folder's ``module.pt`` / ``state_dict.pt``, holding an overcomplete SAE.

    Reads only the pickle (no tensor data). A corrupt file raises its typed error here, and so does an unsafe
    one named ``module.pt`` / ``state_dict.pt``; an unsafe file of another name is just not claimed.
    """
    if path.is_file():
        own = path.name in (MODULE_FILE, STATE_DICT_FILE)
        return path.suffix in (".pt", ".pth") and _is_overcomplete_object(peek_for_detection(path, own=own))
    return any((path / n).is_file() and _is_overcomplete_object(peek_for_detection(path / n, own=True))
               for n in (MODULE_FILE, STATE_DICT_FILE))


# ---------------------------------------------------------------------------------------------- loading


@dataclass
class _Source:
    """What the file told us: the class (if pickled), the flat tensors and the pickled plain attributes."""

    path: Path
    qualname: str | None
    state: dict[str, torch.Tensor]
    top_k: Any = None
    running_threshold: Any = None
    normalization: str | None = None
    fused: torch.Tensor | None = None
    delta: float | None = None
    bn_eps: float | None = None
    notes: list[str] = field(default_factory=list)


@register_loader("overcomplete", files=[MODULE_FILE, STATE_DICT_FILE], detect=detect,
                 options=["architecture", "top_k", "running_threshold", "normalization", "delta", "bn_eps"])
def load(path: Path, options: dict[str, Any]) -> tuple[SAEConfig, dict[str, torch.Tensor]]:
    """overcomplete / psn SAE (``module.pt`` pickle or ``state_dict.pt``)."""
    file = _pick(path)
    if file is None:
        from sae_hub.errors import MissingFileError

        raise MissingFileError(f"no {MODULE_FILE} or {STATE_DICT_FILE} holding an overcomplete SAE", path=path)
    obj = safe_load(file)
    if isinstance(obj, Stub):
        src = _from_module(obj, file)
    elif isinstance(obj, Mapping):
        state = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if len(state) != len(obj):
            raise CorruptFileError("state dict holds non-tensor values", path=file)
        src = _Source(file, None, state)
    else:
        raise CorruptFileError(f"expected a pickled overcomplete module or a state dict, got "
                               f"{type(obj).__name__}", path=file)
    return _convert(src, options)


def _short(qualname: str) -> str:
    return qualname.rsplit(".", 1)[-1]


def _attr(obj: Any, name: str) -> Any:
    return obj.__dict__.get(name) if isinstance(obj, Stub) else None


def _modules(obj: Any) -> dict[str, Any]:
    mods = _attr(obj, "_modules")
    return dict(mods) if isinstance(mods, Mapping) else {}


def _from_module(top: Stub, file: Path) -> _Source:
    qn = top.qualname
    if not qn.startswith(_PREFIXES):
        raise UnsupportedSAEError(f"the pickle holds {qn}, not an overcomplete SAE", path=file)
    short = _short(qn)
    if short in _REFUSED:
        raise UnsupportedSAEError(f"{qn}: {_REFUSED[short]}", path=file)
    if short not in _SUPPORTED:
        raise UnsupportedSAEError(
            f"{qn} is not a class this loader knows (supported: {', '.join(sorted(_SUPPORTED))})", path=file
        )
    src = _Source(file, qn, module_state_dict(top, path=file))
    src.top_k = _attr(top, "top_k")
    src.running_threshold = _attr(top, "running_threshold")
    mods = _modules(top)
    _check_encoder(mods.get("encoder"), file, src)
    dictionary = mods.get("dictionary")
    if isinstance(dictionary, Stub):
        norm = qualname_of(_attr(dictionary, "normalization"))
        if norm is not None:
            src.normalization = _short(norm).removeprefix("normalize_")
        fused = _attr(dictionary, "_fused_dictionary")
        if _attr(dictionary, "training") is False and isinstance(fused, torch.Tensor):
            src.fused = fused
        delta = _attr(dictionary, "delta")
        if isinstance(delta, (int, float)) and not isinstance(delta, bool):
            src.delta = float(delta)
    return src


def _check_encoder(enc: Any, file: Path, src: _Source) -> None:
    """Refuse encoders that are not one linear layer (+ eval BatchNorm) followed by ReLU."""
    if enc is None:
        return
    qn = qualname_of(enc) or type(enc).__name__
    short = _short(qn)
    if short in ("AttentionEncoder", "ResNetEncoder"):
        raise UnsupportedSAEError(f"encoder {qn} is non-linear (attention / convolution blocks); "
                                  "it cannot be written as x @ W_enc + b_enc", path=file)
    if short == "Identity":
        raise UnsupportedSAEError("an identity encoder (matching-pursuit style) has no linear encoder to "
                                  "convert", path=file)
    if short != "MLPEncoder":
        return  # TieableEncoder and friends: decided from the keys
    blocks = _modules(_modules(enc).get("mlp_blocks"))
    if blocks:
        raise UnsupportedSAEError(f"encoder {qn} has {len(blocks)} hidden MLP block(s) (mlp_*_3 style); "
                                  "a multi-layer encoder is not linear", path=file)
    final = _modules(_modules(enc).get("final_block"))
    parts = [qualname_of(final[k]) or "?" for k in sorted(final, key=lambda s: int(s) if s.isdigit() else 0)]
    act = qualname_of(_modules(enc).get("final_activation"))
    if act is None and parts and _short(parts[-1]) not in ("Linear", "Identity", "BatchNorm1d", "LayerNorm"):
        act = parts.pop()
    if act is not None and _short(act) != "ReLU":
        raise UnsupportedSAEError(f"encoder output activation {act} is not ReLU", path=file)
    for i, part in enumerate(parts[1:], start=1):
        kind = _short(part)
        if kind == "Identity":
            continue
        if kind == "BatchNorm1d":
            buffers = _attr(final.get(str(i)), "_buffers")
            if not isinstance(buffers, Mapping) or not isinstance(buffers.get("running_mean"), torch.Tensor):
                raise UnsupportedSAEError("the encoder's BatchNorm tracks no running statistics, so it "
                                          "normalises with each batch's statistics at inference", path=file)
            eps = _attr(final.get(str(i)), "eps")
            if isinstance(eps, (int, float)):
                src.bn_eps = float(eps)
            continue
        if kind == "LayerNorm":
            raise UnsupportedSAEError("the encoder has a LayerNorm after its linear layer (mlp_ln_*): a "
                                      "per-row normalisation of the pre-activations is not linear", path=file)
        raise UnsupportedSAEError(f"encoder block {part} is not supported", path=file)


def _opt_int(value: Any, name: str, path: Path | None = None) -> int | None:
    if value is None:
        return None
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
            or int(value) != value or value <= 0):
        raise ConfigError(f"{name} must be a positive integer, got {value!r}", path=path, field=name)
    return int(value)


def _opt_float(value: Any, name: str, path: Path | None = None) -> float | None:
    if value is None:
        return None
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value!r}", path=path, field=name)
    return float(value)


def _arch_of(src: _Source, options: dict[str, Any]) -> tuple[str, str]:
    """(class short name, canonical architecture) from the pickle or the caller's options."""
    arch_opt = options.get("architecture")
    if arch_opt is not None and arch_opt not in _ARCHITECTURES:
        raise ConfigError(f"architecture must be one of {', '.join(_ARCHITECTURES)}, got {arch_opt!r}",
                          field="architecture")
    has_thresholds = "thresholds" in src.state
    if src.qualname is not None:
        short = _short(src.qualname)
        arch = {"SAE": "relu", "TopKSAE": "topk", "RATopKSAE": "topk", "BatchTopKSAE": "batchtopk",
                "JumpSAE": "jumprelu", "RAJumpSAE": "jumprelu"}[short]
        if arch_opt is not None and arch_opt != arch:
            raise ConfigError(f"architecture={arch_opt!r} contradicts the pickled class {src.qualname}",
                              path=src.path, field="architecture")
        return short, arch
    if "Q" in src.state:
        raise UnsupportedSAEError(f"a 'Q' tensor means QSAE: {_REFUSED['QSAE']}", path=src.path)
    given = [n for n in ("top_k", "running_threshold") if options.get(n) is not None]
    if has_thresholds:
        if given or arch_opt not in (None, "jumprelu"):
            raise ConfigError("a 'thresholds' tensor means JumpSAE; top_k / running_threshold / another "
                              "architecture do not apply", path=src.path, field=(given or ["architecture"])[0])
        return "JumpSAE", "jumprelu"
    if len(given) > 1:
        raise ConfigError("give either top_k (TopKSAE) or running_threshold (BatchTopKSAE), not both",
                          path=src.path, field="top_k")
    # arch_opt was checked against _ARCHITECTURES above, so it is a str here when given
    chosen: str | None = arch_opt if arch_opt is not None else {
        "top_k": "topk", "running_threshold": "batchtopk"}.get(given[0] if given else "")
    if chosen is None:
        raise ConfigError(
            "an overcomplete state dict does not record its class: SAE, TopKSAE and BatchTopKSAE have the same "
            "keys. Say which: architecture='relu' (SAE), top_k=K (TopKSAE), or running_threshold=T "
            "(BatchTopKSAE, eval mode). Loading the pickled module (module.pt) needs none of these",
            path=src.path, field="architecture",
        )
    arch = chosen
    if arch == "jumprelu":
        raise ConfigError("architecture='jumprelu' needs a 'thresholds' tensor (JumpSAE), this file has none",
                          path=src.path, field="architecture")
    if arch == "relu" and given:
        raise ConfigError(f"architecture='relu' does not take {given[0]}", path=src.path, field=given[0])
    short = {"relu": "SAE", "topk": "TopKSAE", "batchtopk": "BatchTopKSAE"}[arch]
    return short, arch


def _encoder(src: _Source, options: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """``(W [d_sae, d_in], b [d_sae], conversions)`` of the (folded) linear encoder."""
    s = src.state
    enc_keys = sorted(k for k in s if k.startswith("encoder."))
    bad = [k for k in enc_keys if k.startswith(("encoder.mlp_blocks.", "encoder.attention_blocks.",
                                                "encoder.resnet_blocks."))]
    if bad:
        raise UnsupportedSAEError(f"the encoder has hidden blocks ({bad[0]}, ...): a multi-layer, attention or "
                                  "resnet encoder is not linear", path=src.path)
    if any(k.startswith("encoder.tied_to.") for k in enc_keys) or (
            enc_keys == ["encoder.bias"] and "encoder.weight" not in s):
        raise UnsupportedSAEError("tied encoders (sae.tied()) are not supported: their encoder reuses the "
                                  "dictionary and that coupling cannot be verified here", path=src.path)
    if not enc_keys:
        raise UnsupportedSAEError("no encoder tensors: an identity / matching-pursuit encoder (MpSAE, OMPSAE) "
                                  "computes codes iteratively, not with a linear encoder", path=src.path)
    notes: list[str] = []
    if "encoder.weight" in s:  # untied TieableEncoder
        extra = [k for k in enc_keys if k not in ("encoder.weight", "encoder.bias")]
        if extra:
            raise UnsupportedSAEError(f"unexpected encoder tensors {extra}", path=src.path)
        W = s["encoder.weight"]
        b = s.get("encoder.bias")
        if b is None:
            b = torch.zeros(W.shape[0], dtype=W.dtype)
            notes.append("b_enc = 0 (untied encoder without bias)")
        return W, b, notes
    weight = s.get("encoder.final_block.0.weight")
    if weight is None:
        raise UnsupportedSAEError(f"unrecognised encoder tensors {enc_keys[:4]}", path=src.path)
    W = weight
    bias = s.get("encoder.final_block.0.bias")
    b = bias if bias is not None else torch.zeros(W.shape[0], dtype=W.dtype)
    norm_keys = sorted(k for k in enc_keys if k.startswith("encoder.final_block.1."))
    other = [k for k in enc_keys if not k.startswith(("encoder.final_block.0.", "encoder.final_block.1."))]
    if other:
        raise UnsupportedSAEError(f"unexpected encoder tensors {other[:4]} (a non-linear encoder)", path=src.path)
    if norm_keys:
        if "encoder.final_block.1.running_mean" not in s:
            raise UnsupportedSAEError(
                "the encoder normalises its pre-activations per row (LayerNorm, mlp_ln_*) or with batch "
                "statistics; that is not linear", path=src.path)
        eps = _opt_float(options.get("bn_eps"), "bn_eps")
        if eps is None:
            eps = src.bn_eps if src.bn_eps is not None else 1e-5
        elif src.bn_eps is not None and not math.isclose(eps, src.bn_eps):
            raise ConfigError(f"bn_eps={eps} contradicts the pickled BatchNorm eps={src.bn_eps}",
                              path=src.path, field="bn_eps")
        mean = s["encoder.final_block.1.running_mean"].double()
        var = s["encoder.final_block.1.running_var"].double()
        gamma = s.get("encoder.final_block.1.weight")
        beta = s.get("encoder.final_block.1.bias")
        scale = (gamma.double() if gamma is not None else torch.ones_like(mean)) / torch.sqrt(var + eps)
        shift = beta.double() if beta is not None else torch.zeros_like(mean)
        W = (W.double() * scale[:, None]).to(W.dtype)
        b = ((b.double() - mean) * scale + shift).to(b.dtype)
        notes.append(f"encoder BatchNorm1d folded (eval-mode running statistics, eps={eps:g}): "
                     "W *= gamma/sqrt(var+eps), b = (b-mean)*gamma/sqrt(var+eps) + beta")
    return W, b, notes


def _normalize(w: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "l2":
        return w / (torch.norm(w, p=2, dim=1, keepdim=True) + 1e-8)
    if kind == "max_l2":
        return w / torch.amax(torch.norm(w, p=2, dim=1, keepdim=True), dim=0, keepdim=True)
    if kind == "l1":
        return w / (torch.norm(w, p=1, dim=1, keepdim=True) + 1e-8)
    if kind == "max_l1":
        return w / torch.amax(torch.norm(w, p=1, dim=1, keepdim=True), dim=0, keepdim=True)
    return w


def _infer_normalization(w: torch.Tensor) -> str | None:
    l2 = w.float().norm(dim=1)
    l1 = w.float().norm(p=1, dim=1)
    tol = 1e-2
    if bool(((l2 - 1).abs() <= tol).all()):
        return "l2"
    if abs(float(l2.max()) - 1) <= tol:
        return "max_l2"
    if bool(((l1 - 1).abs() <= tol).all()):
        return "l1"
    if abs(float(l1.max()) - 1) <= tol:
        return "max_l1"
    return None


def _decoder(src: _Source, options: dict[str, Any]) -> tuple[torch.Tensor, list[str]]:
    s = src.state
    kind = options.get("normalization")
    if kind is not None and kind not in _NORMALIZATIONS:
        raise ConfigError(f"normalization must be one of {', '.join(_NORMALIZATIONS)}, got {kind!r}",
                          field="normalization")
    if kind is not None and src.normalization is not None and src.normalization != kind:
        raise ConfigError(f"normalization={kind!r} contradicts the pickled normalize_{src.normalization}",
                          path=src.path, field="normalization")
    if src.fused is not None:
        return src.fused, ["W_dec = the pickled _fused_dictionary (eval mode: what the library decodes with)"]
    mult = s.get("dictionary.multiplier")
    scale = torch.exp(mult.float()) if mult is not None else torch.tensor(1.0)
    if "dictionary.W" in s:  # RelaxedArchetypalDictionary
        delta = _opt_float(options.get("delta"), "delta")
        if delta is not None and src.delta is not None and not math.isclose(delta, src.delta):
            raise ConfigError(f"delta={delta} contradicts the pickled delta={src.delta}", path=src.path,
                              field="delta")
        if delta is None:
            delta = src.delta if src.delta is not None else 1.0
        W, C, relax = s["dictionary.W"].float(), s["dictionary.C"].float(), s["dictionary.Relax"].float()
        W = torch.relu(W)
        W = W / (W.sum(dim=-1, keepdim=True) + 1e-8)
        relax = relax * torch.clamp(delta / relax.norm(dim=-1, keepdim=True), max=1)
        D = (W @ C + relax) * scale
        return D.to(s["dictionary.W"].dtype), [
            f"W_dec = (rowstoch(relu(W)) @ C + Relax*min(1, delta/|Relax|)) * exp(multiplier), delta={delta:g}"
        ]
    w = s.get("dictionary._weights")
    if w is None:
        raise CorruptFileError("no dictionary tensors (dictionary._weights or dictionary.W/C/Relax)",
                               path=src.path)
    note = ""
    if kind is None:
        kind = src.normalization
        if kind is not None and kind not in _NORMALIZATIONS:
            raise UnsupportedSAEError(f"the dictionary uses a custom normalisation ({kind}) and the pickle holds "
                                      "no eval-mode fused dictionary", path=src.path)
        if kind is None:
            kind = _infer_normalization(w)
            note = " (inferred from the row norms)"
            if kind is None:
                raise ConfigError("cannot tell the dictionary normalisation from the state dict (rows are neither "
                                  "unit-L2 nor unit-L1); pass normalization='l2'|'max_l2'|'l1'|'max_l1'|'identity'",
                                  path=src.path, field="normalization")
    D = (_normalize(w.float(), kind) * scale).to(w.dtype)
    return D, [f"W_dec = normalize_{kind}(dictionary._weights) * exp(multiplier){note}"]


def _convert(src: _Source, options: dict[str, Any]) -> tuple[SAEConfig, dict[str, torch.Tensor]]:
    short, arch = _arch_of(src, options)
    W, b, enc_notes = _encoder(src, options)
    D, dec_notes = _decoder(src, options)
    d_sae, d_in = W.shape
    if tuple(D.shape) != (d_sae, d_in) or tuple(b.shape) != (d_sae,):
        raise CorruptFileError(f"encoder [{d_sae}, {d_in}] and dictionary {list(D.shape)} disagree", path=src.path)
    tensors: dict[str, torch.Tensor] = {
        "W_enc": W.T, "b_enc": b, "W_dec": D,
        "b_dec": torch.zeros(d_in, dtype=D.dtype),
    }
    notes = enc_notes + dec_notes
    k = None
    canonical = arch
    if arch == "topk":
        k = _opt_int(options.get("top_k"), "top_k")
        pickled = _opt_int(src.top_k, "top_k", src.path)
        if k is not None and pickled is not None and k != pickled:
            raise ConfigError(f"top_k={k} contradicts the pickled top_k={pickled}", path=src.path, field="top_k")
        k = k if k is not None else pickled
        if k is None:
            raise ConfigError("TopKSAE needs top_k (not stored in state dicts): pass top_k=K",
                              path=src.path, field="top_k")
        if k > d_sae:
            raise ConfigError(f"top_k={k} exceeds the number of features d_sae={d_sae}", path=src.path,
                              field="top_k")
    elif arch == "batchtopk":
        t = _opt_float(options.get("running_threshold"), "running_threshold")
        pickled_t = _opt_float(src.running_threshold, "running_threshold", src.path)
        if t is not None and pickled_t is not None and not math.isclose(t, pickled_t, rel_tol=1e-6):
            raise ConfigError(f"running_threshold={t} contradicts the pickled value {pickled_t}",
                              path=src.path, field="running_threshold")
        t = t if t is not None else pickled_t
        if t is None:
            raise UnsupportedSAEError("this BatchTopKSAE has no running_threshold (never trained in train mode), "
                                      "so its eval-mode activation is undefined; its per-batch top_k cannot be "
                                      "turned into a per-row rule", path=src.path)
        if t > 0:
            canonical = "jumprelu"
            tensors["threshold"] = torch.full((d_sae,), t, dtype=D.dtype)
            notes.append(f"BatchTopKSAE eval mode: relu(pre) >= running_threshold -> jumprelu, threshold = "
                         f"full({d_sae}, {t!r}) (overcomplete keeps equality, sae-hub uses >)")
        else:
            canonical = "relu"
            notes.append(f"BatchTopKSAE eval mode with running_threshold={t!r} <= 0 keeps every relu(pre): relu")
    elif arch == "jumprelu":
        tensors["threshold"] = torch.exp(src.state["thresholds"].float()).to(D.dtype)
        notes.append("threshold = exp(thresholds) (overcomplete keeps relu(pre) >= threshold, sae-hub keeps "
                     "pre > threshold: they differ only on exact equality)")
    cfg = SAEConfig(architecture=canonical, d_in=int(d_in), d_sae=int(d_sae), k=k,
                    dtype=str(D.dtype).removeprefix("torch."))
    cfg.extra["source_class"] = src.qualname or f"overcomplete state dict ({short})"
    for note in notes:
        cfg.record(note)
    cfg.provenance.source_files = [{"name": src.path.name}]
    return cfg, tensors
