"""Digests are cached by stat key, so a no-op build does not re-read files, but any write is seen."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from tasks.core import hashing
from tasks.core.hashing import HashCache


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    reads: list[Path] = []
    real = hashing.sha256_file

    def counting(path: Path) -> str:
        reads.append(path)
        return real(path)

    monkeypatch.setattr(hashing, "sha256_file", counting)
    return reads


def test_unchanged_file_is_not_read_again(tmp_path: Path, counted: list[Path]) -> None:
    f = tmp_path / "a.bin"
    f.write_bytes(os.urandom(1 << 20))
    cache = HashCache(tmp_path / "c.sqlite3")
    assert cache.sha256(f) == hashlib.sha256(f.read_bytes()).hexdigest()
    assert HashCache(tmp_path / "c.sqlite3").sha256(f) == cache.sha256(f)  # persisted across instances
    assert len(counted) == 1


def test_write_with_restored_mtime_is_detected(tmp_path: Path) -> None:
    f = tmp_path / "a.bin"
    f.write_bytes(b"x" * 4096)
    cache = HashCache(tmp_path / "c.sqlite3")
    first = cache.sha256(f)
    st = f.stat()
    with open(f, "r+b") as fh:
        fh.seek(100)
        fh.write(b"y")
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert f.stat().st_mtime_ns == st.st_mtime_ns and f.stat().st_size == st.st_size
    assert cache.sha256(f) != first


def test_tree_digest_ignores_hidden_temporaries(tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    (d / "w.bin").write_bytes(b"weights")
    cache = HashCache(tmp_path / "c.sqlite3")
    before = cache.tree_sha256(d)
    (d / ".w.bin.tmp-1-abc").write_bytes(b"partial")
    assert cache.tree_sha256(d) == before
    (d / "extra.json").write_text("{}")
    assert cache.tree_sha256(d) != before


def test_parallel_digests_match_sequential(tmp_path: Path) -> None:
    files = []
    for i in range(5):
        f = tmp_path / f"{i}.bin"
        f.write_bytes(os.urandom(300_000 + i))
        files.append(f)
    cache = HashCache(tmp_path / "c.sqlite3")
    assert cache.sha256_many(files) == {f: hashlib.sha256(f.read_bytes()).hexdigest() for f in files}
