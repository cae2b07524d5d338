"""Restore one stage from a cache entry, or push one built stage to a cache.

Restore: read the entry (the stage manifest another machine wrote), check that it is this stage's
(same key, same task, outputs only where this stage writes), fetch every blob into a hidden staging
directory on the artifacts' filesystem, verify each SHA256 and size against the entry, and only
then rename the outputs into place (a directory output as a whole). Anything wrong refuses the
entry with one line (`Refused`) and nothing in artifacts/ has changed.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any

from tasks.cache.backends import Backend
from tasks.core import atomic
from tasks.core.hashing import cache_for, sha256_file
from tasks.core.layout import ArtifactLayout
from tasks.core.manifest import MANIFEST_FORMAT
from tasks.core.stage import Stage, skipped_marker

HEX64 = re.compile(r"^[0-9a-f]{64}$")


class Refused(Exception):
    """The cache holds the key but the entry cannot be used (corrupt, partial, foreign): one line."""

    def __init__(self, message: str, bad: set[str] | None = None) -> None:
        super().__init__(message)
        self.bad = bad or set()  # blobs found damaged: a push replaces them


def _owner(stage: Stage, rel: str) -> str | None:
    """The output of `stage` that `rel` belongs to (the file, its sidecar or marker, or a file inside)."""
    for out in stage.outputs:
        orel = stage.rel(out)
        if rel in (orel, orel + ".sha256", orel + ".skipped") or rel.startswith(orel + "/"):
            return orel
    return None


def parse_entry(raw: bytes, stage: Stage, key: str) -> dict[str, dict[str, Any]]:
    """rel -> {"sha256", "size"} of a valid entry for `stage`, else Refused."""
    try:
        entry = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise Refused("entry is not valid JSON (partial or corrupt upload)") from None
    if not isinstance(entry, dict) or entry.get("format") != MANIFEST_FORMAT:
        raise Refused("entry is not a modelmake manifest")
    if entry.get("key") != key or entry.get("task") != stage.task:
        raise Refused(f"entry is for {entry.get('task')!r} with key {str(entry.get('key'))[:12]}, not this stage")
    outputs = entry.get("outputs")
    if not isinstance(outputs, dict) or not outputs:
        raise Refused("entry records no outputs")
    for rel, rec in outputs.items():
        parts = rel.split("/") if isinstance(rel, str) else [".."]
        if ".." in parts or rel.startswith("/") or _owner(stage, rel) is None:
            raise Refused(f"entry records {rel!r}, which this stage does not write")
        if not (isinstance(rec, dict) and isinstance(rec.get("sha256"), str) and HEX64.match(rec["sha256"])
                and isinstance(rec.get("size"), int) and rec["size"] >= 0):
            raise Refused(f"entry records no valid sha256/size for {rel}")
    for out in stage.outputs:
        orel = stage.rel(out)
        if not any(_owner(stage, r) == orel and not r.endswith(".sha256") for r in outputs):
            raise Refused(f"entry lacks {orel}")
    return outputs


def restore(stage: Stage, backend: Backend, raw: bytes, key: str) -> int:
    """Put the entry's outputs in place; return the bytes restored. Refused leaves artifacts/ as it was."""
    outputs = parse_entry(raw, stage, key)
    layout = ArtifactLayout(stage.artifacts)
    staging = layout.incoming() / f".{os.getpid()}-{uuid.uuid4().hex[:8]}"
    staging.mkdir(parents=True)
    try:
        shas = sorted({rec["sha256"] for rec in outputs.values()})
        got = backend.fetch(shas, staging)
        bad = set()
        for rel, rec in sorted(outputs.items()):
            sha = rec["sha256"]
            if not (staging / sha).is_file():
                raise Refused(f"entry is partial: no blob for {rel}")
            digest, size = got.get(sha) or (sha256_file(staging / sha), (staging / sha).stat().st_size)
            if digest != sha or size != rec["size"]:
                bad.add(sha)
                raise Refused(f"{rel}: cached bytes do not match the entry's sha256 (corrupt entry)", bad)
        _place(stage, outputs, staging)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    paths = {rel: (stage.artifacts / rel).resolve() for rel in outputs}
    # The digests were just verified: record them, so nothing reads the bytes again.
    cache_for(stage.artifacts).store_many((p, p.stat(), outputs[rel]["sha256"]) for rel, p in paths.items())
    return sum(rec["size"] for rec in outputs.values())


def _link(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dest)  # staging is on the artifacts' filesystem; one blob may serve several files
    except OSError:
        shutil.copyfile(src, dest)


def _place(stage: Stage, outputs: dict[str, dict[str, Any]], staging: Path) -> None:
    """Rename every output into place: directories whole (atomic_dir), files one by one."""
    done: set[str] = set()
    for out in stage.outputs:
        orel = stage.rel(out)
        inside = {r: rec for r, rec in outputs.items() if r.startswith(orel + "/")}
        if inside:
            with atomic.atomic_dir(out) as tmp:
                for r, rec in inside.items():
                    _link(staging / rec["sha256"], tmp / r[len(orel) + 1:])
            done.update(inside)
        # A file output and its "skipped" marker exclude each other: drop the one the entry lacks.
        for alt in (out, skipped_marker(out)):
            if stage.rel(alt) not in outputs and alt.is_file():
                alt.unlink()
    for rel, rec in sorted(outputs.items()):
        if rel in done:
            continue
        final = stage.artifacts / rel
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = atomic.temp_name(final)
        try:
            _link(staging / rec["sha256"], tmp)
            atomic.fsync_path(tmp)
            os.replace(tmp, final)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        atomic.fsync_path(final.parent)


def push(stage: Stage, backend: Backend, replace: frozenset[str] | set[str] = frozenset()) -> int:
    """Upload a freshly built stage (its manifest as the entry, written last); return the bytes sent.
    Blobs the cache already holds are not sent again, except those in `replace` (found damaged)."""
    raw = stage.manifest.read_bytes()
    entry = json.loads(raw)
    files = {rec["sha256"]: stage.artifacts / rel for rel, rec in entry["outputs"].items()}
    need = backend.missing(sorted(files)) | (replace & set(files))
    before = backend.moved
    backend.upload({s: files[s] for s in sorted(need)}, entry["key"], raw)
    return backend.moved - before
