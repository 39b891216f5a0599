"""Reading torch pickles without running code from them, on torch's own ``weights_only`` unpickler.

Some SAE libraries publish whole pickled modules (``torch.save(model)``: overcomplete, nanoSAE). Loading those
with ``torch.load(weights_only=False)`` imports and calls whatever the pickle names, so a checkpoint could run
``os.system``. :func:`safe_load` reads them with ``torch.load(weights_only=True)`` instead, which executes no
opcode outside torch's restricted unpickler (torch >= 2.10: CVE-2025-32434 and CVE-2026-24747 are fixed), and
adds what torch does not do:

* **Our allow-list first.** Every global the pickle names (``GLOBAL`` and ``STACK_GLOBAL``, found by a static
  scan of ``data.pkl`` with ``pickletools`` before torch runs anything) must be on :data:`_TORCH_GLOBALS` (tensor
  rebuilds, storage and dtype tags, ``OrderedDict``, ``set``, ``torch.Size`` ...: resolved by torch itself) or
  be a stand-in we register for the duration of the load: inert :class:`Stub` types for classes and functions
  of the known SAE libraries (``overcomplete.sae``, ``psn.sae``, ``nanosae``, ``dictionary_learning``) and of
  ``torch.nn`` (``torch.serialization.safe_globals([(StubType, "overcomplete.sae.topk_sae.TopKSAE"), ...])``).
  Anything else, including globals torch itself would allow but that allocate unbounded memory from a small
  argument (``builtins.bytearray``, ``torch.Tensor``, ``torch.UntypedStorage``), raises
  :class:`~sae_hub.errors.UnsafeCheckpointError` naming it. torch's unpickler restricts ``BUILD`` to tensors,
  ``OrderedDict`` and registered types, so a pickle cannot tamper with an allowed function or type.
* **The archive is checked from its zip directory before anything is inflated**: ``data.pkl`` is capped at
  :data:`MAX_PICKLE_BYTES` and the small records torch reads whole (version, serialization id, byte order ...)
  at 4 kB; a name listed twice, or a layout other than torch.save's (one that Python's ``zipfile`` and torch's
  reader could read as two different archives), is refused. Each ``data/N`` record must be exactly as large
  as the pickle declares (the same scan reads the literal ``('storage', torch.FloatStorage, key, location,
  numel)`` ids torch.save writes; any other id is refused), lie inside the file, and (if deflated) claim no
  more than deflate can produce. Only when every record is stored is the file memory-mapped (copy-on-write):
  torch's mmap path slices the file without checking either.
* **One unpickling pass**: then ``torch.load`` runs. Its storages are not resizable, so a tensor view reaching
  past its storage (or with a negative or overflowing stride) makes torch raise rather than allocate; only
  then does the skeleton pass below run, to name what is wrong.
* **The skeleton pass** (``skeleton=True``, :func:`peek`; the equivalent of ``torch.load(map_location=
  "meta")``): torch's unpickler runs on ``data.pkl`` alone with meta storages, which gives the shapes without
  reading data; each tensor must lie inside its declared storage (meta storages grow silently, so this is
  checked by hand). Legacy (pre-1.6) files always take it before ``torch.load``: their storage counts are
  checked against the file.

The scan of a ``data.pkl`` is kept (by a BLAKE2b digest of its bytes: a changed file is scanned again) for the
load that usually follows a loader's ``detect``. Measured on torch 2.13 (``benchmarks/bench_pickle_load.py``,
first load of a file): a module pickle loads in ~1.5x plain ``torch.load(weights_only=True)`` (which itself takes
twice what the hand-written unpickler this replaced did), a state dict in ~1.7x (both ~1 ms; the scan is most of
the difference), and a 256 MiB state dict as fast as ``torch.load(weights_only=True, mmap=True)``.

Tensors come back as plain tensors (parameters detached, ``requires_grad`` and hooks dropped). Nothing from the
checkpoint's own code runs, and nothing is imported: the real libraries need not be installed. Stubs of
``nn.Module`` subclasses keep ``_parameters`` / ``_buffers`` / ``_modules`` in their ``__dict__``;
:func:`module_state_dict` flattens them like ``nn.Module.state_dict``.

Pure state dicts are read with :func:`load_weights_only` (the same path without stand-ins). NumPy archives must
be read with :func:`sae_hub.files.read_npz` (``allow_pickle=False`` semantics plus size checks), never
``np.load`` defaults (an ``.npz`` is a zip of ``.npy`` arrays, not a pickle, so its reader lives there; it is
re-exported here for old imports).
"""

from __future__ import annotations

import _compat_pickle
import contextlib
import hashlib
import io
import os
import pickle
import pickletools
import struct
import tarfile
import threading
import zipfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any, ClassVar, cast

import torch

from sae_hub.errors import CorruptFileError, SaeHubError, UnsafeCheckpointError, UnsupportedSAEError
from sae_hub.files import MAX_DEFLATE_RATIO, read_npz

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
# small records torch.load reads whole (the stream reader's version and id, _load's format, alignment and byte order)
_TORCH_METADATA_RECORDS = ("version", ".data/version", ".data/serialization_id", ".format_version",
                           ".storage_alignment", "byteorder")
_MAX_METADATA_BYTES = 4096
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
            # a three-argument metaclass call builds a Stub subclass; mypy types it as a bare _StubMeta
            cls = cast("type[Stub]", _StubMeta(name, (Stub,), {"_stub_qualname": qualname, "__module__": __name__}))
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
        # on a class, the metaclass's property answers (mypy would read Stub's instance property instead)
        return cast(_StubMeta, obj).qualname
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
_STORAGE_DTYPES: dict[str, torch.dtype] = {f"torch.{s}": getattr(torch, d) for s, d in zip(_STORAGE_NAMES, _DTYPE_NAMES,
                                                                                            strict=True)}
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


class _Name(str):
    """A global's dotted name as a value on the scan's stack (the storage type inside a persistent id)."""


class _Unknown:
    """A value the scan does not track (anything but str, int, tuples of them and global names)."""

    def __repr__(self) -> str:
        return "<computed>"


_UNKNOWN: Any = _Unknown()
(_K_OTHER, _K_STR, _K_BYTESTR, _K_INT, _K_GLOBAL, _K_INST, _K_STACK_GLOBAL, _K_MARK, _K_TUPLE, _K_TUPLE_N, _K_PUT,
 _K_MEMOIZE, _K_GET, _K_PERSID, _K_BINPERSID, _K_DUP, _K_STOP) = range(17)
_SCAN_KINDS = {
    "BINUNICODE": _K_STR, "SHORT_BINUNICODE": _K_STR, "BINUNICODE8": _K_STR, "UNICODE": _K_STR,
    "STRING": _K_BYTESTR, "BINSTRING": _K_BYTESTR, "SHORT_BINSTRING": _K_BYTESTR,
    "INT": _K_INT, "BININT": _K_INT, "BININT1": _K_INT, "BININT2": _K_INT, "LONG": _K_INT, "LONG1": _K_INT,
    "LONG4": _K_INT, "GLOBAL": _K_GLOBAL, "INST": _K_INST, "STACK_GLOBAL": _K_STACK_GLOBAL, "MARK": _K_MARK,
    "TUPLE": _K_TUPLE, "EMPTY_TUPLE": _K_TUPLE_N, "TUPLE1": _K_TUPLE_N, "TUPLE2": _K_TUPLE_N, "TUPLE3": _K_TUPLE_N,
    "PUT": _K_PUT, "BINPUT": _K_PUT, "LONG_BINPUT": _K_PUT, "MEMOIZE": _K_MEMOIZE, "GET": _K_GET, "BINGET": _K_GET,
    "LONG_BINGET": _K_GET, "PERSID": _K_PERSID, "BINPERSID": _K_BINPERSID, "DUP": _K_DUP, "STOP": _K_STOP,
}


def _scan_table() -> dict[int, tuple[Any, int, bool, int, int]]:
    """Opcode byte -> (pickletools' reader of its argument or None, kind, pops to a MARK, items popped below the
    MARK or in all, items pushed), from ``pickletools.opcodes``."""
    table: dict[int, tuple[Any, int, bool, int, int]] = {}
    for op in pickletools.opcodes:
        before = op.stack_before
        mark = before.index(pickletools.markobject) if pickletools.markobject in before else -1
        kind = _SCAN_KINDS.get(op.name, _K_OTHER)
        tuple_n = {"EMPTY_TUPLE": 0, "TUPLE1": 1, "TUPLE2": 2, "TUPLE3": 3}.get(op.name, 0)
        table[ord(op.code)] = (op.arg.reader if op.arg is not None else None, kind, mark >= 0,
                               tuple_n if kind == _K_TUPLE_N else (mark if mark >= 0 else len(before)),
                               len(op.stack_after))
    return table


_SCAN_OPS = _scan_table()


def _scan(f: IO[bytes], path: Path | None) -> tuple[list[str], list[Any]]:
    """Every global one pickle names and every persistent id it loads, statically (the stream is left after its
    STOP), before torch runs anything.

    Opcodes and their arguments are read by ``pickletools``' own readers (its ``genops`` loop, without the
    generator: twice as fast). A symbolic run of the pickle's stack (each opcode's stack effect as ``pickletools``
    declares it) tracks only literals: strings, ints, tuples of them and global names, through the memo. That is
    enough to read
    ``STACK_GLOBAL``'s two names and the ``('storage', torch.FloatStorage, key, location, numel)`` ids torch.save
    writes: so the archive's records can be checked against what the pickle declares *before* ``torch.load``
    reads them (one unpickling pass instead of two). A ``STACK_GLOBAL`` whose name is computed any other way is
    refused (it could not be checked); an id that is not a literal comes back as ``_UNKNOWN`` (the caller
    refuses it).
    """
    found: list[str] = []
    pids: list[Any] = []
    memo: dict[Any, Any] = {}
    stack: list[Any] = []
    metastack: list[list[Any]] = []
    push = stack.append
    read = f.read
    try:
        while True:
            code = read(1)
            if not code:
                raise ValueError("pickle exhausted before seeing STOP")
            entry = _SCAN_OPS.get(code[0])
            if entry is None:
                raise ValueError(f"opcode {code!r} unknown at byte {f.tell() - 1}")
            reader, kind, to_mark, pops, pushes = entry
            arg = reader(f) if reader is not None else None
            if kind == _K_PUT:
                memo[arg] = stack[-1]
            elif kind == _K_GET:
                push(memo.get(arg, _UNKNOWN))
            elif kind == _K_STR:
                push(arg)
            elif kind == _K_INT:
                push(arg if type(arg) is int else _UNKNOWN)
            elif kind == _K_TUPLE_N:
                if len(stack) < pops:
                    raise IndexError
                items = tuple(stack[len(stack) - pops:])
                del stack[len(stack) - pops:]
                push(items)
            elif kind == _K_MARK:
                metastack.append(stack)
                stack = []
                push = stack.append
            elif kind == _K_TUPLE:
                items = tuple(stack)
                stack = metastack.pop()
                push = stack.append
                push(items)
            elif kind == _K_BYTESTR:  # torch decodes these as UTF-8, pickletools as latin-1: equal for ASCII only
                push(arg if isinstance(arg, str) and arg.isascii() else _UNKNOWN)
            elif kind in (_K_GLOBAL, _K_INST):
                module, _, attr = str(arg).partition(" ")
                full = ".".join(_py3_name(module, attr))
                found.append(full)
                if kind == _K_INST:
                    stack = metastack.pop()
                    push = stack.append
                push(_Name(full) if kind == _K_GLOBAL else _UNKNOWN)
            elif kind == _K_STACK_GLOBAL:
                if len(stack) < 2 or type(stack[-1]) is not str or type(stack[-2]) is not str:
                    raise UnsafeCheckpointError("refusing to load: a STACK_GLOBAL whose name is not a literal "
                                                "string cannot be checked", path=path, field="STACK_GLOBAL")
                full = f"{stack[-2]}.{stack[-1]}"
                found.append(full)
                del stack[-2:]
                push(_Name(full))
            elif kind == _K_BINPERSID:
                pids.append(stack[-1])
                stack[-1] = _UNKNOWN
            elif kind == _K_PERSID:
                pids.append(_UNKNOWN)
                push(_UNKNOWN)
            elif kind == _K_MEMOIZE:
                memo[len(memo)] = stack[-1]
            elif kind == _K_DUP:
                push(stack[-1])
            elif kind == _K_STOP:
                break
            else:
                if to_mark:
                    stack = metastack.pop()
                    push = stack.append
                if pops:
                    if len(stack) < pops:
                        raise IndexError
                    del stack[len(stack) - pops:]
                for _ in range(pushes):
                    push(_UNKNOWN)
    except SaeHubError:
        raise
    except IndexError:  # an opcode took more from the stack (or the MARK stack) than is on it: torch would too
        raise CorruptFileError("cannot read this pickle: an opcode pops more than its stack holds",
                               path=path) from None
    except (ValueError, EOFError, struct.error, UnicodeDecodeError) as e:  # pickletools' "not a pickle"
        raise CorruptFileError(f"cannot read this pickle: {e}", path=path) from None
    return found, pids


_REGISTERED: dict[str, int] = {}
_REGISTER_LOCK = threading.Lock()
_PRIOR: list[Any] = [None]  # torch's safe-globals set as it was before our first registration in flight


@contextlib.contextmanager
def _registered(entries: dict[str, Any]) -> Iterator[None]:
    """``torch.serialization.safe_globals`` for our stand-ins, reference-counted so that concurrent loads in
    several threads do not unregister each other's names halfway through (torch keeps one global set).

    When the last of our names goes, torch's set object from before is put back if its contents are what is
    left (nobody else registered meanwhile): removing rebuilds the set, which could list its members in another
    order, and a user's ``get_safe_globals()`` should not change because we loaded a file.
    """
    from torch import _weights_only_unpickler as wo

    items = [(obj, name) for name, obj in entries.items()]
    if not items:
        yield
        return
    with _REGISTER_LOCK:
        new: list[Callable[..., Any] | tuple[Callable[..., Any], str]] = [
            (o, n) for o, n in items if not _REGISTERED.get(n)]
        if not _REGISTERED:
            _PRIOR[0] = wo._marked_safe_globals_set
        for _, n in items:
            _REGISTERED[n] = _REGISTERED.get(n, 0) + 1
        if new:
            torch.serialization.add_safe_globals(new)
    try:
        yield
    finally:
        with _REGISTER_LOCK:
            gone: list[Callable[..., Any] | tuple[Callable[..., Any], str]] = []
            for o, n in items:
                _REGISTERED[n] -= 1
                if not _REGISTERED[n]:
                    del _REGISTERED[n]
                    gone.append((o, n))
            if gone:
                wo._remove_safe_globals(gone)
            if not _REGISTERED:
                if wo._marked_safe_globals_set == _PRIOR[0]:
                    wo._marked_safe_globals_set = _PRIOR[0]
                _PRIOR[0] = None


def _checked_scan(f: IO[bytes], path: Path | None, stubs: bool) -> tuple[dict[str, Any], list[Any]]:
    """:func:`_scan` against our allow-list: (the stand-ins to register by name, the persistent ids)."""
    found, pids = _scan(f, path)
    here: dict[str, Any] = {}
    for full in found:
        obj = _stand_in(full, path, stubs)
        if obj is not None:
            here[full] = obj
    return here, pids


# BLAKE2b of data.pkl (and whether stand-ins are allowed) -> what _checked_scan found: detect's peek and the load
# that follows scan the same pickle once. Keyed by the bytes' digest, never by path, size or mtime, so a changed
# file is scanned again; pickles up to _SCAN_CACHE_MAX_BYTES only (what is kept grows with the pickle).
_SCAN_CACHE: dict[tuple[bytes, bool], tuple[dict[str, Any], list[Any]]] = {}
_SCAN_CACHE_SIZE = 32
_SCAN_CACHE_MAX_BYTES = 1 << 20


def _checked_scan_bytes(raw: bytes, path: Path, stubs: bool) -> tuple[dict[str, Any], list[Any]]:
    if len(raw) > _SCAN_CACHE_MAX_BYTES:
        return _checked_scan(io.BytesIO(raw), path, stubs)
    key = (hashlib.blake2b(raw, digest_size=32).digest(), stubs)
    hit = _SCAN_CACHE.get(key)
    if hit is None:
        hit = _checked_scan(io.BytesIO(raw), path, stubs)
        if len(_SCAN_CACHE) >= _SCAN_CACHE_SIZE:
            _SCAN_CACHE.clear()
        _SCAN_CACHE[key] = hit
    return hit


def _unpickle(f: IO[bytes], path: Path | None, entries: dict[str, Any], stubs: bool,
              persistent_load: Callable[[Any], Any] | None,
              scanned: tuple[dict[str, Any], list[Any]] | None = None) -> Any:
    """One pickle from ``f`` through torch's weights_only unpickler, after checking its globals (``scanned``: the
    :func:`_checked_scan` of these bytes, if the caller has it); the names it needs registered are added to
    ``entries`` (the caller registers them again for ``torch.load``)."""
    from torch import _weights_only_unpickler as wo

    start = f.tell()
    here = scanned[0] if scanned is not None else _checked_scan(f, path, stubs)[0]
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
    """The pickle's object graph with meta tensors, their storages and the stand-ins it needs."""

    def __init__(self) -> None:
        self.result: Any = None
        self.entries: dict[str, Any] = {}
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


def _check_tensors(obj: Any, sk: _Skeleton, path: Path) -> Any:
    """Every tensor in the skeleton is a view inside a storage that came from the archive, before any data is
    read (on meta storages, which grow, ``Tensor.set_`` checks nothing; ``torch.Tensor(n)`` would not be from the
    archive at all). Returns ``obj`` as :func:`_plain` makes it (one walk for both)."""

    def check(t: torch.Tensor) -> torch.Tensor | None:
        st = t.untyped_storage()
        if id(st) not in sk.storages or sk.storages[id(st)][0] is not st:
            raise CorruptFileError("a tensor in this pickle is not backed by a storage record of the archive",
                                   path=path)
        if t.numel() == 0:
            return _plain_tensor(t)
        extent = t.storage_offset() + sum((s - 1) * d for s, d in zip(t.shape, t.stride(), strict=True)) + 1
        have = sk.storages[id(st)][1] // t.element_size()
        if min(t.stride(), default=0) < 0 or extent > have:
            raise CorruptFileError(f"tensor of size {list(t.shape)} (offset {t.storage_offset()}, stride "
                                   f"{list(t.stride())}) needs {extent} elements, its storage has {have}", path=path)
        return _plain_tensor(t)

    return _walk(obj, path, check)


_ATOMS = frozenset({str, int, float, bool, type(None), bytes, complex})  # nothing inside: no need to visit


def _walk(obj: Any, path: Path, on_tensor: Callable[[torch.Tensor], Any]) -> Any:
    """Rebuild ``obj`` with every tensor replaced by ``on_tensor(t)`` (or kept where that returns None); each
    object is visited once (shared references stay shared, cycles are fine) and nesting is bounded."""
    done: dict[int, Any] = {}

    def go(x: Any, depth: int) -> Any:
        if type(x) in _ATOMS:
            return x
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


def _plain_tensor(t: torch.Tensor) -> torch.Tensor | None:
    return t.detach() if isinstance(t, torch.nn.Parameter) or t.requires_grad else None


def _plain(obj: Any, path: Path) -> Any:
    """Parameters and tensors that require grad become plain tensors (same storage), as a state dict holds."""
    return _walk(obj, path, _plain_tensor)


# ---------------------------------------------------------------------------------------------- readers


class _Zip:
    """A torch zip archive: its directory, checked before anything is inflated, and its (capped) ``data.pkl``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            with zipfile.ZipFile(path) as zf:
                infos = zf.infolist()
                self.infos = {i.filename: i for i in infos}
                if len(self.infos) != len(infos):  # which of two same-named records would torch read?
                    raise CorruptFileError("torch zip archive lists a record name twice", path=path)
                self.size = os.fstat(zf.fp.fileno()).st_size  # type: ignore[union-attr]
                self._check_layout(zf.fp, len(infos))  # type: ignore[arg-type]
                self._check_names()
                for name in _TORCH_METADATA_RECORDS:  # torch reads these whole before any check of ours
                    info = self.infos.get(self.prefix + name)
                    if info is not None:
                        if info.file_size > _MAX_METADATA_BYTES:
                            raise CorruptFileError(f"record {name} is {info.file_size} bytes; torch writes a few "
                                                   f"bytes there and reads it whole", path=path, field=name)
                        _check_record(info, name, None, path, self.size)
                order = self.infos.get(f"{self.prefix}byteorder")
                if order is not None and zf.read(order).strip() not in (b"little", b""):
                    raise UnsupportedSAEError("big-endian torch archives are not supported", path=path)
                info = self.infos.get(f"{self.prefix}data.pkl")
                _check_record(info, "data.pkl", None, path, self.size)
                self.pickle = zf.read(info)  # type: ignore[arg-type]
        except SaeHubError:
            raise
        except (zipfile.BadZipFile, OSError, ValueError) as e:
            raise CorruptFileError(f"not a readable torch zip archive: {e}", path=path) from None

    def _check_layout(self, f: IO[bytes], entries: int) -> None:
        """The directory must be where torch's reader (miniz) and ``zipfile`` both look for it.

        ``zipfile`` tolerates bytes before the archive (it shifts every offset by the difference between where the
        directory is and where the end record says it is) and takes the zip64 record from just before its
        locator; miniz takes offsets as written and follows the locator. A file on which they differ would have
        us check one ``data.pkl`` and torch run another, so the layout torch.save writes is required: the
        directory ends where the zip64 end record starts (or the end record, without zip64), that record sits
        just before its locator and the 22-byte end record ends the file (no comment), and both end records
        agree on the directory's offset, size and entry count.
        """
        def bad(why: str) -> CorruptFileError:
            return CorruptFileError(f"zip layout torch.save does not write ({why}); torch's reader and Python's "
                                    "could see different records", path=self.path)

        f.seek(max(0, self.size - 98))
        tail = f.read()
        eocd = tail[-22:]
        if len(eocd) < 22 or eocd[:4] != b"PK\x05\x06":
            raise bad("the file does not end with the zip end record: a comment or trailing bytes")
        count, cd_size, cd_off, comment = struct.unpack("<10xHIIH", eocd)
        if comment:
            raise bad("the end record announces a comment")
        cd_end = self.size - 22
        loc = tail[-42:-22]
        if len(loc) == 20 and loc[:4] == b"PK\x06\x07":
            (z64_pos,) = struct.unpack("<8xQ4x", loc)
            rec = tail[-98:-42]
            if z64_pos != self.size - 98 or len(rec) < 56 or rec[:4] != b"PK\x06\x06":
                raise bad("the zip64 end record is not just before its locator")
            count64, cd_size64, cd_off64 = struct.unpack("<32xQQQ", rec)
            for small, big in ((count, count64), (cd_size, cd_size64), (cd_off, cd_off64)):
                if small not in (big, 0xFFFF, 0xFFFFFFFF):
                    raise bad("the zip64 and zip end records disagree")
            count, cd_size, cd_off, cd_end = count64, cd_size64, cd_off64, z64_pos
        if cd_off + cd_size != cd_end:
            raise bad("the directory is not where the end record says: bytes before or inside the archive")
        if count != entries:
            raise bad(f"the end record counts {count} records, the directory lists {entries}")

    def _check_names(self) -> None:
        names = list(self.infos)
        pkls = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pkls) != 1 or any(n.endswith("constants.pkl") for n in names):
            if any(n.endswith("constants.pkl") for n in names):
                raise UnsupportedSAEError("this is a TorchScript archive (torch.jit.save); it is not read "
                                          "because it holds code", path=self.path)
            raise CorruptFileError(f"torch zip archive without exactly one data.pkl (found {pkls})", path=self.path)
        self.prefix = pkls[0][: -len("data.pkl")]
        if any(n.startswith(f"{self.prefix}code/") for n in names):
            raise UnsupportedSAEError("this is a TorchScript archive (torch.jit.save); it is not read "
                                      "because it holds code", path=self.path)

    def declared(self, pids: list[Any]) -> dict[str, int]:
        """Record key -> the bytes the pickle declares for it (the first id naming a key decides, as in torch),
        from the scan's literal persistent ids; an id that is not what torch.save writes is refused."""
        out: dict[str, int] = {}
        for pid in pids:
            if not (type(pid) is tuple and len(pid) == 5 and pid[0] == "storage" and type(pid[1]) is _Name
                    and pid[1] in _STORAGE_DTYPES and type(pid[2]) is str and _int(pid[4])):
                raise CorruptFileError(f"storage id {pid!r} is not the literal ('storage', torch.<T>Storage, key, "
                                       "location, numel) that torch.save writes; its record cannot be checked",
                                       path=self.path, field="data.pkl")
            if pid[2] not in out:
                out[pid[2]] = pid[4] * _STORAGE_DTYPES[pid[1]].itemsize
        return out

    def check_records(self, declared: dict[str, int]) -> bool:
        """Every declared record, from the directory alone (:func:`_check_record`); True if all are stored."""
        return all([_check_record(self.infos.get(f"{self.prefix}data/{k}"), f"data/{k}", n, self.path, self.size)
                    for k, n in declared.items()])


def _zip_skeleton(path: Path, stubs: bool) -> _Skeleton:
    """torch's unpickler over ``data.pkl`` alone, with meta storages: shapes without data, and every tensor
    checked to lie inside its declared storage."""
    z = _Zip(path)
    scanned = _checked_scan_bytes(z.pickle, path, stubs)
    z.declared(scanned[1])  # what the full load refuses, peek refuses too
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
            cache[key] = _meta_storage(sk, nbytes, dtype)
        return cache[key]

    sk.result = _check_tensors(_unpickle(io.BytesIO(z.pickle), path, sk.entries, stubs, persistent_load, scanned),
                               sk, path)
    return sk


def _zip_load(path: Path, stubs: bool) -> Any:
    """One unpickling pass: the static scan gives the globals (checked against our allow-list) and the records
    with their declared sizes (checked against the zip directory), then ``torch.load`` runs.

    What the skeleton pass checked before is left to torch here, which refuses it itself: its storages are not
    resizable, so a tensor reaching past its storage (or with a negative or overflowing stride) raises instead
    of growing it, and it checks every persistent id. Only when torch refuses do we run the skeleton pass, to
    name what is wrong (the view and its numbers, the malformed id) instead of torch's bare message.
    """
    z = _Zip(path)
    entries, pids = _checked_scan_bytes(z.pickle, path, stubs)
    mmap = z.check_records(z.declared(pids))
    try:
        with _registered(entries):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception:
        _zip_skeleton(path, stubs)  # raises the precise error where the pickle is at fault
        raise


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
    sk.result = _check_tensors(sk.result, sk, path)


def _stream_skeleton(path: Path, stubs: bool) -> tuple[_Skeleton, bool]:
    """A legacy (pre-1.6) torch file or a plain pickle: (skeleton, whether torch.load has data to read)."""
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
            sk.result = _check_tensors(first, sk, path)  # a plain pickle: no tensor can be in it (no storage)
            return sk, False
        _legacy_skeleton(f, path, sk, stubs)
        return sk, True


def _load(path: Path, skeleton: bool, stubs: bool) -> Any:
    if not path.is_file():
        from sae_hub.errors import MissingFileError

        raise MissingFileError("required file not found", path=path)
    if zipfile.is_zipfile(path):
        return _zip_skeleton(path, stubs).result if skeleton else _plain(_zip_load(path, stubs), path)
    # legacy files keep two passes (the skeleton checks each storage's count against the file): a rare format
    sk, has_data = _stream_skeleton(path, stubs)
    if skeleton or not has_data:
        return sk.result
    with _registered(sk.entries):
        result = torch.load(path, map_location="cpu", weights_only=True, mmap=False)
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
    if info.file_size > MAX_DEFLATE_RATIO * info.compress_size + 1024:
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
