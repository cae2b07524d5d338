"""The layout holds: packages import one way, core is standard library only, dodo.py stays light,
every stage kind names a builder that exists, and no module grows past the size a reader can hold."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tasks.build.registry import all_stages
from tasks.core.config.load import load_config
from tasks.core.stage import resolve

REPO = Path(__file__).resolve().parents[1]
HEAVY = {"torch", "transformers", "numpy", "llama_cpp", "peft", "safetensors", "jinja2", "gguf", "tokenizers",
         "huggingface_hub", "requests", "matplotlib", "tqdm"}
MAX_MODULE_LINES = 400


def test_import_linter_contracts_are_kept() -> None:
    """pyproject.toml [tool.importlinter]: build -> features -> formats -> core, features independent."""
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert exe, "import-linter is a pinned dependency (requirements.lock)"
    proc = subprocess.run([exe], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("path", sorted((REPO / "tasks" / "core").rglob("*.py")), ids=lambda p: p.name)
def test_core_imports_only_the_standard_library_and_core(path: Path) -> None:
    foreign = {n for n in _imports(path)
               if n.split(".")[0] not in sys.stdlib_module_names and not n.startswith("tasks.core")}
    assert not foreign, f"{path.relative_to(REPO)} imports {sorted(foreign)}"


def test_loading_dodo_and_every_task_imports_no_heavy_library() -> None:
    """doit loads dodo.py on every call (`doit list`, a no-op build): it must not pay for torch or llama.cpp."""
    code = (
        "import sys, dodo\n"
        "for name in dir(dodo):\n"
        "    if name.startswith('task_'):\n"
        "        made = getattr(dodo, name)()\n"
        "        made if isinstance(made, dict) else list(made)\n"
        "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "MODELMAKE_CONFIG": str(REPO / "models.toml")})
    assert proc.returncode == 0, proc.stderr
    loaded = set(proc.stdout.split())
    assert "tasks" in loaded and not loaded & HEAVY, sorted(loaded & HEAVY)


def test_every_stage_kind_names_a_builder_that_exists() -> None:
    kinds = {s.kind for s in all_stages(load_config(REPO / "models.toml", check_paths=False))}
    assert {k.name for k in kinds} >= {"tiny-base", "lora-train", "adapter", "merge", "convert", "quantize",
                                       "render", "check", "report", "report-compare"}
    for kind in kinds:
        for dotted in filter(None, (kind.builder, kind.precheck, kind.runner)):
            assert callable(resolve(dotted)), f"{kind.name}: {dotted}"


def test_no_module_is_longer_than_a_reader_can_hold() -> None:
    long = {str(p.relative_to(REPO)): n for p in (REPO / "tasks").rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES}
    assert not long, long
