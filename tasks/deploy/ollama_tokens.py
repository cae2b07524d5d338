"""Control tokens in a template's text: reasoning tags, and the strings generation stops on.

Ollama's own library Modelfiles stop on the end-of-turn token and on the tokens that open a
turn (`<|im_start|>`, `<|start_header_id|>`, `[INST]`...): a fine-tune that misses its end
token then still stops before inventing the user's next message. Here both come from the
model's own renders: what the template writes after a finished assistant answer, and what
it writes to open the following user turn. Tokens the template also writes inside an
assistant turn (gpt-oss's `<|start|>` between its analysis and final messages) are left out,
since stopping on them would cut answers short.
"""

from __future__ import annotations

import re

# Special-token shapes: <|x|>, <|x>, <x|>, <｜x｜>, 〈|x|〉, [X] / [/X], <x> / </x>, and MiniMax's ]~b] [e~[.
TOKEN = re.compile(r"<\|[^<>|\s]{1,48}\|>|<\|[A-Za-z_]{1,32}>|<[A-Za-z_]{1,32}\|>|<｜[^<>｜]{1,48}｜>"
                   r"|〈\|[^〉]{1,32}\|〉|\[/?[A-Z][A-Z_]{1,31}\]|</?[A-Za-z][A-Za-z0-9_:.\-]{0,40}>|\]~!?b\]|\[e~\[")


def tag_before(text: str) -> str:
    """The last token of `text` with the whitespace after it ("" when text does not end so)."""
    found = None
    for m in TOKEN.finditer(text):
        if not text[m.end():].strip():
            found = m
    return text[found.start():] if found else ""


def tokens(text: str) -> list[str]:
    return [m.group() for m in TOKEN.finditer(text)]


def stops(closed: str, next_turn: str, inside: list[str]) -> list[str]:
    """End-of-turn tokens, then turn openers.

    `closed` is what follows a finished answer at the end of a conversation, `next_turn` what
    follows it when the user speaks next; the end of the turn is what both start with (some
    templates open a new assistant turn even after a finished one), or else the first token
    of `closed`.
    """
    banned = {t for text in inside for t in tokens(text)}
    common = 0
    while common < min(len(closed), len(next_turn)) and closed[common] == next_turn[common]:
        common += 1
    end = tokens(closed[:common]) or tokens(closed)[:1]
    out: list[str] = []
    for t in [*end, *tokens(next_turn)]:
        if t and t not in banned and t not in out:
            out.append(t)
    if not out:
        plain = (closed + next_turn).strip()
        if plain and plain not in banned:
            out.append(plain)
    return out
