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
from collections.abc import Callable
from typing import Any

from tasks.core import atomic
from tasks.core.config.schema import Config, Source
from tasks.core.errors import UserError
from tasks.core.stage import Stage, run_stage
from tasks.sources.staging import Download, download_lock, link_or_copy, list_files, record_path


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
        changed = run_stage(stage, lambda s: copy_snapshot(s, config), log)
        _write_record(stage, src, role, result, changed, checked_at)
    return changed
