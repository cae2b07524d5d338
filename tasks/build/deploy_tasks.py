"""doit tasks for deployment: plan (in the default build) and deploy/serve/stop/health/rollback.

Only `plan:<model>` is part of the default build (models.lock depends on it): it is up to date
while the deployment fits its hardware profile, and fails the build early, before any merge
or conversion, when it does not. Asked for by name (`doit plan:demo`) it always prints its
table. The other tasks act on the outside world, so they always run and are never defaults.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

from doit.action import CmdAction

from tasks.build.graph import graph
from tasks.build.registry import producers
from tasks.core.config.schema import Config, ModelSpec
from tasks.core.layout import REPO


def _cli(config: Config, command: str, model: str) -> CmdAction:
    cmd = [sys.executable, "-m", "tasks.deploy.cli", "--config", str(config.path), command, model]
    return CmdAction(cmd, cwd=str(REPO), shell=False)


def _requested(basename: str) -> bool:
    """True when the doit command line names this task family (e.g. `doit plan:demo`)."""
    return any(a == basename or a.startswith(basename + ":") for a in sys.argv[1:])


def _base_deps(config: Config, m: ModelSpec) -> list[str]:
    """The stage that makes the base model available (a fixture or a fetch), if any: the plan reads it."""
    task = producers(graph(config).stages)(m.base.path)
    return [task] if task else []


def _print_build_memory(config: Config, model: str) -> None:
    from tasks.build import memory_plan

    print(memory_plan.table(config, model) + "\n")


def plan_tasks(config: Config) -> Iterator[dict[str, Any]]:
    from tasks.deploy.cli import plan_fits

    explicit = _requested("plan")
    for m in config.models.values():
        yield {
            "name": m.name,
            "doc": f"memory plan of {m.name}: largest context per quant and hardware profile",
            # The build's own memory on this machine first: it informs, never fails the plan.
            "actions": [(_print_build_memory, [config, m.name]), _cli(config, "plan", m.name)],
            "uptodate": [False] if explicit else [(plan_fits, [config, m], {})],
            "task_dep": _base_deps(config, m),
            "verbosity": 2,
        }


def _user_tasks(config: Config, command: str, doc: str, deps: Any) -> Iterator[dict[str, Any]]:
    for m in config.models.values():
        yield {
            "name": m.name,
            "doc": doc.format(m=m.name),
            "actions": [_cli(config, command, m.name)],
            "uptodate": [False],
            "task_dep": deps(m),
            "verbosity": 2,
        }


def deploy_tasks(config: Config) -> Iterator[dict[str, Any]]:
    yield from _user_tasks(config, "deploy", "deploy {m} to its targets (ollama create, LM Studio install)",
                           lambda m: [f"render:{m.name}"])


def serve_tasks(config: Config) -> Iterator[dict[str, Any]]:
    yield from _user_tasks(config, "serve", "start llama.cpp's OpenAI server for {m} on its port",
                           lambda m: [f"render:{m.name}"])


def stop_tasks(config: Config) -> Iterator[dict[str, Any]]:
    yield from _user_tasks(config, "stop", "stop the llama.cpp server of {m}", lambda m: [])


def health_tasks(config: Config) -> Iterator[dict[str, Any]]:
    yield from _user_tasks(config, "health", "check {m}'s files and live server (healthy/degraded/unhealthy)",
                           lambda m: [])


def rollback_tasks(config: Config) -> Iterator[dict[str, Any]]:
    yield from _user_tasks(config, "rollback", "restore the LM Studio install of {m} that the last deploy replaced",
                           lambda m: [])
