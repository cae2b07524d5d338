"""Which layer is Linear, Conv1D or Embedding: from the meta-device model when it matters, else from names."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import transformers
from merge_stream_support import assert_same_as_peft, make_adapter, make_base, peft_merge

from tasks.merge import architecture
from tasks.merge.architecture import CONV1D_MODEL_TYPES
from tasks.merge.stream import merge_streaming

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def test_conv1d_model_types_match_installed_transformers() -> None:
    """The fast path assumes only these model types contain Conv1D; re-derive that from the sources."""
    models = Path(transformers.__file__).parent / "models"
    found = set()
    for modeling in models.glob("*/modeling_*.py"):
        if re.search(r"\bConv1D\(", modeling.read_text(encoding="utf-8")):
            for config in modeling.parent.glob("configuration_*.py"):
                found |= set(re.findall(r'model_type = "([^"]+)"', config.read_text(encoding="utf-8")))
    assert found and found <= CONV1D_MODEL_TYPES


@pytest.fixture
def meta_calls(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    calls: list[Path] = []
    real = architecture._from_meta_model

    def spy(model_dir: Path, config: dict) -> architecture.Layout:
        calls.append(model_dir)
        return real(model_dir, config)

    monkeypatch.setattr(architecture, "_from_meta_model", spy)
    return calls


def test_linear_only_adapter_skips_the_architecture(tmp_path: Path, meta_calls: list[Path]) -> None:
    """All-linear LoRA on a model type without Conv1D: no model build, and a stray fan_in_fan_out=True is
    ignored exactly as peft ignores it for nn.Linear layers."""
    base = make_base(tmp_path / "base", "qwen2", tied=True)
    adapter = make_adapter(base, tmp_path / "adapter", target_modules=ALL_LINEAR, fan_in_fan_out=True)
    ref = peft_merge(base, adapter, tmp_path / "ref")
    (out := tmp_path / "out").mkdir()
    merge_streaming(base, adapter, out)
    assert meta_calls == []
    assert_same_as_peft(out, ref)


@pytest.mark.parametrize("arch, lora", [
    ("llama", dict(target_modules=["q_proj"], modules_to_save=["lm_head"])),
    ("gpt2", dict(target_modules=["c_proj"])),
])
def test_architecture_is_built_when_it_matters(tmp_path: Path, meta_calls: list[Path], arch: str,
                                               lora: dict) -> None:
    base = make_base(tmp_path / "base", arch)
    adapter = make_adapter(base, tmp_path / "adapter", **lora)
    (out := tmp_path / "out").mkdir()
    merge_streaming(base, adapter, out)
    assert meta_calls == [base]


def test_unbuildable_conv1d_architecture_uses_shapes_and_flag(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """If transformers cannot build the model, non-square layers go by shape, square ones by the flag."""
    def unbuildable(*_a: object) -> None:
        raise ValueError("unknown architecture")

    monkeypatch.setattr(architecture, "_from_meta_model", unbuildable)
    base = make_base(tmp_path / "base", "gpt2")
    adapter = make_adapter(base, tmp_path / "adapter", target_modules=["c_attn", "c_proj", "c_fc"],
                           fan_in_fan_out=True)
    ref = peft_merge(base, adapter, tmp_path / "ref")
    (out := tmp_path / "out").mkdir()
    merge_streaming(base, adapter, out)
    assert_same_as_peft(out, ref)
