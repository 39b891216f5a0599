"""Malformed files and configs are refused with typed errors naming the file and the field.

Safetensors layouts are checked against the reference reader (``safetensors.safe_open``, the Rust crate): every
file it refuses we refuse too, and every file it accepts we read to the same tensors. We are stricter in two
documented places only: duplicate JSON keys (the crate keeps the last one silently) and dtypes torch cannot hold.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from sae_hub import SAE, SAEConfig
from sae_hub.errors import ConfigError, CorruptFileError, MissingFileError, SaeHubError, ShapeMismatchError
from sae_hub.files import MAX_CONFIG_BYTES, read_json, read_safetensors, read_safetensors_header

FIXTURES = Path(__file__).parent / "fixtures" / "sae_lens"
ST_NAMES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.int32: "I32",
            torch.int64: "I64", torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL", torch.float64: "F64"}
if hasattr(torch, "float8_e4m3fn"):
    ST_NAMES[torch.float8_e4m3fn] = "F8_E4M3"


def _layout(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, Any], bytes]:
    """The spec's layout (sorted names, contiguous from 0), written by hand so tests can break it."""
    header: dict[str, Any] = {}
    blobs, off = [], 0
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        b = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header[name] = {"dtype": ST_NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [off, off + len(b)]}
        off += len(b)
        blobs.append(b)
    return header, b"".join(blobs)


def _write(path: Path, header: dict[str, Any] | bytes, data: bytes) -> Path:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


def _reference_reads(path: Path) -> dict[str, torch.Tensor] | None:
    """What the safetensors library makes of a file: its tensors, or None when it refuses it."""
    try:
        with safe_open(path, framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
    except Exception:
        return None


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    shutil.copytree(FIXTURES / "standard", tmp_path / "sae")
    return tmp_path / "sae"


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return dict(load_file(folder / "sae_weights.safetensors"))


def _set_cfg(folder: Path, **changes: Any) -> None:
    cfg = json.loads((folder / "cfg.json").read_text())
    meta = changes.pop("metadata", {})
    cfg.update(changes)
    cfg["metadata"].update(meta)
    (folder / "cfg.json").write_text(json.dumps(cfg))


def _names_file(err: SaeHubError, name: str) -> None:
    assert err.path is not None and Path(err.path).name == name, err.path
    assert name in str(err)


# ------------------------------------------------------------------------------------------ safetensors layout

A = torch.arange(2, dtype=torch.float32)
B = torch.arange(3, dtype=torch.float32) + 10


def _hdr(**entries: Any) -> dict[str, Any]:
    return {k: {"dtype": v[0], "shape": v[1], "data_offsets": v[2]} for k, v in entries.items()}


# (id, header (dict or raw JSON bytes), data, field named in our error, whether the Rust crate refuses it too)
BAD_LAYOUTS: list[tuple[str, dict[str, Any] | bytes, bytes, str | None, bool]] = [
    ("negative_offset", _hdr(a=("F32", [2], [-8, 0]), b=("F32", [3], [0, 12])), bytes(12), "a", True),
    ("overlap", _hdr(a=("F32", [2], [0, 8]), b=("F32", [3], [4, 16])), bytes(16), "b", True),
    ("same_range", _hdr(a=("F32", [2], [0, 8]), b=("F32", [2], [0, 8])), bytes(8), "b", True),
    ("gap_at_start", _hdr(a=("F32", [2], [4, 12])), bytes(12), "a", True),
    ("gap_between", _hdr(a=("F32", [2], [0, 8]), b=("F32", [3], [12, 24])), bytes(24), "b", True),
    ("trailing_bytes", _hdr(a=("F32", [2], [0, 8])), bytes(12), None, True),
    ("empty_header_trailing_bytes", b"{}", bytes(4), None, True),
    ("size_disagrees", _hdr(a=("F32", [3], [0, 8])), bytes(8), "a", True),
    ("end_before_begin", _hdr(a=("F32", [0], [8, 0])), bytes(8), "a", True),
    ("float_shape", _hdr(a=("F32", [2.0], [0, 8])), bytes(8), "a", True),
    ("bool_shape", _hdr(a=("F32", [True, True], [0, 4])), bytes(4), "a", True),
    ("string_shape", _hdr(a=("F32", ["2"], [0, 8])), bytes(8), "a", True),
    ("negative_dim", _hdr(a=("F32", [-2, -1], [0, 8])), bytes(8), "a", True),
    ("dim_over_u64", _hdr(a=("F32", [2**64 + 2], [0, 8])), bytes(8), "a", True),
    ("shape_product_overflows", _hdr(a=("F32", [2**62, 2**62, 0], [0, 0])), b"", "a", True),
    ("float_offsets", _hdr(a=("F32", [2], [0.0, 8.0])), bytes(8), "a", True),
    ("three_offsets", _hdr(a=("F32", [2], [0, 8, 8])), bytes(8), "a", True),
    ("offset_over_u64", _hdr(a=("F32", [2], [2**64, 2**64 + 8])), bytes(8), "a", True),
    ("unknown_dtype", _hdr(a=("Q7", [2], [0, 8])), bytes(8), "a", True),
    ("dtype_not_a_string", _hdr(a=(7, [2], [0, 8])), bytes(8), "a", True),
    ("entry_not_an_object", b'{"a": [1, 2]}', b"", "a", True),
    ("entry_missing_field", b'{"a": {"dtype": "F32", "shape": [2]}}', bytes(8), "a", True),
    ("metadata_not_an_object", b'{"__metadata__": ["x"]}', b"", "__metadata__", True),
    ("metadata_value_not_a_string", b'{"__metadata__": {"x": 1}}', b"", "__metadata__", True),
    ("nan_literal", b'{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8], "x": NaN}}', bytes(8), None,
     True),
    ("header_not_an_object", b"[1, 2]", b"", None, True),
    ("nul_padding", b'{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}\x00\x00', bytes(8), None,
     True),
    ("deep_nesting", b'{"__metadata__": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", b"", None, True),
    ("huge_integer", b'{"a": {"dtype": "F32", "shape": [' + b"9" * 5000 + b'], "data_offsets": [0, 8]}}',
     bytes(8), None, True),
    # stricter than the crate, which keeps the last duplicate silently:
    ("duplicate_tensor_key", b'{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, '
                             b'"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}', bytes(8), "a", False),
    ("duplicate_metadata_key", b'{"__metadata__": {"x": "1", "x": "2"}, '
                               b'"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}', bytes(8), "x", False),
    # a sub-byte dtype: the crate hands out packed float4_e2m1fn_x2 pairs (shape [2] for a declared [4]); no
    # SAE weight is stored so, and a tensor whose shape is not the declared one is refused rather than guessed
    ("sub_byte_dtype", _hdr(a=("F4", [4], [0, 2])), bytes(2), "a", False),
]


@pytest.mark.parametrize(("header", "data", "field", "crate_refuses"), [c[1:] for c in BAD_LAYOUTS],
                         ids=[c[0] for c in BAD_LAYOUTS])
def test_bad_safetensors_layout_is_refused(tmp_path, header, data, field, crate_refuses):
    p = _write(tmp_path / "w.safetensors", header, data)
    assert (_reference_reads(p) is None) == crate_refuses
    for read in (read_safetensors, read_safetensors_header):
        with pytest.raises(CorruptFileError) as e:
            read(p)
        _names_file(e.value, "w.safetensors")
        if field is not None:
            assert e.value.field == field, str(e.value)


# Layouts the spec allows: the reference reader and ours agree on every tensor.
GOOD_LAYOUTS: list[tuple[str, dict[str, Any] | bytes, bytes]] = [
    ("plain", _hdr(a=("F32", [2], [0, 8]), b=("F32", [3], [8, 20])), A.numpy().tobytes() + B.numpy().tobytes()),
    ("header_order_differs_from_data_order", _hdr(b=("F32", [3], [8, 20]), a=("F32", [2], [0, 8])),
     A.numpy().tobytes() + B.numpy().tobytes()),
    ("zero_size_tensors", _hdr(z=("F32", [0, 5], [0, 0]), a=("F32", [2], [0, 8]), y=("I64", [0], [8, 8])),
     A.numpy().tobytes()),
    ("empty", b"{}", b""),
    ("whitespace_and_padding", b' {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}   ',
     A.numpy().tobytes()),
    ("metadata_and_extra_keys", b'{"__metadata__": {"format": "pt"}, '
                                b'"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8], "extra": 1}}',
     A.numpy().tobytes()),
    ("scalar", _hdr(a=("F32", [], [0, 4])), A[:1].numpy().tobytes()),
    ("unaligned_header", b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}', A.numpy().tobytes()),
]


@pytest.mark.parametrize(("header", "data"), [c[1:] for c in GOOD_LAYOUTS], ids=[c[0] for c in GOOD_LAYOUTS])
def test_valid_layouts_read_as_the_reference_reads_them(tmp_path, header, data):
    p = _write(tmp_path / "w.safetensors", header, data)
    ref = _reference_reads(p)
    assert ref is not None
    ours, _ = read_safetensors(p)
    assert ours.keys() == ref.keys()
    for k in ref:
        assert ours[k].dtype == ref[k].dtype and ours[k].shape == ref[k].shape and torch.equal(ours[k], ref[k]), k
    head = read_safetensors_header(p)
    assert sorted(head.keys()) == sorted(ref) and all(head.shape(k) == tuple(ref[k].shape) for k in ref)


def test_negative_offset_does_not_turn_header_bytes_into_b_dec(folder):
    """The fuzz finding: b_dec at data_offsets [-64, 0] used to load the header's last 64 bytes as weights."""
    header, data = _layout(_weights(folder))
    nbytes = 64  # b_dec: 16 float32
    shifted = {k: v for k, v in header.items() if k != "b_dec"}
    for v in shifted.values():  # close the hole b_dec left so the rest stays contiguous
        b, e = v["data_offsets"]
        if b >= header["b_dec"]["data_offsets"][1]:
            v["data_offsets"] = [b - nbytes, e - nbytes]
    start = header["b_dec"]["data_offsets"][0]
    data = data[:start] + data[start + nbytes:]
    shifted["b_dec"] = {"dtype": "F32", "shape": [16], "data_offsets": [-nbytes, 0]}
    _write(folder / "sae_weights.safetensors", shifted, data)
    with pytest.raises(CorruptFileError) as e:
        SAE.load_from_disk(folder)
    _names_file(e.value, "sae_weights.safetensors")
    assert e.value.field == "b_dec"


def test_trailing_bytes_after_the_last_tensor_are_refused(folder):
    p = folder / "sae_weights.safetensors"
    p.write_bytes(p.read_bytes() + b"\x00" * 64)
    with pytest.raises(CorruptFileError, match="trailing") as e:
        SAE.load_from_disk(folder)
    _names_file(e.value, "sae_weights.safetensors")


def test_asking_for_a_tensor_the_file_lacks_is_typed(folder):
    with pytest.raises(ShapeMismatchError) as e:
        read_safetensors(folder / "sae_weights.safetensors", ["nope"])
    assert e.value.field == "nope"
    _names_file(e.value, "sae_weights.safetensors")
    with pytest.raises(ShapeMismatchError):
        read_safetensors_header(folder / "sae_weights.safetensors").shape("nope")


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="needs /proc/self/maps")
def test_reads_stay_zero_copy_and_writable_without_touching_the_file(folder):
    """Validation must not cost the memory-mapped adoption: the tensors view the file's mapping."""
    p = folder / "sae_weights.safetensors"
    before = p.read_bytes()
    tensors, _ = read_safetensors(p)
    base = tensors["W_enc"].untyped_storage().data_ptr()
    with open("/proc/self/maps") as maps:
        mapped = [line for line in maps if str(p) in line]
    lo_hi = [tuple(int(x, 16) for x in line.split()[0].split("-")) for line in mapped]
    assert any(lo <= base < hi for lo, hi in lo_hi), "W_enc is not a view of the file's mapping"
    tensors["W_enc"].mul_(2)  # private copy-on-write mapping
    assert p.read_bytes() == before
    only = read_safetensors(p, ["b_dec"])[0]
    assert list(only) == ["b_dec"] and torch.equal(only["b_dec"], load_file(p)["b_dec"])


# ------------------------------------------------------------------------------------------ dtypes of weights


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.int8, torch.uint8, torch.bool])
def test_integer_or_bool_tensor_in_a_float_file_is_refused(folder, dtype):
    w = _weights(folder)
    w["b_dec"] = (w["b_dec"] * 10).to(dtype)
    header, data = _layout(w)
    _write(folder / "sae_weights.safetensors", header, data)
    with pytest.raises(ShapeMismatchError, match="floating point") as e:
        SAE.load_from_disk(folder)
    assert e.value.field == "b_dec"
    _names_file(e.value, "sae_weights.safetensors")
    with pytest.raises(ShapeMismatchError):  # an explicit dtype does not launder integer weights either
        SAE.load_from_disk(folder, dtype="float32")


def test_all_integer_weights_are_refused_by_load_and_convert(folder, tmp_path):
    from sae_hub.conversion import convert

    w = {k: (v * 100).to(torch.int32) for k, v in _weights(folder).items()}
    header, data = _layout(w)
    _write(folder / "sae_weights.safetensors", header, data)
    with pytest.raises(ShapeMismatchError, match="floating point") as e:
        SAE.load_from_disk(folder)
    _names_file(e.value, "sae_weights.safetensors")
    with pytest.raises(ShapeMismatchError, match="floating point"):
        convert(folder, tmp_path / "out", format="saelens", progress=False)


def test_integer_target_dtype_is_refused(folder):
    with pytest.raises(ConfigError) as e:
        SAE.load_from_disk(folder, dtype="int32")
    assert e.value.field == "dtype"
    with pytest.raises(ConfigError) as e:
        SAE.load_from_disk(folder, dtype="no_such_dtype")
    assert e.value.field == "dtype"
    with pytest.raises(ConfigError) as e:
        SAE(SAEConfig(architecture="relu", d_in=4, d_sae=8, dtype="int64"))
    assert e.value.field == "dtype"


def test_mixed_float_dtypes_keep_loading(folder):
    w = _weights(folder)
    w["b_dec"] = w["b_dec"].half()
    header, data = _layout(w)
    _write(folder / "sae_weights.safetensors", header, data)
    sae = SAE.load_from_disk(folder)
    assert sae.b_dec.dtype == torch.float32
    assert torch.equal(sae.b_dec, w["b_dec"].float())


@pytest.mark.skipif(not hasattr(torch, "float8_e4m3fn"), reason="this torch has no float8")
def test_float8_weights_need_an_explicit_compute_dtype(folder):
    w = {k: v.to(torch.float8_e4m3fn) for k, v in _weights(folder).items()}
    header, data = _layout(w)
    _write(folder / "sae_weights.safetensors", header, data)
    with pytest.raises(ConfigError, match="dtype=") as e:
        SAE.load_from_disk(folder)
    assert e.value.field == "dtype"
    sae = SAE.load_from_disk(folder, dtype="float32")
    assert torch.equal(sae.W_enc, w["W_enc"].float())


# ------------------------------------------------------------------------------------------ cfg.json types

BAD_CFG: list[tuple[str, dict[str, Any], str]] = [
    ("b_dec_flag_string", {"apply_b_dec_to_input": "false"}, "apply_b_dec_to_input"),
    ("b_dec_flag_int", {"apply_b_dec_to_input": 0}, "apply_b_dec_to_input"),
    ("d_in_bool", {"d_in": True}, "d_in"),
    ("d_in_string", {"d_in": "16"}, "d_in"),
    ("d_sae_fraction", {"d_sae": 64.5}, "d_sae"),
    ("architecture_not_string", {"architecture": 5}, "architecture"),
    ("normalize_not_string", {"normalize_activations": 1}, "normalize_activations"),
    ("reshape_not_string", {"reshape_activations": ["hook_z"]}, "reshape_activations"),
    ("dtype_not_string", {"dtype": 32}, "dtype"),
    ("device_not_string", {"device": {"type": "cpu"}}, "device"),
    ("context_size_string", {"metadata": {"context_size": "128"}}, "context_size"),
    ("context_size_bool", {"metadata": {"context_size": True}}, "context_size"),
    ("context_size_fraction", {"metadata": {"context_size": 1.5}}, "context_size"),
    ("hook_head_index_string", {"metadata": {"hook_head_index": "0"}}, "hook_head_index"),
    ("hook_head_index_negative", {"metadata": {"hook_head_index": -1}}, "hook_head_index"),
    ("prepend_bos_string", {"metadata": {"prepend_bos": "true"}}, "prepend_bos"),
    ("prepend_bos_int", {"metadata": {"prepend_bos": 1}}, "prepend_bos"),
    ("model_name_int", {"metadata": {"model_name": 5}}, "model_name"),
    ("hook_name_list", {"metadata": {"hook_name": ["blocks.3.hook_resid_post"]}}, "hook_name"),
    ("norm_factor_bool", {"metadata": {"norm_scaling_factor": True}}, "norm_scaling_factor"),
    ("norm_factor_string", {"metadata": {"norm_scaling_factor": "2.0"}}, "norm_scaling_factor"),
    ("provenance_string", {"metadata": {"provenance": "converted"}}, "provenance"),
    ("provenance_files_not_list", {"metadata": {"provenance": {"source_files": "a.pt"}}}, "provenance"),
]


@pytest.mark.parametrize(("changes", "field"), [c[1:] for c in BAD_CFG], ids=[c[0] for c in BAD_CFG])
def test_cfg_json_types_are_strict(folder, changes, field):
    _set_cfg(folder, **changes)
    with pytest.raises(ConfigError) as e:
        SAE.load_from_disk(folder)
    assert e.value.field == field, str(e.value)
    _names_file(e.value, "cfg.json")


@pytest.mark.parametrize("meta", [["x"], "x", 3])
def test_cfg_metadata_must_be_an_object(folder, meta):
    cfg = json.loads((folder / "cfg.json").read_text())
    cfg["metadata"] = meta
    (folder / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError) as e:
        SAE.load_from_disk(folder)
    assert e.value.field == "metadata"
    _names_file(e.value, "cfg.json")


@pytest.mark.parametrize(("changes", "field"), [
    ({"rescale_acts_by_decoder_norm": "false"}, "rescale_acts_by_decoder_norm"),
    ({"k": True}, "k"),
    ({"k": "6"}, "k"),
    ({"k": 2.5}, "k"),
    ({"k": None}, "k"),
], ids=["rescale_string", "k_bool", "k_string", "k_fraction", "k_null"])
def test_topk_cfg_types_are_strict(tmp_path, changes, field):
    shutil.copytree(FIXTURES / "topk", tmp_path / "sae")
    _set_cfg(tmp_path / "sae", **changes)
    with pytest.raises(ConfigError) as e:
        SAE.load_from_disk(tmp_path / "sae")
    assert e.value.field == field, str(e.value)
    _names_file(e.value, "cfg.json")


def test_cfg_d_out_is_type_checked(tmp_path):
    shutil.copytree(FIXTURES / "standard", tmp_path / "sae")
    for bad in ("16", True, 16.5, -16):
        _set_cfg(tmp_path / "sae", d_out=bad)
        with pytest.raises(ConfigError) as e:
            SAE.load_from_disk(tmp_path / "sae")
        assert e.value.field == "d_out", bad


def test_cfg_values_saelens_accepts_still_load(tmp_path):
    """null reads as SAELens reads it (it passes None through and tests truthiness), integral floats are ints."""
    shutil.copytree(FIXTURES / "topk", tmp_path / "sae")
    _set_cfg(tmp_path / "sae", k=6.0, rescale_acts_by_decoder_norm=None, apply_b_dec_to_input=None,
             normalize_activations=None, reshape_activations=None, dtype=None, device=None, d_in=16.0,
             metadata={"prepend_bos": None, "hook_head_index": None, "context_size": None, "model_name": None})
    sae = SAE.load_from_disk(tmp_path / "sae")
    c = sae.cfg
    assert c.k == 6 and isinstance(c.k, int) and c.d_in == 16 and isinstance(c.d_in, int)
    assert c.rescale_acts_by_decoder_norm is False and c.apply_b_dec_to_input is False
    assert c.prepend_bos is None and c.hook_head_index is None and c.context_size is None
    assert c.normalize_activations == "none"


def test_realistic_pre6_flat_config_loads(tmp_path):
    """A pre-6 SAELens cfg.json as published (gpt2-small-res-jb style): many nulls and training-only keys."""
    g = torch.Generator().manual_seed(0)
    t = {"W_enc": torch.randn(6, 10, generator=g), "b_enc": torch.randn(10, generator=g),
         "W_dec": torch.randn(10, 6, generator=g), "b_dec": torch.randn(6, generator=g)}
    save_file(t, tmp_path / "sae_weights.safetensors")
    (tmp_path / "cfg.json").write_text(json.dumps({
        "model_name": "gpt2-small", "hook_point": "blocks.0.hook_resid_pre", "hook_point_layer": 0,
        "hook_point_head_index": None, "dataset_path": "Skylion007/openwebtext", "is_dataset_tokenized": False,
        "context_size": 128, "use_cached_activations": False, "cached_activations_path": None, "d_in": 6,
        "n_batches_in_buffer": 128, "total_training_tokens": 300000000, "store_batch_size": 32, "device": "mps",
        "seed": 42, "dtype": "torch.float32", "b_dec_init_method": "geometric_median", "expansion_factor": 32,
        "from_pretrained_path": None, "l1_coefficient": 8e-05, "lr": 0.0004, "lr_scheduler_name": None,
        "lr_warm_up_steps": 5000, "train_batch_size": 4096, "use_ghost_grads": False, "feature_sampling_window": 1000,
        "feature_sampling_method": None, "resample_batch_size": 1028, "feature_reinit_scale": 0.2,
        "dead_feature_window": 5000, "dead_feature_estimation_method": "no_re_init", "dead_feature_threshold": 1e-08,
        "log_to_wandb": True, "wandb_project": "mats_sae_training_gpt2_small_resid_pre_5", "wandb_entity": None,
        "wandb_log_frequency": 100, "n_checkpoints": 10, "checkpoint_path": "checkpoints/y1t51byy", "d_sae": 10,
        "tokens_per_buffer": 67108864, "run_name": "24576-L1-8e-05-LR-0.0004-Tokens-3.000e+08",
        "prepend_bos": None, "activation_fn_kwargs": None,
    }))
    sae = SAE.load_from_disk(tmp_path)
    assert sae.cfg.architecture == "relu" and sae.cfg.apply_b_dec_to_input  # the pre-6 default
    assert sae.cfg.hook_name == "blocks.0.hook_resid_pre" and sae.cfg.context_size == 128
    assert sae.cfg.prepend_bos is None and sae.cfg.hook_head_index is None


def test_pre6_activation_fn_kwargs_must_be_an_object(tmp_path):
    save_file({"W_enc": torch.zeros(2, 4), "b_enc": torch.zeros(4), "W_dec": torch.zeros(4, 2),
               "b_dec": torch.zeros(2)}, tmp_path / "sae_weights.safetensors")
    (tmp_path / "cfg.json").write_text(json.dumps({"d_in": 2, "d_sae": 4, "activation_fn_str": "topk",
                                                   "activation_fn_kwargs": [3]}))
    with pytest.raises(ConfigError) as e:
        SAE.load_from_disk(tmp_path)
    assert e.value.field == "activation_fn_kwargs"
    _names_file(e.value, "cfg.json")


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"apply_b_dec_to_input": "false"}, "apply_b_dec_to_input"),
    ({"architecture": "topk", "k": True}, "k"),
    ({"architecture": "topk", "k": "3"}, "k"),
    ({"architecture": "topk", "rescale_acts_by_decoder_norm": "false", "k": 3}, "rescale_acts_by_decoder_norm"),
    ({"d_out": True}, "d_out"),
    ({"prepend_bos": "yes"}, "prepend_bos"),
    ({"context_size": 12.5}, "context_size"),
    ({"hook_head_index": False}, "hook_head_index"),
    ({"norm_scaling_factor": True}, "norm_scaling_factor"),
    ({"hook_name": 3}, "hook_name"),
    ({"dtype": torch.float32}, "dtype"),
], ids=lambda v: str(v) if isinstance(v, str) else None)
def test_direct_construction_is_as_strict(kwargs, field):
    base: dict[str, Any] = {"architecture": "relu", "d_in": 4, "d_sae": 8}
    with pytest.raises(ConfigError) as e:
        SAEConfig(**{**base, **kwargs})
    assert e.value.field == field


# ------------------------------------------------------------------------------------------ special files


def _finishes_within(fn: Callable[[], Any], seconds: float, fifo: Path | None = None) -> BaseException | None:
    """Run ``fn`` on a daemon thread; the exception it raised, or fail if it is still running (blocked on a
    FIFO: then a writer is opened so the thread can end)."""
    box: list[BaseException | None] = []

    def run() -> None:
        try:
            fn()
            box.append(None)
        except BaseException as e:  # handed back to the test
            box.append(e)

    th = threading.Thread(target=run, daemon=True)
    th.start()
    th.join(seconds)
    if th.is_alive():
        if fifo is not None:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            os.close(fd)
        pytest.fail(f"still blocked after {seconds} s")
    return box[0]


needs_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo") or sys.platform == "win32", reason="needs FIFOs")


@needs_fifo
@pytest.mark.parametrize("name", ["sae_weights.safetensors", "cfg.json"])
def test_a_fifo_inside_the_folder_is_refused_without_blocking(folder, name):
    (folder / name).unlink()
    os.mkfifo(folder / name)
    err = _finishes_within(lambda: SAE.load_from_disk(folder, format="saelens"), 10, folder / name)
    assert isinstance(err, CorruptFileError), repr(err)
    assert "regular file" in str(err)
    _names_file(err, name)


@needs_fifo
@pytest.mark.parametrize("fmt", ["goodfire", None])
def test_a_fifo_as_the_path_is_refused_without_blocking(tmp_path, fmt):
    fifo = tmp_path / "sae.pt"
    os.mkfifo(fifo)
    err = _finishes_within(lambda: SAE.load_from_disk(fifo, format=fmt), 10, fifo)
    assert isinstance(err, CorruptFileError), repr(err)
    assert "regular file" in str(err) and err.path == str(fifo)


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="needs /dev/zero")
def test_cfg_linked_to_dev_zero_is_refused_before_reading(folder):
    (folder / "cfg.json").unlink()
    (folder / "cfg.json").symlink_to("/dev/zero")
    err = _finishes_within(lambda: SAE.load_from_disk(folder, format="saelens"), 10)
    assert isinstance(err, CorruptFileError) and "regular file" in str(err), repr(err)
    _names_file(err, "cfg.json")
    with pytest.raises(CorruptFileError):
        read_json("/dev/zero")


def test_oversized_config_is_refused_before_reading(tmp_path):
    p = tmp_path / "cfg.json"
    with open(p, "wb") as f:  # sparse: no disk or memory spent
        f.truncate(MAX_CONFIG_BYTES + 1)
    with pytest.raises(CorruptFileError, match="too large") as e:
        read_json(p)
    _names_file(e.value, "cfg.json")


@pytest.mark.parametrize(("text", "what"), [("[" * 100_000 + "]" * 100_000, "nesting"),
                                            ('{"d_in": ' + "1" * 5000 + "}", "huge integer")])
def test_pathological_json_is_a_typed_error(tmp_path, text, what):
    p = tmp_path / "cfg.json"
    p.write_text(text)
    with pytest.raises(CorruptFileError) as e:
        read_json(p)
    _names_file(e.value, "cfg.json")


def test_symlinked_files_still_load(tmp_path):
    """The Hugging Face cache is a folder of symlinks into blobs/."""
    blobs = tmp_path / "blobs"
    shutil.copytree(FIXTURES / "topk", blobs)
    snap = tmp_path / "snap"
    snap.mkdir()
    for name in ("cfg.json", "sae_weights.safetensors"):
        (snap / name).symlink_to(blobs / name)
    sae = SAE.load_from_disk(snap)
    ref = load_file(FIXTURES / "topk" / "reference.safetensors")
    torch.testing.assert_close(sae.encode(ref["x"]), ref["codes"], atol=1e-5, rtol=1e-5)


def test_a_folder_where_a_file_belongs_is_missing_file(folder):
    (folder / "cfg.json").unlink()
    (folder / "cfg.json").mkdir()
    with pytest.raises(MissingFileError) as e:
        read_json(folder / "cfg.json")
    _names_file(e.value, "cfg.json")


# ------------------------------------------------------------------------------------------ errors name the file


def test_load_local_names_the_path_on_errors_raised_without_one(tmp_path):
    """A loader (or SAEConfig inside it) raising a typed error without a path still names what was loaded."""
    from sae_hub import loading

    name = "test-malformed-no-path"

    def load(path: Path, options: dict[str, Any]) -> Any:
        SAEConfig(architecture="topk", d_in=4, d_sae=8, k=9)  # ConfigError(field="k"), no path
        raise AssertionError("unreachable")

    loading.register_loader(name, files=["x.bin"], detect=lambda p: False)(load)
    try:
        (tmp_path / "x.bin").write_bytes(b"")
        with pytest.raises(ConfigError) as e:
            SAE.load_from_disk(tmp_path, format=name)
        assert e.value.path == str(tmp_path) and e.value.field == "k"
        assert str(tmp_path) in str(e.value) and "'k'" in str(e.value)
    finally:
        loading._LOADERS.pop(name, None)
        loading._DETECTED.clear()
