"""The fetch stages: one per remote base or adapter (light: dodo.py declares them on every call).

A fetch contacts its source on every build (the remote may have changed), so its kind always runs
and replaces the generic protocol with tasks.sources.fetch.run_fetch; everything downstream keeps
deciding freshness by content.
"""

from __future__ import annotations

from tasks.core.config.schema import Config
from tasks.core.stage import Stage, StageKind
from tasks.sources.staging import staging_dir

FETCH = StageKind("fetch", group="fetch", version=1, builder="tasks.sources.fetch:copy_snapshot",
                  runner="tasks.sources.fetch:run_fetch", always_runs=True)


def fetch_stages(config: Config) -> list[Stage]:
    stages = []
    for m in config.models.values():
        for role, src in (("base", m.base), ("adapter", m.adapter)):
            if src.remote is None or src.fetch_task is None:
                continue
            stages.append(Stage(
                task=src.fetch_task, kind=FETCH, artifacts=config.artifacts,
                manifest=config.layout.source_manifest(m.name, role), log=config.layout.log(m.name, f"fetch-{role}"),
                params={"source": src.spec, "role": role}, inputs={"files": staging_dir(src.path)},
                outputs=(src.path,), model=m.name,
                doc=f"fetch the {role} of {m.name} from {src.spec} (contacts the source every run)",
            ))
    return stages
