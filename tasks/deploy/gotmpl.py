"""Execute an Ollama TEMPLATE in Python, the way Ollama's Go server does.

Ollama (template/template.go) runs Go's text/template with `missingkey=zero`, the builtin
functions plus json, currentDate, yesterdayDate and toTypeScriptType, over a map holding
System, Messages, Tools, Response, Think, ThinkLevel and IsThinkSet. Messages are collated
first (consecutive same-role messages, except tool results, merged with a blank line) and
converted to structs whose tool-call arguments and tool properties are plain Go maps: ranging
over them visits keys in sorted order. This module mirrors that data model and those
semantics for the subset tasks/deploy/gotmpl_parse.py accepts; tests/gotemplate/main.go builds the
same data in Go, and the test suite compares the two on every accepted template.
"""

from __future__ import annotations

import datetime
from typing import Any

from tasks.deploy.gotmpl_parse import Action, Branch, Call, Field, Func, GoTemplateError, Lit, Loop, Pipe, Text, parse
from tasks.deploy.gotmpl_values import (
    GoSlice,
    GoStruct,
    go_bytes,
    go_json,
    go_printf,
    go_str,
    go_typename,
    kind,
    print_value,
)

__all__ = ["Executor", "GoSlice", "GoStruct", "GoTemplateError", "truth"]


class _Break(Exception):
    pass


class _Continue(Exception):
    pass


def truth(v: Any) -> bool:
    """Go text/template's isTrue."""
    if v is None:
        return False
    if isinstance(v, (bool, int, float, str, list, dict)):
        return bool(v)
    return True  # a struct (or a non-nil pointer to one)


def _eq(a: Any, *others: Any) -> bool:
    if not others:
        raise GoTemplateError("eq: missing argument for comparison")
    for b in others:
        ka, kb = kind(a), kind(b)
        if "other" in (ka, kb) or ka != kb:
            raise GoTemplateError(f"eq: incompatible types for comparison ({go_typename(a)}, {go_typename(b)})")
        if a == b:
            return True
    return False


def _order(a: Any, b: Any) -> int:
    ka, kb = kind(a), kind(b)
    if ka != kb or ka not in ("int", "float", "string"):
        raise GoTemplateError(f"incompatible types for comparison ({go_typename(a)}, {go_typename(b)})")
    if ka == "string":
        a, b = go_bytes(a), go_bytes(b)
    return (a > b) - (a < b)


def _len(v: Any) -> int:
    if isinstance(v, str):
        return len(go_bytes(v))
    if isinstance(v, (list, dict)):
        return len(v)
    raise GoTemplateError(f"len of {go_typename(v)}")


def _index(v: Any, *keys: Any) -> Any:
    for k in keys:
        if isinstance(v, dict):
            v = v.get(k)
        elif isinstance(v, (list, str)) and kind(k) == "int":
            seq = go_bytes(v) if isinstance(v, str) else v
            if not 0 <= k < len(seq):
                raise GoTemplateError(f"index out of range: {k}")
            v = seq[k]
        else:
            raise GoTemplateError(f"can't index item of type {go_typename(v)}")
    return v


def _slice(v: Any, *idx: Any) -> Any:
    if not isinstance(v, (list, str)) or len(idx) > 2 or any(kind(i) != "int" for i in idx):
        raise GoTemplateError(f"slice of {go_typename(v)} with {idx!r} is not supported")
    seq = go_bytes(v) if isinstance(v, str) else v
    lo = idx[0] if idx else 0
    hi = idx[1] if len(idx) > 1 else len(seq)
    if not 0 <= lo <= hi <= len(seq):
        raise GoTemplateError(f"slice: index out of range [{lo}:{hi}] with length {len(seq)}")
    out = seq[lo:hi]
    if isinstance(v, str):
        return go_str(out)
    return GoSlice(v.type_name, out) if isinstance(v, GoSlice) else out


def _ts_type(v: Any) -> str:
    """Ollama's toTypeScriptType(api.ToolProperty)."""
    if not isinstance(v, GoStruct) or v.type_name != "api.ToolProperty":
        return "any"
    names = {"string": "string", "number": "number", "integer": "number", "boolean": "boolean",
             "array": "any[]", "object": "Record<string, any>", "null": "null"}
    if v.fields["AnyOf"]:
        return " | ".join(_ts_type(x) for x in v.fields["AnyOf"])
    types = v.fields["Type"] or []
    return " | ".join(names.get(t, "any") for t in types) if types else "any"


class Executor:
    """Runs one parsed TEMPLATE against Ollama's template data."""

    def __init__(self, source: str, now: datetime.date) -> None:
        self.nodes, self.defines = parse(source)
        today = now if isinstance(now, datetime.date) else now.date()
        self.funcs: dict[str, Any] = {
            "not": lambda a: not truth(a), "len": _len, "index": _index, "slice": _slice,
            "eq": _eq, "ne": lambda a, b: not _eq(a, b),
            "lt": lambda a, b: _order(a, b) < 0, "le": lambda a, b: _order(a, b) <= 0,
            "gt": lambda a, b: _order(a, b) > 0, "ge": lambda a, b: _order(a, b) >= 0,
            "printf": lambda f, *a: go_printf(f, list(a)), "print": self._print,
            "json": go_json, "toTypeScriptType": _ts_type,
            "currentDate": lambda *a: today.strftime("%Y-%m-%d"),
            "yesterdayDate": lambda *a: (today - datetime.timedelta(days=1)).strftime("%Y-%m-%d"),
        }
        self.depth = 0

    @staticmethod
    def _print(*args: Any) -> str:
        out = []
        for i, a in enumerate(args):
            if i and not isinstance(a, str) and not isinstance(args[i - 1], str):
                out.append(" ")
            out.append(print_value(a))
        return "".join(out)

    def render(self, data: dict[str, Any]) -> str:
        out: list[str] = []
        self.run(self.nodes, data, [{"$": data}], out)
        return "".join(out)

    def run(self, nodes: list[Any], dot: Any, scopes: list[dict[str, Any]], out: list[str]) -> None:
        for node in nodes:
            if isinstance(node, Text):
                out.append(node.text)
            elif isinstance(node, Action):
                v = self.pipe(node.pipe, dot, scopes)
                if not node.pipe.decl:
                    out.append(print_value(v))
            elif isinstance(node, Branch):
                self.branch(node, dot, scopes, out)
            elif isinstance(node, Call):
                if node.name not in self.defines:
                    raise GoTemplateError(f'no such template "{node.name}"')
                self.depth += 1
                if self.depth > 100000:
                    raise GoTemplateError("exceeded maximum template depth (100000)")
                arg = self.pipe(node.pipe, dot, scopes) if node.pipe else None
                self.run(self.defines[node.name], arg, [{"$": arg}], out)
                self.depth -= 1
            elif isinstance(node, Loop):
                raise _Break() if node.kind == "break" else _Continue()

    def branch(self, node: Branch, dot: Any, scopes: list[dict[str, Any]], out: list[str]) -> None:
        scope: dict[str, Any] = {}
        inner = [*scopes, scope]
        if node.kind != "range":
            v = self.pipe(node.pipe, dot, inner)
            if truth(v):
                self.run(node.body, v if node.kind == "with" else dot, inner, out)
            else:
                self.run(node.orelse, dot, inner, out)
            return
        decl = node.pipe.decl
        v = self.pipe(Pipe([], False, node.pipe.cmds), dot, inner)
        if isinstance(v, dict):
            items = [(k, v[k]) for k in sorted(v)]
        elif isinstance(v, list):
            items = list(enumerate(v))
        elif v is None:
            items = []
        else:
            raise GoTemplateError(f"range can't iterate over {go_typename(v)}")
        if not items:
            self.run(node.orelse, dot, inner, out)
            return
        for k, item in items:
            if len(decl) == 1:
                scope[decl[0]] = item
            elif len(decl) == 2:
                scope[decl[0]], scope[decl[1]] = k, item
            try:
                self.run(node.body, item, [*inner, {}], out)
            except _Continue:
                continue
            except _Break:
                break

    def pipe(self, pipe: Pipe, dot: Any, scopes: list[dict[str, Any]]) -> Any:
        value, have = None, False
        for cmd in pipe.cmds:
            value = self.command(cmd, dot, scopes, (value,) if have else ())
            have = True
        if pipe.decl:
            if pipe.assign:
                for s in reversed(scopes):
                    if pipe.decl[0] in s:
                        s[pipe.decl[0]] = value
                        break
                else:
                    raise GoTemplateError(f"undefined variable: {pipe.decl[0]}")
            else:
                scopes[-1][pipe.decl[0]] = value
        return value

    def command(self, cmd: list[Any], dot: Any, scopes: list[dict[str, Any]], piped: tuple[Any, ...]) -> Any:
        head = cmd[0]
        if isinstance(head, Func):
            args = cmd[1:]
            if head.name in ("and", "or"):
                vals = [lambda a=a: self.arg(a, dot, scopes) for a in args] + [lambda p=p: p for p in piped]
                if not vals:
                    raise GoTemplateError(f"{head.name}: missing arguments")
                v = None
                for get in vals:
                    v = get()
                    if truth(v) != (head.name == "and"):
                        return v
                return v
            fn = self.funcs.get(head.name)
            if fn is None:
                raise GoTemplateError(f'function "{head.name}" not defined')
            try:
                return fn(*[self.arg(a, dot, scopes) for a in args], *piped)
            except TypeError as exc:
                raise GoTemplateError(f"{head.name}: wrong arguments ({exc})") from None
        if len(cmd) > 1 or piped:
            raise GoTemplateError("only functions take arguments here")
        return self.arg(head, dot, scopes)

    def arg(self, a: Any, dot: Any, scopes: list[dict[str, Any]]) -> Any:
        if isinstance(a, Lit):
            return a.value
        if isinstance(a, Pipe):
            return self.pipe(a, dot, scopes)
        if isinstance(a, Func):
            return self.command([a], dot, scopes, ())
        if not isinstance(a, Field):
            raise GoTemplateError(f"unexpected operand {a!r}")
        if a.base is None:
            v = dot
        elif isinstance(a.base, Pipe):
            v = self.pipe(a.base, dot, scopes)
        else:
            for s in reversed(scopes):
                if a.base in s:
                    v = s[a.base]
                    break
            else:
                raise GoTemplateError(f"undefined variable: {a.base}")
        for name in a.names:
            if isinstance(v, dict):
                v = v.get(name)  # missingkey=zero: a map[string]any gives nil
            elif isinstance(v, GoStruct):
                if name not in v.fields:
                    raise GoTemplateError(f"can't evaluate field {name} in type {v.type_name}")
                v = v.fields[name]
            elif v is None:
                raise GoTemplateError(f"nil pointer evaluating interface {{}}.{name}")
            else:
                raise GoTemplateError(f"can't evaluate field {name} in type {go_typename(v)}")
        return v
