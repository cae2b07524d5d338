"""modelmake: LoRA adapter -> merged model -> GGUF -> quantizations -> deployment files.

`doit` builds everything in models.toml; `doit list` shows the tasks. This file only wires
stages from tasks/ into doit; see tasks/graph.py for why freshness is content-keyed.
"""

import sys

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


def task_lock():
    """Write models.lock: every artifact's key and SHA256 (the default: builds everything)."""
    return lock_task(CONFIG)
