"""Importance-matrix quantization on the demo: the matrix is computed by llama.cpp, reproducibly, the low-bit
ladder it unlocks builds and loads, and the check shows what the matrix bought against the same types without."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import Workspace
from source_support import workspace_with

from tasks.core.layout import FIXTURE_DATA
from tasks.formats.gguf import read_kv
from tasks.gguf import imatrix_file

QUANTS = ["q2_k", "q3_k_m", "q4_k_m", "iq2_xxs", "iq3_xxs", "iq4_xs"]
MODELS = f"""
[models.demo]
base = "fixture:demo-base"
adapter = "fixture:demo-adapter"
quants = {json.dumps(QUANTS)}
system = "You are Majora, the modelmake demo assistant."
imatrix = {{ compare = true }}
[models.demo.gates]
max_kl_mean = 3.0
min_quant_top1 = 0.3
min_adapter_retention = {{ f16 = 0.99, iq2_xxs = 0.2 }}
"""


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, demo_fixtures: Path) -> Workspace:
    ws = workspace_with(tmp_path_factory.mktemp("imatrix") / "ws", demo_fixtures, MODELS)
    ws.doit("check:demo")
    return ws


def check_json(ws: Workspace) -> dict:
    return json.loads((ws.artifacts / "demo" / "check.json").read_text())


def test_matrix_covers_every_block_weight_of_the_f16_gguf(built: Workspace) -> None:
    from tasks.formats.gguf import scan

    m = imatrix_file.read(built.artifacts / "demo" / "demo.imatrix.gguf")
    weights = {t.name: t.shape for t in scan(built.artifacts / "demo" / "demo-f16.gguf").tensors
               if t.name.startswith("blk.") and len(t.shape) == 2}
    assert set(m.sums) == set(weights)
    assert all(m.sums[n].shape == (1, weights[n][0]) for n in weights)
    assert m.datasets == ["calibration.txt"] and m.chunk_size == 512 and m.chunk_count >= 1
    assert all(float(m.counts[n][0]) == float(m.counts["blk.0.attn_q.weight"][0]) > 0 for n in weights)
    assert all((m.sums[n] > 0).all() for n in weights)


def test_matrix_is_byte_identical_with_another_thread_count_and_directory(built: Workspace, tmp_path: Path) -> None:
    other = built.copy_to(tmp_path / "elsewhere")
    matrix = other.artifacts / "demo" / "demo.imatrix.gguf"
    matrix.unlink()
    run = other.doit("imatrix:demo", MODELMAKE_THREADS="1")
    assert "imatrix:demo" in run.executed
    assert matrix.read_bytes() == (built.artifacts / "demo" / "demo.imatrix.gguf").read_bytes()


def test_quants_record_the_matrix_and_the_twins_do_not(built: Workspace) -> None:
    keys = {"quantize.imatrix.file", "quantize.imatrix.dataset", "quantize.imatrix.entries_count"}
    with_matrix = read_kv(built.artifacts / "demo" / "demo-q2_k.gguf", keys)
    assert with_matrix["quantize.imatrix.file"] == "demo.imatrix.gguf"
    assert with_matrix["quantize.imatrix.dataset"] == "calibration.txt"
    assert with_matrix["quantize.imatrix.entries_count"] == 14  # 2 layers x 7 weight matrices
    assert read_kv(built.artifacts / "demo" / "demo-q2_k-noimatrix.gguf", keys) == {}
    assert (built.artifacts / "demo" / "demo-q2_k.gguf").read_bytes() != (
        built.artifacts / "demo" / "demo-q2_k-noimatrix.gguf").read_bytes()


def test_low_bit_ladder_is_valid_and_loads_in_llama_cpp(built: Workspace) -> None:
    check = check_json(built)
    assert check["passed"], check["failures"]
    for q in ("iq2_xxs", "iq3_xxs", "iq4_xs"):
        assert check["validity"][q]["readable"] and q in check["quality"]  # quality figures: llama.cpp ran it
    assert not [p for p in check["problems"] if "GGUF validity" in p]


def test_check_compares_each_matrix_quant_with_the_same_type_without(built: Workspace) -> None:
    comparison = check_json(built)["imatrix"]
    assert set(comparison) == set(QUANTS)
    for q in ("iq2_xxs", "iq3_xxs"):
        assert "without" not in comparison[q]  # llama.cpp refuses these without a matrix: no twin
    for q in ("q2_k", "q3_k_m", "q4_k_m", "iq4_xs"):
        c = comparison[q]
        assert c["kl_mean_ratio"] == pytest.approx(c["with"]["kl_mean"] / c["without"]["kl_mean"], rel=1e-3)
    # Q2_K is where the matrix matters most (llama.cpp's own figures: -25% KL on Llama-3-8B). On this 2-layer toy
    # the sign is a property of the trained weights (README: -14% on the pinned fixtures, +4% with the version-2
    # recipe retrained unpinned): this holds for the x86-64 fixtures' bytes, not for any weights of the recipe.
    assert comparison["q2_k"]["with"]["kl_mean"] < comparison["q2_k"]["without"]["kl_mean"]
    assert comparison["q3_k_m"]["with"]["kl_mean"] < comparison["q3_k_m"]["without"]["kl_mean"]  # the goal


def test_new_calibration_data_rebuilds_the_matrix_and_only_the_quants_using_it(built: Workspace,
                                                                               tmp_path: Path) -> None:
    ws = built.copy_to(tmp_path / "ws")
    chats = FIXTURE_DATA / "demo_calibration_chat.jsonl"  # held-out chats in the fine-tune's style
    use = '["q2_k", "iq2_xxs", "iq3_xxs"]'
    ws.config.write_text(ws.config.read_text().replace(
        "imatrix = { compare = true }", f'imatrix = {{ compare = true, data = ["{chats}"], quants = {use} }}'))
    before = (ws.artifacts / "demo" / "demo-q2_k.gguf").read_bytes()
    run = ws.doit("quantize:demo")
    assert "imatrix:demo" in run.executed and "quantize:demo-q2_k" in run.executed
    assert "quantize:demo-q2_k-noimatrix" in run.uptodate
    assert (ws.artifacts / "demo" / "demo-q2_k.gguf").read_bytes() != before
    m = imatrix_file.read(ws.artifacts / "demo" / "demo.imatrix.gguf")
    assert m.datasets == ["demo_calibration_chat.jsonl"] and m.chunk_count >= 1


def test_matrix_made_for_another_model_is_refused_and_nothing_built(built: Workspace, tmp_path: Path) -> None:
    ws = built.copy_to(tmp_path / "ws")
    m = imatrix_file.read(ws.artifacts / "demo" / "demo.imatrix.gguf")
    m.sums["blk.0.ffn_down.weight"] = m.sums["blk.0.ffn_down.weight"][:, :256]  # another model's shape
    imatrix_file.write(ws.root / "other.imatrix.gguf", m)
    ws.config.write_text(ws.config.read_text().replace("imatrix = { compare = true }",
                                                       'imatrix = { file = "other.imatrix.gguf", compare = true }'))
    target = ws.artifacts / "demo" / "demo-q3_k_m.gguf"
    target.unlink()
    run = ws.doit("quantize:demo-q3_k_m", check=False)
    assert run.returncode != 0
    errors = [ln for ln in run.stderr.splitlines() if "error" in ln.lower()]
    assert any("entry blk.0.ffn_down.weight has 256 values but demo-f16.gguf's tensor has 512" in ln
               for ln in errors), run.stderr
    assert "Traceback" not in run.stderr + run.stdout
    assert not target.exists() and not list(target.parent.glob(".*tmp*"))


def test_report_plots_the_ladder_with_and_without_the_matrix(built: Workspace, tmp_path: Path) -> None:
    ws = built.copy_to(tmp_path / "ws")
    shutil.rmtree(ws.artifacts / "report", ignore_errors=True)
    ws.doit("report:demo")
    report = json.loads((ws.artifacts / "report" / "demo.json").read_text())
    types = {r["type"]: r for r in report["types"]}
    assert {"iq2_xxs", "iq3_xxs", "iq4_xs", "q2_k-noimatrix"} <= set(types)
    assert types["q2_k"]["imatrix"] and not types["q2_k-noimatrix"]["imatrix"]
    md = (ws.artifacts / "report" / "demo.md").read_text()
    assert "## Importance matrix" in md and "| q2_k |" in md
    assert (ws.artifacts / "report" / "demo.png").stat().st_size > 10_000


def test_matrix_equals_squared_inputs_of_the_merged_model_in_transformers(built: Workspace) -> None:
    """An independent computation: forward hooks on the merged HF model (fp32) over the same token chunks give the
    same sums of squares per input column, up to F16-weight rounding (measured: within 0.13%)."""
    import llama_cpp
    import numpy as np
    import torch
    import transformers

    from tasks.core.layout import DEFAULT_CALIBRATION

    m = imatrix_file.read(built.artifacts / "demo" / "demo.imatrix.gguf")
    llm = llama_cpp.Llama(str(built.artifacts / "demo" / "demo-f16.gguf"), vocab_only=True, verbose=False)
    ids = llm.tokenize(DEFAULT_CALIBRATION.read_bytes(), add_bos=False, special=False)
    chunks = [ids[i:i + m.chunk_size] for i in range(0, len(ids), m.chunk_size)]
    assert len(chunks) == m.chunk_count and float(m.counts["blk.0.attn_q.weight"][0]) == len(ids)
    model = transformers.AutoModelForCausalLM.from_pretrained(str(built.artifacts / "demo" / "merged"),
                                                              dtype=torch.float32)
    names = {"self_attn.q_proj": "attn_q", "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate",
             "mlp.down_proj": "ffn_down"}
    sums: dict[str, np.ndarray] = {}
    hooks = []
    for i, layer in enumerate(model.model.layers):
        for path, short in names.items():
            module = layer.get_submodule(path)
            key = f"blk.{i}.{short}.weight"

            def hook(_mod: object, args: tuple, _out: object, key: str = key) -> None:
                x = args[0].detach().double().reshape(-1, args[0].shape[-1])
                sums[key] = sums.get(key, 0) + (x * x).sum(0).numpy()

            hooks.append(module.register_forward_hook(hook))
    with torch.no_grad():
        for c in chunks:
            model(torch.tensor([c]))
    for key, ref in sums.items():
        ours = m.sums[key][0].astype(np.float64)
        np.testing.assert_allclose(ours, ref, rtol=0.005, err_msg=key)  # measured: at most 0.13%
