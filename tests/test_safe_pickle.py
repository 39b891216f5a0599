"""sae_hub.safe_pickle: nothing from a checkpoint runs, and what is allowed loads faithfully."""

from __future__ import annotations

import io
import os
import pickle
import runpy
import subprocess
import sys
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from sae_hub.errors import CorruptFileError, MissingFileError, UnsafeCheckpointError, UnsupportedSAEError
from sae_hub.safe_pickle import (
    Stub,
    is_stub,
    load_weights_only,
    module_state_dict,
    peek,
    qualname_of,
    read_npz,
    safe_load,
)

# ------------------------------------------------------------------------------------------ payloads


def _payloads(marker: Path) -> dict[str, tuple[object, str]]:
    """name -> (callable the pickle would call, its args); each creates ``marker`` if run."""
    m = str(marker)
    code = f"open({m!r}, 'w').write('pwned')"
    return {
        "os.system": (os.system, (f"touch {m}",)),
        "posix.system": (os.system, (f"touch {m}",)),  # os.system pickles as posix.system
        "builtins.exec": (exec, (code,)),
        "builtins.eval": (eval, (f"__import__('os').system('touch {m}')",)),
        "subprocess.Popen": (subprocess.Popen, (["touch", m],)),
        "runpy._run_code": (runpy._run_code, (code, {})),
    }


class _Evil:
    def __init__(self, func: object, args: tuple) -> None:
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _expected_name(func: object) -> str:
    return f"{func.__module__}.{func.__qualname__}"


PAYLOAD_NAMES = ["os.system", "posix.system", "builtins.exec", "builtins.eval", "subprocess.Popen", "runpy._run_code"]


def test_payloads_are_real(tmp_path):
    """Guard against a vacuous test: a normal unpickle of the exec payload does create the marker."""
    marker = tmp_path / "marker"
    func, args = _payloads(marker)["builtins.exec"]
    pickle.loads(pickle.dumps(_Evil(func, args)))
    assert marker.exists()


@pytest.mark.parametrize("protocol", [2, 4, 5])
@pytest.mark.parametrize("name", PAYLOAD_NAMES)
def test_plain_pickle_payload_refused(tmp_path, name, protocol):
    marker = tmp_path / "marker"
    func, args = _payloads(marker)[name]
    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"weights": [1.0, 2.0], "x": _Evil(func, args)}, protocol=protocol))
    with pytest.raises(UnsafeCheckpointError) as err:
        safe_load(path)
    assert err.value.field == _expected_name(func)
    assert _expected_name(func) in str(err.value) and str(path) in str(err.value)
    assert not marker.exists()


@pytest.mark.parametrize("name", PAYLOAD_NAMES)
@pytest.mark.parametrize("zip_format", [True, False])
def test_torch_file_payload_refused(tmp_path, name, zip_format):
    marker = tmp_path / "marker"
    func, args = _payloads(marker)[name]
    path = tmp_path / "evil.pt"
    torch.save({"W": torch.randn(3, 2), "evil": _Evil(func, args)}, path,
               _use_new_zipfile_serialization=zip_format)
    assert zipfile.is_zipfile(path) == zip_format
    with pytest.raises(UnsafeCheckpointError) as err:
        safe_load(path)
    assert err.value.field == _expected_name(func)
    with pytest.raises(UnsafeCheckpointError):
        peek(path)
    with pytest.raises(UnsafeCheckpointError):
        load_weights_only(path)
    assert not marker.exists()


@pytest.mark.parametrize("global_name", ["builtins getattr", "builtins __import__", "builtins exec",
                                         "posix system", "nt system", "evil_module_xyz run", "torch load",
                                         "torch.serialization load", "numpy.core.multiarray _reconstruct",
                                         "torch._utils _rebuild_device_tensor_from_numpy"])
def test_unknown_or_dangerous_globals_refused(tmp_path, global_name):
    """Hand-written GLOBAL opcodes (no real module needed), called with REDUCE."""
    module, name = global_name.split()
    data = b"\x80\x02c" + f"{module}\n{name}\n".encode() + b"X\x04\x00\x00\x00argsq\x00\x85q\x01R."
    path = tmp_path / "evil.pkl"
    path.write_bytes(data)
    with pytest.raises(UnsafeCheckpointError) as err:
        safe_load(path)
    assert err.value.field == f"{module}.{name}"


def test_payload_nested_in_an_allowed_library_module(tmp_path, monkeypatch):
    """A stubbed library class does not launder a payload hidden in its state."""
    marker = tmp_path / "marker"
    mod = types.ModuleType("nanosae.models")
    monkeypatch.setitem(sys.modules, "nanosae", types.ModuleType("nanosae"))
    monkeypatch.setitem(sys.modules, "nanosae.models", mod)

    class SAE(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = nn.Linear(4, 8)
            self.hook = _Evil(*_payloads(marker)["subprocess.Popen"])

    SAE.__module__, SAE.__qualname__ = "nanosae.models", "SAE"
    mod.SAE = SAE
    path = tmp_path / "sae.pt"
    torch.save(SAE(), path)
    with pytest.raises(UnsafeCheckpointError) as err:
        safe_load(path)
    assert err.value.field == "subprocess.Popen"
    assert not marker.exists()


def test_allowed_callables_cannot_run_code(tmp_path):
    """Stub classes called through REDUCE only record their arguments."""
    data = (b"\x80\x02covercomplete.sae.dictionary\nnormalize_l2\nX\x0b\x00\x00\x00rm -rf /tmpq\x00\x85R.")
    path = tmp_path / "x.pkl"
    path.write_bytes(data)
    obj = safe_load(path)
    assert isinstance(obj, Stub) and obj.qualname == "overcomplete.sae.dictionary.normalize_l2"
    assert obj.state["_stub_args"] == ("rm -rf /tmp",)


# ------------------------------------------------------------------------------------------ fidelity


def test_state_dict_round_trip_zip_and_legacy(tmp_path):
    base = torch.arange(20, dtype=torch.float32)
    sd = {
        "w": torch.randn(5, 3),
        "t": torch.randn(3, 5).T,  # non-contiguous
        "view": base[4:10],  # shares storage with "base", offset
        "base": base,
        "bf16": torch.randn(4, dtype=torch.bfloat16),
        "i32": torch.tensor(7, dtype=torch.int32),
        "empty": torch.zeros(0, 3),
        "nested": {"step": 3, "betas": (0.9, 0.999), "name": "x", "b": b"\x00\x01", "s": {1, 2}},
    }
    for zip_format in (True, False):
        path = tmp_path / f"sd_{zip_format}.pt"
        torch.save(sd, path, _use_new_zipfile_serialization=zip_format)
        out = safe_load(path)
        for key in ("w", "t", "view", "base", "bf16", "i32", "empty"):
            assert out[key].dtype == sd[key].dtype and torch.equal(out[key], sd[key]), key
        assert out["nested"] == sd["nested"]
        # views still share their storage, as torch.load gives them
        out["base"][5] = -1.0
        assert out["view"][1] == -1.0
        sk = safe_load(path, skeleton=True)
        assert sk["w"].is_meta and sk["w"].shape == (5, 3) and sk["bf16"].dtype == torch.bfloat16


def test_zip_tensors_are_memory_mapped_copy_on_write(tmp_path):
    path = tmp_path / "sd.pt"
    torch.save({"w": torch.ones(64, 64)}, path)
    before = path.read_bytes()
    out = safe_load(path)
    out["w"].mul_(3)  # writable, never reaches the file
    assert path.read_bytes() == before
    assert torch.equal(safe_load(path)["w"], torch.ones(64, 64))


def test_module_pickle_becomes_inert_stubs(tmp_path, monkeypatch):
    mod = types.ModuleType("overcomplete.sae.fake")
    for name in ("overcomplete", "overcomplete.sae"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "overcomplete.sae.fake", mod)

    def normalize_l2(x):
        return x

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.enc = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8))
            self.register_buffer("scale", torch.tensor(2.0))
            self.register_buffer("tmp", torch.tensor(1.0), persistent=False)
            self.top_k = 3
            self.normalization = normalize_l2

    for obj, name in ((Model, "Model"), (normalize_l2, "normalize_l2")):
        obj.__module__, obj.__qualname__ = "overcomplete.sae.fake", name
        setattr(mod, name, obj)
    model = Model()
    path = tmp_path / "module.pt"
    torch.save(model, path)
    for name in ("overcomplete", "overcomplete.sae", "overcomplete.sae.fake"):
        monkeypatch.delitem(sys.modules, name)  # loading must not need (or import) the library

    out = safe_load(path)
    assert isinstance(out, Stub) and out.qualname == "overcomplete.sae.fake.Model"
    assert out.state["top_k"] == 3
    assert qualname_of(out.state["normalization"]) == "overcomplete.sae.fake.normalize_l2"
    assert is_stub(out.state["normalization"]) and not isinstance(out.state["normalization"], Stub)
    assert qualname_of(out.state["_modules"]["enc"]) == "torch.nn.modules.container.Sequential"
    sd = module_state_dict(out)
    ref = model.state_dict()
    assert sorted(sd) == sorted(ref)
    for k in ref:
        assert torch.equal(sd[k], ref[k])
    assert "overcomplete.sae.fake" not in sys.modules


# ------------------------------------------------------------------------------------------ bad files


def test_truncated_and_garbage_files(tmp_path):
    good = tmp_path / "good.pt"
    torch.save({"w": torch.randn(64, 64)}, good)
    data = good.read_bytes()
    for n, blob in enumerate([data[: len(data) // 2], data[:100], b"", b"not a pickle at all", b"\x80\x02}q\x00(X"]):
        bad = tmp_path / f"bad{n}.pt"
        bad.write_bytes(blob)
        with pytest.raises(CorruptFileError):
            safe_load(bad)
        with pytest.raises(CorruptFileError):
            load_weights_only(bad)
    with pytest.raises(MissingFileError):
        safe_load(tmp_path / "nope.pt")


def test_record_smaller_than_the_pickle_claims(tmp_path):
    good = tmp_path / "good.pt"
    torch.save({"w": torch.randn(100)}, good)
    bad = tmp_path / "bad.pt"
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(bad, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            blob = zin.read(info)
            if info.filename.endswith("/data/0"):
                blob = blob[:40]
            zout.writestr(info.filename, blob)
    with pytest.raises(CorruptFileError, match="needs 400"):
        safe_load(bad)


def test_out_of_bounds_tensor_view_refused(tmp_path):
    """A tensor whose size/stride reach past its storage is refused (torch's set_ would not check)."""
    sd = {"w": torch.randn(4)}
    buf = io.BytesIO()
    torch.save(sd, buf)
    src = tmp_path / "src.pt"
    src.write_bytes(buf.getvalue())
    with zipfile.ZipFile(src) as z:
        names = z.namelist()
        pkl_name = next(n for n in names if n.endswith("data.pkl"))
        pkl = z.read(pkl_name)
        # K\x04\x85 is the size tuple (4,); make it (100,)
        assert b"K\x04\x85" in pkl
        evil_pkl = pkl.replace(b"K\x04\x85", b"Kd\x85", 1)
        bad = tmp_path / "bad.pt"
        with zipfile.ZipFile(bad, "w", zipfile.ZIP_STORED) as zout:
            for n in names:
                zout.writestr(n, evil_pkl if n == pkl_name else z.read(n))
    with pytest.raises(CorruptFileError, match="needs 100 elements"):
        safe_load(bad)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torchscript_archive_refused(tmp_path):
    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(nn.Linear(2, 2)), path)
    with pytest.raises(UnsupportedSAEError, match="TorchScript"):
        safe_load(path)


def test_plain_pickle_of_tensor_is_refused(tmp_path):
    """``pickle.dumps(tensor)`` goes through torch.storage._load_from_bytes, which is not allowed."""
    path = tmp_path / "t.pkl"
    path.write_bytes(pickle.dumps(torch.ones(2)))
    with pytest.raises(UnsafeCheckpointError, match=r"torch.storage._load_from_bytes"):
        safe_load(path)


def test_load_weights_only_reads_state_dicts(tmp_path):
    path = tmp_path / "sd.pt"
    torch.save({"a": torch.randn(3), "k": torch.tensor(4, dtype=torch.int32)}, path)
    out = load_weights_only(path)
    assert out["k"].item() == 4 and out["a"].shape == (3,)


def test_read_npz_never_unpickles(tmp_path):
    marker = tmp_path / "marker"
    good = tmp_path / "good.npz"
    np.savez(good, w=np.arange(6, dtype=np.float32).reshape(2, 3))
    assert torch.equal(read_npz(good)["w"], torch.arange(6, dtype=torch.float32).reshape(2, 3))
    evil = tmp_path / "evil.npz"
    arr = np.empty(1, dtype=object)
    arr[0] = _Evil(*_payloads(marker)["builtins.exec"])
    np.savez(evil, w=arr)
    with pytest.raises(UnsafeCheckpointError):
        read_npz(evil)
    assert not marker.exists()


def test_read_npz_equals_numpy_for_every_layout(tmp_path):
    """The direct-from-file path and the zip-stream path both give what np.load gives, bit for bit."""
    rng = np.random.default_rng(0)
    arrays = {
        "f32": rng.standard_normal((5, 7), dtype=np.float32),
        "fortran": np.asfortranarray(rng.standard_normal((4, 6))),
        "big_endian": rng.standard_normal(9).astype(">f4"),
        "f16": rng.standard_normal((3, 3)).astype(np.float16),
        "i64": np.arange(-3, 8, dtype=np.int64),
        "scalar": np.float32(2.5),
        "empty": np.zeros((0, 4), dtype=np.float32),
        "bool": np.array([True, False, True]),
    }
    for save in (np.savez, np.savez_compressed):
        path = tmp_path / f"{save.__name__}.npz"
        save(path, **arrays)
        got = read_npz(path)
        assert sorted(got) == sorted(arrays)
        for key, want in arrays.items():
            want = np.asarray(want)
            assert got[key].shape == want.shape, key
            assert np.array_equal(got[key].numpy(), want), key
            assert got[key].numpy().dtype == want.dtype.newbyteorder("="), key


def _npy_bytes(shape: tuple[int, ...], payload: bytes, descr: str = "<f4") -> bytes:
    header = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape!r}, }}".encode("latin1")
    header += b" " * (-(10 + len(header) + 1) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + payload


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_read_npz_refuses_lying_and_truncated_members(tmp_path, compression):
    lying = tmp_path / "lying.npz"
    with zipfile.ZipFile(lying, "w", compression) as z:  # header promises 4 TB, the entry holds 16 bytes
        z.writestr("w.npy", _npy_bytes((10**12,), b"\0" * 16))
    with pytest.raises(CorruptFileError, match="promises") as err:
        read_npz(lying)
    assert err.value.field == "w"
    good = tmp_path / "good.npz"
    np.savez(good, w=np.arange(1000, dtype=np.float32))
    cut = tmp_path / "cut.npz"
    cut.write_bytes(good.read_bytes()[:2000])  # the central directory is gone, and half the data
    with pytest.raises(CorruptFileError, match="cut.npz"):
        read_npz(cut)
    strings = tmp_path / "strings.npz"
    np.savez(strings, names=np.array(["a", "b"]))
    with pytest.raises(CorruptFileError, match="not a number type"):
        read_npz(strings)
    obj = tmp_path / "obj.npz"
    with zipfile.ZipFile(obj, "w", compression) as z:
        z.writestr("w.npy", _npy_bytes((1,), pickle.dumps([1]), descr="|O"))
    with pytest.raises(UnsafeCheckpointError):
        read_npz(obj)


@pytest.mark.parametrize("global_name", ["torch FloatStorage", "torch._utils _rebuild_tensor_v2",
                                         "collections OrderedDict", "torch Size"])
def test_build_cannot_tamper_with_allowed_globals(tmp_path, global_name):
    """BUILD (set attributes) on an allowed global would change later loads in this process: refused."""
    module, name = global_name.split()
    data = (b"\x80\x02c" + f"{module}\n{name}\n".encode()
            + b"}X\x05\x00\x00\x00dtypeK\x01sX\x0c\x00\x00\x00__defaults__K\x01sb.")
    path = tmp_path / "tamper.pkl"
    path.write_bytes(data)
    with pytest.raises(CorruptFileError, match="BUILD"):
        safe_load(path)
    good = tmp_path / "good.pt"
    torch.save({"w": torch.ones(3)}, good)
    out = safe_load(good)
    assert out["w"].dtype == torch.float32 and torch.equal(out["w"], torch.ones(3))


def test_read_npz_detects_a_flipped_bit(tmp_path):
    """np.load checks each member's CRC-32; reading members straight from the file must too."""
    good = tmp_path / "good.npz"
    np.savez(good, w=np.arange(1000, dtype=np.float32), f=np.asfortranarray(np.ones((3, 5))))
    assert torch.equal(read_npz(good)["w"], torch.arange(1000, dtype=torch.float32))
    data = bytearray(good.read_bytes())
    data[data.index(np.float32(500).tobytes())] ^= 0x01
    bad = tmp_path / "bad.npz"
    bad.write_bytes(bytes(data))
    with pytest.raises(CorruptFileError, match="CRC") as err:
        read_npz(bad)
    assert err.value.field == "w"


def test_read_npz_accepts_trailing_bytes_in_a_member_as_numpy_does(tmp_path):
    path = tmp_path / "pad.npz"
    buf = io.BytesIO()
    np.save(buf, np.arange(4, dtype=np.float32))
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("w.npy", buf.getvalue() + b"\0" * 8)
    with np.load(path, allow_pickle=False) as want:
        assert torch.equal(read_npz(path)["w"], torch.from_numpy(want["w"]))


def test_torch_allowed_allocators_are_refused(tmp_path):
    """torch's weights_only allows ``torch.Tensor(n)`` / ``bytearray(n)`` (n bytes from a 30-byte pickle); we do not."""
    for global_name in ("torch Tensor", "__builtin__ bytearray", "torch UntypedStorage", "collections Counter"):
        module, name = global_name.split()
        path = tmp_path / "alloc.pkl"
        path.write_bytes(b"\x80\x02c" + f"{module}\n{name}\n".encode() + b"J\x00\x00\x00\x04\x85R.")
        with pytest.raises(UnsafeCheckpointError) as err:
            safe_load(path)
        assert err.value.field.endswith(name)


def test_stand_ins_are_registered_only_during_the_load(tmp_path, monkeypatch):
    """After a load, torch's own safe-globals set is as before: a user's torch.load still refuses the library."""
    mod = types.ModuleType("nanosae.models")
    monkeypatch.setitem(sys.modules, "nanosae", types.ModuleType("nanosae"))
    monkeypatch.setitem(sys.modules, "nanosae.models", mod)

    class SAE(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = nn.Linear(4, 8)

    SAE.__module__, SAE.__qualname__ = "nanosae.models", "SAE"
    mod.SAE = SAE
    path = tmp_path / "sae.pt"
    torch.save(SAE(), path)
    before = list(torch.serialization.get_safe_globals())
    out = safe_load(path)
    assert qualname_of(out) == "nanosae.models.SAE"
    assert torch.equal(module_state_dict(out)["encoder.weight"], torch.load(path, weights_only=False).encoder.weight)
    assert list(torch.serialization.get_safe_globals()) == before
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)


# ------------------------------------------------------------------------------------------ one unpickling pass


class _PidPickler(pickle.Pickler):
    """Writes a torch zip's data.pkl by hand: ``_Storage`` objects become persistent ids; with ``shared_ids`` the
    same id tuple object is reused (the pickler then writes it once and fetches it from the memo)."""

    def __init__(self, file: io.BytesIO, ids: dict[int, tuple]) -> None:
        super().__init__(file, protocol=2)
        self.ids = ids

    def persistent_id(self, obj: object) -> tuple | None:
        return self.ids.get(id(obj))


def _hand_made_zip(path: Path, obj: object, ids: dict[int, tuple], records: dict[str, bytes]) -> None:
    buf = io.BytesIO()
    _PidPickler(buf, ids).dump(obj)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", buf.getvalue())
        z.writestr("archive/byteorder", "little")
        for key, blob in records.items():
            z.writestr(f"archive/data/{key}", blob)
        z.writestr("archive/version", "3\n")


class _Rebuild:
    """Pickles as ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())``."""

    def __init__(self, storage: object, offset: int, size: tuple, stride: tuple) -> None:
        self.args = (storage, offset, size, stride, False, __import__("collections").OrderedDict())

    def __reduce__(self):
        return torch._utils._rebuild_tensor_v2, self.args


def _torch_declared(path: Path) -> dict[str, int]:
    """Reference: the bytes per record torch's own unpickler asks for (first use of a key), with plain dummy
    classes registered for whatever torch would refuse."""
    from torch import _weights_only_unpickler as wo

    names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    with zipfile.ZipFile(path) as z:
        raw = z.read(next(n for n in z.namelist() if n.endswith("/data.pkl")))
    seen: dict[str, int] = {}

    def persistent_load(pid: tuple) -> object:
        _, storage_type, key, _, numel = pid
        seen.setdefault(key, numel * storage_type.dtype.itemsize)
        return torch.storage.TypedStorage(wrap_storage=torch.UntypedStorage(numel * storage_type.dtype.itemsize,
                                                                            device="meta"),
                                          dtype=storage_type.dtype, _internal=True)

    with torch.serialization.safe_globals([(type(n.rsplit(".", 1)[-1], (), {}), n) for n in names]):
        unpickler = wo.Unpickler(io.BytesIO(raw), encoding="utf-8")
        unpickler.persistent_load = persistent_load
        unpickler.load()
    return seen


def test_static_storage_ids_are_what_torch_unpickles(tmp_path):
    """The scan reads each record's declared size from the pickle without running it (so the zip directory is
    checked before torch.load, in one pass); it must agree with torch's own unpickler on every file."""
    from sae_hub import safe_pickle as sp

    base = torch.arange(40, dtype=torch.float64)
    made = {
        "mixed.pt": {"a": torch.randn(3, 5), "b": torch.arange(7), "h": torch.ones(4, dtype=torch.bfloat16),
                     "m": torch.zeros(2, dtype=torch.bool), "c": torch.ones(3, dtype=torch.complex64)},
        "views.pt": {"base": base, "view": base[4:10], "t": base.view(5, 8).t(), "again": base},
    }
    paths = sorted((Path(__file__).parent / "fixtures").rglob("*.pt"))
    for name, sd in made.items():
        torch.save(sd, tmp_path / name)
        paths.append(tmp_path / name)
    # the same id tuple written once and fetched from the memo for the second tensor
    storage = object()
    pid = ("storage", torch.FloatStorage, "0", "cpu", 6)
    _hand_made_zip(tmp_path / "memo.pt", {"x": _Rebuild(storage, 0, (2, 3), (3, 1)),
                                          "y": _Rebuild(storage, 2, (4,), (1,))},
                   {id(storage): pid}, {"0": torch.arange(6.0).numpy().tobytes()})
    paths.append(tmp_path / "memo.pt")
    for path in paths:
        z = sp._Zip(path)
        _, pids = sp._scan(io.BytesIO(z.pickle), path)
        assert z.declared(pids) == _torch_declared(path), path.name
    got = load_weights_only(tmp_path / "memo.pt")
    assert torch.equal(got["x"], torch.arange(6.0).view(2, 3)) and torch.equal(got["y"], torch.arange(2.0, 6.0))


def test_storage_id_torch_save_never_writes_is_refused(tmp_path):
    """An id whose key is not a string (torch would read data/0 for the int 0) cannot be matched to its record
    before loading: refused, naming data.pkl, by every entry point."""
    storage = object()
    path = tmp_path / "intkey.pt"
    _hand_made_zip(path, {"x": _Rebuild(storage, 0, (4,), (1,))}, {id(storage): ("storage", torch.FloatStorage,
                                                                                 0, "cpu", 4)},
                   {"0": b"\0" * 16})
    assert torch.load(path, weights_only=True)["x"].shape == (4,)  # torch itself would read it
    for read in (safe_load, peek, load_weights_only):
        with pytest.raises(CorruptFileError, match="storage id") as err:
            read(path)
        assert err.value.field == "data.pkl" and err.value.path == str(path)


def test_full_load_unpickles_once_and_detect_then_load_scans_once(tmp_path, monkeypatch):
    """A load runs torch's unpickler once (not a skeleton pass and then torch.load); peek followed by the load
    of the same file (what a loader's detect + load do) scans the pickle once."""
    from torch import _weights_only_unpickler as wo

    from sae_hub import safe_pickle as sp

    path = Path(__file__).parent / "fixtures" / "overcomplete" / "topk" / "module.pt"
    calls = {"load": 0, "scan": 0}
    real_load, real_scan = wo.Unpickler.load, getattr(sp, "_scan", None)

    def load(self):  # type: ignore[no-untyped-def]
        calls["load"] += 1
        return real_load(self)

    def scan(*a):  # type: ignore[no-untyped-def]
        calls["scan"] += 1
        return real_scan(*a)

    monkeypatch.setattr(wo.Unpickler, "load", load)
    monkeypatch.setattr(sp, "_scan", scan, raising=False)
    copy = tmp_path / "module.pt"  # a path of its own: nothing in peek's cache for it
    copy.write_bytes(path.read_bytes())
    getattr(sp, "_SCAN_CACHE", {}).clear()
    assert qualname_of(safe_load(copy)) == "overcomplete.sae.topk_sae.TopKSAE"
    assert calls == {"load": 1, "scan": 1}
    calls.update(load=0, scan=0)
    getattr(sp, "_SCAN_CACHE", {}).clear()
    peek(copy)
    safe_load(copy)
    assert calls == {"load": 2, "scan": 1}


def test_scan_cache_cannot_be_fooled_by_a_swapped_file(tmp_path):
    """The scan is reused by the exact bytes of data.pkl, never by path, size or mtime: a file replaced by a
    same-sized one with the old mtime is scanned again (here: bytearray, refused)."""
    good = tmp_path / "sd.pt"
    torch.save({"w": torch.ones(4)}, good)
    assert torch.equal(load_weights_only(good)["w"], torch.ones(4))
    st = good.stat()
    with zipfile.ZipFile(good) as z:
        names = z.namelist()
        blobs = {n: z.read(n) for n in names}
    pkl = next(n for n in names if n.endswith("data.pkl"))
    evil = b"\x80\x02c__builtin__\nbytearray\nJ\x00\x00\x00\x40\x85R."
    blobs[pkl] = evil + b" " * (len(blobs[pkl]) - len(evil))  # same size; trailing bytes after STOP
    with zipfile.ZipFile(good, "w", zipfile.ZIP_STORED) as z:
        for n in names:
            z.writestr(n, blobs[n])
    os.utime(good, ns=(st.st_atime_ns, st.st_mtime_ns))
    for read in (safe_load, load_weights_only, peek):
        with pytest.raises(UnsafeCheckpointError, match="bytearray"):
            read(good)


def test_scan_sees_every_global_torch_reads_in_mutated_pickles(tmp_path):
    """Fuzz: mutated data.pkl files (bytes flipped, GLOBAL opcodes spliced in, cuts). Wherever torch's own
    static reader of its unpickler's opcodes (``get_globals_in_pkl``) gets through a pickle, our scan either
    refuses it or has seen every global torch would resolve; and a load of the archive only ever fails with a
    SaeHubError."""
    import contextlib
    import random

    from torch import _weights_only_unpickler as wo

    from sae_hub import safe_pickle as sp
    from sae_hub.errors import SaeHubError

    src = Path(__file__).parent / "fixtures" / "overcomplete" / "topk" / "module.pt"
    with zipfile.ZipFile(src) as z:
        blobs = {n: z.read(n) for n in z.namelist()}
    pkl_name = next(n for n in blobs if n.endswith("/data.pkl"))
    pkl = blobs[pkl_name]
    rng = random.Random(1234)
    splices = [b"c__builtin__\nbytearray\n", b"cposix\nsystem\n", b"ctorch\nTensor\n", b"(", b"t", b"q\x07", b"h\x02"]
    checked = 0
    for i in range(200):
        data = bytearray(pkl)
        for _ in range(rng.randint(1, 2)):
            pos = rng.randrange(len(data))
            choice = rng.random()
            if choice < 0.4:
                data[pos] = rng.randrange(256)
            elif choice < 0.9:
                data[pos:pos] = rng.choice(splices)
            else:
                del data[pos:]
                data += b"."
        data = bytes(data)
        try:
            theirs = wo.get_globals_in_pkl(io.BytesIO(data))
        except Exception:  # torch cannot read it either
            theirs = None
        try:
            ours = set(sp._scan(io.BytesIO(data), None)[0])
        except SaeHubError:
            ours = None
        if theirs is not None and ours is not None:
            assert theirs <= ours, (i, theirs - ours)
            checked += 1
        path = tmp_path / f"m{i}.pt"
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zout:
            for n, blob in blobs.items():
                zout.writestr(n, data if n == pkl_name else blob)
        for read in (safe_load, load_weights_only):
            with contextlib.suppress(SaeHubError):  # any other exception fails the test
                read(path)
    assert checked > 40  # the comparison happened on a good share of the mutants
