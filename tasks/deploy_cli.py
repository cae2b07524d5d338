"""Deployment commands: `python -m tasks.deploy_cli [--config models.toml] <command> <model>`.

plan      memory table for every hardware profile; fails (exit 2) if the deployment cannot fit
deploy    every target in deploy.targets: `ollama create` (if ollama is on PATH), LM Studio install
rollback  restore the LM Studio installation a deploy replaced
serve     start llama.cpp's OpenAI-compatible server on the model's port
stop      stop that server
health    file and live-server checks; exit 0 healthy, 1 degraded, 2 unhealthy, 3 could not check

dodo.py runs these as doit tasks (tasks/deploy_tasks.py); a UserError is one line, no traceback.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from tasks.config import Config, ModelSpec, load_config
from tasks.deploy_config import needs_gguf
from tasks.errors import UserError


def shape_dir(config: Config, m: ModelSpec) -> Path:
    """Where the planner reads the model's shape: merged/ once built, else the base model."""
    merged = config.artifacts / m.name / "merged"
    return merged if (merged / "config.json").is_file() else m.base.path


def plan(config: Config, m: ModelSpec) -> tuple[str, list[str]]:
    """(table, problems): every profile x quant, and why the configured deployment does not fit."""
    from tasks import planner, vllm
    from tasks.render_stage import deploy_quant, vllm_profile
    from tasks.stages import gguf_path

    shape = planner.model_shape(shape_dir(config, m))
    rows: list[tuple[Any, Any]] = []
    problems: list[str] = []
    quants = (m.outtype, *m.quants) if needs_gguf(m.deploy) else ()
    for profile in config.hardware.values():
        for q in quants:
            try:
                weights, source = planner.gguf_weight_bytes(shape, q, gguf_path(config, m.name, q))
            except UserError:
                continue
            rows.append((planner.fit(shape, profile, "gguf", q, weights, source), profile))
        if "vllm" in m.deploy.targets and profile.kind == "gpu":
            rows.append((planner.fit(shape, profile, "vllm", "16-bit", planner.vllm_weight_bytes(shape),
                                     "2 B/param", "fp8" if m.deploy.vllm.kv_cache_dtype == "fp8" else "f16"), profile))
    text = planner.table(m.name, shape, rows, m.deploy.context)
    if not config.hardware:
        text += "\n(no [hardware.<name>] profiles in models.toml: nothing to plan against)"
    from tasks import build_memory  # the build's own memory on this machine: informs, never fails the plan

    text += "\n\n" + build_memory.table(config, m.name)
    if m.deploy.hardware and needs_gguf(m.deploy):
        q, profile = deploy_quant(m), config.hardware[m.deploy.hardware]
        weights, source = planner.gguf_weight_bytes(shape, q, gguf_path(config, m.name, q))
        try:
            planner.require_fit(planner.fit(shape, profile, "gguf", q, weights, source), m.deploy.context,
                                profile, f"models.{m.name}.deploy")
        except UserError as exc:
            problems.append(str(exc))
    if "vllm" in m.deploy.targets and vllm_profile(config, m):
        profile = config.hardware[vllm_profile(config, m)]
        try:
            vllm.plan(m.name, shape, None, vars(m.deploy.vllm), profile, m.deploy.context)
        except UserError as exc:
            problems.append(str(exc))
    return text, problems


def plan_fits(config: Config, m: ModelSpec) -> bool:
    """doit `uptodate` of plan:<model>: True (nothing to report) when the deployment fits."""
    try:
        return not plan(config, m)[1]
    except Exception:  # let the action run and report it properly
        return False


def deploy(config: Config, m: ModelSpec) -> list[str]:
    from tasks import lmstudio

    root = config.artifacts / m.name
    out = []
    for target in m.deploy.targets:
        if target == "ollama":
            modelfile = root / "Modelfile"
            if not modelfile.is_file():
                raise UserError(f"{modelfile}: not rendered; run `doit render:{m.name}`")
            exe = shutil.which("ollama")
            if exe is None:
                out.append(f"ollama: not on PATH; Modelfile ready: {modelfile} "
                           f"(run: ollama create {m.name} -f {modelfile})")
                continue
            proc = subprocess.run([exe, "create", m.name, "-f", str(modelfile)], cwd=root,
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                raise UserError(f"ollama create {m.name} failed ({proc.returncode}): "
                                f"{(proc.stderr or proc.stdout).strip().splitlines()[-1:]}")
            out.append(f"ollama: created model {m.name} from {modelfile}")
        elif target == "lmstudio":
            out.append(lmstudio.deploy(config, m))
        elif target == "llamacpp":
            out.append(f"llamacpp: start the server with `doit serve:{m.name}` "
                       f"(http://{m.deploy.host}:{m.deploy.port}/v1)")
        elif target == "vllm":
            out.append(f"vllm: launch with {root / 'vllm-serve.sh'} or "
                       f"`docker compose -f {root / 'vllm-compose.yaml'} up` (serves {root / 'merged'})")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tasks.deploy_cli", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=None)
    parser.add_argument("command", choices=("plan", "deploy", "rollback", "serve", "stop", "health"))
    parser.add_argument("model")
    parser.add_argument("--json", action="store_true", help="health: print the report as JSON")
    parser.add_argument("--timeout", type=float, default=None, help="health: seconds per request")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
        if args.model not in config.models:
            raise UserError(f"no model named {args.model!r} in {config.path}")
        m = config.models[args.model]
        if args.command == "plan":
            text, problems = plan(config, m)
            print(text)
            if problems:
                raise UserError("; ".join(problems))
        elif args.command == "deploy":
            print("\n".join(deploy(config, m)))
        elif args.command == "rollback":
            from tasks import lmstudio

            if "lmstudio" not in m.deploy.targets:
                raise UserError(f"models.{m.name}.deploy.targets: no lmstudio target, nothing to roll back")
            print(lmstudio.rollback(config, m))
        elif args.command in ("serve", "stop"):
            from tasks import serve

            print(serve.start(config, m) if args.command == "serve" else serve.stop(config, m))
        else:
            from tasks import health

            report = health.check(config, m, args.timeout)
            print(report.to_json() if args.json else report.summary())
            return health.EXIT[report.status]
    except UserError as exc:
        print(f"modelmake: error: {args.command}:{args.model}: {exc}", file=sys.stderr)
        return 3 if args.command == "health" else exc.exit_code
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
