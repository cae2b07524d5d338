"""modelmake's Python executor of Ollama TEMPLATEs gives Go's text/template's bytes (and fails where Go fails).

The render stage proves a TEMPLATE with tasks/deploy/gotmpl.py, where no Go toolchain is assumed; this
runs the constructs the derived TEMPLATEs use, and the corners of Go's semantics they rely on
(short-circuit and/or, byte-wise slicing of strings, %q quoting, float formatting, sorted map
ranges, missingkey=zero, variable scope) through both and compares.
"""

from __future__ import annotations

import datetime

import pytest
from deploy_support import go_batch

from tasks.deploy.gotmpl import Executor, GoTemplateError
from tasks.deploy.ollama_data import template_data
from tasks.deploy.ollama_json import STYLES, needed
from tasks.deploy.ollama_text import HELPERS

MESSAGES = [
    {"role": "system", "content": "sys é \u00a0"},
    {"role": "user", "content": " \t héllo\u3000 "},
    {"role": "assistant", "content": "", "thinking": "\nhmm\n", "tool_calls": [
        {"id": "c1", "function": {"name": "f", "arguments": {"b": 1e6, "a": "x<y>&\"z\"\n", "n": None,
                                                             "l": [1.5, True, {"k": "v"}], "e": {}}}}]},
    {"role": "tool", "content": "result", "tool_name": "f", "tool_call_id": "c1"},
    {"role": "user", "content": "again"},
]
TOOLS = [{"type": "function", "function": {"name": "f", "description": 'say "hi" é', "parameters": {
    "type": "object", "properties": {"b": {"type": ["string", "null"], "enum": ["x", 2]},
                                     "a": {"type": "array", "items": {"type": "string"}, "description": "d"}},
    "required": ["a"]}}}]
TEMPLATES = [
    '{{ range $i, $m := .Messages }}{{ $i }}:{{ $m.Role }}={{ $m.Content }}|{{ end }}',
    '{{ $last := "" }}{{ range .Messages }}{{ $last = .Role }}{{ end }}{{ $last }} {{ len .Messages }}',
    '{{ range $i, $m := .Messages }}{{ if eq (len (slice $.Messages $i)) 1 }}LAST{{ $m.Content }}{{ end }}{{ end }}',
    '{{ and .Tools (index .Tools 0).Function.Name }} {{ or "" "b" }} {{ not .Think }} {{ .IsThinkSet }}',
    '{{ range .Messages }}{{ printf "%q" .Content }} {{ len .Content }} '
    '{{ if .Content }}{{ slice .Content 0 1 }}{{ end }}|{{ end }}',
    '{{ range .Messages }}{{ range .ToolCalls }}{{ range $k, $v := .Function.Arguments }}{{ $k }}='
    '{{ printf "%T" $v }}/{{ json $v }};{{ end }}{{ .ID }}{{ end }}{{ end }}',
    '{{ range .Tools }}{{ range $k, $p := .Function.Parameters.Properties }}{{ $k }}:{{ len $p.Type }}'
    '{{ index $p.Type 0 }}{{ toTypeScriptType $p }};{{ end }}{{ index .Function.Parameters.Required 0 }}{{ end }}',
    '{{ currentDate }} {{ yesterdayDate }} {{ .Missing }}{{ if .Missing }}x{{ else }}y{{ end }}',
    '{{ $x := 1 }}{{ if true }}{{ $x := 2 }}{{ $x }}{{ end }}{{ $x }}{{ if true }}{{ $x = 3 }}{{ end }}{{ $x }}',
    '{{ range $i, $m := .Messages }}{{ if eq $i 1 }}{{ continue }}{{ end }}{{ if gt $i 3 }}{{ break }}{{ end }}'
    '{{ $i }}{{ end }}{{ print 1 2 "a" "b" 3 }}',
    '{{ range $i, $m := .Messages }}{{ template "strip" $m.Content }}|{{ template "lstrip_nl" $m.Thinking }}|{{ end }}',
    '{{ range .Tools }}{{ template "json_sp_tool" . }}{{ template "json_i4_function0" .Function }}{{ end }}'
    '{{ range .Messages }}{{ range .ToolCalls }}{{ template "json_tight_args" .Function.Arguments }}'
    '{{ template "json_i2_args" .Function.Arguments }}{{ end }}{{ end }}',
]
FAILING = [
    "{{ index .Messages 9 }}", "{{ slice .System 5 1 }}", '{{ eq 1 "a" }}', "{{ len nil }}",
    "{{ (index .Messages 0).Nope }}", "{{ .Messages }}",
]


def _full(t: str) -> str:
    return "".join(HELPERS.values()) + needed(t) + t


def test_python_executor_matches_go_byte_for_byte(go_renderer) -> None:
    templates = [_full(t) for t in TEMPLATES]
    assert all(f"json_{s.name}" in "".join(templates) for s in STYLES)
    for think in (None, True, False, "high"):
        cases = [{"template": i, "messages": MESSAGES, "tools": TOOLS, "think": think, "system": "",
                  "now": "2024-03-01"} for i in range(len(templates))]
        go = go_batch(go_renderer, templates, cases)
        data = template_data(MESSAGES, TOOLS, think)
        for i, (t, g) in enumerate(zip(templates, go, strict=True)):
            if i == 7:  # .Missing prints "<no value>" in Go; the executor refuses to print nil instead
                with pytest.raises(GoTemplateError):
                    Executor(t, datetime.date(2024, 3, 1)).render(data)
                continue
            assert "prompt" in g, (TEMPLATES[i], g)
            assert Executor(t, datetime.date(2024, 3, 1)).render(data) == g["prompt"], TEMPLATES[i]


@pytest.mark.parametrize("template", FAILING)
def test_what_fails_in_go_fails_in_the_executor(template: str, go_renderer) -> None:
    [g] = go_batch(go_renderer, [template], [{"template": 0, "messages": MESSAGES, "tools": [], "think": None,
                                              "system": "", "now": "2024-03-01"}])
    with pytest.raises(GoTemplateError):
        Executor(template, datetime.date(2024, 3, 1)).render(template_data(MESSAGES))
    if template != "{{ .Messages }}":  # Go prints a slice of pointers; the executor refuses to print one
        assert "error" in g, g
