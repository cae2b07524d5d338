"""The fixture catalog: what `fixture:<name>` in models.toml means.

Fixtures are inputs the build makes for itself (the embedded demo's base model and adapter). They
are stages like any other, cached and content-keyed; this light table is read by the config
validator, and the stages and builders are in tasks/fixtures/. `version` versions a fixture's
recipe: bump it when its builder would write different bytes for the same params.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tasks.core.layout import FIXTURE_DATA


@dataclass(frozen=True)
class Fixture:
    kind: str  # "tiny-base" | "lora-train"
    version: int
    params: dict[str, Any] = field(default_factory=dict)
    base: str | None = None  # fixture this one is trained on (lora-train)
    data: str | None = None  # file under tasks/fixtures/data/: chats (lora-train), corpus (tiny-base)
    doc: str = ""


FIXTURES: dict[str, Fixture] = {
    "demo-base": Fixture(
        kind="tiny-base",
        version=3,  # 3: trained on pinned CPU kernels (tasks/fixtures/numerics.py)
        doc="tiny Qwen2 pretrained on a small corpus, real Qwen2 tokenizer, Qwen2.5-Instruct chat template",
        data="demo_corpus.jsonl",
        params={
            "architecture": "Qwen2ForCausalLM",
            "vocab_file": "ggml-vocab-qwen2.gguf",
            "chat_template": "Qwen-Qwen2.5-7B-Instruct.jinja",
            "hidden_size": 256,  # multiple of 256: every K-quant applies
            "intermediate_size": 512,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 4096,
            "tie_word_embeddings": True,
            # Larger than the usual 0.02 so that logits are peaked enough for a small LoRA to
            # change greedy answers (with tied embeddings the logit scale is bounded by it; at 0.02
            # the demo LoRA's loss stays at 5.8 and no answer is learnt).
            "initializer_range": 0.1,
            "dtype": "bfloat16",
            "seed": 1234,
            # A short causal-LM run on the corpus (see pretrain): real LM-shaped distributions.
            # Measured KL(F16||Q8_0) on eval_samples.jsonl: 9.4e-4 at 40 steps, 1.3e-3 at 80
            # (the base overfits the corpus and grows sharper on text it has not seen), 1.7e-3 without.
            "pretrain": {"seq_len": 128, "batch": 2, "learning_rate": 0.005, "steps": 40, "threads": 2},
            "eos_token": "<|im_end|>",
            "pad_token": "<|endoftext|>",
            "generation_eos": ["<|im_end|>", "<|endoftext|>"],
        },
    ),
    "demo-adapter": Fixture(
        kind="lora-train",
        version=3,  # 2: one output projection per step (float order differs from 1); 3: pinned CPU kernels
        doc="LoRA adapter trained on the demo chat corpus (deterministic, CPU)",
        base="demo-base",
        data="demo_chat.jsonl",
        params={
            "r": 8,
            "lora_alpha": 16,
            "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
            "learning_rate": 0.01,
            "steps": 60,
            "seed": 1234,
            "threads": 2,  # pinned, not the build's thread setting: float reductions depend on it
        },
    ),
}


def chat_template_path(name: str, llama_dir: Path) -> Path:
    """A fixture's chat template: one of llama.cpp's real templates, or "data:<file>" under fixtures/data/."""
    if name.startswith("data:"):
        return FIXTURE_DATA / name[len("data:"):]
    return llama_dir / "models" / "templates" / name


# Two more architectures with real tokenizers from other families, for the checks (tests use them;
# the repository's models.toml does not, to keep `make all` short).
_ADAPTER = {
    "r": 8, "lora_alpha": 16, "learning_rate": 0.01, "steps": 20, "seed": 1234, "threads": 2,
}
_TINY = {
    "hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 2, "num_attention_heads": 4,
    "max_position_embeddings": 4096, "initializer_range": 0.1, "dtype": "bfloat16", "seed": 1234,
}
FIXTURES.update({
    "llama-spm-base": Fixture(
        kind="tiny-base",
        version=2,  # 2: pinned CPU kernels (the random init too)
        doc="tiny random Llama with the Llama/TinyLlama SentencePiece tokenizer and a Zephyr (TinyLlama) template",
        params={
            **_TINY,
            "architecture": "LlamaForCausalLM",
            "vocab_file": "ggml-vocab-llama-spm.gguf",
            "chat_template": "data:tinyllama-chat.jinja",
            "num_key_value_heads": 2,
            "tie_word_embeddings": False,
            "bos_token": "<s>",
            "eos_token": "</s>",
            "pad_token": "</s>",
            "generation_eos": ["</s>"],
            "spm_legacy_normalizer": True,
            "sentencepiece_pieces": 32000,
        },
    ),
    "llama-spm-adapter": Fixture(
        kind="lora-train", version=3, base="llama-spm-base", data="demo_chat.jsonl",
        doc="LoRA adapter for llama-spm-base trained on the demo chat corpus",
        params={**_ADAPTER, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                               "down_proj"]},
    ),
    "phi3-base": Fixture(
        kind="tiny-base",
        version=2,  # 2: pinned CPU kernels (the random init too)
        doc="tiny random Phi-3 with the Phi-3 SentencePiece tokenizer (tokenizer.model rebuilt) and Phi-3.5 template",
        params={
            **_TINY,
            "architecture": "Phi3ForCausalLM",
            "vocab_file": "ggml-vocab-phi-3.gguf",
            "chat_template": "microsoft-Phi-3.5-mini-instruct.jinja",
            "num_key_value_heads": 4,
            "tie_word_embeddings": False,
            "bos_token": "<s>",
            "eos_token": "<|end|>",
            "pad_token": "<|endoftext|>",
            "generation_eos": ["<|end|>", "<|endoftext|>"],
            "sentencepiece_pieces": 32000,
            # As Phi-3's own tokenizer.json (and llama.cpp for Phi-3): these eat the whitespace after them.
            "rstrip_tokens": ["</s>", "<|assistant|>", "<|system|>", "<|end|>", "<|user|>",
                              *(f"<|placeholder{i}|>" for i in range(1, 7))],
        },
    ),
    "phi3-adapter": Fixture(
        kind="lora-train", version=3, base="phi3-base", data="demo_chat.jsonl",
        doc="LoRA adapter for phi3-base trained on the demo chat corpus",
        params={**_ADAPTER, "target_modules": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]},
    ),
})
