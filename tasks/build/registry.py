"""The registry of stage kinds and the stages of a build, derived from the validated config.

Each feature package declares its kinds (`StageKind`: builder, version, how the build treats it)
and the stages of a model in its own stages.py; this module only lists them, in pipeline order.
Adding a stage kind touches its package and the lists below, nothing else. Dependencies are not
kept by hand: a stage depends on whichever stage writes a path it reads (see `dependencies`).

dodo.py (to declare tasks and decide freshness) and the stage runner (to build) both call
`all_stages`, so what is checked and what is built are the same definition. Light imports only.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tasks.checks.stages import check_stage, compare_stage, report_stage
from tasks.core.config.schema import Config, ModelSpec
from tasks.core.stage import Stage
from tasks.deploy.stages import render_stage
from tasks.fixtures.stages import fixture_stages
from tasks.gguf.stages import base_stages, convert_stage, imatrix_stage, quantize_stages
from tasks.merge.stages import adapter_stage, lora_stage, merge_stage
from tasks.sources.stages import fetch_stages

# Stages that serve every model: before the models' own, and after them.
BUILD_INPUTS: tuple[Callable[[Config], list[Stage]], ...] = (fixture_stages, fetch_stages, base_stages)
# One model's stages, in pipeline order (the order doit runs independent ones and the summary lists them).
MODEL_STAGES: tuple[Callable[[Config, ModelSpec], list[Stage]], ...] = (
    adapter_stage, merge_stage, convert_stage, imatrix_stage, quantize_stages, lora_stage, render_stage,
    check_stage, report_stage,
)
ACROSS_MODELS: tuple[Callable[[Config], list[Stage]], ...] = (compare_stage,)


def model_stages(config: Config, m: ModelSpec) -> list[Stage]:
    """adapter -> merge -> convert -> imatrix -> quantize (one per type) -> render -> check -> report, for one model.

    A model that builds no GGUF (vLLM-only: vLLM serves merged/) gets no stage of a kind that needs one."""
    stages = [s for make in MODEL_STAGES for s in make(config, m)]
    return [s for s in stages if m.builds_gguf or not s.kind.needs_gguf]


def all_stages(config: Config) -> list[Stage]:
    stages = [s for make in BUILD_INPUTS for s in make(config)]
    for m in config.models.values():
        stages.extend(model_stages(config, m))
    return stages + [s for make in ACROSS_MODELS for s in make(config)]


def producers(stages: list[Stage]) -> Callable[[Path], str | None]:
    """path -> the task of the stage that writes it (or the directory holding it), if any."""
    written = {out: s.task for s in stages for out in s.outputs}

    def producer(path: Path) -> str | None:
        for candidate in (path, *path.parents):
            if candidate in written:
                return written[candidate]
        return None

    return producer


def dependencies(stages: list[Stage]) -> dict[str, list[str]]:
    """task -> the tasks that write what it reads (its inputs and order-only paths), in pipeline order."""
    producer = producers(stages)
    order = {s.task: i for i, s in enumerate(stages)}
    deps: dict[str, list[str]] = {}
    for s in stages:
        found = {t for p in (*s.inputs.values(), *s.order_only) if (t := producer(p)) is not None and t != s.task}
        deps[s.task] = sorted(found, key=order.__getitem__)
    return deps
