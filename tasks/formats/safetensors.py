"""The safetensors format without loading a model: validated headers and per-tensor reads.

The one safetensors reader of this project (the adapter check, the merge, GGUF validity and the memory
planner all read headers through it), so a truncated or corrupt file fails the same way everywhere:
one line naming the file and what is wrong.

Why not ``safetensors.safe_open``: its memory map keeps every touched page of a shard resident (and counted
in RSS) for as long as the file is open.  Reading exactly one tensor with ``os.preadv`` into a buffer the
caller reuses bounds memory by the largest tensor we actually decode.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

from tasks.core.errors import UserError

# Bytes per element for the dtypes we can stream.  Sub-byte types (F4, F6) are absent on purpose: their byte
# size is not shape * itemsize, so copying them would need rules we cannot check here.
DTYPE_SIZES: dict[str, int] = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2,
    "I64": 8, "I32": 4, "I16": 2, "I8": 1,
    "U64": 8, "U32": 4, "U16": 2, "U8": 1,
    "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1, "C64": 8,
}
HEADER_LIMIT = 100 * 1024**2  # the reference implementation refuses headers above 100 MB as well
INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"


@dataclass(frozen=True)
class TensorInfo:
    """Where one stored tensor lives: enough to read or copy its bytes without touching anything else."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    path: Path
    offset: int  # absolute byte offset of the data in `path`
    nbytes: int


def read_header(path: Path) -> dict[str, TensorInfo]:
    """Parse and validate one .safetensors header; tensors are returned in on-disk data order.

    Validates everything a later read relies on (sizes, bounds, overlaps), so a truncated or corrupt file is
    reported here, naming the file, before anything is written.
    """
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise UserError(f"{path}: not a safetensors file (only {size} bytes)")
            hlen = int.from_bytes(prefix, "little")
            if hlen > HEADER_LIMIT:
                raise UserError(f"{path}: not a safetensors file (header length {hlen} is implausible)")
            if 8 + hlen > size:
                raise UserError(f"{path}: corrupt or truncated safetensors file (header of {hlen} bytes, file {size})")
            raw = f.read(hlen)
    except OSError as e:
        raise UserError(f"{path}: cannot read: {e.strerror or e}") from e
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: corrupt safetensors header ({e})") from e
    if not isinstance(header, dict):
        raise UserError(f"{path}: corrupt safetensors header (not a JSON object)")
    header.pop("__metadata__", None)
    data_start = 8 + hlen
    tensors = [_tensor_info(path, name, entry, data_start) for name, entry in header.items()]
    tensors.sort(key=lambda t: t.offset)
    end = data_start
    for t in tensors:
        if t.offset < end:
            raise UserError(f"{path}: corrupt safetensors header (tensor {t.name} overlaps the previous one)")
        end = t.offset + t.nbytes
        if end > size:
            raise UserError(f"{path}: truncated: tensor {t.name} ends at byte {end} but the file has {size}")
    return {t.name: t for t in tensors}


def _tensor_info(path: Path, name: str, entry: object, data_start: int) -> TensorInfo:
    bad = f"{path}: corrupt safetensors header (entry {name!r}"
    if not isinstance(entry, dict):
        raise UserError(f"{bad} is not an object)")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in DTYPE_SIZES:
        raise UserError(f"{bad} has unsupported dtype {dtype!r})")
    if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
        raise UserError(f"{bad} has invalid shape {shape!r})")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
        raise UserError(f"{bad} has invalid data_offsets {offsets!r})")
    begin, stop = offsets
    nbytes = math.prod(shape) * DTYPE_SIZES[dtype]
    if begin < 0 or stop - begin != nbytes:
        raise UserError(f"{bad}: data_offsets {offsets} do not hold {dtype}{shape})")
    return TensorInfo(name, dtype, tuple(shape), path, data_start + begin, nbytes)


def read_checkpoint(model_dir: Path) -> dict[str, TensorInfo]:
    """All tensors of a single-file or sharded safetensors model, in shard order then data order."""
    index_path = model_dir / INDEX_NAME
    if index_path.exists():
        try:
            weight_map = json.loads(index_path.read_text())["weight_map"]
            files = list(dict.fromkeys(weight_map.values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise UserError(f"{index_path}: unreadable index ({e})") from e
    elif (model_dir / SINGLE_NAME).exists():
        weight_map, files = None, [SINGLE_NAME]
    else:
        raise UserError(f"{model_dir}: no {SINGLE_NAME} or {INDEX_NAME} (only safetensors bases can be streamed)")
    tensors: dict[str, TensorInfo] = {}
    for file in files:
        path = model_dir / file
        if not path.is_file():
            raise UserError(f"{index_path}: lists shard {file}, which does not exist")
        for name, info in read_header(path).items():
            if name in tensors:
                raise UserError(f"{path}: tensor {name} is also stored in {tensors[name].path.name}")
            tensors[name] = info
    if weight_map is not None:
        for name, file in weight_map.items():
            if name not in tensors or tensors[name].path.name != file:
                raise UserError(f"{index_path}: maps {name} to {file}, but that shard does not hold it")
    return tensors


def read_into(info: TensorInfo, buf: memoryview) -> memoryview:
    """Read a tensor's bytes into the front of `buf` (reused by the caller) and return that slice."""
    view = buf[: info.nbytes]
    try:
        fd = os.open(info.path, os.O_RDONLY)
        try:
            done = 0
            while done < info.nbytes:
                n = os.preadv(fd, [view[done:]], info.offset + done)
                if n == 0:
                    raise UserError(f"{info.path}: truncated while reading tensor {info.name}")
                done += n
        finally:
            os.close(fd)
    except OSError as e:
        raise UserError(f"{info.path}: cannot read tensor {info.name}: {e.strerror or e}") from e
    return view


def parameter_count(model_dir: Path) -> int | None:
    """Elements of every tensor in a directory's safetensors files (None when it has none); headers only."""
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        return None
    return sum(math.prod(t.shape) for f in files for t in read_header(f).values())
