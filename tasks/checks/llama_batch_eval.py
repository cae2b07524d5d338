"""Every probe of a GGUF in one llama.cpp decode: the model's weights are read once, not once per probe.

Each probe is its own sequence (seq id) in one batch over a unified KV cache, so one ubatch
carries all of them and each weight matrix is multiplied once. A model larger than the page
cache (a 7B F16 GGUF under a 7 GiB cap) is then read from disk once per decode instead of once
per probe. Weights stay memory-mapped (mmap on, mlock off).

Why probes start on a 16-cell boundary (padding tokens of a sequence of their own fill the gaps):
ggml sums attention rows in groups of 16 lanes (softmax, and the V product over the KV axis),
so a sequence shifted by a non-multiple of 16 cells sums in a different order and its logits
move in the last bits. Aligned, every probe's logits equal a decode of that probe alone on the
demo (tests/test_llama_batch_eval.py), and check.json is unchanged.

Weights that llama.cpp repacks for this CPU at load (Q4_K, Q4_0, IQ4_NL... into a "CPU_REPACK"
buffer, as every llama.cpp deployment on this machine does) take another kernel path: rows of a
batch are quantized and multiplied in groups of four, and the last `n % 4` rows one by one, with
different rounding. A probe alone ends its batch, so its last rows take the one-by-one path; to
give the same bits, a model with repacked weights gets one decode per probe whose length is not
a multiple of four, that probe last, the others (multiples of four, aligned) beside it. Repacked
weights live in memory (llama.cpp copied them at load), so more decodes read nothing again.
"""

from __future__ import annotations

import ctypes
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.checks.eval_set import Probe

ALIGN = 16  # KV cells: see above
TAIL = 4  # rows a repacked matrix product takes at a time: see above
PLAIN_BUFFERS = {"CPU", "CPU_Mapped"}  # weights used as stored (mapped from the file or read into memory)
MAX_TOKENS = 512  # per decode, padding included: bounds the attention scores and the logits buffer


@dataclass(frozen=True)
class Slot:
    token: int
    pos: int
    seq: int
    output: bool


def plan(probes: list[Probe], max_tokens: int = MAX_TOKENS,
         exact_tails: bool = False) -> list[tuple[list[int], list[Slot]]]:
    """Decodes: (probe indices, batch slots). A probe longer than `max_tokens` gets a decode of its own.

    In a decode of n probes, probe k is sequence k; padding is sequence n, one causal sequence
    with positions 0, 1, 2, ... (it attends only to itself, and its logits are not computed).
    `exact_tails`: every probe whose length is not a multiple of TAIL ends a decode (see above).
    """
    groups: list[list[int]] = []
    if exact_tails:
        tails = [i for i, p in enumerate(probes) if len(p.ids) % TAIL]
        rest = [i for i, p in enumerate(probes) if not len(p.ids) % TAIL]
        for last in tails:
            group, used = [], _aligned(len(probes[last].ids))
            while rest and used + _aligned(len(probes[rest[0]].ids)) <= max_tokens:
                used += _aligned(len(probes[rest[0]].ids))
                group.append(rest.pop(0))
            groups.append([*group, last])
        order = rest
    else:
        order = list(range(len(probes)))
    current: list[int] = []
    for index in order:
        if current and sum(_aligned(len(probes[i].ids)) for i in current) + len(probes[index].ids) > max_tokens:
            groups.append(current)
            current = []
        current.append(index)
    if current:
        groups.append(current)
    return [(members, _slots([probes[i] for i in members])) for members in groups]


def _aligned(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def _slots(members: list[Probe]) -> list[Slot]:
    slots: list[Slot] = []
    pad = 0
    for seq, probe in enumerate(members):
        while len(slots) % ALIGN:
            slots.append(Slot(members[0].ids[0], pad, len(members), False))
            pad += 1
        slots += [Slot(t, pos, seq, True) for pos, t in enumerate(probe.ids)]
    return slots


def load(gguf: Path, n_ctx: int) -> tuple[Any, bool]:
    """Open a GGUF (mmap on, mlock off) and say whether llama.cpp repacked any of its weights.

    llama.cpp reports each weight buffer at load ("CPU_Mapped model buffer size = ...", and
    "CPU_REPACK ..." or another extra buffer type when it converted weights for this CPU); that
    report is read from its log, which is otherwise silent here (errors still go to stderr).
    """
    import sys

    import llama_cpp
    from llama_cpp import _logger

    from tasks.checks import parity

    lines: list[str] = []

    @llama_cpp.llama_log_callback
    def capture(level: int, text: bytes, _user: Any) -> None:
        lines.append(text.decode("utf-8", "replace"))
        if level == 3:
            print(lines[-1], end="", file=sys.stderr)

    llama_cpp.llama_log_set(capture, ctypes.c_void_p(0))
    try:
        llm = parity.open_llama(gguf, n_ctx, logits_all=False)
    finally:
        llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))
    buffers = set(re.findall(r"(\S+) model buffer size", "".join(lines)))
    return llm, bool(buffers - PLAIN_BUFFERS)


def batched_logits(llm: Any, probes: list[Probe], exact_tails: bool = False,
                   max_tokens: int = MAX_TOKENS, loras: tuple[tuple[Any, float], ...] = ()) -> list[Any]:
    """Logits (positions x vocabulary, float32) of every probe, from as few decodes as `max_tokens` allows.

    `llm` is an open llama_cpp.Llama: its model is reused (loaded once, also for tokenizer
    parity); the decodes get a context of their own with the same settings but sized for the batch.
    `exact_tails` as `load` says for this model (repacked weights: see the module's docstring).
    `loras`: (llama_adapter_lora_init's adapter, scale) pairs applied to every decode (adapter mode).
    """
    import llama_cpp
    import numpy as np

    model = llm._model.model
    n_vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(model))
    out: list[Any] = [None] * len(probes)
    for members, slots in plan(probes, max_tokens, exact_tails):
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
        if loras:
            adapters = (llama_cpp.llama_adapter_lora_p_ctypes * len(loras))(*(a for a, _ in loras))
            scales = (ctypes.c_float * len(loras))(*(s for _, s in loras))
            if llama_cpp.llama_set_adapters_lora(ctx, adapters, len(loras), scales) != 0:
                llama_cpp.llama_free(ctx)
                raise RuntimeError("llama.cpp refused to apply the LoRA adapter to this context")
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
