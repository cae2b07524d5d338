"""llama.cpp's GGUF importance-matrix file: written by the imatrix stage, read by the quantize stage.

The layout is llama-imatrix's (tools/imatrix/imatrix.cpp, `save_imatrix`), so `llama-quantize --imatrix`
reads our files and we read its: `general.type = "imatrix"`, `imatrix.datasets` (string array),
`imatrix.chunk_count` and `imatrix.chunk_size` (u32), then per weight tensor, in sorted name order,
`<tensor>.in_sum2` (F32, ne = [columns, matrices]: the sum over calibration tokens of each input
column's squared activation) and `<tensor>.counts` (F32, ne = [1, matrices]: how many tokens). The
quantizer wants the mean, in_sum2 / counts, as llama-quantize's loader computes it.
Written here (a few fixed records) rather than by gguf-py so the bytes depend on nothing but the data.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.core.errors import UserError
from tasks.formats import gguf as gguf_format

ALIGNMENT = 32
F32 = 0
SUM2, COUNTS = ".in_sum2", ".counts"


@dataclass
class Imatrix:
    sums: dict[str, Any]  # tensor name -> float64/float32 array (matrices, columns)
    counts: dict[str, Any]  # tensor name -> array (matrices,)
    datasets: list[str]
    chunk_count: int
    chunk_size: int

    def means(self) -> dict[str, Any]:
        """name -> float32 vector of mean squared activations (a matrix with no tokens gets 1s, as llama.cpp)."""
        import numpy as np

        out = {}
        for name in sorted(self.sums):
            s = np.asarray(self.sums[name], dtype=np.float32)
            c = np.asarray(self.counts[name], dtype=np.float32).reshape(-1, 1)
            mean = np.where(c > 0, s / np.where(c > 0, c, 1), np.float32(1)).astype(np.float32)
            out[name] = np.ascontiguousarray(mean.reshape(-1))
        return out


def _string(s: str) -> bytes:
    b = s.encode("utf-8")
    return struct.pack("<Q", len(b)) + b


def write(path: Path, m: Imatrix) -> None:
    """The matrix as llama-imatrix writes it (GGUF v3), to `path` (the caller makes it atomic)."""
    import numpy as np

    tensors: list[tuple[str, Any]] = []
    for name in sorted(m.sums):
        sums = np.asarray(m.sums[name], dtype=np.float32)
        tensors.append((name + SUM2, sums))
        tensors.append((name + COUNTS, np.asarray(m.counts[name], dtype=np.float32).reshape(-1, 1)))
    kv = [_string("general.type") + struct.pack("<I", 8) + _string("imatrix"),
          _string("imatrix.datasets") + struct.pack("<IIQ", 9, 8, len(m.datasets))
          + b"".join(_string(d) for d in m.datasets),
          _string("imatrix.chunk_count") + struct.pack("<II", 4, m.chunk_count),
          _string("imatrix.chunk_size") + struct.pack("<II", 4, m.chunk_size)]
    infos, offset = [], 0
    for name, arr in tensors:
        rows, cols = arr.shape
        infos.append(_string(name) + struct.pack("<IQQIQ", 2, cols, rows, F32, offset))
        offset += -(-arr.nbytes // ALIGNMENT) * ALIGNMENT
    header = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kv)) + b"".join(kv) + b"".join(infos)
    with open(path, "wb") as fh:
        fh.write(header + b"\0" * (-len(header) % ALIGNMENT))
        for _, arr in tensors:
            data = arr.astype("<f4").tobytes()
            fh.write(data + b"\0" * (-len(data) % ALIGNMENT))


def read(path: Path) -> Imatrix:
    """A GGUF imatrix file (ours or llama-imatrix's); UserError naming the file when it is not one."""
    import numpy as np

    try:
        scan = gguf_format.scan(path)
    except (gguf_format.ScanError, OSError) as exc:
        raise UserError(f"{path}: not an importance matrix: {exc}") from None
    if scan.get("general.type") != "imatrix":
        raise UserError(f"{path}: not an importance matrix (general.type is {scan.get('general.type')!r}, "
                        "expected 'imatrix')")
    by_name = {t.name: t for t in scan.tensors}
    sums, counts = {}, {}
    with open(path, "rb") as fh:
        def load(info: gguf_format.TensorInfo) -> Any:
            if info.ggml_type != F32:
                raise UserError(f"{path}: tensor {info.name} is not F32")
            fh.seek(scan.data_start + info.offset)
            shape = tuple(reversed(info.shape)) if len(info.shape) > 1 else info.shape
            return np.frombuffer(fh.read(info.n_bytes), dtype="<f4").reshape(shape)

        for name, info in by_name.items():
            if not name.endswith(SUM2):
                continue
            base = name[:-len(SUM2)]
            if base + COUNTS not in by_name:
                raise UserError(f"{path}: {name} has no {base}{COUNTS} beside it")
            s = load(info)
            sums[base] = s.reshape(-1, s.shape[-1])
            counts[base] = load(by_name[base + COUNTS]).reshape(-1)
            if counts[base].shape[0] != sums[base].shape[0]:
                raise UserError(f"{path}: {base}: {sums[base].shape[0]} matrices but {counts[base].shape[0]} counts")
    if not sums:
        raise UserError(f"{path}: importance matrix has no entries")
    datasets = scan.get("imatrix.datasets")
    return Imatrix(sums, counts, list(datasets) if isinstance(datasets, list) else [],
                   int(scan.get("imatrix.chunk_count") or 0), int(scan.get("imatrix.chunk_size") or 0))


def check_fits(m: Imatrix, matrix: Path, model: Path) -> None:
    """UserError unless the matrix was made for this model: every entry a tensor of it with as many
    input columns, and every block weight matrix of the model covered (a matrix for another model,
    or a model with more layers, would quantize part of it blind)."""
    try:
        tensors = {t.name: t.shape for t in gguf_format.scan(model).tensors}
    except gguf_format.ScanError as exc:
        raise UserError(f"{model}: {exc}") from None
    for name in sorted(m.sums):
        shape = tensors.get(name)
        if shape is None:
            raise UserError(f"{matrix}: entry {name} is not a tensor of {model.name} "
                            "(the matrix was made for another model)")
        size = m.sums[name].size
        want = shape[0] * (shape[2] if len(shape) > 2 else 1)
        if size != want:
            raise UserError(f"{matrix}: entry {name} has {size} values but {model.name}'s tensor has {want} "
                            "input columns (the matrix was made for another model)")
    for name, shape in sorted(tensors.items()):
        if name.startswith("blk.") and name.endswith(".weight") and len(shape) >= 2 and name not in m.sums:
            raise UserError(f"{matrix}: no entry for {model.name}'s tensor {name} "
                            "(the matrix was made for another model)")
