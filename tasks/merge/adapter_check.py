"""The adapter stage: refuse what cannot be merged safely, record what will be merged."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from tasks.core import atomic
from tasks.core.config.schema import Config
from tasks.core.errors import UserError
from tasks.core.stage import Stage
from tasks.formats.safetensors import TensorInfo, read_header
from tasks.merge.lora_adapter import read_lora_config, weights_file

# Float formats by their bit pattern: a value is NaN or Inf exactly when all its exponent bits are set.
_EXPONENT = {"F16": (np.uint16, 0x7C00), "BF16": (np.uint16, 0x7F80), "F32": (np.uint32, 0x7F800000),
             "F64": (np.uint64, 0x7FF0000000000000)}


def non_finite(info: TensorInfo) -> tuple[int, int] | None:
    """(how many NaN/Inf values, index of the first) in one stored tensor, or None when all are finite.
    Read through a memory map, one tensor at a time: bounded memory for any adapter."""
    spec = _EXPONENT.get(info.dtype)
    if spec is None or info.nbytes == 0:
        return None
    kind, mask = spec
    values = np.memmap(info.path, dtype=kind, mode="r", offset=info.offset,
                       shape=(info.nbytes // np.dtype(kind).itemsize,))
    bad = (values & kind(mask)) == kind(mask)
    count = int(np.count_nonzero(bad))
    return (count, int(np.argmax(bad))) if count else None


def check_adapter(adapter_dir: Path, values: bool = True) -> dict[str, Any]:
    """Validate a PEFT LoRA adapter directory; return a summary of it. With `values`, every weight is
    checked to be finite: a NaN would otherwise pass merge and convert, replace merged/ and the F16
    GGUF with NaN weights, and surface only as a failed quantization."""
    if not adapter_dir.is_dir():
        raise UserError(f"{adapter_dir}: adapter directory not found")
    weights = weights_file(adapter_dir)
    cfg = read_lora_config(adapter_dir)
    header = read_header(weights)
    tensors = sorted(header)
    lora = [k for k in tensors if ".lora_A." in k or ".lora_B." in k]
    if not lora and not cfg.get("modules_to_save"):
        raise UserError(f"{weights}: no lora_A/lora_B tensors: this is not a LoRA adapter")
    for name in tensors if values else ():
        found = non_finite(header[name])
        if found:
            raise UserError(f"{weights}: tensor {name}: {found[0]} NaN/Inf value(s) (first at flat index "
                            f"{found[1]}): refused before merging")
    return {
        "peft_type": cfg["peft_type"],
        "r": cfg["r"],
        "lora_alpha": cfg["lora_alpha"],
        "target_modules": sorted(cfg["target_modules"]) if isinstance(cfg.get("target_modules"), list)
        else cfg.get("target_modules"),
        "use_dora": bool(cfg.get("use_dora")),
        "use_rslora": bool(cfg.get("use_rslora")),
        "tensors": len(tensors),
        "lora_tensors": len(lora),
    }


def precheck(stage: Stage, config: Config) -> None:
    """Before the generic "input missing" check: a pickle adapter is named as such, not as missing."""
    check_adapter(stage.inputs["adapter_config"].parent, values=False)


def build(stage: Stage, config: Config) -> None:
    adapter_dir = stage.inputs["adapter_config"].parent
    summary = check_adapter(adapter_dir)
    summary["digests"] = stage.input_digests()
    (out,) = stage.outputs
    atomic.write_text(out, json.dumps(summary, indent=2, sort_keys=True) + "\n")
