"""The check and report stages: what they read and write (light: no torch or llama.cpp here).

check:<m> gates every build (models.lock depends on it); report:<m> and report:_compare measure
runtime for `make report` and hold timings, so they are not part of models.lock.
"""

from __future__ import annotations

from pathlib import Path

from tasks.core import toolchain
from tasks.core.config.fixtures import FIXTURES
from tasks.core.config.schema import Config, ModelSpec
from tasks.core.layout import COMPARE, EVAL_SAMPLES
from tasks.core.stage import Stage, StageKind, lib_versions
from tasks.formats.peft_adapter import adapter_files

CHECK = StageKind("check", group="check", version=1, builder="tasks.checks.check:build", needs_gguf=True)
# Adapter mode: base GGUFs + LoRA GGUF in llama.cpp against the fine-tune in float32 (tasks/checks/lora_check.py).
CHECK_LORA = StageKind("check-lora", group="check", version=1, builder="tasks.checks.lora_check:build",
                       needs_gguf=True)
REPORT = StageKind("report", group="report", version=1, builder="tasks.checks.report:build", in_lock=False,
                   needs_gguf=True)
REPORT_COMPARE = StageKind("report-compare", group="report", version=1, builder="tasks.checks.report:build_compare",
                           in_lock=False)


def _vectors(m: ModelSpec) -> dict[str, Path]:
    vocab = FIXTURES[m.base.fixture].params.get("vocab_file") if m.base.fixture else None
    if vocab and (toolchain.llama_dir() / "models" / f"{vocab}.inp").is_file():
        # The tokenizer test vectors llama.cpp ships with this vocabulary.
        return {"vectors_inp": toolchain.llama_dir() / "models" / f"{vocab}.inp",
                "vectors_out": toolchain.llama_dir() / "models" / f"{vocab}.out"}
    return {}


def lora_check_stage(config: Config, m: ModelSpec) -> Stage:
    """check:<m> in adapter mode, check:<m>-lora in both mode (then also against the merged quants)."""
    layout = config.layout
    lora = layout.lora_gguf(m.name, m.outtype)
    inputs = {"base": m.base.path, "eval_samples": EVAL_SAMPLES, **adapter_files(m.adapter.path), **_vectors(m)}
    if m.builds_merged:  # both mode: the lora stage may have written `.skipped` instead (served merged)
        inputs["lora_manifest"] = layout.manifest(m.name, "lora")
    else:
        inputs["lora"] = lora
    for gtype in (m.outtype, *m.quants):
        inputs[f"gguf:{gtype}"] = layout.base_gguf(m.base_id, gtype)
        if m.builds_merged and gtype != m.outtype:
            inputs[f"merged:{gtype}"] = layout.gguf(m.name, gtype)
    name = m.name if not m.builds_merged else f"{m.name}-lora"
    return Stage(
        task=f"check:{name}", kind=CHECK_LORA, artifacts=config.artifacts, model=m.name,
        manifest=layout.manifest(m.name, "check-lora"), log=layout.log(m.name, "check-lora"),
        inputs=inputs, outputs=(layout.model_file(m.name, "check-lora.json"),), toolchain=toolchain.identity(),
        order_only=(lora,) if m.builds_merged else (),
        params={"model": m.name, "outtype": m.outtype, "quants": list(m.quants), "gates": m.gates, "lora": lora.name,
                "libs": lib_versions("torch", "transformers", "peft", "tokenizers", "numpy")},
        doc=f"check {m.name}'s LoRA GGUF on its base's GGUFs against the fine-tune in float32",
    )


def check_stage(config: Config, m: ModelSpec) -> list[Stage]:
    """GGUF validity, tokenizer and logit parity, adapter survival, quant quality (tasks/checks/check.py)."""
    lora = [lora_check_stage(config, m)] if m.builds_lora else []
    if not m.builds_merged:
        return lora
    layout = config.layout
    inputs = {"merged": layout.merged(m.name), "base": m.base.path, "eval_samples": EVAL_SAMPLES,
              **adapter_files(m.adapter.path)}
    for gtype in m.gguf_types:
        inputs[f"gguf:{gtype}"] = layout.gguf(m.name, gtype)
    inputs.update(_vectors(m))
    params = {"model": m.name, "outtype": m.outtype, "quants": list(m.gguf_types[1:]), "gates": m.gates,
              "libs": lib_versions("torch", "transformers", "peft", "tokenizers", "numpy")}
    if m.imatrix is not None:  # only then: the key (and check.json) of a model without a matrix is unchanged
        params["imatrix"] = list(m.imatrix.quants)
    return [Stage(
        task=f"check:{m.name}", kind=CHECK, artifacts=config.artifacts, model=m.name,
        manifest=layout.manifest(m.name, "check"), log=layout.log(m.name, "check"),
        inputs=inputs, outputs=(layout.model_file(m.name, "check.json"),), toolchain=toolchain.identity(),
        params=params,
        doc=f"check every GGUF of {m.name} against the merged model and gate its quantizations",
    ), *lora]


def report_stage(config: Config, m: ModelSpec) -> list[Stage]:
    """Runtime figures per GGUF plus the check's figures: JSON, Markdown, plot (tasks/checks/report.py).
    Not for adapter mode (no merged GGUFs to measure)."""
    if not m.builds_merged:
        return []
    layout = config.layout
    out = layout.report_dir()
    inputs = {"check": layout.model_file(m.name, "check.json"), "eval_samples": EVAL_SAMPLES}
    for gtype in m.gguf_types:
        inputs[f"gguf:{gtype}"] = layout.gguf(m.name, gtype)
    return [Stage(
        task=f"report:{m.name}", kind=REPORT, artifacts=config.artifacts, model=m.name,
        manifest=layout.report_manifest(m.name), log=layout.log(m.name, "report"),
        inputs=inputs, outputs=(out / f"{m.name}.json", out / f"{m.name}.md", out / f"{m.name}.png"),
        toolchain=toolchain.identity(), params={"model": m.name, "outtype": m.outtype, "quants": list(m.gguf_types[1:]),
                                                "libs": lib_versions("matplotlib")},
        doc=f"measure {m.name}'s GGUFs (load time, tokens/s, memory) and write its report with a plot",
    )]


def compare_stage(config: Config) -> list[Stage]:
    """report:_compare: every model side by side on the shared prompt set."""
    layout = config.layout
    out = layout.report_dir()
    task = f"report:{COMPARE}"
    return [Stage(
        task=task, kind=REPORT_COMPARE, artifacts=config.artifacts, manifest=layout.report_manifest("compare"),
        log=layout.log("report", task.replace(":", "-")),
        inputs={f"report:{name}": out / f"{name}.json" for name, m in config.models.items()
                if m.builds_gguf and m.builds_merged},
        outputs=(out / "compare.json", out / "compare.md"), params={"models": list(config.models)},
        doc="compare every model side by side (quality, latency, throughput, memory)",
    )]
