"""The static quant table mirrors llama.cpp's own ftype constants exactly."""

from __future__ import annotations

import llama_cpp

from tasks.core.quant_types import QUANT_FTYPES


def test_quant_table_matches_llama_cpp_constants() -> None:
    theirs = {
        name[len("LLAMA_FTYPE_MOSTLY_"):].lower(): value
        for name, value in vars(llama_cpp).items()
        if name.startswith("LLAMA_FTYPE_MOSTLY_") and name not in ("LLAMA_FTYPE_MOSTLY_F16", "LLAMA_FTYPE_MOSTLY_BF16")
    }
    assert theirs == QUANT_FTYPES
