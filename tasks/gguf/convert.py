"""The convert stage: merged HF directory -> F16/BF16 GGUF, by llama.cpp's own converter.

The converter is run from the pinned toolchain with the gguf-py shipped beside it. Its default
model name comes from the directory name (and so from where the build runs); we pin it to the
base model's name (tasks/gguf/stages.py base_name says why not the user's model name), so the GGUF
is byte-identical wherever it is built.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tasks.core import atomic, diskspace, procs, toolchain
from tasks.core.config.schema import Config
from tasks.core.errors import UserError
from tasks.core.stage import Stage


def convert(merged: Path, out: Path, outtype: str, general_name: str, log: Path) -> None:
    cmd = [
        sys.executable, str(toolchain.converter()), str(merged),
        "--outfile", str(out), "--outtype", outtype, "--model-name", general_name,
    ]
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as log_fh:
        proc = procs.run(cmd, env=toolchain.converter_env(), stdout=log_fh, stderr=subprocess.STDOUT,
                         cwd=out.parent)
    if proc.returncode != 0:
        sig = procs.signal_name(proc.returncode) if proc.returncode < 0 else None
        if sig:
            raise UserError(f"{merged}: llama.cpp converter killed by {sig} (log: {log})")
        diskspace.check_after_failure(out.parent, _log_tail(log), _expected_size(merged), f"log: {log}")
        tail = _last_error_line(log)
        raise UserError(f"{merged}: llama.cpp converter failed (exit {proc.returncode}): {tail} (log: {log})")


def _log_tail(log: Path, size: int = 1 << 16) -> str:
    with open(log, "rb") as f:
        f.seek(max(0, log.stat().st_size - size))
        return f.read().decode("utf-8", errors="replace")


def _expected_size(merged: Path) -> int:
    """About what the F16/BF16 GGUF takes: the merged weights at 2 bytes per value."""
    weights = sum(p.stat().st_size for p in merged.glob("*.safetensors"))
    try:
        dtype = json.loads((merged / "config.json").read_text(encoding="utf-8")).get("torch_dtype")
    except (OSError, ValueError):
        dtype = None
    return weights // 2 if dtype == "float32" else weights


def _last_error_line(log: Path) -> str:
    lines = [ln for ln in log.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
    for ln in reversed(lines):
        if "Error" in ln or "error" in ln:
            return ln.strip()
    return lines[-1].strip() if lines else "no output"


def build(stage: Stage, config: Config) -> None:
    (final,) = stage.outputs
    with atomic.atomic_file(final) as tmp:
        convert(stage.inputs["merged"], tmp, stage.params["outtype"], stage.params["base_name"], stage.log)
