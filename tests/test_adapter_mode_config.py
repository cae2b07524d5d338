"""deploy.mode (merged | adapter | both) in models.toml, and the adapter rules of adapter mode that need
no build: peft's scale folded into B, and what a GGUF LoRA cannot express refused by name."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tasks.core.config.deploy import deploy_params
from tasks.core.config.load import load_config
from tasks.core.errors import UserError

MODEL = """
[build]
artifacts = "artifacts"
[models.m]
base = "base"
adapter = "adapter"
quants = ["q8_0"]
[models.m.deploy]
{deploy}
"""


def write_config(tmp_path: Path, deploy: str, extra: str = "") -> Path:
    (tmp_path / "base").mkdir(exist_ok=True)
    (tmp_path / "adapter").mkdir(exist_ok=True)
    path = tmp_path / "models.toml"
    path.write_text(MODEL.format(deploy=deploy) + extra, encoding="utf-8")
    return path


def test_mode_defaults_to_merged_and_leaves_render_keys_unchanged(tmp_path: Path) -> None:
    m = load_config(write_config(tmp_path, ""), check_paths=False).models["m"]
    assert m.deploy.mode == "merged" and m.builds_merged and not m.builds_lora
    assert "mode" not in deploy_params(m.deploy)  # merged models' render keys (and models.lock) stay as they were


@pytest.mark.parametrize("mode", ["adapter", "both"])
def test_adapter_and_both_modes_build_the_lora(tmp_path: Path, mode: str) -> None:
    m = load_config(write_config(tmp_path, f'mode = "{mode}"\ntargets = ["ollama", "llamacpp"]'),
                    check_paths=False).models["m"]
    assert m.builds_lora and m.builds_merged == (mode == "both")
    assert deploy_params(m.deploy)["mode"] == mode


def test_unknown_mode_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(UserError) as err:
        load_config(write_config(tmp_path, 'mode = "lora"'), check_paths=False)
    msg = str(err.value)
    assert "models.m.deploy.mode" in msg and "'lora'" in msg and "\n" not in msg


@pytest.mark.parametrize("target", ["lmstudio", "vllm"])
def test_adapter_mode_with_a_merged_only_target_says_use_both(tmp_path: Path, target: str) -> None:
    with pytest.raises(UserError) as err:
        load_config(write_config(tmp_path, f'mode = "adapter"\ntargets = ["ollama", "{target}"]'), check_paths=False)
    msg = str(err.value)
    assert "models.m.deploy.mode" in msg and target in msg and 'use mode = "both"' in msg and "\n" not in msg


def test_models_sharing_a_base_must_share_its_gguf_type(tmp_path: Path) -> None:
    extra = """
[models.n]
base = "base"
adapter = "adapter"
outtype = "bf16"
quants = []
[models.n.deploy]
mode = "adapter"
targets = ["llamacpp"]
"""
    with pytest.raises(UserError) as err:
        load_config(write_config(tmp_path, 'mode = "adapter"\ntargets = ["llamacpp"]', extra), check_paths=False)
    assert "models.n.outtype" in str(err.value) and "share one base GGUF" in str(err.value)


def test_models_on_one_base_share_its_id_and_others_do_not(tmp_path: Path) -> None:
    extra = '\n[models.n]\nbase = "./base/"\nadapter = "adapter"\n[models.o]\nbase = "other"\nadapter = "adapter"\n'
    (tmp_path / "other").mkdir()
    models = load_config(write_config(tmp_path, "", extra), check_paths=False).models
    assert models["m"].base_id == models["n"].base_id != models["o"].base_id
    assert models["m"].base_id.startswith("base-")


# ---- the adapter's scale and what GGUF LoRA cannot express (headers and configs only, tiny tensors) -----

def make_adapter(root: Path, cfg: dict, tensors: dict | None = None) -> Path:
    import torch
    from safetensors.torch import save_file

    root.mkdir(parents=True, exist_ok=True)
    base = {"r": 4, "lora_alpha": 8, "peft_type": "LORA", "target_modules": ["q_proj", "v_proj"]}
    (root / "adapter_config.json").write_text(json.dumps({**base, **cfg}), encoding="utf-8")
    if tensors is None:
        tensors = {}
        for mod in ("q_proj", "v_proj"):
            r = cfg.get("rank_pattern", {}).get(mod, cfg.get("r", 4))
            prefix = f"base_model.model.model.layers.0.self_attn.{mod}"
            tensors[f"{prefix}.lora_A.weight"] = torch.ones(r, 16)
            tensors[f"{prefix}.lora_B.weight"] = torch.ones(16, r)
    save_file(tensors, str(root / "adapter_model.safetensors"))
    return root


def make_base_config(root: Path, tied: bool = True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps({"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
                                                  "tie_word_embeddings": tied}), encoding="utf-8")
    return root


def test_fold_factors_reproduce_peft_scales(tmp_path: Path) -> None:
    from tasks.merge.lora_adapter import load_adapter
    from tasks.merge.lora_gguf import fold_factors

    plain = fold_factors(load_adapter(make_adapter(tmp_path / "plain", {})))
    assert set(plain.values()) == {1.0}  # plain LoRA: llama.cpp's alpha / rank is peft's scale already
    rs = load_adapter(make_adapter(tmp_path / "rs", {"use_rslora": True}))
    for name, factor in fold_factors(rs).items():
        # llama.cpp applies lora_alpha / rank to the folded B: that must be peft's alpha / sqrt(r)
        assert 8 / 4 * factor == pytest.approx(rs.modules[name].scaling) == pytest.approx(8 / math.sqrt(4))
    pat = load_adapter(make_adapter(tmp_path / "pat", {"rank_pattern": {"q_proj": 8}, "alpha_pattern": {"v_proj": 2}}))
    for name, factor in fold_factors(pat).items():
        mod = pat.modules[name]
        assert 8 / mod.rank * factor == pytest.approx(mod.scaling)
        assert mod.scaling == pytest.approx(8 / 8 if "q_proj" in name else 2 / 4)


@pytest.mark.parametrize(("cfg", "feature"), [
    ({"use_dora": True}, "use_dora"),
    ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
])
def test_unexpressible_features_are_refused_by_name(tmp_path: Path, cfg: dict, feature: str) -> None:
    import torch

    from tasks.merge.lora_gguf import Unexpressible, check_expressible

    tensors = None
    if cfg.get("use_dora"):
        prefix = "base_model.model.model.layers.0.self_attn.q_proj"
        tensors = {f"{prefix}.lora_A.weight": torch.ones(4, 16), f"{prefix}.lora_B.weight": torch.ones(16, 4),
                   f"{prefix}.lora_magnitude_vector": torch.ones(16)}
    adapter = make_adapter(tmp_path / "a", cfg, tensors)
    with pytest.raises(Unexpressible) as err:
        check_expressible(make_base_config(tmp_path / "base"), adapter)
    assert feature in str(err.value) and "GGUF LoRA" in str(err.value) and "\n" not in str(err.value)


def test_lora_on_a_tied_embedding_is_refused(tmp_path: Path) -> None:
    import torch

    from tasks.merge.lora_gguf import Unexpressible, check_expressible

    tensors = {"base_model.model.model.embed_tokens.lora_embedding_A": torch.ones(4, 32),
               "base_model.model.model.embed_tokens.lora_embedding_B": torch.ones(16, 4)}
    adapter = make_adapter(tmp_path / "a", {"target_modules": ["embed_tokens"]}, tensors)
    with pytest.raises(Unexpressible) as err:
        check_expressible(make_base_config(tmp_path / "base", tied=True), adapter)
    assert "tied embedding model.embed_tokens" in str(err.value)


def test_a_non_lora_peft_adapter_is_one_line(tmp_path: Path) -> None:
    from tasks.merge.lora_gguf import check_expressible

    adapter = make_adapter(tmp_path / "a", {"peft_type": "IA3"})
    with pytest.raises(UserError) as err:
        check_expressible(make_base_config(tmp_path / "base"), adapter)
    assert "peft_type: 'IA3' is not supported" in str(err.value) and "\n" not in str(err.value)
