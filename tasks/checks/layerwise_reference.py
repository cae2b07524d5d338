"""The check's float32 reference logits, every probe at once, one sweep over each model's weights.

Base and base+adapter share the base weights: with peft's adapter layers switched off a LoRA
layer is its base layer, so both run in one sweep (tasks.lockstep), the adapter's delta applied
beside the base layer. The merged model is a second sweep over its own files. Weights stay
memory-mapped in the checkpoint's dtype and each block is widened to float32 once for all
probes, so the numbers are a float32 load's (tests/test_layerwise_reference.py) and each
safetensors file is read about once, whatever the number of probes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tasks.checks.eval_set import Probe
from tasks.checks.lockstep import BLOCK_LIMIT, Job, Lockstep
from tasks.checks.parity import THREADS


def _load(model_dir: Path) -> Any:
    import torch
    import transformers

    torch.set_num_threads(THREADS)
    model = transformers.AutoModelForCausalLM.from_pretrained(str(model_dir), dtype="auto")
    model.eval()
    return model


def _logits_job(model: Any, probe: Probe, mode: str | None = None) -> Job:
    import torch

    def run() -> Any:
        return model(input_ids=torch.tensor([probe.ids])).logits[0].float().numpy()
    return Job(run, mode)


def model_logits(model_dir: Path, probes: list[Probe], limit: int = BLOCK_LIMIT) -> list[Any]:
    """Float32 logits (positions x vocabulary) of every probe."""
    model = _load(model_dir)
    return Lockstep(model, limit).run([_logits_job(model, p) for p in probes])


def base_and_adapted_logits(base_dir: Path, adapter_dir: Path, probes: list[Probe],
                            limit: int = BLOCK_LIMIT) -> tuple[list[Any], list[Any]]:
    """Logits of the base model and of base + adapter applied by peft (unmerged): the adapter's intended effect."""
    import peft

    model = _load(base_dir)
    shared = _adapter_biases_off(adapter_dir)
    base = None if shared else Lockstep(model, limit).run([_logits_job(model, p) for p in probes])
    wrapped = peft.PeftModel.from_pretrained(model, str(adapter_dir))
    wrapped.eval()
    if base is not None:
        return base, Lockstep(wrapped, limit).run([_logits_job(wrapped, p) for p in probes])

    def switch(mode: Any) -> None:
        if mode == "base":
            wrapped.base_model.disable_adapter_layers()
        else:
            wrapped.base_model.enable_adapter_layers()

    jobs = [_logits_job(wrapped, p, "base") for p in probes] + [_logits_job(wrapped, p, "adapted") for p in probes]
    try:
        out = Lockstep(wrapped, limit, switch).run(jobs)
    finally:
        wrapped.base_model.enable_adapter_layers()
    return out[:len(probes)], out[len(probes):]


def _adapter_biases_off(adapter_dir: Path) -> bool:
    """True when switching peft's adapter layers off gives the base model exactly. Not so when the
    adapter trained the base layers' biases (bias "all" / "lora_only"): peft loads those in place,
    so the base is then swept on its own before peft touches it."""
    from tasks.formats.json_object import read_json_object

    cfg = read_json_object(adapter_dir / "adapter_config.json", "the check reads the adapter's config")
    return cfg.get("bias", "none") == "none"
