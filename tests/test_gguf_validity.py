"""GGUF validity: the real demo GGUFs pass; a fake, truncated, placeholder or altered copy is refused with a reason."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import Workspace
from eval_support import copy, metadata_only, patched_string, renamed_key, truncated

from tasks.checks import gguf_validate
from tasks.core import toolchain


@pytest.fixture(scope="module")
def demo(fixtures_ws: Workspace) -> tuple[Path, gguf_validate.HFReference]:
    import transformers

    merged = fixtures_ws.artifacts / "demo" / "merged"
    tok = transformers.AutoTokenizer.from_pretrained(str(merged))
    ref = gguf_validate.hf_reference(merged, tok, toolchain.require() / "conversion" / "base.py")
    return fixtures_ws.artifacts / "demo", ref


def problems(path: Path, gtype: str, ref: gguf_validate.HFReference) -> list[str]:
    return gguf_validate.validate(path, gtype, ref)[1]


def test_real_demo_ggufs_are_valid(demo) -> None:
    root, ref = demo
    assert ref.expected_pre == "qwen2" and ref.tokenizer_model == "gpt2"
    for gtype in ("f16", "q8_0", "q4_k_m"):
        facts, found = gguf_validate.validate(root / f"demo-{gtype}.gguf", gtype, ref)
        assert found == [], found
        assert facts["tensor_check"] == "names+shapes"
        assert facts["pre_tokenizer"] == "qwen2" and facts["chat_template"] is True
    assert 15.9 < gguf_validate.validate(root / "demo-f16.gguf", "f16", ref)[0]["bits_per_weight"] < 16.1


def test_text_file_named_gguf_is_not_a_model(demo, tmp_path: Path) -> None:
    _, ref = demo
    fake = tmp_path / "model.gguf"
    fake.write_text("this is a model, honest\n" * 4)
    (found,) = problems(fake, "f16", ref)
    assert "not a GGUF file" in found and "starts with b'this'" in found


def test_truncated_gguf_names_the_tensor_and_sizes(demo, tmp_path: Path) -> None:
    root, ref = demo
    cut = truncated(root / "demo-q4_k_m.gguf", tmp_path / "demo-q4_k_m.gguf", drop=1000)
    (found,) = problems(cut, "q4_k_m", ref)
    assert "truncated: tensor" in found and f"the file has {cut.stat().st_size}" in found


def test_metadata_only_placeholder_is_refused(demo, tmp_path: Path) -> None:
    root, ref = demo
    tiny = metadata_only(root / "demo-f16.gguf", tmp_path / "demo-f16.gguf")
    assert tiny.stat().st_size < 20_000
    found = " | ".join(problems(tiny, "f16", ref))
    assert "missing 26 tensors" in found
    assert "no tokenizer" in found


def test_altered_pre_tokenizer_is_refused(demo, tmp_path: Path) -> None:
    root, ref = demo
    bad = patched_string(root / "demo-f16.gguf", tmp_path / "demo-f16.gguf", "tokenizer.ggml.pre", "gpt-2")
    (found,) = problems(bad, "f16", ref)
    assert "tokenizer.ggml.pre is 'gpt-2'" in found and "'qwen2'" in found


def test_removed_chat_template_is_refused(demo, tmp_path: Path) -> None:
    root, ref = demo
    bad = renamed_key(root / "demo-q8_0.gguf", tmp_path / "demo-q8_0.gguf", "tokenizer.chat_template",
                      "tokenizer.chat_templatX")
    (found,) = problems(bad, "q8_0", ref)
    assert "no chat template" in found


def test_file_claiming_another_type_is_refused(demo, tmp_path: Path) -> None:
    root, ref = demo
    liar = copy(root / "demo-q8_0.gguf", tmp_path / "demo-q4_k_m.gguf")
    found = " | ".join(problems(liar, "q4_k_m", ref))
    assert "general.file_type is 7, expected 15" in found
    assert "no tensor of type Q4_K" in found
