"""`make ollama-template JINJA=...`: the render stage's TEMPLATE derivation for any chat template file,
as Modelfile lines or JSON; a template it cannot express is one line and exit 1, bad input exit 2.
Also: a model without a chat template gets plain-text check probes instead of a crash."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import REPO
from test_ollama_templates_all import hf_tokenizer

from tasks.checks.eval_set import plain_text, probes
from tasks.core import toolchain
from tasks.deploy import modelfile


def _make(*args: str) -> subprocess.CompletedProcess[str]:
    # -o setup: the venv and toolchain the tests run in are already set up
    return subprocess.run(["make", "-s", "-o", "setup", "-C", str(REPO), "ollama-template", *args],
                          capture_output=True, text=True, timeout=300)


def _jinja(name: str) -> str:
    return str(toolchain.chat_template_file(f"{name}.jinja"))


def test_prints_the_modelfile_template_and_stops() -> None:
    run = _make(f"JINJA={_jinja('meta-llama-Llama-3.1-8B-Instruct')}", "BOS=<|begin_of_text|>", "EOS=<|eot_id|>")
    assert run.returncode == 0, run.stderr
    commands = modelfile.parse("FROM ./x.gguf\n" + run.stdout)
    assert [v for c, v in commands if c == "stop"] == ["<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>"]
    template = dict(commands)["template"]
    assert "<|start_header_id|>assistant<|end_header_id|>" in template and "<|begin_of_text|>" not in template
    assert "# TEMPLATE: derived from meta-llama-Llama-3.1-8B-Instruct.jinja, identical to it on" in run.stdout


def test_json_output_is_the_same_derivation() -> None:
    run = _make(f"JINJA={_jinja('Qwen-Qwen3-0.6B')}", "FORMAT=json")
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert out["family"] == "derived" and out["stops"] == ["<|im_end|>", "<|im_start|>"]
    assert "{{ .Thinking }}" in out["template"] or '"strip_nl" .Thinking' in out["template"]


def test_an_unexpressible_template_is_one_line_and_exit_1(tmp_path: Path) -> None:
    run = _make(f"JINJA={_jinja('fireworks-ai-llama-3-firefunction-v2')}")
    assert run.returncode != 0 and run.stdout == ""
    lines = [ln for ln in run.stderr.splitlines() if ln.startswith("modelmake:")]
    assert len(lines) == 1 and "no Ollama TEMPLATE" in lines[0] and "Traceback" not in run.stderr
    direct = subprocess.run([sys.executable, "-m", "tasks.deploy.ollama_cli",
                             _jinja("fireworks-ai-llama-3-firefunction-v2"),
                             "--format", "json"], capture_output=True, text=True, cwd=REPO)
    assert direct.returncode == 1 and "functions" in json.loads(direct.stdout)["error"]
    missing = subprocess.run([sys.executable, "-m", "tasks.deploy.ollama_cli", str(tmp_path / "nope.jinja")],
                             capture_output=True, text=True, cwd=REPO)
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "nope.jinja" in missing.stderr


def test_a_model_without_chat_template_gets_plain_text_probes() -> None:
    tok = hf_tokenizer(None, "<s>", "</s>")
    assert not tok.chat_template
    conv = [{"role": "user", "content": "Once upon"}, {"role": "assistant", "content": "a time"}]
    prompt, full = plain_text(conv, "</s>")
    assert (prompt, full) == ("Once upon\n\n", "Once upon\n\na time</s>")
    [probe] = probes(tok, [conv])
    assert probe.answer and probe.answer[-1] == tok.eos_token_id and probe.prompt


def test_the_derivation_does_not_depend_on_hash_seeds_or_the_date() -> None:
    """Sets and dicts are never allowed to order what is written: same TEMPLATE in every process."""
    import os

    outs = set()
    for seed in ("1", "2"):
        run = subprocess.run([sys.executable, "-m", "tasks.deploy.ollama_cli", _jinja("Qwen-Qwen3-0.6B"),
                          "--format", "json"],
                             capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONHASHSEED": seed})
        outs.add(run.stdout)
    assert len(outs) == 1 and json.loads(outs.pop())["template"]
