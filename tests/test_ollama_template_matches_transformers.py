"""The Ollama TEMPLATE modelmake derives renders, in Go's real text/template, exactly the prompt
transformers' apply_chat_template makes from the model's own Jinja template.

Templates are the real ones llama.cpp ships (.toolchain/.../models/templates/). The Go side runs
tests/gotemplate (standard library only), which also applies what Ollama's server does to a chat
request before templating (Modelfile SYSTEM prepended, same-role messages merged).
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import pytest
from deploy_support import demo_copy, free_port, go_render

from tasks.core import toolchain
from tasks.core.errors import UserError
from tasks.core.stage import Stage
from tasks.deploy import modelfile, render
from tasks.deploy.ollama_template import PINNED_DATE, TemplateNotSupported, detect

# template file -> (family, bos, eos): the special tokens of each model's tokenizer.
MODELS = {
    "Qwen-Qwen2.5-7B-Instruct": ("chatml", None, "<|im_end|>"),
    "meta-llama-Llama-3.1-8B-Instruct": ("llama3", "<|begin_of_text|>", "<|eot_id|>"),
    "meta-llama-Llama-3.2-3B-Instruct": ("llama3", "<|begin_of_text|>", "<|eot_id|>"),
    "microsoft-Phi-3.5-mini-instruct": ("phi3", "<s>", "<|endoftext|>"),
    "mistralai-Mistral-Nemo-Instruct-2407": ("mistral", "<s>", "</s>"),
    "Mistral-Small-3.2-24B-Instruct-2506": ("mistral-v7", "<s>", "</s>"),
    "google-gemma-2-2b-it": ("gemma", "<bos>", "<eos>"),
}
TRICKY_SYSTEM = 'Be brief.\nQuote: """x""" {{ .System }} {braces} and a tab\there'
CONVERSATIONS = {
    "user only": [{"role": "user", "content": "Hello there"}],
    "system + user": [{"role": "system", "content": TRICKY_SYSTEM}, {"role": "user", "content": "What is 2+2?"}],
    "multi-turn": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"},
                   {"role": "user", "content": "Tell me a joke.\nA short one."}],
    "system, multi-turn": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi"},
                           {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye"},
                           {"role": "assistant", "content": "Bye."}, {"role": "user", "content": "Wait"}],
    "prefill": [{"role": "user", "content": "Count to three"}, {"role": "assistant", "content": "One, two,"}],
}


def hf_tokenizer(template: str, bos: str | None, eos: str):
    """A real transformers tokenizer carrying the model's chat template and special tokens."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["[UNK]", *(t for t in (bos, eos) if t)])}
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel(vocab, unk_token="[UNK]")),
                                  bos_token=bos, eos_token=eos, unk_token="[UNK]")
    tok.chat_template = template
    return tok


def hf_prompt(tok, conversation: list[dict[str, str]]) -> str:
    prefill = conversation[-1]["role"] == "assistant"
    # date_string: Llama 3.x's own variable; Ollama TEMPLATEs carry the pinned date (see below).
    out = tok.apply_chat_template(conversation, tokenize=False, add_generation_prompt=not prefill,
                                  continue_final_message=prefill, date_string=PINNED_DATE.strftime("%d %b %Y"))
    # Mistral Small prints today's date (strftime_now) in its default system prompt; the TEMPLATE
    # pins it so the Modelfile is reproducible. Compare with today's date put back to the pin.
    today = datetime.datetime.now().strftime("%Y-%m-%d")
    return out.replace(f"The current date is {today}.", f"The current date is {PINNED_DATE:%Y-%m-%d}.")


def _template(name: str) -> str:
    return toolchain.chat_template_file(f"{name}.jinja").read_text(encoding="utf-8")


@pytest.mark.parametrize("name", sorted(MODELS))
def test_go_template_renders_what_transformers_renders(name: str, go_renderer) -> None:
    family, bos, eos = MODELS[name]
    template = _template(name)
    found = detect(template, {"bos_token": bos, "eos_token": eos}, gguf_adds_bos=True)
    assert found.family == family
    tok = hf_tokenizer(template, bos, eos)
    names = [n for n, c in CONVERSATIONS.items() if found.system_supported or c[0]["role"] != "system"]
    go_out = go_render(go_renderer, found.template, [CONVERSATIONS[n] for n in names])
    for n, got in zip(names, go_out, strict=True):
        want = hf_prompt(tok, CONVERSATIONS[n])
        runtime_bos = bos if bos and want.startswith(bos) else ""  # llama.cpp adds it (add_bos_token)
        assert runtime_bos + got == want, f"{name}, {n}"


@pytest.mark.parametrize("name", ["Qwen-Qwen2.5-7B-Instruct", "meta-llama-Llama-3.1-8B-Instruct",
                                  "microsoft-Phi-3.5-mini-instruct", "mistralai-Mistral-Nemo-Instruct-2407"])
def test_modelfile_system_reaches_the_prompt_like_a_system_message(name: str, go_renderer) -> None:
    """Ollama prepends the Modelfile SYSTEM to a conversation without one: same prompt as sending it."""
    family, bos, eos = MODELS[name]
    template = _template(name)
    found = detect(template, {"bos_token": bos, "eos_token": eos}, gguf_adds_bos=True)
    conv = CONVERSATIONS["multi-turn"]
    [got] = go_render(go_renderer, found.template, [conv], system=TRICKY_SYSTEM)
    want = hf_prompt(hf_tokenizer(template, bos, eos), [{"role": "system", "content": TRICKY_SYSTEM}, *conv])
    assert (bos if bos and want.startswith(bos) else "") + got == want


def test_template_writes_bos_when_the_gguf_does_not_add_it(go_renderer) -> None:
    name = "meta-llama-Llama-3.1-8B-Instruct"
    _, bos, eos = MODELS[name]
    template = _template(name)
    found = detect(template, {"bos_token": bos, "eos_token": eos}, gguf_adds_bos=False)
    [got] = go_render(go_renderer, found.template, [CONVERSATIONS["system + user"]])
    assert got == hf_prompt(hf_tokenizer(template, bos, eos), CONVERSATIONS["system + user"])
    assert got.startswith("<|begin_of_text|>")


def test_template_survives_the_modelfile(go_renderer) -> None:
    """TEMPLATE and SYSTEM read back from the Modelfile (Ollama's parsing) render the same prompt."""
    name = "Mistral-Small-3.2-24B-Instruct-2506"  # default system prompt full of quotes and newlines
    _, bos, eos = MODELS[name]
    found = detect(_template(name), {"bos_token": bos, "eos_token": eos}, gguf_adds_bos=True)
    text = (f"FROM ./m.gguf\nTEMPLATE {modelfile.quote(found.template, 'TEMPLATE')}\n"
            f"SYSTEM {modelfile.quote(TRICKY_SYSTEM, 'SYSTEM')}\n")
    parsed = dict(modelfile.parse(text))
    assert parsed["template"] == found.template and parsed["system"] == TRICKY_SYSTEM
    conv = [CONVERSATIONS["user only"], CONVERSATIONS["system, multi-turn"]]
    assert go_render(go_renderer, parsed["template"], conv) == go_render(go_renderer, found.template, conv)


def test_stop_tokens_are_the_end_of_turn_tokens_the_template_uses() -> None:
    stops = {name: detect(_template(name), {"bos_token": b, "eos_token": e}, True).stops
             for name, (_, b, e) in MODELS.items()}
    assert stops["Qwen-Qwen2.5-7B-Instruct"] == ("<|im_end|>",)  # not the GGUF's eos <|endoftext|>
    assert stops["meta-llama-Llama-3.1-8B-Instruct"] == ("<|eot_id|>", "<|eom_id|>")
    assert stops["meta-llama-Llama-3.2-3B-Instruct"] == ("<|eot_id|>",)
    assert stops["microsoft-Phi-3.5-mini-instruct"] == ("<|end|>",)
    assert stops["mistralai-Mistral-Nemo-Instruct-2407"] == ("</s>",)
    assert stops["google-gemma-2-2b-it"] == ("<end_of_turn>",)


@pytest.mark.parametrize("name", ["llama-cpp-rwkv-world", "ibm-granite-granite-3.3-2B-Instruct",
                                  "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B", "Qwen-QwQ-32B"])
def test_unknown_or_different_templates_are_refused_not_guessed(name: str) -> None:
    # QwQ uses <|im_start|> but strips reasoning from history: ChatML's TEMPLATE would be wrong.
    with pytest.raises(TemplateNotSupported, match="not one of the supported chat formats"):
        detect(_template(name), {"bos_token": "<s>", "eos_token": "</s>"}, gguf_adds_bos=True)


def test_render_refuses_an_unsupported_template_naming_the_model(built_demo, tmp_path: Path) -> None:
    merged = tmp_path / "merged"
    merged.mkdir()
    (merged / "chat_template.jinja").write_text(_template("ibm-granite-granite-3.3-2B-Instruct"))
    (merged / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|end_of_text|>"}))
    stage = Stage(task="render:demo", kind="render", version=2, artifacts=tmp_path, manifest=tmp_path / "m.json",
                  log=tmp_path / "render.log", params={"model": "demo", "system": None},
                  inputs={"gguf": built_demo.artifacts / "demo" / "demo-q4_k_m.gguf"})
    refused = (r"^models\.demo: cannot derive an Ollama TEMPLATE from .*chat_template\.jinja: "
               r"not one of the supported chat formats .* models\.demo\.deploy\.ollama_template")
    with pytest.raises(UserError, match=refused):
        render.ollama_context(stage, merged, [])


def test_explicit_template_from_models_toml_is_used_verbatim(built_demo, tmp_path: Path) -> None:
    ws = demo_copy(built_demo, tmp_path / "ws", port=free_port(), extra='ollama_template = "chatml.gotmpl"')
    custom = '{{ range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n'
    (ws.root / "chatml.gotmpl").write_text(custom)
    ws.doit("render:demo")
    text = (ws.artifacts / "demo" / "Modelfile").read_text()
    assert dict(modelfile.parse(text))["template"] == custom
    assert "TEMPLATE: explicit (deploy.ollama_template) format" in text
