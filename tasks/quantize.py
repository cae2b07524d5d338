"""The quantize stage: F16/BF16 GGUF -> one llama.cpp quantization, through llama.cpp's C API.

The thread count is a build setting, not part of the key: llama.cpp's quantization is
deterministic across thread counts (tested), so it only changes how fast the same bytes appear.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import Iterator
from pathlib import Path

from tasks import atomic, toolchain
from tasks.errors import UserError
from tasks.manifest import Stage
from tasks.quant_types import QUANT_FTYPES


@contextlib.contextmanager
def native_stderr_to(log: Path) -> Iterator[None]:
    """llama.cpp logs per-tensor lines on fd 2 from C: send them to the stage log."""
    log.parent.mkdir(parents=True, exist_ok=True)
    saved = os.dup(2)
    with open(log, "ab") as fh:
        os.dup2(fh.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def quantize(src: Path, dst: Path, qtype: str, threads: int, log: Path) -> None:
    toolchain.check_runtime()
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = QUANT_FTYPES[qtype]
    params.nthread = threads
    with native_stderr_to(log):
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        raise UserError(f"{src}: llama.cpp failed to quantize to {qtype} (code {rc}; log: {log})")


def build(stage: Stage, threads: int) -> None:
    (final,) = stage.outputs
    with atomic.atomic_file(final) as tmp:
        quantize(stage.inputs["gguf"], tmp, stage.params["type"], threads, stage.log)
