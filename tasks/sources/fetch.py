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
deciding freshness by content. The remote is not needed when the snapshot on disk is verified
(its files have the digests its manifest records) and

- the source is pinned by SHA256 in models.toml and the snapshot holds exactly those files: no
  contact at all, nothing could have changed;
- the build is offline (`MODELMAKE_OFFLINE=1`): used as is (with `HF_HUB_OFFLINE=1` a Hub source reads
  only the local Hugging Face cache, which contacts nothing; when the cache lacks it, the next case);
- the remote cannot be reached (the rented box that trained the adapter is gone, CI has no SSH
  key): one warning line and the snapshot is used as is.

With no verified snapshot the last two stay a one-line error.

A record of what was fetched, from where and when is written
beside the snapshot as `<role>.fetch.json`: it holds timestamps, so it is not part of any key.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
from collections.abc import Callable
from typing import Any

from tasks.core import atomic
from tasks.core.config.schema import Config, Source
from tasks.core.errors import UserError
from tasks.core.hashing import cache_for
from tasks.core.manifest import outputs_of, read_manifest
from tasks.core.stage import Stage, run_stage
from tasks.sources.staging import Download, Unreachable, download_lock, link_or_copy, list_files, record_path


def label(model: str, role: str, src: Source) -> str:
    """How every fetch error starts: the key in models.toml and the source."""
    return f"models.{model}.{role} ({src.spec})"


def copy_snapshot(stage: Stage, config: Config) -> None:
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


def verified_snapshot(stage: Stage) -> dict[str, str] | None:
    """The snapshot's files (relative to it) -> sha256 when it was fetched from the source models.toml names
    now and every file still has the digest its manifest records, else None (never fetched, fetched from
    another source, damaged, or changed by hand)."""
    (snapshot,) = stage.outputs
    manifest = read_manifest(stage.manifest)
    if manifest is None or manifest.get("params") != stage.params:
        return None  # not fetched from this source (models.toml now names another host, repo or revision)
    recorded = outputs_of(manifest)
    prefix = stage.rel(snapshot) + "/"
    files = {rel[len(prefix):]: rec["sha256"] for rel, rec in recorded.items() if rel.startswith(prefix)}
    if not files:
        return None
    cache = cache_for(stage.artifacts)
    for rel, digest in files.items():
        path = snapshot / rel
        if not path.is_file() or cache.sha256(path) != digest:
            return None
    return files


def _since(stage: Stage) -> str:
    (snapshot,) = stage.outputs
    with contextlib.suppress(OSError, ValueError, AttributeError):
        record = json.loads(record_path(snapshot).read_text(encoding="utf-8"))
        return f"verified {record['checked_at']}"
    return "verified earlier"


def offline_reason() -> str | None:
    """Why remotes must not be contacted in this build, or None. (The Hub's own HF_HUB_OFFLINE needs
    nothing here: tasks.sources.hub then reads only the local Hugging Face cache, which contacts nothing,
    and when that cache lacks the revision a verified snapshot stands in, as for an unreachable remote.)"""
    if os.environ.get("MODELMAKE_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return "MODELMAKE_OFFLINE=1"
    return None


def run_fetch(stage: Stage, config: Config, log: Callable[[str], None] = print) -> bool:
    """Download, verify, then update the snapshot if its bytes changed; True if they did."""
    assert stage.model is not None
    role = stage.params["role"]
    m = config.models[stage.model]
    src: Source = getattr(m, role)
    staging = stage.inputs["files"]
    where = label(m.name, role, src)
    checked_at = _now()
    with download_lock(staging):
        have = verified_snapshot(stage)
        if have is not None and src.remote.sha256 and dict(src.remote.sha256) == have:
            log(f"{stage.task}: pinned by SHA256 in models.toml and the snapshot matches: remote not contacted")
            return False
        offline = offline_reason()
        if offline and have is not None:
            log(f"{stage.task}: {offline}: using the snapshot ({_since(stage)}) as is")
            return False
        if offline:
            raise UserError(f"{where}: {offline} and no verified snapshot yet: run once with the remote reachable")
        staging.mkdir(parents=True, exist_ok=True)
        try:
            if src.remote.kind == "ssh":
                from tasks.sources import ssh

                result = ssh.download(src.remote, staging, role, config.artifacts, log)
            else:
                from tasks.sources import hub

                result = hub.download(src.remote, staging, role, config.artifacts, log)
        except Unreachable as exc:
            if have is None:
                raise UserError(f"{where}: {exc}; no verified snapshot to build from") from None
            log(f"modelmake: warning: {where}: {exc}; using the snapshot ({_since(stage)}) as is")
            return False
        except UserError as exc:
            raise UserError(f"{where}: {exc}") from None
        log(f"{stage.task}: {len(result.files)} file(s) verified against {result.verified_against} ({result.method})")
        changed = run_stage(stage, lambda s: copy_snapshot(s, config), log)
        _write_record(stage, src, role, result, changed, checked_at)
    return changed
