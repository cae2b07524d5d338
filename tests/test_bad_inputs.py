"""Bad input is one line naming the file, key, tensor or path, never a traceback, and replaces nothing good."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from tasks.core.config.load import load_config
from tasks.core.errors import UserError
from tasks.merge.adapter_check import check_adapter

LORA_A = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
LORA_B = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"


def tiny_adapter(root: Path, dtype: torch.dtype, poison: float | None = None, at: int = 5) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q_proj"]}))
    b = torch.zeros(8, 2, dtype=dtype)
    if poison is not None:
        b.view(-1)[at] = poison
    save_file({LORA_A: torch.ones(2, 8, dtype=dtype), LORA_B: b}, str(root / "adapter_model.safetensors"))
    return root


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("poison", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_adapter_values_are_refused_naming_the_tensor(tmp_path: Path, dtype: torch.dtype,
                                                                 poison: float) -> None:
    """Before: a NaN passed the adapter check, merge and convert and failed only at quantize."""
    adapter = tiny_adapter(tmp_path / "a", dtype, poison, at=5)
    with pytest.raises(UserError) as info:
        check_adapter(adapter)
    msg = str(info.value)
    assert msg == (f"{adapter / 'adapter_model.safetensors'}: tensor {LORA_B}: 1 NaN/Inf value(s) "
                   "(first at flat index 5): refused before merging")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_finite_extremes_pass_the_value_check(tmp_path: Path, dtype: torch.dtype) -> None:
    adapter = tiny_adapter(tmp_path / "a", dtype, float(torch.finfo(dtype).max))
    assert check_adapter(adapter)["lora_tensors"] == 2


def config_with(root: Path, adapter: Path, prefix: bytes = b"") -> Path:
    (root / "base").mkdir(parents=True, exist_ok=True)
    config = root / "models.toml"
    config.write_bytes(prefix + f'[models.demo]\nbase = "base"\nadapter = "{adapter}"\nquants = []\n'.encode())
    return config


def test_models_toml_with_a_utf8_bom_loads(tmp_path: Path) -> None:
    """Before: `Invalid statement (at line 1, column 1)` for a file a Windows editor saved."""
    adapter = tiny_adapter(tmp_path / "adapter", torch.float32)
    config = load_config(config_with(tmp_path, adapter, prefix=b"\xef\xbb\xbf"))
    assert list(config.models) == ["demo"]


def test_pickle_adapter_is_a_configuration_error(tmp_path: Path) -> None:
    """The README promises exit 2 at config time; before, the adapter stage refused it at exit 1."""
    adapter = tiny_adapter(tmp_path / "adapter", torch.float32)
    (adapter / "adapter_model.safetensors").rename(adapter / "adapter_model.bin")
    config = config_with(tmp_path, adapter)
    with pytest.raises(UserError) as info:
        load_config(config)
    assert info.value.exit_code == 2
    assert str(info.value).startswith(f"{config}: models.demo.adapter: {adapter / 'adapter_model.bin'}: "
                                      "pickle adapters are refused")


def base_with_architecture(root: Path, arch: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps({"architectures": [arch], "model_type": "x"}))
    return root


@pytest.mark.parametrize(("arch", "why"), [
    ("FooForCausalLM", "is not supported by the pinned llama.cpp converter (llama-cpp-python==0.3.36)"),
    ("BertModel", "is not a text-generation architecture (modelmake's checks need next-token logits)"),
])
def test_unsupported_architecture_is_refused_before_merging(tmp_path: Path, arch: str, why: str) -> None:
    """Before: merged first, then refused by the converter's own traceback."""
    from types import SimpleNamespace

    from tasks.merge.supported import generative_architectures, precheck

    base = base_with_architecture(tmp_path / "base", arch)
    merged = tmp_path / "merged"
    stage = SimpleNamespace(model="demo", inputs={"base": base})
    config = SimpleNamespace(models={"demo": SimpleNamespace(builds_gguf=True)})
    with pytest.raises(UserError) as info:
        precheck(stage, config)
    msg = str(info.value)
    assert msg.startswith(f"{base / 'config.json'}: architectures[0]: {arch!r} {why}; supported families: ")
    families = msg.split("supported families: ", 1)[1].split(", ")
    assert {"llama", "qwen", "phi"} <= set(families) and "bert" not in families
    assert families == sorted(set(generative_architectures().values()))
    assert not merged.exists()
    precheck(stage, SimpleNamespace(models={"demo": SimpleNamespace(builds_gguf=False)}))  # vLLM-only: no GGUF


def test_supported_architectures_come_from_the_pinned_converter() -> None:
    from tasks.core import toolchain
    from tasks.merge.supported import check_architecture, generative_architectures

    supported = generative_architectures()
    assert {"Qwen2ForCausalLM", "LlamaForCausalLM", "Phi3ForCausalLM"} <= set(supported)
    source = (toolchain.require() / "conversion" / "__init__.py").read_text()
    assert all(f'"{arch}"' in source for arch in supported)
    assert check_architecture  # imported without torch: dodo-time cheap
