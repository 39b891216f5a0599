"""Issue 11: malformed checkpoints found by fuzzing. Each is refused with a typed error naming the file and the
field, in bounded time and memory, or (where torch itself reads it faithfully) loaded exactly.

References are independent of sae-hub: ``torch.load`` without mmap (which inflates and size-checks records),
``nn.Module.state_dict`` and ``np.load``.
"""

from __future__ import annotations

import io
import json
import shutil
import struct
import threading
import tracemalloc
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from sae_hub import SAE
from sae_hub.errors import ConfigError, CorruptFileError, UnsafeCheckpointError
from sae_hub.safe_pickle import load_weights_only, module_state_dict, peek, read_npz, safe_load

FIXTURES = Path(__file__).parent / "fixtures"


def _within(seconds: float, fn: Callable[[], object]) -> object:
    """Run ``fn`` on a thread and fail (instead of hanging the suite) if it takes longer than ``seconds``."""
    box: dict[str, object] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # re-raised in the test's thread
            box["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"still running after {seconds} s"
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box.get("value")


def _rewrite(src: Path, dst: Path, change: Callable[[str, bytes], tuple[bytes, int]]) -> None:
    """Copy a torch zip member by member; ``change(name, blob)`` gives the new bytes and compression."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            blob, compression = change(info.filename, zin.read(info))
            zout.writestr(info.filename, blob, compress_type=compression)


# ------------------------------------------------------------------- 1. mmap of deflated or short records


def _deflate_record(name: str, blob: bytes) -> tuple[bytes, int]:
    return blob, zipfile.ZIP_DEFLATED if "/data/" in name else zipfile.ZIP_STORED


def _cut_record(name: str, blob: bytes) -> tuple[bytes, int]:
    return (blob[:40] if name.endswith("/data/0") else blob), zipfile.ZIP_STORED


def test_deflated_records_load_exactly_not_through_mmap(tmp_path):
    sd = {"W_enc": torch.randn(16, 64), "b_enc": torch.randn(64), "k": torch.tensor(5)}
    good = tmp_path / "good.pt"
    torch.save(sd, good)
    bad = tmp_path / "deflated.pt"
    _rewrite(good, bad, _deflate_record)
    want = torch.load(bad, weights_only=True, mmap=False)  # torch inflates correctly without mmap
    assert not torch.equal(torch.load(bad, weights_only=True, mmap=True)["W_enc"], sd["W_enc"])  # the defect
    got = load_weights_only(bad)
    for key in sd:
        assert torch.equal(got[key], want[key]) and torch.equal(got[key], sd[key]), key


def test_short_record_is_refused_naming_the_record(tmp_path):
    good = tmp_path / "good.pt"
    torch.save({"w": torch.arange(100, dtype=torch.float32)}, good)
    bad = tmp_path / "short.pt"
    _rewrite(good, bad, _cut_record)
    with pytest.raises(RuntimeError, match="record size"):
        torch.load(bad, weights_only=True, mmap=False)  # what torch says without mmap
    for read in (load_weights_only, safe_load):
        with pytest.raises(CorruptFileError, match="needs 400") as err:
            read(bad)
        assert err.value.path == str(bad) and err.value.field == "data/0"


def _qwen_state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"W_enc": torch.randn(64, 16, generator=g), "W_dec": torch.randn(16, 64, generator=g),
            "b_enc": torch.randn(64, generator=g), "b_dec": torch.randn(16, generator=g)}


def test_loaders_read_deflated_state_dicts_exactly_and_refuse_short_ones(tmp_path):
    """Qwen Scope ``.pt``, Goodfire ``.pth``, dictionary_learning ``ae.pt`` and lm-saes ``.pt`` all go through
    the checked weights_only path."""
    s = _qwen_state()
    good = tmp_path / "good.pt"
    torch.save(s, good)
    qwen = tmp_path / "qwen"
    qwen.mkdir()
    _rewrite(good, qwen / "layer3.sae.pt", _deflate_record)
    sae = SAE.load_from_disk(qwen / "layer3.sae.pt", k=4)
    assert torch.equal(sae.W_enc.detach(), s["W_enc"].T) and torch.equal(sae.W_dec.detach(), s["W_dec"].T)
    _rewrite(good, qwen / "layer3.sae.pt", _cut_record)
    with pytest.raises(CorruptFileError) as err:
        SAE.load_from_disk(qwen / "layer3.sae.pt", format="qwen-scope", k=4)
    assert err.value.path == str(qwen / "layer3.sae.pt") and err.value.field == "data/0"

    gf = {"encoder_linear.weight": s["W_enc"], "encoder_linear.bias": s["b_enc"],
          "decoder_linear.weight": s["W_dec"], "decoder_linear.bias": s["b_dec"]}
    torch.save(gf, good)
    _rewrite(good, tmp_path / "sae-l5.pth", _deflate_record)
    sae = SAE.load_from_disk(tmp_path / "sae-l5.pth", format="goodfire")
    assert torch.equal(sae.W_enc.detach(), s["W_enc"].T) and torch.equal(sae.b_dec.detach(), s["b_dec"])

    dl = tmp_path / "dl"
    dl.mkdir()
    torch.save({"encoder.weight": s["W_enc"], "encoder.bias": s["b_enc"], "decoder.weight": s["W_dec"],
                "decoder.bias": s["b_dec"]}, good)
    _rewrite(good, dl / "ae.pt", _deflate_record)
    (dl / "config.json").write_text(json.dumps({"trainer": {"dict_class": "AutoEncoderNew"}}))
    sae = SAE.load_from_disk(dl)
    assert torch.equal(sae.W_enc.detach(), s["W_enc"].T)

    lm = tmp_path / "lm"
    shutil.copytree(FIXTURES / "llamascopium" / "relu_inference_no_norm", lm)
    (lm / "sae_weights.safetensors").unlink()
    from safetensors.torch import load_file

    ref = load_file(FIXTURES / "llamascopium" / "relu_inference_no_norm" / "sae_weights.safetensors")
    torch.save({"sae": ref, "version": "x"}, good)
    _rewrite(good, lm / "sae_weights.pt", _deflate_record)
    want = SAE.load_from_disk(FIXTURES / "llamascopium" / "relu_inference_no_norm")
    got = SAE.load_from_disk(lm)
    for name, p in want.named_parameters():
        assert torch.equal(dict(got.named_parameters())[name], p), name
    _rewrite(good, lm / "sae_weights.pt", _cut_record)
    with pytest.raises(CorruptFileError) as err:
        SAE.load_from_disk(lm)
    assert err.value.path == str(lm / "sae_weights.pt") and err.value.field == "data/0"


# ------------------------------------------------------------------- 2. shared submodules (a DAG)


def _dag(depth: int) -> nn.Module:
    m: nn.Module = nn.Linear(2, 2)
    for _ in range(depth):
        m = nn.Sequential(m, m)  # both children are the same module: 2**depth paths
    return m


def test_module_dag_with_2_to_the_40_paths_is_refused_quickly(tmp_path):
    path = tmp_path / "dag.pt"
    torch.save(_dag(40), path)
    assert path.stat().st_size < 20_000
    obj = safe_load(path)
    with pytest.raises(CorruptFileError, match="submodule paths") as err:
        _within(30, lambda: module_state_dict(obj, path=path))
    assert err.value.path == str(path) and err.value.field


def test_module_dag_inside_an_overcomplete_pickle_is_refused_by_the_loader(tmp_path, monkeypatch):
    import sys
    import types

    mod = types.ModuleType("overcomplete.sae.topk_sae")
    for name in ("overcomplete", "overcomplete.sae"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "overcomplete.sae.topk_sae", mod)

    class TopKSAE(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = _dag(40)
            self.top_k = 2

    TopKSAE.__module__, TopKSAE.__qualname__ = "overcomplete.sae.topk_sae", "TopKSAE"
    mod.TopKSAE = TopKSAE
    (tmp_path / "m").mkdir()
    torch.save(TopKSAE(), tmp_path / "m" / "module.pt")
    with pytest.raises(CorruptFileError) as err:
        _within(30, lambda: SAE.load_from_disk(tmp_path / "m", format="overcomplete"))
    assert err.value.path == str(tmp_path / "m" / "module.pt")


def test_shared_submodules_appear_under_every_name_as_in_torch(tmp_path):
    model = _dag(3)
    model.extra = nn.Linear(2, 3, bias=False)
    path = tmp_path / "dag.pt"
    torch.save(model, path)
    got = module_state_dict(safe_load(path))
    want = model.state_dict()
    assert list(got) == list(want) and len(got) == 16 + 1
    for key in want:
        assert torch.equal(got[key], want[key]), key


def test_module_cycle_is_refused(tmp_path):
    model = nn.Sequential(nn.Linear(2, 2))
    model._modules["loop"] = model
    path = tmp_path / "cycle.pt"
    torch.save(model, path)
    with pytest.raises(CorruptFileError, match="cycle") as err:
        _within(30, lambda: module_state_dict(safe_load(path), path=path))
    assert err.value.field == "loop"


# ------------------------------------------------------------------- 3. allocations from small arguments


def test_bytearray_is_not_on_the_allow_list(tmp_path):
    """``bytearray(n)``: 33 bytes of pickle allocated 3 GiB; here 64 MiB (the refusal is what is checked)."""
    path = tmp_path / "ba.pkl"
    path.write_bytes(b"\x80\x02c__builtin__\nbytearray\nJ" + struct.pack("<i", 1 << 26) + b"\x85R.")
    assert len(path.read_bytes()) == 33
    for read in (safe_load, peek):
        with pytest.raises(UnsafeCheckpointError) as err:
            read(path)
        assert err.value.field == "builtins.bytearray" and err.value.path == str(path)


def _two_faced_zip(path: Path, evil_pkl: bytes) -> None:
    """A torch zip that Python's zipfile and torch's reader (miniz) read differently: archive A (``evil_pkl``)
    then archive B (a real torch.save), one end record pointing at A's directory. zipfile finds the directory
    just before the end record (B's) and shifts its offsets as if bytes were prepended; miniz takes the offset
    as written (A's directory, A's records)."""
    buf = io.BytesIO()
    torch.save({"w": torch.ones(4)}, buf)
    with zipfile.ZipFile(buf) as z:
        blobs = {n: z.read(n) for n in z.namelist()}
    pkl_name = next(n for n in blobs if n.endswith("/data.pkl"))
    assert len(evil_pkl) <= len(blobs[pkl_name])
    evil_pkl += b" " * (len(blobs[pkl_name]) - len(evil_pkl))  # after STOP: never read

    def archive(pkl: bytes) -> tuple[bytes, bytes, bytes]:
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
            for n, blob in blobs.items():
                z.writestr(n, pkl if n == pkl_name else blob)
        data = out.getvalue()
        cd_size, cd_off = struct.unpack("<II", data[-10:-2])
        return data[:cd_off], data[cd_off:cd_off + cd_size], data[-22:]

    a_records, a_dir, _ = archive(evil_pkl)
    b_records, b_dir, b_end = archive(blobs[pkl_name])
    assert len(a_records) == len(b_records) and len(a_dir) == len(b_dir)
    path.write_bytes(a_records + a_dir + b_records + b_dir + b_end[:16] + struct.pack("<I", len(a_records))
                     + b_end[20:])


def test_zip_read_differently_by_zipfile_and_torch_is_refused(tmp_path):
    """The allow-list is checked on the data.pkl Python's zipfile reads, torch.load runs the one miniz reads: on
    a two-faced zip, 9bcb6c0 and 80b927b both returned the ``bytearray(1 MiB)`` torch ran (a bytearray of any
    size: defect 3 through the back door). The layout torch.save writes is required, so both see one archive."""
    path = tmp_path / "two_faced.pt"
    _two_faced_zip(path, b"\x80\x02}q\x00X\x01\x00\x00\x00wq\x01c__builtin__\nbytearray\nJ\x00\x00\x10\x00\x85Rs.")
    with zipfile.ZipFile(path) as z:  # what Python sees: the real state dict
        assert b"bytearray" not in z.read(next(n for n in z.namelist() if n.endswith("/data.pkl")))
    assert isinstance(torch.load(path, weights_only=True)["w"], bytearray)  # what torch runs
    for read in (safe_load, peek, load_weights_only):
        with pytest.raises(CorruptFileError, match="zip layout") as err:
            read(path)
        assert err.value.path == str(path)


def test_zip_with_bytes_before_it_or_a_comment_is_refused_by_name(tmp_path):
    """torch cannot read these either (its reader takes offsets as written); the refusal names the layout."""
    good = tmp_path / "good.pt"
    torch.save({"w": torch.ones(4)}, good)
    prefixed, commented = tmp_path / "prefixed.pt", tmp_path / "commented.pt"
    prefixed.write_bytes(b"JUNK" * 16 + good.read_bytes())
    with pytest.raises(Exception):  # noqa: B017 (torch's own error type varies)
        torch.load(prefixed, weights_only=True)
    data = good.read_bytes()
    commented.write_bytes(data[:-2] + struct.pack("<H", 7) + b"comment")
    for path in (prefixed, commented):
        for read in (safe_load, peek, load_weights_only):
            with pytest.raises(CorruptFileError, match="zip layout"):
                read(path)


def test_legacy_storage_larger_than_the_file_is_refused_before_allocating(tmp_path):
    good = tmp_path / "legacy.pt"
    torch.save({"w": torch.ones(4)}, good, _use_new_zipfile_serialization=False)
    data = good.read_bytes()
    # the storage's element count (4) is in the pickle as BININT1 4 right before the view metadata (None)
    marker = b"K\x04Ntq\x07Q"
    assert data.count(marker) == 1
    bad = tmp_path / "legacy_big.pt"
    bad.write_bytes(data.replace(marker, b"J" + struct.pack("<i", 1 << 26) + b"Ntq\x07Q"))  # 256 MiB declared
    with pytest.raises(CorruptFileError, match="more than the file holds") as err:
        safe_load(bad)
    assert err.value.path == str(bad)


# ------------------------------------------------------------------- 4. members inflating to GiBs


def test_data_pkl_larger_than_the_cap_is_refused_before_inflating(tmp_path):
    good = tmp_path / "good.pt"
    torch.save({"w": torch.ones(3)}, good)
    bad = tmp_path / "fat_pkl.pt"
    _rewrite(good, bad, lambda n, b: (b + b"\0" * (65 << 20), zipfile.ZIP_DEFLATED) if n.endswith("data.pkl")
             else (b, zipfile.ZIP_STORED))
    assert bad.stat().st_size < 200_000
    for read in (safe_load, peek, load_weights_only):
        with pytest.raises(CorruptFileError, match="structure only") as err:
            read(bad)
        assert err.value.field.endswith("data.pkl") and err.value.path == str(bad)


def test_deflated_record_larger_than_declared_is_refused(tmp_path):
    good = tmp_path / "good.pt"
    torch.save({"w": torch.ones(100)}, good)
    bad = tmp_path / "bomb.pt"
    _rewrite(good, bad, lambda n, b: (b + b"\0" * (64 << 20), zipfile.ZIP_DEFLATED) if n.endswith("/data/0")
             else (b, zipfile.ZIP_STORED))
    for read in (safe_load, load_weights_only):
        with pytest.raises(CorruptFileError, match="needs 400") as err:
            read(bad)
        assert err.value.field == "data/0"


@pytest.mark.parametrize("record", [".data/serialization_id", "version", "byteorder"])
def test_deflated_metadata_record_torch_reads_whole_is_refused_before_inflating(tmp_path, record):
    """torch.load reads these small records whole (the stream reader's id and version, the byte order) before
    anything of ours could look at them: a 300 kB file whose .data/serialization_id inflates to 300 MiB cost
    600 MiB of RSS inside torch (measured). Refused from the zip directory, naming the record."""
    good = tmp_path / "good.pt"
    torch.save({"w": torch.ones(3)}, good)
    with zipfile.ZipFile(good) as z:
        assert any(n.endswith("/" + record) for n in z.namelist())
    bad = tmp_path / "meta_bomb.pt"
    _rewrite(good, bad, lambda n, b: (b + b"\n" * (300 << 20), zipfile.ZIP_DEFLATED) if n.endswith("/" + record)
             else (b, zipfile.ZIP_STORED))
    assert bad.stat().st_size < 1_000_000
    for read in (safe_load, peek, load_weights_only):
        with pytest.raises(CorruptFileError, match="reads it whole") as err:
            _within(30, lambda read=read: read(bad))
        assert err.value.field == record and err.value.path == str(bad)


@pytest.mark.filterwarnings("ignore:Duplicate name")
def test_zip_listing_a_record_name_twice_is_refused(tmp_path):
    """Our checks and torch's reader must look at the same record: with two of one name, which would torch read?"""
    good = tmp_path / "good.pt"
    torch.save({"w": torch.ones(100)}, good)
    bad = tmp_path / "twice.pt"
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(bad, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            blob = zin.read(info)
            if info.filename.endswith("/data/0"):
                zout.writestr(info.filename, blob[:40])  # a short one first, then the right one
            zout.writestr(info.filename, blob)
    for read in (safe_load, peek, load_weights_only):
        with pytest.raises(CorruptFileError, match="twice") as err:
            read(bad)
        assert err.value.path == str(bad)


def _gemma_params(d: int = 8, w: int = 16) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"W_enc": rng.standard_normal((d, w), dtype=np.float32), "W_dec": rng.standard_normal((w, d),
            dtype=np.float32), "b_enc": np.zeros(w, np.float32), "b_dec": np.zeros(d, np.float32),
            "threshold": np.full(w, 0.1, np.float32)}


def test_unneeded_deflated_npz_member_is_never_inflated(tmp_path):
    params = _gemma_params()
    folder = tmp_path / "g"
    folder.mkdir()
    np.savez_compressed(folder / "params.npz", **params, junk=np.zeros(64 << 20, np.uint8))
    assert (folder / "params.npz").stat().st_size < 1_000_000
    tracemalloc.start()
    try:
        sae = SAE.load_from_disk(folder)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, peak
    assert torch.equal(sae.W_enc.detach(), torch.from_numpy(params["W_enc"]))


def _patch_sizes(path: Path, member: str, file_size: int) -> None:
    """Rewrite a member's uncompressed size in both its local header and the central directory."""
    data = bytearray(path.read_bytes())
    name = member.encode()
    local = data.index(b"PK\x03\x04")
    while data[local + 30: local + 30 + len(name)] != name:
        local = data.index(b"PK\x03\x04", local + 1)
    data[local + 22: local + 26] = struct.pack("<I", file_size)
    central = data.index(b"PK\x01\x02")
    while data[central + 46: central + 46 + len(name)] != name:
        central = data.index(b"PK\x01\x02", central + 1)
    data[central + 24: central + 28] = struct.pack("<I", file_size)
    path.write_bytes(bytes(data))


def test_npz_member_claiming_more_than_deflate_can_produce_is_refused(tmp_path):
    path = tmp_path / "lying.npz"
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (1000000000,), }"
    header += " " * (-(10 + len(header) + 1) % 64) + "\n"
    blob = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + b"\0" * 64
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("w.npy", blob)
    _patch_sizes(path, "w.npy", 4_000_000_200)
    with pytest.raises(CorruptFileError, match="more than deflate") as err:
        read_npz(path)
    assert err.value.field == "w" and err.value.path == str(path)


# ------------------------------------------------------------------- 5. config values


def _lm_folder(tmp_path: Path, **changes: object) -> Path:
    folder = tmp_path / "lm"
    shutil.copytree(FIXTURES / "llamascopium" / "topk_dataset_wise", folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(changes)
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


@pytest.mark.parametrize(("field", "value"), [("top_k", 10**9), ("top_k", 1e9), ("expansion_factor", 1e400),
                                              ("expansion_factor", float("nan")), ("top_k", 2**70)])
def test_lm_saes_bad_config_values_name_the_file_and_field(tmp_path, field, value):
    folder = _lm_folder(tmp_path, **{field: value})
    with pytest.raises(ConfigError) as err:
        SAE.load_from_disk(folder)
    assert err.value.path == str(folder / "config.json") and err.value.field == field


def test_huge_k_in_a_goodfire_file_name_names_the_file(tmp_path):
    s = _qwen_state()
    path = tmp_path / "topk_sae_l15_exp16_k1000000000.pt"
    torch.save({"encoder_linear.weight": s["W_enc"], "decoder.weight": s["W_dec"]}, path)
    with pytest.raises(ConfigError) as err:
        SAE.load_from_disk(path, format="goodfire")
    assert err.value.path == str(path) and err.value.field == "k"
