"""Build-memory planning: the machine's or cgroup's limit, each stage's expected peak, a warning before
a stage that cannot fit, and the table in `plan`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import PY, REPO

from tasks.build import memory_plan
from tasks.build.memory_plan import GB, ModelFacts, memory_limit, model_facts, stage_peak

V1_UNLIMITED = "9223372036854771712\n"


def fake_system(root: Path, cgroup_lines: str, files: dict[str, str], mem_kb: int = 24_000_000) -> tuple[Path, Path]:
    proc, cg = root / "proc", root / "cgroup"
    (proc / "self").mkdir(parents=True)
    (proc / "meminfo").write_text(f"MemTotal:       {mem_kb} kB\nMemFree:        1 kB\n")
    (proc / "self" / "cgroup").write_text(cgroup_lines)
    for rel, text in files.items():
        (cg / rel).parent.mkdir(parents=True, exist_ok=True)
        (cg / rel).write_text(text)
    return proc, cg


def test_cgroup_v1_limit_of_an_ancestor_applies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(memory_plan.ENV, raising=False)
    proc, cg = fake_system(tmp_path, "4:memory:/runner/job7\n3:cpu:/\n", {
        "memory/runner/job7/memory.limit_in_bytes": V1_UNLIMITED,
        "memory/runner/memory.limit_in_bytes": f"{7 * 1024**3}\n",
        "memory/memory.limit_in_bytes": V1_UNLIMITED,
    })
    limit = memory_limit(proc, cg)
    assert limit.bytes == 7 * 1024**3 and limit.source == "cgroup v1 /runner"


def test_cgroup_v2_max_and_numbers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(memory_plan.ENV, raising=False)
    proc, cg = fake_system(tmp_path, "0::/user.slice/ci.scope\n", {
        "cgroup.controllers": "memory\n",
        "user.slice/ci.scope/memory.max": "max\n",
        "user.slice/memory.max": "16000000000\n",
    })
    assert memory_limit(proc, cg) == memory_plan.Limit(16_000_000_000, "cgroup v2 /user.slice")


def test_no_cgroup_limit_means_the_machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(memory_plan.ENV, raising=False)
    proc, cg = fake_system(tmp_path, "4:memory:/\n0::/\n", {"memory/memory.limit_in_bytes": V1_UNLIMITED},
                           mem_kb=2_000_000)
    assert memory_limit(proc, cg) == memory_plan.Limit(2_048_000_000, "MemTotal (/proc/meminfo)")
    monkeypatch.setenv(memory_plan.ENV, "7")
    assert memory_limit(proc, cg) == memory_plan.Limit(7 * GB, memory_plan.ENV)


def write_model(root: Path) -> tuple[Path, Path]:
    """Headers-only safetensors (a 1000 x 64 embedding and two projections) and an adapter on one of them."""
    import struct

    def safetensors(path: Path, tensors: dict[str, list[int]], dtype: str) -> None:
        width = {"BF16": 2, "F32": 4}[dtype]
        header, offset = {}, 0
        for name, shape in tensors.items():
            n = width * shape[0] * shape[1]
            header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n]}
            offset += n
        raw = json.dumps(header).encode()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(offset))

    base, adapter = root / "base", root / "adapter"
    safetensors(base / "model.safetensors", {"model.embed_tokens.weight": [1000, 64],
                                             "model.layers.0.mlp.up_proj.weight": [256, 64],
                                             "model.layers.0.self_attn.q_proj.weight": [64, 64]}, "BF16")
    (base / "config.json").write_text(json.dumps({"vocab_size": 1000}))
    safetensors(adapter / "adapter_model.safetensors", {
        "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": [4, 64],
        "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": [64, 4]}, "F32")
    return base, adapter


def test_facts_and_peaks_follow_the_model(tmp_path: Path) -> None:
    base, adapter = write_model(tmp_path)
    samples = tmp_path / "eval.jsonl"
    samples.write_text(json.dumps({"messages": [{"role": "user", "content": "x" * 40},
                                                {"role": "assistant", "content": "y" * 40}]}) + "\n")
    facts = model_facts(base, adapter, samples)
    assert facts == ModelFacts(params=64000 + 16384 + 4096, dtype_bytes=2, largest=64000, largest_adapted=4096,
                               vocab=1000, positions=20 + 12)
    assert stage_peak("convert", facts) == memory_plan.RUNTIME["converter"] + 8 * 64000
    assert stage_peak("merge", facts) == memory_plan.RUNTIME["torch"] + 10 * 4096
    assert stage_peak("merge", facts, "peft") > stage_peak("merge", facts)
    bigger = ModelFacts(7_600_000_000, 2, 545_000_000, 68_000_000, 152064, 333)
    assert 3.0 * GB < stage_peak("convert", bigger) < 5 * GB  # measured at 7B shape: 3.6 GB peak RSS
    assert stage_peak("check", bigger) < 2.5 * GB
    assert model_facts(tmp_path / "absent", adapter, samples) is None


def test_plan_prints_build_memory_and_a_stage_that_cannot_fit_says_so(tmp_path: Path, demo_fixtures: Path) -> None:
    fixtures = demo_fixtures
    ws = tmp_path / "ws"
    shutil.copytree(fixtures / "demo-base", ws / "base")
    shutil.copytree(fixtures / "demo-adapter", ws / "adapter")
    shutil.copytree(REPO / "templates", ws / "templates")
    (ws / "models.toml").write_text('[build]\nartifacts = "artifacts"\n[models.small]\nbase = "base"\n'
                                    'adapter = "adapter"\nquants = ["q8_0"]\n')
    env = {**os.environ, memory_plan.ENV: "0.05", "MODELMAKE_CONFIG": str(ws / "models.toml")}
    plan = subprocess.run([PY, "-m", "doit", "-f", str(REPO / "dodo.py"), "plan:small"],
                          cwd=REPO, env=env, capture_output=True, text=True)
    assert plan.returncode == 0, plan.stderr
    assert "build memory for small: limit 0.1 GB (MODELMAKE_MEMORY_GB)" in plan.stdout
    assert "merge:small" in plan.stdout and "check:small" in plan.stdout and " NO" in plan.stdout
    run = subprocess.run([PY, "-m", "tasks.build.runner", "--config", str(ws / "models.toml"), "adapter:small"],
                         cwd=REPO, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    lines = run.stderr.splitlines()
    warning = [ln for ln in lines if ln.startswith("warning: adapter:small: expected to need about")]
    assert len(warning) == 1 and "more than the 0.05 GB this machine allows (MODELMAKE_MEMORY_GB)" in warning[0]
    assert lines.index(warning[0]) < lines.index("adapter:small: built")
