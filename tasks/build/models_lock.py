"""models.lock: every artifact's key and SHA256 in one diff-able file next to models.toml.

Like dvc.lock, it is derived from the stage manifests, so it is rewritten only when an
artifact changed. CI caches key on it: same lock, same artifacts.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from tasks.core import atomic, diskspace, toolchain
from tasks.core.config.schema import Config
from tasks.core.manifest import read_manifest
from tasks.core.stage import Stage

LOCK_FORMAT = 1


def lock_path(config: Config) -> Path:
    return config.root / "models.lock"


def lock_content(config: Config, stages: list[Stage]) -> dict[str, Any]:
    entries: dict[str, Any] = {}
    for stage in stages:
        if not stage.kind.in_lock:
            continue  # reports: timings differ on every run, and nothing deployable depends on them
        manifest = read_manifest(stage.manifest)
        if manifest is None:
            continue
        entries[stage.task] = {
            "key": manifest["key"],
            "outputs": {
                rel: rec["sha256"] for rel, rec in sorted(manifest["outputs"].items()) if not rel.endswith(".sha256")
            },
        }
    return {"format": LOCK_FORMAT, "toolchain": toolchain.identity(), "stages": dict(sorted(entries.items()))}


def render_lock(content: dict[str, Any]) -> str:
    return json.dumps(content, indent=2, sort_keys=True) + "\n"


def sweep_stale_temps(config: Config) -> list[Path]:
    """Remove every temporary a killed build left: beside models.lock and anywhere under artifacts/
    (manifests, the digest cache, outputs of stages that have not run since). Each stage sweeps its
    own directories before it builds; this catches the rest at the end of every full build."""
    return atomic.remove_stale_temps(config.root) + atomic.remove_stale_temps(config.artifacts, recursive=True)


def lock_is_current(config: Config, stages: list[Stage]) -> bool:
    """doit `uptodate` of the lock task: models.lock already says what the manifests say."""
    sweep_stale_temps(config)
    return _current_bytes(lock_path(config)) == render_lock(lock_content(config, stages)).encode()


def _current_bytes(path: Path) -> bytes | None:
    """models.lock as it is on disk, compared as bytes: derived from the manifests, so a lock that is not
    even UTF-8 (a flipped byte) is merely stale and rewritten, never an error."""
    try:
        return path.read_bytes()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None


def write_lock(config: Config, stages: list[Stage]) -> bool:
    """Write models.lock if its content changed; return True if written."""
    path = lock_path(config)
    text = render_lock(lock_content(config, stages))
    if _current_bytes(path) == text.encode():
        return False
    try:
        atomic.write_text(path, text)
    except OSError as exc:  # doit would print a traceback: one line instead, and the task fails
        why = diskspace.message(path) if diskspace.is_disk_full(exc) else f"cannot write {path}: {exc.strerror}"
        print(f"modelmake: error: lock: {why}", file=sys.stderr)
        return False
    return True
