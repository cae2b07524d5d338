"""The local run-cache under artifacts/.cache/runs/: every stage this machine built, by key, LRU-bounded.

The same layout as a directory cache, its blobs hard-linked to the artifacts (no extra disk until
an artifact is rebuilt). Switching an adapter back to an earlier version finds the earlier keys
here and restores instead of rebuilding. After each push the least recently used entries are
dropped until the blobs still referenced fit in the bound; unreferenced blobs are deleted.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

from tasks.cache.backends import DirBackend
from tasks.core.layout import ArtifactLayout
from tasks.core.locks import exclusive


def run_cache(artifacts: Path) -> DirBackend:
    root = ArtifactLayout(artifacts).run_cache()
    return DirBackend(root, url="run-cache", link=True)


def evict(root: Path, max_bytes: int) -> list[str]:
    """Drop least recently used entries until referenced blobs fit in `max_bytes`; return dropped keys."""
    with exclusive(root / ".evict.lock"):
        entries = []
        for path in (root / "entries").glob("*/*.json"):
            try:
                outputs = json.loads(path.read_bytes()).get("outputs", {})
                entries.append((path.stat().st_mtime, path, {rec["sha256"] for rec in outputs.values()}))
            except (OSError, ValueError, AttributeError, TypeError, KeyError):
                with contextlib.suppress(OSError):
                    path.unlink()
        entries.sort(key=lambda e: e[0], reverse=True)  # most recent first
        blobs = {p.name: p for p in (root / "blobs").glob("*/*")}
        sizes = {name: _size(p) for name, p in blobs.items()}
        kept: set[str] = set()
        used = 0
        dropped = []
        for _mtime, path, shas in entries:
            extra = sum(sizes.get(s, 0) for s in shas - kept)
            if used + extra > max_bytes:
                with contextlib.suppress(OSError):
                    path.unlink()
                dropped.append(path.stem)
                continue
            kept |= shas
            used += extra
        for name, p in blobs.items():
            if name not in kept:
                with contextlib.suppress(OSError):
                    p.unlink()
        return dropped


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0
