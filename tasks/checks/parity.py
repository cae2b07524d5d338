"""Opening GGUFs in llama.cpp for the check, with its native chatter sent to the stage log.

The check's logits come from float32 transformers (tasks/layerwise_reference.py) and from all
probes of a GGUF in one decode (tasks/llama_batch_eval.py). The thread count is pinned: figures
must not depend on the machine's core count.
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


def context_size(probes: list[Probe]) -> int:
    longest = max(len(p.ids) for p in probes)
    return max(64, -(-longest // 64) * 64)


def open_llama(gguf: Path, n_ctx: int, logits_all: bool = True, vocab_only: bool = False) -> Any:
    import llama_cpp

    return llama_cpp.Llama(
        str(gguf), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, logits_all=logits_all, vocab_only=vocab_only,
        n_threads=THREADS, n_threads_batch=THREADS, verbose=False,
    )
