"""The quantize stage: F16/BF16 GGUF -> one llama.cpp quantization, through llama.cpp's C API.

The C call runs in a child process: a signal that arrives while llama.cpp holds the thread is
otherwise lost (measured: Ctrl-C during llama_model_quantize did nothing), and the stage must
stop on Ctrl-C and remove its temporary output. The child also sends llama.cpp's per-tensor
log lines (written from C to fd 2) to the stage log.

With an importance matrix (`imatrix` input), the matrix is checked against the model first (a
matrix made for another model is a one-line error, nothing written), then handed to
`llama_model_quantize_params.imatrix` as the mean squared activations llama-quantize's loader
computes (in_sum2 / counts), and recorded in the GGUF as llama-quantize records it
(quantize.imatrix.file / dataset / entries_count / chunks_count; the file by name, never by path).

The thread count is a build setting, not part of the key: llama.cpp's quantization is
deterministic across thread counts (tested), so it only changes how fast the same bytes appear.
"""

from __future__ import annotations

import ctypes
import subprocess
import sys
from pathlib import Path
from typing import Any

from tasks.core import atomic, diskspace, procs, toolchain
from tasks.core.config.schema import Config
from tasks.core.errors import UserError
from tasks.core.layout import REPO
from tasks.core.quant_types import QUANT_FTYPES
from tasks.core.stage import Stage
from tasks.gguf import imatrix_file


def _imatrix_params(llama_cpp: Any, path: Path, keep: list[Any]) -> tuple[Any, Any]:
    """(imatrix array, kv override array) for llama_model_quantize_params; `keep` holds the buffers alive."""
    import numpy as np

    m = imatrix_file.read(path)
    means = m.means()
    entries = (llama_cpp.llama_model_imatrix_data * (len(means) + 1))()
    for i, (name, vec) in enumerate(sorted(means.items())):
        keep.append(vec)
        entries[i].name = name.encode()
        entries[i].data = vec.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        entries[i].size = vec.size
    kvs: list[tuple[str, str | int]] = [("quantize.imatrix.file", path.name)]
    if m.datasets:
        kvs.append(("quantize.imatrix.dataset", m.datasets[0]))
    kvs.append(("quantize.imatrix.entries_count", len(means)))
    if m.chunk_count > 0:
        kvs.append(("quantize.imatrix.chunks_count", m.chunk_count))
    overrides = (llama_cpp.llama_model_kv_override * (len(kvs) + 1))()
    for i, (key, value) in enumerate(kvs):
        overrides[i].key = key.encode()
        if isinstance(value, str):
            overrides[i].tag = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_STR
            overrides[i].value.val_str = value.encode()[:127]
        else:
            overrides[i].tag = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_INT
            overrides[i].value.val_i64 = value
    keep.extend([entries, overrides, np])
    return entries, overrides


def quantize_in_process(src: Path, dst: Path, qtype: str, threads: int, imatrix: Path | None = None) -> int:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = QUANT_FTYPES[qtype]
    params.nthread = threads
    keep: list[Any] = []
    if imatrix is not None:
        entries, overrides = _imatrix_params(llama_cpp, imatrix, keep)
        params.imatrix = ctypes.cast(entries, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))
        params.kv_overrides = ctypes.cast(overrides, ctypes.POINTER(llama_cpp.llama_model_kv_override))
    return llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))


def quantize(src: Path, dst: Path, qtype: str, threads: int, log: Path, imatrix: Path | None = None) -> None:
    toolchain.check_runtime()
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "tasks.gguf.quantize", str(src), str(dst), qtype, str(threads)]
    if imatrix is not None:
        cmd.append(str(imatrix))
    with open(log, "ab") as log_fh:
        rc = procs.run(cmd, stdout=log_fh, stderr=subprocess.STDOUT, cwd=REPO).returncode
    if rc != 0:
        sig = procs.signal_name(rc) if rc < 0 else None
        if sig:
            raise UserError(f"{src}: llama.cpp's quantization to {qtype} killed by {sig} (log: {log})")
        written = dst.stat().st_size if dst.exists() else 0
        with open(log, "rb") as f:
            f.seek(max(0, log.stat().st_size - (1 << 16)))
            tail = f.read().decode("utf-8", errors="replace")
        diskspace.check_after_failure(dst.parent, tail, None,
                                      f"llama.cpp stopped after writing {diskspace.human(written)} (log: {log})")
        raise UserError(f"{src}: llama.cpp failed to quantize to {qtype} (exit {rc}; log: {log})")


def build(stage: Stage, config: Config) -> None:
    (final,) = stage.outputs
    matrix = stage.inputs.get("imatrix")
    if matrix is not None:  # before anything is written: a matrix for another model stops here
        imatrix_file.check_fits(imatrix_file.read(matrix), matrix, stage.inputs["gguf"])
    with atomic.atomic_file(final) as tmp:
        quantize(stage.inputs["gguf"], tmp, stage.params["type"], config.threads, stage.log, matrix)


if __name__ == "__main__":
    src, dst, qtype, nthreads = sys.argv[1:5]
    sys.exit(quantize_in_process(Path(src), Path(dst), qtype, int(nthreads),
                                 Path(sys.argv[5]) if len(sys.argv) > 5 else None))
