"""Probe conversations, and the model's own Jinja chat template rendered on them by transformers.

A probe is one Ollama chat request (messages, tools, think). `JinjaModel.render` turns it into
what a transformers client sends for the same conversation (reasoning as `reasoning_content`,
tool calls as OpenAI-style dicts, think as the template's own switch) and renders it with
transformers' `render_jinja_template`, the code `apply_chat_template` runs. The clock templates
read with `strftime_now` is pinned, so that renders (and the TEMPLATE derived from them) do not
change from day to day.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

PINNED_DATE = datetime.datetime(2024, 7, 26, 12, 0, 0)
OTHER_DATE = datetime.datetime(2031, 11, 3, 12, 0, 0)  # a second clock: what changes with it is a date

# Probe texts: plain words that no template writes itself.
S1, U1, A1, U2, A2, U3 = ("probe-system-1", "probe-user-1", "probe-answer-1", "probe-user-2",
                          "probe-answer-2", "probe-user-3")
T1, T2 = "probe-thought-1", "probe-thought-2"
BOOL_THINK = ("enable_thinking", "thinking")  # Jinja switches taking True/False
LEVEL_THINK = ("reasoning_effort", "thinking_effort")  # Jinja switches taking a level


class ProbeRefused(Exception):
    """The model's own template raised on this conversation."""


@dataclass(frozen=True, eq=False)
class Probe:
    name: str
    messages: tuple[dict[str, Any], ...]
    tools: tuple[dict[str, Any], ...] | None = None
    think: Any = None  # Ollama's think: None, True, False or a level
    learn: bool = True  # used to learn the structure (all probes are used to verify it)

    @property
    def key(self) -> str:
        return json.dumps([self.messages, self.tools, self.think], sort_keys=True)

    def __hash__(self) -> int:
        return hash(self.key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Probe) and self.key == other.key and self.name == other.name

    @property
    def prefill(self) -> bool:
        return bool(self.messages) and self.messages[-1]["role"] == "assistant"


def msg(role: str, content: str, **extra: Any) -> dict[str, Any]:
    return {"role": role, "content": content, **extra}


def u(text: str) -> dict[str, Any]:
    return msg("user", text)


def a(text: str, thinking: str = "") -> dict[str, Any]:
    return msg("assistant", text, **({"thinking": thinking} if thinking else {}))


def s(text: str) -> dict[str, Any]:
    return msg("system", text)


CHAT: tuple[tuple[str, tuple[dict[str, Any], ...]], ...] = (
    ("user", (u(U1),)),
    ("system+user", (s(S1), u(U1))),
    ("user/assistant/user", (u(U1), a(A1), u(U2))),
    ("system, two turns", (s(S1), u(U1), a(A1), u(U2))),
    ("system, three turns", (s(S1), u(U1), a(A1), u(U2), a(A2), u(U3))),
    ("prefill", (u(U1), a(A1))),
    ("system+prefill", (s(S1), u(U1), a(A1))),
    ("prefill, second turn", (u(U1), a(A1), u(U2), a(A2))),
    ("thinking in history", (u(U1), a(A1, T1), u(U2))),
    ("thinking, system", (s(S1), u(U1), a(A1, T1), u(U2), a(A2, T2), u(U3))),
    ("thinking prefill", (u(U1), a(A1, T1))),
    ("thinking prefill, second turn", (u(U1), a(A1, T1), u(U2), a(A2, T2))),
    ("thinking only in last turn", (u(U1), a(A1), u(U2), a(A2, T2))),
)
# Checked, not learned from: text a template must pass through untouched, or trim as the Jinja does.
CHECKS: tuple[tuple[str, tuple[dict[str, Any], ...]], ...] = (
    ("multi-line text", (s("line one\nline {two}"), u('a "quoted"\n{{ .Prompt }} text'), a("x\ny"), u("z"))),
    ("padded text", (s("  padded system \n"), u(" \n padded user  "),
                     a("\n padded answer \n ", " \n padded thought\n "), u("\tpadded user 2 "))),
    ("padded prefill", (u("  padded user"), a("  padded answer  "))),
)


def think_settings(switch: tuple[str, str] | None) -> tuple[Any, ...]:
    if switch is None:
        return (None,)
    return (None, True, False) if switch[1] == "bool" else (None, "low", "medium", "high")


def chat_probes(switch: tuple[str, str] | None) -> list[Probe]:
    out = []
    for think in think_settings(switch):
        tag = "" if think is None else f", think={think}"
        out += [Probe(n + tag, m, think=think) for n, m in CHAT]
        out += [Probe(n + tag, m, think=think, learn=False) for n, m in CHECKS]
    return out


def think_switch(chat_template: str) -> tuple[str, str] | None:
    """The Jinja variable that turns reasoning on and off, and whether it takes a bool or a level."""
    from transformers.utils.chat_template_utils import _get_template_variables

    names = _get_template_variables(chat_template)
    for n in BOOL_THINK:
        if n in names:
            return (n, "bool")
    for n in LEVEL_THINK:
        if n in names:
            return (n, "level")
    return None


@contextlib.contextmanager
def pinned_clock(when: datetime.datetime) -> Iterator[None]:
    """transformers' strftime_now reads datetime.now() from its module: pin it while rendering."""
    import transformers.utils.chat_template_utils as ctu

    class Frozen(datetime.datetime):
        @classmethod
        def now(cls, tz: Any = None) -> datetime.datetime:  # noqa: ARG003
            return when

    saved = ctu.datetime
    ctu.datetime = Frozen
    try:
        yield
    finally:
        ctu.datetime = saved


READS_REASONING = re.compile(r"""\.reasoning\b|\[['"]reasoning['"]\]|get\(['"]reasoning['"]""")


def hf_message(m: dict[str, Any], also_reasoning: bool = False) -> dict[str, Any]:
    """What a transformers client sends for one Ollama message: reasoning as `reasoning_content`
    (transformers copies it to `thinking`), and as `reasoning` too for templates that read that."""
    out: dict[str, Any] = {"role": m["role"], "content": m.get("content", "")}
    if m.get("thinking"):
        out["reasoning_content"] = m["thinking"]
        if also_reasoning:
            out["reasoning"] = m["thinking"]
    if m.get("tool_calls"):
        out["tool_calls"] = [{"id": c["id"], "type": "function",
                              "function": {"name": c["function"]["name"], "arguments": c["function"]["arguments"]}}
                             for c in m["tool_calls"]]
    if m["role"] == "tool":
        out.update({k: v for k, v in (("name", m.get("tool_name")), ("tool_call_id", m.get("tool_call_id"))) if v})
    return out


@dataclass
class JinjaModel:
    """The model's chat template with its special tokens, rendered the way transformers does."""

    chat_template: str
    special_tokens: dict[str, Any]
    switch: tuple[str, str] | None = None
    cache: dict[Any, Any] = field(default_factory=dict)

    def kwargs(self, probe: Probe) -> dict[str, Any]:
        kw = {k: v for k, v in self.special_tokens.items() if v is not None}
        if self.switch and probe.think is not None:
            name, kind = self.switch
            if kind == "bool":
                kw[name] = bool(probe.think)
            elif probe.think is not False:
                kw[name] = "medium" if probe.think is True else probe.think
        return kw

    def render(self, probe: Probe, clock: datetime.datetime = PINNED_DATE, closed: bool = False) -> str:
        """The prompt for `probe`; `closed` renders a final assistant turn as finished, not continued."""
        key = (probe, clock, closed)
        if key not in self.cache:
            try:
                self.cache[key] = self._render(probe, clock, closed)
            except ProbeRefused as exc:
                self.cache[key] = exc
        out = self.cache[key]
        if isinstance(out, ProbeRefused):
            raise out
        return out

    def _render(self, probe: Probe, clock: datetime.datetime, closed: bool) -> str:
        from transformers.utils.chat_template_utils import render_jinja_template

        reads = bool(READS_REASONING.search(self.chat_template))
        messages = [hf_message(m, reads) for m in probe.messages]
        tools = [dict(t) for t in probe.tools] if probe.tools else None
        cont = probe.prefill and not closed
        attempts = [tools] if tools is not None else [None, []]  # no tools: as None, else as an empty list
        reason = ""
        for tool_arg in attempts:
            try:
                with pinned_clock(clock):
                    rendered, _ = render_jinja_template(
                        [messages], tools=tool_arg, chat_template=self.chat_template,
                        continue_final_message=cont, add_generation_prompt=not probe.prefill, **self.kwargs(probe))
                return rendered[0]
            except Exception as exc:  # noqa: BLE001 - any failure of the model's template is a refusal
                reason = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        raise ProbeRefused(reason)
