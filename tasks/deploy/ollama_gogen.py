"""Write learned decision tables (tasks/deploy/ollama_learn.py) as one Ollama `.Messages` TEMPLATE.

The TEMPLATE walks `.Messages` once. Before each message it writes the junction chosen by the
junction tree (closing the previous turn, opening this one), then the reasoning if the keep
tree says the template shows it, then the content; after the last message it writes the END
junction (the generation prompt, or nothing after a prefill). Features the trees test are Go
expressions over the message, the previous one (tracked in variables) and the request. Text
is written raw when Ollama and its Modelfile parser keep it byte for byte, else as a Go string
constant; reasoning sits between raw opening and closing tags so that Ollama's thinking
parser (thinking.InferTags) finds them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from tasks.deploy.ollama_json import needed
from tasks.deploy.ollama_learn import Leaf
from tasks.deploy.ollama_text import HELPERS, lit

BOOL_FEATURES = {"last", "sys", "tools", "thinking", "prev_thinking", "first_user", "last_user", "after_last_user",
                 "through_last_answer", "through_first_answer", "prev_calls", "calls", "empty", "prev_empty"}
DYNAMIC = {
    "role": "$m.Role", "prev": "$prev", "think": "$think", "last": "$last", "sys": "$sys", "tools": "$.Tools",
    "thinking": '(and (eq $m.Role "assistant") $m.Thinking)', "prev_thinking": "$prevThinking",
    "first_user": "(eq $i $firstUser)", "last_user": "(eq $i $lastUser)", "after_last_user": "(gt $i $lastUser)",
    "calls": "$m.ToolCalls",
    "through_last_answer": "(le $i $lastAnswer)", "through_first_answer": "(le $i $firstAnswer)",
    "prev_calls": "$prevCalls", "empty": "(not $m.Content)", "prev_empty": "$prevEmpty",
}


@dataclass
class Plan:
    """Everything the TEMPLATE is made of."""

    junction: Any
    keep: Any  # tree of bool: is an assistant message's reasoning shown
    between: Any  # tree of text: after the reasoning, before the answer
    transforms: dict[str, Any]  # "role:field" -> tree of helper names ("" = as is)
    mode: str = "in-order"
    system_shown: Any = None  # tree of bool, for mode system-before-last-user
    call_prefix: Any = None  # tree of text: after the answer, before the first tool call
    call_sep: Any = None  # tree of text: between two tool calls
    call_format: Any = None  # tasks.deploy.ollama_tools.CallFormat, or None: no calls seen
    tool_list: Any = None  # tasks.deploy.ollama_tools.ToolList, or None: no tool definitions seen
    content_shown: Any = None  # tree of bool: an answer's text shown beside its tool calls
    calls_shown: Any = None  # tree of bool: tool calls shown at all
    switch_kind: str | None = None  # "bool", "level" or None
    open_tag: str = ""  # text that opens shown reasoning (kept out of the junction)
    declared_tags: tuple[str, str] | None = None  # reasoning tags the prompt opens but history never shows
    used: set[str] = field(default_factory=set)


_MARKS = re.compile("\x00date\x00(current|yesterday)\x00date\x00|\x00(tools|toolname|toolid)\x00")


def _value(text: str, plan: Plan) -> str:
    """Learned text as TEMPLATE code: literals, dates, the tool list, the tool result's name and id."""
    out, pos = [], 0
    for m in _MARKS.finditer(text):
        out.append(lit(text[pos:m.start()]))
        pos = m.end()
        if m.group(1):
            out.append("{{ currentDate }}" if m.group(1) == "current" else "{{ yesterdayDate }}")
        elif m.group(2) == "tools":
            tl = plan.tool_list
            item = (f'{{{{ template "json_{tl.style}_tool" $t }}}}' if tl.target == "tool"
                    else f'{{{{ template "json_{tl.style}_function0" $t.Function }}}}')
            sep = f"{{{{ if $k }}}}{lit(tl.sep)}{{{{ end }}}}" if tl.sep else ""
            out.append("{{ range $k, $t := $.Tools }}" + sep + item + "{{ end }}")
        else:
            out.append("{{ $m.ToolName }}" if m.group(2) == "toolname" else "{{ $m.ToolCallID }}")
    out.append(lit(text[pos:]))
    return "".join(out)


def _calls(plan: Plan) -> str:
    """After the answer: `{{ if .ToolCalls }}` (where Ollama's tool parser looks for the call tag)."""
    fmt = plan.call_format
    if fmt is None:
        return ""
    static = {"role": "assistant", "calls": True}
    parts = []
    for n, kind in enumerate(fmt.order):
        if n:
            parts.append(lit(fmt.between[n - 1]))
        if kind == "name":
            parts.append("{{ $c.Function.Name }}")
        elif kind == "id":
            parts.append("{{ $c.ID }}")
        elif fmt.args.kind == "json":
            parts.append(f'{{{{ template "json_{fmt.args.style}_args" $c.Function.Arguments }}}}')
        else:
            f = fmt.args
            text, other = f.before_text if f.before_text is not None else f.before_other, f.before_other
            other = other if other is not None else text
            is_text = '{{ if eq (printf "%T" $av) "string" }}'
            before = lit(text or "") if text == other else (
                is_text + lit(text or "") + "{{ else }}" + lit(other or "") + "{{ end }}")
            value = ('{{ template "json_sp_v1" $av }}' if f.quoted else
                     is_text + '{{ $av }}{{ else }}{{ template "json_sp_v1" $av }}{{ end }}')
            parts.append("{{ $af := true }}{{ range $ak, $av := $c.Function.Arguments }}{{ if not $af }}"
                         + lit(f.between_pairs or "") + "{{ end }}{{ $af = false }}{{ $ak }}" + before + value
                         + "{{ end }}")
    leaf = lambda v: _value(v, plan)  # noqa: E731
    shown = _emit(plan.calls_shown, static, plan, lambda v: "" if v else "{{ $sc = false }}")
    head = "{{ $sc := true }}" + shown + "{{ if $sc }}" if shown else "{{ if true }}"
    return ("{{ if .ToolCalls }}" + head + _emit(plan.call_prefix, static, plan, leaf)
            + "{{ range $k, $c := .ToolCalls }}{{ if $k }}" + _emit(plan.call_sep, static, plan, leaf) + "{{ end }}"
            + "".join(parts) + "{{ end }}{{ end }}{{ end }}")


def _emit(tree: Any, static: dict[str, Any], plan: Plan, leaf: Any) -> str:
    if isinstance(tree, Leaf):
        return leaf(tree.value)
    f = tree.feature
    if f in static:
        for k, sub in tree.branches:
            if k == static[f]:
                return _emit(sub, static, plan, leaf)
        return _emit(tree.branches[-1][1], static, plan, leaf)
    plan.used.add(f)
    expr = DYNAMIC[f]
    branches = list(tree.branches)
    if f in BOOL_FEATURES:
        yes = next((sub for k, sub in branches if k), branches[-1][1])
        no = next((sub for k, sub in branches if not k), branches[-1][1])
        a, b = _emit(yes, static, plan, leaf), _emit(no, static, plan, leaf)
        if a == b:
            return a
        return f"{{{{ if {expr} }}}}{a}{{{{ else }}}}{b}{{{{ end }}}}" if b else f"{{{{ if {expr} }}}}{a}{{{{ end }}}}"
    out = ""
    for n, (k, sub) in enumerate(branches[:-1]):
        out += f"{{{{ {'if' if n == 0 else 'else if'} eq {expr} {_go_literal(k)} }}}}" + _emit(sub, static, plan, leaf)
    last = _emit(branches[-1][1], static, plan, leaf)
    return out + ("{{ else }}" + last if last else "") + "{{ end }}"


def _go_literal(v: Any) -> str:
    from tasks.deploy.ollama_text import go_string

    return go_string(str(v))


def _content(plan: Plan, role: str | None, what: str, expr: str, static: dict[str, Any]) -> str:
    def leaf(helper: str) -> str:
        return f'{{{{ template "{helper}" {expr} }}}}' if helper else f"{{{{ {expr} }}}}"

    trees = {r: t for key, t in plan.transforms.items() for r, f in [key.split(":")] if f == what}
    if role is not None:
        tree = trees.get(role)
        return _emit(tree, static, plan, leaf) if tree is not None else leaf("")
    if not trees:
        return leaf("")
    out = ""
    for n, (r, tree) in enumerate(sorted(trees.items())):
        out += f'{{{{ {"if" if n == 0 else "else if"} eq $m.Role "{r}" }}}}' + _emit(tree, static, plan, leaf)
    return out + "{{ else }}" + leaf("") + "{{ end }}"


def render_go(plan: Plan) -> str:
    """The TEMPLATE text."""
    plan.used = set()
    value = lambda v: _value(v, plan)  # noqa: E731
    junction = _emit(plan.junction, {}, plan, value)
    keep = _emit(plan.keep, {"role": "assistant", "thinking": True}, plan,
                 lambda v: "{{ $keep = true }}" if v else "")
    between = _emit(plan.between, {"role": "assistant", "thinking": True}, plan, value)
    thought = _content(plan, "assistant", "thinking", ".Thinking", {"role": "assistant", "thinking": True})
    content = _content(plan, None, "content", "$m.Content", {})
    body = junction
    if plan.declared_tags and not keep:
        # Never rendered ({{ if false }}): tells Ollama's thinking parser the model's tags (thinking.InferTags).
        opening, closing = plan.declared_tags
        body += "{{ if false }}" + lit(opening) + "{{ .Thinking }}" + lit(closing) + "{{ end }}"
    if keep:
        body += ('{{ $keep := false }}{{ if and (eq $m.Role "assistant") $m.Thinking }}' + keep + "{{ end }}"
                 + "{{ if $keep }}" + lit(plan.open_tag) + thought + between + "{{ end }}")
    hide = _emit(plan.content_shown, {"role": "assistant", "calls": True}, plan,
                 lambda v: "" if v else "{{ $sa = false }}") if plan.content_shown is not None else ""
    if hide:
        content = ('{{ $sa := true }}{{ if and (eq $m.Role "assistant") $m.ToolCalls }}' + hide + "{{ end }}"
                   "{{ if $sa }}" + content + "{{ end }}")
    body += content + _calls(plan)
    loop_pre = ""
    if plan.mode != "in-order":
        plan.used.add("sys")
        loop_pre = "{{ if and $sys (eq $i 0) }}{{ continue }}{{ end }}"
        if plan.mode == "system-before-last-user":
            plan.used.add("first_user")
            static = {"role": "system", "last": False, "thinking": False, "first_user": False,
                      "last_user": False, "after_last_user": False, "through_last_answer": False,
                      "through_first_answer": False,
                      "calls": False}
            sys_j = _emit(plan.junction, static, plan, value)
            sys_c = _content(plan, "system", "content", "(index $.Messages 0).Content", static)
            shown = _emit(plan.system_shown, {"role": "user"}, plan, lambda v: "{{ $show = true }}" if v else "")
            loop_pre += ("{{ $show := false }}{{ if and $sys (eq $i $lastUser) }}" + shown + "{{ end }}{{ if $show }}"
                         + sys_j.replace("$m.Content", "(index $.Messages 0).Content") + sys_c
                         + '{{ $prev = "system" }}{{ $prevThinking = false }}{{ $prevCalls = false }}'
                         + '{{ $prevEmpty = eq (index $.Messages 0).Content "" }}{{ end }}')
    end_static = {"role": "END", "last": False, "thinking": False, "first_user": False, "last_user": False,
                  "after_last_user": False,
                  "through_last_answer": False, "through_first_answer": False, "calls": False, "empty": False}
    end = _emit(plan.junction, end_static, plan, value)
    track = ('{{ $prev = $m.Role }}{{ $prevThinking = and (eq $m.Role "assistant") (ne $m.Thinking "") }}'
             "{{ $prevCalls = ne (len $m.ToolCalls) 0 }}{{ $prevEmpty = eq $m.Content \"\" }}")
    loop = ("{{ range $i, $m := .Messages }}{{ $last := eq (len (slice $.Messages $i)) 1 }}"
            + loop_pre + body + track + "{{ end }}")
    code = _prelude(plan) + loop + end
    return _helpers(plan, code) + needed(code) + code


def _prelude(plan: Plan) -> str:
    out = ""
    if "think" in plan.used:
        if plan.switch_kind == "level":
            out += "{{ $think := .ThinkLevel }}"
        else:
            out += ('{{ $think := "" }}{{ if .IsThinkSet }}{{ if .Think }}{{ $think = "true" }}'
                    '{{ else }}{{ $think = "false" }}{{ end }}{{ end }}')
    if "sys" in plan.used:
        out += ('{{ $sys := false }}{{ if .Messages }}{{ if eq (index .Messages 0).Role "system" }}'
                "{{ $sys = true }}{{ end }}{{ end }}")
    if plan.used & {"first_user", "last_user", "after_last_user"}:
        out += ('{{ $firstUser := -1 }}{{ $lastUser := -1 }}{{ range $i, $m := .Messages }}{{ if eq $m.Role "user" }}'
                "{{ if lt $firstUser 0 }}{{ $firstUser = $i }}{{ end }}{{ $lastUser = $i }}{{ end }}{{ end }}")
    if plan.used & {"through_last_answer", "through_first_answer"}:
        out += ('{{ $firstAnswer := -1 }}{{ $lastAnswer := -1 }}{{ range $i, $m := .Messages }}'
                '{{ if and (eq $m.Role "assistant") (not $m.ToolCalls) }}{{ if lt $firstAnswer 0 }}'
                "{{ $firstAnswer = $i }}{{ end }}{{ $lastAnswer = $i }}{{ end }}{{ end }}")
    out += '{{ $prev := "" }}{{ $prevThinking := false }}{{ $prevCalls := false }}{{ $prevEmpty := false }}'
    return out


def _helpers(plan: Plan, code: str) -> str:
    out = ""
    for name, text in HELPERS.items():
        if f'template "{name}"' in code:
            out += text
            for dep, dep_text in HELPERS.items():
                if dep != name and f'template "{dep}"' in text and dep_text not in out:
                    out += dep_text
    return out
