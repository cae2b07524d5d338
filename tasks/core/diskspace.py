"""A full disk, said as such: which path, how much is free, how much was needed when known.

Without this a full disk surfaced as `OSError: [Errno 28]` tracebacks from our writes, as the
converter's own traceback, or as llama.cpp's `basic_ios::clear: iostream error` behind "failed to
quantize (exit 1)" with nothing saying the disk was full.
"""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

from tasks.core.errors import UserError

FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
NEARLY_FULL = 64 << 20  # below this, a failed write is taken as the disk being full


class DiskFull(UserError):
    """No space left where a stage writes: one line, exit 1 (not a configuration error)."""

    exit_code = 1


def free_bytes(path: Path) -> int:
    """Bytes available to us on the filesystem holding `path` (or its nearest existing parent)."""
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in FULL_ERRNOS or "database or disk is full" in str(exc)


def message(path: Path, needed: int | None = None, detail: str = "") -> str:
    """"disk full: <path>: no space left on the device (N free[, about M needed])[; detail]"."""
    need = f", about {human(needed)} needed" if needed else ""
    return f"disk full: {path}: no space left on the device ({human(free_bytes(path))} free{need})" + (
        f"; {detail}" if detail else "")


def check_after_failure(path: Path, log_text: str, needed: int | None = None, detail: str = "") -> None:
    """Raise DiskFull when a child's failure writing `path` was the disk filling up (its log says so,
    or it said only "iostream error" and the disk is now nearly full)."""
    said = "No space left on device" in log_text or "[Errno 28]" in log_text
    # gguf-py (the converter's writer) checks first: "Not enough free space to write N bytes after offset M"
    short = re.search(r"Not enough free space to write (\d+) bytes", log_text)
    if short:
        said, needed = True, int(short.group(1))
    io_error = "iostream error" in log_text or "failed to write" in log_text.lower()
    free = free_bytes(path)
    if said or (io_error and free < NEARLY_FULL) or free < (1 << 20):
        raise DiskFull(message(path, needed, detail))
