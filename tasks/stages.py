"""Every stage of a build, derived from the validated config.

Both dodo.py (to declare tasks and decide freshness) and the stage runner (to build) call
`all_stages`, so what is checked and what is built are the same definition. Light imports only.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from tasks import toolchain
from tasks.config import Config, ModelSpec
from tasks.fixtures import FIXTURES
from tasks.manifest import Stage

REPO = Path(__file__).resolve().parent.parent
FIXTURE_DATA = Path(__file__).resolve().parent / "fixtures" / "data"
RENDERED = ("Modelfile", "lmstudio.json")
# Files of a base model or adapter that are not weights but must travel with the merged model.
SUPPORT_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
    "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja", "chat_template.json",
    "generation_config.json",
)


def lib_versions(*names: str) -> dict[str, str]:
    """Versions of the libraries whose code shapes a stage's output (part of its key)."""
    out = {}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "missing"
    return out


def gguf_path(config: Config, model: str, gtype: str) -> Path:
    return config.artifacts / model / f"{model}-{gtype}.gguf"


def _stage(config: Config, task: str, kind: str, version_: int, manifest: Path, log_dir: str, **kw) -> Stage:
    log_name = task.split(":", 1)[0] if kw.get("model") else task.replace(":", "-")
    return Stage(
        task=task, kind=kind, version=version_, artifacts=config.artifacts, manifest=manifest,
        log=config.artifacts / "logs" / log_dir / f"{log_name}{_log_suffix(task, kw.get('model'))}.log", **kw,
    )


def _log_suffix(task: str, model: str | None) -> str:
    # quantize:demo-q4_k_m -> quantize-q4_k_m.log under logs/demo/
    if model and task.startswith("quantize:"):
        return "-" + task.split(":", 1)[1][len(model) + 1:]
    return ""


def fixture_stages(config: Config) -> list[Stage]:
    """Stages for the fixtures any model refers to (and the fixtures those are built on)."""
    wanted: list[str] = []
    for m in config.models.values():
        for src in (m.base, m.adapter):
            if src.fixture:
                wanted.append(src.fixture)
    todo, ordered = list(dict.fromkeys(wanted)), []
    while todo:
        name = todo.pop()
        if name in ordered:
            continue
        ordered.append(name)
        if FIXTURES[name].base:
            todo.append(FIXTURES[name].base)
    stages = []
    for name in sorted(ordered):
        fx = FIXTURES[name]
        inputs: dict[str, Path] = {}
        if fx.kind == "tiny-base":
            inputs["vocab"] = toolchain.llama_dir() / "models" / fx.params["vocab_file"]
            inputs["chat_template"] = toolchain.llama_dir() / "models" / "templates" / fx.params["chat_template"]
            libs = lib_versions("torch", "transformers")
        else:
            inputs["base"] = config.fixture_dir(fx.base)
            inputs["data"] = FIXTURE_DATA / fx.data
            libs = lib_versions("torch", "transformers", "peft")
        stages.append(_stage(
            config, f"fixture:{name}", fx.kind, fx.version,
            config.artifacts / "fixtures" / "manifests" / f"{name}.json", "fixtures",
            params={"fixture": name, **fx.params, "libs": libs}, inputs=inputs,
            outputs=(config.fixture_dir(name),), doc=f"build fixture {name}: {fx.doc}",
        ))
    return stages


def model_stages(config: Config, m: ModelSpec) -> list[Stage]:
    """adapter -> merge -> convert -> quantize (one per type) -> render, for one model."""
    root = config.artifacts / m.name
    manifests = root / "manifests"
    adapter_inputs = {
        "adapter_config": m.adapter.path / "adapter_config.json",
        "adapter_weights": m.adapter.path / "adapter_model.safetensors",
    }
    tc = toolchain.identity()
    common = {"model": m.name}
    stages = [
        _stage(config, f"adapter:{m.name}", "adapter", 1, manifests / "adapter.json", m.name,
               inputs=adapter_inputs, outputs=(root / "adapter.json",), params={"source": m.adapter.spec},
               doc=f"check the LoRA adapter of {m.name} and record its hashes", **common),
        _stage(config, f"merge:{m.name}", "merge", 1, manifests / "merge.json", m.name,
               inputs={"base": m.base.path, **adapter_inputs}, outputs=(root / "merged",),
               params={"engine": m.merge, "libs": lib_versions("torch", "transformers", "peft", "safetensors")},
               doc=f"merge the adapter of {m.name} into its base (engine: {m.merge})", **common),
        _stage(config, f"convert:{m.name}", "convert", 1, manifests / "convert.json", m.name,
               inputs={"merged": root / "merged"}, outputs=(gguf_path(config, m.name, m.outtype),),
               params={"outtype": m.outtype, "model_name": m.name}, toolchain=tc,
               doc=f"convert {m.name} to {m.outtype.upper()} GGUF with llama.cpp's converter", **common),
    ]
    for q in m.quants:
        stages.append(_stage(
            config, f"quantize:{m.name}-{q}", "quantize", 1, manifests / f"quantize-{q}.json", m.name,
            inputs={"gguf": gguf_path(config, m.name, m.outtype)}, outputs=(gguf_path(config, m.name, q),),
            params={"type": q}, toolchain=tc, doc=f"quantize {m.name} to {q.upper()}", **common,
        ))
    deploy_quant = m.deploy.quant or (m.quants[-1] if m.quants else m.outtype)
    render_inputs = {f"template:{name}": config.templates / f"{name}.j2" for name in RENDERED}
    render_inputs["gguf"] = gguf_path(config, m.name, deploy_quant)
    for name in ("chat_template.jinja", "generation_config.json", "tokenizer_config.json"):
        render_inputs[f"merged:{name}"] = root / "merged" / name
    stages.append(_stage(
        config, f"render:{m.name}", "render", 1, manifests / "render.json", m.name,
        inputs=render_inputs, outputs=tuple(root / name for name in RENDERED),
        params={"model": m.name, "quant": deploy_quant, "system": m.system, "deploy": vars(m.deploy).copy()},
        doc=f"render the Ollama Modelfile and LM Studio config of {m.name}", **common,
    ))
    return stages


def all_stages(config: Config) -> list[Stage]:
    stages = fixture_stages(config)
    for m in config.models.values():
        stages.extend(model_stages(config, m))
    return stages


def upstream(config: Config, stage: Stage) -> list[str]:
    """Task names a stage depends on (doit task_dep)."""
    if stage.kind == "lora-train":
        return [f"fixture:{FIXTURES[stage.params['fixture']].base}"]
    if stage.model is None:
        return []
    m = config.models[stage.model]
    fixtures = [f"fixture:{s.fixture}" for s in (m.base, m.adapter) if s.fixture]
    return {
        "adapter": [f"fixture:{m.adapter.fixture}"] if m.adapter.fixture else [],
        "merge": [f"adapter:{m.name}", *fixtures],
        "convert": [f"merge:{m.name}"],
        "quantize": [f"convert:{m.name}"],
        "render": [f"merge:{m.name}"] + [
            f"quantize:{m.name}-{q}" for q in m.quants
        ] + [f"convert:{m.name}"],
    }[stage.kind]
