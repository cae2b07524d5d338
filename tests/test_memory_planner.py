"""The memory planner: KV-cache and weight arithmetic against known figures, the plan table, and
a deployment that cannot fit failing the build before anything is merged or converted."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from deploy_support import demo_copy

from tasks.core.config.schema import HardwareProfile
from tasks.core.errors import UserError
from tasks.deploy import planner, vllm

# Qwen2.5-7B-Instruct's config.json (the values that matter here).
QWEN25_7B = {
    "model_type": "qwen2", "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
    "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064, "max_position_embeddings": 32768,
    "tie_word_embeddings": False, "torch_dtype": "bfloat16",
}
T4 = HardwareProfile("t4", "gpu", 15.36, 0.9, 1.0, 4, bf16=False)
VPS = HardwareProfile("vps", "cpu", 2.0, 1.0, 0.5, 1)


def test_qwen25_7b_known_figures() -> None:
    shape = planner.shape_from_config(QWEN25_7B)
    assert (shape.layers, shape.kv_heads, shape.head_dim) == (28, 4, 128)
    assert shape.kv_bytes_per_token("f16") == 56 * 1024  # 28 x 4 x 128 x 2 (K and V) x 2 bytes
    assert shape.kv_bytes_per_token("fp8") == 28 * 1024
    assert shape.params == 7_615_616_512  # Qwen2.5-7B's published 7.61 B
    q4, source = planner.gguf_weight_bytes(shape, "q4_k_m")
    assert source == "estimate" and 4.5e9 < q4 < 4.8e9  # the published Q4_K_M GGUF is 4.68 GB


def test_qwen25_7b_on_a_t4_and_a_small_vps() -> None:
    shape = planner.shape_from_config(QWEN25_7B)
    q4, src = planner.gguf_weight_bytes(shape, "q4_k_m")
    on_t4 = planner.fit(shape, T4, "gguf", "q4_k_m", q4, src)
    assert on_t4.budget == int(15.36e9 * 0.9 - 1e9)
    assert on_t4.max_context == 32768  # the whole context window: 4.66 GB + 1.88 GB of KV cache
    # vLLM serves 16-bit weights: 15.2 GB, more than the T4's usable 12.8 GB.
    with pytest.raises(UserError, match=r"weights 15\.23 GB .* budget 12\.82 GB .*weights alone do not fit"):
        vllm.plan("qwen", shape, "bfloat16", {"dtype": "auto", "kv_cache_dtype": "auto", "max_model_len": None},
                  T4, 4096)
    on_vps = planner.fit(shape, VPS, "gguf", "q4_k_m", q4, src)
    assert on_vps.max_context == 0
    with pytest.raises(UserError) as err:
        planner.require_fit(on_vps, 2048, VPS, "models.qwen.deploy")
    assert "q4_k_m does not fit on hardware 'vps' at context 2048" in str(err.value)
    assert "budget 1.50 GB (2 GB x 1 - 0.5 GB reserve)" in str(err.value)


def test_vllm_on_a_t4_gets_float16_and_the_context_that_fits() -> None:
    small = {**QWEN25_7B, "hidden_size": 1536, "intermediate_size": 8960, "num_attention_heads": 12,
             "num_key_value_heads": 2, "vocab_size": 151936, "tie_word_embeddings": True}  # Qwen2.5-1.5B
    shape = planner.shape_from_config(small)
    p = vllm.plan("q15", shape, "bfloat16", {"dtype": "auto", "kv_cache_dtype": "auto", "max_model_len": None},
                  T4, 4096)
    assert p.dtype == "float16"  # a T4 has no bfloat16
    assert p.gpu_memory_utilization == 0.9 and p.max_model_len == 32768
    args = vllm.server_args(p, "q15", "127.0.0.1", 8000)
    assert args[args.index("--max-model-len") + 1] == "32768"


def test_planner_kv_cache_equals_what_llama_cpp_allocates(built_demo) -> None:
    """The demo's KV cache as llama.cpp reports it (llama_kv_cache: size = ...) at n_ctx 512."""
    gguf = built_demo.artifacts / "demo" / "demo-q4_k_m.gguf"
    code = f"from llama_cpp import Llama; Llama(model_path={str(gguf)!r}, n_ctx=512, verbose=True)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    m = re.search(r"llama_kv_cache: size =\s+([\d.]+) MiB \(\s*(\d+) cells", proc.stderr + proc.stdout)
    assert m, proc.stderr[-2000:]
    shape = planner.model_shape(built_demo.artifacts / "demo" / "merged")
    assert float(m.group(1)) * 2**20 == shape.kv_bytes_per_token("f16") * int(m.group(2)) == 512 * 1024


def test_plan_task_prints_the_table(built_demo, tmp_path: Path) -> None:
    run = demo_copy(built_demo, tmp_path / "ws").doit("plan:demo")
    assert "memory plan for demo" in run.stdout
    assert re.search(r"vps\s+gguf\s+q4_k_m\s+38\.6 MB file\s+1\.50 GB\s+4096", run.stdout), run.stdout


def test_deployment_that_cannot_fit_fails_the_build_before_merging(built_demo, tmp_path: Path) -> None:
    ws = demo_copy(built_demo, tmp_path / "ws")
    text = ws.config.read_text().replace("memory_gb = 2.0", "memory_gb = 0.52")  # vps: 20 MB budget
    ws.config.write_text(text)
    for d in ("merged", "demo-f16.gguf", "demo-q4_k_m.gguf"):  # force a full rebuild if the plan passed
        p = ws.artifacts / "demo" / d
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink()
    run = ws.doit(check=False)
    assert run.returncode != 0
    assert "q4_k_m does not fit on hardware 'vps' at context 512" in run.stdout + run.stderr
    assert "merge:demo" not in run.executed and "convert:demo" not in run.executed
    assert not (ws.artifacts / "demo" / "merged").exists()


def test_render_checks_the_fit_again_with_the_real_gguf_size(built_demo, tmp_path: Path) -> None:
    """Estimates can be low (a tiny model is mostly vocabulary); the built file's size is final."""
    ws = demo_copy(built_demo, tmp_path / "ws")
    ws.config.write_text(ws.config.read_text().replace("memory_gb = 2.0", "memory_gb = 0.535"))  # 35 MB
    run = ws.doit("render:demo", check=False)
    assert run.returncode != 0
    assert re.search(r"does not fit on hardware 'vps' at context 512: weights 38\.6 MB \(file\)",
                     run.stdout + run.stderr), run.stdout + run.stderr
