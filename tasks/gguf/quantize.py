"""The quantize stage: F16/BF16 GGUF -> one llama.cpp quantization, through llama.cpp's C API.

The C call runs in a child process: a signal that arrives while llama.cpp holds the thread is
otherwise lost (measured: Ctrl-C during llama_model_quantize did nothing), and the stage must
stop on Ctrl-C and remove its temporary output. The child also sends llama.cpp's per-tensor
log lines (written from C to fd 2) to the stage log.

The thread count is a build setting, not part of the key: llama.cpp's quantization is
deterministic across thread counts (tested), so it only changes how fast the same bytes appear.
"""

from __future__ import annotations

import ctypes
import subprocess
import sys
from pathlib import Path

from tasks.core import atomic, diskspace, procs, toolchain
from tasks.core.config.schema import Config
from tasks.core.errors import UserError
from tasks.core.layout import REPO
from tasks.core.quant_types import QUANT_FTYPES
from tasks.core.stage import Stage


def quantize_in_process(src: Path, dst: Path, qtype: str, threads: int) -> int:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = QUANT_FTYPES[qtype]
    params.nthread = threads
    return llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))


def quantize(src: Path, dst: Path, qtype: str, threads: int, log: Path) -> None:
    toolchain.check_runtime()
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "tasks.gguf.quantize", str(src), str(dst), qtype, str(threads)]
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
    with atomic.atomic_file(final) as tmp:
        quantize(stage.inputs["gguf"], tmp, stage.params["type"], config.threads, stage.log)


if __name__ == "__main__":
    src, dst, qtype, nthreads = sys.argv[1:5]
    sys.exit(quantize_in_process(Path(src), Path(dst), qtype, int(nthreads)))
