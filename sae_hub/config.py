"""SAEConfig: everything needed to run an SAE and to know where it came from.

The on-disk form of this config *is* SAELens 6's ``cfg.json`` (``to_dict``/``from_dict``), so a folder saved
by sae-hub loads in SAELens 6 and any SAELens folder (6.x, or the flat pre-6 layout) loads here. Fields
SAELens has no slot for (provenance, ``hf_hook_name``, licence, a runtime scaling factor) travel inside
SAELens's free-form ``metadata`` block, which SAELens keeps verbatim.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from sae_hub.errors import ConfigError, UnknownArchitectureError

__all__ = ["ARCHITECTURES", "NORMALIZATIONS", "Provenance", "SAEConfig", "param_shapes"]

Architecture = Literal["relu", "jumprelu", "topk", "gated"]
ARCHITECTURES: tuple[str, ...] = get_args(Architecture)

# What happens to an input row before the encoder (and is undone after the decoder):
# - none:                     nothing.
# - expected_average_only_in: multiply by the constant ``norm_scaling_factor`` (divide the output by
#                             ``norm_scaling_factor_out``). With no factor recorded this is a no-op, exactly as
#                             in SAELens 6, which only warns; ``fold_activation_norm_scaling_factor`` folds it.
# - constant_norm_rescale:    per token, scale to norm sqrt(d_in) (SAELens; lm-saes "token-wise").
# - layer_norm:               per token, (x - mean) / (unbiased std + 1e-5); output * std + mean (SAELens).
# - zscore:                   per token, (x - mean) / (population std + 1e-5); output * (std + 1e-5) + mean
#                             (nanoSAE's ``dataset_normalization="zscore"``). Not a SAELens mode.
Normalization = Literal["none", "expected_average_only_in", "constant_norm_rescale", "layer_norm", "zscore"]
NORMALIZATIONS: tuple[str, ...] = get_args(Normalization)
PER_TOKEN_NORMALIZATIONS = ("constant_norm_rescale", "layer_norm", "zscore")

# SAELens architecture names <-> ours. SAELens calls the plain ReLU SAE "standard", and encodes
# "transcoder" and "has W_skip" in the architecture name.
_FROM_SAELENS: dict[str, tuple[str, bool, bool]] = {
    # name: (architecture, is_transcoder, has_skip)
    "standard": ("relu", False, False),
    "relu": ("relu", False, False),
    "jumprelu": ("jumprelu", False, False),
    "topk": ("topk", False, False),
    "gated": ("gated", False, False),
    "transcoder": ("relu", True, False),
    "skip_transcoder": ("relu", True, True),
    "jumprelu_transcoder": ("jumprelu", True, False),
    "jumprelu_skip_transcoder": ("jumprelu", True, True),
    # Not SAELens names; written by sae-hub for variants SAELens cannot hold, so SAELens refuses them loudly.
    "topk_transcoder": ("topk", True, False),
    "topk_skip_transcoder": ("topk", True, True),
    "gated_transcoder": ("gated", True, False),
    "gated_skip_transcoder": ("gated", True, True),
}

SAELENS_SCHEMA_VERSION = "6.0.0"

# A folder saved with ``saelens_compatible=False`` for something SAELens cannot compute: its architecture gets
# this prefix (an architecture SAELens does not know, so it refuses the folder loudly instead of misreading
# it) and its metadata a block under this key with the reasons.
SAE_HUB_ONLY_PREFIX = "sae_hub_only:"
SAE_HUB_ONLY_KEY = "sae_hub_only"

_METADATA_FIELDS = (
    "model_name",
    "hook_name",
    "hook_name_out",
    "hf_hook_name",
    "hf_hook_name_out",
    "hook_head_index",
    "prepend_bos",
    "context_size",
    "dataset_path",
    "neuronpedia_id",
    "license",
)


@dataclass
class Provenance:
    """Where the weights came from and what was done to them, so a converted SAE can be audited."""

    source_format: str | None = None
    source_files: list[dict[str, str]] = field(default_factory=list)  # [{"name": ..., "sha256": ...}]
    conversions: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> Provenance:
        d = d or {}
        return cls(
            source_format=d.get("source_format"),
            source_files=[dict(f) for f in d.get("source_files", [])],
            conversions=list(d.get("conversions", [])),
        )


@dataclass
class SAEConfig:
    """Typed config of an :class:`~sae_hub.SAE`.

    The math fields (architecture to ``reshape_activations``) fully determine what the SAE computes; the
    metadata fields say where in which model it reads and writes, and ``provenance`` how it was produced.
    ``d_out`` is ``d_in`` except for transcoders, whose output hook (``hook_name_out``) differs from the input.
    """

    architecture: str
    d_in: int
    d_sae: int
    d_out: int | None = None
    k: int | None = None
    apply_b_dec_to_input: bool = False
    rescale_acts_by_decoder_norm: bool = False  # topk: select on z*||W_dec_j||, report z*||W_dec_j|| (SAELens)
    rank_by_decoder_norm: bool = False  # topk: select on z*||W_dec_j||, report z (lm-saes decoder-norm sparsity)
    has_skip: bool = False
    normalize_activations: str = "none"
    norm_scaling_factor: float | None = None
    norm_scaling_factor_out: float | None = None
    reshape_activations: str = "none"
    dtype: str = "float32"
    device: str = "cpu"
    # metadata
    model_name: str | None = None
    hook_name: str | None = None
    hook_name_out: str | None = None
    hf_hook_name: str | None = None
    hf_hook_name_out: str | None = None
    hook_head_index: int | None = None
    prepend_bos: bool | None = None
    context_size: int | None = None
    dataset_path: str | None = None
    neuronpedia_id: str | None = None
    license: str | None = None
    provenance: Provenance = field(default_factory=Provenance)
    extra: dict[str, Any] = field(default_factory=dict)  # other metadata, kept verbatim for round trips

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise UnknownArchitectureError(
                f"unknown architecture {self.architecture!r}; sae-hub implements {', '.join(ARCHITECTURES)}",
                field="architecture",
            )
        # Types first, strictly (a string is not a bool, a bool is not an int, 2.5 is not an int): a JSON
        # "false" is truthy and a JSON true is 1, so a lenient check would silently compute another SAE.
        for name in ("d_in", "d_sae"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}", field=name)
        if self.d_out is None:
            self.d_out = self.d_in
        elif not isinstance(self.d_out, int) or isinstance(self.d_out, bool) or self.d_out <= 0:
            raise ConfigError(f"d_out must be a positive integer, got {self.d_out!r}", field="d_out")
        for flag in ("apply_b_dec_to_input", "rescale_acts_by_decoder_norm", "rank_by_decoder_norm", "has_skip"):
            if not isinstance(getattr(self, flag), bool):
                raise ConfigError(f"{flag} must be true or false, got {getattr(self, flag)!r}", field=flag)
        if self.prepend_bos is not None and not isinstance(self.prepend_bos, bool):
            raise ConfigError(f"prepend_bos must be true, false or null, got {self.prepend_bos!r}",
                              field="prepend_bos")
        for name in ("hook_head_index", "context_size"):
            value = getattr(self, name)
            if value is not None:
                value = _integral(value, name)
                if value < 0:
                    raise ConfigError(f"{name} must not be negative, got {value}", field=name)
                setattr(self, name, value)
        for name in ("dtype", "device", "normalize_activations", "reshape_activations"):
            if not isinstance(getattr(self, name), str):
                raise ConfigError(f"{name} must be a string, got {getattr(self, name)!r}", field=name)
        for name in _STR_METADATA_FIELDS:
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise ConfigError(f"{name} must be a string or null, got {value!r}", field=name)
        if self.architecture == "topk":
            if self.k is None:
                raise ConfigError("a topk SAE needs k", field="k")
            self.k = _integral(self.k, "k")
            if not 1 <= self.k <= self.d_sae:
                raise ConfigError(f"k must be an integer in [1, d_sae={self.d_sae}], got {self.k!r}", field="k")
        for flag in ("rescale_acts_by_decoder_norm", "rank_by_decoder_norm"):
            if getattr(self, flag) and self.architecture != "topk":
                raise ConfigError(f"{flag} is defined for topk SAEs only", field=flag)
        if self.rescale_acts_by_decoder_norm and self.rank_by_decoder_norm:
            raise ConfigError("rescale_acts_by_decoder_norm and rank_by_decoder_norm exclude each other",
                              field="rank_by_decoder_norm")
        if self.normalize_activations not in NORMALIZATIONS:
            raise ConfigError(
                f"unknown normalize_activations {self.normalize_activations!r}; "
                f"expected one of {', '.join(NORMALIZATIONS)}",
                field="normalize_activations",
            )
        if self.reshape_activations not in ("none", "hook_z"):
            raise ConfigError(f"unknown reshape_activations {self.reshape_activations!r}",
                              field="reshape_activations")
        if self.apply_b_dec_to_input and self.is_transcoder:
            raise ConfigError("apply_b_dec_to_input needs d_out == d_in (b_dec lives in the output space)",
                              field="apply_b_dec_to_input")
        for name in ("norm_scaling_factor", "norm_scaling_factor_out"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not 0 < value < float("inf")):
                raise ConfigError(f"{name} must be a positive finite number, got {value!r}", field=name)
        if isinstance(self.provenance, dict):
            self.provenance = Provenance.from_dict(self.provenance)

    @property
    def is_transcoder(self) -> bool:
        """True when the SAE writes to a different place (or width) than it reads."""
        return self.d_out != self.d_in or (
            self.hook_name_out is not None and self.hook_name_out != self.hook_name
        )

    @property
    def output_hook_name(self) -> str | None:
        """Where the reconstruction belongs in the model: ``hook_name_out`` for transcoders, else ``hook_name``."""
        return self.hook_name_out or self.hook_name

    def replace(self, **changes: Any) -> SAEConfig:
        """A copy with some fields changed (validated again)."""
        out = dataclasses.replace(self, **changes)
        out.provenance = Provenance.from_dict(out.provenance.to_dict())
        out.extra = dict(out.extra)
        return out

    def record(self, conversion: str) -> None:
        """Append a transform to the provenance log (folds, rescalings, dtype casts)."""
        self.provenance.conversions.append(conversion)

    # ------------------------------------------------------------------ SAELens 6 cfg.json

    def saelens_incompatibilities(self) -> list[tuple[str, str]]:
        """``(field, reason)`` for each thing SAELens 6 (checked against 6.54) would compute differently from
        sae-hub for this config; empty when a saved folder loads in SAELens with the same outputs.

        A constant ``norm_scaling_factor`` is not listed: SAELens has no field that applies one at run time
        (``expected_average_only_in`` is a no-op in ``load_from_disk``), but
        :meth:`~sae_hub.SAE.save_pretrained` folds it into the weights exactly, which SAELens then reads right.
        """
        out: list[tuple[str, str]] = []
        if self.normalize_activations == "zscore":
            out.append(("normalize_activations",
                        "SAELens 6 has no 'zscore' normalisation (its layer_norm divides by the unbiased std, "
                        "which is not the same numbers)"))
        if self.rank_by_decoder_norm:
            out.append(("rank_by_decoder_norm",
                        "SAELens topk reports the value it ranks on; this SAE ranks on z*||W_dec_j|| but reports "
                        "z (fold_W_dec_norm() makes it a plain topk whose features are z*||W_dec_j||)"))
        if self.is_transcoder or self.has_skip:
            kind = f"{'skip ' if self.has_skip else ''}transcoder"
            if self.architecture not in ("relu", "jumprelu"):
                out.append(("architecture", f"SAELens 6 has no {self.architecture} {kind} (only relu and jumprelu)"))
            if self.normalize_activations in PER_TOKEN_NORMALIZATIONS:
                out.append(("normalize_activations",
                            f"SAELens {kind}s apply {self.normalize_activations} to the input but never undo it "
                            "on the output"))
            if self.reshape_activations == "hook_z":
                out.append(("reshape_activations", f"SAELens {kind}s do not flatten hook_z heads"))
        return out

    def saelens_architecture(self) -> str:
        """The ``architecture`` string SAELens 6 uses for this SAE (for variants SAELens lacks, a name in the
        same pattern that SAELens does not know, which :meth:`from_dict` reads back)."""
        base = self.architecture
        if self.rank_by_decoder_norm:  # no SAELens equivalent: a name SAELens refuses instead of misreading
            base = "topk_rank_by_decoder_norm"
        if self.is_transcoder or self.has_skip:
            prefix = "" if base == "relu" else f"{base}_"
            return f"{prefix}{'skip_' if self.has_skip else ''}transcoder"
        return "standard" if base == "relu" else base

    def to_dict(self, *, sae_hub_only: Sequence[str] = ()) -> dict[str, Any]:
        """SAELens 6 ``cfg.json`` layout: SAELens's fields on top, everything else inside ``metadata``.

        ``sae_hub_only`` (reasons) marks a folder SAELens must not read: the architecture gets the prefix
        ``sae_hub_only:`` (SAELens refuses an unknown architecture before it reads anything else, where a
        known one with a run-time factor in ``metadata`` would load and compute other features without a word)
        and ``metadata.sae_hub_only`` says why. :meth:`from_dict` strips the prefix.
        """
        arch = self.saelens_architecture()
        out: dict[str, Any] = {
            "architecture": f"{SAE_HUB_ONLY_PREFIX}{arch}" if sae_hub_only else arch,
            "d_in": self.d_in,
            "d_sae": self.d_sae,
            "dtype": self.dtype,
            "device": self.device,
            "apply_b_dec_to_input": self.apply_b_dec_to_input,
            "normalize_activations": self.normalize_activations,
            "reshape_activations": self.reshape_activations,
        }
        if self.is_transcoder or self.has_skip:
            out["d_out"] = self.d_out
        if self.architecture == "topk":
            out["k"] = self.k
            out["rescale_acts_by_decoder_norm"] = self.rescale_acts_by_decoder_norm
        meta: dict[str, Any] = dict(self.extra)
        # SAELens reads a config without this key as the flat pre-6 layout and drops the metadata block, so
        # it declares the schema generation (not which library wrote the file).
        meta.setdefault("sae_lens_version", SAELENS_SCHEMA_VERSION)
        for name in _METADATA_FIELDS:
            meta[name] = getattr(self, name)
        if self.norm_scaling_factor is not None:
            meta["norm_scaling_factor"] = self.norm_scaling_factor
        if self.norm_scaling_factor_out is not None:
            meta["norm_scaling_factor_out"] = self.norm_scaling_factor_out
        meta["provenance"] = self.provenance.to_dict()
        meta.pop(SAE_HUB_ONLY_KEY, None)  # a marker read from an earlier save describes that save only
        if sae_hub_only:
            meta[SAE_HUB_ONLY_KEY] = {
                "reasons": list(sae_hub_only),
                "load_with": "sae_hub.SAE.load_from_disk(path)",
                "note": "saved with saelens_compatible=False: SAELens cannot compute this SAE as sae-hub does",
            }
        out["metadata"] = meta
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, path: str | None = None) -> SAEConfig:
        """Read a SAELens 6 ``cfg.json`` dict, a pre-6 flat one, or our own ``to_dict`` output.

        ``path`` only improves error messages.
        """
        if not isinstance(d, dict):
            raise ConfigError(f"a config must be a JSON object, got {type(d).__name__}", path=path)
        d = dict(d)
        meta_value = d.pop("metadata", None)
        if meta_value is not None and not isinstance(meta_value, dict):
            raise ConfigError(f"metadata must be a JSON object, got {type(meta_value).__name__}", path=path,
                              field="metadata")
        meta = dict(meta_value or {})
        flat = not meta  # pre-6 SAELens: everything at the top level, under older names
        if flat:
            d = _normalise_pre6(d, path)
        for name in ("architecture", "d_in", "d_sae"):
            if name not in d:
                if name == "architecture" and flat:
                    continue
                raise ConfigError(f"missing required field {name!r}", path=path, field=name)
        if not isinstance(d.get("architecture", "standard"), str):
            raise ConfigError(f"architecture must be a string, got {d['architecture']!r}", path=path,
                              field="architecture")
        arch_name = str(d.get("architecture", "standard")).removeprefix(SAE_HUB_ONLY_PREFIX)
        rank_by_norm = arch_name.startswith("topk_rank_by_decoder_norm")
        if rank_by_norm:
            arch_name = "topk" + arch_name.removeprefix("topk_rank_by_decoder_norm")
        if arch_name not in _FROM_SAELENS:
            raise UnknownArchitectureError(
                f"unknown architecture {arch_name!r}; sae-hub reads "
                f"{', '.join(sorted(_FROM_SAELENS))}",
                path=path,
                field="architecture",
            )
        arch, transcoder, has_skip = _FROM_SAELENS[arch_name]
        if transcoder and d.get("d_out") is None:
            raise ConfigError(f"missing required field 'd_out' for a {arch_name}", path=path, field="d_out")
        d_out = _int(d["d_out"], "d_out", path) if d.get("d_out") is not None else None
        if d_out is not None and d_out <= 0:  # checked even where unused (SAELens ignores it for plain SAEs)
            raise ConfigError(f"d_out must be a positive integer, got {d_out}", path=path, field="d_out")
        norm = d.get("normalize_activations", "none")
        if isinstance(norm, bool):  # pre-6 boolean flag
            norm = "expected_average_only_in" if norm else "none"
        if norm is None:
            norm = "none"
        known = set(_METADATA_FIELDS) | {"provenance", "norm_scaling_factor", "norm_scaling_factor_out"}
        source = meta if not flat else d
        kwargs: dict[str, Any] = {name: source.get(name) for name in _METADATA_FIELDS}
        try:
            return cls(
                architecture=arch,
                d_in=_int(d["d_in"], "d_in", path),
                d_sae=_int(d["d_sae"], "d_sae", path),
                d_out=d_out if transcoder or has_skip else None,
                k=d.get("k") if arch == "topk" else None,
                # SAELens 6 defaults the flag to True when the key is absent (its transcoders refuse True), and
                # pre-6 configs had it True; so absent means True except for transcoders.
                apply_b_dec_to_input=_flag(d.get("apply_b_dec_to_input", not transcoder), "apply_b_dec_to_input",
                                           path),
                rescale_acts_by_decoder_norm=_flag(d.get("rescale_acts_by_decoder_norm"),
                                                   "rescale_acts_by_decoder_norm", path) if arch == "topk" else False,
                rank_by_decoder_norm=rank_by_norm,
                has_skip=has_skip,
                normalize_activations=norm,
                norm_scaling_factor=meta.get("norm_scaling_factor"),
                norm_scaling_factor_out=meta.get("norm_scaling_factor_out"),
                reshape_activations=_or(d.get("reshape_activations"), "none"),
                dtype=_or(d.get("dtype"), "float32"),
                device=_or(d.get("device"), "cpu"),
                provenance=_provenance(meta.get("provenance"), path),
                extra={k: v for k, v in meta.items() if k not in known},
                **kwargs,
            )
        except ConfigError as e:
            if e.path is None and path is not None:
                raise type(e)(e.message, path=path, field=e.field) from None
            raise


_STR_METADATA_FIELDS = ("model_name", "hook_name", "hook_name_out", "hf_hook_name", "hf_hook_name_out",
                        "dataset_path", "neuronpedia_id", "license")


def _integral(value: Any, name: str, path: str | None = None) -> int:
    """An integer, or a float with no fractional part (SAELens writes ``"k": 4.0`` for batchtopk); a bool, a
    string, a fraction, NaN or infinity is a :class:`ConfigError` on ``name``."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    raise ConfigError(f"{name} must be an integer, got {value!r}", path=path, field=name)


def _int(value: Any, name: str, path: str | None) -> int:
    return _integral(value, name, path)


def _flag(value: Any, name: str, path: str | None) -> bool:
    """A JSON boolean. ``null`` reads as false, as in SAELens (which passes None through and tests its
    truthiness); anything else, notably the string ``"false"`` (truthy in Python), is a :class:`ConfigError`."""
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be true or false, got {value!r}", path=path, field=name)
    return value


def _or(value: Any, default: str) -> Any:
    """``value``, or ``default`` for null/empty (as before); a non-string is left for ``__post_init__`` to refuse."""
    return value if value not in (None, "") else default


def _provenance(value: Any, path: str | None) -> Provenance:
    """``metadata.provenance``, its shape checked (a string or number there used to escape from
    :meth:`Provenance.from_dict` as a bare ``AttributeError``/``TypeError``)."""
    if value is None:
        return Provenance()
    ok = isinstance(value, dict)
    fmt, files, conversions = (value.get("source_format"), value.get("source_files"),
                               value.get("conversions")) if ok else (None, None, None)
    files = [] if files is None else files
    conversions = [] if conversions is None else conversions
    ok = ok and (fmt is None or isinstance(fmt, str)) and isinstance(files, list) and isinstance(conversions, list)
    if ok:
        ok = all(isinstance(f, dict) for f in files) and all(isinstance(c, str) for c in conversions)
    if not ok:
        raise ConfigError("metadata.provenance must be an object with source_format (string), source_files "
                          f"(list of objects) and conversions (list of strings), got {value!r:.200}", path=path,
                          field="provenance")
    return Provenance(source_format=fmt, source_files=[dict(f) for f in files], conversions=list(conversions))


def _normalise_pre6(d: dict[str, Any], path: str | None = None) -> dict[str, Any]:
    """Rename pre-6 SAELens keys and apply the defaults SAELens applied to them."""
    renames = {"hook_point": "hook_name", "hook_point_head_index": "hook_head_index",
               "activation_fn_str": "activation_fn"}
    out = {renames.get(k, k): v for k, v in d.items()}
    out.setdefault("apply_b_dec_to_input", True)
    out.setdefault("prepend_bos", True)
    fn_kwargs = out.get("activation_fn_kwargs")
    if fn_kwargs is not None and not isinstance(fn_kwargs, dict):
        raise ConfigError(f"activation_fn_kwargs must be a JSON object, got {fn_kwargs!r}", path=path,
                          field="activation_fn_kwargs")
    if out.get("activation_fn") == "topk" and (fn_kwargs or {}).get("k") is not None:
        out["architecture"] = "topk"
        out["k"] = out["activation_fn_kwargs"]["k"]
    out.setdefault("architecture", "standard")
    if out.get("reshape_activations") is None:
        out["reshape_activations"] = "hook_z" if "hook_z" in str(out.get("hook_name") or "") else "none"
    return out


def param_shapes(cfg: SAEConfig) -> dict[str, tuple[int, ...]]:
    """The tensors an SAE with this config owns, and their shapes: the one source loaders validate against.

    Here, beside the config, rather than in :mod:`sae_hub.sae`: the loader registry checks release-table
    overrides against the weights with it, and must not import the SAE module (which imports it).
    """
    shapes: dict[str, tuple[int, ...]] = {
        "W_enc": (cfg.d_in, cfg.d_sae),
        "W_dec": (cfg.d_sae, cfg.d_out or cfg.d_in),
        "b_dec": (cfg.d_out or cfg.d_in,),
    }
    if cfg.architecture == "gated":
        shapes.update(b_gate=(cfg.d_sae,), r_mag=(cfg.d_sae,), b_mag=(cfg.d_sae,))
    else:
        shapes["b_enc"] = (cfg.d_sae,)
    if cfg.architecture == "jumprelu":
        shapes["threshold"] = (cfg.d_sae,)
    if cfg.has_skip:
        shapes["W_skip"] = (cfg.d_out or cfg.d_in, cfg.d_in)
    return shapes
