"""Tokenizer parity: the Hugging Face tokenizer and llama.cpp's must give the same ids.

A GGUF whose tokenizer was not recognised (a wrong pre-tokenizer regex, a lost added token, a
different whitespace rule) still loads and still answers, only worse. This runs both tokenizers
on a fixed set of texts chosen to hit the places they differ (multilingual text, code,
whitespace runs, digit groups, special tokens, a rendered chat) and, when the model's vocabulary
ships llama.cpp's own test vectors (`models/ggml-vocab-*.gguf.inp/.out`), on those too, against
the ids recorded there.
"""

from __future__ import annotations

from typing import Any

# Fixed texts: each exercises a pre-tokenizer rule or a normalisation llama.cpp reimplements.
FIXED_TEXTS: tuple[str, ...] = (
    "Hello world, this is a test 123",
    "The quick brown fox jumps over the lazy dog.",
    "Grüße aus München! Ça va? ¿Qué tal? Ελληνικά, русский текст.",
    "我想在apple工作1314151天～ 日本語のテキスト、한국어 문장.",
    "العربية والعبرית mixed with English and emoji 🦙🚀😶‍🌫️",
    "def f(x):\n    return {'a': [x ** 2 for x in range(10)]}  # comment\n",
    "for (int i = 0; i < n; ++i) {\n\tsum += a[i] * b[i];\n}\n",
    "   leading spaces and trailing   ",
    "tabs\t\tand\n\n\nnewlines\r\n  \n    end",
    "  ",
    "\n",
    " \n \n\n",
    "3 33 333 3333 33333 333333 3.14159 1,000,000 0x1F 2026-11-23",
    "I've been 'told he's there, 'RE you sure? We'Ve a'lL",
    "------======= ......!!!!!!?????? ''''''```````\"\"\"\"",
    "https://example.com/path?query=1&b=2 user@example.org",
)


def special_texts(tokenizer: Any) -> list[str]:
    """Texts made of the model's own special tokens, alone and inside ordinary text."""
    specials = []
    for tok in tokenizer.all_special_tokens:
        if tok not in specials:
            specials.append(tok)
    for added in tokenizer.added_tokens_decoder.values():
        if added.special and added.content not in specials:
            specials.append(added.content)
    specials = specials[:12]  # a few hundred reserved tokens add nothing over the first dozen
    texts = [" ".join(specials)] if specials else []
    texts += [f"before{tok}after\n{tok} spaced {tok}" for tok in specials]
    return texts


def chat_texts(tokenizer: Any, samples: list[list[dict[str, str]]]) -> list[str]:
    """The eval samples rendered by the model's chat template: what a deployment tokenizes."""
    if not getattr(tokenizer, "chat_template", None):
        return []
    return [tokenizer.apply_chat_template(conv, tokenize=False) for conv in samples[:4]]


def _show(text: str) -> str:
    return repr(text if len(text) <= 40 else text[:37] + "...")


def compare(hf: Any, llama: Any, texts: list[str], vectors: list[tuple[str, list[int]]]) -> dict[str, Any]:
    """Run every comparison; return counts, the parity fraction and the first mismatches.

    `hf` is a transformers tokenizer, `llama` a llama_cpp.Llama (vocab_only is enough).
    """
    mismatches: list[str] = []
    cases = 0
    failed = 0

    def check(label: str, text: str, want: list[int], got: list[int], who: str) -> bool:
        if want == got:
            return True
        if len(mismatches) < 8:
            mismatches.append(f"{label} {_show(text)}: {who} {got[:12]} != {want[:12]}")
        return False

    for text in texts:
        cases += 1
        hf_ids = hf.encode(text, add_special_tokens=False)
        ll_ids = llama.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        ok = check("text", text, hf_ids, ll_ids, "llama.cpp")
        # With the model's own special tokens added (BOS/EOS policy must agree too).
        hf_sp = hf.encode(text, add_special_tokens=True)
        ll_sp = llama.tokenize(text.encode("utf-8"), add_bos=True, special=True)
        ok = check("text+special", text, hf_sp, ll_sp, "llama.cpp") and ok
        failed += not ok
    for text, expected in vectors:
        cases += 1
        # As llama.cpp's test-tokenizer-0: no special tokens added, none parsed.
        ll_ids = llama.tokenize(text.encode("utf-8"), add_bos=False, special=False)
        hf_ids = hf.encode(text, add_special_tokens=False)
        ok = check("vector", text, expected, ll_ids, "llama.cpp")
        ok = check("vector", text, expected, hf_ids, "transformers") and ok
        failed += not ok
    return {
        "cases": cases,
        "vectors": len(vectors),
        "mismatched": failed,
        "parity": (cases - failed) / cases if cases else 0.0,
        "mismatches": mismatches,
    }
