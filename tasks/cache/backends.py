"""Cache backends: a directory (local or network mount), and how a CacheSpec opens one.

Every backend offers the same four operations; `CacheUnavailable` (one line) means the cache could
not be read or written at all, and the build goes on without it.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import uuid
from concurrent.futures import ThreadPoolExecutor
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


def _kernel_copy(fdin: int, fdout: int, size: int) -> None:
    """Copy `size` bytes inside the kernel (copy_file_range, else sendfile), else through a buffer."""
    off = 0
    for call in ("copy_file_range", "sendfile", None):
        try:
            while off < size:
                if call == "copy_file_range":
                    n = os.copy_file_range(fdin, fdout, size - off, off, off)
                elif call == "sendfile":
                    os.lseek(fdout, off, os.SEEK_SET)
                    n = os.sendfile(fdout, fdin, off, size - off)
                else:
                    os.lseek(fdout, off, os.SEEK_SET)
                    n = os.write(fdout, os.pread(fdin, min(CHUNK, size - off), off))
                if n == 0:
                    return  # the source is shorter than it said: the size check refuses it
                off += n
            return
        except OSError as exc:
            if call is None or exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                raise


def copy_hashing(src: Path, dst: Path) -> tuple[str, int]:
    """Copy `src` to `dst` in the kernel while a second thread hashes the same open file: the restore
    verifies the very bytes it copies, in about the time of the copy alone (hashlib releases the GIL)."""
    with open(src, "rb", buffering=0) as fin, open(dst, "wb", buffering=0) as fout:
        fd = fin.fileno()
        size = os.fstat(fd).st_size

        def digest() -> tuple[str, int]:
            h, off = hashlib.sha256(), 0
            while chunk := os.pread(fd, CHUNK, off):
                h.update(chunk)
                off += len(chunk)
            return h.hexdigest(), off

        with ThreadPoolExecutor(max_workers=1) as pool:
            hashed = pool.submit(digest)
            _kernel_copy(fd, fout.fileno(), size)
            sha, n = hashed.result()
    return sha, min(n, dst.stat().st_size)


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
        def one(sha: str) -> tuple[str, tuple[str, int] | None]:
            try:
                rec = copy_hashing(self.root / blob_rel(sha), dest / sha)
            except FileNotFoundError:
                return sha, None
            atomic.fsync_path(dest / sha)  # here, overlapping the next copy; the rename into place is then cheap
            return sha, rec

        with ThreadPoolExecutor(max_workers=2) as pool:
            got = {sha: rec for sha, rec in pool.map(one, shas) if rec is not None}
        self.moved += sum(size for _sha, size in got.values())
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
