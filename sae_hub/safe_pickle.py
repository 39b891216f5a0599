"""Reading torch pickles without running code from them.

Some SAE libraries publish whole pickled modules (``torch.save(model)``: overcomplete, nanoSAE). Loading those
with ``torch.load(weights_only=False)`` imports and calls whatever the pickle names, so a checkpoint could run
``os.system``. :func:`safe_load` reads such files with its own :class:`pickle.Unpickler` subclass instead:

* ``find_class`` is an allow-list. Tensor-rebuild functions and storage types map to local re-implementations,
  ``collections.OrderedDict`` / ``set`` / ``frozenset`` are themselves, and classes or functions of the
  known SAE libraries (``overcomplete.sae``, ``psn.sae``, ``nanosae``, ``dictionary_learning``) and of
  ``torch.nn`` map to inert :class:`Stub` types that only record their qualified name and the pickled state.
  Every other global (``os.system``, ``builtins.eval``, ``subprocess.Popen``, an unknown module, ...) raises
  :class:`~sae_hub.errors.UnsafeCheckpointError` naming it, before anything is called.
* ``BUILD`` (setting attributes) is allowed only on fresh stub instances and ``OrderedDict``s, so a pickle
  cannot tamper with an allowed function, type tag or tensor for later loads in the same process.
* ``persistent_load`` rebuilds tensor storages from the archive itself (torch zip format: memory-mapped
  copy-on-write, no copy; legacy ``_use_new_zipfile_serialization=False`` format: read from the stream).
  Sizes, strides and offsets are checked against the storage (``Tensor.set_`` does not check them).

Nothing from the checkpoint's own code runs, and nothing is imported: the real libraries need not be
installed. Stubs of ``nn.Module`` subclasses keep ``_parameters`` / ``_buffers`` / ``_modules`` in their
``__dict__``; :func:`module_state_dict` flattens them like ``nn.Module.state_dict``.

Pure state dicts can also be read with :func:`load_weights_only` (``torch.load(weights_only=True)``, typed
errors). NumPy archives must be read with :func:`read_npz` (``allow_pickle=False``), never ``np.load``
defaults.
"""

from __future__ import annotations

import _compat_pickle
import io
import math
import mmap
import os
import pickle
import struct
import tarfile
import threading
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any, ClassVar

import torch

from sae_hub.errors import CorruptFileError, SaeHubError, UnsafeCheckpointError, UnsupportedSAEError

__all__ = [
    "LIBRARY_PREFIXES",
    "Stub",
    "is_stub",
    "load_weights_only",
    "module_state_dict",
    "peek",
    "peek_for_detection",
    "qualname_of",
    "read_npz",
    "safe_load",
]

# Module prefixes whose classes and functions may appear in a pickle; each maps to an inert stub.
LIBRARY_PREFIXES: tuple[str, ...] = ("overcomplete.sae", "psn.sae", "nanosae", "dictionary_learning")
_TORCH_STUB_PREFIXES: tuple[str, ...] = ("torch.nn.modules", "torch.nn.functional")

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
# A torch ``data.pkl`` holds structure only (tensor bytes live in data/N records): a few kB for an SAE, some MB for
# a whole LLM state dict. Anything larger is refused before it is read (or inflated).
MAX_PICKLE_BYTES = 64 << 20
# deflate cannot compress better than ~1032:1; a record that claims more is a lie (a zip bomb or a damaged header)
_MAX_DEFLATE_RATIO = 1032
# module trees: real ones are < 20 deep with < 10k submodule paths; shared submodules multiply paths
_MAX_MODULE_DEPTH = 128
_MAX_MODULE_PATHS = 100_000
_LEGACY_PROTOCOL = 1001

_STORAGE_DTYPES: dict[str, torch.dtype] = {
    "DoubleStorage": torch.float64,
    "FloatStorage": torch.float32,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
    "ComplexFloatStorage": torch.complex64,
    "ComplexDoubleStorage": torch.complex128,
    "UntypedStorage": torch.uint8,
}


# ---------------------------------------------------------------------------------------------- stubs


class _StubMeta(type):
    """Metaclass so that a stub *class* (a pickled function or class reference) also answers ``.qualname``."""

    @property
    def qualname(cls) -> str:
        return str(cls.__dict__.get("_stub_qualname", "<stub>"))

    def __repr__(cls) -> str:
        return f"<stub {cls.qualname}>"


class Stub(metaclass=_StubMeta):
    """Inert stand-in for a class or function a checkpoint names: it stores state and does nothing else.

    A pickled *instance* (``nn.Module``, dataclass) becomes an instance of a per-name ``Stub`` subclass whose
    ``__dict__`` is the pickled state; a pickled *reference* (a normalisation function kept as an attribute)
    stays the stub class itself. Both answer ``.qualname`` (``"overcomplete.sae.topk_sae.TopKSAE"``).
    Calling a stub class (a pickle's ``REDUCE``) only records the arguments.
    """

    _stub_qualname: ClassVar[str] = "<stub>"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.__dict__["_stub_args"] = args
        if kwargs:
            self.__dict__["_stub_kwargs"] = kwargs

    def __setstate__(self, state: Any) -> None:
        slots = None
        if isinstance(state, tuple) and len(state) == 2 and (state[0] is None or isinstance(state[0], dict)):
            state, slots = state
        if isinstance(state, dict):
            self.__dict__.update({str(k): v for k, v in state.items()})
        elif state is not None:
            self.__dict__["_stub_state"] = state
        if isinstance(slots, dict):
            self.__dict__.update({str(k): v for k, v in slots.items()})

    @property
    def qualname(self) -> str:
        return type(self)._stub_qualname

    @property
    def state(self) -> dict[str, Any]:
        """The pickled attributes (``training``, ``_parameters``, ``top_k``, ``config`` ...)."""
        return self.__dict__

    def __repr__(self) -> str:
        return f"<stub instance of {self.qualname}>"


_STUB_TYPES: dict[str, type[Stub]] = {}
_STUB_LOCK = threading.Lock()


def _stub_type(qualname: str) -> type[Stub]:
    with _STUB_LOCK:
        cls = _STUB_TYPES.get(qualname)
        if cls is None:
            short = qualname.rsplit(".", 1)[-1]
            name = short if short.isidentifier() else "Stub"
            cls = _StubMeta(name, (Stub,), {"_stub_qualname": qualname, "__module__": __name__})
            _STUB_TYPES[qualname] = cls
        return cls


def is_stub(obj: Any) -> bool:
    """True for a stub instance or a stub class."""
    return isinstance(obj, Stub) or (isinstance(obj, type) and issubclass(obj, Stub))


def qualname_of(obj: Any) -> str | None:
    """The qualified name a stub (instance or class) stands for; ``None`` for anything else."""
    if isinstance(obj, Stub):
        return obj.qualname
    if isinstance(obj, type) and issubclass(obj, Stub):
        return obj.qualname
    return None


def module_state_dict(obj: Any, prefix: str = "", *, path: str | os.PathLike[str] | None = None,
                      ) -> dict[str, torch.Tensor]:
    """``nn.Module.state_dict()`` of a stubbed module: parameters and persistent buffers, recursively.

    ``None`` entries (``bias=False``) are skipped, like torch does. A submodule reachable under several names (a
    shared / tied submodule) appears under each of them, as in torch's ``state_dict``; its own entries are
    computed once. Because a pickle can share references freely, a 4 kB file can describe a module DAG whose
    paths number 2**40: the walk is therefore bounded (``_MAX_MODULE_PATHS`` paths, ``_MAX_MODULE_DEPTH``
    levels) and a cycle is refused, each as :class:`CorruptFileError` naming ``path`` and the submodule.
    """
    out: dict[str, torch.Tensor] = {}
    own: dict[int, list[tuple[str, torch.Tensor]]] = {}
    on_path: set[int] = set()
    budget = [_MAX_MODULE_PATHS]

    def local(d: Mapping[str, Any]) -> list[tuple[str, torch.Tensor]]:
        items: list[tuple[str, torch.Tensor]] = []
        params = d.get("_parameters")
        if isinstance(params, Mapping):
            items += [(str(n), v) for n, v in params.items() if isinstance(v, torch.Tensor)]
        buffers = d.get("_buffers")
        if isinstance(buffers, Mapping):
            skip = d.get("_non_persistent_buffers_set")
            skip = set(skip) if isinstance(skip, (set, frozenset, list, tuple)) else set()
            items += [(str(n), v) for n, v in buffers.items() if isinstance(v, torch.Tensor) and n not in skip]
        return items

    def walk(node: Stub, pre: str, depth: int) -> None:
        budget[0] -= 1
        if budget[0] < 0:
            raise CorruptFileError(f"the module tree has more than {_MAX_MODULE_PATHS} submodule paths (shared "
                                   "submodules multiply them); refusing to expand it", path=path, field=pre or None)
        if depth > _MAX_MODULE_DEPTH:
            raise CorruptFileError(f"modules nested deeper than {_MAX_MODULE_DEPTH} levels", path=path,
                                   field=pre or None)
        key = id(node)
        if key in on_path:
            raise CorruptFileError("a submodule contains itself (a cycle in _modules)", path=path,
                                   field=pre.rstrip(".") or None)
        d = node.__dict__
        if key not in own:
            own[key] = local(d)
        for name, value in own[key]:
            out[pre + name] = value
        modules = d.get("_modules")
        if isinstance(modules, Mapping):
            on_path.add(key)
            for name, child in modules.items():
                if isinstance(child, Stub):
                    walk(child, f"{pre}{name}.", depth + 1)
            on_path.discard(key)

    if isinstance(obj, Stub):
        walk(obj, prefix, 0)
    return out


# ---------------------------------------------------------------------------------------------- tensors


class _StorageType:
    """What a pickle's ``torch.FloatStorage`` (etc.) global resolves to: a dtype tag, not callable."""

    def __init__(self, name: str, dtype: torch.dtype) -> None:
        self.name = name
        self.dtype = dtype

    def __repr__(self) -> str:
        return f"<storage type {self.name}>"


class _TypeTag:
    """What ``torch.Tensor`` / ``torch.nn.Parameter`` resolve to: a tag for ``_rebuild_from_type_v2``."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<type {self.name}>"


class _Storage:
    """A storage rebuilt from the archive (``untyped`` is ``None`` in skeleton mode: shapes only)."""

    def __init__(self, untyped: torch.UntypedStorage | None, dtype: torch.dtype, numel: int) -> None:
        self.untyped = untyped
        self.dtype = dtype
        self.numel = numel


def _as_int_tuple(value: Any, what: str) -> tuple[int, ...]:
    if isinstance(value, torch.Size):
        value = tuple(value)
    if not isinstance(value, (tuple, list)) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value
    ):
        raise pickle.UnpicklingError(f"tensor {what} must be a tuple of non-negative ints, got {value!r}")
    return tuple(value)


def _rebuild_tensor(storage: Any, storage_offset: Any, size: Any, stride: Any) -> torch.Tensor:
    if not isinstance(storage, _Storage):
        raise pickle.UnpicklingError(f"tensor rebuilt from {type(storage).__name__}, not a storage")
    if not isinstance(storage_offset, int) or storage_offset < 0:
        raise pickle.UnpicklingError(f"bad storage offset {storage_offset!r}")
    shape = _as_int_tuple(size, "size")
    strides = _as_int_tuple(stride, "stride")
    if len(shape) != len(strides):
        raise pickle.UnpicklingError(f"size {shape} and stride {strides} differ in length")
    if all(s > 0 for s in shape):
        extent = storage_offset + sum((s - 1) * st for s, st in zip(shape, strides, strict=True)) + 1
        if extent > storage.numel:
            raise pickle.UnpicklingError(
                f"tensor of size {list(shape)} (offset {storage_offset}, stride {list(strides)}) needs "
                f"{extent} elements, its storage has {storage.numel}"
            )
    if storage.untyped is None:
        return torch.empty_strided(shape, strides, dtype=storage.dtype, device="meta")
    t = torch.empty((0,), dtype=storage.dtype)
    t.set_(storage.untyped, storage_offset, shape, strides)
    return t


def _rebuild_tensor_v2(storage: Any, storage_offset: Any, size: Any, stride: Any, requires_grad: Any = False,
                       backward_hooks: Any = None, metadata: Any = None) -> torch.Tensor:
    # requires_grad, hooks and metadata are deliberately dropped: loaded weights are plain tensors.
    return _rebuild_tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data: Any, requires_grad: Any = False, backward_hooks: Any = None) -> torch.Tensor:
    if not isinstance(data, torch.Tensor):
        raise pickle.UnpicklingError(f"parameter rebuilt from {type(data).__name__}, not a tensor")
    return data


def _rebuild_parameter_with_state(data: Any, requires_grad: Any = False, backward_hooks: Any = None,
                                  state: Any = None) -> torch.Tensor:
    return _rebuild_parameter(data)


def _rebuild_from_type_v2(func: Any, new_type: Any, args: Any, state: Any) -> torch.Tensor:
    if func not in (_rebuild_tensor_v2, _rebuild_tensor, _rebuild_parameter, _rebuild_parameter_with_state):
        raise pickle.UnpicklingError("_rebuild_from_type_v2 with a function that is not a tensor rebuild")
    if not isinstance(new_type, _TypeTag) or not isinstance(args, tuple):
        raise pickle.UnpicklingError("_rebuild_from_type_v2 with an unknown tensor type")
    return func(*args)


def _codecs_encode(obj: Any, encoding: Any = "utf-8", errors: Any = "strict") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it for ``bytes``: latin-1 only."""
    if not isinstance(obj, str) or encoding not in ("latin1", "latin-1", "iso-8859-1"):
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r} is not allowed")
    return obj.encode("latin1")


def _reconstructor(cls: Any, base: Any, state: Any) -> Any:
    """``copyreg._reconstructor`` (protocol 0/1 objects), for stub classes only."""
    if not (isinstance(cls, type) and issubclass(cls, Stub)) or base is not object:
        raise pickle.UnpicklingError("copyreg._reconstructor is allowed for plain library objects only")
    return cls.__new__(cls)


# ---------------------------------------------------------------------------------------------- allow-list

# Audit: nothing here can allocate more memory than the pickle's own bytes from a small argument
# (``builtins.bytearray`` could: ``bytearray(3 << 30)`` is 33 bytes of pickle; it is not allowed). Tensor storages
# come only from the archive's own records, checked against the sizes the pickle declares.
_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "complex"): complex,
    ("builtins", "slice"): slice,
    ("builtins", "object"): object,
    ("copyreg", "_reconstructor"): _reconstructor,
    ("_codecs", "encode"): _codecs_encode,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter_with_state,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("torch", "Tensor"): _TypeTag("torch.Tensor"),
    ("torch._tensor", "Tensor"): _TypeTag("torch.Tensor"),
    ("torch.nn.parameter", "Parameter"): _TypeTag("torch.nn.Parameter"),
    ("torch", "Size"): torch.Size,
    ("torch", "device"): torch.device,
}
for _name, _dt in _STORAGE_DTYPES.items():
    _ALLOWED[("torch", _name)] = _StorageType(_name, _dt)
    _ALLOWED[("torch.storage", _name)] = _StorageType(_name, _dt)
for _name in ("float64", "float32", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8", "bool",
              "complex64", "complex128", "double", "float", "half", "long", "int", "short"):
    _ALLOWED[("torch", _name)] = getattr(torch, _name)

def _py3_name(module: str, name: str) -> tuple[str, str]:
    """Python 2 names in protocol 0-2 pickles (``__builtin__``, ``commands``) -> Python 3, like ``fix_imports``."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


def _resolve_global(module: str, name: str, path: Path | None) -> Any:
    module, name = _py3_name(module, name)
    hit = _ALLOWED.get((module, name))
    if hit is not None:
        return hit
    if any(module == p or module.startswith(p + ".") for p in LIBRARY_PREFIXES + _TORCH_STUB_PREFIXES):
        return _stub_type(f"{module}.{name}")
    raise UnsafeCheckpointError(
        f"refusing to load: the pickle references global {module}.{name}, which is not on the allow-list "
        "(torch tensor rebuilds, OrderedDict, torch.nn modules and the known SAE libraries); "
        "nothing from the file was run",
        path=path,
        field=f"{module}.{name}",
    )


class _SafeUnpickler(pickle._Unpickler):  # type: ignore[name-defined]
    """``find_class`` = allow-list; ``persistent_load`` = a storage loader given by the caller.

    The pure-Python unpickler is used (a torch ``data.pkl`` is a few kB: tensor bytes live outside it) so that
    ``BUILD`` can be restricted too: it may only fill a fresh :class:`Stub` instance, never set attributes on
    an allowed function, type tag or tensor (which could tamper with later loads in the same process).
    """

    dispatch: ClassVar[dict[int, Callable[..., Any]]] = dict(pickle._Unpickler.dispatch)  # type: ignore[attr-defined]

    def __init__(self, file: IO[bytes], path: Path | None,
                 load_storage: Callable[[tuple[Any, ...]], _Storage] | None) -> None:
        super().__init__(file, encoding="utf-8")
        self._path = path
        self._load_storage = load_storage

    def find_class(self, module: str, name: str) -> Any:
        return _resolve_global(str(module), str(name), self._path)

    def persistent_load(self, pid: Any) -> Any:
        if self._load_storage is None:
            raise pickle.UnpicklingError("a plain pickle must not contain persistent ids")
        if not isinstance(pid, tuple) or not pid:
            raise pickle.UnpicklingError(f"malformed persistent id {pid!r}")
        kind = pid[0].decode("ascii") if isinstance(pid[0], bytes) else pid[0]
        if kind != "storage":
            raise pickle.UnpicklingError(f"unsupported persistent id kind {kind!r}")
        return self._load_storage(pid[1:])

    def load_build(self) -> None:
        state = self.stack.pop()
        inst = self.stack[-1]
        if isinstance(inst, Stub):
            inst.__setstate__(state)
        elif type(inst) is OrderedDict and isinstance(state, dict):
            # state_dict()'s ``_metadata`` attribute; the OrderedDict was created by this very pickle
            inst.__dict__.update({str(k): v for k, v in state.items()})
        else:
            raise pickle.UnpicklingError(
                f"BUILD on a {type(inst).__name__} is not allowed (only on library objects and OrderedDicts)"
            )

    dispatch[pickle.BUILD[0]] = load_build


def _storage_dtype(storage_type: Any) -> torch.dtype:
    if isinstance(storage_type, _StorageType):
        return storage_type.dtype
    if isinstance(storage_type, torch.dtype):
        return storage_type
    raise pickle.UnpicklingError(f"unknown storage type {storage_type!r}")


# ---------------------------------------------------------------------------------------------- readers


def _zip_member_offset(buf: mmap.mmap | bytes, info: zipfile.ZipInfo) -> int:
    """Byte offset of a stored (uncompressed) zip member's data in the archive."""
    start = info.header_offset
    header = buf[start:start + 30]
    if len(header) < 30 or header[:4] != b"PK\x03\x04":
        raise CorruptFileError(f"bad local zip header for {info.filename}")
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    return start + 30 + name_len + extra_len


def _check_record(info: zipfile.ZipInfo | None, name: str, nbytes: int | None, path: Path, file_size: int) -> bool:
    """Check a zip member from the directory alone, before anything is read or inflated; True if it is stored.

    ``nbytes`` is the size the pickle declares (``None`` for ``data.pkl``, which is capped instead): a record must
    hold exactly that many bytes (what torch writes, and what ``torch.load`` without mmap checks), lie inside the
    file, and a deflated one must not claim more than deflate can produce from its compressed bytes.
    """
    if info is None:
        raise CorruptFileError(f"archive has no record {name}", path=path, field=name)
    if nbytes is None and info.file_size > MAX_PICKLE_BYTES:
        raise CorruptFileError(f"{name} is {info.file_size} bytes; a torch pickle holds structure only and is "
                               f"refused above {MAX_PICKLE_BYTES} bytes", path=path, field=name)
    if nbytes is not None and info.file_size != nbytes:
        raise CorruptFileError(f"record {name} holds {info.file_size} bytes, the pickle needs {nbytes}",
                               path=path, field=name)
    if info.header_offset + 30 + info.compress_size > file_size:
        raise CorruptFileError(f"record {name} runs past the end of the file", path=path, field=name)
    if info.compress_type == zipfile.ZIP_STORED:
        if info.compress_size != info.file_size:
            raise CorruptFileError(f"stored record {name} has compressed size {info.compress_size} != size "
                                   f"{info.file_size}", path=path, field=name)
        return True
    if info.compress_type != zipfile.ZIP_DEFLATED:
        raise CorruptFileError(f"record {name} uses zip compression method {info.compress_type} (torch writes "
                               "stored or deflated records only)", path=path, field=name)
    if info.file_size > _MAX_DEFLATE_RATIO * info.compress_size + 1024:
        raise CorruptFileError(f"deflated record {name} claims {info.file_size} bytes from {info.compress_size} "
                               "compressed bytes, more than deflate can produce", path=path, field=name)
    return False


def _load_zip(path: Path, skeleton: bool, declared: dict[str, int] | None = None) -> Any:
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise CorruptFileError(f"not a readable torch zip archive: {e}", path=path) from None
    with zf:
        names = zf.namelist()
        pkls = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
        if len(pkls) != 1:
            if any(n.endswith("constants.pkl") for n in names):
                raise UnsupportedSAEError("this is a TorchScript archive (torch.jit.save); it is not read "
                                          "because it holds code", path=path)
            raise CorruptFileError(f"torch zip archive without exactly one data.pkl (found {pkls})", path=path)
        prefix = pkls[0][: -len("data.pkl")]
        if f"{prefix}code/" in {n[: len(prefix) + 5] for n in names}:
            raise UnsupportedSAEError("this is a TorchScript archive (torch.jit.save); it is not read "
                                      "because it holds code", path=path)
        byteorder = f"{prefix}byteorder"
        if byteorder in names and zf.read(byteorder).strip() not in (b"little", b""):
            raise UnsupportedSAEError("big-endian torch archives are not supported", path=path)
        infos = {i.filename: i for i in zf.infolist()}
        file_size = path.stat().st_size
        buf: mmap.mmap | None = None
        cache: dict[str, torch.UntypedStorage] = {}

        def load_storage(data: tuple[Any, ...]) -> _Storage:
            if len(data) != 4:
                raise pickle.UnpicklingError(f"malformed storage id {data!r}")
            storage_type, key, _location, numel = data
            dtype = _storage_dtype(storage_type)
            key = key.decode("ascii") if isinstance(key, bytes) else key
            if not isinstance(key, str) or not isinstance(numel, int) or numel < 0:
                raise pickle.UnpicklingError(f"malformed storage id {data!r}")
            nbytes = numel * _itemsize(dtype)
            if skeleton:
                if declared is not None:
                    declared.setdefault(key, nbytes)
                return _Storage(None, dtype, numel)
            untyped = cache.get(key)
            if untyped is None:
                info = infos.get(f"{prefix}data/{key}")
                _check_record(info, f"data/{key}", nbytes, path, file_size)
                assert info is not None
                untyped = _read_record(zf, info, info.file_size)
                cache[key] = untyped
            elif untyped.nbytes() < nbytes:
                raise CorruptFileError(f"record data/{key} is smaller than a later use of it", path=path)
            return _Storage(untyped, dtype, untyped.nbytes() // _itemsize(dtype))

        def _read_record(z: zipfile.ZipFile, info: zipfile.ZipInfo, nbytes: int) -> torch.UntypedStorage:
            nonlocal buf
            if nbytes == 0:
                return torch.UntypedStorage(0)
            if info.compress_type == zipfile.ZIP_STORED and info.compress_size == info.file_size:
                if buf is None:
                    with open(path, "rb") as f:
                        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
                offset = _zip_member_offset(buf, info)
                if offset + nbytes > len(buf):
                    raise CorruptFileError(f"record {info.filename} runs past the end of the file", path=path)
                if offset % 64 == 0:
                    return torch.frombuffer(buf, dtype=torch.uint8, count=nbytes, offset=offset).untyped_storage()
                data = bytearray(buf[offset:offset + nbytes])
            else:
                data = bytearray(z.read(info)[:nbytes])
            return torch.frombuffer(data, dtype=torch.uint8).untyped_storage()

        _check_record(infos.get(pkls[0]), pkls[0], None, path, file_size)
        raw = zf.read(pkls[0])
        return _SafeUnpickler(io.BytesIO(raw), path, load_storage).load()


def _load_legacy(f: IO[bytes], path: Path, skeleton: bool) -> Any:
    """torch's pre-1.6 stream format: magic, protocol, sys info, the object, storage keys, raw storages.

    As torch does, storages are allocated while unpickling and filled from the stream afterwards.
    """
    protocol = _SafeUnpickler(f, path, None).load()
    if protocol != _LEGACY_PROTOCOL:
        raise CorruptFileError(f"unknown legacy torch protocol version {protocol!r}", path=path)
    _SafeUnpickler(f, path, None).load()  # sys_info
    roots: dict[str, _Storage] = {}
    views: dict[str, _Storage] = {}
    # every storage's bytes follow the pickles in the file: what is declared must fit in it (else a few bytes of
    # pickle could allocate terabytes before the data is read)
    room = [os.fstat(f.fileno()).st_size]

    def load_storage(data: tuple[Any, ...]) -> _Storage:
        if len(data) != 5:
            raise pickle.UnpicklingError(f"malformed legacy storage id {data!r}")
        storage_type, root_key, _location, numel, view_metadata = data
        dtype = _storage_dtype(storage_type)
        root_key = str(root_key)
        if not isinstance(numel, int) or numel < 0:
            raise pickle.UnpicklingError(f"malformed legacy storage id {data!r}")
        size = _itemsize(dtype)
        root = roots.get(root_key)
        if root is None:
            room[0] -= 8 + numel * size
            if room[0] < 0:
                raise CorruptFileError(f"legacy storage {root_key} declares {numel} elements, more than the file "
                                       "holds", path=path, field=root_key)
            untyped = None if skeleton else torch.UntypedStorage(numel * size)
            root = roots[root_key] = _Storage(untyped, dtype, numel)
        if view_metadata is None:
            return root
        view_key, offset, view_size = view_metadata
        if not (isinstance(offset, int) and isinstance(view_size, int) and offset >= 0
                and offset + view_size <= root.numel):
            raise pickle.UnpicklingError(f"malformed legacy storage view {view_metadata!r}")
        view = views.get(str(view_key))
        if view is None:
            untyped = None if root.untyped is None else root.untyped[offset * size:(offset + view_size) * size]
            view = views[str(view_key)] = _Storage(untyped, dtype, view_size)
        return view

    result = _SafeUnpickler(f, path, load_storage).load()
    keys = _SafeUnpickler(f, path, None).load()
    if not isinstance(keys, list):
        raise CorruptFileError("legacy torch file: storage key list missing", path=path)
    if skeleton:
        return result
    for key in keys:
        st = roots.get(str(key))
        if st is None or st.untyped is None:
            raise CorruptFileError(f"legacy torch file: unknown storage key {key!r}", path=path)
        head = f.read(8)
        if len(head) < 8:
            raise CorruptFileError("legacy torch file is truncated", path=path)
        (count,) = struct.unpack("<q", head)
        if count != st.numel:
            raise CorruptFileError(f"legacy storage {key}: {count} elements, expected {st.numel}", path=path)
        nbytes = count * _itemsize(st.dtype)
        data = f.read(nbytes)
        if len(data) < nbytes:
            raise CorruptFileError("legacy torch file is truncated", path=path)
        if nbytes:
            target = torch.empty((0,), dtype=torch.uint8).set_(st.untyped)
            target.copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8))
    return result


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _load_path(path: Path, skeleton: bool) -> Any:
    if not path.is_file():
        from sae_hub.errors import MissingFileError

        raise MissingFileError("required file not found", path=path)
    if zipfile.is_zipfile(path):
        return _load_zip(path, skeleton)
    with open(path, "rb") as f:
        head = f.read(4)
        f.seek(0)
        if head == b"PK\x03\x04":
            raise CorruptFileError("truncated or damaged torch zip archive (no central directory)", path=path)
        if not head:
            raise CorruptFileError("empty file", path=path)
        if _is_tar(path):
            raise UnsupportedSAEError("the pre-0.4 torch tar checkpoint format is not supported", path=path)
        first = _SafeUnpickler(f, path, None).load()
        if isinstance(first, int) and first == _LEGACY_MAGIC:
            return _load_legacy(f, path, skeleton)
        return first


def _is_tar(path: Path) -> bool:
    try:
        return tarfile.is_tarfile(path)
    except OSError:
        return False


def safe_load(path: str | os.PathLike[str], *, skeleton: bool = False) -> Any:
    """Unpickle a torch checkpoint (zip, legacy, or a plain pickle) without running code from it.

    Returns plain Python structures, tensors (CPU; zip records are memory-mapped copy-on-write) and
    :class:`Stub` objects for library classes. ``skeleton=True`` reads only the pickle: tensors come back on
    the ``meta`` device (shapes and dtypes, no data), which is cheap even for multi-GB files.

    Raises :class:`UnsafeCheckpointError` (naming ``module.name``) for a global outside the allow-list,
    :class:`CorruptFileError` for a truncated or malformed file, :class:`UnsupportedSAEError` for TorchScript
    and tar archives.
    """
    p = Path(path)
    return _typed_errors(p, _load_path, p, skeleton)


def _typed_errors(p: Path, fn: Callable[..., Any], *args: Any) -> Any:
    """Run ``fn(*args)``, turning what a malformed pickle makes it raise into a :class:`SaeHubError` naming ``p``."""
    try:
        return fn(*args)
    except SaeHubError as e:
        if e.path is None:
            raise type(e)(e.message, path=p, field=e.field) from None
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, KeyError, IndexError,
            RuntimeError, struct.error, zipfile.BadZipFile, OverflowError, MemoryError, RecursionError,
            UnicodeDecodeError) as e:
        raise CorruptFileError(f"cannot unpickle this checkpoint: {type(e).__name__}: {e}", path=p) from None


_PEEK_CACHE: dict[tuple[str, int, int], Any] = {}


def peek(path: str | os.PathLike[str]) -> Any:
    """:func:`safe_load` in skeleton mode, cached by (path, size, mtime): for ``detect`` functions."""
    p = Path(path)
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _PEEK_CACHE:
        if len(_PEEK_CACHE) > 64:
            _PEEK_CACHE.clear()
        _PEEK_CACHE[key] = safe_load(p, skeleton=True)
    return _PEEK_CACHE[key]



def peek_for_detection(path: str | os.PathLike[str], *, own: bool) -> Any:
    """:func:`peek` for a loader's ``detect``: an unsafe pickle raises only when the file bears this format's
    own name (the user clearly meant it), otherwise the format just does not match (returns None)."""
    try:
        return peek(path)
    except UnsafeCheckpointError:
        if own:
            raise
        return None

def load_weights_only(path: str | os.PathLike[str]) -> Any:
    """``torch.load(path, weights_only=True)`` on CPU (memory-mapped for zip files) with typed errors.

    For pure state dicts. A global outside torch's own allow-list raises :class:`UnsafeCheckpointError`.
    """
    p = Path(path)
    if not p.is_file():
        from sae_hub.errors import MissingFileError

        raise MissingFileError("required file not found", path=p)
    is_zip = zipfile.is_zipfile(p)
    if not is_zip:
        with open(p, "rb") as f:
            if f.read(4) == b"PK\x03\x04":
                raise CorruptFileError("truncated or damaged torch zip archive (no central directory)", path=p)
    mmap_ok = is_zip and _typed_errors(p, _records_stored_as_declared, p)
    try:
        return torch.load(p, map_location="cpu", weights_only=True, mmap=mmap_ok)
    except pickle.UnpicklingError as e:
        msg = str(e)
        name = _global_from_message(msg)
        if name is not None:
            raise UnsafeCheckpointError(
                f"refusing to load: the file references global {name}, which torch's weights_only loader does "
                "not allow; nothing from it was run", path=p, field=name,
            ) from None
        detail = msg.split("WeightsUnpickler error:")[-1].strip().splitlines()[0] if msg else repr(e)
        raise CorruptFileError(f"cannot unpickle this checkpoint: {detail}", path=p) from None
    except (EOFError, RuntimeError, ValueError, OSError, zipfile.BadZipFile, struct.error) as e:
        first = str(e).splitlines()[0] if str(e) else repr(e)
        raise CorruptFileError(f"cannot read this torch checkpoint: {type(e).__name__}: {first}", path=p) from None


def _records_stored_as_declared(p: Path) -> bool:
    """Whether ``torch.load(mmap=True)`` reads this archive faithfully: every record the pickle uses is stored
    (not deflated) and exactly as large as declared. torch's mmap path slices the file at the record's offset for
    the declared size without checking either, so a short record yields the neighbouring bytes and a deflated one
    its compressed bytes. A record of the wrong size raises :class:`CorruptFileError` here; a deflated one
    returns False (read without mmap, where torch inflates it into a buffer of the declared size)."""
    declared: dict[str, int] = {}
    _load_zip(p, skeleton=True, declared=declared)
    size = p.stat().st_size
    with zipfile.ZipFile(p) as zf:
        infos = {i.filename: i for i in zf.infolist()}
        prefix = next(n for n in infos if n.endswith("data.pkl") and n.count("/") == 1)[: -len("data.pkl")]
        stored = [_check_record(infos.get(f"{prefix}data/{k}"), f"data/{k}", n, p, size) for k, n in declared.items()]
    return all(stored)


def _global_from_message(msg: str) -> str | None:
    import re

    m = re.search(r"GLOBAL\s+([\w.]+)", msg)
    return m.group(1) if m else None


def read_npz(path: str | os.PathLike[str], keep: Callable[[str], bool] | None = None) -> dict[str, torch.Tensor]:
    """Arrays of an ``.npz`` as tensors, never unpickling anything (object arrays are refused).

    Members stored uncompressed (what ``np.savez`` writes, e.g. Gemma Scope's ``params.npz``) are read straight
    from the file into each array, checking the zip CRC-32 piece by piece while the bytes are in cache (one
    copy instead of ``np.load``'s two, ~10% faster, same checks); compressed members go through the zip stream.
    Each member's header is checked against its size before anything is allocated, so a truncated, damaged or
    lying archive is a :class:`CorruptFileError` naming the array. ``keep(name)`` picks the arrays to read:
    of the others only the .npy header is read (an unneeded deflated member could inflate to GiBs).
    """
    p = Path(path)
    if not p.is_file():
        from sae_hub.errors import MissingFileError

        raise MissingFileError("required file not found", path=p)
    try:
        with open(p, "rb") as f:
            zf = zipfile.ZipFile(f)
            out: dict[str, torch.Tensor] = {}
            for info in zf.infolist():
                if info.filename.endswith(".npy"):
                    name = info.filename.removesuffix(".npy")
                    _check_npz_entry(info, p, name)
                    try:
                        if keep is not None and not keep(name):  # header only: object arrays are still refused
                            with zf.open(info) as member:
                                _check_npy_header(member, info.file_size, p, name)
                            continue
                        out[name] = _npy_tensor(_read_npz_member(zf, f, info, p, name), p, name)
                    except SaeHubError:
                        raise
                    except (OSError, zipfile.BadZipFile, EOFError, ValueError, struct.error) as e:
                        raise CorruptFileError(f"cannot read this array: {type(e).__name__}: {e}", path=p,
                                               field=name) from None
            return out
    except SaeHubError:
        raise
    except (OSError, zipfile.BadZipFile, EOFError, ValueError, struct.error) as e:
        raise CorruptFileError(f"cannot read this .npz: {type(e).__name__}: {e}", path=p) from None


def _check_npz_entry(info: zipfile.ZipInfo, p: Path, name: str) -> None:
    """The zip entry's own sizes, before anything is read: stored entries lie inside the file, deflated ones claim
    no more than deflate can produce (the .npy header is then checked against the entry size)."""
    if info.header_offset + 30 + info.compress_size > p.stat().st_size:
        raise CorruptFileError("zip entry runs past the end of the file", path=p, field=name)
    if info.compress_type == zipfile.ZIP_STORED:
        if info.compress_size != info.file_size:
            raise CorruptFileError(f"stored zip entry has compressed size {info.compress_size} != size "
                                   f"{info.file_size}", path=p, field=name)
    elif info.compress_type == zipfile.ZIP_DEFLATED:
        if info.file_size > _MAX_DEFLATE_RATIO * info.compress_size + 1024:
            raise CorruptFileError(f"deflated zip entry claims {info.file_size} bytes from {info.compress_size} "
                                   "compressed bytes, more than deflate can produce", path=p, field=name)
    else:
        raise CorruptFileError(f"zip compression method {info.compress_type} (numpy writes stored or deflated "
                               "entries only)", path=p, field=name)


def _read_npz_member(zf: zipfile.ZipFile, f: IO[bytes], info: zipfile.ZipInfo, p: Path, name: str) -> Any:
    import numpy as np

    if info.compress_type != zipfile.ZIP_STORED:
        with zf.open(info) as member:
            _check_npy_header(member, info.file_size, p, name)
        with zf.open(info) as member:
            return np.lib.format.read_array(member, allow_pickle=False)
    f.seek(info.header_offset)
    local = f.read(30)
    if len(local) < 30 or local[:4] != b"PK\x03\x04":
        raise CorruptFileError("zip entry has no local header where the directory says", path=p, field=name)
    name_len, extra_len = struct.unpack("<HH", local[26:30])
    start = info.header_offset + 30 + name_len + extra_len
    f.seek(start)
    shape, fortran, dtype = _check_npy_header(f, info.file_size, p, name)
    data_start = f.tell()
    trailing = info.file_size - (data_start - start) - math.prod(shape) * dtype.itemsize
    if trailing < 0:
        raise CorruptFileError(f"array header and data overrun its {info.file_size}-byte zip entry",
                               path=p, field=name)
    f.seek(start)
    crc = zlib.crc32(f.read(data_start - start))
    arr = np.empty(math.prod(shape), dtype=dtype)
    raw = memoryview(arr.view(np.uint8))
    for pos in range(0, len(raw), _NPZ_CHUNK):  # read each piece and checksum it while it is in cache
        piece = raw[pos:pos + _NPZ_CHUNK]
        if f.readinto(piece) != len(piece):
            raise CorruptFileError("file is truncated inside this array", path=p, field=name)
        crc = zlib.crc32(piece, crc)
    crc = zlib.crc32(f.read(trailing), crc)  # bytes np.load would ignore, but the CRC covers them
    if crc != info.CRC:
        raise CorruptFileError("zip CRC-32 mismatch: the array's bytes are damaged", path=p, field=name)
    return arr.reshape(shape[::-1]).T if fortran else arr.reshape(shape)


_NPZ_CHUNK = 1 << 20


def _check_npy_header(f: IO[bytes], size: int, p: Path, name: str) -> tuple[tuple[int, ...], bool, Any]:
    """``(shape, fortran_order, dtype)`` of an .npy header; refuses object arrays and headers that promise more
    bytes than the member holds, before anything is allocated."""
    import numpy as np

    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    else:
        raise CorruptFileError(f".npy format version {version} is not one that holds plain numeric arrays",
                               path=p, field=name)
    if dtype.hasobject:
        raise UnsafeCheckpointError("the .npz holds pickled object arrays; refusing to unpickle them",
                                    path=p, field=name)
    needed = math.prod(shape) * dtype.itemsize
    if needed > size:
        raise CorruptFileError(f"array header promises {needed} bytes ({dtype}, shape {list(shape)}) but the "
                               f"entry holds {size}", path=p, field=name)
    return shape, fortran, dtype


def _npy_tensor(arr: Any, p: Path, name: str) -> torch.Tensor:
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    try:
        return torch.from_numpy(arr)
    except TypeError:
        raise CorruptFileError(f"array has dtype {arr.dtype}, not a number type a tensor can hold",
                               path=p, field=name) from None
