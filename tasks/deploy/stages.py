"""The render stage's definition: which deployment files a model gets, from which inputs.

Outputs follow the model's deploy targets (models.toml deploy.targets): ollama -> Modelfile,
lmstudio -> lmstudio.json + lmstudio-model.yaml, vllm -> launch scripts and a compose service;
every model gets deploy.json (what the deploy/serve/health tasks read). A vLLM-only model's
render reads the merged directory and nothing else, so no GGUF is converted for it.
"""

from __future__ import annotations

import os
from pathlib import Path

from tasks.core.config.deploy import deploy_params
from tasks.core.config.schema import Config, ModelSpec
from tasks.core.stage import Stage, StageKind
from tasks.formats.peft_adapter import adapter_files

# 3: derived Ollama TEMPLATEs (tools, thinking, trimming), stops with turn openers
RENDER = StageKind("render", group="render", version=3, builder="tasks.deploy.render:build")


def rendered_files(m: ModelSpec) -> dict[str, str | None]:
    """Output file name -> Jinja template name in templates/ (None: written directly)."""
    targets = m.deploy.targets
    files: dict[str, str | None] = {"deploy.json": None}
    if "ollama" in targets:
        # Adapter/both mode: FROM the base's quant + ADAPTER the LoRA GGUF (FROM the merged quant if the
        # adapter could not be expressed as a GGUF LoRA in both mode).
        files["Modelfile"] = "Modelfile-adapter.j2" if m.builds_lora else "Modelfile.j2"
    if "lmstudio" in targets:
        files["lmstudio.json"] = "lmstudio.json.j2"
        files["lmstudio-model.yaml"] = "lmstudio-model.yaml.j2"
    if "vllm" in targets:
        files["vllm-serve.sh"] = "vllm-serve.sh.j2"
        files["vllm-compose.yaml"] = "vllm-compose.yaml.j2"
        if m.deploy.vllm.lora:
            files["vllm-serve-lora.sh"] = "vllm-serve-lora.sh.j2"
    return files


def render_stage(config: Config, m: ModelSpec) -> list[Stage]:
    layout = config.layout
    files = rendered_files(m)
    inputs: dict[str, Path] = {f"template:{t[:-3]}": config.templates / t for t in files.values() if t}
    # Adapter mode has no merged model: the base holds the same tokenizer, template and shapes.
    inputs["merged"] = layout.merged(m.name) if m.builds_merged else m.base.path
    quant = m.deploy_quant
    if m.builds_gguf:
        inputs["gguf"] = layout.gguf(m.name, quant) if m.builds_merged else layout.base_gguf(m.base_id, quant)
    lora: list[Path] = []
    if m.builds_lora:
        # The lora stage's manifest, not its file: in both mode the file may be `.skipped` (served merged).
        inputs["lora_manifest"] = layout.manifest(m.name, "lora")
        inputs["base_gguf"] = layout.base_gguf(m.base_id, quant)
        lora = [layout.lora_gguf(m.name, m.outtype)]
    if m.deploy.ollama_template is not None and "ollama" in m.deploy.targets:
        inputs["ollama_template"] = m.deploy.ollama_template
    if "vllm" in m.deploy.targets and m.deploy.vllm.lora:
        inputs["adapter_config"] = adapter_files(m.adapter.path)["adapter_config"]
    vllm_profile = m.vllm_profile if "vllm" in m.deploy.targets else None
    profiles = {n: vars(config.hardware[n]) for n in (m.deploy.hardware, m.vllm_profile) if n}
    lmstudio_quants = list(m.deploy.lmstudio.quants or (quant,))
    params = {
        "model": m.name, "quant": quant, "system": m.system, "deploy": deploy_params(m.deploy),
        "hardware": profiles, "vllm_profile": vllm_profile, "lmstudio_quants": lmstudio_quants,
        # Relative, so the key and the rendered scripts do not depend on where the tree lives.
        "base_rel": _rel(m.base.path, layout.model_dir(m.name)),
        "adapter_rel": _rel(m.adapter.path, layout.model_dir(m.name)),
    }
    if m.builds_lora:
        params["lora"] = {"mode": m.deploy.mode, "file": lora[0].name,
                          "base_gguf": os.path.relpath(layout.base_gguf(m.base_id, quant), layout.model_dir(m.name))}
    # lmstudio.json names these GGUFs without reading them: they must exist, but are not part of the key.
    lmstudio = "lmstudio" in m.deploy.targets
    referenced = [layout.gguf(m.name, q) for q in lmstudio_quants if q != quant] if lmstudio else []
    return [Stage(
        task=f"render:{m.name}", kind=RENDER, artifacts=config.artifacts, model=m.name,
        manifest=layout.manifest(m.name, "render"), log=layout.log(m.name, "render"),
        inputs=inputs, outputs=tuple(layout.model_file(m.name, name) for name in files), params=params,
        order_only=(*referenced, *lora), doc=f"render the deployment files of {m.name} ({', '.join(m.deploy.targets)})",
    )]


def _rel(path: Path, root: Path) -> str:
    rel = os.path.relpath(path, root)
    return rel if rel.startswith(".") else "./" + rel  # "./x": a path to compose, not a volume name
