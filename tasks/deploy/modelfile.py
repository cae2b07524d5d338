"""Ollama Modelfile values: quoting that user text cannot break, and a parser to prove it.

Ollama's Modelfile parser (ollama parser/parser.go, ParseFile) has no escape sequences. A value
in `\"\"\"...\"\"\"` ends at the first newline where the text read so far, trimmed, ends with
`\"\"\"`; characters that are not printable (strconv.IsPrint: no-break space, control codes)
are silently dropped. So a system prompt is safe in `\"\"\"` quotes unless one of its lines ends
with `\"\"\"` or it holds such characters; those are refused with the reason instead of written
into a Modelfile that Ollama would read differently. `parse` is a line-by-line port of
ParseFile, used to check every rendered Modelfile reads back to exactly the intended values.
"""

from __future__ import annotations

import math
import unicodedata

# PARAMETERs documented in Ollama's Modelfile reference ("Valid Parameters and Values",
# docs/modelfile.mdx), with their value types. mirostat* are deprecated by the parser.
DOCUMENTED_PARAMETERS: dict[str, type] = {
    "num_ctx": int,
    "repeat_last_n": int,
    "repeat_penalty": float,
    "temperature": float,
    "seed": int,
    "stop": str,
    "num_predict": int,
    "top_k": int,
    "top_p": float,
    "min_p": float,
}
COMMANDS = {"from", "license", "template", "system", "adapter", "draft", "renderer", "parser", "parameter",
            "message", "requires"}
_GO_SPACE = set("\t\n\v\f\r \x85\xa0\u1680\u2028\u2029\u202f\u205f\u3000") | {chr(c) for c in range(0x2000, 0x200B)}


class ModelfileError(ValueError):
    """A value Ollama's Modelfile syntax cannot carry, or a Modelfile that does not parse."""


def go_isprint(ch: str) -> bool:
    """Go's strconv.IsPrint: letters, marks, numbers, punctuation, symbols and ASCII space."""
    return ch == " " or unicodedata.category(ch)[0] in "LMNPS"


def _go_trim(s: str) -> str:
    start, end = 0, len(s)
    while start < end and s[start] in _GO_SPACE:
        start += 1
    while end > start and s[end - 1] in _GO_SPACE:
        end -= 1
    return s[start:end]


def unrepresentable(value: str) -> str | None:
    """Why `value` cannot be written as a \"\"\"-quoted Modelfile value, or None."""
    for i, ch in enumerate(value):
        if ch not in "\n\r\t" and not go_isprint(ch):
            name = unicodedata.name(ch, "control character")
            return f"character {i} is U+{ord(ch):04X} ({name}), which Ollama's Modelfile parser drops"
    line = 1
    for i, ch in enumerate(value):
        if ch in "\r\n":
            if _go_trim(value[:i]).endswith('"""'):
                return f"line {line} ends with '\"\"\"', which ends an Ollama Modelfile string early"
            line += 1
    return None


def quote(value: str, what: str) -> str:
    """`value` in \"\"\" quotes, or ModelfileError naming `what` and the reason."""
    reason = unrepresentable(value)
    if reason:
        raise ModelfileError(f"{what}: {reason}")
    return '"""' + value + '"""'


def parameter_value(name: str, value: object, what: str) -> str:
    """One PARAMETER value, type-checked against Ollama's documented parameters."""
    kind = DOCUMENTED_PARAMETERS.get(name)
    if kind is None:
        raise ModelfileError(f"{what}: {name!r} is not a documented Ollama parameter "
                             f"({', '.join(sorted(DOCUMENTED_PARAMETERS))})")
    if kind is str:
        if not isinstance(value, str) or not value:
            raise ModelfileError(f"{what}: {name} needs a non-empty string")
        if "\n" not in value and "\r" not in value and not value.startswith('""') and all(map(go_isprint, value)):
            return '"' + value + '"'
        return quote(value, what)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ModelfileError(f"{what}: {name} needs a number, got {value!r}")
    if kind is int:
        if isinstance(value, float) and not value.is_integer():
            raise ModelfileError(f"{what}: {name} needs an integer, got {value!r}")
        return str(int(value))
    if not math.isfinite(value):
        raise ModelfileError(f"{what}: {name} needs a finite number, got {value!r}")
    return repr(float(value))


def unquote(s: str) -> tuple[str, bool]:
    if s[:3] == '"""':
        if len(s) >= 6 and s[-3:] == '"""':
            return s[3:-3], True
        return "", False
    if s[:1] == '"':
        if len(s) >= 2 and s[-1] == '"':
            return s[1:-1], True
        return "", False
    return s, True


_NIL, _NAME, _VALUE, _PARAMETER, _MESSAGE, _COMMENT = range(6)


def _next_state(r: str, cs: int) -> tuple[int, str]:
    space, newline = r in " \t", r in "\r\n"
    if cs == _NIL:
        if r == "#":
            return _COMMENT, ""
        if space or newline:
            return _NIL, ""
        return _NAME, r
    if cs == _NAME:
        if r.isascii() and r.isalpha():
            return _NAME, r
        if space:
            return _VALUE, ""
        raise ModelfileError("invalid command")
    if cs == _VALUE:
        return (_NIL, r) if (newline or space) else (_VALUE, r)
    if cs == _PARAMETER:
        if (r.isascii() and r.isalnum()) or r == "_":
            return _PARAMETER, r
        if space:
            return _VALUE, ""
        raise ModelfileError("unexpected end of parameter name")
    if cs == _MESSAGE:
        if r.isascii() and r.isalpha():
            return _MESSAGE, r
        if space:
            return _VALUE, ""
        raise ModelfileError("unexpected end of message role")
    return (_NIL, "") if newline else (_COMMENT, "")


def parse(text: str) -> list[tuple[str, str]]:
    """(command, value) pairs exactly as Ollama's ParseFile reads `text` (FROM is 'model')."""
    commands: list[tuple[str, str]] = []
    curr, buf, role, name = _NIL, [], "", ""
    for ch in text:
        nxt, r = _next_state(ch, curr)
        if nxt != curr:
            if curr == _NAME:
                word = "".join(buf)
                if word.lower() not in COMMANDS:
                    raise ModelfileError(f"unknown command {word!r}")
                low = word.lower()
                if low == "from":
                    name = "model"
                elif low == "parameter":
                    nxt = _PARAMETER
                elif low == "message":
                    nxt, name = _MESSAGE, low
                else:
                    name = low
            elif curr == _PARAMETER:
                name = "".join(buf)
            elif curr == _MESSAGE:
                role = "".join(buf)
                if role not in ("system", "user", "assistant"):
                    raise ModelfileError(f"invalid message role {role!r}")
            elif curr == _VALUE:
                s, ok = unquote(_go_trim("".join(buf)))
                if not ok or r in " \t":
                    buf.append(r)
                    continue
                if role:
                    s, role = f"{role}: {s}", ""
                commands.append((name, s))
            buf, curr = [], nxt
        if r and go_isprint(r):
            buf.append(r)
    if curr == _VALUE:
        s, ok = unquote(_go_trim("".join(buf)))
        if not ok:
            raise ModelfileError("unexpected end of file inside a quoted value")
        commands.append((name, f"{role}: {s}" if role else s))
    elif curr not in (_NIL, _COMMENT):
        raise ModelfileError("unexpected end of file")
    if not any(c == "model" for c, _ in commands):
        raise ModelfileError("no FROM line")
    return commands
