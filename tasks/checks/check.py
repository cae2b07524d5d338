"""The check stage: prove every GGUF of a model is still the fine-tuned model, and measure it.

In order, each step using what the previous ones established:
1. GGUF validity of every file (tasks.checks.gguf_validate), and one tokenizer across all of them;
2. tokenizer parity, HF vs llama.cpp, on fixed texts and the vocabulary's test vectors;
3. logit parity, merged HF (fp32) vs the unquantized GGUF, on the probe set;
4. adapter survival: the adapter's effect (base + adapter by peft, unmerged) kept by the
   merged model and by every GGUF;
5. quantization quality of every quant against the unquantized GGUF.
Every figure lands in `check.json` (deterministic: no timings; runtime speed is measured by the
report stage); every gate from models.toml is applied, and a failed one fails the build with
one line naming it. The full figures of a failed check are written to the stage log.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from tasks.core import atomic, toolchain
from tasks.core.config.gates import gate_key
from tasks.core.config.schema import Config
from tasks.core.errors import UserError
from tasks.core.quant_types import PLAIN_SUFFIX
from tasks.core.stage import Stage
from tasks.formats.tokenizer_vectors import read_vectors

FORMAT = 1


def rounded(value: Any, digits: int = 4) -> Any:
    """Round floats to `digits` significant digits, recursively: the file is diffed and hashed."""
    if isinstance(value, float):
        if value == 0 or not math.isfinite(value):
            return value
        return float(f"{value:.{digits}g}")
    if isinstance(value, dict):
        return {k: rounded(v, digits) for k, v in value.items()}
    if isinstance(value, list):
        return [rounded(v, digits) for v in value]
    return value


def gguf_inputs(stage: Stage) -> dict[str, Path]:
    """GGUF type -> path, unquantized first."""
    types = [stage.params["outtype"], *stage.params["quants"]]
    return {g: stage.inputs[f"gguf:{g}"] for g in types}


def run_checks(stage: Stage) -> dict[str, Any]:
    """Measure everything; gates are applied afterwards by `apply_gates`."""
    import transformers

    from tasks.checks import gguf_validate, layerwise_reference, logit_stats, parity, tokenizer_parity
    from tasks.checks.eval_set import load_samples, probes
    from tasks.checks.llama_batch_eval import batched_logits, load

    params = stage.params
    outtype = params["outtype"]
    merged = stage.inputs["merged"]
    clock = [time.monotonic()]

    def step(what: str) -> None:  # timings go to the log, never into check.json (it must be reproducible)
        now = time.monotonic()
        with open(stage.log, "a", encoding="utf-8") as fh:
            fh.write(f"{stage.task}: {what}: {now - clock[0]:.1f}s\n")
        clock[0] = now

    ggufs = gguf_inputs(stage)
    result: dict[str, Any] = {"format": FORMAT, "model": params["model"], "reference": outtype, "problems": []}
    problems: list[str] = result["problems"]

    hf_tok = transformers.AutoTokenizer.from_pretrained(str(merged))
    ref = gguf_validate.hf_reference(merged, hf_tok, toolchain.require() / "conversion" / "base.py")
    validity: dict[str, Any] = {}
    usable: dict[str, Path] = {}
    for gtype, path in ggufs.items():
        facts, found = gguf_validate.validate(path, gtype, ref)
        validity[gtype] = facts
        problems += [f"GGUF validity: {p}" for p in found]
        if facts["readable"]:
            usable[gtype] = path
    digests = {g: f.get("tokenizer_digest") for g, f in validity.items() if f.get("tokenizer_digest")}
    if outtype in digests:
        for gtype, d in digests.items():
            if d != digests[outtype]:
                problems.append(
                    f"GGUF validity: {ggufs[gtype].name}: its tokenizer differs from {ggufs[outtype].name}'s"
                )
    result["validity"] = validity
    step("GGUF validity")
    if outtype not in usable:
        problems.append(f"{ggufs[outtype].name} cannot be loaded: no parity, adapter or quantization figures")
        return result

    samples = load_samples(stage.inputs["eval_samples"])
    probe_set = probes(hf_tok, samples)
    n_ctx = parity.context_size(probe_set)
    result["probes"] = {"samples": len(probe_set), "positions": sum(len(p.ids) for p in probe_set),
                        "answer_positions": sum(p.answer_end - p.answer_start for p in probe_set),
                        # The token ids every runtime saw (the report replays them for speed figures).
                        "ids": [{"prompt": p.prompt, "answer": p.answer} for p in probe_set]}

    # HF side: base, base+adapter (peft, unmerged), merged; all float32, one sweep over each model's
    # weights for all probes (tasks/layerwise_reference.py).
    adapter_dir = stage.inputs["adapter_config"].parent
    base_logits, adapted_logits = layerwise_reference.base_and_adapted_logits(stage.inputs["base"], adapter_dir,
                                                                              probe_set)
    step("transformers: base and base+adapter")
    merged_logits = layerwise_reference.model_logits(merged, probe_set)
    step("transformers: merged")
    base_lp = [logit_stats.log_softmax(x, in_place=True) for x in base_logits]
    adapted_lp = [logit_stats.log_softmax(x, in_place=True) for x in adapted_logits]
    del base_logits, adapted_logits
    merged_lp = [logit_stats.log_softmax(x) for x in merged_logits]
    retention = {"merged": logit_stats.adapter_retention(merged_lp, adapted_lp, base_lp)}
    del merged_lp

    vectors = []
    if "vectors_inp" in stage.inputs:
        vectors = read_vectors(stage.inputs["vectors_inp"], stage.inputs["vectors_out"])
    texts = [*tokenizer_parity.FIXED_TEXTS, *tokenizer_parity.special_texts(hf_tok),
             *tokenizer_parity.chat_texts(hf_tok, samples)]
    quality: dict[str, Any] = {}
    with parity.quiet_native(stage.log):
        try:
            llm, repacked = load(usable[outtype], n_ctx)
        except (ValueError, RuntimeError) as exc:
            problems.append(f"{usable[outtype].name}: llama.cpp cannot load it ({exc})")
            return result
        result["tokenizer"] = tokenizer_parity.compare(hf_tok, llm, texts, vectors)
        stops, stop_problems = gguf_validate.check_stops(usable[outtype].name, llm, ref)
        result["stop_ids"] = stops
        problems += [f"GGUF validity: {p}" for p in stop_problems]
        step("llama.cpp: load, tokenizer parity")
        ref_logits = batched_logits(llm, probe_set, repacked)
        del llm
        step(f"llama.cpp: {outtype} logits")
        result["logits"] = logit_stats.logit_parity(merged_logits, ref_logits)
        del merged_logits
        ref_lp = [logit_stats.log_softmax(x, in_place=True) for x in ref_logits]
        del ref_logits
        retention[outtype] = logit_stats.adapter_retention(ref_lp, adapted_lp, base_lp)
        quality[outtype] = logit_stats.quant_quality(ref_lp, ref_lp, probe_set)
        for gtype, path in usable.items():
            if gtype == outtype:
                continue
            try:
                llm, repacked = load(path, n_ctx)
            except (ValueError, RuntimeError) as exc:
                problems.append(f"{path.name}: llama.cpp cannot load it ({exc})")
                continue
            q_lp = [logit_stats.log_softmax(x, in_place=True) for x in batched_logits(llm, probe_set, repacked)]
            del llm
            quality[gtype] = logit_stats.quant_quality(ref_lp, q_lp, probe_set)
            retention[gtype] = logit_stats.adapter_retention(q_lp, adapted_lp, base_lp)
            del q_lp  # before the next GGUF's logits exist
            step(f"llama.cpp: {gtype}")
    result["adapter"] = retention
    result["quality"] = quality
    return result


def apply_gates(result: dict[str, Any], gates: dict[str, Any], model: str, outtype: str) -> list[str]:
    """Failures, one sentence each: every validity problem, then every gate not met."""
    failures = list(result["problems"])
    scalar, typed = gates["scalar"], gates["typed"]

    def below(value: float, gate: float) -> bool:
        return value < gate - 1e-12

    tok = result.get("tokenizer")
    if tok is not None and below(tok["parity"], scalar["min_tokenizer_parity"]):
        first = f" (first: {tok['mismatches'][0]})" if tok["mismatches"] else ""
        failures.append(f"gate {gate_key(model, 'min_tokenizer_parity')}: tokenizer parity {tok['parity']:.4f} "
                        f"is below {scalar['min_tokenizer_parity']}{first}")
    logits = result.get("logits")
    if logits is not None:
        if below(logits["top1_agreement"], scalar["min_top1"]):
            failures.append(f"gate {gate_key(model, 'min_top1')}: HF vs {outtype} top-1 agreement "
                            f"{logits['top1_agreement']:.4f} is below {scalar['min_top1']}")
        if logits["max_abs_diff"] > scalar["max_logit_diff"]:
            failures.append(f"gate {gate_key(model, 'max_logit_diff')}: HF vs {outtype} max logit difference "
                            f"{logits['max_abs_diff']:.4g} exceeds {scalar['max_logit_diff']}")
    adapter = result.get("adapter", {})
    if adapter.get("merged", {}).get("effect", 1.0) == 0:
        failures.append("adapter survival: the adapter has no effect at all on the probe prompts (all-zero LoRA?)")
    for gtype, figures in adapter.items():
        gate_type = outtype if gtype == "merged" else gtype
        gate = typed["min_adapter_retention"].get(gate_type)
        if gate is not None and below(figures["retention"], gate):
            what = "the merged model" if gtype == "merged" else f"the {gtype} GGUF"
            failures.append(f"gate {gate_key(model, 'min_adapter_retention', gate_type)}: adapter survival: {what} "
                            f"keeps {figures['retention']:.3f} of the adapter's effect, below {gate} "
                            "(about 0 means the adapter was lost)")
    for gtype, q in result.get("quality", {}).items():
        if gtype == outtype:
            continue
        checks = (("max_kl_mean", q["kl_mean"], f"KL({outtype}||{gtype}) mean", True),
                  ("max_kl_p99", q["kl_p99"], f"KL({outtype}||{gtype}) p99", True),
                  ("min_quant_top1", q["top1_agreement"], f"{gtype} top-1 agreement with {outtype}", False))
        for name, value, label, is_max in checks:
            gate = typed[name].get(gtype)
            if gate is None:
                continue
            if (value > gate) if is_max else below(value, gate):
                verb = "exceeds" if is_max else "is below"
                failures.append(f"gate {gate_key(model, name, gtype)}: {label} {value:.4g} {verb} {gate}")
    return failures


def imatrix_comparison(quality: dict[str, Any], with_matrix: list[str]) -> dict[str, Any]:
    """For each quant built with the importance matrix: its figures beside its no-matrix twin's (when built)."""
    keys = ("kl_mean", "kl_p99", "top1_agreement", "ppl")
    out: dict[str, Any] = {}
    for q in with_matrix:
        if q not in quality:
            continue
        entry: dict[str, Any] = {"with": {k: quality[q].get(k) for k in keys}}
        plain = quality.get(q + PLAIN_SUFFIX)
        if plain is not None:
            entry["without"] = {k: plain.get(k) for k in keys}
            if plain["kl_mean"]:
                entry["kl_mean_ratio"] = quality[q]["kl_mean"] / plain["kl_mean"]
        out[q] = entry
    return out


def build(stage: Stage, config: Config) -> None:
    toolchain.check_runtime()
    finish(stage, run_checks(stage))


def finish(stage: Stage, measured: dict[str, Any]) -> None:
    """Gate the figures; write check.json if every gate holds, else fail in one line (figures to the log)."""
    params = stage.params
    result = dict(measured)
    if "imatrix" in params:
        result["imatrix"] = imatrix_comparison(result.get("quality", {}), params["imatrix"])
    result = rounded(result)
    failures = apply_gates(result, params["gates"], params["model"], params["outtype"])
    result["gates"] = params["gates"]
    result["failures"] = failures
    result["passed"] = not failures
    text = json.dumps(result, indent=2, sort_keys=True) + "\n"
    (out,) = stage.outputs
    if failures:
        out.unlink(missing_ok=True)  # a previous run's passing check.json must not outlive this failure
        with open(stage.log, "a", encoding="utf-8") as fh:
            fh.write(f"{stage.task}: FAILED; measured figures:\n{text}")
        raise UserError(f"check failed ({len(failures)}): {'; '.join(failures)}; every figure: {stage.log}")
    atomic.write_text(out, text)
