"""The adapter stage: refuse what cannot be merged safely, record what will be merged."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tasks.core import atomic
from tasks.core.config.schema import Config
from tasks.core.errors import UserError
from tasks.core.stage import Stage
from tasks.formats.safetensors import read_header
from tasks.merge.lora_adapter import read_lora_config, weights_file


def check_adapter(adapter_dir: Path) -> dict[str, Any]:
    """Validate a PEFT LoRA adapter directory; return a summary of it."""
    if not adapter_dir.is_dir():
        raise UserError(f"{adapter_dir}: adapter directory not found")
    weights = weights_file(adapter_dir)
    cfg = read_lora_config(adapter_dir)
    tensors = sorted(read_header(weights))
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


def precheck(stage: Stage) -> None:
    """Before the generic "input missing" check: a pickle adapter is named as such, not as missing."""
    check_adapter(stage.inputs["adapter_config"].parent)


def build(stage: Stage, config: Config) -> None:
    adapter_dir = stage.inputs["adapter_config"].parent
    summary = check_adapter(adapter_dir)
    summary["digests"] = stage.input_digests()
    (out,) = stage.outputs
    atomic.write_text(out, json.dumps(summary, indent=2, sort_keys=True) + "\n")
