"""Helpers for the fidelity-check tests: broken copies of real GGUFs, patched byte by byte.

Patches keep every length the same, so the copy stays a structurally valid GGUF and only the
one thing under test is wrong (what a buggy converter or a hand edit would produce).
"""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

STRING = 8


def _key_offset(data: bytes, key: str) -> int:
    needle = struct.pack("<Q", len(key)) + key.encode()
    at = data.find(needle)
    if at < 0:
        raise KeyError(key)
    return at + len(needle)  # the value's type follows


def patched_string(src: Path, dest: Path, key: str, new_value: str) -> Path:
    """Copy `src` with the string value of `key` replaced by `new_value` (same byte length)."""
    data = bytearray(src.read_bytes())
    at = _key_offset(data, key)
    (vtype,) = struct.unpack_from("<I", data, at)
    (n,) = struct.unpack_from("<Q", data, at + 4)
    assert vtype == STRING, f"{key} is not a string"
    assert len(new_value.encode()) == n, f"{key}: new value must be {n} bytes"
    data[at + 12:at + 12 + n] = new_value.encode()
    dest.write_bytes(bytes(data))
    return dest


def renamed_key(src: Path, dest: Path, key: str, new_key: str) -> Path:
    """Copy `src` with the key `key` renamed (same length): as if that key had never been written."""
    assert len(new_key) == len(key)
    data = bytearray(src.read_bytes())
    at = _key_offset(data, key)
    data[at - len(key):at] = new_key.encode()
    dest.write_bytes(bytes(data))
    return dest


def truncated(src: Path, dest: Path, drop: int) -> Path:
    with open(src, "rb") as fh:
        dest.write_bytes(fh.read(src.stat().st_size - drop))
    return dest


def metadata_only(src: Path, dest: Path) -> Path:
    """A tiny placeholder: the source's metadata with no tensors, written by gguf-py's writer."""
    import gguf

    reader = gguf.GGUFReader(src)
    writer = gguf.GGUFWriter(str(dest), arch=str(reader.fields["general.architecture"].contents()))
    for key in ("general.name", "tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.chat_template"):
        if key in reader.fields:
            writer.add_string(key, reader.fields[key].contents())
    writer.add_uint32("general.file_type", int(reader.fields["general.file_type"].contents()))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dest


def copy(src: Path, dest: Path) -> Path:
    shutil.copyfile(src, dest)
    return dest
