"""vLLM launch settings: served from the merged Hugging Face directory, never from a GGUF.

vLLM's GGUF support is experimental and single-file only; the merged safetensors directory is
what it serves best, so a vLLM deployment needs no conversion at all (a vLLM-only model builds
no GGUF: tasks/build/registry.py). `--max-model-len` and `--gpu-memory-utilization` come from the
memory planner for the model's hardware profile, so a setting that cannot fit fails the build
instead of vLLM's startup. Arguments are lists; the rendered shell script quotes each one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tasks.core.errors import UserError
from tasks.deploy import planner

LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)  # values vLLM's --max-lora-rank accepts
CONTAINER_PORT = 8000


@dataclass(frozen=True)
class VLLMPlan:
    dtype: str
    gpu_memory_utilization: float
    max_model_len: int
    kv_cache_dtype: str
    profile: str
    explanation: str


def plan(model: str, shape: planner.ModelShape, model_dtype: str | None, vllm: dict[str, Any], profile: Any,
         context: int, extra_bytes: int = 0) -> VLLMPlan:
    """Settings for serving `model` with vLLM on `profile`; UserError with the numbers if it cannot fit."""
    dtype = vllm["dtype"]
    if dtype == "auto" and not profile.bf16 and model_dtype in ("bfloat16", "float32", None):
        dtype = "float16"  # e.g. a T4 has no bfloat16; vLLM would refuse the model's bf16
    if dtype == "bfloat16" and not profile.bf16:
        raise UserError(f"models.{model}.deploy.vllm.dtype: bfloat16 is not supported on hardware '{profile.name}'")
    cache = "fp8" if vllm["kv_cache_dtype"] == "fp8" else "f16"
    label = "16-bit" if dtype == "auto" else dtype
    f = planner.fit(shape, profile, "vllm", label, planner.vllm_weight_bytes(shape), "2 B/param", cache, extra_bytes)
    wanted = vllm["max_model_len"] or min(context, shape.max_context)
    planner.require_fit(f, wanted, profile, f"models.{model}.deploy.vllm")
    length = vllm["max_model_len"] or f.recommended_context()
    return VLLMPlan(dtype, profile.utilization, length, vllm["kv_cache_dtype"], profile.name,
                    planner.explain(f, length, profile))


def server_args(p: VLLMPlan, served_name: str, host: str, port: int) -> list[str]:
    args = ["--served-model-name", served_name, "--host", host, "--port", str(port), "--dtype", p.dtype,
            "--gpu-memory-utilization", f"{p.gpu_memory_utilization:g}", "--max-model-len", str(p.max_model_len)]
    if p.kv_cache_dtype != "auto":
        args += ["--kv-cache-dtype", p.kv_cache_dtype]
    return args


def lora_args(model: str, adapter_path: str, rank: int) -> list[str]:
    """Serve the unmerged adapter on top of the base: requests name `model` get the adapter."""
    fitting = [r for r in LORA_RANKS if r >= rank]
    if not fitting:
        raise UserError(f"models.{model}.adapter: LoRA rank {rank} exceeds vLLM's largest --max-lora-rank (512)")
    return ["--enable-lora", "--lora-modules", f"{model}={adapter_path}", "--max-lora-rank", str(fitting[0])]
