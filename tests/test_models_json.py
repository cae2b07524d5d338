"""CI fan-out: models.toml's models as JSON (one matrix job each), and the workflow wired to them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml
from conftest import REPO, TWO_MODELS, demo_config

from tasks.build.graph import lock_task
from tasks.core.config.load import load_config

WORKFLOW = REPO / ".github" / "workflows" / "models.yml"


def two_models(tmp_path: Path) -> Path:
    for name in ("alpha", "beta"):
        (tmp_path / "adapters" / name).mkdir(parents=True)
    (tmp_path / "templates").symlink_to(REPO / "templates")
    (tmp_path / "models.toml").write_text(demo_config(TWO_MODELS))
    return tmp_path / "models.toml"


def models_json(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tasks.build.models_json", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=60)


def test_every_model_once_with_the_tasks_lock_needs_from_it(tmp_path: Path) -> None:
    config = two_models(tmp_path)
    proc = models_json("--config", str(config))
    assert proc.returncode == 0, proc.stderr
    listed = json.loads(proc.stdout)
    assert [m["model"] for m in listed] == ["alpha", "beta"]
    lock_deps = set(lock_task(load_config(config))["task_dep"])
    union = {t for m in listed for t in m["tasks"]}
    assert union == lock_deps  # the matrix jobs together build exactly what models.lock needs
    for m in listed:
        assert all(t.split(":", 1)[1].split("-")[0] == m["model"] for t in m["tasks"]), m
    one = models_json("--config", str(config), "--tasks", "beta")
    assert one.stdout.split() == listed[1]["tasks"]


def test_unknown_model_is_one_line_and_exit_2(tmp_path: Path) -> None:
    proc = models_json("--config", str(two_models(tmp_path)), "--tasks", "gamma")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and "'gamma'" in proc.stderr


def test_workflow_fans_out_one_job_per_model_then_assembles_the_lock() -> None:
    jobs = yaml.safe_load(WORKFLOW.read_text())["jobs"]
    listing = [s for s in jobs["models"]["steps"] if "tasks.build.models_json" in s.get("run", "")]
    assert listing and jobs["models"]["outputs"]["matrix"] == "${{ steps.list.outputs.matrix }}"
    model = jobs["model"]
    assert model["needs"] == "models"
    assert model["strategy"]["matrix"]["include"] == "${{ fromJSON(needs.models.outputs.matrix) }}"
    assert model["env"]["MODELMAKE_CACHE_PUSH"] == "1"
    assert any("join(matrix.tasks, ' ')" in s.get("run", "") for s in model["steps"])
    build = jobs["build"]
    assert build["needs"] == "model" and "MODELMAKE_CACHE" in build["env"]
    order = [s.get("uses", "").split("@")[0] or s.get("run") for s in build["steps"]]
    assert order.index("actions/download-artifact") < order.index("make all")
