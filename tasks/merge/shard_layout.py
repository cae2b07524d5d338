"""The layout of the merged model's safetensors shards, decided before any byte is written.

Shapes and dtypes are known up front (tasks.merge.plan), so headers are computed first and
tasks.merge.shard_writer streams the data after them. Deterministic: sorted header keys, fixed
metadata, data ordered by (alignment, caller order), fixed shard names.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass

from tasks.formats.safetensors import DTYPE_SIZES, SINGLE_NAME

METADATA = {"format": "pt"}


@dataclass(frozen=True)
class OutTensor:
    """One tensor of an output shard, declared before any byte is written."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * DTYPE_SIZES[self.dtype]


def plan_shards(tensors: Iterable[OutTensor], max_shard_bytes: int) -> list[list[OutTensor]]:
    """Greedy packing in the given order, like transformers: a tensor above the limit gets its own shard."""
    shards: list[list[OutTensor]] = []
    size = 0
    for t in tensors:
        if not shards or (size + t.nbytes > max_shard_bytes and shards[-1]):
            shards.append([])
            size = 0
        shards[-1].append(t)
        size += t.nbytes
    return shards or [[]]


def shard_names(count: int) -> list[str]:
    """Fixed naming: `model.safetensors` alone, else `model-00001-of-00003.safetensors`..."""
    if count == 1:
        return [SINGLE_NAME]
    return [f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]


def index_json(shards: list[list[OutTensor]], names: list[str]) -> bytes:
    """The `model.safetensors.index.json` transformers reads: total byte size and tensor -> shard map."""
    weight_map = {t.name: name for shard, name in zip(shards, names, strict=True) for t in shard}
    total = sum(t.nbytes for shard in shards for t in shard)
    body = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    return (json.dumps(body, indent=2, sort_keys=True) + "\n").encode()


def layout_shard(tensors: list[OutTensor]) -> tuple[bytes, list[OutTensor]]:
    """Header bytes and the order the data must follow.

    Wider dtypes go first (stable within a width) so every tensor starts at a multiple of its item size,
    as the reference writer guarantees; the header is space-padded to 8 bytes for the same reason.
    """
    order = sorted(tensors, key=lambda t: -DTYPE_SIZES[t.dtype])  # stable: keeps the caller's order
    header: dict[str, object] = {"__metadata__": METADATA}
    pos = 0
    for t in order:
        header[t.name] = {"dtype": t.dtype, "shape": list(t.shape), "data_offsets": [pos, pos + t.nbytes]}
        pos += t.nbytes
    raw = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw, order
