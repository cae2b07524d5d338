"""Text inside an Ollama TEMPLATE: literal text that survives Ollama intact, and trimming helpers.

Go templates have no string functions, yet a model's Jinja often trims message text (Llama 3
`| trim`, Qwen3 `.strip('\\n')`). The helpers below do the same with what Go's text/template
has: `slice` on strings, `len`, `eq`, and recursive `{{template}}` calls, one whitespace
character at a time, with Python's `str.isspace` set (what Jinja's `trim` and `str.strip()`
remove). They are defined only in TEMPLATEs that use them.
"""

from __future__ import annotations

DATE_MARK = "\x00date\x00"  # placeholder around "current"/"yesterday" in learned text

_WS = [chr(c) for c in range(0x110000) if chr(c).isspace()]


def go_string(text: str) -> str:
    """A Go interpreted string literal for `text`."""
    out = ['"']
    for ch in text:
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif ch.isprintable():
            out.append(ch)
        else:
            out.append(f"\\u{ord(ch):04x}" if ord(ch) < 0x10000 else f"\\U{ord(ch):08x}")
    out.append('"')
    return "".join(out)


def raw_safe(text: str) -> bool:
    """Text that can stand raw in a TEMPLATE inside a Modelfile: no action opener, nothing the
    Modelfile parser drops (non-printable characters) or reads as the end of the value."""
    return ("{{" not in text and not text.endswith("{") and '"""' not in text
            and all(c == "\n" or (c.isprintable() and c != "\r") for c in text))


def lit(text: str) -> str:
    if not text:
        return ""
    return text if raw_safe(text) else "{{ " + go_string(text) + " }}"


def _is_ws(expr: str, chars: list[str], at_end: bool) -> list[tuple[int, str]]:
    """(byte length, Go condition): `expr` starts (or ends) with one of `chars` of that UTF-8 length."""
    parts = []
    for n in (1, 2, 3):
        group = [c for c in chars if len(c.encode()) == n]
        if not group:
            continue
        piece = f"(slice {expr} (len (slice {expr} {n})))" if at_end else f"(slice {expr} 0 {n})"
        tests = " ".join(f"(eq {piece} {go_string(c)})" for c in group)
        parts.append((n, f"(and (ge (len {expr}) {n}) " + (f"(or {tests})" if len(group) > 1 else tests) + ")"))
    return parts


def _strip_helper(name: str, chars: list[str], left: bool, right: bool, then: str | None) -> str:
    """{{define}} of a helper printing `.` without leading and/or trailing `chars`."""
    body = ""
    if left:
        for n, cond in _is_ws(".", chars, at_end=False):
            body += f"{{{{ {'if' if not body else 'else if'} {cond} }}}}{{{{ template \"{name}\" (slice . {n}) }}}}"
        body += f'{{{{ else }}}}{{{{ template "{then}" . }}}}{{{{ end }}}}' if then else "{{ else }}{{ . }}{{ end }}"
    elif right:
        for n, cond in _is_ws(".", chars, at_end=True):
            body += (f"{{{{ {'if' if not body else 'else if'} {cond} }}}}"
                     f'{{{{ template "{name}" (slice . 0 (len (slice . {n}))) }}}}')
        body += "{{ else }}{{ . }}{{ end }}"
    return f'{{{{ define "{name}" }}}}{body}{{{{ end }}}}'


HELPERS: dict[str, str] = {
    "rstrip": _strip_helper("rstrip", _WS, False, True, None),
    "lstrip": _strip_helper("lstrip", _WS, True, False, None),
    "strip": _strip_helper("strip", _WS, True, False, "rstrip"),
    "rstrip_nl": _strip_helper("rstrip_nl", ["\n"], False, True, None),
    "lstrip_nl": _strip_helper("lstrip_nl", ["\n"], True, False, None),
    "strip_nl": _strip_helper("strip_nl", ["\n"], True, False, "rstrip_nl"),
}

# Python equivalents, strongest first: how much each removes from a padded probe text decides.
TRANSFORMS: dict[str, object] = {
    "strip": str.strip, "lstrip": str.lstrip, "rstrip": str.rstrip,
    "strip_nl": lambda s: s.strip("\n"), "lstrip_nl": lambda s: s.lstrip("\n"),
    "rstrip_nl": lambda s: s.rstrip("\n"), "": lambda s: s,
}
