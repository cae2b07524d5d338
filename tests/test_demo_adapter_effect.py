"""The demo's adapter visibly changes the model, and llama.cpp's F16 GGUF keeps that change."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import Workspace

from tasks.fixtures.lora_train import load_conversations

DATA = Path(__file__).resolve().parents[1] / "tasks" / "fixtures" / "data" / "demo_chat.jsonl"
MAX_NEW = 16


@pytest.fixture(scope="module")
def answers(fixtures_ws: Workspace) -> dict[str, list[str]]:
    """Greedy answers to every training prompt: HF base, HF merged, llama.cpp F16 GGUF."""
    import llama_cpp
    import torch
    import transformers

    merged_dir = fixtures_ws.artifacts / "demo" / "merged"
    tok = transformers.AutoTokenizer.from_pretrained(str(merged_dir))
    convs = load_conversations(DATA)
    out: dict[str, list[str]] = {"expected": [c[-1]["content"] for c in convs]}
    for name, path in (("base", fixtures_ws.artifacts / "fixtures" / "demo-base"), ("merged", merged_dir)):
        model = transformers.AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
        out[name] = []
        for conv in convs:
            enc = tok.apply_chat_template(conv[:-1], add_generation_prompt=True, return_tensors="pt", return_dict=True)
            ids = model.generate(**enc, max_new_tokens=MAX_NEW, do_sample=False, eos_token_id=tok.eos_token_id)
            out[name].append(tok.decode(ids[0, enc["input_ids"].shape[1]:], skip_special_tokens=True))
    llm = llama_cpp.Llama(str(fixtures_ws.artifacts / "demo" / "demo-f16.gguf"), n_ctx=256, n_threads=2,
                          verbose=False, seed=0)
    out["gguf"] = []
    for conv in convs:
        prompt = tok.apply_chat_template(conv[:-1], add_generation_prompt=True, tokenize=False)
        ids = llm.tokenize(prompt.encode(), add_bos=False, special=True)
        text = llm.create_completion(ids, max_tokens=MAX_NEW, temperature=0.0, stop=["<|im_end|>"])
        out["gguf"].append(text["choices"][0]["text"])
    return out


def test_merged_model_answers_its_training_prompts(answers: dict[str, list[str]]) -> None:
    assert answers["merged"] == answers["expected"]


def test_base_model_answers_differently(answers: dict[str, list[str]]) -> None:
    assert all(b != m for b, m in zip(answers["base"], answers["merged"], strict=True))


def test_f16_gguf_gives_the_merged_models_greedy_answers(answers: dict[str, list[str]]) -> None:
    assert answers["gguf"] == answers["merged"]
