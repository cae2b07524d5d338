"""Write-then-rename helpers: nothing half-written is ever visible under its final name.

Like huggingface_hub's `.incomplete` downloads: bytes go to a hidden temporary name in the
same directory, are fsynced, then renamed over the target, and the directory is fsynced so
the rename itself survives a crash.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

# Crash-point hook (tests/test_crash_points.py): MODELMAKE_CRASH_TRACE=<file> appends one line per
# write, fsync and rename made through this module; MODELMAKE_CRASH_AT=<n> SIGKILLs the process at the
# n-th. Unset (always, outside that test), each point costs one dictionary lookup.
_points = 0


def crash_point(what: str, path: Path) -> None:
    """One point where a kill must leave nothing that counts as built (see the comment above)."""
    global _points
    trace, at = os.environ.get("MODELMAKE_CRASH_TRACE"), os.environ.get("MODELMAKE_CRASH_AT")
    if trace is None and at is None:
        return
    _points += 1
    if trace:
        with open(trace, "a", encoding="utf-8") as fh:
            fh.write(f"{_points} {what} {path.name}\n")
    if at and _points == int(at):
        os.kill(os.getpid(), signal.SIGKILL)


TEMP_MARK = ".tmp-"  # every temporary this project writes is `.<name>.tmp-<owner pid>-<random>`


def temp_name(final: Path) -> Path:
    """A hidden sibling of `final`, unique per call, recognisable as ours for clean-up.

    The one naming scheme of every temporary we write (outputs, manifests, sidecars, models.lock,
    fetched files): the owner's pid in the name is what lets `remove_stale_temps` tell debris of a
    killed build from the work of a live one."""
    return final.with_name(f".{final.name}{TEMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}")


def temp_owner(path: Path) -> int | None:
    """The pid in one of our temporary names, or None when the name is not ours."""
    name = path.name
    if not name.startswith(".") or TEMP_MARK not in name:
        return None
    try:
        return int(name.rsplit(TEMP_MARK, 1)[1].split("-")[0])
    except (IndexError, ValueError):
        return None


def fsync_path(path: Path) -> None:
    crash_point("fsync", path)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            fsync_path(Path(dirpath) / name)
        fsync_path(Path(dirpath))


@contextlib.contextmanager
def _naming(final: Path) -> Iterator[None]:
    """A write that fails without saying where (ENOSPC from write(), fsync) names the artifact."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None and exc.errno is not None:
            raise OSError(exc.errno, exc.strerror, str(final)) from exc
        raise


@contextlib.contextmanager
def atomic_file(final: Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces `final`, on error it is removed."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(final)
    try:
        with _naming(final):
            yield tmp
            crash_point("written", tmp)
            fsync_path(tmp)
            crash_point("rename", final)
            os.replace(tmp, final)
            fsync_path(final.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_bytes(final: Path, data: bytes) -> None:
    with atomic_file(final) as tmp:
        tmp.write_bytes(data)


def write_text(final: Path, text: str) -> None:
    write_bytes(final, text.encode("utf-8"))


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield an empty temporary directory that replaces `final` as a whole on success."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(final)
    with _naming(final):
        tmp.mkdir()
    try:
        with _naming(final):
            yield tmp
            crash_point("written", tmp)
            fsync_tree(tmp)
        old = None
        if final.exists() or final.is_symlink():
            old = temp_name(final)
            crash_point("rename-old", final)
            os.replace(final, old)
        crash_point("rename", final)
        os.replace(tmp, final)
        fsync_path(final.parent)
        if old is not None:
            if old.is_symlink():  # a directory output someone replaced by a link: drop the link only
                old.unlink()
            else:
                shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def remove_stale_temps(directory: Path, recursive: bool = False) -> list[Path]:
    """Delete temporaries left by a killed build (their owner pid is no longer running); return them.

    A live owner's temporaries are left alone (another build is writing them). With `recursive`,
    every directory below is swept too, except inside temporaries (removed whole or still in use)."""
    removed: list[Path] = []
    if not directory.is_dir():
        return removed
    dirs = [directory]
    while dirs:
        current = dirs.pop()
        try:
            entries = list(os.scandir(current))
        except OSError:
            continue  # unreadable or vanished: nothing of ours to remove there
        for entry in entries:
            path = Path(entry.path)
            pid = temp_owner(path)
            if pid is None:
                if recursive and entry.is_dir(follow_symlinks=False):
                    dirs.append(path)
                continue
            if pid == os.getpid() or _pid_alive(pid):
                continue
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            removed.append(path)
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
