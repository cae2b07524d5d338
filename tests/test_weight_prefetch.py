"""Read-ahead of memory-mapped weights: the next block's pages are in the page cache before it is used.

A real file, written and fsynced, is evicted from the page cache (posix_fadvise DONTNEED on that
one file; nothing global), mapped the way transformers maps safetensors (torch tensors over an
mmap), and handed to tasks.checks.prefetch.will_need; the kernel's own residency map (mincore)
must then show its pages resident, without the tensor having been touched. The range arithmetic
(page alignment, joining adjacent tensors) is checked on tensor views of one mapping.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
import time
from pathlib import Path

from tasks.checks.prefetch import ranges, will_need

SIZE = 8 * 1024**2


def _resident_fraction(address: int, length: int) -> float:
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    pages = (length + mmap.PAGESIZE - 1) // mmap.PAGESIZE
    vec = ctypes.create_string_buffer(pages)
    assert libc.mincore(address, length, vec) == 0, os.strerror(ctypes.get_errno())
    return sum(b & 1 for b in vec.raw) / pages


def _mapped_file(tmp_path: Path):
    import numpy as np
    import torch

    path = tmp_path / "weights.bin"
    with open(path, "wb") as fh:
        fh.write(os.urandom(SIZE))
        fh.flush()
        os.fsync(fh.fileno())
    fd = os.open(path, os.O_RDONLY)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)
    array = np.memmap(path, dtype=np.uint8, mode="r")
    return torch.from_numpy(np.asarray(array)), array


def test_will_need_brings_mapped_weights_into_the_page_cache(tmp_path: Path) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns that a read-only mapping is not writable
        tensor, keep = _mapped_file(tmp_path)
    before = _resident_fraction(tensor.data_ptr(), SIZE)
    thread = will_need([tensor])
    assert thread is not None
    thread.join()
    for _ in range(200):  # the reads are queued by the call and complete asynchronously
        after = _resident_fraction(tensor.data_ptr(), SIZE)
        if after == 1.0:
            break
        os.sched_yield()
        time.sleep(0.01)
    assert before < 0.5, f"the file was not evicted before the test ({before:.0%} resident)"
    assert after == 1.0, f"{after:.0%} of the pages resident after will_need"
    del keep


def test_ranges_are_page_aligned_and_adjacent_tensors_joined(tmp_path: Path) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tensor, keep = _mapped_file(tmp_path)
    base, page = tensor.data_ptr(), mmap.PAGESIZE
    a, b, far = tensor[100:5000], tensor[5000:9000], tensor[3 * page + 10:3 * page + 20]
    assert ranges([b, a, far]) == [(base, 9000), (base + 3 * page, 20)]
    assert ranges([tensor[0:0]]) == []
    del keep
