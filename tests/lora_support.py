"""Adapters derived from the demo adapter that change how peft scales them, not what they do.

Each has exactly the demo adapter's effect under peft (so the fine-tune's word-for-word answers),
but spells its scale another way: a converter that ignores the spelling gets the scale wrong.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path


def _config(src: Path) -> dict:
    return json.loads((src / "adapter_config.json").read_text(encoding="utf-8"))


def rslora_variant(src: Path, dest: Path) -> float:
    """use_rslora with lora_alpha chosen so that alpha / sqrt(r) is the demo's alpha / r; returns the
    factor by which a converter that reads alpha / r (ignoring use_rslora) shrinks the adapter's effect."""
    dest.mkdir(parents=True, exist_ok=True)
    cfg = _config(src)
    r, alpha = cfg["r"], cfg["lora_alpha"]
    cfg["use_rslora"] = True
    cfg["lora_alpha"] = alpha / r * math.sqrt(r)
    (dest / "adapter_config.json").write_text(json.dumps(cfg, indent=2), encoding="utf-8")
    shutil.copyfile(src / "adapter_model.safetensors", dest / "adapter_model.safetensors")
    return 1 / math.sqrt(r)


def pattern_variant(src: Path, dest: Path) -> None:
    """rank_pattern {q_proj: 2r} (A and B zero-padded, B doubled: alpha / 2r of it is alpha / r of the demo's)
    and alpha_pattern {v_proj: 2 alpha} (B halved)."""
    import torch
    from safetensors.torch import load_file, save_file

    dest.mkdir(parents=True, exist_ok=True)
    cfg = _config(src)
    r, alpha = cfg["r"], cfg["lora_alpha"]
    cfg["rank_pattern"] = {"q_proj": 2 * r}
    cfg["alpha_pattern"] = {"v_proj": 2 * alpha}
    (dest / "adapter_config.json").write_text(json.dumps(cfg, indent=2), encoding="utf-8")
    out = {}
    for key, t in load_file(str(src / "adapter_model.safetensors")).items():
        if ".q_proj.lora_A." in key:
            t = torch.cat([t, torch.zeros_like(t)], dim=0)
        elif ".q_proj.lora_B." in key:
            t = torch.cat([t * 2, torch.zeros_like(t)], dim=1)
        elif ".v_proj.lora_B." in key:
            t = t * 0.5
        out[key] = t.contiguous()
    save_file(out, str(dest / "adapter_model.safetensors"), metadata={"format": "pt"})


def widened_variant(src: Path, dest: Path) -> None:
    """The demo adapter made for a base twice as wide: every lora_A has twice the input features."""
    import torch
    from safetensors.torch import load_file, save_file

    dest.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src / "adapter_config.json", dest / "adapter_config.json")
    out = {k: (torch.cat([t, t], dim=1) if ".lora_A." in k else t).contiguous()
           for k, t in load_file(str(src / "adapter_model.safetensors")).items()}
    save_file(out, str(dest / "adapter_model.safetensors"), metadata={"format": "pt"})


def dora_variant(src: Path, base: Path, dest: Path) -> None:
    """The demo adapter as DoRA with magnitudes ||W + scale * B A|| per output row: the merged model is the
    plain LoRA merge (DoRA then only rescales each row by 1), but a GGUF LoRA cannot carry magnitudes."""
    from safetensors.torch import load_file, save_file

    dest.mkdir(parents=True, exist_ok=True)
    cfg = _config(src)
    cfg["use_dora"] = True
    scale = cfg["lora_alpha"] / cfg["r"]
    (dest / "adapter_config.json").write_text(json.dumps(cfg, indent=2), encoding="utf-8")
    weights = load_file(str(base / "model.safetensors"))
    tensors = load_file(str(src / "adapter_model.safetensors"))
    out = dict(tensors)
    for key, a in tensors.items():
        if ".lora_A." not in key:
            continue
        module = key.split(".lora_A.")[0]
        b = tensors[key.replace(".lora_A.", ".lora_B.")]
        w = weights[module.removeprefix("base_model.model.") + ".weight"].float()
        out[f"{module}.lora_magnitude_vector"] = (w + scale * (b @ a)).norm(dim=1).contiguous()
    save_file(out, str(dest / "adapter_model.safetensors"), metadata={"format": "pt"})
