"""Adapter key spellings and per-module scaling, checked against peft's own helpers."""

from __future__ import annotations

import math

import pytest
from peft.utils.other import get_pattern_key

from tasks.core.errors import UserError
from tasks.merge.lora_adapter import LoraSettings, normalise_key


@pytest.mark.parametrize("key, expected", [
    ("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", ("model.layers.0.self_attn.q_proj", "A", None)),
    ("model.layers.0.self_attn.q_proj.lora_B.default.weight", ("model.layers.0.self_attn.q_proj", "B", "default")),
    ("base_model.model.model.embed_tokens.lora_embedding_A", ("model.embed_tokens", "A", None)),
    ("base_model.model.model.embed_tokens.lora_embedding_B.default", ("model.embed_tokens", "B", "default")),
    ("base_model.model.model.layers.1.mlp.up_proj.lora_magnitude_vector", ("model.layers.1.mlp.up_proj", "magnitude",
                                                                          None)),
    ("model.layers.1.mlp.up_proj.lora_magnitude_vector.default.weight", ("model.layers.1.mlp.up_proj", "magnitude",
                                                                         "default")),
    ("base_model.model.lm_head.weight", ("lm_head.weight", None, None)),
    ("base_model.model.lm_head.modules_to_save.weight", ("lm_head.weight", None, None)),
    ("base_model.model.lm_head.modules_to_save.default.weight", ("lm_head.weight", None, "default")),
    ("base_model.model.model.embed_tokens.base_layer.weight", ("model.embed_tokens.weight", None, None)),
    ("base_model.model.model.layers.0.self_attn.q_proj.base_layer.bias", ("model.layers.0.self_attn.q_proj.bias",
                                                                         None, None)),
])
def test_key_spellings(key: str, expected: tuple) -> None:
    assert tuple(normalise_key(key)[:3]) == expected


@pytest.mark.parametrize("key", [
    "base_model.model.model.layers.0.self_attn.q_proj.lora_B.bias",  # lora_bias
    "base_model.model.model.layers.0.self_attn.q_proj.lora_E",  # AdaLoRA
    "base_model.model.model.layers.0.self_attn.q_proj.hada_w1_a",  # LoHa
    "base_model.model.model.embed_tokens.token_adapter.trainable_tokens_delta",  # trainable tokens
    "base_model.model.model.layers.0.self_attn.q_proj.lora_A.a.b.weight",
])
def test_foreign_keys_are_refused(key: str) -> None:
    with pytest.raises(UserError, match="adapter tensor"):
        normalise_key(key)


def _settings(**kw: object) -> LoraSettings:
    base = dict(r=8, alpha=16, use_rslora=False, rank_pattern={}, alpha_pattern={}, fan_in_fan_out=False,
                use_dora=False, ensure_weight_tying=False)
    return LoraSettings(**{**base, **kw})


def test_scaling_standard_and_rslora() -> None:
    assert _settings().rank_and_scaling("model.layers.0.mlp.up_proj") == (8, 2.0)
    assert _settings(use_rslora=True).rank_and_scaling("x.q_proj") == (8, 16 / math.sqrt(8))


@pytest.mark.parametrize("module", ["model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.q_proj",
                                    "model.layers.1.mlp.down_proj", "model.layers.0.mlp.down_proj",
                                    "model.layers.0.mlp.gate_proj"])
def test_patterns_resolve_like_peft(module: str) -> None:
    ranks = {"q_proj": 16, r"layers\.1\.mlp\.down_proj": 2, "model.layers.0.mlp.down_proj": 4}
    alphas = {"down_proj": 7, "layers.0.self_attn.q_proj": 3}
    settings = _settings(rank_pattern=ranks, alpha_pattern=alphas)
    r = ranks.get(get_pattern_key(ranks.keys(), module), 8)
    alpha = alphas.get(get_pattern_key(alphas.keys(), module), 16)
    assert settings.rank_and_scaling(module) == (r, alpha / r)
