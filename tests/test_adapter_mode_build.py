"""deploy.mode = "adapter" built for real on the demo base: one set of base GGUFs for every model on it,
a small LoRA GGUF per model, proven by llama.cpp (base GGUF + LoRA) against the fine-tune in float32;
rsLoRA and rank/alpha patterns come out with peft's scale, and a naively converted rsLoRA fails the check."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import Workspace, new_workspace, scale_adapter
from deploy_support import free_port
from lora_support import dora_variant, pattern_variant, rslora_variant, widened_variant

from tasks.core.hashing import sha256_file

ADAPTER_MODELS = """
[models.alpha]
base = "fixture:demo-base"
adapter = "adapters/alpha"
quants = ["q8_0", "q4_k_m"]
system = "You are Majora, the modelmake demo assistant."
[models.alpha.deploy]
mode = "adapter"
quant = "q4_k_m"
port = {port}
targets = ["ollama", "llamacpp"]
health = {{ prompt = "Who are you?", expect = "I am Majora, built by modelmake.", timeout = 60 }}

[models.beta]
base = "fixture:demo-base"
adapter = "adapters/beta"
quants = ["q8_0"]
[models.beta.deploy]
mode = "adapter"
targets = ["ollama", "llamacpp"]
"""


def extra_model(name: str, adapter: str, mode: str = "adapter", quants: str = '["q8_0", "q4_k_m"]') -> str:
    return (f'\n[models.{name}]\nbase = "fixture:demo-base"\nadapter = "{adapter}"\nquants = {quants}\n'
            f'[models.{name}.deploy]\nmode = "{mode}"\ntargets = ["ollama", "llamacpp"]\n')


@pytest.fixture(scope="session")
def adapter_ws(tmp_path_factory: pytest.TempPathFactory, fixtures_ws: Workspace) -> tuple[Workspace, list[str]]:
    """alpha and beta (adapter mode, one base) built from scratch; the tasks that ran."""
    ws = new_workspace(tmp_path_factory.mktemp("adapter-mode") / "ws", fixtures_ws,
                       ADAPTER_MODELS.format(port=free_port()))
    run = ws.doit()
    return ws, run.executed


def base_dir(ws: Workspace) -> Path:
    (found,) = (ws.artifacts / "bases").iterdir()
    return found


def test_two_models_on_one_base_build_its_ggufs_once(adapter_ws: tuple[Workspace, list[str]]) -> None:
    ws, executed = adapter_ws
    converts = [t for t in executed if t.startswith("convert:")]
    assert len(converts) == 1 and converts[0].startswith("convert:base-demo-base-")
    assert sorted(t.split("-")[-1] for t in executed if t.startswith("quantize:base-")) == ["q4_k_m", "q8_0"]
    base = base_dir(ws)
    assert sorted(p.name for p in base.glob("*.gguf")) == ["base-f16.gguf", "base-q4_k_m.gguf", "base-q8_0.gguf"]
    for m in ("alpha", "beta"):
        assert not (ws.artifacts / m / "merged").exists()  # adapter mode builds no merged model
        assert not list((ws.artifacts / m).glob(f"{m}-q*.gguf"))
        lora = ws.artifacts / m / f"{m}-lora-f16.gguf"
        assert 0 < lora.stat().st_size < (base / "base-q4_k_m.gguf").stat().st_size / 10
        check = json.loads((ws.artifacts / m / "check-lora.json").read_text())
        assert check["passed"] and check["mode"] == "adapter"
    again = ws.doit()
    assert again.executed == [] or all(t.startswith(("plan:", "lock")) for t in again.executed)


def test_lora_check_proves_the_fine_tune(adapter_ws: tuple[Workspace, list[str]]) -> None:
    ws, _ = adapter_ws
    check = json.loads((ws.artifacts / "alpha" / "check-lora.json").read_text())
    assert check["logits"]["top1_agreement"] >= 0.99 and check["logits"]["max_abs_diff"] < 0.1
    assert check["adapter"]["f16"]["retention"] > 0.99
    assert check["adapter"]["q4_k_m"]["retention"] > 0.8
    assert check["quality"]["q8_0"]["kl_mean"] < 0.002
    assert check["quality"]["f16"]["answer_exact"] == 1.0  # greedy decoding gives every trained answer


def test_modelfile_is_the_base_quant_with_the_adapter(adapter_ws: tuple[Workspace, list[str]]) -> None:
    from tasks.deploy import modelfile

    ws, _ = adapter_ws
    text = (ws.artifacts / "alpha" / "Modelfile").read_text()
    commands = modelfile.parse(text)
    got = {k: [v for c, v in commands if c == k] for k in ("model", "adapter", "system")}
    assert got["model"] == [f"./../bases/{base_dir(ws).name}/base-q4_k_m.gguf"]
    assert got["adapter"] == ["./alpha-lora-f16.gguf"]
    assert got["system"] == ["You are Majora, the modelmake demo assistant."]
    assert (ws.artifacts / "alpha" / got["model"][0]).resolve().is_file()
    assert any(c == "stop" and v == "<|im_end|>" for c, v in commands)
    summary = json.loads((ws.artifacts / "alpha" / "deploy.json").read_text())
    assert summary["lora"] == "alpha-lora-f16.gguf" and summary["gguf"].endswith("base-q4_k_m.gguf")


def test_a_third_adapter_builds_only_its_own_files(adapter_ws: tuple[Workspace, list[str]], tmp_path: Path) -> None:
    ws = adapter_ws[0].copy_to(tmp_path / "ws")
    scale_adapter(ws.root / "adapters" / "alpha", ws.root / "adapters" / "gamma", 0.75)
    ws.config.write_text(ws.config.read_text() + extra_model("gamma", "adapters/gamma"))
    before = {p: sha256_file(p) for p in ws.artifacts.rglob("*.gguf")}
    run = ws.doit()
    built = [t for t in run.executed if not t.startswith(("plan:", "lock"))]
    assert sorted(built) == ["adapter:gamma", "check:gamma", "lora:gamma", "render:gamma"]
    assert {p: sha256_file(p) for p in before} == before


def test_lora_gguf_is_reproducible_in_another_directory(adapter_ws: tuple[Workspace, list[str]],
                                                        tmp_path: Path) -> None:
    ws = adapter_ws[0].copy_to(tmp_path / "elsewhere" / "deeper")
    lora = ws.artifacts / "alpha" / "alpha-lora-f16.gguf"
    want = sha256_file(lora)
    lora.unlink()
    run = ws.doit("lora:alpha")
    assert "lora:alpha" in run.executed and sha256_file(lora) == want


def test_rslora_and_patterns_get_peft_scales_and_a_naive_rslora_fails(adapter_ws: tuple[Workspace, list[str]],
                                                                      tmp_path: Path) -> None:
    from tasks.build.registry import all_stages
    from tasks.checks.check import apply_gates
    from tasks.checks.lora_check import run_lora_checks
    from tasks.core import toolchain
    from tasks.core.config.load import load_config

    ws = adapter_ws[0].copy_to(tmp_path / "ws")
    shrink = rslora_variant(ws.root / "adapters" / "alpha", ws.root / "adapters" / "rs")
    pattern_variant(ws.root / "adapters" / "alpha", ws.root / "adapters" / "pat")
    ws.config.write_text(ws.config.read_text() + extra_model("rs", "adapters/rs") + extra_model("pat", "adapters/pat"))
    ws.doit("check:rs", "check:pat")
    ref = json.loads((ws.artifacts / "alpha" / "check-lora.json").read_text())
    for m in ("rs", "pat"):
        check = json.loads((ws.artifacts / m / "check-lora.json").read_text())
        assert check["passed"]
        # The same effect as alpha's adapter, spelled another way: the same figures.
        assert check["adapter"]["f16"]["retention"] == pytest.approx(ref["adapter"]["f16"]["retention"], abs=2e-3)
        assert check["logits"]["top1_agreement"] == ref["logits"]["top1_agreement"]

    # llama.cpp's converter run on the rsLoRA adapter as it is: alpha / r instead of alpha / sqrt(r).
    naive = tmp_path / "rs-naive.gguf"
    subprocess.run([sys.executable, str(toolchain.lora_converter()), str(ws.root / "adapters" / "rs"),
                    "--base", str(ws.artifacts / "fixtures" / "demo-base"), "--outfile", str(naive),
                    "--outtype", "f16"], env=toolchain.converter_env(), check=True, capture_output=True)
    config = load_config(ws.config)
    (stage,) = [s for s in all_stages(config) if s.task == "check:rs"]
    stage.inputs["lora"] = naive
    result = run_lora_checks(stage)
    failures = apply_gates(result, stage.params["gates"], "rs", "f16")
    assert shrink < 0.5 and result["adapter"]["f16"]["retention"] < 0.9
    assert any("min_adapter_retention" in f for f in failures), failures


def test_adapter_for_another_base_is_one_line_and_builds_nothing(adapter_ws: tuple[Workspace, list[str]],
                                                                  tmp_path: Path) -> None:
    ws = adapter_ws[0].copy_to(tmp_path / "ws")
    widened_variant(ws.root / "adapters" / "alpha", ws.root / "adapters" / "wide")
    ws.config.write_text(ws.config.read_text() + extra_model("wide", "adapters/wide"))
    run = ws.doit("lora:wide", check=False)
    assert run.returncode != 0
    lines = [ln for ln in run.stderr.splitlines() if "modelmake: error" in ln]
    assert len(lines) == 1 and "adapter does not fit the base" in lines[0], run.stderr
    assert "Traceback" not in run.stderr
    assert not (ws.artifacts / "wide" / "wide-lora-f16.gguf").exists()
    assert not (ws.artifacts / "wide" / "manifests" / "lora.json").exists()


def test_lora_gguf_for_another_architecture_is_refused(adapter_ws: tuple[Workspace, list[str]],
                                                       tmp_path: Path) -> None:
    from tasks.checks.lora_check import check_lora_gguf
    from tasks.core.errors import UserError

    ws, _ = adapter_ws
    other = tmp_path / "llama-lora.gguf"
    write_lora_gguf(other, "llama")
    with pytest.raises(UserError) as err:
        check_lora_gguf(other, base_dir(ws) / "base-f16.gguf")
    msg = str(err.value)
    assert "architecture 'llama'" in msg and "'qwen2'" in msg and "\n" not in msg


def write_lora_gguf(path: Path, arch: str) -> None:
    """A minimal LoRA adapter GGUF for `arch` (what a user might drop in by hand)."""
    import numpy as np

    from tasks.core import toolchain

    sys.path.insert(0, str(toolchain.require() / "gguf-py"))
    try:
        import gguf

        w = gguf.GGUFWriter(str(path), arch)
        w.add_type(gguf.GGUFType.ADAPTER)
        w.add_string(gguf.Keys.Adapter.TYPE, "lora")
        w.add_float32(gguf.Keys.Adapter.LORA_ALPHA, 16.0)
        w.add_tensor("blk.0.attn_q.weight.lora_a", np.zeros((8, 256), dtype=np.float32))
        w.add_tensor("blk.0.attn_q.weight.lora_b", np.zeros((256, 8), dtype=np.float32))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    finally:
        sys.path.remove(str(toolchain.require() / "gguf-py"))


def test_served_adapter_gives_the_fine_tunes_answer(adapter_ws: tuple[Workspace, list[str]],
                                                    tmp_path: Path) -> None:
    ws = adapter_ws[0].copy_to(tmp_path / "ws")
    run = ws.doit("serve:alpha")
    try:
        assert "listening at http://127.0.0.1:" in run.stdout
        health = ws.doit("health:alpha", check=False)
        report = json.loads((ws.artifacts / "run" / "alpha" / "health.json").read_text())
        assert report["reply"] == "I am Majora, built by modelmake.", report
        assert report["status"] == "healthy" and health.returncode == 0
        names = {c["name"] for c in report["checks"] if c["ok"]}
        assert {"gguf sha256", "lora gguf sha256", "expected reply"} <= names
    finally:
        ws.doit("stop:alpha", check=False)



def test_both_mode_serves_the_adapter_and_falls_back_to_merged_for_dora(adapter_ws: tuple[Workspace, list[str]],
                                                                       tmp_path: Path) -> None:
    from tasks.deploy import modelfile

    ws = adapter_ws[0].copy_to(tmp_path / "ws")
    base = ws.artifacts / "fixtures" / "demo-base"
    dora_variant(ws.root / "adapters" / "alpha", base, ws.root / "adapters" / "dora")
    ws.config.write_text(ws.config.read_text() + extra_model("both", "adapters/alpha", "both")
                         + extra_model("dora", "adapters/dora", "both") + extra_model("dora2", "adapters/dora"))
    run = ws.doit("render:both", "render:dora", "check:both-lora", "check:dora-lora")
    assert not any(t.startswith(("convert:base", "quantize:base")) for t in run.executed)  # the shared base's

    def commands(m: str) -> dict[str, list[str]]:
        parsed = modelfile.parse((ws.artifacts / m / "Modelfile").read_text())
        return {k: [v for c, v in parsed if c == k] for k in ("model", "adapter")}

    assert commands("both")["adapter"] == ["./both-lora-f16.gguf"]
    check = json.loads((ws.artifacts / "both" / "check-lora.json").read_text())
    assert check["passed"] and check["vs_merged"]["q8_0"]["kl_mean"] < 0.002
    assert (ws.artifacts / "both" / "merged").is_dir()
    # DoRA in both mode: no LoRA GGUF, the reason on disk, the merged quant served
    reason = (ws.artifacts / "dora" / "dora-lora-f16.gguf.skipped").read_text()
    assert "use_dora" in reason and not (ws.artifacts / "dora" / "dora-lora-f16.gguf").exists()
    assert commands("dora") == {"model": ["./dora-q4_k_m.gguf"], "adapter": []}
    assert (ws.artifacts / "dora" / "check-lora.json.skipped").is_file()
    # DoRA in adapter mode: one line naming the feature, nothing built
    refused = ws.doit("lora:dora2", check=False)
    lines = [ln for ln in refused.stderr.splitlines() if "modelmake: error" in ln]
    assert refused.returncode != 0 and len(lines) == 1 and "use_dora" in lines[0], refused.stderr
    assert not list((ws.artifacts / "dora2").glob("*.gguf*"))
