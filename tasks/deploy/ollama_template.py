"""An Ollama TEMPLATE for a model, derived from the model's own Jinja chat template.

A fine-tune pushed to Ollama without the right TEMPLATE talks garbage (ollama #6823, #2334,
#6330), and guessing from a token or two is how that happens. So a family (tasks/deploy/chat_families.py)
is accepted only when its prompt is *identical* to the model's Jinja render on a set of probe
conversations (with and without system prompt, multi-turn, generation prompt, prefill). A
template that matches no family is refused with a message naming the model, unless models.toml
gives an explicit TEMPLATE (deploy.ollama_template).

The model's Jinja runs in Jinja's immutable sandbox, as in transformers; `strftime_now` is
pinned to 2024-07-26 (Llama 3.1's own default date), so a template that prints today's date
(Llama 3.2, Mistral Small) yields a reproducible TEMPLATE instead of one that changes daily.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tasks.deploy.chat_families import A1, A2, FAMILIES, S1, U1, U2, U3, Family, Mismatch, RenderRefused, lit

PINNED_DATE = datetime.datetime(2024, 7, 26)

# Probe conversations: (description, messages). A final assistant turn is a prefill.
PROBES: tuple[tuple[str, list[dict[str, str]]], ...] = (
    ("user", [{"role": "user", "content": U1}]),
    ("system+user", [{"role": "system", "content": S1}, {"role": "user", "content": U1}]),
    ("user/assistant/user", [{"role": "user", "content": U1}, {"role": "assistant", "content": A1},
                             {"role": "user", "content": U2}]),
    ("system, three turns", [{"role": "system", "content": S1}, {"role": "user", "content": U1},
                             {"role": "assistant", "content": A1}, {"role": "user", "content": U2},
                             {"role": "assistant", "content": A2}, {"role": "user", "content": U3}]),
    ("prefill", [{"role": "user", "content": U1}, {"role": "assistant", "content": A1}]),
    ("system+prefill", [{"role": "system", "content": S1}, {"role": "user", "content": U1},
                        {"role": "assistant", "content": A1}]),
    ("multi-line text", [{"role": "system", "content": "line one\nline {two}"},
                         {"role": "user", "content": 'a "quoted"\n{{ .Prompt }} text'}]),
)
CONTINUE_TAG = "CONTINUE_FINAL_MESSAGE_TAG "


class TemplateNotSupported(Exception):
    """No family reproduces the model's template; the message says why for each candidate."""


@dataclass(frozen=True)
class OllamaTemplate:
    family: str
    template: str  # Go text/template for Ollama's TEMPLATE
    stops: tuple[str, ...]  # end-of-turn strings for PARAMETER stop
    trims: bool  # the model's template strips surrounding whitespace from message text
    system_supported: bool
    params: dict[str, Any]


def jinja_renderer(chat_template: str, special_tokens: dict[str, Any]) -> Callable[..., str]:
    """render(messages) -> prompt, like transformers' apply_chat_template(tokenize=False).

    A final user/system turn gets add_generation_prompt=True; a final assistant turn is
    continued (continue_final_message). Raises RenderRefused when the template raises.
    """
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None,
               sort_keys: bool = False) -> str:
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = PINNED_DATE.strftime
    try:
        compiled = env.from_string(chat_template)
    except jinja2.TemplateError as exc:
        raise TemplateNotSupported(f"the chat template does not parse: {exc}") from None

    def render(messages: list[dict[str, str]]) -> str:
        msgs = [dict(m) for m in messages]
        prefill = bool(msgs) and msgs[-1]["role"] == "assistant"
        if prefill:
            msgs[-1]["content"] += CONTINUE_TAG
        try:
            out = compiled.render(messages=msgs, tools=None, documents=None,
                                  add_generation_prompt=not prefill, **special_tokens)
        except jinja2.TemplateError as exc:
            raise RenderRefused(str(exc)) from None
        if prefill:
            tag = out.rfind(CONTINUE_TAG.strip())
            if tag < 0:
                raise RenderRefused("the final assistant message does not appear in the render")
            out = out[:tag] if out[tag:tag + len(CONTINUE_TAG)] == CONTINUE_TAG else out[:tag].rstrip()
        return out

    return render


def detect(chat_template: str, special_tokens: dict[str, Any], gguf_adds_bos: bool) -> OllamaTemplate:
    """The family whose prompt equals the Jinja render on every probe, as a ready TEMPLATE."""
    raw_render = jinja_renderer(chat_template, special_tokens)
    bos = special_tokens.get("bos_token") or ""
    seen_bos: set[bool] = set()

    def render(messages: list[dict[str, str]]) -> str:
        out = raw_render(messages)
        has = bool(bos) and out.startswith(bos)
        seen_bos.add(has)
        if len(seen_bos) > 1:
            raise Mismatch("the template starts some prompts with BOS and others without")
        return out[len(bos):] if has else out

    reasons = []
    for family in FAMILIES:
        if not all(s in chat_template for s in family.signature):
            continue
        try:
            params = family.extract(render)
            _verify(family, params, render)
        except (Mismatch, RenderRefused) as exc:
            reasons.append(f"{family.name}: {exc}")
            continue
        trims = _trims(raw_render)
        # llama.cpp adds BOS itself when the GGUF says so; otherwise the TEMPLATE must write it.
        prefix = lit(bos) if (True in seen_bos and not gguf_adds_bos) else ""
        stops = tuple(t for t in family.stops(params) if t and (t in chat_template or t in params.values()))
        return OllamaTemplate(
            family=family.name, template=prefix + family.go(params), stops=stops, trims=trims,
            system_supported=params.get("system") != "rejected", params=params,
        )
    if not reasons:
        reasons.append("it uses none of the supported formats' tokens")
    names = ", ".join(f.name for f in FAMILIES)
    raise TemplateNotSupported(f"not one of the supported chat formats ({names}): " + "; ".join(reasons))


def _verify(family: Family, params: dict[str, Any], render: Callable[..., str]) -> None:
    for desc, msgs in PROBES:
        has_system = any(m["role"] == "system" for m in msgs)
        try:
            got = render(msgs)
        except RenderRefused:
            if has_system and params.get("system") == "rejected":
                continue  # Gemma 2: the model itself has no system role
            raise
        want = family.reference(msgs, params)
        if got != want:
            raise Mismatch(f"probe '{desc}': the model's template gives {got!r}, this format gives {want!r}")


def _trims(render: Callable[..., str]) -> bool:
    try:
        out = render([{"role": "user", "content": "  probe-padded  "}])
    except RenderRefused:
        return False
    return "  probe-padded  " not in out and "probe-padded" in out
