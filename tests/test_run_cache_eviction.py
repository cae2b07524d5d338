"""The run-cache stays under its size bound by dropping the least recently used entries (no build needed)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from tasks.cache.backends import DirBackend, blob_rel, entry_rel
from tasks.cache.runs import evict


def put_entry(root: Path, name: str, blobs: dict[str, bytes], age: int) -> tuple[str, list[str]]:
    """An entry recording `blobs` (file name -> bytes), uploaded like a push, `age` seconds old."""
    key = hashlib.sha256(name.encode()).hexdigest()
    files, outputs = {}, {}
    for fname, data in blobs.items():
        sha = hashlib.sha256(data).hexdigest()
        src = root.parent / "src" / sha
        src.parent.mkdir(parents=True, exist_ok=True)
        src.write_bytes(data)
        files[sha] = src
        outputs[f"m/{fname}"] = {"sha256": sha, "size": len(data)}
    entry = json.dumps({"format": 1, "key": key, "task": f"x:{name}", "outputs": outputs}).encode()
    DirBackend(root).upload(files, key, entry)
    old = 1_000_000_000 - age
    os.utime(root / entry_rel(key), (old, old))
    return key, sorted(files)


def test_oldest_entries_go_first_and_shared_blobs_stay(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    shared = b"s" * 100
    k_old, old_blobs = put_entry(root, "old", {"a": b"a" * 400, "s": shared}, age=300)
    k_mid, _ = put_entry(root, "mid", {"b": b"b" * 400, "s": shared}, age=200)
    k_new, _ = put_entry(root, "new", {"c": b"c" * 400, "s": shared}, age=100)
    dropped = evict(root, max_bytes=1000)  # room for two entries sharing one blob: 400 + 400 + 100
    assert dropped == [k_old]
    assert not (root / entry_rel(k_old)).exists() and (root / entry_rel(k_mid)).exists()
    a_blob = [s for s in old_blobs if s != hashlib.sha256(shared).hexdigest()][0]
    assert not (root / blob_rel(a_blob)).exists()  # only the dropped entry used it
    assert (root / blob_rel(hashlib.sha256(shared).hexdigest())).exists()
    assert (root / entry_rel(k_new)).exists()


def test_reading_an_entry_makes_it_recent(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    k_old, _ = put_entry(root, "old", {"a": b"a" * 400}, age=300)
    k_new, _ = put_entry(root, "new", {"b": b"b" * 400}, age=100)
    assert DirBackend(root).read_entry(k_old) is not None  # a hit: now the most recent
    assert evict(root, max_bytes=500) == [k_new]


def test_zero_bound_empties_the_cache(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    put_entry(root, "one", {"a": b"a"}, age=10)
    evict(root, max_bytes=0)
    assert list(root.glob("entries/*/*")) == [] and list(root.glob("blobs/*/*")) == []
