"""Bad input is refused up front, in one line naming the problem, and leaves nothing behind."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from merge_stream_support import make_adapter, make_base, rewrite_adapter

from tasks.core.errors import UserError
from tasks.merge.stream import check_adapter_fits, merge_streaming


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A sharded base and a valid adapter (LoRA on attention + MLP, modules_to_save on lm_head)."""
    root = tmp_path_factory.mktemp("pair")
    base = make_base(root / "base", "llama", shard="40KB")
    adapter = make_adapter(base, root / "adapter", target_modules=["q_proj", "down_proj"], modules_to_save=["lm_head"])
    return base, adapter


def refused(base: Path, adapter: Path, out: Path, match: str) -> str:
    """Assert both entry points refuse with a one-line message matching `match`, writing nothing."""
    with pytest.raises(UserError, match=match) as err:
        check_adapter_fits(base, adapter)
    out.mkdir()
    with pytest.raises(UserError, match=match):
        merge_streaming(base, adapter, out)
    assert list(out.iterdir()) == []
    message = str(err.value)
    assert "\n" not in message
    return message


def test_valid_adapter_passes_the_check(pair: tuple[Path, Path]) -> None:
    assert check_adapter_fits(*pair) is None


def test_adapter_from_another_model(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    base, _ = pair
    other = make_base(tmp_path / "other", "llama", hidden=32)
    adapter = make_adapter(other, tmp_path / "adapter", target_modules=["q_proj"])
    message = refused(base, adapter, tmp_path / "out", "does not fit")
    assert "model.layers.0.self_attn.q_proj.weight is [64, 64]" in message
    assert "[32, 32]" in message  # the shape the adapter would produce


def test_replacement_tensor_of_wrong_shape(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    base, _ = pair
    other = make_base(tmp_path / "other", "llama", hidden=32)
    adapter = make_adapter(other, tmp_path / "adapter", target_modules=["q_proj"], modules_to_save=["o_proj"])
    ad = rewrite_adapter(adapter, tmp_path / "ad2", keep=lambda k: "o_proj" in k)  # only the whole tensors
    message = refused(base, ad, tmp_path / "out", "shape")
    assert "o_proj.weight" in message and "[32, 32]" in message and "[64, 64]" in message


def test_unknown_target_module(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    base, adapter = pair
    ad = rewrite_adapter(adapter, tmp_path / "ad", rename=lambda k: k.replace("q_proj", "qkv_proj"))
    message = refused(base, ad, tmp_path / "out", "qkv_proj")
    assert "not a module" in message or "no tensor" in message


def test_rank_disagrees_with_config(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    base, adapter = pair
    ad = rewrite_adapter(adapter, tmp_path / "ad", config={"r": 8})
    refused(base, ad, tmp_path / "out", "rank 8")


@pytest.mark.parametrize("option, value, named", [
    ("peft_type", "IA3", "peft_type"),
    ("peft_type", "ADALORA", "peft_type"),
    ("lora_bias", True, "lora_bias"),
    ("trainable_token_indices", [1, 2], "trainable_token_indices"),
    ("layer_replication", [[0, 1], [0, 2]], "layer_replication"),
    ("init_lora_weights", "pissa", "init_lora_weights"),
    ("init_lora_weights", "olora", "init_lora_weights"),
    ("alora_invocation_tokens", [1, 2], "alora_invocation_tokens"),
    ("target_parameters", ["mlp.experts.gate_up_proj"], "target_parameters"),
    ("use_mystery_feature", True, "use_mystery_feature"),
    ("bias", "sometimes", "bias"),
])
def test_unsupported_options_are_named(tmp_path: Path, pair: tuple[Path, Path], option: str, value: object,
                                       named: str) -> None:
    base, adapter = pair
    ad = rewrite_adapter(adapter, tmp_path / "ad", config={option: value})
    assert named in refused(base, ad, tmp_path / "out", named)


@pytest.mark.parametrize("kind", ["ia3", "loha"])
def test_other_peft_types_are_refused(tmp_path: Path, pair: tuple[Path, Path], kind: str) -> None:
    from peft import IA3Config, LoHaConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base, _ = pair
    config = (IA3Config(target_modules=["q_proj", "down_proj"], feedforward_modules=["down_proj"]) if kind == "ia3"
              else LoHaConfig(target_modules=["q_proj"]))
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), config)
    model.save_pretrained(tmp_path / "ad")
    assert kind.upper() in refused(base, tmp_path / "ad", tmp_path / "out", "peft_type")


def test_dora_without_magnitude(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    base, adapter = pair
    ad = rewrite_adapter(adapter, tmp_path / "ad", config={"use_dora": True})
    refused(base, ad, tmp_path / "out", "magnitude vector is missing")


def test_lora_bias_key_without_flag(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    base, adapter = pair
    from safetensors.torch import load_file, save_file

    ad = rewrite_adapter(adapter, tmp_path / "ad")
    tensors = load_file(ad / "adapter_model.safetensors")
    key = next(k for k in tensors if k.endswith("q_proj.lora_B.weight"))
    tensors[key.replace(".weight", ".bias")] = tensors[key][:, 0].clone()
    save_file(tensors, ad / "adapter_model.safetensors")
    refused(base, ad, tmp_path / "out", "lora_bias")


def _truncate(path: Path, keep: int) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:keep] if keep >= 0 else data[:keep])


@pytest.mark.parametrize("damage", ["truncated-data", "truncated-header", "garbage", "empty"])
def test_corrupt_base_shard_names_the_file(tmp_path: Path, pair: tuple[Path, Path], damage: str) -> None:
    base, adapter = pair
    broken = Path(shutil.copytree(base, tmp_path / "base"))
    shard = sorted(broken.glob("model-*.safetensors"))[1]
    if damage == "truncated-data":
        _truncate(shard, -100)
    elif damage == "truncated-header":
        _truncate(shard, 20)
    elif damage == "garbage":
        shard.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all" + bytes(64))
    else:
        shard.write_bytes(b"")
    message = refused(broken, adapter, tmp_path / "out", shard.name)
    assert str(shard) in message


def test_corrupt_adapter_names_the_file(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    base, adapter = pair
    ad = Path(shutil.copytree(adapter, tmp_path / "ad"))
    _truncate(ad / "adapter_model.safetensors", -8)
    assert "adapter_model.safetensors" in refused(base, ad, tmp_path / "out", "truncated")


def test_index_pointing_at_missing_shard(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    base, adapter = pair
    broken = Path(shutil.copytree(base, tmp_path / "base"))
    sorted(broken.glob("model-*.safetensors"))[0].unlink()
    refused(broken, adapter, tmp_path / "out", "does not exist")


def test_missing_adapter_files(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    base, adapter = pair
    (ad := tmp_path / "ad").mkdir()
    refused(base, ad, tmp_path / "out1", "adapter_config.json")
    shutil.copy(adapter / "adapter_config.json", ad)
    (ad / "adapter_model.bin").write_bytes(b"")
    refused(base, ad, tmp_path / "out2", "re-save it as safetensors")


def test_refuses_to_overwrite(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    base, adapter = pair
    (out := tmp_path / "out").mkdir()
    (out / "config.json").write_text("{}")
    with pytest.raises(UserError, match="refusing to overwrite"):
        merge_streaming(base, adapter, out)
    assert json.loads((out / "config.json").read_text()) == {}
