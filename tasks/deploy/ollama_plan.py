"""From observations (ollama_align.py) to a Plan (ollama_gogen.py): the trees, tags and formats.

Three adjustments come before learning. The opening tag of shown reasoning is moved out of the
junction into the reasoning block (Ollama's thinking parser reads it there). An empty answer
before tool calls is split so that the text introducing the calls is the same as after an
answer with text. And the formats of tool definitions and calls must be one and the same in
every observation; a template that prints them in ways that differ is not reproducible.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from tasks.deploy.ollama_gogen import Plan
from tasks.deploy.ollama_learn import Conflict, Leaf, learn
from tasks.deploy.ollama_tokens import tag_before

Obs = list[tuple[str, dict[str, Any], Any]]


def _kept(obs: Obs, feats: dict[str, Any]) -> bool:
    return any(slot == "K" and f is feats and v for slot, f, v in obs)


def open_tag(obs: Obs) -> str:
    """The tag opening shown reasoning, when every junction before shown reasoning ends with it."""
    tags = {tag_before(v) for slot, f, v in obs if slot == "J" and f["role"] == "assistant" and _kept(obs, f)}
    return next(iter(tags)) if len(tags) == 1 else ""


def _one(values: list[Any], what: str) -> Any:
    distinct = {repr(v): v for v in values}
    if len(distinct) > 1:
        a, b = list(distinct.values())[:2]
        raise Conflict(f"{what} differs between probes ({a!r} and {b!r})")
    return next(iter(distinct.values())) if distinct else None


def _tree(obs: Obs, slot: str, what: str, default: Any) -> Any:
    items = [(f, v) for s, f, v in obs if s == slot]
    return learn(items, what) if items else Leaf(default)


def _call_format(formats: list[Any]) -> Any:
    if not formats:
        return None
    out = formats[0]
    for f in formats[1:]:
        merged = out.merged(f)
        if merged is None:
            raise Conflict(f"tool calls are printed in two ways ({out} and {f})")
        out = merged
    return out


def build(obs: Obs, tobs: Obs, mode: str, switch_kind: str | None) -> Plan:
    """Raises Conflict when no tree or format reproduces the observations."""
    tag = open_tag(obs)
    prefix = Counter(v for s, _, v in obs if s == "CP").most_common(1)
    call_prefix = prefix[0][0] if prefix else ""
    fixed: Obs = []
    for slot, f, v in obs:
        if slot == "J" and tag and f["role"] == "assistant" and _kept(obs, f):
            v = v[: len(v) - len(tag)]
        if slot == "EMPTY":
            where, gap = v
            seen_tm = {x for s_, _, x in obs if s_ == "TM" and gap.startswith(x)} if where == "TM" else set()
            known = sorted(seen_tm, key=lambda x: (len(x), x))
            if known:  # the text after reasoning, as seen before answers with text; the rest opens the calls
                cp = gap[len(known[-1]):]
            else:  # else the calls' own opening text is what the gap shares with it at the end
                n = 0
                while n < min(len(gap), len(call_prefix)) and gap[len(gap) - 1 - n] == call_prefix[-1 - n]:
                    n += 1
                cp = gap[len(gap) - n:] if n else ""
            fixed += [(where, f, gap[: len(gap) - len(cp)]), ("CP", f, cp)]
            continue
        fixed.append((slot, f, v))
    lists = [v for s, _, v in fixed if s == "TL"]
    tool_list = None
    if lists:
        _one([(x.style, x.target) for x in lists], "the way tool definitions are printed")
        seps = [x.sep for x in lists if x.sep is not None]
        tool_list = lists[0].__class__(lists[0].style, lists[0].target, _one(seps, "the text between two tools"))
    return Plan(
        junction=learn([(f, v) for s, f, v in fixed if s == "J"], "junction"),
        keep=_tree(fixed, "K", "reasoning shown", False),
        between=_tree(fixed, "TM", "after reasoning", ""),
        transforms={key: learn([(f, v) for k, f, v in tobs if k == key], f"trimming of {key}")
                    for key in sorted({k for k, _, _ in tobs})},
        system_shown=_tree(fixed, "S", "system shown", True),
        call_prefix=_tree(fixed, "CP", "text before tool calls", ""),
        call_sep=_tree(fixed, "CSEP", "text between tool calls", ""),
        call_format=_call_format([v for s, _, v in fixed if s == "CALL"]),
        content_shown=_tree(fixed, "C", "answer shown beside tool calls", True),
        calls_shown=_tree(fixed, "CS", "tool calls shown", True),
        tool_list=tool_list, mode=mode, switch_kind=switch_kind, open_tag=tag)
