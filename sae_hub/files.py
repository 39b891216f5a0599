"""Reading checkpoint files safely: safetensors (memory-mapped, validated), JSON, hashes.

Every reader here turns a bad file into a typed :mod:`sae_hub.errors` exception naming the file, so loaders
never leak a bare ``KeyError``/``RuntimeError`` from a parser. The safetensors reader maps the file
copy-on-write and hands out tensors that *view* the mapping: loading is O(header), pages are read on first
touch, and no second copy of the weights is made unless a dtype or device change asks for one.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import json
import math
import mmap
import os
import re
import secrets
import shutil
import stat
import struct
import sys
import threading
import zipfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any, BinaryIO

import torch

from sae_hub.errors import (
    ConfigError,
    CorruptFileError,
    MissingFileError,
    SaeHubError,
    ShapeMismatchError,
    UnsafeCheckpointError,
)

__all__ = [
    "MAX_CONFIG_BYTES",
    "MAX_DEFLATE_RATIO",
    "SafetensorsHeader",
    "atomic_folder",
    "dtype_from_str",
    "dtype_to_str",
    "is_temp_name",
    "open_regular",
    "read_config_bytes",
    "read_json",
    "read_npz",
    "read_safetensors",
    "read_safetensors_header",
    "sha256_file",
    "write_json_atomic",
    "write_safetensors_atomic",
]

_ST_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
for _name, _attr in (("F8_E4M3", "float8_e4m3fn"), ("F8_E5M2", "float8_e5m2"), ("U16", "uint16"),
                     ("U32", "uint32"), ("U64", "uint64")):
    if hasattr(torch, _attr):
        _ST_DTYPES[_name] = getattr(torch, _attr)

# The Rust crate's MAX_HEADER_SIZE: the most bytes of JSON a safetensors header may have.
_MAX_HEADER = 100_000_000
_U64 = 1 << 64  # offsets and dimensions are u64 in the format
_I64 = 1 << 63  # torch sizes are int64

# Every dtype name the safetensors format defines (as of safetensors 0.8), to tell "a dtype this torch cannot
# hold" from "not a safetensors dtype at all" in error messages.
_SPEC_DTYPES = frozenset({"BOOL", "F4", "F6_E2M3", "F6_E3M2", "U8", "I8", "F8_E5M2", "F8_E4M3", "F8_E8M0",
                          "F8_E4M3FNUZ", "F8_E5M2FNUZ", "I16", "U16", "F16", "BF16", "I32", "U32", "F32", "C64",
                          "F64", "I64", "U64"})

MAX_CONFIG_BYTES = 64 * 1024 * 1024
"""The largest JSON/YAML config file sae-hub reads. Real configs are a few kB; the cap is compared with the
file's size before a byte is read, so a config that is (or links to) a huge or endless file costs nothing."""


def dtype_from_str(name: str | torch.dtype) -> torch.dtype:
    """``"float32"``, ``"torch.bfloat16"``, ``"bf16"`` or a dtype -> ``torch.dtype``.

    An unknown name is a :class:`ConfigError` (a ``ValueError``) on field ``dtype``, so a bad ``dtype=``
    argument or config value reads as what it is rather than as an ``AttributeError`` from torch.
    """
    if isinstance(name, torch.dtype):
        return name
    if not isinstance(name, str):
        raise ConfigError(f"a dtype must be a string or torch.dtype, got {type(name).__name__}", field="dtype")
    key = name.removeprefix("torch.").lower()
    aliases = {"fp32": "float32", "fp16": "float16", "half": "float16", "bf16": "bfloat16",
               "float": "float32", "double": "float64", "fp64": "float64"}
    key = aliases.get(key, key)
    dt = getattr(torch, key, None)
    if not isinstance(dt, torch.dtype):
        raise ConfigError(f"unknown dtype {name!r}", field="dtype")
    return dt


def dtype_to_str(dtype: torch.dtype) -> str:
    """``torch.float32`` -> ``"float32"`` (the form SAELens writes in cfg.json)."""
    return str(dtype).removeprefix("torch.")


def _check_regular(st: os.stat_result, p: Path) -> None:
    if stat.S_ISREG(st.st_mode):
        return
    if stat.S_ISDIR(st.st_mode):
        raise MissingFileError("required file not found (this is a folder)", path=p)
    kind = ("a FIFO" if stat.S_ISFIFO(st.st_mode) else "a character device" if stat.S_ISCHR(st.st_mode)
            else "a block device" if stat.S_ISBLK(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode)
            else "not a regular file")
    raise CorruptFileError(f"not a regular file ({kind}); only regular files, or symlinks to them, are read",
                           path=p)


_OPEN_FLAGS = (os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_BINARY", 0)
               | getattr(os, "O_CLOEXEC", 0))


def open_regular(path: str | os.PathLike[str]) -> BinaryIO:
    """Open ``path`` for binary reading if it is a regular file, else raise a typed error naming it.

    Why: ``open()`` on a FIFO waits for a writer forever, and a device such as ``/dev/zero`` never ends, so a
    checkpoint folder with one of those where a file belongs would hang or exhaust memory. Symlinks to regular
    files are followed (the Hugging Face cache is symlinks into ``blobs/``). The file is opened with
    ``O_NONBLOCK`` (so a FIFO does not wait for a writer; no effect on regular files) and ``O_NOCTTY``, and the
    opened descriptor is checked, so nothing swapped in after a check can slip through. One ``fstat`` on the
    descriptor, not a ``stat`` before the open as well: this is on every load's path. Every reader in this
    module opens files through here; loaders that open files by other routes should too.
    """
    p = path if isinstance(path, Path) else Path(path)
    try:
        fd = os.open(p, _OPEN_FLAGS)
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        raise MissingFileError("required file not found", path=p) from None
    except OSError as e:
        raise CorruptFileError(f"cannot open this file: {e.strerror or e}", path=p) from None
    try:
        _check_regular(os.fstat(fd), p)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_config_bytes(path: str | os.PathLike[str], *, max_bytes: int = MAX_CONFIG_BYTES) -> bytes:
    """The bytes of a small config file (JSON, YAML), refusing anything over ``max_bytes`` before reading it
    and anything that is not a regular file (see :func:`open_regular`)."""
    p = path if isinstance(path, Path) else Path(path)
    with open_regular(p) as f:
        size = os.fstat(f.fileno()).st_size
        if size > max_bytes:
            raise CorruptFileError(f"file too large for a config: {size} bytes (the limit is {max_bytes})", path=p)
        raw = f.read(size + 1)  # not read(max_bytes): that allocates max_bytes up front, ~0.1 ms a call
        if len(raw) > size:  # it grew since the fstat: read on, still within the cap
            raw += f.read(max_bytes + 1 - len(raw))
    if len(raw) > max_bytes:
        raise CorruptFileError(f"file too large for a config: over {max_bytes} bytes", path=p)
    return raw


def read_json(path: str | os.PathLike[str], *, max_bytes: int = MAX_CONFIG_BYTES) -> Any:
    """Parse a JSON config file; missing, special, oversized or malformed files raise typed errors naming it.

    Pathological JSON (nesting deep enough to exhaust the parser's recursion, integers beyond Python's
    digit limit) is a :class:`CorruptFileError` as well, not a ``RecursionError``/``ValueError`` from json.
    """
    p = Path(path)
    raw = read_config_bytes(p, max_bytes=max_bytes)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CorruptFileError(f"not UTF-8 text: {e}", path=p) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise CorruptFileError(f"not valid JSON: {e.msg} at line {e.lineno} column {e.colno}", path=p) from None
    except (ValueError, RecursionError) as e:
        raise CorruptFileError(f"not valid JSON: {type(e).__name__}: {_short(e)}", path=p) from None


def _short(value: object, limit: int = 120) -> str:
    """``repr``-ish text of a value for an error message, cut so a hostile file cannot make the message huge."""
    text = value if isinstance(value, str) else repr(value)
    if isinstance(value, BaseException):
        text = str(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _unique_suffix() -> str:
    """pid + thread id + random bits: unique across processes, across threads of one process (which share a
    pid), and across a pid reused after a crash left a temp name behind."""
    return f"{os.getpid()}-{threading.get_ident()}-{secrets.token_hex(4)}"


# Hidden names our writers give in-flight files and folders (``.<name>.tmp-<pid>[-<thread>-<random>]``) and
# old folders being swapped out (``.<name>.old-...``). A hard kill can leave one behind; loaders and
# ``find_saes`` never look at hidden names, and a folder swap does not carry them into the new folder.
_TEMP_NAME = re.compile(r"\..+\.(?:tmp|old)-\d+(?:-\d+-[0-9a-f]+)?")


def is_temp_name(name: str) -> bool:
    """True for the hidden names sae-hub's atomic writers use while writing (see :func:`atomic_folder`)."""
    return _TEMP_NAME.fullmatch(name) is not None


def write_json_atomic(path: str | os.PathLike[str], data: Any) -> None:
    """Write JSON through a temp file + rename so a crash never leaves half a config."""
    p = Path(path)
    tmp = p.with_name(f".{p.name}.tmp-{_unique_suffix()}")
    try:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")
        os.replace(tmp, p)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


_ST_NAMES = {dt: name for name, dt in _ST_DTYPES.items()}


def write_safetensors_atomic(
    path: str | os.PathLike[str], tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> None:
    """Write a safetensors file through a temp file + rename, with the ``safetensors`` package's own writer.

    That writer orders tensors by alignment (largest element size first) after a header padded to 8 bytes,
    so every tensor starts at a multiple of its element size: a float32 tensor stored after an odd-length
    float16 one is still aligned when memory-mapped (a name-ordered layout is not, and unaligned tensors are
    slow or refused on some devices). It writes straight from each tensor's memory (no serialisation buffer),
    so it costs what streaming the bytes ourselves did: a 288 MiB SAE to tmpfs in 0.26 s either way
    (transposed matrices: 0.90 s vs 0.87 s, the strided copies dominate), median of 7 on a shared 2-core box.
    """
    from safetensors.torch import save_file

    names = sorted(tensors)
    for key in names:
        if tensors[key].dtype not in _ST_NAMES:
            raise ConfigError(f"cannot store dtype {tensors[key].dtype} in safetensors", path=path, field=key)
    flat = dict(zip(names, _contiguous_cpu([tensors[k].detach() for k in names]), strict=True))
    flat = _unshared(flat)
    p = Path(path)
    tmp = p.with_name(f".{p.name}.tmp-{_unique_suffix()}")
    try:
        save_file(flat, str(tmp), metadata={str(k): str(v) for k, v in (metadata or {}).items()} or None)
        os.replace(tmp, p)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _unshared(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Copies of the tensors that share a storage with another one (e.g. slices of one packed matrix), which
    ``safetensors`` refuses to write; the rest are passed through untouched."""
    owners: dict[tuple[str, int], list[str]] = {}
    for key, t in tensors.items():
        if t.numel():
            owners.setdefault((str(t.device), t.untyped_storage().data_ptr()), []).append(key)
    out = dict(tensors)
    for keys in owners.values():
        for key in keys[1:]:
            out[key] = tensors[key].clone()
    return out


def _contiguous_cpu(tensors: list[torch.Tensor], big: int = 1 << 20) -> Iterator[torch.Tensor]:
    """Each tensor as a contiguous CPU tensor, in order. With two or more large non-contiguous ones (e.g.
    transposed checkpoint matrices) they are copied on two worker threads: a transpose is a slow strided
    copy, and overlapping two saves most of one (benchmarks/bench_convert.py, Qwen Scope)."""
    slow = [t for t in tensors if t.device.type != "cpu" or not t.is_contiguous()]
    if sum(t.numel() * t.element_size() >= big for t in slow) < 2:
        yield from (t.cpu().contiguous() for t in tensors)
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=2) as pool:
        def copy(t: torch.Tensor) -> torch.Tensor:
            return t.cpu().contiguous()

        futures = [pool.submit(copy, t) for t in tensors]
        for fut in futures:
            yield fut.result()


# ---------------------------------------------------------------------------------------------- atomic folders

_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2
_SYS_RENAMEAT2 = {"x86_64": 316, "amd64": 316, "aarch64": 276, "arm64": 276, "riscv64": 276, "loongarch64": 276,
                  "ppc64le": 357, "ppc64": 357, "s390x": 347, "i686": 353, "i386": 353, "armv7l": 382}


@functools.cache
def _renameat2() -> Callable[[bytes, bytes, int], int] | None:
    """Linux ``renameat2(AT_FDCWD, a, AT_FDCWD, b, flags)`` through libc (glibc >= 2.28 exports it; else the raw
    syscall), returning 0 or an errno; None where there is no such call."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes
    import platform

    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:  # pragma: no cover - no C library to call
        return None
    fn = getattr(libc, "renameat2", None)
    if fn is not None:
        fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
        fn.restype = ctypes.c_int

        def call(a: bytes, b: bytes, flags: int) -> int:
            return 0 if fn(_AT_FDCWD, a, _AT_FDCWD, b, flags) == 0 else ctypes.get_errno()

        return call
    nr = _SYS_RENAMEAT2.get(platform.machine().lower())  # pragma: no cover - musl / old glibc
    if nr is None:  # pragma: no cover
        return None
    syscall = libc.syscall  # pragma: no cover
    syscall.restype = ctypes.c_long  # pragma: no cover

    def raw(a: bytes, b: bytes, flags: int) -> int:  # pragma: no cover
        rc = syscall(ctypes.c_long(nr), ctypes.c_int(_AT_FDCWD), ctypes.c_char_p(a), ctypes.c_int(_AT_FDCWD),
                     ctypes.c_char_p(b), ctypes.c_uint(flags))
        return 0 if rc == 0 else ctypes.get_errno()

    return raw  # pragma: no cover


_UNSUPPORTED = {errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM}


def _rename_noreplace(src: Path, dst: Path) -> bool:
    """Rename folder ``src`` to ``dst`` if nothing is there (atomic); False if something is (a concurrent
    writer got there first)."""
    fn = _renameat2()
    if fn is not None:
        err = fn(os.fsencode(src), os.fsencode(dst), _RENAME_NOREPLACE)
        if err == 0:
            return True
        if err in (errno.EEXIST, errno.ENOTEMPTY):
            return False
        if err not in _UNSUPPORTED:
            raise OSError(err, os.strerror(err), str(src), None, str(dst))
    try:  # POSIX rename replaces only an *empty* folder (nothing lost); Windows refuses any existing one
        os.rename(src, dst)
        return True
    except (FileExistsError, IsADirectoryError):
        return False
    except OSError as e:
        if e.errno in (errno.EEXIST, errno.ENOTEMPTY):
            return False
        raise


def _exchange(tmp: Path, dst: Path) -> Path | None:
    """Put folder ``tmp`` at ``dst``; return where the previous ``dst`` folder now is (to delete), or None if
    ``dst`` vanished meanwhile (the caller retries).

    Linux: one ``renameat2(RENAME_EXCHANGE)``, so ``dst`` is the old or the new folder at every instant.
    Elsewhere (or a filesystem without it): rename ``dst`` aside, then ``tmp`` to ``dst``. Between the two
    renames ``dst`` does not exist; a crash there leaves the old folder under the hidden name
    ``.<name>.old-<pid>-<thread>-<random>`` beside it (rename it back to recover).
    """
    fn = _renameat2()
    if fn is not None:
        err = fn(os.fsencode(tmp), os.fsencode(dst), _RENAME_EXCHANGE)
        if err == 0:
            return tmp
        if err == errno.ENOENT:
            return None
        if err not in _UNSUPPORTED:
            raise OSError(err, os.strerror(err), str(tmp), None, str(dst))
    aside = dst.with_name(f".{dst.name}.old-{_unique_suffix()}")
    try:
        os.rename(dst, aside)
    except FileNotFoundError:
        return None
    if _rename_noreplace(tmp, dst):
        return aside
    # another writer put its folder at dst inside our window: it is newer than the one we moved aside, which
    # it carried everything foreign from; drop the old one and swap with the newcomer
    _discard(aside)
    return None


def _discard(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``folder`` itself. Every save that swaps an entry of ``folder`` holds it for
    its carry-over and swap, and a carry-over holds it while it lists ``folder`` (and its subfolders), so a
    listing never races a swap inside it (which could list a folder while its old copy is being deleted and
    so miss files). Advisory, between sae-hub writers; where there is no ``flock`` (Windows, some network
    filesystems) it does nothing and concurrent writers get the plain swap's guarantees only.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    for _ in range(100):
        try:
            fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        except OSError:  # gone or unreadable: nothing to guard
            yield
            return
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError:  # pragma: no cover - a filesystem without flock
                yield
                return
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(folder))
            except OSError:
                same = False
            if same:  # still the folder at that path (not one swapped out while we waited)
                yield
                return
        finally:
            os.close(fd)
    yield  # pragma: no cover - swapped 100 times while we waited: go on unlocked


def _carry_over(src: Path, dst: Path, skip: frozenset[str]) -> None:
    """Recreate in ``dst`` everything in ``src`` that the writer does not replace: regular files (and other
    non-folders) as hard links (a copy where the filesystem has none), symlinks as symlinks, subfolders
    recursively. The originals stay where they are until the swap, so no crash can lose them."""
    with _folder_lock(src):
        try:
            entries = list(os.scandir(src))
        except FileNotFoundError:
            return
        for entry in entries:
            name = entry.name
            if name in skip or is_temp_name(name):
                continue
            target = dst / name
            if os.path.lexists(target):  # ours, or carried over by an earlier attempt
                continue
            try:
                if entry.is_symlink():
                    os.symlink(os.readlink(entry.path), target)
                elif entry.is_dir(follow_symlinks=False):
                    os.mkdir(target)
                    _carry_over(Path(entry.path), target, frozenset())
                    shutil.copystat(entry.path, target, follow_symlinks=False)
                else:
                    try:
                        os.link(entry.path, target, follow_symlinks=False)
                    except OSError as e:
                        if isinstance(e, FileNotFoundError):
                            raise
                        shutil.copy2(entry.path, target, follow_symlinks=False)
            except FileNotFoundError:  # removed meanwhile by something other than a sae-hub save
                continue


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike[str], *, replaces: Iterable[str]) -> Iterator[Path]:
    """Build a folder under a hidden temp name beside ``path``, then swap it into place as a whole.

    Yields the temp folder to write into. On success it becomes ``path``; if ``path`` already was a folder,
    everything in it that is not named in ``replaces`` is carried into the new folder first (files hard-linked,
    subfolders such as other SAEs recreated), so only the writer's own files change. Any crash leaves ``path``
    as the complete old folder or the complete new one, never a mix; a Python exception removes the temp
    folder; concurrent writers to one ``path`` end with one writer's complete folder (the last swap wins).
    On Linux the swap is one ``renameat2(RENAME_EXCHANGE)``; see :func:`_exchange` for the fallback's window.

    Not covered: a loader that opens ``cfg.json`` before a swap and the weights after it (files are opened by
    path), and a save into a subfolder of ``path`` that runs during ``path``'s own swap (the subfolder's
    writer then fails to find its temp folder and raises). A symlinked ``path`` is resolved: the folder it
    points to is replaced and the link kept.
    """
    dst = Path(os.path.abspath(os.path.realpath(path) if os.path.islink(path) else path))
    if not dst.name:
        raise ConfigError("cannot save into the filesystem root", path=str(path), field="path")
    if dst.exists() and not dst.is_dir():
        raise ConfigError("the destination exists and is not a folder", path=str(path), field="path")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp-{_unique_suffix()}")
    tmp.mkdir()
    try:
        yield tmp
        _swap_into_place(tmp, dst, frozenset(replaces))
    except BaseException:
        _discard(tmp)
        raise


def _swap_into_place(tmp: Path, dst: Path, replaces: frozenset[str], attempts: int = 100) -> None:
    """Carry over what is not ours and swap, holding the lock on ``dst``'s parent (see :func:`_folder_lock`);
    deleting the old folder happens after, unlocked."""
    old = None
    with _folder_lock(dst.parent):
        for _ in range(attempts):
            try:
                st = os.lstat(dst)
            except FileNotFoundError:
                if _rename_noreplace(tmp, dst):
                    return
                continue  # a writer without the lock created it meanwhile: swap with that one instead
            if not stat.S_ISDIR(st.st_mode):
                raise ConfigError("the destination exists and is not a folder", path=str(dst), field="path")
            _carry_over(dst, tmp, replaces)
            os.chmod(tmp, stat.S_IMODE(st.st_mode))
            old = _exchange(tmp, dst)
            if old is not None:
                break
            if not tmp.is_dir():
                raise FileNotFoundError(errno.ENOENT, "the temp folder of this save vanished (was the folder "
                                        "around it replaced by a concurrent save?)", str(tmp))
        else:
            raise OSError(errno.EBUSY, f"could not swap the new folder into place in {attempts} attempts",
                          str(dst))
    _discard(old)


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 24) -> str:
    """Hex sha256 of a file, hashed straight from its memory mapping (no read buffers: ~10% faster than
    streaming reads, and the hash is the critical path of a conversion's provenance)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            return h.hexdigest()
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            view = memoryview(m)
            try:
                for start in range(0, len(view), chunk):
                    h.update(view[start:start + chunk])
            finally:
                view.release()
    return h.hexdigest()


class SafetensorsHeader:
    """The parsed, validated header of a safetensors file: names, dtypes, shapes, byte ranges, metadata.

    Reading only the header (a few kB) is enough to learn every shape, so configs can be checked or built
    without touching the weights. A header only exists once it passed :func:`_parse_header`'s checks, so
    every entry's byte range is known to lie inside the file and to belong to that tensor alone.
    """

    def __init__(self, path: Path, data_start: int, entries: dict[str, dict[str, Any]],
                 metadata: dict[str, str]) -> None:
        self.path = path
        self.data_start = data_start
        self.entries = entries
        self.metadata = metadata

    def keys(self) -> list[str]:
        return list(self.entries)

    def _entry(self, key: str) -> dict[str, Any]:
        try:
            return self.entries[key]
        except KeyError:
            raise ShapeMismatchError(f"no tensor {key!r} in this file (it has {_short(sorted(self.entries))})",
                                     path=self.path, field=key) from None

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._entry(key)["shape"])

    def dtype(self, key: str) -> torch.dtype:
        return _ST_DTYPES[self._entry(key)["dtype"]]

    def __contains__(self, key: str) -> bool:
        return key in self.entries


def read_safetensors_header(path: str | os.PathLike[str]) -> SafetensorsHeader:
    """Parse and validate a safetensors header (the whole layout, not just the entries asked for); truncation
    and corruption raise :class:`CorruptFileError` naming the file and, where one is at fault, the tensor."""
    p = Path(path)
    with open_regular(p) as f:
        return _parse_header(f, p)


class _DuplicateKey(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``object_pairs_hook`` refusing duplicate keys: ``json`` and the Rust crate both keep the last one
    silently, so a header naming a tensor twice would load whichever came last."""
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # Python's json accepts NaN/Infinity; the format's parser does not


def _parse_header(f: BinaryIO, p: Path) -> SafetensorsHeader:
    """Read and validate the header exactly as the safetensors format and its Rust crate define it.

    The crate's rules: the header is at most 100,000,000 bytes of UTF-8 JSON; ``__metadata__`` maps strings
    to strings; each tensor has a known dtype, a shape of u64s whose byte size does not overflow, and
    ``data_offsets [begin, end]`` with ``end - begin`` equal to that size; sorted by offsets, the tensors tile
    the data exactly (the first starts at 0, each starts where the previous ends: no gap, no overlap) and the
    last ends where the file ends (no trailing bytes). We also refuse duplicate JSON keys (the crate keeps the
    last) and dtypes this torch cannot hold. Without these checks a negative or overlapping offset makes
    header bytes, or another tensor's bytes, load as weights (``tests/test_malformed_inputs.py`` checks every
    rule against ``safetensors.safe_open``).
    """
    size = os.fstat(f.fileno()).st_size
    head = f.read(8)
    if len(head) < 8:
        raise CorruptFileError(f"not a safetensors file: only {size} bytes", path=p)
    (n,) = struct.unpack("<Q", head)
    if n > _MAX_HEADER or 8 + n > size:
        raise CorruptFileError(f"not a safetensors file or truncated: header claims {n} bytes, file has {size}",
                               path=p)
    raw = f.read(n)
    if len(raw) != n:
        raise CorruptFileError(f"truncated while reading: header claims {n} bytes, got {len(raw)}", path=p)
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_unique_object, parse_constant=_no_constant)
    except _DuplicateKey as e:
        raise CorruptFileError("duplicate key in the safetensors header (readers would silently keep the last)",
                               path=p, field=e.key) from None
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise CorruptFileError(f"safetensors header is not valid JSON: {type(e).__name__}: {_short(e)}",
                               path=p) from None
    if not isinstance(header, dict):
        raise CorruptFileError("safetensors header is not a JSON object", path=p)
    metadata = header.pop("__metadata__", None)
    if metadata is None:
        metadata = {}
    elif not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CorruptFileError(f"__metadata__ must map strings to strings, got {_short(metadata)}", path=p,
                               field="__metadata__")
    data_start = 8 + n
    data_len = size - data_start
    for key, info in header.items():
        _check_entry(key, info, data_len, p)
    _check_layout(header, data_len, p)
    return SafetensorsHeader(p, data_start, header, metadata)


def _check_entry(key: str, info: Any, data_len: int, p: Path) -> None:
    """One tensor entry: its fields' types and ranges, and that its byte range has its shape's size.

    Written as plain loops with ``type(x) is int`` (a JSON ``true`` is not a 1): this runs for every tensor
    of every load, so it is kept to about a microsecond an entry.
    """
    try:
        name, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    except (TypeError, KeyError):
        raise CorruptFileError("malformed tensor entry: it needs dtype, shape and data_offsets", path=p,
                               field=key) from None
    dtype = _ST_DTYPES.get(name) if type(name) is str else None
    if dtype is None or type(info) is not dict:
        why = ("malformed tensor entry: not a JSON object" if type(info) is not dict
               else f"dtype {name} is valid safetensors but torch {torch.__version__} cannot hold it"
               if type(name) is str and name in _SPEC_DTYPES else f"unknown tensor dtype {_short(name)}")
        raise CorruptFileError(why, path=p, field=key)
    if type(shape) is not list:
        raise CorruptFileError(f"shape must be a list of integers, got {_short(shape)}", path=p, field=key)
    numel = 1
    for s in shape:  # as the crate computes it: any intermediate product past u64 is an error
        if type(s) is not int or not 0 <= s < _I64:
            raise CorruptFileError(f"shape must be a list of non-negative integers below 2**63, got {_short(shape)}",
                                   path=p, field=key)
        numel *= s
        if numel >= _U64:
            raise CorruptFileError(f"shape {_short(shape)} overflows the size of a tensor", path=p, field=key)
    if type(offsets) is not list or len(offsets) != 2 or type(offsets[0]) is not int or type(offsets[1]) is not int:
        raise CorruptFileError(f"data_offsets must be two integers [begin, end], got {_short(offsets)}", path=p,
                               field=key)
    begin, end = offsets
    if begin < 0 or end >= _U64:
        raise CorruptFileError(f"data_offsets must lie in [0, 2**64), got {_short(offsets)}", path=p, field=key)
    nbytes = numel * dtype.itemsize
    if nbytes * 8 >= _U64:
        raise CorruptFileError(f"shape {_short(shape)} overflows the size of a tensor", path=p, field=key)
    if end < begin or end - begin != nbytes:
        raise CorruptFileError(f"byte range {begin}..{end} does not fit shape {_short(shape)} of {name} "
                               f"({nbytes} bytes)", path=p, field=key)
    if end > data_len:
        raise CorruptFileError(f"file is truncated: tensor needs bytes up to {end} but only {data_len} follow "
                               "the header", path=p, field=key)


def _check_layout(entries: dict[str, dict[str, Any]], data_len: int, p: Path) -> None:
    """Sorted by offsets, the tensors must tile ``[0, data_len)`` exactly: no overlap, no gap, no tail."""
    pos, prev = 0, None
    for key, info in sorted(entries.items(), key=lambda kv: (kv[1]["data_offsets"][0], kv[1]["data_offsets"][1])):
        begin, end = info["data_offsets"]
        if begin < pos:
            raise CorruptFileError(f"bytes {begin}..{end} overlap tensor {prev!r}, which ends at {pos}", path=p,
                                   field=key)
        if begin > pos:
            raise CorruptFileError(f"bytes {pos}..{begin} before it belong to no tensor (a gap)", path=p, field=key)
        pos, prev = end, key
    if pos != data_len:
        raise CorruptFileError(f"{data_len - pos} trailing bytes after the last tensor (which ends at {pos}); "
                               "the format allows none", path=p)


def read_safetensors(
    path: str | os.PathLike[str], keys: list[str] | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``(tensors, metadata)`` of a safetensors file, read by the ``safetensors`` package, memory-mapped, no copy.

    ``safetensors.safe_open`` owns the bytes-to-tensor step: it maps the file privately (copy-on-write), so the
    tensors are writable (in-place folds work), writes never reach the file, and pages are read on first touch.
    Before it opens the file, :func:`_parse_header` checks the header by the same rules the package applies, for
    one reason the package cannot serve: its errors are strings, while ours name the tensor at fault
    (``CorruptFileError.field``); it also refuses duplicate keys, which the package silently resolves to the last.
    Any error the package still raises becomes a :class:`CorruptFileError` naming the file. The whole header is
    validated even when ``keys`` asks for a few tensors; a key the file lacks is a :class:`ShapeMismatchError`.
    """
    from safetensors import SafetensorError, safe_open

    p = Path(path)
    with open_regular(p) as f:
        header = _parse_header(f, p)
    wanted = header.keys() if keys is None else list(keys)
    for key in wanted:
        header._entry(key)
    out: dict[str, torch.Tensor] = {}
    if not wanted:
        return out, dict(header.metadata)
    try:
        with safe_open(os.fspath(p), framework="pt") as st:
            for key in wanted:
                out[key] = st.get_tensor(key)
    except (SafetensorError, OSError, RuntimeError, ValueError) as e:  # e.g. the file changed since the check
        raise CorruptFileError(f"the safetensors reader refused this file: {_short(e)}", path=p) from None
    return out, dict(header.metadata)


# ------------------------------------------------------------------ NumPy archives

# deflate cannot compress better than ~1032:1; a member that claims more is a lie (a zip bomb or a damaged header)
MAX_DEFLATE_RATIO = 1032


def read_npz(path: str | os.PathLike[str], keep: Callable[[str], bool] | None = None) -> dict[str, torch.Tensor]:
    """Arrays of an ``.npz`` as tensors through ``np.load(allow_pickle=False)``: object arrays are refused, the zip
    CRC-32 of every array read is checked (numpy reads members through :mod:`zipfile`).

    What ``np.load`` lacks is checked first, from the zip directory and each member's .npy header, before anything
    is allocated or inflated: a stored entry lies inside the file, a deflated one claims no more than deflate can
    produce, and the header's shape and dtype fit in the entry (a 16-byte entry promising 4 TB would otherwise be
    allocated). So a truncated, damaged or lying archive is a :class:`CorruptFileError` naming the array.
    ``keep(name)`` picks the arrays to read: of the others only the .npy header is read (an unneeded deflated
    member could inflate to GiBs).
    """
    import numpy as np

    p = Path(path)
    try:
        with open_regular(p) as f, np.load(f, allow_pickle=False) as npz:
            out: dict[str, torch.Tensor] = {}
            for info in npz.zip.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                name = info.filename.removesuffix(".npy")
                _check_npz_entry(info, p, name)
                try:
                    with npz.zip.open(info) as member:  # header only: object arrays are refused even if not kept
                        _check_npy_header(member, info.file_size, p, name)
                    if keep is None or keep(name):
                        out[name] = _npy_tensor(npz[name], p, name)
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
        if info.file_size > MAX_DEFLATE_RATIO * info.compress_size + 1024:
            raise CorruptFileError(f"deflated zip entry claims {info.file_size} bytes from {info.compress_size} "
                                   "compressed bytes, more than deflate can produce", path=p, field=name)
    else:
        raise CorruptFileError(f"zip compression method {info.compress_type} (numpy writes stored or deflated "
                               "entries only)", path=p, field=name)


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
