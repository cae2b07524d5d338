"""Exclusive, blocking, process-wide locks on lock files (flock): one implementation for every lock.

The holder's pid is written into the file, so a second build waiting on a stage can say who it
waits for. The lock is released when the block ends or the process dies (the kernel drops it).
Children started through tasks.core.procs inherit the held locks (`held_fds`): an orphan still
writing a stage's outputs keeps that stage locked until it is gone.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
from collections.abc import Iterator
from pathlib import Path

_held: list[int] = []


def held_fds() -> tuple[int, ...]:
    """File descriptors of the locks this process holds now (passed on to its children)."""
    return tuple(_held)


@contextlib.contextmanager
def exclusive(path: Path, waiting_for: str | None = None) -> Iterator[None]:
    """Hold `path` exclusively for the block. With `waiting_for` (what the lock guards, e.g. a task
    name), a blocked caller first prints one line naming the holder's pid."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if waiting_for is not None:
                fh.seek(0)
                holder = fh.read().strip() or "?"
                print(f"modelmake: {waiting_for}: another build (pid {holder}) holds {path}; waiting", file=sys.stderr)
            fcntl.flock(fh, fcntl.LOCK_EX)
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        _held.append(fh.fileno())
        try:
            yield
        finally:
            _held.remove(fh.fileno())
            fcntl.flock(fh, fcntl.LOCK_UN)
