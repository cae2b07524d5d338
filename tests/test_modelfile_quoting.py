"""User text cannot break the Modelfile: every rendered Modelfile reads back, with Ollama's own
parsing rules (tasks/deploy/modelfile.py ports parser.go), to exactly the intended values, and text those
rules cannot carry is refused with the reason instead of being mangled."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from deploy_support import demo_copy, free_port, go_render

from tasks.deploy import modelfile

HOSTILE = [
    'Say """hi""" back.\nThen stop.',
    "{{ .System }}{{ end }}{{ template \"x\" }} and {braces}",
    'SYSTEM """ x\nFROM /etc/passwd\nPARAMETER stop x',
    '"""starts and ends with triple quotes inside a line""" ok',
    "  leading and trailing spaces, tab\tand CRLF\r\nline two  ",
    'ends with a quote"',
    "# not a comment\nTEMPLATE injected",
]


@pytest.mark.parametrize("system", HOSTILE)
def test_hostile_system_prompts_survive_the_modelfile(built_demo, tmp_path: Path, system: str,
                                                      go_renderer) -> None:
    ws = demo_copy(built_demo, tmp_path / "ws", port=free_port(), system=system)
    ws.doit("render:demo")
    text = (ws.artifacts / "demo" / "Modelfile").read_bytes().decode()  # keep \r as Ollama reads it
    commands = modelfile.parse(text)
    assert [v for c, v in commands if c == "model"] == ["./demo-q4_k_m.gguf"]
    assert [v for c, v in commands if c == "system"] == [system]
    assert [v for c, v in commands if c == "stop"] == ["<|im_end|>", "<|im_start|>", "<|endoftext|>"]
    template = dict(commands)["template"]
    [prompt] = go_render(go_renderer, template, [[{"role": "user", "content": "Who are you?"}]], system=system)
    assert prompt == f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\nWho are you?<|im_end|>\n" \
                     "<|im_start|>assistant\n"
    lmstudio = json.loads((ws.artifacts / "demo" / "lmstudio.json").read_text())
    assert lmstudio["config"]["operation"]["fields"][0]["value"] == system


@pytest.mark.parametrize(("system", "reason"), [
    ('first line ends with """\nsecond', "line 1 ends with '\"\"\"'"),
    ("no-break\xa0space", "character 8 is U+00A0 (NO-BREAK SPACE), which Ollama's Modelfile parser drops"),
])
def test_unrepresentable_system_prompt_is_refused(built_demo, tmp_path: Path, system: str, reason: str) -> None:
    ws = demo_copy(built_demo, tmp_path / "ws", port=free_port(), system=system)
    run = ws.doit("render:demo", check=False)
    assert run.returncode != 0
    assert f"models.demo.system: {reason}" in run.stderr
    assert "Traceback" not in run.stderr


def test_parameters_are_checked_against_ollamas_documented_set() -> None:
    assert modelfile.parameter_value("num_ctx", 2048, "x") == "2048"
    assert modelfile.parameter_value("temperature", 0.2, "x") == "0.2"
    assert modelfile.parameter_value("stop", "<|im_end|>", "x") == '"<|im_end|>"'
    with pytest.raises(modelfile.ModelfileError, match="'num_gqa' is not a documented Ollama parameter"):
        modelfile.parameter_value("num_gqa", 8, "x")
    with pytest.raises(modelfile.ModelfileError, match="num_ctx needs an integer"):
        modelfile.parameter_value("num_ctx", 20.5, "x")


def test_parser_port_reads_ollama_modelfiles_like_ollama() -> None:
    text = ('# comment\nFROM llama3.2\nPARAMETER temperature 1\nSYSTEM You are Mario, with spaces.\n'
            'TEMPLATE """{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"""\n'
            'MESSAGE user Is Toronto in Canada?\nPARAMETER stop "<|im_end|>"\n')
    assert modelfile.parse(text) == [
        ("model", "llama3.2"), ("temperature", "1"), ("system", "You are Mario, with spaces."),
        ("template", "{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"),
        ("message", "user: Is Toronto in Canada?"), ("stop", "<|im_end|>"),
    ]
    with pytest.raises(modelfile.ModelfileError, match="no FROM line"):
        modelfile.parse("SYSTEM hi\n")
