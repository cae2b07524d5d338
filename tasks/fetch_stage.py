"""The fetch stage: a remote adapter or base model -> artifacts/sources/<model>/<role>/.

Three steps, so that a bad download never reaches what is built from it:

1. download into a hidden staging directory beside the snapshot (`.<role>.download/`), which
   persists between runs: rsync's `--partial-dir` keeps an interrupted file there and the next
   run resumes it, and unchanged files are not transferred again;
2. verify every file against its SHA256 (the remote's manifest, digests pinned in models.toml,
   or the Hub's blob hashes); a mismatch deletes the bad staged file and stops here with a
   one-line error: the snapshot, its manifest and everything downstream stay as they were;
3. hand the verified staging directory to the ordinary content-keyed `run_stage` as the
   stage's input: identical bytes (even with new mtimes) give the same key, so the snapshot is
   not touched and downstream stages stay fresh; new bytes replace the snapshot whole
   (write-then-rename) and only that model's stages see a new input digest.

doit runs a fetch task every time (the remote may have changed); everything after it keeps
deciding freshness by content. A record of what was fetched, from where and when is written
beside the snapshot as `<role>.fetch.json`: it holds timestamps, so it is not part of any key.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tasks import atomic
from tasks.config import Config, Source
from tasks.errors import UserError
from tasks.file_lock import exclusive
from tasks.hashing import cache_for
from tasks.manifest import Stage, run_stage

FETCH_VERSION = 1
PARTIAL_DIR = ".rsync-partial"


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


def fetch_stages(config: Config) -> list[Stage]:
    """One fetch stage per remote base or adapter (light: called whenever dodo.py loads)."""
    stages = []
    for m in config.models.values():
        for role, src in (("base", m.base), ("adapter", m.adapter)):
            if src.remote is None or src.fetch_task is None:
                continue
            root = config.artifacts / "sources" / m.name
            stages.append(Stage(
                task=src.fetch_task, kind="fetch", version=FETCH_VERSION, artifacts=config.artifacts,
                manifest=root / "manifests" / f"{role}.json",
                log=config.artifacts / "logs" / m.name / f"fetch-{role}.log",
                params={"source": src.spec, "role": role}, inputs={"files": staging_dir(src.path)},
                outputs=(src.path,), model=m.name,
                doc=f"fetch the {role} of {m.name} from {src.spec} (contacts the source every run)",
            ))
    return stages


def label(model: str, role: str, src: Source) -> str:
    """How every fetch error starts: the key in models.toml and the source."""
    return f"models.{model}.{role} ({src.spec})"


# ---- shared by the source modules ------------------------------------------------------------
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


# ---- the stage ---------------------------------------------------------------------------------
def _copy_snapshot(stage: Stage) -> None:
    """run_stage's build function: staging (verified) -> snapshot, replaced whole."""
    staging = stage.inputs["files"]
    (final,) = stage.outputs
    with atomic.atomic_dir(final) as tmp:
        for rel in list_files(staging):
            link_or_copy(staging / rel, tmp / rel)


def _now() -> str:
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()


def _write_record(stage: Stage, src: Source, role: str, result: Download, changed: bool, checked_at: str) -> None:
    (snapshot,) = stage.outputs
    path = record_path(snapshot)
    previous: dict[str, Any] = {}
    with contextlib.suppress(FileNotFoundError, ValueError):
        previous = json.loads(path.read_text(encoding="utf-8"))
    remote = src.remote
    record = {
        "model": stage.model,
        "role": role,
        "source": src.spec,
        "kind": remote.kind,
        "method": result.method,
        "revision": result.revision,
        "verified_against": result.verified_against,
        "files": result.files,
        "transfer": result.transfer,
        "checked_at": checked_at,
        "content_changed_at": checked_at if changed or "content_changed_at" not in previous
        else previous["content_changed_at"],
        "snapshot": stage.rel(snapshot),
    }
    atomic.write_text(path, json.dumps(record, indent=2, sort_keys=True) + "\n")


def run_fetch(config: Config, stage: Stage, log: Callable[[str], None] = print) -> bool:
    """Download, verify, then update the snapshot if its bytes changed; True if they did."""
    assert stage.model is not None
    role = stage.params["role"]
    m = config.models[stage.model]
    src: Source = getattr(m, role)
    staging = stage.inputs["files"]
    where = label(m.name, role, src)
    checked_at = _now()
    with download_lock(staging):
        staging.mkdir(parents=True, exist_ok=True)
        try:
            if src.remote.kind == "ssh":
                from tasks.sources import ssh

                result = ssh.download(src.remote, staging, role, config.artifacts, log)
            else:
                from tasks.sources import hub

                result = hub.download(src.remote, staging, role, config.artifacts, log)
        except UserError as exc:
            raise UserError(f"{where}: {exc}") from None
        log(f"{stage.task}: {len(result.files)} file(s) verified against {result.verified_against} ({result.method})")
        changed = run_stage(stage, _copy_snapshot, log)
        _write_record(stage, src, role, result, changed, checked_at)
    return changed
