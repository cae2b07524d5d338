"""Adapters that cannot be merged safely are refused with one line naming the file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import TWO_MODELS, Workspace, new_workspace

from tasks.core.errors import UserError
from tasks.merge.adapter_check import check_adapter


@pytest.fixture
def adapter(tmp_path: Path, fixtures_ws: Workspace) -> Path:
    dest = tmp_path / "adapter"
    shutil.copytree(fixtures_ws.artifacts / "fixtures" / "demo-adapter", dest)
    return dest


def refusal(path: Path) -> str:
    with pytest.raises(UserError) as info:
        check_adapter(path)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_good_adapter_summary(adapter: Path) -> None:
    summary = check_adapter(adapter)
    assert summary["peft_type"] == "LORA" and summary["r"] == 8 and summary["lora_tensors"] == 28


def test_pickle_bin_adapter_is_refused(adapter: Path) -> None:
    (adapter / "adapter_model.safetensors").rename(adapter / "adapter_model.bin")
    assert "adapter_model.bin: pickle adapters are refused" in refusal(adapter)


def test_missing_config_is_refused(adapter: Path) -> None:
    (adapter / "adapter_config.json").unlink()
    assert "adapter_config.json: missing" in refusal(adapter)


def test_non_lora_adapter_is_refused(adapter: Path) -> None:
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    cfg["peft_type"] = "IA3"
    (adapter / "adapter_config.json").write_text(json.dumps(cfg))
    assert "peft_type: 'IA3' is not supported" in refusal(adapter)


def test_truncated_weights_are_refused(adapter: Path) -> None:
    weights = adapter / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    assert "truncated: tensor" in refusal(adapter)


def test_text_file_named_safetensors_is_refused(adapter: Path) -> None:
    (adapter / "adapter_model.safetensors").write_text("this is not a model, just a placeholder\n")
    assert "not a safetensors file" in refusal(adapter)


def test_build_with_bad_adapter_fails_in_one_line_and_keeps_nothing(tmp_path: Path, fixtures_ws: Workspace) -> None:
    """A pickle adapter named in models.toml is a configuration error: exit 2 before anything runs."""
    ws = new_workspace(tmp_path / "ws", fixtures_ws, TWO_MODELS)
    weights = ws.root / "adapters" / "beta" / "adapter_model.safetensors"
    weights.rename(weights.with_suffix(".bin"))
    run = ws.doit("quantize:beta", check=False)
    assert run.returncode == 2
    errors = [ln for ln in run.stderr.splitlines() if ln.startswith("modelmake: error:")]
    assert len(errors) == 1 and "pickle adapters are refused" in errors[0]
    assert f"{ws.config}: models.beta.adapter: " in errors[0]
    assert "Traceback" not in run.stderr + run.stdout
    assert not (ws.artifacts / "beta" / "merged").exists()
    assert not (ws.artifacts / "beta" / "manifests" / "adapter.json").exists()
