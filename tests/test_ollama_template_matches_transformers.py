"""The Ollama TEMPLATE modelmake derives follows Ollama's own conventions and still renders, in Go's
real text/template, exactly what transformers renders from the model's Jinja; what cannot be
derived costs only the Ollama target.

Templates are the real ones llama.cpp ships (.toolchain/.../models/templates/); the walk over all of
them is tests/test_ollama_templates_all.py. Here: the Modelfile SYSTEM, BOS, trimming, dates,
thinking and tool conventions, stops, the Modelfile round trip, and the render stage's behaviour.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from deploy_support import demo_copy, free_port, go_batch, go_render
from test_ollama_templates_all import hf_prompt, hf_tokenizer

from tasks.core import toolchain
from tasks.core.stage import Stage
from tasks.deploy import modelfile, render
from tasks.deploy.ollama_probe import PINNED_DATE, Probe
from tasks.deploy.ollama_template import RAW_PROMPT, TemplateNotSupported, detect

QWEN3, LLAMA31, LLAMA32 = "Qwen-Qwen3-0.6B", "meta-llama-Llama-3.1-8B-Instruct", "meta-llama-Llama-3.2-3B-Instruct"
TOKENS = {QWEN3: (None, "<|im_end|>"), LLAMA31: ("<|begin_of_text|>", "<|eot_id|>"),
          LLAMA32: ("<|begin_of_text|>", "<|eot_id|>"), "Qwen-Qwen2.5-7B-Instruct": (None, "<|im_end|>"),
          "Mistral-Small-3.2-24B-Instruct-2506": ("<s>", "</s>"), "openai-gpt-oss-120b": (None, "<|return|>"),
          "google-gemma-2-2b-it": ("<bos>", "<eos>"),
          "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B": ("<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"),
          "mistralai-Mistral-Nemo-Instruct-2407": ("<s>", "</s>")}
TRICKY_SYSTEM = 'Be brief.\nQuote: """x""" {{ .System }} {braces} and a tab\there'


def _source(name: str) -> str:
    return toolchain.chat_template_file(f"{name}.jinja").read_text(encoding="utf-8")


def _derive(name: str, adds_bos: bool = True):
    bos, eos = TOKENS[name]
    return detect(_source(name), {"bos_token": bos, "eos_token": eos}, gguf_adds_bos=adds_bos)


def _want(name: str, probe: Probe) -> str:
    bos, eos = TOKENS[name]
    return hf_prompt(hf_tokenizer(_source(name), bos, eos), _source(name), probe)


def _go(exe: Path, template: str, probe: Probe, system: str = "") -> str:
    case = {"template": 0, "messages": list(probe.messages), "now": f"{PINNED_DATE:%Y-%m-%d}",
            "tools": list(probe.tools or []), "think": probe.think, "system": system}
    [out] = go_batch(exe, [template], [case])
    assert "prompt" in out, out
    return out["prompt"]


@pytest.mark.parametrize("name", ["Qwen-Qwen2.5-7B-Instruct", LLAMA31, "mistralai-Mistral-Nemo-Instruct-2407"])
def test_modelfile_system_reaches_the_prompt_like_a_system_message(name: str, go_renderer) -> None:
    """Ollama prepends the Modelfile SYSTEM to a conversation without one: same prompt as sending it."""
    conv = ({"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "Tell me a joke.\nA short one."})
    got = _go(go_renderer, _derive(name).template, Probe("x", conv), system=TRICKY_SYSTEM)
    want = _want(name, Probe("x", ({"role": "system", "content": TRICKY_SYSTEM}, *conv)))
    bos = TOKENS[name][0] or ""
    assert (bos if bos and want.startswith(bos) else "") + got == want


def test_template_writes_bos_when_the_gguf_does_not_add_it(go_renderer) -> None:
    probe = Probe("x", ({"role": "system", "content": "S"}, {"role": "user", "content": "U"}))
    got = _go(go_renderer, _derive(LLAMA31, adds_bos=False).template, probe)
    assert got == _want(LLAMA31, probe) and got.startswith("<|begin_of_text|>")


def test_trimmed_content_gives_the_same_prompt_as_llama3(go_renderer) -> None:
    """Llama 3 trims message text (`| trim`); Go templates cannot call strip, the TEMPLATE's helpers do."""
    probe = Probe("x", ({"role": "system", "content": " \n\tsystem with spaces \u3000 "},
                        {"role": "user", "content": "\n\n  padded question   \n"},
                        {"role": "assistant", "content": "  an answer\t"}, {"role": "user", "content": "  next "}))
    found = _derive(LLAMA31)
    assert 'define "strip"' in found.template
    got = _go(go_renderer, found.template, probe)
    assert "<|begin_of_text|>" + got == _want(LLAMA31, probe)
    assert "padded question<|eot_id|>" in got and "\n\n  padded" not in got


def test_dates_use_ollamas_current_date_where_it_can_print_them(go_renderer) -> None:
    found = _derive("openai-gpt-oss-120b")  # "Current date: %Y-%m-%d"
    assert "{{ currentDate }}" in found.template and not any("pinned" in n for n in found.notes)
    probe = Probe("x", ({"role": "user", "content": "Hi"},))
    [today, later] = [r["prompt"] for r in go_batch(go_renderer, [found.template], [
        {"template": 0, "messages": list(probe.messages), "tools": [], "think": None, "system": "", "now": d}
        for d in ("2024-07-26", "2030-01-02")])]
    assert "Current date: 2024-07-26" in today and "Current date: 2030-01-02" in later
    pinned = _derive(LLAMA32)  # "%d %b %Y": no Ollama function prints that
    assert "{{ currentDate }}" not in pinned.template and "26 Jul 2024" in pinned.template
    assert any("pinned to 26 Jul 2024" in n for n in pinned.notes)


def test_reasoning_follows_ollamas_thinking_conventions(go_renderer) -> None:
    """Qwen3: reasoning is `.Thinking` between raw <think> tags inside `range .Messages` (what Ollama's
    thinking.InferTags looks for), shown only after the last user turn, and think=false closes it."""
    found = _derive(QWEN3)
    t = found.template
    assert re.search(r"\{\{ range \$i, \$m := \.Messages \}\}.*\{\{ if \$keep \}\}<think>\n\{\{ template \"strip_nl\" "
                     r"\.Thinking \}\}\n</think>\n\n\{\{ end \}\}", t, re.S)
    assert "$.IsThinkSet" in t or ".IsThinkSet" in t
    history = ({"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1", "thinking": "T1"},
               {"role": "user", "content": "Q2"})
    for think in (None, True, False):
        probe = Probe("x", history, think=think)
        got = _go(go_renderer, t, probe)
        assert got == _want(QWEN3, probe) and "T1" not in got  # dropped before the last user turn
    assert _go(go_renderer, t, Probe("x", history, think=False)).endswith("<think>\n\n</think>\n\n")
    last = Probe("x", (*history, {"role": "assistant", "content": "A2", "thinking": "T2"}))
    assert "<think>\nT2\n</think>\n\nA2" in _go(go_renderer, t, last) == _want(QWEN3, last)


def test_reasoning_tags_are_declared_where_the_prompt_opens_them(go_renderer) -> None:
    """DeepSeek-R1 distills never show past reasoning, but their generation prompt opens <think>: the
    TEMPLATE names the tags (in a block that never renders) so Ollama parses the answer's reasoning."""
    name = "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B"
    t = _derive(name).template
    assert re.search(r"\{\{ range \$i, \$m := \.Messages \}\}.*"
                     r"\{\{ if false \}\}<think>\{\{ \.Thinking \}\}</think>\{\{ end \}\}", t, re.S)
    probe = Probe("x", ({"role": "user", "content": "Q"}, {"role": "assistant", "content": "A", "thinking": "T"},
                        {"role": "user", "content": "Q2"}), think=True)
    got = _go(go_renderer, t, probe)
    assert TOKENS[name][0] + got == _want(name, probe) and got.endswith("<think>\n")
    assert "T" not in got.replace("<think>", "")


def test_tools_use_ollamas_tools_tool_calls_and_tool_role(go_renderer) -> None:
    from tasks.deploy.ollama_tools import CALL_1, RESULT_1, TOOL_A, called

    found = _derive(QWEN3)
    assert "tools" in found.features and "range $k, $t := $.Tools" in found.template
    assert "{{ if .ToolCalls }}" in found.template  # where Ollama's tool parser finds the call tag
    assert re.search(r"\{\{ if \.ToolCalls \}\}[^{]*\{\{[^}]*\}\}\n?<tool_call>", found.template) or \
        "<tool_call>\n{\"name\": \"" in found.template
    probe = Probe("x", ({"role": "user", "content": "Weather?"}, called("", CALL_1), RESULT_1), tools=(TOOL_A,))
    got = _go(go_renderer, found.template, probe)
    assert got == _want(QWEN3, probe)
    assert '<tool_call>\n{"name": "probe_tool_a", "arguments": {"city": "probe-city-1", "days": 73519}}' in got
    assert '"description": "Probe tool A: \\"quoted\\" and é"' in got


def test_stops_are_the_end_of_turn_and_turn_opening_tokens() -> None:
    assert _derive("Qwen-Qwen2.5-7B-Instruct").stops == ("<|im_end|>", "<|im_start|>")
    assert _derive(LLAMA31).stops == ("<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>")
    assert _derive("google-gemma-2-2b-it").stops == ("<end_of_turn>", "<start_of_turn>")
    assert _derive("mistralai-Mistral-Nemo-Instruct-2407").stops == ("</s>", "[INST]")
    # gpt-oss writes <|start|>/<|end|>/<|message|> inside one answer (analysis, then final): not stops.
    assert _derive("openai-gpt-oss-120b").stops == ("<|return|>",)
    for name in TOKENS:
        assert all(s in _source(name) or s in TOKENS[name] for s in _derive(name).stops), name


def test_template_survives_the_modelfile(go_renderer) -> None:
    """TEMPLATE and SYSTEM read back from the Modelfile (Ollama's parsing) render the same prompt."""
    found = _derive("Mistral-Small-3.2-24B-Instruct-2506")  # a default system prompt full of quotes
    text = (f"FROM ./m.gguf\nTEMPLATE {modelfile.quote(found.template, 'TEMPLATE')}\n"
            f"SYSTEM {modelfile.quote(TRICKY_SYSTEM, 'SYSTEM')}\n")
    parsed = dict(modelfile.parse(text))
    assert parsed["template"] == found.template and parsed["system"] == TRICKY_SYSTEM
    conv = [[{"role": "user", "content": "Hi"}], [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]]
    assert go_render(go_renderer, parsed["template"], conv) == go_render(go_renderer, found.template, conv)


@pytest.mark.parametrize(("source", "why"), [
    (None, "renders none of the probe conversations"),  # firefunction: needs a `functions` variable
    ("{% for m in messages %}{{ m.content | upper }}{% endfor %}", "not where it was expected"),
    ("{{ messages[0].content }}{% for m in messages %}{{ m.content }}{% endfor %}", "twice"),
    ("{% if %}", "does not parse"),
    ("{{ raise_exception('no') }}", "renders none of the probe conversations"),
])
def test_unexpressible_templates_are_refused_in_one_line(source: str | None, why: str) -> None:
    source = source or _source("fireworks-ai-llama-3-firefunction-v2")
    with pytest.raises(TemplateNotSupported, match=why) as exc:
        detect(source, {"bos_token": "<s>", "eos_token": "</s>"}, gguf_adds_bos=True)
    assert "\n" not in str(exc.value)


def test_a_refused_template_skips_only_the_ollama_target(built_demo, tmp_path: Path, capsys) -> None:
    """The real render stage on the demo, its merged model given a template no TEMPLATE can express:
    Modelfile.skipped (the reason) instead of a Modelfile, every other file built, the stage fresh."""
    import dataclasses

    from tasks.build.registry import all_stages
    from tasks.core.config.load import load_config
    from tasks.core.stage import run_stage, stale_reason
    from tasks.deploy.cli import deploy

    ws = demo_copy(built_demo, tmp_path / "ws", port=free_port())
    merged = tmp_path / "merged"
    shutil.copytree(ws.artifacts / "demo" / "merged", merged)
    (merged / "chat_template.jinja").write_text(_source("fireworks-ai-llama-3-firefunction-v2"))
    config = load_config(ws.config)
    stage = next(st for st in all_stages(config) if st.task == "render:demo")
    stage = dataclasses.replace(stage, inputs={**stage.inputs, "merged": merged})
    assert run_stage(stage, lambda s: render.build(s, config), log=lambda _: None)
    err = capsys.readouterr().err
    assert "Ollama target skipped: models.demo: no Ollama TEMPLATE derived from its chat template" in err
    out = ws.artifacts / "demo"
    assert not (out / "Modelfile").exists()
    reason = (out / "Modelfile.skipped").read_text()
    assert reason.count("\n") == 1 and "'functions' is undefined" in reason
    assert json.loads((out / "lmstudio.json").read_text())["config"]["load"]["fields"]
    assert "ollama_skipped" in json.loads((out / "deploy.json").read_text())
    assert "demo/Modelfile.skipped" in json.loads(stage.manifest.read_text())["outputs"]
    assert stale_reason(stage) is None
    assert any(line.startswith("ollama: skipped (models.demo: no Ollama TEMPLATE") for line in
               deploy(config, config.models["demo"]))


def test_model_without_chat_template_gets_a_raw_prompt_template(built_demo, tmp_path: Path) -> None:
    merged = tmp_path / "merged"
    shutil.copytree(built_demo.artifacts / "demo" / "merged", merged)
    (merged / "chat_template.jinja").unlink()
    cfg = json.loads((merged / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (merged / "tokenizer_config.json").write_text(json.dumps(cfg))
    params = {"model": "demo", "system": None, "deploy": {"context": 512, **dict.fromkeys(
        ("temperature", "top_p", "top_k", "repeat_penalty"))}}
    stage = Stage(task="render:demo", kind="render", version=2, artifacts=tmp_path, manifest=tmp_path / "m.json",
                  log=tmp_path / "render.log", params=params,
                  inputs={"gguf": built_demo.artifacts / "demo" / "demo-q4_k_m.gguf"})
    ctx = render.ollama_context(stage, merged, ["<|endoftext|>"])
    assert ctx["ollama_template"] == RAW_PROMPT
    assert ctx["ollama_family"].startswith("raw prompt") and "nothing to check" in ctx["ollama_notes"][0]


def test_explicit_template_from_models_toml_is_used_verbatim(built_demo, tmp_path: Path) -> None:
    ws = demo_copy(built_demo, tmp_path / "ws", port=free_port(), extra='ollama_template = "chatml.gotmpl"')
    custom = '{{ range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n'
    (ws.root / "chatml.gotmpl").write_text(custom)
    ws.doit("render:demo")
    text = (ws.artifacts / "demo" / "Modelfile").read_text()
    assert dict(modelfile.parse(text))["template"] == custom
    assert "TEMPLATE: explicit (deploy.ollama_template), used as given: not checked." in text


def test_the_demo_modelfile_says_what_was_proven(built_demo) -> None:
    text = (built_demo.artifacts / "demo" / "Modelfile").read_text()
    assert re.search(r"# TEMPLATE: derived from the model's chat template, identical to it on \d+ probe "
                     r"conversations \(chat, prefill, tools\)\.", text)
    assert [v for c, v in modelfile.parse(text) if c == "stop"] == ["<|im_end|>", "<|im_start|>", "<|endoftext|>"]


@pytest.mark.parametrize("targets", ['["ollama", "lmstudio"]', '["lmstudio"]'])
def test_lm_studio_stops_are_the_same_as_ollamas(built_demo, tmp_path: Path, targets: str) -> None:
    ws = demo_copy(built_demo, tmp_path / "ws", port=free_port(), extra=f"targets = {targets}")
    ws.doit("render:demo")
    config = json.loads((ws.artifacts / "demo" / "lmstudio.json").read_text())["config"]
    stops = next(f["value"] for f in config["operation"]["fields"] if f["key"] == "llm.prediction.stopStrings")
    assert stops == ["<|im_end|>", "<|im_start|>", "<|endoftext|>"]
