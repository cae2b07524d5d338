"""Go values as text: fmt's printing, strconv.Quote (printf "%q") and encoding/json, for tasks/deploy/gotmpl.py.

Each function reproduces what Go writes for the values an Ollama TEMPLATE can hold (strings,
float64 from JSON, ints, bools, nil, slices, maps); tests/gotemplate/main.go and the test suite
check them against Go itself.
"""

from __future__ import annotations

import json
import math
import unicodedata
from typing import Any

from tasks.deploy.gotmpl_parse import GoTemplateError


class GoStruct:
    """A Go struct (or pointer to one): named fields; printing it is not supported."""

    def __init__(self, type_name: str, **fields: Any) -> None:
        self.type_name, self.fields = type_name, fields


class GoSlice(list):
    """A typed Go slice; its type name is what %T prints."""

    def __init__(self, type_name: str, items: Any = ()) -> None:
        super().__init__(items)
        self.type_name = type_name


def kind(v: Any) -> str:
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "int"
    if isinstance(v, float):
        return "float"
    if isinstance(v, str):
        return "string"
    return "other"


def go_bytes(s: str) -> bytes:
    return s.encode("utf-8", "surrogateescape")


def go_str(b: bytes) -> str:
    return b.decode("utf-8", "surrogateescape")


def go_isprint(ch: str) -> bool:
    return ch == " " or unicodedata.category(ch)[0] in "LMNPS"


def go_quote(s: str) -> str:
    """strconv.Quote: what printf "%q" writes for a string."""
    out = ['"']
    esc = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v"}
    for ch in s:
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif 0xDC80 <= ord(ch) <= 0xDCFF:  # an invalid UTF-8 byte (surrogateescape)
            out.append(f"\\x{ord(ch) - 0xDC00:02x}")
        elif go_isprint(ch):
            out.append(ch)
        elif ch in esc:
            out.append(esc[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        elif ord(ch) < 0x10000:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(f"\\U{ord(ch):08x}")
    out.append('"')
    return "".join(out)


def _shortest(f: float) -> tuple[str, int]:
    """Shortest round-trip digits and decimal point position (value = 0.DIGITS * 10**point)."""
    mant, _, e = repr(abs(f)).partition("e")
    whole, _, frac = mant.partition(".")
    digits = whole + frac
    point = len(whole) + (int(e) if e else 0)
    stripped = digits.lstrip("0")
    point -= len(digits) - len(stripped)
    return stripped.rstrip("0") or "0", point


def _fixed(f: float) -> str:
    digits, point = _shortest(f)
    sign = "-" if f < 0 else ""
    if point <= 0:
        return sign + "0." + "0" * -point + digits
    if point >= len(digits):
        return sign + digits + "0" * (point - len(digits))
    return sign + digits[:point] + "." + digits[point:]


def _exp(f: float, two_digit: bool) -> str:
    digits, point = _shortest(f)
    sign = "-" if f < 0 else ""
    e = point - 1
    m = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
    es = f"{abs(e):02d}" if two_digit else str(abs(e))
    return f"{sign}{m}e{'-' if e < 0 else '+'}{es}"


def go_float_v(f: float) -> str:
    """fmt's %v for a float64 (strconv 'g', shortest: %e when the exponent is < -4 or >= 6)."""
    if math.isnan(f) or math.isinf(f):
        return "NaN" if math.isnan(f) else ("+Inf" if f > 0 else "-Inf")
    if f == 0:
        return "0"
    _, point = _shortest(f)
    return _exp(f, True) if (point - 1 < -4 or point - 1 >= 6) else _fixed(f)


def go_json(v: Any) -> str:
    """encoding/json for the plain values a template may hold (HTML characters escaped)."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        a = abs(v)
        return _exp(v, False) if a != 0 and (a < 1e-6 or a >= 1e21) else _fixed(v)
    if isinstance(v, str):
        s = json.dumps(v, ensure_ascii=False)
        return (s.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
                .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029").replace("\x7f", "\x7f"))
    if isinstance(v, list):
        return "[" + ",".join(go_json(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ",".join(go_json(k) + ":" + go_json(v[k]) for k in sorted(v)) + "}"
    raise GoTemplateError(f"json of {getattr(v, 'type_name', type(v).__name__)} is not supported here")


def go_typename(v: Any) -> str:
    if v is None:
        return "<nil>"
    if isinstance(v, (GoStruct, GoSlice)):
        return v.type_name
    return {"bool": "bool", "int": "int", "float": "float64", "string": "string"}.get(
        kind(v), "[]interface {}" if isinstance(v, list) else "map[string]interface {}")


def print_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return go_float_v(v)
    if isinstance(v, str):
        return v
    raise GoTemplateError(f"printing a {go_typename(v)} is not supported here")


def go_printf(fmt: str, args: list[Any]) -> str:
    out, i, n = [], 0, 0
    while i < len(fmt):
        ch = fmt[i]
        if ch != "%":
            out.append(ch)
            i += 1
            continue
        verb = fmt[i + 1]
        i += 2
        if verb == "%":
            out.append("%")
            continue
        if n >= len(args):
            raise GoTemplateError("printf: missing argument")
        a, n = args[n], n + 1
        if verb == "q" and isinstance(a, str):
            out.append(go_quote(a))
        elif verb in "sv" and not isinstance(a, (list, dict, GoStruct)) and a is not None:
            out.append(print_value(a))
        elif verb == "d" and kind(a) == "int":
            out.append(str(a))
        elif verb == "T":
            out.append(go_typename(a))
        else:
            raise GoTemplateError(f"printf %{verb} of {go_typename(a)} is not supported here")
    if n != len(args):
        raise GoTemplateError("printf: extra arguments")
    return "".join(out)


