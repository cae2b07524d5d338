"""Stage runner: `python -m tasks.build.runner --config models.toml <task>` builds one stage.

doit calls this as a subprocess per stage, so heavy libraries (torch, transformers, llama.cpp)
load only where they are needed, a stage's memory is returned when it ends, and a user error
is one line on stderr with exit code 2 instead of a traceback.
"""

from __future__ import annotations

import argparse
import errno
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

from tasks.build import memory_plan
from tasks.build.registry import all_stages
from tasks.cache.pipeline import Caches
from tasks.core import diskspace
from tasks.core.config.load import load_config
from tasks.core.config.schema import Config
from tasks.core.errors import UserError
from tasks.core.stage import Stage, resolve, run_stage


def run(stage: Stage, config: Config, log: Callable[[str], None]) -> bool:
    """Build one stage with its kind's builder (imported only now: each pulls in its own libraries),
    unless a cache (tasks/cache) holds its key: then its outputs are restored, verified, instead."""
    kind = stage.kind
    if kind.runner is not None:  # the kind runs its own protocol (fetch: download, then run_stage)
        return resolve(kind.runner)(stage, config, log)
    check = resolve(kind.precheck) if kind.precheck else None
    precheck = (lambda s: check(s, config)) if check else None
    caches = Caches(config, log)

    def announced(s: Stage) -> None:  # once it is known to build: say so if it is not expected to fit
        if caches.try_restore(s):
            return  # run_stage records the restored outputs exactly as if they had been built here
        note = memory_plan.warning(config, s)
        if note:
            log(f"warning: {note}")
        resolve(kind.builder)(s, config)

    built = run_stage(stage, announced, log, precheck)
    if built:
        caches.push_built(stage)
    return built


def _interrupt(signum: int, _frame: object) -> None:
    # Once: a second Ctrl-C (doit passes the first one on, the terminal sends it to the group too)
    # must not break off the clean-up the first one started.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt(signal.Signals(signum).name)


def os_error_line(exc: OSError, stage: Stage | None) -> str:
    """A full disk or an unwritable path, said in one line naming the path."""
    path = Path(exc.filename) if exc.filename else stage.outputs[0] if stage and stage.outputs else Path.cwd()
    if diskspace.is_disk_full(exc):
        return diskspace.message(path)
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"cannot write {path}: {exc.strerror}"
    return f"{path}: {exc.strerror or exc}"


def main(argv: list[str] | None = None) -> int:
    # Ctrl-C and `kill` must unwind through the write-then-rename contexts so temporaries are removed,
    # even when the parent started us with SIGINT ignored (background jobs, CI runners).
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    parser = argparse.ArgumentParser(prog="python -m tasks.build.runner", description=__doc__)
    parser.add_argument("--config", type=Path, default=None)
    parser.add_argument("task")
    args = parser.parse_args(argv)
    stage: Stage | None = None
    try:
        config = load_config(args.config)
        stages = {s.task: s for s in all_stages(config)}
        if args.task not in stages:
            raise UserError(f"no stage named {args.task!r} in {config.path}")
        stage = stages[args.task]
        stage.log.parent.mkdir(parents=True, exist_ok=True)
        with open(stage.log, "a", encoding="utf-8") as log_fh:
            def log(msg: str) -> None:
                line = f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {msg}"
                print(line, file=log_fh, flush=True)
                print(msg, file=sys.stderr, flush=True)

            start = time.monotonic()
            built = run(stage, config, log)
            if built:
                log(f"{stage.task}: {time.monotonic() - start:.1f}s")
    except UserError as exc:
        print(f"modelmake: error: {args.task}: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:  # the disk or the filesystem, not our code: one line, no traceback
        print(f"modelmake: error: {args.task}: {os_error_line(exc, stage)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"modelmake: {args.task}: interrupted; nothing half-written was kept", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
