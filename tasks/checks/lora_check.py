"""The check of adapter mode: the base's GGUFs with the LoRA GGUF applied by llama.cpp, against the fine-tune.

The reference is the fine-tuned model in float32: the base with the adapter applied by peft (unmerged,
`W x + scaling * B A x`), which is the merged model computed in float32 without the rounding of its
stored weights. llama.cpp opens each base GGUF, loads `<m>-lora-<type>.gguf` with
`llama_adapter_lora_init` and applies it to every decode (`llama_set_adapters_lora`, scale 1: the
adapter's own alpha / rank, into which the lora stage folded peft's scale). Figures, as check.json
has them for merged models:
- `logits`: max |logit difference| and top-1 agreement, reference vs unquantized base + LoRA;
- `adapter`: retention of the adapter's effect by every base type + LoRA (1 = all of it);
- `quality`: KL(unquantized base + LoRA || quantized base + LoRA) per quant and, in both mode,
  `vs_merged`: KL(merged model's same-type quant || quantized base + LoRA).
A LoRA GGUF with the wrong scale (an rsLoRA adapter converted without folding) moves every figure;
the same gates as merged models' (`min_top1`, `max_logit_diff`, `min_adapter_retention`, KL gates) fail it.
Before anything is loaded, the LoRA GGUF must be an adapter for the base GGUF's architecture whose every
tensor names a base tensor of the right shape: one line otherwise.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tasks.core import atomic, toolchain
from tasks.core.errors import UserError
from tasks.core.stage import Stage, skipped_marker
from tasks.formats.gguf import ScanError, scan
from tasks.formats.tokenizer_vectors import read_vectors


def check_lora_gguf(lora: Path, base: Path) -> None:
    """One line if `lora` is not a LoRA adapter for the model in `base` (architecture, tensor names, shapes)."""
    try:
        lo, ba = scan(lora), scan(base)
    except ScanError as exc:
        raise UserError(f"{lora.name}: {exc}") from None
    kind = (lo.get("general.type"), lo.get("adapter.type"))
    if kind != ("adapter", "lora"):
        raise UserError(f"{lora}: not a LoRA adapter GGUF (general.type={kind[0]!r}, adapter.type={kind[1]!r})")
    arch, base_arch = lo.get("general.architecture"), ba.get("general.architecture")
    if arch != base_arch:
        raise UserError(f"{lora}: LoRA adapter for architecture {arch!r}, but the base {base.name} is {base_arch!r}")
    shapes = {t.name: t.shape for t in ba.tensors}
    for t in lo.tensors:
        target, _, part = t.name.rpartition(".lora_")
        if target not in shapes:
            raise UserError(f"{lora}: tensor {t.name} adapts {target}, which the base {base.name} does not have")
        dim = 0 if part == "a" else 1  # ggml order: lora_a [in, r], lora_b [r, out], the weight [in, out]
        if target != "token_embd.weight" and t.shape[dim] != shapes[target][dim]:
            raise UserError(f"{lora}: tensor {t.name} {list(t.shape)} does not fit {target} "
                            f"{list(shapes[target])} of the base {base.name}")


def open_lora(llm: Any, path: Path) -> Any:
    """llama_adapter_lora_init on an open model; the adapter lives as long as the model."""
    import llama_cpp

    adapter = llama_cpp.llama_adapter_lora_init(llm._model.model, str(path).encode())
    if not adapter:
        raise UserError(f"{path}: llama.cpp cannot load this LoRA adapter for {llm.model_path}")
    return adapter


def run_lora_checks(stage: Stage) -> dict[str, Any]:
    import transformers

    from tasks.checks import gguf_validate, layerwise_reference, logit_stats, parity, tokenizer_parity
    from tasks.checks.eval_set import load_samples, probes
    from tasks.checks.llama_batch_eval import batched_logits, load

    params = stage.params
    outtype = params["outtype"]
    base_dir, adapter_dir = stage.inputs["base"], stage.inputs["adapter_config"].parent
    lora = lora_file(stage)
    types = [outtype, *params["quants"]]
    ggufs = {g: stage.inputs[f"gguf:{g}"] for g in types}
    for path in ggufs.values():
        check_lora_gguf(lora, path)
    clock = [time.monotonic()]

    def step(what: str) -> None:
        now = time.monotonic()
        with open(stage.log, "a", encoding="utf-8") as fh:
            fh.write(f"{stage.task}: {what}: {now - clock[0]:.1f}s\n")
        clock[0] = now

    result: dict[str, Any] = {"format": 1, "model": params["model"], "mode": "adapter", "reference": outtype,
                              "lora": lora.name, "problems": []}
    problems: list[str] = result["problems"]
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(base_dir))
    ref = gguf_validate.hf_reference(base_dir, hf_tok, toolchain.require() / "conversion" / "base.py")
    validity = {}
    for gtype, path in ggufs.items():
        validity[gtype], found = gguf_validate.validate(path, gtype, ref)
        problems += [f"GGUF validity: {p}" for p in found]
    result["validity"] = validity
    if problems:
        return result
    samples = load_samples(stage.inputs["eval_samples"])
    probe_set = probes(hf_tok, samples)
    n_ctx = parity.context_size(probe_set)
    result["probes"] = {"samples": len(probe_set), "positions": sum(len(p.ids) for p in probe_set)}
    base_logits, adapted_logits = layerwise_reference.base_and_adapted_logits(base_dir, adapter_dir, probe_set)
    step("transformers: base and base+adapter")
    base_lp = [logit_stats.log_softmax(x, in_place=True) for x in base_logits]
    del base_logits
    adapted_lp = [logit_stats.log_softmax(x) for x in adapted_logits]
    vectors = []
    if "vectors_inp" in stage.inputs:
        vectors = read_vectors(stage.inputs["vectors_inp"], stage.inputs["vectors_out"])
    texts = [*tokenizer_parity.FIXED_TEXTS, *tokenizer_parity.special_texts(hf_tok),
             *tokenizer_parity.chat_texts(hf_tok, samples)]
    retention: dict[str, Any] = {}
    quality: dict[str, Any] = {}
    vs_merged: dict[str, Any] = {}
    ref_lp = None
    with parity.quiet_native(stage.log):
        for gtype, path in ggufs.items():
            llm, repacked = load(path, n_ctx)
            adapter = open_lora(llm, lora)
            if gtype == outtype:
                result["tokenizer"] = tokenizer_parity.compare(hf_tok, llm, texts, vectors)
            logits = batched_logits(llm, probe_set, repacked, loras=((adapter, 1.0),))
            del llm
            if gtype == outtype:
                result["logits"] = logit_stats.logit_parity(adapted_logits, logits)
                del adapted_logits
            lp = [logit_stats.log_softmax(x, in_place=True) for x in logits]
            del logits
            retention[gtype] = logit_stats.adapter_retention(lp, adapted_lp, base_lp)
            ref_lp = lp if gtype == outtype else ref_lp
            quality[gtype] = logit_stats.quant_quality(ref_lp, lp, probe_set)
            merged = stage.inputs.get(f"merged:{gtype}")
            if merged is not None:
                mllm, mrep = load(merged, n_ctx)
                m_lp = [logit_stats.log_softmax(x, in_place=True) for x in batched_logits(mllm, probe_set, mrep)]
                del mllm
                vs_merged[gtype] = logit_stats.quant_quality(m_lp, lp, probe_set)
            step(f"llama.cpp: {gtype} + LoRA")
    result["adapter"] = retention
    result["quality"] = quality
    if vs_merged:
        result["vs_merged"] = vs_merged
    return result


def lora_file(stage: Stage) -> Path:
    """The LoRA GGUF: an input in adapter mode; in both mode beside the lora stage's manifest (or skipped)."""
    if "lora" in stage.inputs:
        return stage.inputs["lora"]
    return stage.inputs["lora_manifest"].parent.parent / stage.params["lora"]


def build(stage: Stage, config: Any) -> None:
    from tasks.checks.check import finish

    toolchain.check_runtime()
    lora = lora_file(stage)
    if not lora.is_file() and skipped_marker(lora).is_file():  # both mode, adapter not expressible: nothing to check
        (out,) = stage.outputs
        out.unlink(missing_ok=True)
        atomic.write_text(skipped_marker(out), skipped_marker(lora).read_text(encoding="utf-8"))
        return
    skipped_marker(stage.outputs[0]).unlink(missing_ok=True)
    finish(stage, run_lora_checks(stage))
