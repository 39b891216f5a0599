"""Reading checkpoint files safely: safetensors (memory-mapped, validated), JSON, hashes.

Every reader here turns a bad file into a typed :mod:`sae_hub.errors` exception naming the file, so loaders
never leak a bare ``KeyError``/``RuntimeError`` from a parser. The safetensors reader maps the file
copy-on-write and hands out tensors that *view* the mapping: loading is O(header), pages are read on first
touch, and no second copy of the weights is made unless a dtype or device change asks for one.
"""

from __future__ import annotations

import hashlib
import json
import math
import mmap
import os
import struct
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from sae_hub.errors import CorruptFileError, MissingFileError

__all__ = [
    "SafetensorsHeader",
    "dtype_from_str",
    "dtype_to_str",
    "read_json",
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

_MAX_HEADER = 100 * 1024 * 1024  # the safetensors spec's own limit


def dtype_from_str(name: str | torch.dtype) -> torch.dtype:
    """``"float32"``, ``"torch.bfloat16"``, ``"bf16"`` or a dtype -> ``torch.dtype``."""
    if isinstance(name, torch.dtype):
        return name
    key = str(name).removeprefix("torch.").lower()
    aliases = {"fp32": "float32", "fp16": "float16", "half": "float16", "bf16": "bfloat16",
               "float": "float32", "double": "float64", "fp64": "float64"}
    key = aliases.get(key, key)
    dt = getattr(torch, key, None)
    if not isinstance(dt, torch.dtype):
        raise ValueError(f"unknown dtype {name!r}")
    return dt


def dtype_to_str(dtype: torch.dtype) -> str:
    """``torch.float32`` -> ``"float32"`` (the form SAELens writes in cfg.json)."""
    return str(dtype).removeprefix("torch.")


def read_json(path: str | os.PathLike[str]) -> Any:
    """Parse a JSON file; missing or malformed files raise typed errors naming the file."""
    p = Path(path)
    try:
        with open(p, "rb") as f:
            text = f.read().decode("utf-8")
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise MissingFileError("required file not found", path=p) from None
    except UnicodeDecodeError as e:
        raise CorruptFileError(f"not UTF-8 text: {e}", path=p) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise CorruptFileError(f"not valid JSON: {e.msg} at line {e.lineno} column {e.colno}", path=p) from None


def write_json_atomic(path: str | os.PathLike[str], data: Any) -> None:
    """Write JSON through a temp file + rename so a crash never leaves half a config."""
    p = Path(path)
    tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    os.replace(tmp, p)


_ST_NAMES = {dt: name for name, dt in _ST_DTYPES.items()}


def write_safetensors_atomic(
    path: str | os.PathLike[str], tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> None:
    """Write a safetensors file through a temp file + rename, streaming each tensor's bytes straight from its
    memory (no serialisation buffer: about twice as fast as ``safetensors.torch.save_file`` for large SAEs).

    The layout is the safetensors spec's: little-endian u64 header length, JSON header (padded with spaces to
    a multiple of 8), then the tensors' bytes in header order.
    """
    if sys.byteorder != "little":  # pragma: no cover - safetensors stores little-endian
        from safetensors.torch import save_file

        p = Path(path)
        tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}")
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)
        os.replace(tmp, p)
        return
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    flat: list[torch.Tensor] = []
    offset = 0
    for key in sorted(tensors):
        t = tensors[key].detach()
        if t.dtype not in _ST_NAMES:
            raise ValueError(f"cannot store dtype {t.dtype} in safetensors (tensor {key!r})")
        nbytes = t.numel() * t.element_size()
        header[key] = {"dtype": _ST_NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
        flat.append(t)
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    p = Path(path)
    tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for t in _contiguous_cpu(flat):
            if t.numel():
                f.write(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    os.replace(tmp, p)


def _contiguous_cpu(tensors: list[torch.Tensor], big: int = 1 << 20) -> Iterator[torch.Tensor]:
    """Each tensor as a contiguous CPU tensor, in order. With two or more large non-contiguous ones (e.g.
    transposed checkpoint matrices) they are copied on two worker threads ahead of the writer: a transpose is
    a slow strided copy, and overlapping them saves most of one (benchmarks/bench_convert.py, Qwen Scope)."""
    slow = [t for t in tensors if t.device.type != "cpu" or not t.is_contiguous()]
    if sum(t.numel() * t.element_size() >= big for t in slow) < 2:
        yield from (t.cpu().contiguous() for t in tensors)
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = [pool.submit(lambda t=t: t.cpu().contiguous()) for t in tensors]
        for fut in futures:
            yield fut.result()


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
    without touching the weights.
    """

    def __init__(self, path: Path, data_start: int, entries: dict[str, dict[str, Any]],
                 metadata: dict[str, str]) -> None:
        self.path = path
        self.data_start = data_start
        self.entries = entries
        self.metadata = metadata

    def keys(self) -> list[str]:
        return list(self.entries)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self.entries[key]["shape"])

    def dtype(self, key: str) -> torch.dtype:
        return _ST_DTYPES[self.entries[key]["dtype"]]

    def __contains__(self, key: str) -> bool:
        return key in self.entries


def read_safetensors_header(path: str | os.PathLike[str]) -> SafetensorsHeader:
    """Parse and validate a safetensors header; truncation and corruption raise :class:`CorruptFileError`."""
    p = Path(path)
    try:
        f = open(p, "rb")  # noqa: SIM115 - closed below; one open serves stat and read
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise MissingFileError("required file not found", path=p) from None
    with f:
        return _parse_header(f, p)


def _parse_header(f: Any, p: Path) -> SafetensorsHeader:
    size = os.fstat(f.fileno()).st_size
    head = f.read(8)
    if len(head) < 8:
        raise CorruptFileError(f"not a safetensors file: only {size} bytes", path=p)
    (n,) = struct.unpack("<Q", head)
    if n > _MAX_HEADER or 8 + n > size:
        raise CorruptFileError(f"not a safetensors file or truncated: header claims {n} bytes, file has {size}",
                               path=p)
    raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CorruptFileError(f"safetensors header is not valid JSON: {e}", path=p) from None
    if not isinstance(header, dict):
        raise CorruptFileError("safetensors header is not a JSON object", path=p)
    metadata = header.pop("__metadata__", None) or {}
    data_start = 8 + n
    data_len = size - data_start
    for key, info in header.items():
        if not isinstance(info, dict) or {"dtype", "shape", "data_offsets"} - info.keys():
            raise CorruptFileError("malformed tensor entry in safetensors header", path=p, field=key)
        if info["dtype"] not in _ST_DTYPES:
            raise CorruptFileError(f"unsupported tensor dtype {info['dtype']!r}", path=p, field=key)
        shape, offsets = info["shape"], info["data_offsets"]
        if (not isinstance(shape, list) or not all(isinstance(s, int) and s >= 0 for s in shape)
                or not isinstance(offsets, list) or len(offsets) != 2
                or not all(isinstance(o, int) for o in offsets)):
            raise CorruptFileError("malformed shape or data_offsets", path=p, field=key)
        begin, end = offsets
        itemsize = _ST_DTYPES[info["dtype"]].itemsize
        if end < begin or end - begin != math.prod(shape) * itemsize:
            raise CorruptFileError(
                f"byte range {begin}..{end} does not fit shape {shape} of {info['dtype']}", path=p, field=key
            )
        if end > data_len:
            raise CorruptFileError(
                f"file is truncated: tensor needs bytes up to {end} but only {data_len} follow the header",
                path=p, field=key,
            )
    return SafetensorsHeader(p, data_start, header, metadata)


def read_safetensors(
    path: str | os.PathLike[str], keys: list[str] | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Memory-map a safetensors file and return ``(tensors, metadata)`` without copying the data.

    The mapping is private copy-on-write: the returned tensors are writable (in-place folds work) and
    writes never reach the file. Tensors keep the mapping alive for as long as they live.
    """
    p = Path(path)
    try:
        f = open(p, "rb")  # noqa: SIM115 - closed below
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise MissingFileError("required file not found", path=p) from None
    with f:
        header = _parse_header(f, p)
        wanted = header.keys() if keys is None else keys
        out: dict[str, torch.Tensor] = {}
        if not wanted:
            return out, dict(header.metadata)
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    for key in wanted:
        info = header.entries[key]
        dtype = _ST_DTYPES[info["dtype"]]
        begin, end = info["data_offsets"]
        count = (end - begin) // dtype.itemsize
        shape = tuple(info["shape"])
        if count == 0:
            out[key] = torch.empty(shape, dtype=dtype)
            continue
        t = torch.frombuffer(buf, dtype=dtype, count=count, offset=header.data_start + begin)
        out[key] = t.view(shape)
    return out, dict(header.metadata)
