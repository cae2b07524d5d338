"""Tokenizer parity: transformers and llama.cpp give the same ids, and an altered pre-tokenizer is caught."""

from __future__ import annotations

from pathlib import Path

from conftest import Workspace
from eval_support import patched_string

from tasks.checks import parity, tokenizer_parity
from tasks.checks.eval_set import load_samples
from tasks.core import toolchain
from tasks.core.layout import EVAL_SAMPLES
from tasks.formats.tokenizer_vectors import read_vectors


def run_parity(merged: Path, gguf: Path) -> dict:
    import transformers

    hf = transformers.AutoTokenizer.from_pretrained(str(merged))
    vocab = toolchain.vocab_file("ggml-vocab-qwen2.gguf")
    vectors = read_vectors(Path(f"{vocab}.inp"), Path(f"{vocab}.out"))
    texts = [*tokenizer_parity.FIXED_TEXTS, *tokenizer_parity.special_texts(hf),
             *tokenizer_parity.chat_texts(hf, load_samples(EVAL_SAMPLES))]
    with parity.quiet_native(None):
        llm = parity.open_llama(gguf, 64, vocab_only=True)
        return tokenizer_parity.compare(hf, llm, texts, vectors)


def test_demo_tokenizers_agree_on_every_text_and_vector(fixtures_ws: Workspace) -> None:
    root = fixtures_ws.artifacts / "demo"
    result = run_parity(root / "merged", root / "demo-f16.gguf")
    assert result["vectors"] >= 40  # llama.cpp's own qwen2 test vectors are part of the set
    assert result["cases"] >= result["vectors"] + len(tokenizer_parity.FIXED_TEXTS)
    assert result["parity"] == 1.0, result["mismatches"]


def test_altered_pre_tokenizer_breaks_parity(fixtures_ws: Workspace, tmp_path: Path) -> None:
    root = fixtures_ws.artifacts / "demo"
    bad = patched_string(root / "demo-f16.gguf", tmp_path / "demo-f16.gguf", "tokenizer.ggml.pre", "gpt-2")
    result = run_parity(root / "merged", bad)
    assert result["parity"] < 0.95
    assert result["mismatches"] and "llama.cpp" in result["mismatches"][0]


def test_vectors_file_format_is_read_as_llama_cpp_writes_it(tmp_path: Path) -> None:
    inp, out = tmp_path / "v.inp", tmp_path / "v.out"
    inp.write_text("a b\n__ggml_vocab_test__\n\n\n__ggml_vocab_test__\n", encoding="utf-8")
    out.write_text(" 1 2\n 3\n", encoding="utf-8")
    assert read_vectors(inp, out) == [("a b", [1, 2]), ("\n", [3])]
