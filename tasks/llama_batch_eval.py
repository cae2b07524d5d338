"""Every probe of a GGUF in one llama.cpp decode: the model's weights are read once, not once per probe.

Each probe is its own sequence (seq id) in one batch over a unified KV cache, so one ubatch
carries all of them and each weight matrix is multiplied once. A model larger than the page
cache (a 7B F16 GGUF under a 7 GiB cap) is then read from disk once per decode instead of once
per probe. Weights stay memory-mapped (mmap on, mlock off).

Why probes start on a 16-cell boundary (padding tokens of a sequence of their own fill the gaps):
ggml sums attention rows in groups of 16 lanes (softmax, and the V product over the KV axis),
so a sequence shifted by a non-multiple of 16 cells sums in a different order and its logits
move in the last bits. Aligned, every probe's logits equal a decode of that probe alone on the
demo (tests/test_llama_batch_eval.py), and check.json is unchanged. (K-quant types repacked for
the CPU quantize the last rows of a batch differently from groups of four rows, so their
logits can still move by rounding; those are measured against the F16 GGUF, not a fixed value.)
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Any

from tasks.eval_set import Probe

ALIGN = 16  # KV cells: see above
MAX_TOKENS = 512  # per decode, padding included: bounds the attention scores and the logits buffer


@dataclass(frozen=True)
class Slot:
    token: int
    pos: int
    seq: int
    output: bool


def plan(probes: list[Probe], max_tokens: int = MAX_TOKENS) -> list[tuple[list[int], list[Slot]]]:
    """Decodes: (probe indices, batch slots). A probe longer than `max_tokens` gets a decode of its own.

    In a decode of n probes, probe k is sequence k; padding is sequence n, one causal sequence
    with positions 0, 1, 2, ... (it attends only to itself, and its logits are not computed).
    """
    decodes: list[tuple[list[int], list[Slot]]] = []
    members: list[int] = []
    slots: list[Slot] = []
    for index, probe in enumerate(probes):
        start = -(-len(slots) // ALIGN) * ALIGN
        if members and start + len(probe.ids) > max_tokens:
            decodes.append((members, slots))
            members, slots, start = [], [], 0
        slots += [Slot(probe.ids[0], 0, -1, False)] * (start - len(slots))
        slots += [Slot(t, pos, len(members), True) for pos, t in enumerate(probe.ids)]
        members.append(index)
    if members:
        decodes.append((members, slots))
    return [(m, _number_padding(s, len(m))) for m, s in decodes]


def _number_padding(slots: list[Slot], pad_seq: int) -> list[Slot]:
    out, pos = [], 0
    for s in slots:
        if not s.output:
            s = Slot(s.token, pos, pad_seq, False)
            pos += 1
        out.append(s)
    return out


def batched_logits(llm: Any, probes: list[Probe], max_tokens: int = MAX_TOKENS) -> list[Any]:
    """Logits (positions x vocabulary, float32) of every probe, from as few decodes as `max_tokens` allows.

    `llm` is an open llama_cpp.Llama: its model is reused (loaded once, also for tokenizer
    parity); the decodes get a context of their own with the same settings but sized for the batch.
    """
    import llama_cpp
    import numpy as np

    model = llm._model.model
    n_vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(model))
    out: list[Any] = [None] * len(probes)
    for members, slots in plan(probes, max_tokens):
        params = llama_cpp.llama_context_default_params()
        for name, _ in params._fields_:
            setattr(params, name, getattr(llm.context_params, name))
        params.n_ctx = -(-len(slots) // 256) * 256
        params.n_batch = params.n_ubatch = len(slots)
        params.n_seq_max = len(members) + 1
        params.kv_unified = True
        ctx = llama_cpp.llama_init_from_model(model, params)
        if not ctx:
            raise RuntimeError(f"llama.cpp could not create a context for {len(slots)} tokens")
        batch = llama_cpp.llama_batch_init(len(slots), 0, 1)
        try:
            for i, s in enumerate(slots):
                batch.token[i], batch.pos[i], batch.n_seq_id[i] = s.token, s.pos, 1
                batch.seq_id[i][0], batch.logits[i] = s.seq, s.output
            batch.n_tokens = len(slots)
            rc = llama_cpp.llama_decode(ctx, batch)
            if rc != 0:
                raise RuntimeError(f"llama_decode returned {rc} for {len(slots)} tokens")
            n_out = sum(s.output for s in slots)
            ptr = llama_cpp.llama_get_logits(ctx)
            logits = np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)), shape=(n_out, n_vocab))
            row = 0
            for index in members:  # outputs come in batch order, probe after probe
                n = len(probes[index].ids)
                out[index] = np.array(logits[row:row + n], dtype=np.float32)
                row += n
        finally:
            llama_cpp.llama_batch_free(batch)
            llama_cpp.llama_free(ctx)
    return out
