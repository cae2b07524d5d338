"""Derived state is disposable: a damaged digest cache, models.lock or manifest never stops a build."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pytest

from tasks.core.hashing import HashCache, sha256_file
from tasks.core.manifest import read_manifest, write_manifest


def filled_cache(db: Path, files: Path, n: int = 300) -> list[Path]:
    files.mkdir()
    paths = []
    for i in range(n):
        p = files / f"f{i}.bin"
        p.write_bytes(os.urandom(64))
        paths.append(p)
    cache = HashCache(db)
    for p in paths:
        cache.sha256(p)
    cache._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    cache._db.close()
    return paths


@pytest.mark.parametrize("damage", ["flipped byte", "garbage", "truncated"])
def test_unreadable_digest_cache_is_discarded_with_one_warning(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                               damage: str) -> None:
    """Before: one flipped byte in hashes.sqlite3 failed every build with sqlite3.DatabaseError."""
    db = tmp_path / ".cache" / "hashes.sqlite3"
    paths = filled_cache(db, tmp_path / "files")
    data = bytearray(db.read_bytes())
    if damage == "flipped byte":
        for at in range(4096 + 8, len(data), 4096):  # every b-tree page header after the first page
            data[at - 8] ^= 0xFF
    elif damage == "garbage":
        data[:100] = os.urandom(100)
    else:
        data = data[: len(data) // 3]
    db.write_bytes(bytes(data))
    capsys.readouterr()
    cache = HashCache(db)
    digests = [cache.sha256(p) for p in paths]
    assert digests == [sha256_file(p) for p in paths]
    warnings = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(warnings) == 1 and warnings[0].startswith(f"modelmake: warning: {db}: digest cache unreadable")
    assert "discarded" in warnings[0]
    (verdict,) = sqlite3.connect(db).execute("PRAGMA quick_check").fetchone()
    assert verdict == "ok", "the discarded cache was replaced by a working one"
    assert HashCache(db).lookup(paths[0].resolve(), paths[0].resolve().stat()) == digests[0]


def test_truncated_or_malformed_manifest_reads_as_not_built(tmp_path: Path) -> None:
    path = tmp_path / "convert.json"
    write_manifest(path, {"task": "convert:demo", "key": "k" * 64}, {"demo/demo-f16.gguf": {"sha256": "a" * 64,
                                                                                           "size": 3}})
    assert read_manifest(path) is not None
    text = path.read_bytes()
    path.write_bytes(text[: len(text) // 2])
    assert read_manifest(path) is None
    path.write_bytes(b"\xff" + text[1:])
    assert read_manifest(path) is None
    doc = json.loads(text)
    doc["outputs"]["demo/demo-f16.gguf"] = {"sha256": "a" * 64}  # no size: would be a KeyError downstream
    path.write_text(json.dumps(doc))
    assert read_manifest(path) is None


def test_damaged_lock_cache_and_manifest_never_stop_the_build(scratch_ws) -> None:
    """Before: a non-UTF-8 byte in models.lock, or one flipped byte in the digest cache, made every run
    exit 3 with a traceback. Now: one warning for the cache, the lock rewritten, only the stage whose
    manifest was truncated rebuilt (to the same bytes)."""
    lock = scratch_ws.root / "models.lock"
    clean_lock = lock.read_bytes()
    lock.write_bytes(b"\xff" + clean_lock[1:])
    db = scratch_ws.artifacts / ".cache" / "hashes.sqlite3"
    scratch_ws.doit()  # settle the cache (WAL checkpointed on close)
    data = bytearray(db.read_bytes())
    data[:16] = b"not a sqlite db!"
    db.write_bytes(bytes(data))
    manifest = scratch_ws.artifacts / "beta" / "manifests" / "quantize-q8_0.json"
    text = manifest.read_bytes()
    manifest.write_bytes(text[: len(text) // 2])
    run = scratch_ws.doit()
    assert run.returncode == 0
    assert run.executed == ["quantize:beta-q8_0"] or set(run.executed) <= {"quantize:beta-q8_0", "lock"}
    assert "quantize:beta-q8_0" in run.executed
    warnings = [ln for ln in (run.stdout + run.stderr).splitlines() if "digest cache unreadable" in ln]
    assert len(warnings) == 1, warnings
    assert lock.read_bytes() == clean_lock
    assert "Traceback" not in run.stdout + run.stderr
