"""A few GGUF header values, read without gguf-py.

gguf.GGUFReader parses every tensor and vocabulary entry into numpy objects (14 s for a
151k-token vocab on a busy 2-core machine); deploying needs two or three scalar keys, so this
walks the key/value section with struct and skips arrays. Format: GGUF v2/v3 (llama.cpp's
gguf.h): magic, version, tensor count, kv count, then (key, type, value) records.
"""

from __future__ import annotations

import mmap
import struct
from pathlib import Path
from typing import Any

MAGIC = b"GGUF"
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


class GGUFError(ValueError):
    """Not a GGUF file, or a truncated/corrupt header."""


def has_magic(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(4) == MAGIC


def read_kv(path: Path, wanted: set[str]) -> dict[str, Any]:
    """The scalar/string values of `wanted` keys present in the header (arrays are skipped)."""
    found: dict[str, Any] = {}
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        if mm[:4] != MAGIC:
            raise GGUFError(f"{path}: not a GGUF file (magic {bytes(mm[:4])!r})")
        try:
            version, _tensors, kv_count = struct.unpack_from("<IQQ", mm, 4)
            if version < 2:
                raise GGUFError(f"{path}: GGUF version {version} is not supported")
            pos = 24
            for _ in range(kv_count):
                key, pos = _string(mm, pos)
                (vtype,) = struct.unpack_from("<I", mm, pos)
                pos += 4
                value, pos = _value(mm, pos, vtype, keep=key in wanted)
                if key in wanted:
                    found[key] = value
                    if len(found) == len(wanted):
                        break
        except struct.error:
            raise GGUFError(f"{path}: truncated GGUF header") from None
    return found


def _string(mm: mmap.mmap, pos: int) -> tuple[str, int]:
    (n,) = struct.unpack_from("<Q", mm, pos)
    start = pos + 8
    if start + n > len(mm):
        raise struct.error("string past end")
    return bytes(mm[start:start + n]).decode("utf-8", errors="replace"), start + n


def _value(mm: mmap.mmap, pos: int, vtype: int, keep: bool) -> tuple[Any, int]:
    if vtype in _SCALARS:
        fmt = _SCALARS[vtype]
        return struct.unpack_from(fmt, mm, pos)[0], pos + struct.calcsize(fmt)
    if vtype == _STRING:
        return _string(mm, pos)
    if vtype == _ARRAY:
        etype, count = struct.unpack_from("<IQ", mm, pos)
        pos += 12
        if etype in _SCALARS:
            return None, pos + count * struct.calcsize(_SCALARS[etype])
        if etype == _STRING:
            for _ in range(count):
                (n,) = struct.unpack_from("<Q", mm, pos)
                pos += 8 + n
            return None, pos
        for _ in range(count):
            _, pos = _value(mm, pos, etype, keep=False)
        return None, pos
    raise GGUFError(f"unknown GGUF value type {vtype}")


def adds_bos(path: Path) -> bool:
    """Whether llama.cpp prepends BOS when tokenizing a prompt for this model.

    The file's tokenizer.ggml.add_bos_token when present; else llama.cpp's default for the
    tokenizer type (SentencePiece 'llama': yes; BPE and others: no).
    """
    kv = read_kv(path, {"tokenizer.ggml.add_bos_token", "tokenizer.ggml.model"})
    if "tokenizer.ggml.add_bos_token" in kv:
        return bool(kv["tokenizer.ggml.add_bos_token"])
    return kv.get("tokenizer.ggml.model") == "llama"
