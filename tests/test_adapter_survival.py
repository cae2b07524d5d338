"""Adapter survival: a merge or an export that dropped the adapter fails the check, naming the gate."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import PY, REPO, Workspace

from tasks.gguf.convert import convert


@pytest.fixture
def f16_only(fixtures_ws: Workspace, tmp_path: Path) -> Workspace:
    """A private copy of the built demo, checked on its F16 GGUF only (keeps each run short)."""
    ws = fixtures_ws.copy_to(tmp_path / "ws")
    text = ws.config.read_text()
    ws.config.write_text(text.replace('quants = ["q8_0", "q4_k_m"]', "quants = []"))
    assert "quants = []" in ws.config.read_text()
    return ws


def run_check(ws: Workspace) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "tasks.build.runner", "--config", str(ws.config), "check:demo"], cwd=REPO,
                          env=ws.env(), capture_output=True, text=True, timeout=600)


def test_gguf_converted_from_base_weights_fails_adapter_survival(f16_only: Workspace) -> None:
    """The GGUF is a real, valid conversion with the right tokenizer: of the base model, not the fine-tune."""
    base = f16_only.artifacts / "fixtures" / "demo-base"
    gguf = f16_only.artifacts / "demo" / "demo-f16.gguf"
    gguf.unlink()
    convert(base, gguf, "f16", "demo", f16_only.root / "convert.log")
    proc = run_check(f16_only)
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()[-1]
    assert err.startswith("modelmake: error: check:demo: check failed")
    assert "gate models.demo.gates.min_adapter_retention.f16: adapter survival: the f16 GGUF keeps" in err
    assert "GGUF validity" not in err  # nothing else is wrong with the file
    assert not (f16_only.artifacts / "demo" / "check.json").exists()


def test_merged_model_that_lost_the_adapter_fails_adapter_survival(f16_only: Workspace) -> None:
    """merged/ holds the base weights (a merge that silently did nothing)."""
    merged = f16_only.artifacts / "demo" / "merged"
    shutil.copyfile(f16_only.artifacts / "fixtures" / "demo-base" / "model.safetensors", merged / "model.safetensors")
    proc = run_check(f16_only)
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()[-1]
    assert "adapter survival: the merged model keeps" in err
    assert "min_adapter_retention.f16" in err
