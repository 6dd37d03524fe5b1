"""Read a GGUF file's header and key/values without touching its tensors.

A chat template or a tokenizer lives in a GGUF's metadata (``tokenizer.chat_template``, ``tokenizer.ggml.*``),
which sits at the start of the file before the tensor infos and the tensor data (4-70 GB for real models).
``gguf.GGUFReader`` maps the whole file and builds a numpy view for every array element and every tensor; this
reader reads the file front to back in blocks of 1 MiB (more when one value is larger) and stops with the block that
holds the last key/value: no memory map, no seek, nothing of the tensor infos or data is parsed, and at most one block
past the metadata is read. Arrays of numbers come back as lists (one ``frombuffer`` each), arrays of
strings as lists of ``str``, the way ``ReaderField.contents()`` gives them (``tests/test_gguf_header.py`` proves it
on every vocabulary GGUF of the llama-cpp-python sdist).

:func:`fingerprint` is the sha256 of the bytes read (magic, version, counts, every key/value): everything a
template load or a tokenizer conversion depends on, so it keys the conversion cache (``tmplcheck/assets.py``);
the tensor section, however large, is not read for it.
"""

from __future__ import annotations

import hashlib
import os
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

GGUF_MAGIC = b"GGUF"

# GGUFValueType
UINT8, INT8, UINT16, INT16, UINT32, INT32, FLOAT32, BOOL, STRING, ARRAY, UINT64, INT64, FLOAT64 = range(13)
_SCALAR = {UINT8: "u1", INT8: "i1", UINT16: "u2", INT16: "i2", UINT32: "u4", INT32: "i4", FLOAT32: "f4",
           BOOL: "?", UINT64: "u8", INT64: "i8", FLOAT64: "f8"}
_SIZE = {k: np.dtype(v).itemsize for k, v in _SCALAR.items()}
TYPE_NAMES = {UINT8: "UINT8", INT8: "INT8", UINT16: "UINT16", INT16: "INT16", UINT32: "UINT32", INT32: "INT32",
              FLOAT32: "FLOAT32", BOOL: "BOOL", STRING: "STRING", ARRAY: "ARRAY", UINT64: "UINT64", INT64: "INT64",
              FLOAT64: "FLOAT64"}

#: a header larger than this is not a chat model's metadata (a 256k vocabulary with merges is ~15 MB)
MAX_HEADER_BYTES = 1 << 30
#: nor an array longer than this (the largest vocabularies and merge tables hold well under a million entries)
MAX_ARRAY = 1 << 24


class GGUFHeaderError(ValueError):
    """Not a GGUF file, an unsupported version, or metadata that runs past the file or the size bound."""


@dataclass
class GGUFHeader:
    path: Path
    version: int
    byte_order: str                  # "<" little-endian, ">" big-endian
    tensor_count: int
    kv_count: int
    fields: dict[str, Any]           # key -> value (str, int, float, bool, or a list of them)
    types: dict[str, tuple[int, ...]] = field(default_factory=dict)   # key -> (type,) or (ARRAY, element type)
    end: int = 0                     # file offset just past the last key/value (where the tensor infos start)
    sha256: str = ""                 # of bytes [0, end)

    def get(self, key: str, default: Any = None) -> Any:
        return self.fields.get(key, default)

    @property
    def fingerprint(self) -> str:
        return self.sha256


class _Stream:
    """Sequential reads from a file, hashing every byte consumed (no seek, no map)."""

    def __init__(self, f, limit: int, size: int):
        self.f = f
        self.buf = b""
        self.pos = 0            # position in buf
        self.base = 0           # file offset of buf[0]
        self.limit = limit
        self.size = size
        self.h = hashlib.sha256()

    @property
    def offset(self) -> int:
        return self.base + self.pos

    def need(self, n: int) -> None:
        have = len(self.buf) - self.pos
        if have >= n:
            return
        if self.offset + n > self.size:
            raise GGUFHeaderError(f"the metadata runs past the end of the file (offset {self.offset + n} > "
                                  f"{self.size} bytes)")
        if self.offset + n > self.limit:
            raise GGUFHeaderError(f"the metadata is larger than {self.limit} bytes")
        self.h.update(memoryview(self.buf)[:self.pos])
        self.buf = self.buf[self.pos:]
        self.base += self.pos
        self.pos = 0
        want = max(n - len(self.buf), 1 << 20, len(self.buf))
        more = self.f.read(min(want, max(self.size - self.base - len(self.buf), 0)))
        self.buf += more
        if len(self.buf) < n:
            raise GGUFHeaderError("the file ends inside its metadata")

    def take(self, n: int) -> memoryview:
        self.need(n)
        v = memoryview(self.buf)[self.pos:self.pos + n]
        self.pos += n
        return v

    def digest(self) -> str:
        h = self.h.copy()
        h.update(memoryview(self.buf)[:self.pos])
        return h.hexdigest()


class _Parser:
    def __init__(self, s: _Stream, bo: str):
        self.s = s
        self.bo = bo
        self.u32 = struct.Struct(bo + "I")
        self.u64 = struct.Struct(bo + "Q")

    def uint32(self) -> int:
        return self.u32.unpack(self.s.take(4))[0]

    def uint64(self) -> int:
        return self.u64.unpack(self.s.take(8))[0]

    def string(self) -> str:
        n = self.uint64()
        return str(self.s.take(n), "utf-8")

    def value(self, t: int) -> tuple[Any, tuple[int, ...]]:
        if t == STRING:
            return self.string(), (STRING,)
        if t in _SCALAR:
            v = np.frombuffer(self.s.take(_SIZE[t]), dtype=np.dtype(_SCALAR[t]).newbyteorder(self.bo))[0]
            return v.item(), (t,)
        if t == ARRAY:
            et = self.uint32()
            n = self.uint64()
            if n > MAX_ARRAY:
                raise GGUFHeaderError(f"an array of {n} elements in the metadata (more than {MAX_ARRAY})")
            if et == STRING:
                return self.strings(n), (ARRAY, STRING)
            if et in _SCALAR:
                raw = self.s.take(n * _SIZE[et])
                return np.frombuffer(raw, dtype=np.dtype(_SCALAR[et]).newbyteorder(self.bo)).tolist(), (ARRAY, et)
            if et == ARRAY:
                # nested arrays: as GGUFReader.contents() flattens them
                out: list[Any] = []
                sub: tuple[int, ...] = (ARRAY,)
                for _ in range(n):
                    v, sub = self.value(ARRAY)
                    out.extend(v if isinstance(v, list) else [v])
                return out, (ARRAY, *sub)
            raise GGUFHeaderError(f"unknown array element type {et}")
        raise GGUFHeaderError(f"unknown value type {t}")

    def strings(self, n: int) -> list[str]:
        """``n`` length-prefixed strings: one pass over the buffered bytes with ``unpack_from``."""
        s = self.s
        out: list[str] = []
        append = out.append
        unpack = self.u64.unpack_from
        buf, pos, end = s.buf, s.pos, len(s.buf)
        for _ in range(n):
            if pos + 8 > end:
                s.pos = pos
                s.need(8)
                buf, pos, end = s.buf, s.pos, len(s.buf)
            k = unpack(buf, pos)[0]
            pos += 8
            if pos + k > end:
                s.pos = pos
                s.need(k)
                buf, pos, end = s.buf, s.pos, len(s.buf)
            append(buf[pos:pos + k].decode("utf-8"))
            pos += k
        s.pos = pos
        return out


def read_header(path: str | os.PathLike, *, max_bytes: int = MAX_HEADER_BYTES) -> GGUFHeader:
    """The header and every key/value of the GGUF at ``path``; the tensor infos and data are not read."""
    p = Path(path)
    try:
        size = p.stat().st_size
        f = open(p, "rb", buffering=0)
    except OSError as e:
        raise GGUFHeaderError(f"{p}: cannot read: {e}") from None
    with f:
        s = _Stream(f, max_bytes, size)
        if bytes(s.take(4)) != GGUF_MAGIC:
            raise GGUFHeaderError(f"{p}: not a GGUF file (no GGUF magic)")
        raw = bytes(s.take(4))
        version = struct.unpack("<I", raw)[0]
        bo = "<"
        if version & 0xFFFF == 0:            # written on a machine of the other byte order
            version, bo = struct.unpack(">I", raw)[0], ">"
        if version not in (2, 3):
            raise GGUFHeaderError(f"{p}: GGUF version {version} is not supported (2 and 3 are)")
        ps = _Parser(s, bo)
        tensor_count = ps.uint64()
        kv_count = ps.uint64()
        fields: dict[str, Any] = {}
        types: dict[str, tuple[int, ...]] = {}
        try:
            for _ in range(kv_count):
                key = ps.string()
                t = ps.uint32()
                fields[key], types[key] = ps.value(t)
        except UnicodeDecodeError as e:
            raise GGUFHeaderError(f"{p}: a metadata string is not UTF-8 ({e.reason} at offset {s.offset})") \
                from None
        return GGUFHeader(p, version, bo, tensor_count, kv_count, fields, types, s.offset, s.digest())


# ----------------------------------------------------------------------------------------------- fingerprints
_MEMO: dict[tuple[str, int, int], GGUFHeader] = {}


def cached_header(path: str | os.PathLike) -> GGUFHeader:
    """:func:`read_header`, memoised per process by (path, size, mtime)."""
    p = Path(path)
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    h = _MEMO.get(key)
    if h is None:
        h = read_header(p)
        if len(_MEMO) > 16:
            _MEMO.clear()
        _MEMO[key] = h
    return h


def fingerprint(path: str | os.PathLike) -> str:
    """sha256 of the GGUF's header and key/values (the bytes a template or tokenizer load depends on)."""
    return cached_header(path).sha256


# ------------------------------------------------------------------------------- what the template loader needs
def token_text(h: GGUFHeader, key: str) -> str | None:
    """The text of the token whose id is in ``key`` (e.g. ``tokenizer.ggml.bos_token_id``), or None."""
    toks = h.fields.get("tokenizer.ggml.tokens")
    idx = h.fields.get(key)
    if not isinstance(toks, list) or not isinstance(idx, int) or not 0 <= idx < len(toks):
        return None
    return toks[idx]


# ---------------------------------------------------------------------------- a GGUFReader stand-in (transformers)
class _Field:
    """What ``transformers``' GGUF loader reads of a ``gguf.ReaderField``: ``name``, ``types``, ``parts``,
    ``data`` (indices of the value parts in ``parts``) and ``contents()``."""

    __slots__ = ("name", "types", "parts", "data", "_value")

    def __init__(self, name: str, value: Any, types: tuple[int, ...], bo: str):
        from gguf import GGUFValueType

        self.name = name
        self.types = [GGUFValueType(t) for t in types]
        self._value = value
        if types[0] == ARRAY:
            et = types[-1]
            if et == STRING:
                self.parts = [np.frombuffer(v.encode("utf-8"), dtype=np.uint8) for v in value]
            else:
                arr = np.asarray(value, dtype=np.dtype(_SCALAR[et]))
                self.parts = [arr[i:i + 1] for i in range(len(arr))]
            self.data = list(range(len(self.parts)))
        elif types[0] == STRING:
            self.parts = [np.frombuffer(value.encode("utf-8"), dtype=np.uint8)]
            self.data = [0]
        else:
            self.parts = [np.asarray([value], dtype=np.dtype(_SCALAR[types[0]]))]
            self.data = [0]

    def contents(self, index_or_slice=slice(None)) -> Any:
        v = self._value
        return v[index_or_slice] if isinstance(v, list) else v


class HeaderReader:
    """A read-only, metadata-only stand-in for ``gguf.GGUFReader``: ``fields`` (``GGUF.*`` pseudo-fields included,
    as GGUFReader has them) and an empty ``tensors`` list. Enough for tokenizer conversion, never for weights."""

    def __init__(self, path: str | os.PathLike, header: GGUFHeader | None = None):
        h = header or cached_header(path)
        self.header = h
        self.byte_order = "S" if h.byte_order != ("<" if sys.byteorder == "little" else ">") else "I"
        self.fields: dict[str, _Field] = {
            "GGUF.version": _Field("GGUF.version", h.version, (UINT32,), h.byte_order),
            "GGUF.tensor_count": _Field("GGUF.tensor_count", h.tensor_count, (UINT64,), h.byte_order),
            "GGUF.kv_count": _Field("GGUF.kv_count", h.kv_count, (UINT64,), h.byte_order),
        }
        for k, v in h.fields.items():
            self.fields[k] = _Field(k, v, h.types[k], h.byte_order)
        self.tensors: list = []

    def get_field(self, key: str):
        return self.fields.get(key)
