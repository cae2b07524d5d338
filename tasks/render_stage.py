"""The render stage's definition: which deployment files a model gets, from which inputs.

Outputs follow the model's deploy targets (models.toml deploy.targets): ollama -> Modelfile,
lmstudio -> lmstudio.json + lmstudio-model.yaml, vllm -> launch scripts and a compose service;
every model gets deploy.json (what the deploy/serve/health tasks read). A vLLM-only model's
render reads the merged directory and nothing else, so no GGUF is converted for it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tasks.config import Config, ModelSpec
from tasks.deploy_config import deploy_params, needs_gguf

RENDER_VERSION = 3  # 3: derived Ollama TEMPLATEs (tools, thinking, trimming), stops with turn openers


def deploy_quant(m: ModelSpec) -> str:
    return m.deploy.quant or (m.quants[-1] if m.quants else m.outtype)


def vllm_profile(config: Config, m: ModelSpec) -> str | None:
    return m.deploy.vllm.hardware or m.deploy.hardware


def rendered_files(m: ModelSpec) -> dict[str, str | None]:
    """Output file name -> Jinja template name in templates/ (None: written directly)."""
    targets = m.deploy.targets
    files: dict[str, str | None] = {"deploy.json": None}
    if "ollama" in targets:
        files["Modelfile"] = "Modelfile.j2"
    if "lmstudio" in targets:
        files["lmstudio.json"] = "lmstudio.json.j2"
        files["lmstudio-model.yaml"] = "lmstudio-model.yaml.j2"
    if "vllm" in targets:
        files["vllm-serve.sh"] = "vllm-serve.sh.j2"
        files["vllm-compose.yaml"] = "vllm-compose.yaml.j2"
        if m.deploy.vllm.lora:
            files["vllm-serve-lora.sh"] = "vllm-serve-lora.sh.j2"
    return files


def render_stage(config: Config, m: ModelSpec, make_stage: Any, gguf_path: Any) -> Any:
    """The render Stage (built with tasks.stages._stage, passed in to avoid an import cycle)."""
    root = config.artifacts / m.name
    files = rendered_files(m)
    inputs: dict[str, Path] = {f"template:{t[:-3]}": config.templates / t for t in files.values() if t}
    inputs["merged"] = root / "merged"
    quant = deploy_quant(m)
    if needs_gguf(m.deploy):
        inputs["gguf"] = gguf_path(config, m.name, quant)
    if m.deploy.ollama_template is not None and "ollama" in m.deploy.targets:
        inputs["ollama_template"] = m.deploy.ollama_template
    if "vllm" in m.deploy.targets and m.deploy.vllm.lora:
        inputs["adapter_config"] = m.adapter.path / "adapter_config.json"
    profiles = {n: vars(config.hardware[n]) for n in (m.deploy.hardware, vllm_profile(config, m)) if n}
    params = {
        "model": m.name, "quant": quant, "system": m.system, "deploy": deploy_params(m.deploy),
        "hardware": profiles, "vllm_profile": vllm_profile(config, m) if "vllm" in m.deploy.targets else None,
        "lmstudio_quants": list(m.deploy.lmstudio.quants or (quant,)),
        # Relative, so the key and the rendered scripts do not depend on where the tree lives.
        "base_rel": _rel(m.base.path, root), "adapter_rel": _rel(m.adapter.path, root),
    }
    return make_stage(
        config, f"render:{m.name}", "render", RENDER_VERSION, root / "manifests" / "render.json", m.name,
        inputs=inputs, outputs=tuple(root / name for name in files), params=params, model=m.name,
        doc=f"render the deployment files of {m.name} ({', '.join(m.deploy.targets)})",
    )


def _rel(path: Path, root: Path) -> str:
    rel = os.path.relpath(path, root)
    return rel if rel.startswith(".") else "./" + rel  # "./x": a path to compose, not a volume name


def render_upstream(m: ModelSpec) -> list[str]:
    deps = [f"merge:{m.name}"]
    if needs_gguf(m.deploy):
        deps += [f"quantize:{m.name}-{q}" for q in m.quants] + [f"convert:{m.name}"]
    return deps
