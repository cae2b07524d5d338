"""Streaming merge == peft's merge_and_unload, tensor for tensor and bit for bit, on tiny random models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from merge_stream_support import assert_same_as_peft, load_dir, make_adapter, make_base, peft_merge, rewrite_adapter

from tasks.core.errors import UserError
from tasks.merge import lora_math, shard_writer
from tasks.merge.stream import check_adapter_fits, merge_streaming

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

# (id, base kwargs, adapter kwargs): each row is one feature the merge must reproduce exactly.
CASES = [
    ("bf16-tied-single-standard", dict(arch="qwen2", dtype="bf16", tied=True), dict(target_modules=ALL_LINEAR)),
    ("fp16-sharded-rslora", dict(arch="llama", dtype="fp16", shard="40KB"),
     dict(target_modules=ALL_LINEAR, use_rslora=True, r=8, lora_alpha=16)),
    ("fp32-rank-alpha-pattern", dict(arch="qwen2", dtype="fp32"),
     dict(target_modules=ALL_LINEAR, r=4, rank_pattern={"q_proj": 8, "layers.1.mlp.down_proj": 2},
          alpha_pattern={"v_proj": 3, "down_proj": 32})),
    ("bf16-embed-and-head-lora", dict(arch="llama", dtype="bf16"),
     dict(target_modules=["embed_tokens", "lm_head", "q_proj"])),
    ("bf16-modules-to-save", dict(arch="llama", dtype="bf16"),
     dict(target_modules=["q_proj"], modules_to_save=["v_proj", "lm_head"])),
    ("bf16-bias-all", dict(arch="qwen2", dtype="bf16"), dict(target_modules=["q_proj", "o_proj"], bias="all")),
    ("bf16-bias-lora-only", dict(arch="qwen2", dtype="bf16"), dict(target_modules=["k_proj"], bias="lora_only")),
    ("gpt2-conv1d-fan-in-fan-out", dict(arch="gpt2", dtype="fp32"),
     dict(target_modules=["c_attn", "c_proj", "c_fc"], fan_in_fan_out=True)),
    ("gpt2-conv1d-flag-unset", dict(arch="gpt2", dtype="bf16"), dict(target_modules=["c_attn", "c_proj"])),
    ("dora-bf16-linear", dict(arch="llama", dtype="bf16"),
     dict(target_modules=["q_proj", "v_proj", "down_proj"], use_dora=True)),
    ("dora-fp16-embedding", dict(arch="llama", dtype="fp16"),
     dict(target_modules=["embed_tokens", "o_proj"], use_dora=True)),
    ("dora-fp32-conv1d", dict(arch="gpt2", dtype="fp32"),
     dict(target_modules=["c_attn", "c_proj"], fan_in_fan_out=True, use_dora=True)),
    ("tied-modules-to-save-unties", dict(arch="qwen2", dtype="bf16", tied=True),
     dict(target_modules=["q_proj"], modules_to_save=["embed_tokens"])),
    ("tied-head-modules-to-save-unties", dict(arch="qwen2", dtype="bf16", tied=True),
     dict(target_modules=["q_proj"], modules_to_save=["lm_head"])),
    ("tied-ensure-weight-tying-stays-tied", dict(arch="qwen2", dtype="bf16", tied=True),
     dict(target_modules=["q_proj"], modules_to_save=["embed_tokens"], ensure_weight_tying=True)),
]


@pytest.mark.parametrize("base_kw, lora_kw", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bit_identical_to_peft(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, base_kw: dict, lora_kw: dict) -> None:
    monkeypatch.setattr(lora_math, "_BLOCK_ELEMENTS", 200)  # tiny tensors: still exercise the row-block loop
    monkeypatch.setattr(shard_writer, "_STAGE_BYTES", 3 * 4096)  # ... and tensors straddling output chunks
    monkeypatch.setattr(shard_writer, "_DIRECT_MIN", 2 * 4096)  # ... and zero-copy O_DIRECT writes
    base = make_base(tmp_path / "base", **base_kw)
    adapter = make_adapter(base, tmp_path / "adapter", base_kw["dtype"], **lora_kw)
    ref = peft_merge(base, adapter, tmp_path / "ref", base_kw["dtype"])
    out = tmp_path / "out"
    out.mkdir()
    written = merge_streaming(base, adapter, out, max_shard_bytes=64 * 1024)
    assert sorted(written) == sorted(out.iterdir())
    assert_same_as_peft(out, ref)


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_resized_vocabulary(tmp_path: Path, tied: bool) -> None:
    """Added tokens: embed/lm_head saved whole (modules_to_save) with more rows; vocab_size follows."""
    base = make_base(tmp_path / "base", "qwen2", tied=tied)
    adapter = make_adapter(base, tmp_path / "adapter", resize=272, target_modules=["q_proj"],
                           modules_to_save=["embed_tokens", "lm_head"])
    ref = peft_merge(base, adapter, tmp_path / "ref", resize=272)
    (out := tmp_path / "out").mkdir()
    merge_streaming(base, adapter, out)
    assert_same_as_peft(out, ref)
    config = json.loads((out / "config.json").read_text())
    assert config["vocab_size"] == 272
    assert load_dir(out)["lm_head.weight"].shape == (272, 64)


def test_resized_vocabulary_with_embedding_lora(tmp_path: Path) -> None:
    """LoRA on a resized embedding: peft saves the resized base layer in the adapter; it replaces the base's."""
    base = make_base(tmp_path / "base", "llama")
    adapter = make_adapter(base, tmp_path / "adapter", resize=264, target_modules=["embed_tokens", "lm_head"])
    ref = peft_merge(base, adapter, tmp_path / "ref", resize=264)
    (out := tmp_path / "out").mkdir()
    merge_streaming(base, adapter, out)
    assert_same_as_peft(out, ref)
    assert json.loads((out / "config.json").read_text())["vocab_size"] == 264


def test_half_precision_adapter_file(tmp_path: Path) -> None:
    """Adapters stored in bf16/fp16 (e.g. saved after model.half()): peft upcasts them to float32 on load."""
    import torch

    base = make_base(tmp_path / "base", "llama", dtype="fp16")
    adapter = make_adapter(base, tmp_path / "adapter", "fp16", target_modules=ALL_LINEAR)
    for dtype in (torch.bfloat16, torch.float16):
        from safetensors.torch import load_file, save_file

        half = rewrite_adapter(adapter, tmp_path / f"ad-{dtype}")
        tensors = {k: v.to(dtype) for k, v in load_file(half / "adapter_model.safetensors").items()}
        save_file(tensors, half / "adapter_model.safetensors")
        ref = peft_merge(base, half, tmp_path / f"ref-{dtype}", "fp16")
        (out := tmp_path / f"out-{dtype}").mkdir()
        merge_streaming(base, half, out)
        assert_same_as_peft(out, ref)


def test_key_spellings_are_equivalent(tmp_path: Path) -> None:
    """Keys without `base_model.model.`, or with the `.default` adapter name, merge to the same bytes."""
    base = make_base(tmp_path / "base", "llama", shard="40KB")
    adapter = make_adapter(base, tmp_path / "adapter", target_modules=["q_proj", "embed_tokens"],
                           modules_to_save=["lm_head"], use_dora=True)
    spellings = {
        "plain": None,
        "no-prefix": lambda k: k.removeprefix("base_model.model."),
        "default": lambda k: (k.replace(".lora_A.", ".lora_A.default.").replace(".lora_B.", ".lora_B.default.")
                              .replace("lora_embedding_A", "lora_embedding_A.default")
                              .replace("lora_embedding_B", "lora_embedding_B.default")
                              .replace("lora_magnitude_vector", "lora_magnitude_vector.default.weight")
                              .replace("lm_head.weight", "lm_head.modules_to_save.default.weight")),
    }
    outputs = {}
    for label, rename in spellings.items():
        src = rewrite_adapter(adapter, tmp_path / f"ad-{label}", rename=rename)
        (out := tmp_path / f"out-{label}").mkdir()
        merge_streaming(base, src, out)
        outputs[label] = {p.name: p.read_bytes() for p in sorted(out.iterdir())}
    assert outputs["plain"] == outputs["no-prefix"] == outputs["default"]
    assert len(outputs["plain"]) == 1 + 1  # one shard + config.json at the default shard size


def test_output_is_deterministic_and_well_formed(tmp_path: Path) -> None:
    base = make_base(tmp_path / "base", "qwen2", shard="40KB", tied=True)
    adapter = make_adapter(base, tmp_path / "adapter", target_modules=ALL_LINEAR)
    runs = []
    for i in range(2):
        (out := tmp_path / f"out{i}").mkdir()
        merge_streaming(base, adapter, out, max_shard_bytes=100 * 1024)
        runs.append({p.name: p.read_bytes() for p in sorted(out.iterdir())})
    assert runs[0] == runs[1]
    names = sorted(n for n in runs[0] if n.endswith(".safetensors"))
    assert len(names) > 1 and names[0] == f"model-00001-of-{len(names):05d}.safetensors"
    index = json.loads(runs[0]["model.safetensors.index.json"])
    tensors = load_dir(tmp_path / "out0")
    assert sorted(index["weight_map"]) == sorted(tensors)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in tensors.values())
    assert set(index["weight_map"].values()) == set(names)
    for name in names:  # sorted header keys, fixed metadata
        raw = runs[0][name]
        header = json.loads(raw[8:8 + int.from_bytes(raw[:8], "little")])
        assert list(header) == sorted(header) and header["__metadata__"] == {"format": "pt"}
    assert runs[0]["config.json"] == (base / "config.json").read_bytes()


def test_tied_embedding_lora_is_refused(tmp_path: Path) -> None:
    """LoRA on a tied embedding would also move the output head; refuse instead of guessing."""
    base = make_base(tmp_path / "base", "qwen2", tied=True)
    for target in ("embed_tokens", "lm_head"):
        adapter = make_adapter(base, tmp_path / f"ad-{target}", target_modules=[target, "q_proj"])
        with pytest.raises(UserError, match="tied") as err:
            check_adapter_fits(base, adapter)
        assert target in str(err.value) and "\n" not in str(err.value)
        (out := tmp_path / f"out-{target}").mkdir()
        with pytest.raises(UserError, match="tie_word_embeddings"):
            merge_streaming(base, adapter, out)
        assert list(out.iterdir()) == []


def test_progress_bar(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = make_base(tmp_path / "base", "llama")
    adapter = make_adapter(base, tmp_path / "adapter", target_modules=["q_proj"])
    (out := tmp_path / "out").mkdir()
    merge_streaming(base, adapter, out, progress=True)
    assert "merge" in capsys.readouterr().err
