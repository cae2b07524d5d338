"""The check's float32 reference computed block by block equals a float32 load, bit for bit.

This is what lets the check run a 7B bf16 model in ~15 GB instead of 28 GB without changing a
single reference number (the memory figures are in benchmarks/bench_reference.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import Workspace

from tasks.checks.fp32_compute import blocks, compute_in_float32

# Small enough that the demo splits into embedding, each decoder layer, final norm and head,
# as a 7B model does under the default limit.
TINY_LIMIT = 8 * 1024**2
PROMPT = [151644, 872, 198, 15191, 525, 498, 30, 151645, 198, 151644, 77091, 198]


def logits(model_dir: Path, adapter: Path | None, blockwise: bool):
    import peft
    import torch
    import transformers

    torch.set_num_threads(2)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(model_dir), dtype="auto" if blockwise else torch.float32)
    if adapter is not None:
        model = peft.PeftModel.from_pretrained(model, str(adapter))
    model.eval()
    if blockwise:
        assert next(model.parameters()).dtype == torch.bfloat16  # the demo is stored in bf16
        compute_in_float32(model, TINY_LIMIT)
    with torch.no_grad():
        out = model(input_ids=torch.tensor([PROMPT])).logits
    if blockwise:  # every weight is narrowed back after its block ran: nothing stays widened
        assert {p.dtype for n, p in model.named_parameters() if "lora_" not in n} == {torch.bfloat16}
    return out


@pytest.mark.parametrize("which", ["base", "base+adapter", "merged"])
def test_blockwise_float32_equals_float32_load(fixtures_ws: Workspace, which: str) -> None:
    import torch

    fixtures = fixtures_ws.artifacts / "fixtures"
    model_dir = fixtures_ws.artifacts / "demo" / "merged" if which == "merged" else fixtures / "demo-base"
    adapter = fixtures / "demo-adapter" if which == "base+adapter" else None
    expected = logits(model_dir, adapter, blockwise=False)
    got = logits(model_dir, adapter, blockwise=True)
    assert got.dtype == torch.float32
    assert torch.equal(got, expected), (got - expected).abs().max()


def test_blocks_are_the_called_modules_not_containers(fixtures_ws: Workspace) -> None:
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(str(fixtures_ws.artifacts / "demo" / "merged"))
    names = {id(m): n for n, m in model.named_modules()}
    found = [names[id(b)] for b in blocks(model, TINY_LIMIT)]
    assert found == ["model.embed_tokens", "model.layers.0", "model.layers.1", "model.norm", "lm_head"]
    assert [names[id(b)] for b in blocks(model)] == [""]  # under the default limit the demo is one block
