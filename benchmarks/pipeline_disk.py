"""This disk's sequential throughput, measured in the same run as the stages it is the limit of.

Read: every file given, page cache dropped first, in 16 MiB reads (what a stage that reads each
weight once at most could do). Write: a scratch file of `write_bytes` written in 16 MiB blocks
and fsynced (every stage's outputs are fsynced before they count as built). A stage's byte limit
is then bytes read / read throughput + bytes written / write throughput.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from pipeline_run import drop_page_cache

BLOCK = 16 * 1024**2


@dataclass(frozen=True)
class Disk:
    read_bps: float
    write_bps: float
    read_sample_bytes: int
    write_sample_bytes: int
    caches_dropped: bool

    def seconds(self, read: int, written: int) -> float:
        return read / self.read_bps + written / self.write_bps


def measure(read_files: list[Path], scratch: Path, write_bytes: int = 2 * 1024**3) -> Disk:
    dropped = drop_page_cache()
    total = 0
    start = time.perf_counter()
    for path in read_files:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
            while chunk := os.read(fd, BLOCK):
                total += len(chunk)
        finally:
            os.close(fd)
    read_s = time.perf_counter() - start
    block = os.urandom(BLOCK)  # incompressible, not all zeros
    start = time.perf_counter()
    with open(scratch, "wb") as fh:
        for _ in range(write_bytes // BLOCK):
            fh.write(block)
        fh.flush()
        os.fsync(fh.fileno())
    write_s = time.perf_counter() - start
    scratch.unlink()
    drop_page_cache()
    return Disk(total / read_s, write_bytes / write_s, total, write_bytes, dropped)
