"""The render stage: deployment files from Jinja templates in templates/.

Templates render in Jinja's sandbox with StrictUndefined: a template typo fails the build
instead of writing an empty field, and a template cannot reach Python internals.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jinja2 import FileSystemLoader, StrictUndefined
from jinja2.sandbox import SandboxedEnvironment

from tasks import atomic
from tasks.errors import UserError
from tasks.manifest import Stage

# Go text/template for ChatML models in Ollama's legacy per-exchange form.
CHATML_OLLAMA = (
    "{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
    "{{ if .Prompt }}<|im_start|>user\n{{ .Prompt }}<|im_end|>\n{{ end }}"
    "<|im_start|>assistant\n{{ .Response }}<|im_end|>\n"
)


def environment(template_dir: Path) -> SandboxedEnvironment:
    env = SandboxedEnvironment(
        loader=FileSystemLoader(str(template_dir)), undefined=StrictUndefined,
        keep_trailing_newline=True, autoescape=False, trim_blocks=True, lstrip_blocks=True,
    )
    env.filters["tojson"] = lambda v: json.dumps(v, ensure_ascii=False)
    return env


def stop_tokens(merged: Path) -> list[str]:
    """End-of-turn strings: every eos id of the generation config, and the tokenizer's eos token."""
    gen = json.loads((merged / "generation_config.json").read_text(encoding="utf-8"))
    tok_cfg = json.loads((merged / "tokenizer_config.json").read_text(encoding="utf-8"))
    tokenizer = json.loads((merged / "tokenizer.json").read_text(encoding="utf-8"))
    by_id = {t["id"]: t["content"] for t in tokenizer.get("added_tokens", [])}
    ids = gen.get("eos_token_id")
    ids = ids if isinstance(ids, list) else [ids] if ids is not None else []
    stops = [by_id[i] for i in ids if i in by_id]
    eos = tok_cfg.get("eos_token")
    eos = eos.get("content") if isinstance(eos, dict) else eos
    if isinstance(eos, str) and eos not in stops:
        stops.insert(0, eos)
    return stops


def ollama_template(chat_template: str) -> str | None:
    """A Go template for known chat formats; None lets Ollama use the GGUF's own template."""
    if "<|im_start|>" in chat_template and "<|im_end|>" in chat_template:
        return CHATML_OLLAMA
    return None


def context(stage: Stage) -> dict[str, Any]:
    merged = stage.inputs["merged:chat_template.jinja"].parent
    params = stage.params
    system = params["system"]
    if system is not None and '"""' in system:
        raise UserError(f"models.{params['model']}.system: contains '\"\"\"', which an Ollama Modelfile cannot quote")
    gguf = stage.inputs["gguf"]
    return {
        "model": params["model"],
        "quant": params["quant"],
        "gguf": gguf.name,
        "gguf_sha256": stage.input_digests()["gguf"],
        "system": system,
        "deploy": params["deploy"],
        "stops": stop_tokens(merged),
        "ollama_template": ollama_template(merged.joinpath("chat_template.jinja").read_text(encoding="utf-8")),
    }


def build(stage: Stage) -> None:
    ctx = context(stage)
    env = environment(stage.inputs["template:Modelfile"].parent)
    for out in stage.outputs:
        text = env.get_template(f"{out.name}.j2").render(**ctx)
        atomic.write_text(out, text)
