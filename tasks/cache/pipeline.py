"""What the stage runner asks of the caches: restore a stage before building it, push it after.

Order: the local run-cache first, then `[build] cache` in models.toml order; the first that holds
a valid entry for the stage's key wins. A cache that cannot be reached, or whose entry is refused,
costs one line and the next one is tried; when none has it the stage builds as usual.
Stages of kinds with their own runner (fetch) or outside models.lock (report: timings of this
machine) are never cached.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from tasks.cache.backends import Backend, CacheUnavailable, open_backend
from tasks.cache.entry import Refused, push, restore
from tasks.cache.runs import evict, run_cache
from tasks.core import atomic
from tasks.core.config.schema import Config
from tasks.core.errors import UserError
from tasks.core.hashing import cache_for
from tasks.core.layout import ArtifactLayout
from tasks.core.locks import exclusive
from tasks.core.stage import Stage


def cacheable(stage: Stage) -> bool:
    return stage.kind.runner is None and stage.kind.in_lock


@dataclass
class Caches:
    """The caches of one stage run, and what happened (for push and the summary)."""

    config: Config
    log: Callable[[str], None]
    restored_from: str | None = None
    bad: dict[str, set[str]] = field(default_factory=dict)  # url -> blobs found damaged

    def _backends(self, pushing: bool = False) -> list[tuple[Backend, bool]]:
        out: list[tuple[Backend, bool]] = []
        if self.config.run_cache > 0:
            out.append((run_cache(self.config.artifacts), True))
        for spec in self.config.caches:
            if pushing and not spec.push:
                continue
            try:
                out.append((open_backend(spec), spec.push))
            except UserError as exc:
                self.log(f"warning: {exc}; not used")
        return out

    def try_restore(self, stage: Stage) -> bool:
        """Restore `stage` from the first cache holding its key; True if it was restored."""
        marker = ArtifactLayout(stage.artifacts).restored_marker(stage.task)
        marker.unlink(missing_ok=True)
        if not cacheable(stage):
            return False
        key = stage.key()
        for backend, _push in self._backends():
            start = time.monotonic()
            try:
                raw = backend.read_entry(key)
                if raw is None:
                    continue
                size = restore(stage, backend, raw, key)
            except (CacheUnavailable, OSError) as exc:
                self.log(f"cache {backend.url}: unavailable ({exc}); trying the next")
                continue
            except Refused as exc:
                self.bad.setdefault(backend.url, set()).update(exc.bad)
                self.log(f"cache {backend.url}: entry {key[:12]} refused: {exc}; building locally")
                continue
            took = time.monotonic() - start
            self.log(f"{stage.task}: restored from {backend.url} ({size} bytes, {backend.moved} moved, {took:.2f}s)")
            atomic.write_text(marker, json.dumps({"key": key, "from": backend.url, "bytes": size,
                                                  "moved": backend.moved, "seconds": round(took, 3)}) + "\n")
            self.restored_from = backend.url
            return True
        return False

    def push_built(self, stage: Stage) -> None:
        """After a build: into the run-cache and every push cache (see the loop for restored stages)."""
        if not cacheable(stage) or not stage.manifest.is_file():
            return
        for backend, _push in self._backends(pushing=True):
            # The run-cache holds what this machine built: from there it may go to the push caches;
            # what a remote cache gave goes only into the run-cache, never back out.
            if self.restored_from is not None and (backend.url == "run-cache") == (self.restored_from == "run-cache"):
                continue
            try:
                if backend.url == "run-cache":
                    root = ArtifactLayout(stage.artifacts).run_cache()
                    with exclusive(root / ".evict.lock"):
                        push(stage, backend)
                    _refresh_digests(stage)
                    evict(root, self.config.run_cache)
                    continue
                start = time.monotonic()
                sent = push(stage, backend, self.bad.get(backend.url, set()))
                self.log(f"{stage.task}: pushed to {backend.url} ({sent} bytes, {time.monotonic() - start:.2f}s)")
            except (CacheUnavailable, OSError) as exc:
                self.log(f"warning: cache {backend.url}: push failed ({exc}); the build itself is fine")


def _refresh_digests(stage: Stage) -> None:
    """A hard link changes the linked file's ctime, which the digest cache keys on: record the digests
    (the manifest's, of bytes that did not change) under the new stat, so a no-op build reads nothing."""
    rows = []
    for rel, rec in json.loads(stage.manifest.read_bytes())["outputs"].items():
        path = (stage.artifacts / rel).resolve()
        st = path.stat()
        if st.st_size == rec["size"]:
            rows.append((path, st, rec["sha256"]))
    cache_for(stage.artifacts).store_many(rows)
