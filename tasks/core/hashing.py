"""SHA256 of files and directories, cached by (path, size, mtime_ns, ctime_ns, inode).

A no-op build must not re-read gigabytes, so a file whose stat key is unchanged reuses its
recorded digest (DVC's idea). A file restored from a cache gets a new mtime and inode: its
digest is recomputed once, which is exactly the verification a restore needs.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
import sys
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tasks.core.layout import ArtifactLayout

CHUNK = 4 << 20  # large reads keep hashlib (which releases the GIL) near disk speed


def sha256_file(path: Path) -> str:
    """Digest of one file, read in large chunks without caching."""
    h = hashlib.sha256()
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _stat_key(st: os.stat_result) -> tuple[int, int, int, int]:
    # ctime too: any write changes it and, unlike mtime, no tool can set it back.
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


class HashCache:
    """Persistent path -> digest cache in SQLite (safe with concurrent builds).

    Derived state, so it can never stop a build: a database that cannot be read (a flipped byte,
    a truncated file, not SQLite at all) is discarded with one warning line and started afresh,
    and where it cannot be written at all (artifacts/ read-only) digests are kept in memory only.
    """

    def __init__(self, db_path: Path) -> None:
        self.path = db_path
        self._lock = threading.Lock()
        self._db = self._open()

    def _open(self) -> sqlite3.Connection:
        try:
            return self._connect(self.path, check=True)
        except sqlite3.DatabaseError as exc:
            return self._replace(exc)

    def _replace(self, exc: sqlite3.DatabaseError) -> sqlite3.Connection:
        """A fresh database in place of one that failed with `exc` (in memory if none can be written)."""
        if "disk is full" in str(exc):
            _warn(f"{self.path}: disk full; file digests are kept in memory for this run")
            return self._connect(Path(":memory:"), check=False)
        if self._unwritable():
            _warn(f"{self.path.parent}: not writable ({exc}); file digests are kept in memory for this run")
            return self._connect(Path(":memory:"), check=False)
        _warn(f"{self.path}: digest cache unreadable ({exc}); discarded, it is rebuilt as files are hashed")
        self._discard()
        try:
            return self._connect(self.path, check=False)
        except sqlite3.DatabaseError as again:
            _warn(f"{self.path}: cannot recreate the digest cache ({again}); file digests are kept in memory")
            return self._connect(Path(":memory:"), check=False)

    def _connect(self, path: Path, check: bool) -> sqlite3.Connection:
        if str(path) != ":memory:":
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise sqlite3.OperationalError(f"cannot create {path.parent}: {exc.strerror}") from None
        db = sqlite3.connect(path, timeout=30, check_same_thread=False, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(
                "CREATE TABLE IF NOT EXISTS digests_v2 "
                "(path TEXT PRIMARY KEY, size INT, mtime_ns INT, ctime_ns INT, ino INT, sha256 TEXT)"
            )
            if check:  # a few KB per thousand files: cheap, and it finds damaged pages before a lookup does
                (verdict,) = db.execute("PRAGMA quick_check").fetchone()
                if verdict != "ok":
                    raise sqlite3.DatabaseError(verdict)
        except BaseException:
            db.close()
            raise
        return db

    def _unwritable(self) -> bool:
        directory = self.path.parent
        while not directory.exists() and directory != directory.parent:
            directory = directory.parent
        return not os.access(directory, os.W_OK) or (self.path.exists() and not os.access(self.path, os.W_OK))

    def _discard(self) -> None:
        for suffix in ("", "-wal", "-shm", "-journal"):
            with contextlib.suppress(OSError):
                Path(f"{self.path}{suffix}").unlink()

    def _query(self, sql: str, args: tuple[object, ...]) -> tuple[object, ...] | None:
        """Run one statement; a database damaged while in use is replaced once, then tried again."""
        with self._lock:
            for attempt in (1, 2):
                try:
                    return self._db.execute(sql, args).fetchone()
                except sqlite3.DatabaseError as exc:
                    if attempt == 2:
                        raise
                    self._db.close()
                    self._db = self._replace(exc)
            return None

    def lookup(self, path: Path, st: os.stat_result) -> str | None:
        row = self._query("SELECT size, mtime_ns, ctime_ns, ino, sha256 FROM digests_v2 WHERE path = ?", (str(path),))
        if row and tuple(row[:4]) == _stat_key(st):
            return str(row[4])
        return None

    def store(self, path: Path, st: os.stat_result, digest: str) -> None:
        self._query("INSERT OR REPLACE INTO digests_v2 VALUES (?, ?, ?, ?, ?, ?)", (str(path), *_stat_key(st), digest))

    def store_many(self, items: Iterable[tuple[Path, os.stat_result, str]]) -> None:
        """Several digests in one transaction: one WAL commit instead of one per file (a cache restore
        records every file it verified)."""
        rows = [(str(p), *_stat_key(st), digest) for p, st, digest in items]
        with self._lock:
            self._db.execute("BEGIN")
            try:
                self._db.executemany("INSERT OR REPLACE INTO digests_v2 VALUES (?, ?, ?, ?, ?, ?)", rows)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def sha256(self, path: Path) -> str:
        """Digest of `path`, from the cache when its stat key is unchanged."""
        path = path.resolve()
        st = path.stat()
        cached = self.lookup(path, st)
        if cached is not None:
            return cached
        digest = sha256_file(path)
        # Re-stat: a file rewritten while we read it must not be cached under the old key.
        if _stat_key(path.stat()) == _stat_key(st):
            self.store(path, st, digest)
        return digest

    def sha256_many(self, paths: Iterable[Path], workers: int = 2) -> dict[Path, str]:
        """Digests of several files; misses are hashed in parallel (hashlib releases the GIL)."""
        paths = list(paths)
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            return dict(zip(paths, pool.map(self.sha256, paths), strict=True))

    def tree_sha256(self, directory: Path) -> str:
        """One digest for a directory: its files' relative paths and digests, sorted."""
        files = sorted(p for p in directory.rglob("*") if p.is_file() and not _is_hidden(p, directory))
        digests = self.sha256_many(files)
        lines = "".join(f"{digests[p]}  {p.relative_to(directory).as_posix()}\n" for p in files)
        return sha256_bytes(lines.encode())


def _warn(message: str) -> None:
    print(f"modelmake: warning: {message}", file=sys.stderr, flush=True)


def _is_hidden(path: Path, root: Path) -> bool:
    """Dot-files (temporaries, locks, our sidecars) are not part of a directory's content."""
    return any(part.startswith(".") for part in path.relative_to(root).parts)


_caches: dict[Path, HashCache] = {}


def cache_for(artifacts: Path) -> HashCache:
    """The process-wide cache of one artifacts root."""
    db = ArtifactLayout(artifacts).hash_db()
    if db not in _caches:
        _caches[db] = HashCache(db)
    return _caches[db]
