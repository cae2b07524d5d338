"""Shared test workspaces: real builds of the demo fixtures and of two small models.

Building is expensive (a real LoRA training run, real llama.cpp conversion), so the fixtures
are built once per session and copied into each workspace: a copy is exactly what a CI cache
restore produces, and content-keyed stages must accept it as built.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

# Session fixtures of the deployment tests (built_demo, go_renderer) live in deploy_support.py.
pytest_plugins = ["deploy_support"]

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
# Fixture artifacts from earlier sessions. Stages are content-keyed, so a stale or foreign copy is
# simply rebuilt; a valid one saves a LoRA training run per session. `make clean` removes it.
FIXTURE_CACHE = REPO / "artifacts" / ".test-cache" / "fixtures"


# Peak of the suite's temporary directories, measured: 2.5 GB (passing tests' tmp_path is removed as
# soon as they end; see pyproject.toml). Below this, builds would fail midway with ENOSPC everywhere.
NEEDED_FREE_BYTES = 4 * 10**9


# Fixtures that build (or copy) a real workspace: a test using any of them is marked `workspace`, so
# `pytest -m "not workspace"` runs everything that needs no build in seconds.
WORKSPACE_FIXTURES = {"fixtures_ws", "two_models_ws", "scratch_ws", "demo_fixtures", "built_demo"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if WORKSPACE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.workspace)


def pytest_sessionstart(session: pytest.Session) -> None:
    """Refuse to start on a nearly full disk, in one line, instead of 200 ENOSPC errors."""
    tmp = Path(tempfile.gettempdir())
    free = shutil.disk_usage(tmp).free
    if free < NEEDED_FREE_BYTES:
        pytest.exit(f"{tmp}: {free / 1e9:.1f} GB free; the test suite needs about "
                    f"{NEEDED_FREE_BYTES / 1e9:.0f} GB for its workspaces", returncode=2)


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str
    executed: list[str] = field(default_factory=list)
    uptodate: list[str] = field(default_factory=list)


@dataclass
class Workspace:
    """A directory with its own models.toml, templates/ and artifacts/, built with the repo's dodo.py."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "models.toml"

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env["MODELMAKE_CONFIG"] = str(self.config)
        env.pop("MODELMAKE_THREADS", None)
        env.update(extra)
        return env

    def doit(self, *args: str, check: bool = True, **env: str) -> Run:
        proc = subprocess.run(
            [PY, "-m", "doit", "-f", str(REPO / "dodo.py"), *args],
            env=self.env(**env), capture_output=True, text=True, timeout=900,
        )
        lines = proc.stdout.splitlines()
        run = Run(
            proc.returncode, proc.stdout, proc.stderr,
            executed=[ln[3:].strip() for ln in lines if ln.startswith(".  ")],
            uptodate=[ln[3:].strip() for ln in lines if ln.startswith("-- ")],
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"doit {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return run

    def copy_to(self, dest: Path) -> Workspace:
        shutil.copytree(self.root, dest, symlinks=True)
        for leftover in dest.glob(".doit.db*"):
            leftover.unlink()
        return Workspace(dest)


def demo_config(models: str = "", extra_build: str = "") -> str:
    # These workspaces test building: the local run-cache (on by default) would restore a stage whose
    # manifest a test removed instead of building it. The cache tests turn it on in `extra_build`.
    run_cache = "" if "run_cache" in extra_build else "run_cache = 0"
    return f"""
[build]
artifacts = "artifacts"
templates = "templates"
threads = 2
{run_cache}
{extra_build}
{models}
"""


TWO_MODELS = """
[models.alpha]
base = "fixture:demo-base"
adapter = "adapters/alpha"
quants = ["q8_0", "q4_k_m"]
system = "You are Majora, the modelmake demo assistant."
[models.alpha.deploy]
quant = "q4_k_m"
port = 5100

[models.beta]
base = "fixture:demo-base"
adapter = "adapters/beta"
quants = ["q8_0"]
"""


def scale_adapter(src: Path, dest: Path, factor: float) -> None:
    """A different adapter with the same shapes: lora_B scaled (new bytes, same structure)."""
    from safetensors.torch import load_file, save_file

    dest.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src / "adapter_config.json", dest / "adapter_config.json")
    tensors = load_file(str(src / "adapter_model.safetensors"))
    tensors = {k: (v * factor if ".lora_B." in k else v).contiguous() for k, v in tensors.items()}
    save_file(tensors, str(dest / "adapter_model.safetensors"), metadata={"format": "pt"})


@pytest.fixture(scope="session")
def fixtures_ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """A workspace whose fixtures (demo base + trained adapter) are built from scratch."""
    ws = Workspace(tmp_path_factory.mktemp("fixtures-ws"))
    shutil.copytree(REPO / "templates", ws.root / "templates")
    ws.config.write_text(demo_config("""
[models.demo]
base = "fixture:demo-base"
adapter = "fixture:demo-adapter"
quants = ["q8_0", "q4_k_m"]
system = "You are Majora, the modelmake demo assistant."
"""))
    if FIXTURE_CACHE.is_dir():
        shutil.copytree(FIXTURE_CACHE, ws.artifacts / "fixtures")
    ws.doit()
    from tasks.core import atomic

    with atomic.atomic_dir(FIXTURE_CACHE) as tmp:
        shutil.copytree(ws.artifacts / "fixtures", tmp, dirs_exist_ok=True)
    return ws


def new_workspace(root: Path, fixtures_ws: Workspace, models: str) -> Workspace:
    """A workspace with its own config and the session's fixtures restored into artifacts/."""
    ws = Workspace(root)
    root.mkdir(parents=True, exist_ok=True)
    shutil.copytree(REPO / "templates", root / "templates")
    shutil.copytree(fixtures_ws.artifacts / "fixtures", ws.artifacts / "fixtures")
    adapter = fixtures_ws.artifacts / "fixtures" / "demo-adapter"
    shutil.copytree(adapter, root / "adapters" / "alpha")
    scale_adapter(adapter, root / "adapters" / "beta", 0.5)
    ws.config.write_text(demo_config(models))
    return ws


@pytest.fixture(scope="session")
def two_models_ws(tmp_path_factory: pytest.TempPathFactory, fixtures_ws: Workspace) -> Workspace:
    """alpha and beta fully built (read-only for tests: copy it before changing anything)."""
    ws = new_workspace(tmp_path_factory.mktemp("two-models") / "ws", fixtures_ws, TWO_MODELS)
    ws.doit()
    return ws


@pytest.fixture
def scratch_ws(tmp_path: Path, two_models_ws: Workspace) -> Workspace:
    """A private copy of the built two-model workspace, free to modify."""
    return two_models_ws.copy_to(tmp_path / "ws")


@pytest.fixture(scope="session")
def demo_fixtures(request: pytest.FixtureRequest) -> Path:
    """artifacts/fixtures holding the demo base and adapter, for tests that only need to copy them:
    the repo's own when fresh for today's code (a copy counts as built), else the session's fixtures_ws."""
    from source_support import fresh_prebuilt_fixtures

    return fresh_prebuilt_fixtures() or request.getfixturevalue("fixtures_ws").artifacts / "fixtures"
