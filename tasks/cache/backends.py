"""Cache backends: a directory (local or network mount), and how a CacheSpec opens one.

Every backend offers the same four operations; `CacheUnavailable` (one line) means the cache could
not be read or written at all, and the build goes on without it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import uuid
from pathlib import Path

from tasks.core import atomic
from tasks.core.config.cache import CacheSpec
from tasks.core.hashing import CHUNK


class CacheUnavailable(Exception):
    """The cache cannot be reached or written (one line); the stage builds locally."""


def entry_rel(key: str) -> str:
    return f"entries/{key[:2]}/{key}.json"


def blob_rel(sha: str) -> str:
    return f"blobs/{sha[:2]}/{sha}"


def copy_hashing(src: Path, dst: Path) -> tuple[str, int]:
    """Copy `src` to `dst` and hash the bytes on the way: one read serves both (restore verifies)."""
    h = hashlib.sha256()
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    size = 0
    with open(src, "rb", buffering=0) as fin, open(dst, "wb", buffering=0) as fout:
        while n := fin.readinto(buf):
            h.update(view[:n])
            fout.write(view[:n])
            size += n
    return h.hexdigest(), size


class Backend:
    """What the restore and push code needs from a storage. `moved` counts bytes transferred."""

    url: str
    moved: int = 0

    def read_entry(self, key: str) -> bytes | None:
        """The entry's bytes, or None when the cache does not hold the key."""
        raise NotImplementedError

    def fetch(self, shas: list[str], dest: Path) -> dict[str, tuple[str, int]]:
        """Write each blob to dest/<sha>; return sha -> (digest, size) for blobs hashed while copied.
        A missing blob is simply not written (the caller refuses the entry)."""
        raise NotImplementedError

    def missing(self, shas: list[str]) -> set[str]:
        """The blobs among `shas` the cache does not hold."""
        raise NotImplementedError

    def upload(self, blobs: dict[str, Path], key: str, entry: bytes) -> None:
        """Upload `blobs` (sha -> local file), each under a temporary name then renamed, then the entry."""
        raise NotImplementedError


class DirBackend(Backend):
    """A directory: local disk, NFS/SMB mount, or the run-cache under artifacts/.cache/runs/.

    `link` (the run-cache) hard-links outputs instead of copying them: outputs are only ever replaced
    by rename, never rewritten in place, so the cached inode keeps the old bytes (and a restore
    verifies them anyway). A linked blob is always re-linked, so a blob damaged through its artifact
    is replaced by the next build's good one."""

    def __init__(self, root: Path, url: str | None = None, link: bool = False) -> None:
        self.root = root
        self.url = url or str(root)
        self.link = link
        self.moved = 0

    def read_entry(self, key: str) -> bytes | None:
        path = self.root / entry_rel(key)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise CacheUnavailable(f"cannot read {path}: {exc.strerror}") from None
        with contextlib.suppress(OSError):
            os.utime(path)  # LRU: a hit makes the entry recent
        return data

    def fetch(self, shas: list[str], dest: Path) -> dict[str, tuple[str, int]]:
        got = {}
        for sha in shas:
            src = self.root / blob_rel(sha)
            try:
                got[sha] = copy_hashing(src, dest / sha)
            except FileNotFoundError:
                continue
            self.moved += got[sha][1]
        return got

    def missing(self, shas: list[str]) -> set[str]:
        if self.link:
            return set(shas)
        return {s for s in shas if not (self.root / blob_rel(s)).is_file()}

    def upload(self, blobs: dict[str, Path], key: str, entry: bytes) -> None:
        tmpdir = self.root / "tmp"
        try:
            tmpdir.mkdir(parents=True, exist_ok=True)
            for sha, src in blobs.items():
                final = self.root / blob_rel(sha)
                final.parent.mkdir(parents=True, exist_ok=True)
                tmp = tmpdir / f"{sha}.{os.getpid()}-{uuid.uuid4().hex[:8]}"
                try:
                    if self.link:
                        try:
                            os.link(src, tmp)
                        except OSError:
                            shutil.copyfile(src, tmp)
                    else:
                        shutil.copyfile(src, tmp)
                        atomic.fsync_path(tmp)
                        self.moved += tmp.stat().st_size
                    os.replace(tmp, final)
                finally:
                    with contextlib.suppress(FileNotFoundError):
                        tmp.unlink()
            final = self.root / entry_rel(key)
            final.parent.mkdir(parents=True, exist_ok=True)
            tmp = tmpdir / f"{key}.json.{os.getpid()}-{uuid.uuid4().hex[:8]}"
            tmp.write_bytes(entry)
            atomic.fsync_path(tmp)
            os.replace(tmp, final)  # last: from now on readers find a complete entry
        except OSError as exc:
            raise CacheUnavailable(f"cannot write to {self.root}: {exc.strerror or exc}") from None


def open_backend(spec: CacheSpec) -> Backend:
    """The backend for one `[build] cache` entry (ssh and fsspec import their libraries only now)."""
    if spec.kind == "dir":
        assert spec.path is not None
        return DirBackend(spec.path)
    if spec.kind == "ssh":
        from tasks.cache.ssh_backend import SshBackend

        assert spec.ssh is not None
        return SshBackend(spec.ssh)
    from tasks.cache.fsspec_backend import FsspecBackend

    return FsspecBackend(spec.url, dict(spec.options))
