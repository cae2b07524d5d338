"""Wiring: stages -> doit task dicts. No build logic lives here.

Freshness is decided by `tasks.core.stage.is_fresh` (content keys), passed to doit as `uptodate`,
not by doit's `file_dep`: doit keeps file_dep state in .doit.db, which a CI cache restore does not
bring back, so every file_dep task would rebuild after a restore. Order comes from `task_dep`,
derived from what each stage reads (tasks.build.registry.dependencies).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from tasks.build.models_lock import lock_is_current, write_lock
from tasks.build.registry import all_stages, dependencies, producers
from tasks.build.stage_action import StageAction
from tasks.core.config.schema import Config
from tasks.core.layout import REPO
from tasks.core.stage import Stage, is_fresh


@dataclass(frozen=True)
class Graph:
    """Every stage of a build and what each depends on: computed once per doit call."""

    stages: list[Stage]
    deps: dict[str, list[str]]


_GRAPHS: dict[int, tuple[Config, Graph]] = {}


def graph(config: Config) -> Graph:
    cached = _GRAPHS.get(id(config))
    if cached is None or cached[0] is not config:
        stages = all_stages(config)
        cached = (config, Graph(stages, dependencies(stages)))
        _GRAPHS[id(config)] = cached
    return cached[1]


def stage_task(config: Config, stage: Stage, deps: list[str]) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "tasks.build.runner", "--config", str(config.path), stage.task]
    return {
        "name": stage.task.split(":", 1)[1],
        "doc": stage.doc,
        "actions": [StageAction(cmd, cwd=str(REPO), shell=False)],
        # A kind that always runs (fetch: the remote may have changed) still decides by content what
        # to rewrite, so everything downstream stays fresh when the bytes are the same.
        "uptodate": [False] if stage.kind.always_runs else [(is_fresh, [stage], {})],
        "task_dep": deps,
        "targets": [str(p) for p in stage.outputs],
        "verbosity": 2,
        "meta": {"stage": stage},
    }


def group_tasks(config: Config, group: str) -> Iterator[dict[str, Any]]:
    """The doit tasks of one group (the basename before ':'), plus `quantize:<model>`-style aliases."""
    g = graph(config)
    members = [s for s in g.stages if s.kind.group == group]
    for stage in members:
        yield stage_task(config, stage, g.deps[stage.task])
    if group == "quantize":
        for m in config.models.values():
            if not m.builds_gguf:
                continue  # vLLM-only: no GGUF, no quantize tasks
            if not m.builds_merged:  # adapter mode: its quants are its base's
                base = [s.task for s in members if s.task.startswith(f"quantize:base-{m.base_id}-")]
                yield {"name": m.name, "doc": f"the quantizations of {m.name}'s base", "actions": None,
                       "task_dep": base or [f"convert:base-{m.base_id}"]}
                continue
            yield {
                "name": m.name,
                "doc": f"all quantizations of {m.name} ({', '.join(m.quants) or 'none'})",
                "actions": None,
                # With no quants, the unquantized GGUF they would be made from.
                "task_dep": [s.task for s in members if s.model == m.name]
                or [t for t in (producers(g.stages)(config.layout.gguf(m.name, m.outtype)),) if t],
            }


def lock_task(config: Config) -> dict[str, Any]:
    """models.lock depends on every plan and on the last stages of the build (those no other locked
    stage reads): building those builds everything the lock records."""
    g = graph(config)
    locked = [s for s in g.stages if s.kind.in_lock]
    read = {d for s in locked for d in g.deps[s.task]}
    return {
        "basename": "lock",
        "doc": "Write models.lock: every artifact's key and SHA256 (the default task builds everything).",
        "actions": [(write_lock, [config, g.stages], {})],
        "uptodate": [(lock_is_current, [config, g.stages], {})],
        "task_dep": [f"plan:{m}" for m in config.models] + [s.task for s in locked if s.task not in read],
        "verbosity": 2,
    }
