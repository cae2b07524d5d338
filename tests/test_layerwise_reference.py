"""The check's float32 reference swept block by block over all probes equals a float32 load, bit for bit.

On small random models of the architectures modelmake builds (tied and untied heads, biases,
fused projections, soft-capped logits), with an all-linear LoRA: base, base+adapter (one shared
sweep) and merged logits of every probe equal each probe run alone through the model loaded in
float32. A tiny block limit splits every projection and the head into chunks, as a 7B model is
split under the default limit. Each block's weights are brought in once per sweep.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import Workspace

from tasks.checks.eval_set import Probe
from tasks.checks.layerwise_reference import base_and_adapted_logits, model_logits
from tasks.checks.lockstep import BLOCK_LIMIT, Job, Lockstep

TINY_LIMIT = 4096  # float32 bytes: every linear layer and the head are computed in chunks of rows
COMMON = {"vocab_size": 384, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
          "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256}
ARCHS = {
    "qwen2": ("Qwen2Config", {"tie_word_embeddings": True}),
    "llama": ("LlamaConfig", {"tie_word_embeddings": False}),
    "phi3": ("Phi3Config", {"tie_word_embeddings": False, "pad_token_id": 0}),
    "gemma2": ("Gemma2Config", {"head_dim": 16, "final_logit_softcapping": 30.0, "sliding_window": 8}),
}


def probes_for(vocab: int) -> list[Probe]:
    import random

    rng = random.Random(7)
    lengths = [5, 17, 12, 30]  # different lengths, one longer than gemma2's sliding window
    return [Probe([rng.randrange(1, vocab) for _ in range(n)], n // 2, n) for n in lengths]


def build_models(root: Path, arch: str) -> tuple[Path, Path, Path]:
    """A random bf16 base, an all-linear LoRA with non-zero B, and the peft-merged model."""
    import peft
    import torch
    import transformers

    cls, extra = ARCHS[arch]
    config = getattr(transformers, cls)(**COMMON, **extra)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config).to(torch.bfloat16)
    base, adapter, merged = root / "base", root / "adapter", root / "merged"
    model.save_pretrained(base)
    lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    wrapped = peft.get_peft_model(model, lora)
    wrapped.save_pretrained(adapter)
    wrapped.merge_and_unload().save_pretrained(merged)
    return base, adapter, merged


def float32_logits(model_dir: Path, probes: list[Probe], adapter: Path | None = None) -> list:
    """The plain reference: a float32 load, each probe on its own."""
    import peft
    import torch
    import transformers

    torch.set_num_threads(2)
    model = transformers.AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    if adapter is not None:
        model = peft.PeftModel.from_pretrained(model, str(adapter))
    model.eval()
    with torch.no_grad():
        return [model(input_ids=torch.tensor([p.ids])).logits[0].numpy() for p in probes]


def assert_identical(got: list, want: list) -> None:
    import numpy as np

    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.dtype == np.float32 and g.shape == w.shape
        assert np.array_equal(g, w), float(np.abs(g - w).max())


@pytest.mark.parametrize("arch", sorted(ARCHS))
@pytest.mark.parametrize("limit", [BLOCK_LIMIT, TINY_LIMIT])
def test_sweep_equals_float32_load_per_probe(tmp_path: Path, arch: str, limit: int) -> None:
    base, adapter, merged = build_models(tmp_path, arch)
    probes = probes_for(COMMON["vocab_size"])
    base_logits, adapted_logits = base_and_adapted_logits(base, adapter, probes, limit)
    assert_identical(base_logits, float32_logits(base, probes))
    assert_identical(adapted_logits, float32_logits(base, probes, adapter))
    assert_identical(model_logits(merged, probes, limit), float32_logits(merged, probes))


@pytest.mark.parametrize("which", ["base+adapter", "merged"])
def test_demo_sweep_equals_float32_load(fixtures_ws: Workspace, which: str) -> None:
    """The demo's own models, split finely (head in chunks, each projection its own block)."""
    import transformers

    from tasks.checks.eval_set import load_samples, probes

    fixtures = fixtures_ws.artifacts / "fixtures"
    merged = fixtures_ws.artifacts / "demo" / "merged"
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(merged))
    probe_set = probes(tokenizer, load_samples(Path(__file__).parents[1] / "eval_samples.jsonl"))
    if which == "merged":
        assert_identical(model_logits(merged, probe_set, 1 << 20), float32_logits(merged, probe_set))
    else:
        base, adapter = fixtures / "demo-base", fixtures / "demo-adapter"
        got_base, got_adapted = base_and_adapted_logits(base, adapter, probe_set, 1 << 20)
        assert_identical(got_base, float32_logits(base, probe_set))
        assert_identical(got_adapted, float32_logits(base, probe_set, adapter))


def test_each_block_is_brought_in_once_per_sweep(tmp_path: Path) -> None:
    """Base and base+adapter passes of every probe share one pass over the base weights."""
    import peft
    import torch
    import transformers

    base, adapter, _ = build_models(tmp_path, "llama")
    model = peft.PeftModel.from_pretrained(transformers.AutoModelForCausalLM.from_pretrained(str(base)), str(adapter))
    model.eval()

    def switch(mode: str) -> None:
        (model.base_model.disable_adapter_layers if mode == "base" else model.base_model.enable_adapter_layers)()

    sweep = Lockstep(model, TINY_LIMIT, switch)
    probes = probes_for(COMMON["vocab_size"])
    jobs = [Job(lambda p=p: model(input_ids=torch.tensor([p.ids])).logits, mode)
            for mode in ("base", "adapted") for p in probes]
    sweep.run(jobs)
    assert len(sweep.blocks) > 20 and {b.kind for b in sweep.blocks} == {"widen", "gathered", "embedding"}
    assert sweep.loads == [1] * len(sweep.blocks)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16, torch.float32}  # narrowed back (LoRA: fp32)


def test_a_failing_pass_stops_the_sweep_with_its_error(tmp_path: Path) -> None:
    base, _, _ = build_models(tmp_path, "qwen2")
    probes = probes_for(COMMON["vocab_size"])
    probes[2] = Probe([1, 2, COMMON["vocab_size"] + 5], 1, 3)  # a token id outside the vocabulary
    with pytest.raises(IndexError):
        model_logits(base, probes, TINY_LIMIT)
