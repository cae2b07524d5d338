"""Cut a rendered probe into its slots: what the template wrote around each message.

The probe's texts (message contents, reasoning) are found in the render in conversation order;
the gaps between them are the template's own text. Each gap is recorded as an observation of
a slot together with the situation (features) it was written in, for tasks/deploy/ollama_learn.py:
  J   the junction before a message (or before the END of the prompt): closing the previous
      turn and opening this one, including default system prompts and generation prompts;
  K   whether an assistant message's reasoning is rendered at all;
  TM  the text between rendered reasoning and the answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tasks.deploy.ollama_probe import Probe

MODES = ("in-order", "system-before-last-user", "system-dropped")


class Misaligned(Exception):
    """The render does not contain the probe's texts in a supported order."""


@dataclass(frozen=True)
class Unit:
    """One message in the order the template writes it."""

    role: str
    content: str
    thinking: str
    index: int  # position in the request's messages
    calls: bool = False
    call_list: tuple[dict[str, Any], ...] = ()
    tool_name: str = ""
    tool_call_id: str = ""


def units(probe: Probe, mode: str) -> list[Unit]:
    msgs = list(probe.messages)
    out = [Unit(m["role"], m.get("content", ""), m.get("thinking", "") if m["role"] == "assistant" else "", i,
                bool(m.get("tool_calls")), tuple(m.get("tool_calls") or ()), m.get("tool_name", ""),
                m.get("tool_call_id", "")) for i, m in enumerate(msgs)]
    if mode == "in-order" or not out or out[0].role != "system":
        return out
    system, rest = out[0], out[1:]
    if mode == "system-dropped":
        return rest
    last_user = max((k for k, x in enumerate(rest) if x.role == "user"), default=None)
    if last_user is None:
        return out
    return [*rest[:last_user], system, *rest[last_user:]]


def think_state(probe: Probe, switch: tuple[str, str] | None) -> str:
    """The think feature: what the Go side can tell apart (IsThinkSet/Think, or ThinkLevel)."""
    t = probe.think
    if switch is not None and switch[1] == "level":
        if t is None or t is False:
            return ""
        return "medium" if t is True else str(t)
    return "" if t is None else ("true" if t else "false")


def features(probe: Probe, seq: list[Unit], k: int, switch: tuple[str, str] | None) -> dict[str, Any]:
    """The situation of the junction before seq[k] (k == len(seq): before the END)."""
    msgs = probe.messages
    user_idx = [i for i, m in enumerate(msgs) if m["role"] == "user"]
    answers = [i for i, m in enumerate(msgs) if m["role"] == "assistant" and not m.get("tool_calls")]
    cur = seq[k] if k < len(seq) else None
    prev = seq[k - 1] if k > 0 else None
    return {
        "role": cur.role if cur else "END", "prev": prev.role if prev else "",
        "last": cur is not None and k == len(seq) - 1,
        "sys": bool(msgs) and msgs[0]["role"] == "system",
        "think": think_state(probe, switch), "tools": bool(probe.tools),
        "thinking": bool(cur and cur.thinking), "prev_thinking": bool(prev and prev.thinking),
        "first_user": bool(cur and cur.role == "user" and user_idx and cur.index == user_idx[0]),
        "last_user": bool(cur and cur.role == "user" and user_idx and cur.index == user_idx[-1]),
        "after_last_user": bool(cur and cur.role != "END" and user_idx and cur.index > user_idx[-1]),
        "through_last_answer": bool(cur and cur.role != "END" and answers and cur.index <= answers[-1]),
        "through_first_answer": bool(cur and cur.role != "END" and answers and cur.index <= answers[0]),
        "calls": bool(cur and cur.calls), "prev_calls": bool(prev and prev.calls),
        "empty": bool(cur and not cur.content), "prev_empty": bool(prev and not prev.content),
    }


def observe(probe: Probe, render: str, mode: str, switch: tuple[str, str] | None,
            markers: set[str]) -> list[tuple[str, dict[str, Any], Any]]:
    """(slot, features, value) observations from one render; Misaligned if the texts are not found.

    When the system message moves to the last user turn, the template may also leave it out
    (Mistral Nemo writes it only when that user turn ends the conversation): slot S records
    whether it is shown, in the situation of the user message it precedes.
    """
    seq = units(probe, mode)
    if mode != "system-before-last-user" or not seq or probe.messages[0]["role"] != "system":
        return _observe(probe, render, seq, switch, markers)
    k = next(k for k, x in enumerate(seq) if x.role == "system")
    without = seq[:k] + seq[k + 1:]
    try:
        obs, shown = _observe(probe, render, seq, switch, markers), True
    except Misaligned:
        obs, shown = _observe(probe, render, without, switch, markers), False
    # The situation of the user message it precedes, as the TEMPLATE sees it (system not yet written).
    return [("S", features(probe, without, k, switch), shown), *obs]


def _observe(probe: Probe, render: str, seq: list[Unit], switch: tuple[str, str] | None,
             markers: set[str]) -> list[tuple[str, dict[str, Any], Any]]:
    """Observations of J (junction), K/TM (reasoning), CP (before the first call), CALL/CSEP
    (a call's format, between two calls), TL (how tool definitions are listed).

    An empty answer followed by calls leaves no text to find: the gap up to the first call is
    recorded as EMPTY (slot, gap) and split later, once CP is known from answers with text.
    """
    from tasks.deploy.ollama_tools import MARK, find_call, mark_tool_list

    obs: list[tuple[str, dict[str, Any], Any]] = []
    pos = 0

    def gap_to(text: str) -> str | None:
        nonlocal pos
        at = render.find(text, pos)
        if at < 0:
            return None
        gap = render[pos:at]
        pos = at + len(text)
        return gap

    def junction(feats: dict[str, Any], gap: str, unit: Unit | None) -> None:
        if probe.tools:
            gap, listed = mark_tool_list(gap, probe.tools)
            if listed:
                obs.append(("TL", feats, listed))
        if unit is not None and unit.role == "tool":
            for value, kind in ((unit.tool_name, "toolname"), (unit.tool_call_id, "toolid")):
                if value:
                    gap = gap.replace(value, MARK + kind + MARK)
        obs.append(("J", feats, gap))

    for k, unit in enumerate(seq):
        feats = features(probe, seq, k, switch)
        opened = False  # the junction is written
        slot = "J"
        if unit.thinking:
            save = pos
            gap = gap_to(unit.thinking)
            if gap is not None and (not unit.content or unit.content in render[pos:]):
                obs.append(("K", feats, True))
                junction(feats, gap, unit)
                opened, slot = True, "TM"
            else:
                pos = save
                obs.append(("K", feats, False))
        empty_gap: str | None = slot
        if unit.content or not unit.call_list:
            gap = gap_to(unit.content)
            if gap is not None:
                if opened:
                    obs.append(("TM", feats, gap))
                else:
                    junction(feats, gap, unit)
                empty_gap = None
            elif not unit.call_list:
                raise Misaligned(f"message {unit.index} ({unit.role}) is not where it was expected")
            if unit.call_list:
                obs.append(("C", feats, gap is not None))  # some templates drop the answer beside calls
        for n, call in enumerate(unit.call_list):
            found = find_call(render, pos, len(render), call)
            if found is None and n == 0:
                obs.append(("CS", feats, False))  # calls not shown at all
                if empty_gap == "J":  # nothing of this message to find: its junction is empty by convention
                    junction(feats, "", unit)
                elif empty_gap:
                    obs.append((empty_gap, feats, ""))
                break
            if found is None:
                raise Misaligned(f"tool call {n + 1} of message {unit.index} is not written in a known form")
            if n == 0:
                obs.append(("CS", feats, True))
            start, end, fmt = found
            gap = render[pos:start]
            if n:
                obs.append(("CSEP", feats, gap))
            elif empty_gap:
                obs.append(("EMPTY", feats, (empty_gap, gap)))
            else:
                obs.append(("CP", feats, gap))
            obs.append(("CALL", feats, fmt))
            pos = end
    junction(features(probe, seq, len(seq), switch), render[pos:], None)
    for slot, _, value in obs:
        texts = value if slot == "EMPTY" else (value,)
        for text in texts:
            if isinstance(text, str):
                for m in markers:
                    if m in text:
                        raise Misaligned(f"the template writes the text of a message twice ({slot} holds {m!r})")
    return obs
