"""The check and report stages: what they read and write (light: no torch or llama.cpp here).

check:<m> gates every build (models.lock depends on it); report:<m> and report:_compare measure
runtime for `make report` and hold timings, so they are not part of models.lock.
"""

from __future__ import annotations

from tasks.core import toolchain
from tasks.core.config.fixtures import FIXTURES
from tasks.core.config.schema import Config, ModelSpec
from tasks.core.layout import COMPARE, EVAL_SAMPLES
from tasks.core.stage import Stage, StageKind, lib_versions
from tasks.formats.peft_adapter import adapter_files

CHECK = StageKind("check", group="check", version=1, builder="tasks.checks.check:build", needs_gguf=True)
REPORT = StageKind("report", group="report", version=1, builder="tasks.checks.report:build", in_lock=False,
                   needs_gguf=True)
REPORT_COMPARE = StageKind("report-compare", group="report", version=1, builder="tasks.checks.report:build_compare",
                           in_lock=False)


def check_stage(config: Config, m: ModelSpec) -> list[Stage]:
    """GGUF validity, tokenizer and logit parity, adapter survival, quant quality (tasks/checks/check.py)."""
    layout = config.layout
    inputs = {"merged": layout.merged(m.name), "base": m.base.path, "eval_samples": EVAL_SAMPLES,
              **adapter_files(m.adapter.path)}
    for gtype in m.gguf_types:
        inputs[f"gguf:{gtype}"] = layout.gguf(m.name, gtype)
    vocab = FIXTURES[m.base.fixture].params.get("vocab_file") if m.base.fixture else None
    if vocab and (toolchain.llama_dir() / "models" / f"{vocab}.inp").is_file():
        # The tokenizer test vectors llama.cpp ships with this vocabulary.
        inputs["vectors_inp"] = toolchain.llama_dir() / "models" / f"{vocab}.inp"
        inputs["vectors_out"] = toolchain.llama_dir() / "models" / f"{vocab}.out"
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
    )]


def report_stage(config: Config, m: ModelSpec) -> list[Stage]:
    """Runtime figures per GGUF plus the check's figures: JSON, Markdown, plot (tasks/checks/report.py)."""
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
        inputs={f"report:{name}": out / f"{name}.json" for name, m in config.models.items() if m.builds_gguf},
        outputs=(out / "compare.json", out / "compare.md"), params={"models": list(config.models)},
        doc="compare every model side by side (quality, latency, throughput, memory)",
    )]
