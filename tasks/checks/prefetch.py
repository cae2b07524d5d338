"""Ask the kernel to start reading a block's weights before the block is reached.

Why: the layer-by-layer reference (tasks.checks.lockstep) widens one block at a time from
weights that transformers keeps memory-mapped from the safetensors files. With the page cache
dropped (a 7 GiB runner, a model larger than the cache) every block is then read by page faults,
in the kernel's small fault-readahead windows, while the CPU waits, and the CPU sits idle while
the disk works. `will_need` hands the next blocks' address ranges to madvise(MADV_WILLNEED) in a
background thread: the kernel queues large reads of those file pages while the current block
computes, so reading and arithmetic overlap. It is advice only: nothing computed changes (the
same bytes are read, earlier), a range that is not file-backed (an adapter loaded into memory)
is ignored by the kernel, and where madvise is missing this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import threading
from collections.abc import Iterable
from typing import Any

_ADVICE = getattr(mmap, "MADV_WILLNEED", None)
_PAGE = mmap.PAGESIZE


def _madvise() -> Any:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        fn = libc.madvise
    except (OSError, AttributeError, TypeError):
        return None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


_MADVISE = _madvise() if _ADVICE is not None else None


def ranges(tensors: Iterable[Any]) -> list[tuple[int, int]]:
    """Page-aligned (start, length) of each tensor's bytes, adjacent or overlapping ranges joined."""
    spans = sorted((t.data_ptr(), t.data_ptr() + t.numel() * t.element_size()) for t in tensors if t.numel())
    out: list[list[int]] = []
    for lo, hi in spans:
        lo &= ~(_PAGE - 1)
        if out and lo <= out[-1][1]:
            out[-1][1] = max(out[-1][1], hi)
        else:
            out.append([lo, hi])
    return [(lo, hi - lo) for lo, hi in out]


def will_need(tensors: Iterable[Any]) -> threading.Thread | None:
    """Start reading `tensors`' pages in the background; returns the thread (None: nothing to do).
    ctypes releases the GIL for the call, so the forward pass goes on while the kernel queues the reads."""
    spans = ranges(tensors)
    if _MADVISE is None or not spans:
        return None

    def advise() -> None:
        for start, length in spans:
            _MADVISE(start, length, _ADVICE)  # errors ignored: it is advice

    thread = threading.Thread(target=advise, name="modelmake-prefetch", daemon=True)
    thread.start()
    return thread
