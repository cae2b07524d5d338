"""Run the same probe token ids through transformers and through llama.cpp; return logits.

transformers computes in float32 (the reference: no rounding beyond the stored weights); llama.cpp
runs each GGUF with `logits_all`, so every position's distribution is available, on a small
context sized to the longest probe and a pinned thread count (figures must not depend on the
machine's core count).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tasks.checks.eval_set import Probe

THREADS = 2  # pinned: llama.cpp's and torch's float reductions depend on the thread count


@contextlib.contextmanager
def quiet_native(log: Path | None) -> Iterator[None]:
    """llama.cpp writes its loader chatter to fd 2 from C: send it to the stage log (or drop it)."""
    target = str(log) if log else os.devnull
    if log:
        log.parent.mkdir(parents=True, exist_ok=True)
    saved = os.dup(2)
    with open(target, "ab") as fh:
        os.dup2(fh.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _torch_logits(model: Any, probes: list[Probe]) -> list[Any]:
    import torch

    out = []
    with torch.no_grad():
        for p in probes:
            out.append(model(input_ids=torch.tensor([p.ids])).logits[0].float().numpy())
    return out


def hf_logits(model_dir: Path, probes: list[Probe], adapter_dir: Path | None = None) -> tuple[list[Any], list[Any]]:
    """Logits of `model_dir` in float32, and (if `adapter_dir`) of it with the adapter applied by peft.

    The second is the adapter's intended effect, computed without any merge: the reference a
    merged model and every GGUF must reproduce. Weights stay in the checkpoint's dtype and are
    widened to float32 block by block (fp32_compute): the same numbers as a float32 load, in
    about half its memory for a bf16 model.
    """
    import torch
    import transformers

    from tasks.checks.fp32_compute import compute_in_float32

    torch.set_num_threads(THREADS)
    model = transformers.AutoModelForCausalLM.from_pretrained(str(model_dir), dtype="auto")
    model.eval()
    hooks = compute_in_float32(model)
    plain = _torch_logits(model, probes)
    adapted: list[Any] = []
    if adapter_dir is not None:
        import peft

        for hook in hooks:  # peft wraps the model: hook again, around its LoRA layers too
            hook.remove()
        model = peft.PeftModel.from_pretrained(model, str(adapter_dir))
        model.eval()
        compute_in_float32(model)
        adapted = _torch_logits(model, probes)
    return plain, adapted


def context_size(probes: list[Probe]) -> int:
    longest = max(len(p.ids) for p in probes)
    return max(64, -(-longest // 64) * 64)


def open_llama(gguf: Path, n_ctx: int, logits_all: bool = True, vocab_only: bool = False) -> Any:
    import llama_cpp

    return llama_cpp.Llama(
        str(gguf), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, logits_all=logits_all, vocab_only=vocab_only,
        n_threads=THREADS, n_threads_batch=THREADS, verbose=False,
    )


def llama_logits(llm: Any, probes: list[Probe]) -> list[Any]:
    import numpy as np

    out = []
    for p in probes:
        llm.reset()
        llm.eval(p.ids)
        out.append(np.array(llm.scores[:len(p.ids)], dtype=np.float32))
    return out
