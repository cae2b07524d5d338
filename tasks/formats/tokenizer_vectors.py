"""llama.cpp's tokenizer test vectors (`models/ggml-vocab-*.gguf.inp` / `.out`).

The `.inp` file holds texts separated by a marker line; the `.out` file, one line per text, the ids
the original tokenizer gave. Read by the check (tokenizer parity) and by the fixtures that build a
tokenizer from a llama.cpp vocabulary.
"""

from __future__ import annotations

from pathlib import Path

VECTOR_SEPARATOR = "\n__ggml_vocab_test__\n"


def read_vectors(inp: Path, out: Path) -> list[tuple[str, list[int]]]:
    """Texts and the ids the original tokenizer gave them."""
    texts = inp.read_text(encoding="utf-8").split(VECTOR_SEPARATOR)
    if texts and texts[-1] == "":
        texts = texts[:-1]
    lines = out.read_text(encoding="utf-8").split("\n")
    if len(lines) < len(texts):
        raise ValueError(f"{out}: {len(lines)} lines for {len(texts)} texts in {inp}")
    return [(t, [int(x) for x in line.split()]) for t, line in zip(texts, lines, strict=False)]
