"""modelmake: LoRA adapter -> merged model -> GGUF -> quantizations -> deployment files.

`doit` builds everything in models.toml; `doit list` shows the tasks. This file only wires:
each task_<group> yields the stages of that group from tasks/build/registry.py, whose kinds are
declared in the stages.py of the package that builds them (tasks/merge/stages.py for merge:<m>,
...). See tasks/build/graph.py for why freshness is content-keyed.
"""

import signal
import sys

from tasks.build import deploy_tasks
from tasks.build.doit_state import usable_dep_file
from tasks.build.graph import group_tasks, lock_task
from tasks.build.summary import SummaryReporter
from tasks.core.config.load import load_config
from tasks.core.errors import UserError

try:
    CONFIG = load_config()
except UserError as exc:
    print(f"modelmake: error: {exc}", file=sys.stderr)
    sys.exit(2)



def _interrupted(exc_type, exc, tb):
    """Ctrl-C ends doit with the summary's one line and table (tasks/build/summary.py), not a traceback."""
    if issubclass(exc_type, KeyboardInterrupt):
        print("modelmake: interrupted", file=sys.stderr)
        return
    sys.__excepthook__(exc_type, exc, tb)


def _terminate(signum, _frame):
    raise KeyboardInterrupt(signal.Signals(signum).name)


sys.excepthook = _interrupted
signal.signal(signal.SIGTERM, _terminate)  # `kill <doit>` stops its stage the way Ctrl-C does

DOIT_CONFIG = {
    "default_tasks": ["lock"],
    "reporter": SummaryReporter,
    "backend": "sqlite3",
    # doit's own state is not used to decide freshness (see tasks/build/graph.py); keep it per config.
    "dep_file": usable_dep_file(CONFIG.root / ".doit.db"),
}


def task_fixture():
    """Build the embedded demo's fixtures (tiny base model, trained LoRA adapter)."""
    yield from group_tasks(CONFIG, "fixture")  # tasks/fixtures/stages.py


def task_fetch():
    """Fetch remote adapters and bases (SSH, Hugging Face Hub) into artifacts/sources/, verified."""
    yield from group_tasks(CONFIG, "fetch")  # tasks/sources/stages.py (runs every time)


def task_adapter():
    """Check a model's LoRA adapter and record its hashes."""
    yield from group_tasks(CONFIG, "adapter")  # tasks/merge/stages.py


def task_merge():
    """Merge a model's adapter into its base (Hugging Face safetensors)."""
    yield from group_tasks(CONFIG, "merge")  # tasks/merge/stages.py


def task_convert():
    """Convert a merged model to an F16/BF16 GGUF with llama.cpp."""
    yield from group_tasks(CONFIG, "convert")  # tasks/gguf/stages.py


def task_imatrix():
    """Compute the importance matrix of each model with `imatrix` configured (<model>.imatrix.gguf)."""
    yield from group_tasks(CONFIG, "imatrix")  # tasks/gguf/stages.py


def task_quantize():
    """Quantize GGUFs: quantize:<model> for all types, quantize:<model>-<type> for one."""
    yield from group_tasks(CONFIG, "quantize")  # tasks/gguf/stages.py


def task_lora():
    """The adapter as a GGUF LoRA: lora:<model> (deploy.mode adapter or both)."""
    yield from group_tasks(CONFIG, "lora")  # tasks/merge/stages.py


def task_render():
    """Render a model's Ollama Modelfile and LM Studio config from templates/."""
    yield from group_tasks(CONFIG, "render")  # tasks/deploy/stages.py


def task_check():
    """Check every GGUF against the merged model (validity, parity, adapter survival) and gate its quants."""
    yield from group_tasks(CONFIG, "check")  # tasks/checks/stages.py


def task_report():
    """Measure runtime and write artifacts/report/ (per model + side by side): `make report`."""
    yield from group_tasks(CONFIG, "report")  # tasks/checks/stages.py


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
