"""The staging directory of a fetch and what every source module shares: the download record,
verification against SHA256 digests, pruning, hard-link-or-copy and the download lock.

Downloads land in `.<role>.download/` beside the snapshot (tasks/sources/fetch.py explains why);
nothing here decides freshness.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tasks.core.errors import UserError
from tasks.core.hashing import cache_for
from tasks.core.locks import exclusive

PARTIAL_DIR = ".rsync-partial"


class Unreachable(UserError):
    """The source could not be contacted at all (no route, refused, timed out, login refused, the Hub
    offline): nothing was transferred, so a verified snapshot from an earlier run can stand in."""


@dataclass
class Download:
    """What a source module brought into staging (all of it verified)."""

    method: str  # rsync | scp | hub
    files: dict[str, str]  # relative path -> sha256 (or the Hub's git blob id for small files)
    verified_against: str  # where the expected digests came from
    transfer: dict[str, Any] = field(default_factory=dict)  # bytes moved, rsync's stats
    revision: str | None = None  # Hub: the commit the snapshot is


def staging_dir(snapshot: Path) -> Path:
    return snapshot.with_name(f".{snapshot.name}.download")


def record_path(snapshot: Path) -> Path:
    return snapshot.with_name(f"{snapshot.name}.fetch.json")


def list_files(root: Path) -> list[str]:
    """Relative paths of the non-hidden files under `root` (hidden: partials, temporaries)."""
    if not root.is_dir():
        return []
    out = []
    for p in root.rglob("*"):
        rel = p.relative_to(root)
        if p.is_file() and not any(part.startswith(".") for part in rel.parts):
            out.append(rel.as_posix())
    return sorted(out)


def prune(staging: Path, keep: set[str]) -> None:
    """Delete staged files that are no longer part of the source (keeps hidden partials)."""
    for rel in list_files(staging):
        if rel not in keep:
            (staging / rel).unlink()
    for d in sorted((p for p in staging.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        if not any(part.startswith(".") for part in d.relative_to(staging).parts):
            with contextlib.suppress(OSError):
                d.rmdir()  # only if empty


def verify(staging: Path, expected: dict[str, str], artifacts: Path, origin: str) -> None:
    """Check staged files against SHA256 digests; a bad file is deleted so the next run re-fetches it."""
    missing = [name for name in expected if not (staging / name).is_file()]
    if missing:
        raise UserError(f"listed in {origin} but not fetched: {', '.join(missing)}")
    cache = cache_for(artifacts)
    for name, want in sorted(expected.items()):
        got = cache.sha256(staging / name)
        if got != want:
            (staging / name).unlink()
            raise UserError(
                f"checksum mismatch for {name}: expected {want[:16]}..., got {got[:16]}... ({origin}); "
                "download refused, the previous snapshot is kept"
            )


def link_or_copy(src: Path, dest: Path) -> None:
    """Hard link when possible (no second copy of a multi-GB base), else copy.

    Safe because nothing here writes a file in place: rsync, scp and the Hub all write a new
    file and rename it, so a linked snapshot file never changes under its readers.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dest)
    except OSError:
        shutil.copy2(src, dest)


@contextlib.contextmanager
def download_lock(staging: Path) -> Iterator[None]:
    """One download into a staging directory at a time (two builds of the same config)."""
    with exclusive(staging.with_name(staging.name + ".lock")):
        yield
