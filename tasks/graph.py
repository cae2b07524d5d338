"""Wiring: stages -> doit task dicts. No build logic lives here.

Freshness is decided by `manifest.is_fresh` (content keys), passed to doit as `uptodate`,
not by doit's `file_dep`: doit keeps file_dep state in .doit.db, which a CI cache restore
does not bring back, so every file_dep task would rebuild after a restore. Order comes from
`task_dep`, the files each stage reads and writes are declared in its manifest and `targets`.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from doit.action import CmdAction

from tasks.config import Config
from tasks.deploy_config import needs_gguf
from tasks.lockfile import lock_content, lock_path, render_lock, write_lock
from tasks.manifest import Stage, is_fresh
from tasks.stages import REPO, all_stages, upstream


def stage_task(config: Config, stage: Stage) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "tasks.run", "--config", str(config.path), stage.task]
    return {
        "name": stage.task.split(":", 1)[1],
        "doc": stage.doc,
        "actions": [CmdAction(cmd, cwd=str(REPO), shell=False)],
        "uptodate": [(is_fresh, [stage], {})],
        "task_dep": upstream(config, stage),
        "targets": [str(p) for p in stage.outputs],
        "verbosity": 2,
        "meta": {"stage": stage},
    }


def tasks_of_kind(config: Config, base: str) -> Iterator[dict[str, Any]]:
    stages = [s for s in all_stages(config) if s.task.split(":", 1)[0] == base]
    for stage in stages:
        yield stage_task(config, stage)
    if base == "quantize":
        for m in config.models.values():
            if not needs_gguf(m.deploy):
                continue  # vLLM-only: no GGUF, no quantize tasks
            yield {
                "name": m.name,
                "doc": f"all quantizations of {m.name} ({', '.join(m.quants) or 'none'})",
                "actions": None,
                "task_dep": [f"quantize:{m.name}-{q}" for q in m.quants] or [f"convert:{m.name}"],
            }


def lock_task(config: Config) -> dict[str, Any]:
    stages = all_stages(config)

    def current() -> bool:
        path: Path = lock_path(config)
        return path.is_file() and path.read_text(encoding="utf-8") == render_lock(lock_content(config, stages))

    return {
        "basename": "lock",
        "doc": "Write models.lock: every artifact's key and SHA256 (the default task builds everything).",
        "actions": [(write_lock, [config, stages], {})],
        "uptodate": [current],
        "task_dep": [f"plan:{m}" for m in config.models] + [f"render:{m}" for m in config.models]
        + [f"check:{m}" for m, spec in config.models.items() if needs_gguf(spec.deploy)],
        "verbosity": 2,
    }
