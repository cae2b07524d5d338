"""The adapter stage: refuse what cannot be merged safely, record what will be merged."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from tasks import atomic
from tasks.errors import UserError, read_json_object
from tasks.manifest import Stage

MAX_HEADER = 100 << 20  # a safetensors header larger than this is corrupt, not big


def read_safetensors_header(path: Path) -> dict[str, Any]:
    """Parse and sanity-check a safetensors header without loading any tensor."""
    try:
        with open(path, "rb") as f:
            raw_len = f.read(8)
            if len(raw_len) != 8:
                raise UserError(f"{path}: not a safetensors file (shorter than 8 bytes)")
            (n,) = struct.unpack("<Q", raw_len)
            if n > MAX_HEADER:
                raise UserError(f"{path}: not a safetensors file (header length {n} is implausible)")
            header = json.loads(f.read(n))
    except (ValueError, UnicodeDecodeError):
        raise UserError(f"{path}: corrupt safetensors header (not JSON)") from None
    size = path.stat().st_size
    end = 8 + n
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, stop = info["data_offsets"]
        if end + stop > size:
            raise UserError(f"{path}: truncated: tensor {name} ends at byte {end + stop} but the file has {size}")
    return header


def check_adapter(adapter_dir: Path) -> dict[str, Any]:
    """Validate a PEFT LoRA adapter directory; return a summary of it."""
    if not adapter_dir.is_dir():
        raise UserError(f"{adapter_dir}: adapter directory not found")
    weights = adapter_dir / "adapter_model.safetensors"
    if not weights.is_file():
        if (adapter_dir / "adapter_model.bin").is_file():
            raise UserError(
                f"{adapter_dir / 'adapter_model.bin'}: pickle adapters are refused (loading one can run code); "
                "re-save it as adapter_model.safetensors (peft: save_pretrained(..., safe_serialization=True))"
            )
        raise UserError(f"{weights}: missing (a PEFT adapter needs adapter_model.safetensors)")
    cfg_path = adapter_dir / "adapter_config.json"
    cfg = read_json_object(cfg_path, "a PEFT adapter needs adapter_config.json")
    if cfg.get("peft_type") != "LORA":
        raise UserError(f"{cfg_path}: peft_type: {cfg.get('peft_type')!r} is not supported (only LORA)")
    for key in ("r", "lora_alpha"):
        if not isinstance(cfg.get(key), (int, float)) or isinstance(cfg.get(key), bool) or cfg[key] <= 0:
            raise UserError(f"{cfg_path}: {key}: expected a positive number, got {cfg.get(key)!r}")
    header = read_safetensors_header(weights)
    tensors = sorted(k for k in header if k != "__metadata__")
    lora = [k for k in tensors if ".lora_A." in k or ".lora_B." in k]
    if not lora and not cfg.get("modules_to_save"):
        raise UserError(f"{weights}: no lora_A/lora_B tensors: this is not a LoRA adapter")
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


def build(stage: Stage) -> None:
    adapter_dir = stage.inputs["adapter_config"].parent
    summary = check_adapter(adapter_dir)
    summary["digests"] = stage.input_digests()
    (out,) = stage.outputs
    atomic.write_text(out, json.dumps(summary, indent=2, sort_keys=True) + "\n")
