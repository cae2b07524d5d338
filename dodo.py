"""modelmake: LoRA adapter -> merged model -> GGUF -> quantizations -> deployment files.

`doit` builds everything in models.toml; `doit list` shows the tasks. This file only wires
stages from tasks/ into doit; see tasks/graph.py for why freshness is content-keyed.
"""

import sys

from tasks import deploy_tasks
from tasks.config import load_config
from tasks.errors import UserError
from tasks.graph import lock_task, tasks_of_kind
from tasks.reporter import SummaryReporter

try:
    CONFIG = load_config()
except UserError as exc:
    print(f"modelmake: error: {exc}", file=sys.stderr)
    sys.exit(2)

DOIT_CONFIG = {
    "default_tasks": ["lock"],
    "reporter": SummaryReporter,
    "backend": "sqlite3",
    # doit's own state is not used to decide freshness (see tasks/graph.py); keep it per config.
    "dep_file": str(CONFIG.root / ".doit.db"),
}


def task_fixture():
    """Build the embedded demo's fixtures (tiny base model, trained LoRA adapter)."""
    yield from tasks_of_kind(CONFIG, "fixture")


def task_fetch():
    """Fetch remote adapters and bases (SSH, Hugging Face Hub) into artifacts/sources/, verified."""
    for task in tasks_of_kind(CONFIG, "fetch"):
        # Always run: the remote may have changed. Downstream stays content-keyed, so identical
        # bytes rebuild nothing (tasks/fetch_stage.py).
        yield {**task, "uptodate": [False]}


def task_adapter():
    """Check a model's LoRA adapter and record its hashes."""
    yield from tasks_of_kind(CONFIG, "adapter")


def task_merge():
    """Merge a model's adapter into its base (Hugging Face safetensors)."""
    yield from tasks_of_kind(CONFIG, "merge")


def task_convert():
    """Convert a merged model to an F16/BF16 GGUF with llama.cpp."""
    yield from tasks_of_kind(CONFIG, "convert")


def task_quantize():
    """Quantize GGUFs: quantize:<model> for all types, quantize:<model>-<type> for one."""
    yield from tasks_of_kind(CONFIG, "quantize")


def task_render():
    """Render a model's Ollama Modelfile and LM Studio config from templates/."""
    yield from tasks_of_kind(CONFIG, "render")


def task_check():
    """Check every GGUF against the merged model (validity, parity, adapter survival) and gate its quants."""
    yield from tasks_of_kind(CONFIG, "check")


def task_report():
    """Measure runtime and write artifacts/report/ (per model + side by side): `make report`."""
    yield from tasks_of_kind(CONFIG, "report")


def task_plan():
    """Memory plan: largest context per quant and hardware profile; fails early if a deployment cannot fit."""
    yield from deploy_tasks.plan_tasks(CONFIG)


def task_deploy():
    """Deploy a model to its targets: `ollama create` (if installed), LM Studio install (with backup)."""
    yield from deploy_tasks.deploy_tasks(CONFIG)


def task_rollback():
    """Restore the LM Studio installation that the last deploy of a model replaced."""
    yield from deploy_tasks.rollback_tasks(CONFIG)


def task_serve():
    """Start llama.cpp's OpenAI-compatible server for a model (127.0.0.1:<deploy.port>)."""
    yield from deploy_tasks.serve_tasks(CONFIG)


def task_stop():
    """Stop a model's llama.cpp server."""
    yield from deploy_tasks.stop_tasks(CONFIG)


def task_health():
    """Check a model's files and live server: healthy / degraded / unhealthy (JSON in artifacts/run/)."""
    yield from deploy_tasks.health_tasks(CONFIG)


def task_lock():
    """Write models.lock: every artifact's key and SHA256 (the default: builds everything)."""
    return lock_task(CONFIG)
