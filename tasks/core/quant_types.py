"""llama.cpp quantization types by name, mirrored from llama.h's `llama_ftype`.

Kept as a static table (not read from llama_cpp at import) because dodo.py validates
models.toml on every doit call and must not load libllama for that. A test asserts the
table equals llama_cpp's own LLAMA_FTYPE_MOSTLY_* constants, so it cannot drift.
"""

from __future__ import annotations

# name (lowercase, as used in file names) -> llama_ftype value
QUANT_FTYPES: dict[str, int] = {
    "q4_0": 2,
    "q4_1": 3,
    "q8_0": 7,
    "q5_0": 8,
    "q5_1": 9,
    "q2_k": 10,
    "q3_k_s": 11,
    "q3_k_m": 12,
    "q3_k_l": 13,
    "q4_k_s": 14,
    "q4_k_m": 15,
    "q5_k_s": 16,
    "q5_k_m": 17,
    "q6_k": 18,
    "iq2_xxs": 19,
    "iq2_xs": 20,
    "q2_k_s": 21,
    "iq3_xs": 22,
    "iq3_xxs": 23,
    "iq1_s": 24,
    "iq4_nl": 25,
    "iq3_s": 26,
    "iq3_m": 27,
    "iq2_s": 28,
    "iq2_m": 29,
    "iq4_xs": 30,
    "iq1_m": 31,
    "tq1_0": 36,
    "tq2_0": 37,
    "mxfp4_moe": 38,
    "nvfp4": 39,
    "q1_0": 40,
    "q2_0": 41,
}

# llama.cpp refuses these without an importance matrix (imatrix): models.toml must configure one.
NEEDS_IMATRIX = frozenset({"iq2_xxs", "iq2_xs", "iq2_s", "iq3_xxs", "iq1_s", "iq1_m", "q2_k_s"})

# A quant built without the matrix beside the one built with it, for the check's comparison: "q2_k-noimatrix".
PLAIN_SUFFIX = "-noimatrix"


def base_type(gtype: str) -> str:
    """The llama.cpp type of a GGUF type name ("q2_k-noimatrix" -> "q2_k")."""
    return gtype.removesuffix(PLAIN_SUFFIX)

# Unquantized GGUF types the converter writes directly.
OUTTYPES = ("f16", "bf16")


def buildable_quants() -> list[str]:
    """Quant names a model may request (those in NEEDS_IMATRIX only with a matrix), in llama.cpp's order."""
    return list(QUANT_FTYPES)
