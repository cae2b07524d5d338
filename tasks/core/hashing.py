"""SHA256 of files and directories, cached by (path, size, mtime_ns, ctime_ns, inode).

A no-op build must not re-read gigabytes, so a file whose stat key is unchanged reuses its
recorded digest (DVC's idea). A file restored from a cache gets a new mtime and inode: its
digest is recomputed once, which is exactly the verification a restore needs.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
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
    """Persistent path -> digest cache in SQLite (safe with concurrent builds)."""

    def __init__(self, db_path: Path) -> None:
        db_path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(db_path, timeout=30, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS digests_v2 "
            "(path TEXT PRIMARY KEY, size INT, mtime_ns INT, ctime_ns INT, ino INT, sha256 TEXT)"
        )

    def lookup(self, path: Path, st: os.stat_result) -> str | None:
        with self._lock:
            row = self._db.execute(
                "SELECT size, mtime_ns, ctime_ns, ino, sha256 FROM digests_v2 WHERE path = ?", (str(path),)
            ).fetchone()
        if row and tuple(row[:4]) == _stat_key(st):
            return row[4]
        return None

    def store(self, path: Path, st: os.stat_result, digest: str) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO digests_v2 VALUES (?, ?, ?, ?, ?, ?)", (str(path), *_stat_key(st), digest)
            )

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
