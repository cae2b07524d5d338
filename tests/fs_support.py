"""Real filesystems with real limits for fault tests: a small tmpfs (a full disk), a read-only one.

Mounting needs root, as CI and the test machines run (see ssh_support.py); elsewhere the tests that
use these say so in one line instead of skipping."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path


def _mount(*args: str) -> None:
    if os.geteuid() != 0:
        raise RuntimeError("this test mounts a tmpfs (a real small or read-only filesystem): run it as root")
    subprocess.run(["mount", *args], check=True, capture_output=True)


@contextlib.contextmanager
def tmpfs(where: Path, size: int, keep: bool = True) -> Iterator[Path]:
    """Mount a tmpfs of `size` bytes on `where`; with `keep`, what was there is copied in first
    (and back out afterwards, so the workspace survives the test's clean-up)."""
    where = Path(where)
    aside = where.with_name(where.name + ".before-tmpfs")
    if keep and where.exists():
        where.rename(aside)
    where.mkdir(parents=True, exist_ok=True)
    _mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where))
    try:
        if keep and aside.exists():
            shutil.copytree(aside, where, symlinks=True, dirs_exist_ok=True)
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False, capture_output=True)
        if aside.exists():
            where.rmdir()
            aside.rename(where)


def resize(where: Path, size: int) -> None:
    _mount("-o", f"remount,size={size}", str(where))


def used(where: Path) -> int:
    st = os.statvfs(where)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


@contextlib.contextmanager
def read_only(where: Path) -> Iterator[Path]:
    """`where` made read-only for everyone, root included (a read-only bind mount of itself)."""
    _mount("--bind", str(where), str(where))
    try:
        _mount("-o", "remount,bind,ro", str(where))
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False, capture_output=True)
