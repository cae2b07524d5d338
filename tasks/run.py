"""Stage runner: `python -m tasks.run --config models.toml <task>` builds one stage.

doit calls this as a subprocess per stage, so heavy libraries (torch, transformers, llama.cpp)
load only where they are needed, a stage's memory is returned when it ends, and a user error
is one line on stderr with exit code 2 instead of a traceback.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

from tasks.config import load_config
from tasks.errors import UserError
from tasks.manifest import Stage, run_stage
from tasks.stages import all_stages


def builder(stage: Stage, threads: int):
    """The build function of a stage kind (imported lazily: each pulls in its own libraries)."""
    kind = stage.kind
    if kind == "adapter":
        from tasks import adapter_check
        return adapter_check.build
    if kind == "merge":
        from tasks import merge_peft
        return merge_peft.build
    if kind == "convert":
        from tasks import convert
        return convert.build
    if kind == "quantize":
        from tasks import quantize
        return lambda s: quantize.build(s, threads)
    if kind == "render":
        from tasks import render
        return render.build
    if kind == "check":
        from tasks import check_stage
        return check_stage.build
    if kind in ("report", "report-compare"):
        from tasks import report
        return report.build if kind == "report" else report.build_compare
    if kind in ("tiny-base", "lora-train"):
        from tasks.fixtures import build_stage
        return build_stage.build
    raise RuntimeError(f"no builder for stage kind {kind!r}")


def precheck(stage: Stage):
    """Input validation that must run before the generic "input missing" check."""
    if stage.kind == "adapter":
        from tasks import adapter_check
        return lambda s: adapter_check.check_adapter(s.inputs["adapter_config"].parent)
    return None


def _announced(config, stage: Stage, build, log):
    """`build`, first saying in one line when the stage is expected not to fit in this machine's memory."""
    def run(s: Stage) -> None:
        from tasks.build_memory import warning

        note = warning(config, s)
        if note:
            log(f"warning: {note}")
        build(s)
    return run


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    # Ctrl-C and `kill` must unwind through the write-then-rename contexts so temporaries are removed,
    # even when the parent started us with SIGINT ignored (background jobs, CI runners).
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    parser = argparse.ArgumentParser(prog="python -m tasks.run", description=__doc__)
    parser.add_argument("--config", type=Path, default=None)
    parser.add_argument("task")
    args = parser.parse_args(argv)
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
            if stage.kind == "fetch":  # contacts the source every run; see tasks/fetch_stage.py
                from tasks.fetch_stage import run_fetch

                built = run_fetch(config, stage, log)
            else:
                built = run_stage(stage, _announced(config, stage, builder(stage, config.threads), log), log,
                                  precheck(stage))
            if built:
                log(f"{stage.task}: {time.monotonic() - start:.1f}s")
    except UserError as exc:
        print(f"modelmake: error: {args.task}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"modelmake: {args.task}: interrupted; nothing half-written was kept", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
