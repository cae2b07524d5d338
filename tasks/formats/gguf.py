"""GGUF headers, read without gguf-py's reader: the one GGUF reader of this project.

`scan` reads the whole header (key/values, tensor table, where the data must end) for validity
checks; `read_kv` reads a few keys and stops, for deploy-time questions (does llama.cpp add BOS?).
gguf-py's reader is the reference for values, but on a truncated or foreign file it fails with
numpy errors ("cannot reshape array ...") that tell a user nothing, and it decodes every vocabulary
entry (14 s for a 151k-token vocab on a busy 2-core machine). This reader only walks the
fixed-layout parts with explicit bounds checks, so a failure names what is wrong: not a GGUF, an
unsupported version, or "truncated: tensor X ends at byte N but the file has M".
Format: GGUF v2/v3 (llama.cpp's gguf.h): magic, version, tensor count, kv count, (key, type, value)
records, tensor infos, aligned data.
"""

from __future__ import annotations

import hashlib
import mmap
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
STRING, ARRAY = 8, 9  # GGUF value types of variable size
MAX_COUNT = 1 << 24  # more tensors or keys than this is a corrupt header, not a big model


class ScanError(ValueError):
    """The file is not a well-formed GGUF; the message says why, in words."""


# GGUF value types of fixed size -> struct format.
SCALAR_FORMATS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
FIXED_SIZES = {vtype: struct.calcsize(fmt) for vtype, fmt in SCALAR_FORMATS.items()}
SMALL_ARRAY = 64  # arrays up to this many elements are decoded; longer ones only counted


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # ggml order (ne0 first)
    ggml_type: int
    offset: int  # relative to the data section
    n_elements: int = 0
    n_bytes: int = 0

    @property
    def type_name(self) -> str:
        import gguf

        return gguf.GGMLQuantizationType(self.ggml_type).name


@dataclass(frozen=True)
class Value:
    """A metadata value: scalars, strings and short arrays decoded; long arrays only counted."""

    vtype: int
    value: object  # None for a long array
    count: int | None = None  # number of elements, for arrays


@dataclass(frozen=True)
class Scan:
    version: int
    kv_count: int
    kv: dict[str, Value]
    tensors: tuple[TensorInfo, ...]
    alignment: int
    data_start: int
    data_end: int  # the byte just after the last tensor's data
    file_size: int
    tokenizer_digest: str  # SHA256 of every tokenizer.* key and value, as stored

    def get(self, key: str) -> object:
        """A decoded value, the element count of a long array, or None if the key is absent."""
        v = self.kv.get(key)
        if v is None:
            return None
        return v.count if v.value is None else v.value


class _Cursor:
    def __init__(self, data: memoryview, size: int) -> None:
        self.data, self.pos, self.size = data, 0, size
        self.version = 0

    def take(self, n: int, what: str) -> bytes:
        if self.pos + n > self.size:
            raise ScanError(f"truncated: {what} at byte {self.pos} needs {n} bytes but the file has {self.size}")
        out = bytes(self.data[self.pos:self.pos + n])
        self.pos += n
        return out

    def u32(self, what: str) -> int:
        return struct.unpack("<I", self.take(4, what))[0]

    def u64(self, what: str) -> int:
        return struct.unpack("<Q", self.take(8, what))[0]

    def string(self, what: str) -> str:
        n = self.u64(what)
        if n > self.size:
            raise ScanError(f"corrupt: {what} claims a {n}-byte string in a {self.size}-byte file")
        return self.take(n, what).decode("utf-8", errors="replace")

    def read_value(self, vtype: int, what: str) -> Value:
        if vtype in SCALAR_FORMATS:
            fmt = SCALAR_FORMATS[vtype]
            return Value(vtype, struct.unpack(fmt, self.take(struct.calcsize(fmt), what))[0])
        if vtype == STRING:
            return Value(vtype, self.string(what))
        if vtype == ARRAY:
            start = self.pos
            etype = self.u32(what)
            n = self.u64(what)
            if n <= SMALL_ARRAY and (etype in SCALAR_FORMATS or etype == STRING):
                return Value(vtype, [self.read_value(etype, what).value for _ in range(n)], n)
            self.pos = start
            self.skip_value(vtype, what)
            return Value(vtype, None, n)
        raise ScanError(f"corrupt: {what} has unknown value type {vtype}")

    def skip_value(self, vtype: int, what: str) -> None:
        if vtype in FIXED_SIZES:
            self.take(FIXED_SIZES[vtype], what)
        elif vtype == STRING:
            self.string(what)
        elif vtype == ARRAY:
            etype = self.u32(what)
            n = self.u64(what)
            if n > self.size:
                raise ScanError(f"corrupt: {what} claims {n} array elements in a {self.size}-byte file")
            if etype in FIXED_SIZES:
                self.take(FIXED_SIZES[etype] * n, what)
            else:
                for _ in range(n):
                    self.skip_value(etype, what)
        else:
            raise ScanError(f"corrupt: {what} has unknown value type {vtype}")


def _tensor_nbytes(info: TensorInfo) -> int:
    import gguf  # light enough here; only the quant size table is used

    try:
        qtype = gguf.GGMLQuantizationType(info.ggml_type)
    except ValueError:
        raise ScanError(f"corrupt: tensor {info.name} has unknown ggml type {info.ggml_type}") from None
    block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    n = info.n_elements
    if n % block:
        raise ScanError(f"corrupt: tensor {info.name} has {n} elements, not a multiple of {qtype.name}'s block {block}")
    return n // block * type_size


def has_magic(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(4) == MAGIC


def scan(path: Path) -> Scan:
    """Scan `path`; raise ScanError with a one-line reason if it is not a complete GGUF."""
    return _mapped(path, _scan)


def read_kv(path: Path, wanted: set[str]) -> dict[str, object]:
    """The values of the `wanted` keys present in the header (long arrays as None); stops once all are found."""

    def read(cur: _Cursor, _size: int) -> dict[str, object]:
        found: dict[str, object] = {}
        _, n_kv = _preamble(cur)
        for i in range(n_kv):
            if len(found) == len(wanted):
                break
            key = cur.string(f"key #{i}")
            vtype = cur.u32(f"type of {key}")
            if key in wanted:
                found[key] = cur.read_value(vtype, f"value of {key}").value
            else:
                cur.skip_value(vtype, f"value of {key}")
        return found

    return _mapped(path, read)


def adds_bos(path: Path) -> bool:
    """Whether llama.cpp prepends BOS when tokenizing a prompt for this model.

    The file's tokenizer.ggml.add_bos_token when present; else llama.cpp's default for the
    tokenizer type (SentencePiece 'llama': yes; BPE and others: no).
    """
    kv = read_kv(path, {"tokenizer.ggml.add_bos_token", "tokenizer.ggml.model"})
    if "tokenizer.ggml.add_bos_token" in kv:
        return bool(kv["tokenizer.ggml.add_bos_token"])
    return kv.get("tokenizer.ggml.model") == "llama"


def _mapped(path: Path, read: Callable[[_Cursor, int], T]) -> T:
    size = path.stat().st_size
    if size < 24:
        head = path.read_bytes()[:8]
        raise ScanError(f"not a GGUF file: {size} bytes, starts with {head!r}")
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        cur = _Cursor(memoryview(mm), size)
        try:
            return read(cur, size)
        finally:
            cur.data.release()


def _preamble(cur: _Cursor) -> tuple[int, int]:
    """Magic and version checked; (tensor count, key/value count)."""
    magic = cur.take(4, "magic")
    if magic != MAGIC:
        raise ScanError(f"not a GGUF file: starts with {magic!r}, not {MAGIC!r}")
    version = cur.u32("version")
    if version not in SUPPORTED_VERSIONS:
        raise ScanError(f"unsupported GGUF version {version} (supported: {', '.join(map(str, SUPPORTED_VERSIONS))})")
    cur.version = version
    n_tensors = cur.u64("tensor count")
    n_kv = cur.u64("key/value count")
    if n_tensors > MAX_COUNT or n_kv > MAX_COUNT:
        raise ScanError(f"corrupt header: {n_tensors} tensors, {n_kv} keys")
    return n_tensors, n_kv


def _scan(cur: _Cursor, size: int) -> Scan:
    n_tensors, n_kv = _preamble(cur)
    version = cur.version
    kv: dict[str, Value] = {}
    digest = hashlib.sha256()
    for i in range(n_kv):
        start = cur.pos
        key = cur.string(f"key #{i}")
        vtype = cur.u32(f"type of {key}")
        kv[key] = cur.read_value(vtype, f"value of {key}")
        if key.startswith("tokenizer."):
            digest.update(bytes(cur.data[start:cur.pos]))
    alignment = kv["general.alignment"].value if "general.alignment" in kv else DEFAULT_ALIGNMENT
    if not isinstance(alignment, int):
        raise ScanError(f"corrupt: general.alignment is {alignment!r}")
    tensors = []
    for i in range(n_tensors):
        name = cur.string(f"tensor info #{i}")
        n_dims = cur.u32(f"dims of {name}")
        if n_dims > 8:
            raise ScanError(f"corrupt: tensor {name} claims {n_dims} dimensions")
        shape = tuple(cur.u64(f"shape of {name}") for _ in range(n_dims))
        ggml_type = cur.u32(f"type of {name}")
        offset = cur.u64(f"offset of {name}")
        n_elements = 1
        for d in shape:
            n_elements *= d
        info = TensorInfo(name, shape, ggml_type, offset, n_elements)
        tensors.append(TensorInfo(name, shape, ggml_type, offset, n_elements, _tensor_nbytes(info)))
    if alignment == 0 or alignment & (alignment - 1):
        raise ScanError(f"corrupt: general.alignment {alignment} is not a power of two")
    data_start = -(-cur.pos // alignment) * alignment
    data_end = data_start
    for t in tensors:
        end = data_start + t.offset + t.n_bytes
        if end > size:
            raise ScanError(f"truncated: tensor {t.name} ends at byte {end} but the file has {size}")
        data_end = max(data_end, end)
    return Scan(version, n_kv, kv, tuple(tensors), alignment, data_start, data_end, size, digest.hexdigest())
