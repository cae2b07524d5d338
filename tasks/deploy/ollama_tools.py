"""Tools in a chat template: the probe tools, and how a render shows definitions, calls and results.

Probe tools and calls are written the way a client sends them (OpenAI style, keys in the
order tasks/deploy/ollama_json.py writes them; argument names sorted, as Ollama gives them to
templates). In a render, a tool definition is recognised as json.dumps of the tool (or of its
`function`) in one of the styles of tasks/deploy/ollama_json.py, a list of them by the text between
two; a call by its name, its arguments (as JSON, or one `key ... value` piece per argument)
and its id, in whatever order the template writes them. Everything is then replaced by
placeholders that tasks/deploy/ollama_gogen.py writes as Go.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from tasks.deploy.ollama_json import STYLES, Style
from tasks.deploy.ollama_probe import A1, A2, S1, T1, U1, U2, Probe, a, s, u

TOOL_A = {"type": "function", "function": {
    "name": "probe_tool_a", "description": 'Probe tool A: "quoted" and é',
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "description": "City name"},
        "days": {"type": "integer", "description": "Days ahead"}}, "required": ["city"]}}}
TOOL_B = {"type": "function", "function": {
    "name": "probe_tool_b", "description": "Probe tool B",
    "parameters": {"type": "object", "properties": {
        "query": {"type": "string", "description": "Search text", "enum": ["probe-x", "probe-y"]}},
        "required": ["query"]}}}
CALL_1 = {"id": "probecal1", "function": {"name": "probe_tool_a", "arguments": {"city": "probe-city-1", "days": 73519}}}
CALL_2 = {"id": "probecal2", "function": {"name": "probe_tool_b", "arguments": {"query": "probe-query-2"}}}
RESULT_1 = {"role": "tool", "content": "probe-result-1", "tool_name": "probe_tool_a", "tool_call_id": "probecal1"}
RESULT_2 = {"role": "tool", "content": "probe-result-2", "tool_name": "probe_tool_b", "tool_call_id": "probecal2"}
MARK = "\x00"  # placeholders in learned text: MARK + kind + MARK


def called(text: str, *calls: dict[str, Any], thinking: str = "") -> dict[str, Any]:
    return {**a(text, thinking), "tool_calls": [dict(c) for c in calls]}


TOOL_CONVERSATIONS: tuple[tuple[str, tuple[dict[str, Any], ...], tuple[dict[str, Any], ...]], ...] = (
    ("tools", (u(U1),), (TOOL_A,)),
    ("tools, system", (s(S1), u(U1)), (TOOL_A, TOOL_B)),
    ("tools, multi-turn", (u(U1), a(A1), u(U2)), (TOOL_A, TOOL_B)),
    ("tool call", (u(U1), called("", CALL_1), RESULT_1), (TOOL_A,)),
    ("two tool calls", (s(S1), u(U1), called("", CALL_1, CALL_2), RESULT_1, RESULT_2), (TOOL_A, TOOL_B)),
    ("call with text, answer, user", (u(U1), called(A1, CALL_1), RESULT_1, a(A2), u(U2)), (TOOL_A,)),
    ("answer after a tool (prefill)", (u(U1), called("", CALL_1), RESULT_1, a(A2)), (TOOL_A,)),
    ("call after reasoning", (u(U1), called("", CALL_1, thinking=T1), RESULT_1), (TOOL_A,)),
)


def tool_probes() -> list[Probe]:
    return [Probe(n, m, tools=t) for n, m, t in TOOL_CONVERSATIONS]


@dataclass(frozen=True)
class ToolList:
    """How the template prints the tool definitions: each as json (style) of the tool or its function."""

    style: str
    target: str  # "tool" or "function"
    sep: str | None  # between two definitions (None: not seen yet)


def _target(tool: dict[str, Any], target: str) -> Any:
    return tool if target == "tool" else tool["function"]


def mark_tool_list(gap: str, tools: tuple[dict[str, Any], ...]) -> tuple[str, ToolList | None]:
    """`gap` with the run of tool definitions replaced by MARK tools MARK, and how they were printed."""
    for style in STYLES:
        for target in ("tool", "function"):
            texts = [style.dumps(_target(t, target)) for t in tools]
            at, pos, seps = [], 0, []
            for text in texts:
                i = gap.find(text, pos)
                if i < 0:
                    break
                if at:
                    seps.append(gap[pos:i])
                at.append(i)
                pos = i + len(text)
            else:
                if len(set(seps)) > 1:
                    continue
                out = gap[:at[0]] + MARK + "tools" + MARK + gap[pos:]
                return out, ToolList(style.name, target, seps[0] if seps else None)
    return gap, None


@dataclass(frozen=True)
class ArgsFormat:
    """How a call's arguments are printed: JSON in a style, or one piece per argument."""

    kind: str  # "json" or "pairs"
    style: str = ""
    before_text: str | None = None  # pairs: between a name and a string value (None: not seen)
    before_other: str | None = None  # pairs: between a name and any other value
    between_pairs: str | None = None  # pairs: from one value to the next name (None: one pair seen)
    quoted: bool = False  # pairs: string values printed as JSON strings

    def merged(self, other: ArgsFormat) -> ArgsFormat | None:
        """One format covering both, or None when they disagree."""
        out = {}
        for f in ("kind", "style", "quoted", "before_text", "before_other", "between_pairs"):
            x, y = getattr(self, f), getattr(other, f)
            if x is not None and y is not None and x != y:
                return None
            out[f] = x if x is not None else y
        return ArgsFormat(**out)


def _pairs(args: dict[str, Any], quoted: bool) -> list[tuple[str, str]]:
    return [(k, json.dumps(v, ensure_ascii=False) if quoted or not isinstance(v, str) else v) for k, v in args.items()]


def find_args(text: str, start: int, args: dict[str, Any]) -> tuple[int, int, ArgsFormat] | None:
    """Where the arguments are printed in text[start:], and how."""
    best = None
    for style in STYLES:
        enc = style.dumps(args)
        i = text.find(enc, start)
        if i >= 0 and (best is None or i < best[0]):
            best = (i, i + len(enc), ArgsFormat("json", style.name))
    if best:
        return best
    for quoted in (False, True):
        pos, spans = start, []
        for k, v in _pairs(args, quoted):
            ki = text.find(k, pos)
            vi = text.find(v, ki + len(k)) if ki >= 0 else -1
            if ki < 0 or vi < 0:
                break
            spans.append((ki, ki + len(k), vi, vi + len(v)))
            pos = vi + len(v)
        else:
            kinds = [isinstance(v, str) for v in args.values()]
            before = {kind: {text[sp[1]:sp[2]] for sp, k in zip(spans, kinds, strict=True) if k == kind}
                      for kind in (True, False)}
            betweens = {text[spans[n][3]:spans[n + 1][0]] for n in range(len(spans) - 1)}
            if all(len(b) <= 1 for b in before.values()) and len(betweens) <= 1:
                return spans[0][0], spans[-1][3], ArgsFormat(
                    "pairs", before_text=next(iter(before[True]), None), before_other=next(iter(before[False]), None),
                    between_pairs=next(iter(betweens), None), quoted=quoted)
    return None


@dataclass(frozen=True)
class CallFormat:
    """One call: its parts in order ("name", "args", "id") and the fixed text between them."""

    order: tuple[str, ...]
    between: tuple[str, ...]
    args: ArgsFormat

    def merged(self, other: CallFormat) -> CallFormat | None:
        if (self.order, self.between) != (other.order, other.between):
            return None
        args = self.args.merged(other.args)
        return CallFormat(self.order, self.between, args) if args else None


def find_call(text: str, start: int, end: int, call: dict[str, Any]) -> tuple[int, int, CallFormat] | None:
    """The first call in text[start:end] (span and format), or None."""
    fn = call["function"]
    found: list[tuple[int, int, str]] = []
    i = text.find(fn["name"], start, end)
    if i < 0:
        return None
    found.append((i, i + len(fn["name"]), "name"))
    args = find_args(text[:end], start, fn["arguments"])
    if args is None:
        return None
    found.append((args[0], args[1], "args"))
    j = text.find(call.get("id", "\x01"), start, end)
    if j >= 0:
        found.append((j, j + len(call["id"]), "id"))
    found.sort()
    if any(found[n][1] > found[n + 1][0] for n in range(len(found) - 1)):
        return None
    between = tuple(text[found[n][1]:found[n + 1][0]] for n in range(len(found) - 1))
    return found[0][0], found[-1][1], CallFormat(tuple(k for _, _, k in found), between, args[2])


def style_named(name: str) -> Style:
    return next(st for st in STYLES if st.name == name)
