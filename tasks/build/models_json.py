"""`python -m tasks.build.models_json`: the models of models.toml as JSON, for a CI matrix.

    [{"model": "demo", "tasks": ["plan:demo", "check:demo", ...]}, ...]

`tasks` are the doit tasks that build what models.lock records for that model (the same the `lock`
task depends on), so a matrix job per model runs `doit <tasks>` against a shared cache and a final
job, finding every stage in the cache, only restores and writes models.lock. `--tasks <model>`
prints one model's tasks on one line, for a shell. Exit 2 with one line on a configuration error.
Standard library only (no doit): a CI job lists the models with a bare Python 3.11.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tasks.build.registry import all_stages, dependencies
from tasks.core.config.load import load_config
from tasks.core.config.schema import Config
from tasks.core.errors import UserError


def model_tasks(config: Config) -> dict[str, list[str]]:
    """model -> the plan and the last locked stages of that model (what `lock` needs from it)."""
    stages = all_stages(config)
    deps = dependencies(stages)
    locked = [s for s in stages if s.kind.in_lock]
    read = {d for s in locked for d in deps[s.task]}
    out: dict[str, list[str]] = {}
    for name in config.models:
        last = [s.task for s in locked if s.model == name and s.task not in read]
        out[name] = [f"plan:{name}", *last]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tasks.build.models_json", description=__doc__)
    parser.add_argument("--config", type=Path, default=None)
    parser.add_argument("--tasks", metavar="MODEL", help="print MODEL's tasks, space-separated")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
        tasks = model_tasks(config)
        if args.tasks is not None:
            if args.tasks not in tasks:
                raise UserError(f"{config.path}: no model named {args.tasks!r} (models: {', '.join(tasks)})")
            print(" ".join(tasks[args.tasks]))
        else:
            print(json.dumps([{"model": m, "tasks": t} for m, t in tasks.items()], separators=(",", ":")))
    except UserError as exc:
        print(f"modelmake: error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
