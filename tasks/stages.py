"""Every stage of a build, derived from the validated config.

Both dodo.py (to declare tasks and decide freshness) and the stage runner (to build) call
`all_stages`, so what is checked and what is built are the same definition. Light imports only.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from tasks import toolchain
from tasks.config import Config, ModelSpec
from tasks.deploy_config import needs_gguf
from tasks.fetch_stage import fetch_stages
from tasks.fixtures import FIXTURES, chat_template_path
from tasks.manifest import Stage
from tasks.render_stage import render_stage, render_upstream

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
            inputs["chat_template"] = chat_template_path(fx.params["chat_template"], toolchain.llama_dir())
            if fx.data:
                inputs["corpus"] = FIXTURE_DATA / fx.data
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
    stages.append(render_stage(config, m, _stage, gguf_path))  # per deploy target: tasks/render_stage.py
    stages += [check_stage(config, m), report_stage(config, m)]
    if not needs_gguf(m.deploy):
        # vLLM-only: it serves merged/, so no stage may convert, quantize or read a GGUF for it.
        stages = [s for s in stages if s.kind not in ("convert", "quantize")
                  and not any(p.suffix == ".gguf" for p in s.inputs.values())]
    return stages


def all_stages(config: Config) -> list[Stage]:
    stages = fixture_stages(config) + fetch_stages(config)
    for m in config.models.values():
        stages.extend(model_stages(config, m))
    stages.append(compare_stage(config))
    return stages


def upstream(config: Config, stage: Stage) -> list[str]:
    """Task names a stage depends on (doit task_dep)."""
    if stage.kind == "lora-train":
        return [f"fixture:{FIXTURES[stage.params['fixture']].base}"]
    if stage.kind == "report-compare":
        return [f"report:{m}" for m, spec in config.models.items() if needs_gguf(spec.deploy)]
    if stage.model is None or stage.kind == "fetch":
        return []
    m = config.models[stage.model]
    fixtures = [f"fixture:{s.fixture}" for s in (m.base, m.adapter) if s.fixture]
    fetches = [s.fetch_task for s in (m.base, m.adapter) if s.fetch_task]
    return {
        "adapter": ([f"fixture:{m.adapter.fixture}"] if m.adapter.fixture else [])
        + ([m.adapter.fetch_task] if m.adapter.fetch_task else []),
        "merge": [f"adapter:{m.name}", *fixtures, *fetches],
        "convert": [f"merge:{m.name}"],
        "quantize": [f"convert:{m.name}"],
        "check": [f"merge:{m.name}", f"convert:{m.name}", *(f"quantize:{m.name}-{q}" for q in m.quants)],
        "report": [f"check:{m.name}"],
        "render": render_upstream(m),
    }[stage.kind]


# ---- evaluation: check:<m> (gates the build), report:<m> and report:_compare (make report) ----
EVAL_SAMPLES = REPO / "eval_samples.jsonl"
REPORT_DIR = "report"
COMPARE = "_compare"  # not a valid model name, so report:_compare never collides with report:<model>


def check_stage(config: Config, m: ModelSpec) -> Stage:
    """check:<m>: GGUF validity, tokenizer and logit parity, adapter survival, quant quality (tasks/check_stage.py)."""
    root = config.artifacts / m.name
    inputs = {
        "merged": root / "merged", "base": m.base.path, "eval_samples": EVAL_SAMPLES,
        "adapter_config": m.adapter.path / "adapter_config.json",
        "adapter_weights": m.adapter.path / "adapter_model.safetensors",
    }
    for gtype in (m.outtype, *m.quants):
        inputs[f"gguf:{gtype}"] = gguf_path(config, m.name, gtype)
    vocab = FIXTURES[m.base.fixture].params.get("vocab_file") if m.base.fixture else None
    if vocab and (toolchain.llama_dir() / "models" / f"{vocab}.inp").is_file():
        # The tokenizer test vectors llama.cpp ships with this vocabulary.
        inputs["vectors_inp"] = toolchain.llama_dir() / "models" / f"{vocab}.inp"
        inputs["vectors_out"] = toolchain.llama_dir() / "models" / f"{vocab}.out"
    return _stage(
        config, f"check:{m.name}", "check", 1, root / "manifests" / "check.json", m.name, model=m.name,
        inputs=inputs, outputs=(root / "check.json",), toolchain=toolchain.identity(),
        params={"model": m.name, "outtype": m.outtype, "quants": list(m.quants), "gates": m.gates,
                "libs": lib_versions("torch", "transformers", "peft", "tokenizers", "numpy")},
        doc=f"check every GGUF of {m.name} against the merged model and gate its quantizations",
    )


def report_stage(config: Config, m: ModelSpec) -> Stage:
    """report:<m>: runtime figures per GGUF plus the check's figures: JSON, Markdown, plot (tasks/report.py)."""
    root = config.artifacts / m.name
    out = config.artifacts / REPORT_DIR
    inputs = {"check": root / "check.json", "eval_samples": EVAL_SAMPLES}
    for gtype in (m.outtype, *m.quants):
        inputs[f"gguf:{gtype}"] = gguf_path(config, m.name, gtype)
    return _stage(
        config, f"report:{m.name}", "report", 1, out / "manifests" / f"{m.name}.json", m.name, model=m.name,
        inputs=inputs, outputs=(out / f"{m.name}.json", out / f"{m.name}.md", out / f"{m.name}.png"),
        toolchain=toolchain.identity(), params={"model": m.name, "outtype": m.outtype, "quants": list(m.quants),
                                                "libs": lib_versions("matplotlib")},
        doc=f"measure {m.name}'s GGUFs (load time, tokens/s, memory) and write its report with a plot",
    )


def compare_stage(config: Config) -> Stage:
    """report:_compare: every model side by side on the shared prompt set."""
    out = config.artifacts / REPORT_DIR
    return _stage(
        config, f"report:{COMPARE}", "report-compare", 1, out / "manifests" / "compare.json", "report",
        inputs={f"report:{name}": out / f"{name}.json" for name, m in config.models.items() if needs_gguf(m.deploy)},
        outputs=(out / "compare.json", out / "compare.md"), params={"models": list(config.models)},
        doc="compare every model side by side (quality, latency, throughput, memory)",
    )
