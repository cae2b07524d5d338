"""A Hugging Face Hub cache written in huggingface-hub's documented layout, for offline tests.

    <cache>/models--<org>--<name>/
        blobs/<sha256 for LFS files | git blob sha1 for small files>
        snapshots/<commit>/<file> -> ../../blobs/<hash>
        refs/main                  (the commit the branch pointed to)
        trees/<commit>.json        (the tree listing snapshot_download checks completeness with)

That is what `snapshot_download` leaves behind after a real download, so with HF_HUB_OFFLINE=1
and HF_HUB_CACHE=<cache> the library serves it exactly as it would a downloaded model.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

LFS_SUFFIXES = (".safetensors", ".bin", ".gguf")


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(f"blob {len(data)}\0".encode() + data, usedforsecurity=False).hexdigest()


def populate_cache(cache: Path, repo_id: str, commit: str, files: Path, ref: str | None = "main") -> Path:
    """Put every file of directory `files` in the cache as `repo_id` at `commit`; return the snapshot."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    tree = {}
    for src in sorted(p for p in files.rglob("*") if p.is_file()):
        rel = src.relative_to(files).as_posix()
        data = src.read_bytes()
        entry: dict = {"size": len(data)}
        if src.suffix in LFS_SUFFIXES:
            etag = hashlib.sha256(data).hexdigest()
            pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{etag}\nsize {len(data)}\n".encode()
            entry.update(blob_id=git_blob_sha1(pointer), lfs_sha256=etag, lfs_size=len(data))
        else:
            etag = git_blob_sha1(data)
            entry["blob_id"] = etag
        blob = repo / "blobs" / etag
        if not blob.exists():
            shutil.copyfile(src, blob)
        link = snapshot / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(os.path.relpath(blob, link.parent))
        tree[rel] = entry
    (repo / "trees").mkdir(exist_ok=True)
    (repo / "trees" / f"{commit}.json").write_text(json.dumps({"format_version": 1, "files": tree}, indent=1))
    if ref:
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    return snapshot
