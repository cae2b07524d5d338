"""File operations under a directory we do not own, that never follow a link planted in it.

Deploying writes into a user's LM Studio directory, where anything may already sit, including
a symlink someone planted (`models/modelmake -> /etc`). Every path below the root is opened one
component at a time with O_NOFOLLOW relative to its parent's descriptor, and every change is a
create-exclusive temp + rename or a rename inside those descriptors, so no write, read or
delete ever goes through a link found under the root (the root itself is the user's choice).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tasks.core.errors import UserError

Rel = tuple[str, ...]
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


def rel(*parts: str) -> Rel:
    for p in parts:
        if not p or p in (".", "..") or "/" in p or "\x00" in p:
            raise UserError(f"unsafe path component {p!r}")
    return tuple(parts)


class SafeRoot:
    def __init__(self, root: Path) -> None:
        try:
            root.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):  # `root` or one of its parents is a file
            raise UserError(f"{root}: not a directory (expected a directory to install into)") from None
        except OSError as exc:
            raise UserError(f"{root}: cannot create it: {exc.strerror}") from None
        self.root = root.resolve()

    def show(self, r: Rel) -> str:
        return str(self.root.joinpath(*r))

    @contextlib.contextmanager
    def dir(self, r: Rel, create: bool = False) -> Iterator[int | None]:
        """A descriptor of directory `r` (None if missing and not `create`), links refused."""
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for i, part in enumerate(r):
                try:
                    nfd = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        os.close(fd)
                        fd = -1
                        yield None
                        return
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(part, 0o755, dir_fd=fd)
                    nfd = self._open_component(fd, part, r[:i + 1])
                except OSError as exc:
                    raise self._refuse(r[:i + 1], exc) from None
                os.close(fd)
                fd = nfd
            yield fd
        finally:
            if fd >= 0:
                os.close(fd)

    def _open_component(self, fd: int, part: str, shown: Rel) -> int:
        try:
            return os.open(part, _DIR_FLAGS, dir_fd=fd)
        except OSError as exc:
            raise self._refuse(shown, exc) from None

    def _refuse(self, r: Rel, exc: OSError) -> UserError:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
            return UserError(f"{self.show(r)}: is a symbolic link or not a directory; refusing to follow it "
                             f"(nothing is written through links inside {self.root})")
        return UserError(f"{self.show(r)}: {exc.strerror}")

    def lstat(self, r: Rel) -> os.stat_result | None:
        with self.dir(r[:-1]) as fd:
            if fd is None:
                return None
            try:
                return os.lstat(r[-1], dir_fd=fd)
            except FileNotFoundError:
                return None

    def readlink(self, r: Rel) -> str | None:
        st = self.lstat(r)
        if st is None or not stat.S_ISLNK(st.st_mode):
            return None
        with self.dir(r[:-1]) as fd:
            return os.readlink(r[-1], dir_fd=fd)

    def read_bytes(self, r: Rel) -> bytes | None:
        """A regular file's bytes (None if missing, a link or not a regular file)."""
        with self.dir(r[:-1]) as d:
            if d is None:
                return None
            try:
                fd = os.open(r[-1], os.O_RDONLY | os.O_NOFOLLOW, dir_fd=d)
            except (FileNotFoundError, OSError):
                return None
            with os.fdopen(fd, "rb") as fh:
                if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                    return None
                return fh.read()

    def sha256(self, r: Rel) -> str | None:
        with self.dir(r[:-1]) as d:
            if d is None:
                return None
            try:
                fd = os.open(r[-1], os.O_RDONLY | os.O_NOFOLLOW, dir_fd=d)
            except OSError:
                return None
            h = hashlib.sha256()
            with os.fdopen(fd, "rb") as fh:
                if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                    return None
                while chunk := fh.read(4 << 20):
                    h.update(chunk)
            return h.hexdigest()

    @contextlib.contextmanager
    def _replace(self, r: Rel) -> Iterator[Any]:
        """A file opened under a temporary name in r's directory (never through a link), fsynced and
        renamed over r when the block succeeds, removed when it fails."""
        with self.dir(r[:-1], create=True) as d:
            tmp = self._temp()
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644, dir_fd=d)
            try:
                with os.fdopen(fd, "wb") as fh:
                    yield fh
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, r[-1], src_dir_fd=d, dst_dir_fd=d)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp, dir_fd=d)

    def _temp(self) -> str:
        return f".modelmake.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"  # tasks.core.atomic's scheme

    def write_bytes(self, r: Rel, data: bytes) -> None:
        with self._replace(r) as fh:
            fh.write(data)

    def copy_file(self, r: Rel, source: Path) -> None:
        with self._replace(r) as out, open(source, "rb") as src:
            while chunk := src.read(4 << 20):
                out.write(chunk)

    def symlink(self, r: Rel, target: Path) -> None:
        with self.dir(r[:-1], create=True) as d:
            tmp = self._temp()
            os.symlink(str(target), tmp, dir_fd=d)
            try:
                os.replace(tmp, r[-1], src_dir_fd=d, dst_dir_fd=d)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp, dir_fd=d)

    def move(self, src: Rel, dst: Rel) -> bool:
        """Rename entry `src` (file, link: never followed) to `dst`; False if `src` is missing."""
        with self.dir(src[:-1]) as sd:
            if sd is None:
                return False
            with self.dir(dst[:-1], create=True) as dd:
                try:
                    st = os.lstat(src[-1], dir_fd=sd)
                except FileNotFoundError:
                    return False
                if stat.S_ISDIR(st.st_mode):
                    raise UserError(f"{self.show(src)}: is a directory where modelmake expects a file")
                os.replace(src[-1], dst[-1], src_dir_fd=sd, dst_dir_fd=dd)
                return True

    def unlink(self, r: Rel) -> None:
        with self.dir(r[:-1]) as d:
            if d is None:
                return
            with contextlib.suppress(FileNotFoundError):
                st = os.lstat(r[-1], dir_fd=d)
                if stat.S_ISDIR(st.st_mode):
                    raise UserError(f"{self.show(r)}: is a directory where modelmake expects a file")
                os.unlink(r[-1], dir_fd=d)

    def listdir(self, r: Rel) -> list[str]:
        with self.dir(r) as d:
            return [] if d is None else sorted(os.listdir(d))

    def remove_tree(self, r: Rel) -> None:
        """Delete directory `r` and what is in it, unlinking (never following) links."""
        with self.dir(r) as d:
            if d is None:
                return
            self._clear(d)
        with self.dir(r[:-1]) as parent:
            if parent is not None:
                os.rmdir(r[-1], dir_fd=parent)

    def _clear(self, d: int) -> None:
        for name in os.listdir(d):
            st = os.lstat(name, dir_fd=d)
            if stat.S_ISDIR(st.st_mode):
                sub = os.open(name, _DIR_FLAGS, dir_fd=d)
                try:
                    self._clear(sub)
                finally:
                    os.close(sub)
                os.rmdir(name, dir_fd=d)
            else:
                os.unlink(name, dir_fd=d)
