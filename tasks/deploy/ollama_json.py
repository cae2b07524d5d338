"""Python's json.dumps, written in Go template: tool definitions and call arguments as the Jinja prints them.

A model's Jinja prints tools and arguments with transformers' `tojson` (json.dumps with
ensure_ascii=False: ", " and ": " separators, or an indent). Ollama hands the TEMPLATE the same
data as Go values, and its `json` function writes compact JSON with <, > and & escaped, so a
TEMPLATE that wants the model's bytes has to write the JSON itself. The {{define}}s generated
here do, for one style each: strings with printf "%q" (the same escapes as JSON for text,
quotes, backslashes, newlines and tabs), numbers and booleans with `json`, maps with keys in
Go's sorted order, and a tool's own fields in the order OpenAI-style clients send them
(type, function: name, description, parameters: type, properties, required; a property:
type, items, description, enum).

Limits, inherent to Ollama's data model: map keys come out sorted (Ollama gives templates Go
maps, so a client's own key order is gone); a property's nested `properties` is opaque to
templates; control characters other than \\n \\r \\t \\b \\f and non-printable Unicode are
escaped Go's way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Style:
    name: str
    item_sep: str
    key_sep: str
    indent: int | None

    def dumps(self, value: Any) -> str:
        if self.indent is None:
            return json.dumps(value, ensure_ascii=False, separators=(self.item_sep, self.key_sep))
        return json.dumps(value, ensure_ascii=False, indent=self.indent)


STYLES = (Style("sp", ", ", ": ", None), Style("tight", ",", ":", None), Style("i4", ",", ": ", 4),
          Style("i2", ",", ": ", 2))
MAX_DEPTH = 8
OPEN = '{{ "{" }}'  # a raw "{" right before an action would read as "{{{"


def _nl(style: Style, depth: int) -> str:
    return "" if style.indent is None else "\n" + " " * (style.indent * depth)


def _sep(style: Style, depth: int) -> str:
    return style.item_sep + _nl(style, depth)


def _q(text: str) -> str:
    from tasks.deploy.ollama_text import lit

    return lit(text)


def _obj(style: Style, depth: int, fields: list[tuple[str, str, str | None]]) -> str:
    """A JSON object of (key, value code, condition or None) fields, commas only between present ones."""
    out = "{{ $first := true }}" + OPEN + _q(_nl(style, depth + 1))
    for key, value, cond in fields:
        item = ("{{ if not $first }}" + _q(_sep(style, depth + 1)) + "{{ end }}{{ $first = false }}"
                + _q(json.dumps(key) + style.key_sep) + value)
        out += f"{{{{ if {cond} }}}}{item}{{{{ end }}}}" if cond else item
    return out + _q(_nl(style, depth)) + "}"


def defines(style: Style) -> dict[str, str]:
    """{{define}} name -> text for one style: generic values by depth, tools, functions, arguments."""
    s, out = style.name, {}
    for d in range(MAX_DEPTH):
        nxt = f"json_{s}_v{min(d + 1, MAX_DEPTH - 1)}"
        out[f"json_{s}_v{d}"] = (
            '{{ $t := printf "%T" . }}{{ if eq $t "string" }}{{ printf "%q" . }}'
            '{{ else if eq $t "map[string]interface {}" }}' + f'{{{{ template "json_{s}_m{d}" . }}}}'
            '{{ else if eq $t "[]interface {}" }}' + f'{{{{ template "json_{s}_l{d}" . }}}}'
            '{{ else if eq $t "<nil>" }}null{{ else }}{{ json . }}{{ end }}')
        out[f"json_{s}_m{d}"] = (
            "{{ if . }}" + OPEN + _q(_nl(style, d + 1)) + "{{ $first := true }}{{ range $k, $v := . }}"
            + "{{ if not $first }}" + _q(_sep(style, d + 1)) + "{{ end }}{{ $first = false }}"
            + '{{ printf "%q" $k }}' + _q(style.key_sep) + f'{{{{ template "{nxt}" $v }}}}{{{{ end }}}}'
            + _q(_nl(style, d)) + "}{{ else }}{}{{ end }}")
        out[f"json_{s}_l{d}"] = (
            "{{ if . }}[" + _q(_nl(style, d + 1)) + "{{ range $j, $x := . }}{{ if $j }}" + _q(_sep(style, d + 1))
            + f'{{{{ end }}}}{{{{ template "{nxt}" $x }}}}{{{{ end }}}}' + _q(_nl(style, d)) + "]{{ else }}[]{{ end }}")
    def str_list(depth: int) -> str:
        return ("{{ if . }}[" + _q(_nl(style, depth + 1)) + "{{ range $j, $x := . }}{{ if $j }}"
                + _q(_sep(style, depth + 1)) + '{{ end }}{{ printf "%q" $x }}{{ end }}' + _q(_nl(style, depth))
                + "]{{ else }}[]{{ end }}")

    def prop(depth: int) -> str:
        type_code = ('{{ if eq (len .Type) 1 }}{{ printf "%q" (index .Type 0) }}{{ else }}'
                     + "{{ with .Type }}" + str_list(depth + 1) + "{{ end }}{{ end }}")
        return _obj(style, depth, [
            ("type", type_code, ".Type"),
            ("items", f'{{{{ template "json_{s}_v{depth + 1}" .Items }}}}', "ne (printf \"%T\" .Items) \"<nil>\""),
            ("description", '{{ printf "%q" .Description }}', ".Description"),
            ("enum", f'{{{{ template "json_{s}_l{depth + 1}" .Enum }}}}', ".Enum")])

    out[f"json_{s}_prop3"] = prop(3)
    out[f"json_{s}_prop4"] = prop(4)

    def params(depth: int) -> str:
        props = ("{{ if .Properties }}" + OPEN + _q(_nl(style, depth + 2))
                 + "{{ $p := true }}{{ range $k, $v := .Properties }}"
                 + "{{ if not $p }}" + _q(_sep(style, depth + 2)) + "{{ end }}{{ $p = false }}"
                 + '{{ printf "%q" $k }}' + _q(style.key_sep) + f'{{{{ template "json_{s}_prop{depth + 2}" $v }}}}'
                 + "{{ end }}" + _q(_nl(style, depth + 1)) + "}{{ else }}{}{{ end }}")
        return _obj(style, depth, [
            ("type", '{{ printf "%q" .Type }}', None), ("properties", props, None),
            ("required", "{{ with .Required }}" + str_list(depth + 1) + "{{ end }}", ".Required")])

    out[f"json_{s}_params1"] = params(1)
    out[f"json_{s}_params2"] = params(2)

    def function(depth: int) -> str:
        return _obj(style, depth, [
            ("name", '{{ printf "%q" .Name }}', None),
            ("description", '{{ printf "%q" .Description }}', ".Description"),
            ("parameters", f'{{{{ template "json_{s}_params{depth + 1}" .Parameters }}}}', None)])

    out[f"json_{s}_function0"] = function(0)
    out[f"json_{s}_function1"] = function(1)
    out[f"json_{s}_tool"] = _obj(style, 0, [("type", '{{ printf "%q" .Type }}', None),
                                            ("function", f'{{{{ template "json_{s}_function1" .Function }}}}', None)])
    out[f"json_{s}_args"] = out[f"json_{s}_m0"]
    return {k: f'{{{{ define "{k}" }}}}{v}{{{{ end }}}}' for k, v in out.items()}


def needed(code: str) -> str:
    """The {{define}}s `code` calls, transitively."""
    table: dict[str, str] = {}
    for st in STYLES:
        table.update(defines(st))
    want, seen, out = [code], set(), []
    while want:
        text = want.pop()
        for name, body in table.items():
            if name not in seen and f'template "{name}"' in text:
                seen.add(name)
                out.append(body)
                want.append(body)
    return "".join(sorted(out))
