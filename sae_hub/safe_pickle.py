"""Reading torch pickles without running code from them, on torch's own ``weights_only`` unpickler.

Some SAE libraries publish whole pickled modules (``torch.save(model)``: overcomplete, nanoSAE). Loading those
with ``torch.load(weights_only=False)`` imports and calls whatever the pickle names, so a checkpoint could run
``os.system``. :func:`safe_load` reads them with ``torch.load(weights_only=True)`` instead, which executes no
opcode outside torch's restricted unpickler (torch >= 2.10: CVE-2025-32434 and CVE-2026-24747 are fixed), and
adds what torch does not do:

* **Our allow-list first.** Every global the pickle names (``GLOBAL`` and ``STACK_GLOBAL``, found by a
  ``pickletools`` scan before torch runs anything) must be on :data:`_TORCH_GLOBALS` (tensor rebuilds, storage
  and dtype tags, ``OrderedDict``, ``set``, ``torch.Size`` ...: resolved by torch itself) or be a stand-in we
  register for the duration of the load: inert :class:`Stub` types for classes and functions of the known SAE
  libraries (``overcomplete.sae``, ``psn.sae``, ``nanosae``, ``dictionary_learning``) and of ``torch.nn``
  (``torch.serialization.safe_globals([(StubType, "overcomplete.sae.topk_sae.TopKSAE"), ...])``). Anything
  else, including globals torch itself would allow but that allocate unbounded memory from a small argument
  (``builtins.bytearray``, ``torch.Tensor``, ``torch.UntypedStorage``), raises
  :class:`~sae_hub.errors.UnsafeCheckpointError` naming it. torch's unpickler restricts ``BUILD`` to tensors,
  ``OrderedDict`` and registered types, so a pickle cannot tamper with an allowed function or type.
* **A skeleton pass first** (the equivalent of ``torch.load(map_location="meta")``): torch's unpickler runs on
  ``data.pkl`` alone with meta storages, which gives the shapes (``skeleton=True``, :func:`peek`) and the size
  every record must have. Each tensor must lie inside a storage from the archive (``Tensor.set_`` checks
  nothing) before any byte of data is read.
* **The archive is checked from its zip directory before anything is inflated**: ``data.pkl`` is capped at
  :data:`MAX_PICKLE_BYTES`; each ``data/N`` record must be exactly as large as the pickle declares, lie inside
  the file, and (if deflated) claim no more than deflate can produce. Only when every record is stored is the
  file memory-mapped (copy-on-write): torch's mmap path slices the file without checking either.

Tensors come back as plain tensors (parameters detached, ``requires_grad`` and hooks dropped). Nothing from the
checkpoint's own code runs, and nothing is imported: the real libraries need not be installed. Stubs of
``nn.Module`` subclasses keep ``_parameters`` / ``_buffers`` / ``_modules`` in their ``__dict__``;
:func:`module_state_dict` flattens them like ``nn.Module.state_dict``.

Pure state dicts are read with :func:`load_weights_only` (the same path without stand-ins). NumPy archives must
be read with :func:`read_npz` (``allow_pickle=False`` semantics plus size checks), never ``np.load`` defaults.
"""

from __future__ import annotations

import _compat_pickle
import contextlib
import io
import math
import os
import pickle
import pickletools
import struct
import tarfile
import threading
import zipfile
import zlib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any, ClassVar

import torch

from sae_hub.errors import CorruptFileError, SaeHubError, UnsafeCheckpointError, UnsupportedSAEError

__all__ = [
    "LIBRARY_PREFIXES",
    "MAX_PICKLE_BYTES",
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
_LEGACY_PROTOCOL = 1001
# A torch ``data.pkl`` holds structure only (tensor bytes live in data/N records): a few kB for an SAE, some MB for
# a whole LLM state dict. Anything larger is refused before it is read (or inflated).
MAX_PICKLE_BYTES = 64 << 20
# deflate cannot compress better than ~1032:1; a record that claims more is a lie (a zip bomb or a damaged header)
_MAX_DEFLATE_RATIO = 1032
# module trees: real ones are < 20 deep with < 10k submodule paths; shared submodules multiply paths
_MAX_MODULE_DEPTH = 128
_MAX_MODULE_PATHS = 100_000
# containers nested deeper than this in a checkpoint are refused (the result walk is recursive)
_MAX_NESTING = 200

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


def _reconstructor(cls: Any, base: Any, state: Any) -> Any:
    """``copyreg._reconstructor`` (protocol 0/1 objects), for stub classes only."""
    if not (isinstance(cls, type) and issubclass(cls, Stub)) or base is not object:
        raise pickle.UnpicklingError("copyreg._reconstructor is allowed for plain library objects only")
    return cls.__new__(cls)


# ---------------------------------------------------------------------------------------------- allow-list

# Globals torch's weights_only unpickler resolves itself and that we accept. Audit: none of them allocates more
# than the pickle's own bytes from a small argument. Refused although torch allows them: ``builtins.bytearray``
# (``bytearray(3 << 30)`` is 33 bytes of pickle), ``torch.Tensor`` / ``torch.FloatTensor``... and
# ``torch.UntypedStorage`` / ``TypedStorage`` (``torch.Tensor(n)`` allocates n elements), the sparse, quantized,
# nested and wrapper-subclass rebuilds, ``collections.Counter`` and ``torch.serialization._get_layout``.
_STORAGE_NAMES = ("DoubleStorage", "FloatStorage", "HalfStorage", "BFloat16Storage", "LongStorage", "IntStorage",
                  "ShortStorage", "CharStorage", "ByteStorage", "BoolStorage", "ComplexFloatStorage",
                  "ComplexDoubleStorage")
_DTYPE_NAMES = ("float64", "float32", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8", "bool",
                "complex64", "complex128")
_TORCH_GLOBALS: frozenset[str] = frozenset({
    "collections.OrderedDict", "builtins.set", "builtins.complex", "_codecs.encode",
    "torch._utils._rebuild_tensor", "torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_parameter",
    "torch._utils._rebuild_parameter_with_state", "torch._tensor._rebuild_from_type_v2",
    "torch.nn.parameter.Parameter", "torch.Size", "torch.device",
    *(f"torch.{n}" for n in _STORAGE_NAMES), *(f"torch.{n}" for n in _DTYPE_NAMES),
})
# Globals torch does not know, registered by us for the load: plain values only.
_EXTRA_GLOBALS: dict[str, Any] = {
    "builtins.frozenset": frozenset,
    "builtins.slice": slice,
    "builtins.object": object,
    "copyreg._reconstructor": _reconstructor,
}


def _py3_name(module: str, name: str) -> tuple[str, str]:
    """Python 2 names in protocol 0-2 pickles (``__builtin__``, ``commands``) -> Python 3, as torch maps them."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


def _stand_in(full: str, path: Path | None, stubs: bool) -> Any | None:
    """What we register under ``full`` (None: torch resolves it); UnsafeCheckpointError if it is not allowed."""
    if full in _TORCH_GLOBALS:
        return None
    if full in _EXTRA_GLOBALS:
        return _EXTRA_GLOBALS[full]
    module = full.rsplit(".", 1)[0]
    if stubs and any(module == p or module.startswith(p + ".") for p in LIBRARY_PREFIXES + _TORCH_STUB_PREFIXES):
        return _stub_type(full)
    allowed = "torch tensor rebuilds, OrderedDict" + (", torch.nn modules and the known SAE libraries" if stubs
                                                      else " and plain values (a state dict)")
    raise UnsafeCheckpointError(
        f"refusing to load: the pickle references global {full}, which is not on the allow-list ({allowed}); "
        "nothing from the file was run", path=path, field=full,
    )


_STRING_OPS = frozenset({"STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE",
                         "BINUNICODE8"})
_NO_PUSH_OPS = frozenset({"PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE", "FRAME", "PROTO"})


def _scan_globals(f: IO[bytes], path: Path | None) -> list[str]:
    """Every global one pickle names, statically (``pickletools``; the stream is left after its STOP).

    ``STACK_GLOBAL`` (protocol 4+) takes its names from the two strings pushed before it (directly or from the
    memo); a name computed any other way is refused, since it could not be checked.
    """
    found: list[str] = []
    memo: dict[int, Any] = {}
    recent: list[Any] = []  # what each pushing opcode pushed: a str, or None for anything else
    try:
        for op, arg, _pos in pickletools.genops(f):
            name = op.name
            if name in ("GLOBAL", "INST"):
                module, _, attr = str(arg).partition(" ")
                found.append(".".join(_py3_name(module, attr)))
            elif name == "STACK_GLOBAL":
                if len(recent) < 2 or not isinstance(recent[-1], str) or not isinstance(recent[-2], str):
                    raise UnsafeCheckpointError("refusing to load: a STACK_GLOBAL whose name is not a literal "
                                                "string cannot be checked", path=path, field="STACK_GLOBAL")
                found.append(f"{recent[-2]}.{recent[-1]}")
            if name in ("PUT", "BINPUT", "LONG_BINPUT"):
                memo[int(arg)] = recent[-1] if recent else None
            elif name == "MEMOIZE":
                memo[len(memo)] = recent[-1] if recent else None
            elif name in ("GET", "BINGET", "LONG_BINGET"):
                recent.append(memo.get(int(arg)))
            elif name in _STRING_OPS:
                recent.append(arg if isinstance(arg, str) else None)
            elif name not in _NO_PUSH_OPS:
                recent.append(None)
            del recent[:-2]
    except SaeHubError:
        raise
    except (ValueError, EOFError, struct.error, UnicodeDecodeError) as e:  # pickletools' "not a pickle"
        raise CorruptFileError(f"cannot read this pickle: {e}", path=path) from None
    return found


_REGISTERED: dict[str, int] = {}
_REGISTER_LOCK = threading.Lock()


@contextlib.contextmanager
def _registered(entries: dict[str, Any]) -> Iterator[None]:
    """``torch.serialization.safe_globals`` for our stand-ins, reference-counted so that concurrent loads in
    several threads do not unregister each other's names halfway through (torch keeps one global set)."""
    from torch import _weights_only_unpickler as wo

    items = [(obj, name) for name, obj in entries.items()]
    with _REGISTER_LOCK:
        new = [(o, n) for o, n in items if not _REGISTERED.get(n)]
        for _, n in items:
            _REGISTERED[n] = _REGISTERED.get(n, 0) + 1
        if new:
            torch.serialization.add_safe_globals(new)
    try:
        yield
    finally:
        with _REGISTER_LOCK:
            gone = []
            for o, n in items:
                _REGISTERED[n] -= 1
                if not _REGISTERED[n]:
                    del _REGISTERED[n]
                    gone.append((o, n))
            if gone:
                wo._remove_safe_globals(gone)


def _unpickle(f: IO[bytes], path: Path | None, entries: dict[str, Any], stubs: bool,
              persistent_load: Callable[[Any], Any] | None) -> Any:
    """One pickle from ``f`` through torch's weights_only unpickler, after checking its globals; the names it
    needs registered are added to ``entries`` (the caller registers them again for ``torch.load``)."""
    from torch import _weights_only_unpickler as wo

    start = f.tell()
    here: dict[str, Any] = {}
    for full in _scan_globals(f, path):
        obj = _stand_in(full, path, stubs)
        if obj is not None:
            here[full] = obj
    entries.update(here)
    f.seek(start)
    unpickler = wo.Unpickler(f, encoding="utf-8")
    if persistent_load is not None:
        unpickler.persistent_load = persistent_load  # type: ignore[method-assign]
    with _registered(here):
        try:
            return unpickler.load()
        except pickle.UnpicklingError as e:
            msg = str(e).replace("Can only build", "BUILD (setting attributes) is allowed only on")
            raise CorruptFileError(f"torch's weights_only unpickler refused this pickle: {msg}", path=path) from None


# ---------------------------------------------------------------------------------------------- skeleton


class _Skeleton:
    """The pickle's object graph with meta tensors, the records it uses and the stand-ins it needs."""

    def __init__(self) -> None:
        self.result: Any = None
        self.entries: dict[str, Any] = {}
        self.declared: dict[str, int] = {}  # record key -> bytes the pickle declares
        # id -> (meta storage made from a persistent id, the bytes it declares); the storages are resizable so
        # that an out-of-bounds view resizes it (no memory on meta) and is then reported with its numbers
        self.storages: dict[int, tuple[torch.UntypedStorage, int]] = {}


def _dtype_of(storage_type: Any) -> torch.dtype:
    if isinstance(storage_type, torch.serialization.StorageType):
        return storage_type.dtype
    raise pickle.UnpicklingError(f"unknown storage type {storage_type!r}")


def _meta_storage(sk: _Skeleton, nbytes: int, dtype: torch.dtype) -> torch.storage.TypedStorage:
    untyped = torch.empty(nbytes, dtype=torch.uint8, device="meta").untyped_storage()
    sk.storages[id(untyped)] = (untyped, nbytes)
    return torch.storage.TypedStorage(wrap_storage=untyped, dtype=dtype, _internal=True)


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_tensors(obj: Any, sk: _Skeleton, path: Path) -> None:
    """Every tensor in the skeleton is a view inside a storage that came from the archive, before any data is
    read (``Tensor.set_`` does not check sizes, strides or offsets; ``torch.Tensor(n)`` would not be from the
    archive at all)."""

    def check(t: torch.Tensor) -> None:
        st = t.untyped_storage()
        if id(st) not in sk.storages or sk.storages[id(st)][0] is not st:
            raise CorruptFileError("a tensor in this pickle is not backed by a storage record of the archive",
                                   path=path)
        if t.numel() == 0:
            return
        extent = t.storage_offset() + sum((s - 1) * d for s, d in zip(t.shape, t.stride(), strict=True)) + 1
        have = sk.storages[id(st)][1] // t.element_size()
        if min(t.stride(), default=0) < 0 or extent > have:
            raise CorruptFileError(f"tensor of size {list(t.shape)} (offset {t.storage_offset()}, stride "
                                   f"{list(t.stride())}) needs {extent} elements, its storage has {have}", path=path)

    _walk(obj, path, check)


def _walk(obj: Any, path: Path, on_tensor: Callable[[torch.Tensor], Any]) -> Any:
    """Rebuild ``obj`` with every tensor replaced by ``on_tensor(t)`` (or kept where that returns None); each
    object is visited once (shared references stay shared, cycles are fine) and nesting is bounded."""
    done: dict[int, Any] = {}

    def go(x: Any, depth: int) -> Any:
        key = id(x)
        if key in done:
            return done[key]
        if depth > _MAX_NESTING:
            raise CorruptFileError(f"the pickle nests containers deeper than {_MAX_NESTING} levels", path=path)
        if isinstance(x, torch.Tensor):
            new = on_tensor(x)
            done[key] = x if new is None else new
            for v in list(x.__dict__.values()):  # attributes from _rebuild_from_type_v2
                go(v, depth + 1)
            return done[key]
        if isinstance(x, dict):
            done[key] = x
            for k in list(x):
                go(k, depth + 1)
                x[k] = go(x[k], depth + 1)
            if type(x) is not dict:
                go(x.__dict__, depth + 1)  # an OrderedDict's _metadata
            return x
        if isinstance(x, list):
            done[key] = x
            for i, v in enumerate(x):
                x[i] = go(v, depth + 1)
            return x
        if isinstance(x, Stub):
            done[key] = x
            go(x.__dict__, depth + 1)
            return x
        if isinstance(x, (tuple, set, frozenset)):
            done[key] = x  # a cycle through a tuple keeps the original
            items = [go(v, depth + 1) for v in x]
            new = type(x)(items) if not isinstance(x, tuple) or type(x) is tuple else x
            done[key] = new
            return new
        done[key] = x
        return x

    return go(obj, 0)


def _plain(obj: Any, path: Path) -> Any:
    """Parameters and tensors that require grad become plain tensors (same storage), as a state dict holds."""
    return _walk(obj, path, lambda t: t.detach() if isinstance(t, torch.nn.Parameter) or t.requires_grad else None)


# ---------------------------------------------------------------------------------------------- readers


class _Zip:
    """A torch zip archive's directory, checked before anything is inflated."""

    def __init__(self, path: Path) -> None:
        try:
            with zipfile.ZipFile(path) as zf:
                self.infos = {i.filename: i for i in zf.infolist()}
        except (zipfile.BadZipFile, OSError, ValueError) as e:
            raise CorruptFileError(f"not a readable torch zip archive: {e}", path=path) from None
        names = list(self.infos)
        pkls = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pkls) != 1 or any(n.endswith("constants.pkl") for n in names):
            if any(n.endswith("constants.pkl") for n in names):
                raise UnsupportedSAEError("this is a TorchScript archive (torch.jit.save); it is not read "
                                          "because it holds code", path=path)
            raise CorruptFileError(f"torch zip archive without exactly one data.pkl (found {pkls})", path=path)
        self.prefix = pkls[0][: -len("data.pkl")]
        if any(n.startswith(f"{self.prefix}code/") for n in names):
            raise UnsupportedSAEError("this is a TorchScript archive (torch.jit.save); it is not read "
                                      "because it holds code", path=path)
        self.path = path
        self.size = path.stat().st_size

    def read(self, name: str, nbytes: int | None) -> bytes:
        info = self.infos.get(self.prefix + name)
        _check_record(info, name, nbytes, self.path, self.size)
        with zipfile.ZipFile(self.path) as zf:
            return zf.read(info)  # type: ignore[arg-type]


def _zip_skeleton(path: Path, stubs: bool) -> tuple[_Skeleton, _Zip]:
    z = _Zip(path)
    if f"{z.prefix}byteorder" in z.infos and z.read("byteorder", None).strip() not in (b"little", b""):
        raise UnsupportedSAEError("big-endian torch archives are not supported", path=path)
    sk = _Skeleton()
    cache: dict[str, torch.storage.TypedStorage] = {}

    def persistent_load(pid: Any) -> Any:
        if not isinstance(pid, tuple) or len(pid) != 5:
            raise pickle.UnpicklingError(f"malformed storage id {pid!r}")
        _, storage_type, key, _location, numel = pid
        dtype = _dtype_of(storage_type)
        if not isinstance(key, str) or not _int(numel):
            raise pickle.UnpicklingError(f"malformed storage id {pid!r}")
        if key not in cache:  # as torch: the first use of a key decides its storage
            nbytes = numel * torch._utils._element_size(dtype)
            sk.declared[key] = nbytes
            cache[key] = _meta_storage(sk, nbytes, dtype)
        return cache[key]

    raw = z.read("data.pkl", None)
    sk.result = _unpickle(io.BytesIO(raw), path, sk.entries, stubs, persistent_load)
    _check_tensors(sk.result, sk, path)
    return sk, z


def _legacy_skeleton(f: IO[bytes], path: Path, sk: _Skeleton, stubs: bool) -> None:
    """torch's pre-1.6 stream format: magic (already read), protocol, sys info, the object, storage keys, then
    each storage as an 8-byte element count and its bytes. What is declared must be what the file holds."""
    protocol = _unpickle(f, path, sk.entries, stubs, None)
    if protocol != _LEGACY_PROTOCOL:
        raise CorruptFileError(f"unknown legacy torch protocol version {protocol!r}", path=path)
    _unpickle(f, path, sk.entries, stubs, None)  # sys_info
    roots: dict[str, tuple[torch.storage.TypedStorage, int]] = {}
    views: dict[str, torch.storage.TypedStorage] = {}

    def persistent_load(pid: Any) -> Any:
        if not isinstance(pid, tuple) or len(pid) != 6:
            raise pickle.UnpicklingError(f"malformed legacy storage id {pid!r}")
        _, storage_type, root_key, _location, numel, view = pid
        dtype = _dtype_of(storage_type)
        if not _int(numel):
            raise pickle.UnpicklingError(f"malformed legacy storage id {pid!r}")
        root_key = str(root_key)
        if root_key not in roots:
            roots[root_key] = (_meta_storage(sk, numel * torch._utils._element_size(dtype), dtype), numel)
        root, count = roots[root_key]
        if view is None:
            return root
        if not (isinstance(view, tuple) and len(view) == 3 and _int(view[1]) and _int(view[2])
                and view[1] + view[2] <= count):
            raise pickle.UnpicklingError(f"malformed legacy storage view {view!r}")
        if str(view[0]) not in views:  # meta storages cannot be sliced: the view gets its own (shapes only)
            views[str(view[0])] = _meta_storage(sk, view[2] * torch._utils._element_size(root.dtype), root.dtype)
        return views[str(view[0])]

    sk.result = _unpickle(f, path, sk.entries, stubs, persistent_load)
    keys = _unpickle(f, path, sk.entries, stubs, None)
    if not isinstance(keys, list) or {str(k) for k in keys} != set(roots):
        raise CorruptFileError("legacy torch file: the storage key list does not match the pickle", path=path)
    pos, end = f.tell(), os.fstat(f.fileno()).st_size
    for key in keys:
        root, count = roots[str(key)]
        nbytes = count * torch._utils._element_size(root.dtype)
        if pos + 8 + nbytes > end:
            raise CorruptFileError(f"legacy storage {key} declares {count} elements, more than the file holds",
                                   path=path, field=str(key))
        f.seek(pos)
        (stored,) = struct.unpack("<q", f.read(8))
        if stored != count:
            raise CorruptFileError(f"legacy storage {key}: {stored} elements, expected {count}", path=path,
                                   field=str(key))
        pos += 8 + nbytes
    _check_tensors(sk.result, sk, path)


def _skeleton(path: Path, stubs: bool) -> tuple[_Skeleton, _Zip | None, bool]:
    """(skeleton, zip directory or None, whether torch.load has data to read: False for a plain pickle)."""
    if not path.is_file():
        from sae_hub.errors import MissingFileError

        raise MissingFileError("required file not found", path=path)
    if zipfile.is_zipfile(path):
        sk, z = _zip_skeleton(path, stubs)
        return sk, z, True
    with open(path, "rb") as f:
        head = f.read(4)
        f.seek(0)
        if head == b"PK\x03\x04":
            raise CorruptFileError("truncated or damaged torch zip archive (no central directory)", path=path)
        if not head:
            raise CorruptFileError("empty file", path=path)
        if _is_tar(path):
            raise UnsupportedSAEError("the pre-0.4 torch tar checkpoint format is not supported", path=path)
        sk = _Skeleton()
        first = _unpickle(f, path, sk.entries, stubs, None)
        if not (isinstance(first, int) and first == _LEGACY_MAGIC):
            sk.result = first  # a plain pickle (no tensors can be in it: there is no storage to load)
            _check_tensors(first, sk, path)
            return sk, None, False
        _legacy_skeleton(f, path, sk, stubs)
        return sk, None, True


def _load(path: Path, skeleton: bool, stubs: bool) -> Any:
    sk, z, has_data = _skeleton(path, stubs)
    if skeleton or not has_data:
        return _plain(sk.result, path)
    mmap = False
    if z is not None:
        mmap = all([_check_record(z.infos.get(f"{z.prefix}data/{k}"), f"data/{k}", n, path, z.size)
                    for k, n in sk.declared.items()])
    with _registered(sk.entries):
        result = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    return _plain(result, path)


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


def _is_tar(path: Path) -> bool:
    try:
        return tarfile.is_tarfile(path)
    except OSError:
        return False


def safe_load(path: str | os.PathLike[str], *, skeleton: bool = False) -> Any:
    """Unpickle a torch checkpoint (zip, legacy, or a plain pickle) without running code from it.

    Returns plain Python structures, tensors (CPU; zip records are memory-mapped copy-on-write when every record
    is stored) and :class:`Stub` objects for library classes. ``skeleton=True`` reads only the pickle: tensors
    come back on the ``meta`` device (shapes and dtypes, no data), which is cheap even for multi-GB files.

    Raises :class:`UnsafeCheckpointError` (naming ``module.name``) for a global outside the allow-list,
    :class:`CorruptFileError` for a truncated, malformed or lying file, :class:`UnsupportedSAEError` for
    TorchScript, big-endian and tar archives.
    """
    p = Path(path)
    return _typed_errors(p, _load, p, skeleton, True)


def _typed_errors(p: Path, fn: Callable[..., Any], *args: Any) -> Any:
    """Run ``fn(*args)``, turning what a malformed pickle makes it raise into a :class:`SaeHubError` naming ``p``."""
    try:
        return fn(*args)
    except SaeHubError as e:
        if e.path is None:
            raise type(e)(e.message, path=p, field=e.field) from None
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, KeyError, IndexError,
            RuntimeError, OSError, struct.error, zipfile.BadZipFile, OverflowError, MemoryError, RecursionError,
            UnicodeDecodeError, AssertionError) as e:
        first = str(e).splitlines()[0] if str(e) else ""
        raise CorruptFileError(f"cannot unpickle this checkpoint: {type(e).__name__}: {first}", path=p) from None


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
    """A pure state dict (tensors, containers, numbers, strings): :func:`safe_load` without library stand-ins.

    A class or function from any library raises :class:`UnsafeCheckpointError` naming it.
    """
    p = Path(path)
    return _typed_errors(p, _load, p, False, False)


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
