"""The adapter and merge stages of a model: what they read and write (light: no torch here)."""

from __future__ import annotations

from tasks.core import toolchain
from tasks.core.config.schema import Config, ModelSpec
from tasks.core.stage import Stage, StageKind, lib_versions
from tasks.formats.peft_adapter import adapter_files

ADAPTER = StageKind("adapter", group="adapter", version=1, builder="tasks.merge.adapter_check:build",
                    precheck="tasks.merge.adapter_check:precheck")
MERGE = StageKind("merge", group="merge", version=1, builder="tasks.merge.engines:build",
                  precheck="tasks.merge.supported:precheck")
# The adapter as a GGUF LoRA (adapter/both mode), by llama.cpp's convert_lora_to_gguf.py with peft's scales
# folded into B (tasks/merge/lora_gguf.py). Needs the toolchain, so it is part of the GGUF kinds.
LORA = StageKind("lora", group="lora", version=1, builder="tasks.merge.lora_gguf:build",
                 precheck="tasks.merge.lora_gguf:precheck", needs_gguf=True)


def adapter_stage(config: Config, m: ModelSpec) -> list[Stage]:
    layout = config.layout
    return [Stage(
        task=f"adapter:{m.name}", kind=ADAPTER, artifacts=config.artifacts, model=m.name,
        manifest=layout.manifest(m.name, "adapter"), log=layout.log(m.name, "adapter"),
        inputs=adapter_files(m.adapter.path), outputs=(layout.model_file(m.name, "adapter.json"),),
        params={"source": m.adapter.spec}, doc=f"check the LoRA adapter of {m.name} and record its hashes",
    )]


def lora_stage(config: Config, m: ModelSpec) -> list[Stage]:
    """`<m>-lora-<outtype>.gguf`; reads the base (its config and shapes) and the adapter, nothing merged."""
    if not m.builds_lora:
        return []
    layout = config.layout
    return [Stage(
        task=f"lora:{m.name}", kind=LORA, artifacts=config.artifacts, model=m.name,
        manifest=layout.manifest(m.name, "lora"), log=layout.log(m.name, "lora"),
        inputs={"base": m.base.path, **adapter_files(m.adapter.path)}, outputs=(layout.lora_gguf(m.name, m.outtype),),
        order_only=(layout.model_file(m.name, "adapter.json"),), toolchain=toolchain.identity(),
        params={"model": m.name, "outtype": m.outtype, "mode": m.deploy.mode,
                "libs": lib_versions("torch", "safetensors")},
        doc=f"convert the adapter of {m.name} to a GGUF LoRA ({m.outtype.upper()}) with llama.cpp's converter",
    )]


def merge_stage(config: Config, m: ModelSpec) -> list[Stage]:
    if not m.builds_merged:
        return []
    layout = config.layout
    return [Stage(
        task=f"merge:{m.name}", kind=MERGE, artifacts=config.artifacts, model=m.name,
        manifest=layout.manifest(m.name, "merge"), log=layout.log(m.name, "merge"),
        inputs={"base": m.base.path, **adapter_files(m.adapter.path)}, outputs=(layout.merged(m.name),),
        order_only=(layout.model_file(m.name, "adapter.json"),),  # merge only an adapter that passed its check
        params={"engine": m.merge, "libs": lib_versions("torch", "transformers", "peft", "safetensors")},
        doc=f"merge the adapter of {m.name} into its base (engine: {m.merge})",
    )]
