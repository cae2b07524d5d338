"""Derive an Ollama TEMPLATE from a model's Jinja chat template, then prove it on every probe.

Derive: render the Jinja on probe conversations (tasks/deploy/ollama_probe.py), cut each render into
slots (tasks/deploy/ollama_align.py), learn what each slot holds in which situation
(tasks/deploy/ollama_learn.py), find how the Jinja trims each kind of text and where it prints
today's date, and write it all as one Go template (tasks/deploy/ollama_gogen.py).
Prove: execute that TEMPLATE the way Ollama does (tasks/deploy/gotmpl.py over tasks/deploy/ollama_data.py)
on every probe, learned from or not, and require the identical string. Anything else is a
Refused with one line saying what the template does that could not be reproduced.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Any

from tasks.deploy.gotmpl import Executor, GoTemplateError
from tasks.deploy.ollama_align import MODES, Misaligned, features, observe, units
from tasks.deploy.ollama_data import template_data
from tasks.deploy.ollama_gogen import Plan, render_go
from tasks.deploy.ollama_learn import Conflict
from tasks.deploy.ollama_plan import build as build_plan
from tasks.deploy.ollama_probe import OTHER_DATE, PINNED_DATE, JinjaModel, Probe, ProbeRefused, chat_probes
from tasks.deploy.ollama_text import DATE_MARK, TRANSFORMS
from tasks.deploy.ollama_tools import tool_probes

DATE_FORMATS = ("%Y-%m-%d", "%d %b %Y", "%B %d, %Y", "%d %B %Y", "%b %d, %Y", "%Y/%m/%d", "%m/%d/%Y",
                "%d/%m/%Y", "%A, %B %d, %Y", "%Y")
PAD = ("\n \t", "\t \n")


class Refused(Exception):
    """The template does something a TEMPLATE cannot reproduce; the message says what."""


@dataclass
class Derived:
    template: str
    plan: Plan
    probes: list[Probe]  # every probe the TEMPLATE was proven on
    rejected: dict[str, str]  # probe name -> why the model's own template refused it
    notes: list[str] = field(default_factory=list)
    bos_stripped: str = ""
    stops: list[str] = field(default_factory=list)
    covered: list[str] = field(default_factory=list)  # chat, prefill, thinking, tools
    rejected_probes: list[Probe] = field(default_factory=list)


class Renders:
    """Jinja renders of the probes at the pinned clock, BOS removed when the runtime adds it."""

    def __init__(self, jinja: JinjaModel, bos: str) -> None:
        self.jinja, self.bos = jinja, bos

    def __call__(self, probe: Probe, clock: datetime.datetime = PINNED_DATE, closed: bool = False) -> str:
        out = self.jinja.render(probe, clock, closed)
        return out[len(self.bos):] if self.bos and out.startswith(self.bos) else out


def _dates(probe: Probe, text: str, renders: Renders, notes: list[str]) -> str:
    """Today's date in `text` as a currentDate/yesterdayDate placeholder, or left pinned (noted)."""
    try:
        other = renders(probe, OTHER_DATE)
    except ProbeRefused:
        return text
    if other == text:
        return text
    day = datetime.timedelta(days=1)
    for fmt in DATE_FORMATS:
        for kind, a, b in (("current", PINNED_DATE, OTHER_DATE), ("yesterday", PINNED_DATE - day, OTHER_DATE - day)):
            sa, sb = a.strftime(fmt), b.strftime(fmt)
            if sa in text and sb in other:
                if fmt == "%Y-%m-%d":
                    mark = DATE_MARK + kind + DATE_MARK
                    text, other = text.replace(sa, mark), other.replace(sb, mark)
                else:
                    note = (f"the template prints {'yesterday' if kind == 'yesterday' else 'today'}'s date as "
                            f"{fmt!r}, which Ollama's currentDate cannot produce: pinned to {sa}")
                    if note not in notes:
                        notes.append(note)
                    other = other.replace(sb, sa)
                if text == other:
                    return text
    note = ("the template prints the date or time in a form modelmake does not recognise: "
            f"pinned to {PINNED_DATE:%Y-%m-%d}")
    if note not in notes:
        notes.append(note)
    return text


def _transform_obs(jinja_render: Any, probe: Probe, mode: str, switch: Any,
                   seen: set[Any]) -> list[tuple[str, dict[str, Any], str]]:
    """How the Jinja trims each visible text of `probe`, found by padding it and undoing the padding."""
    out = []
    seq = units(probe, mode)
    base = jinja_render(probe)
    for k, unit in enumerate(seq):
        feats = features(probe, seq, k, switch)
        for what in ("content", "thinking"):
            value = unit.content if what == "content" else unit.thinking
            key = (unit.role, what, tuple(sorted(feats.items())))
            if not value or key in seen or value not in base:
                continue
            seen.add(key)
            padded = PAD[0] + value + PAD[1]

            def with_value(v: str, i: int = unit.index, w: str = what) -> Probe:
                msgs = [dict(m) for m in probe.messages]
                msgs[i][w] = v
                return Probe(probe.name, tuple(msgs), probe.tools, probe.think, probe.learn)

            try:
                want = jinja_render(with_value(padded))
            except ProbeRefused:
                continue
            for name, fn in TRANSFORMS.items():
                try:
                    if jinja_render(with_value(fn(padded))) == want:  # type: ignore[operator]
                        out.append((f"{unit.role}:{what}", feats, name))
                        break
                except ProbeRefused:
                    continue
    return out


def derive(jinja: JinjaModel, bos: str = "", tools: bool = False) -> Derived:
    """A proven TEMPLATE for `jinja` (with tool use if `tools`), or Refused."""
    probes = chat_probes(jinja.switch) + (tool_probes() if tools else [])
    renders = Renders(jinja, bos)
    texts: dict[Probe, str] = {}
    rejected: dict[str, str] = {}
    notes: list[str] = []
    for p in probes:
        try:
            texts[p] = _dates(p, renders(p), renders, notes)
        except ProbeRefused as exc:
            rejected[p.name] = str(exc)
    learnable = [p for p in probes if p.learn and p in texts]
    if not learnable:
        raise Refused(f"the template renders none of the probe conversations ({next(iter(rejected.values()), '')})")
    markers = {v for p in learnable for m in p.messages for v in (m.get("content"), m.get("thinking")) if v}
    markers |= {c["id"] for p in learnable for m in p.messages for c in m.get("tool_calls") or ()}
    errors = []
    for mode in MODES:
        try:
            obs = [o for p in learnable for o in observe(p, texts[p], mode, jinja.switch, markers)]
            break
        except Misaligned as exc:
            errors.append(str(exc))
    else:
        raise Refused(f"the template does not write messages in a supported order ({errors[0]})")
    seen: set[Any] = set()
    tobs = [o for p in learnable for o in _transform_obs(renders, p, mode, jinja.switch, seen)]
    try:
        plan = build_plan(obs, tobs, mode, jinja.switch[1] if jinja.switch else None)
    except Conflict as exc:
        raise Refused(str(exc)) from None
    plan.declared_tags = _declared_tags(obs, jinja.chat_template)
    template = render_go(plan)
    verify(template, {p: texts[p] for p in probes if p in texts})
    proven = [p for p in probes if p in texts]
    d = Derived(template, plan, proven, rejected, notes, bos, rejected_probes=[p for p in probes if p not in texts])
    d.stops = _stops(renders, obs, plan)
    d.covered = ["chat"] + (["prefill"] if any(p.prefill for p in proven) else []) + (
        ["thinking"] if any(s == "K" and v for s, _, v in obs) or (jinja.switch and any(p.think for p in proven))
        else []) + (["tools"] if any(p.tools and any(m.get("tool_calls") for m in p.messages) for p in proven) else [])
    return d


def _declared_tags(obs: list[tuple[str, dict[str, Any], Any]], source: str) -> tuple[str, str] | None:
    """(open, close) when the generation prompt opens a reasoning tag the template also closes
    (DeepSeek R1 distills, QwQ): the model answers with reasoning even if history never shows it."""
    from tasks.deploy.ollama_tokens import tag_before

    ends = sorted(((f["think"] not in ("true", "medium", "high"), v) for s, f, v in obs  # think on first
                   if s == "J" and f["role"] == "END" and f["prev"] == "user" and not f["tools"]), key=lambda x: x[0])
    ends = [v for _, v in ends]
    tag = tag_before(ends[0]).strip() if ends else ""
    if not tag.startswith("<") or tag.startswith("</") or "|" in tag or " " in tag:
        return None
    close = "</" + tag[1:]
    return (tag, close) if close in source else None


def derive_all(jinja: JinjaModel, bos: str = "") -> Derived:
    """With tool use when the template's tool rendering can be reproduced, else chat only (noted)."""
    try:
        d = derive(jinja, bos, tools=True)
        if "tools" in d.covered:
            return d
        why = "the model's own template rejects every tool conversation"
    except Refused as exc:
        why = str(exc)
        if why.startswith("junction:"):
            why = "it prints tool definitions (or the text around them) in a form other than JSON of the tool " \
                  f"or of its function ({why[:160]}...)"
        elif "tool call" in why:
            why = f"it prints tool calls in a form other than name + arguments once per call ({why})"
    d = derive(jinja, bos)
    uses_tools = "tools" in jinja.chat_template or "tool_calls" in jinja.chat_template
    if uses_tools:
        d.notes.append(f"tool use is not in the TEMPLATE (Ollama will refuse tool requests): {why}")
    return d


def _stops(renders: Renders, obs: list[tuple[str, dict[str, Any], Any]], plan: Plan) -> list[str]:
    """End-of-turn strings after a finished answer, then the tokens opening the next turn."""
    from tasks.deploy.ollama_tokens import stops

    closed = ""
    probe = Probe("closed answer", ({"role": "user", "content": "probe-user-1"},
                                    {"role": "assistant", "content": "probe-answer-1"}))
    try:
        text = renders(probe, closed=True)
        closed = text[text.rfind("probe-answer-1") + len("probe-answer-1"):] if "probe-answer-1" in text else ""
    except ProbeRefused:
        pass
    nxt = [v for s, f, v in obs if s == "J" and f["role"] == "user" and f["prev"] == "assistant" and not f["tools"]
           and not f["think"]]
    inside = [v for s, _, v in obs if s == "TM"] + [plan.open_tag]
    return stops(closed, nxt[0] if nxt else "", inside)


def go_render(template: str, probe: Probe, now: datetime.datetime = PINNED_DATE) -> str:
    """What Ollama's server makes of `probe` with this TEMPLATE."""
    data = template_data(list(probe.messages), list(probe.tools) if probe.tools else None, probe.think)
    return Executor(template, now.date()).render(data)


def verify(template: str, want: dict[Probe, str]) -> None:
    for probe, text in want.items():
        expected = text.replace(DATE_MARK + "current" + DATE_MARK, f"{PINNED_DATE:%Y-%m-%d}").replace(
            DATE_MARK + "yesterday" + DATE_MARK, f"{PINNED_DATE - datetime.timedelta(days=1):%Y-%m-%d}")
        try:
            got = go_render(template, probe)
        except GoTemplateError as exc:
            raise Refused(f"the derived TEMPLATE fails on probe '{probe.name}': {exc}") from None
        if got != expected:
            pairs = enumerate(zip(got, expected, strict=False))
            i = next((n for n, (x, y) in pairs if x != y), min(len(got), len(expected)))
            raise Refused(f"probe '{probe.name}': the model's template gives {expected[max(0, i - 30):i + 40]!r}, "
                          f"the derived TEMPLATE {got[max(0, i - 30):i + 40]!r}")
