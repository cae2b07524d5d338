"""A parser for the part of Go's text/template language that modelmake's Ollama TEMPLATEs use.

Why a parser in Python: a TEMPLATE is accepted only when it renders exactly what the model's
Jinja renders, and that check runs in the build, where no Go toolchain can be assumed. So the
TEMPLATE is executed here (tasks/deploy/gotmpl.py) and the test suite proves, on every accepted
template and probe, that Go's real text/template gives the same bytes.

Covered: text with `{{-`/`-}}` trimming, comments, if/else if/else, range (with `$i, $v :=`),
with, define/template, break/continue, variables (`:=`, `=`), pipelines with `|`, fields,
parenthesised pipelines, string/raw-string/int/bool literals. Anything else is a GoTemplateError,
never a guess.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any


class GoTemplateError(Exception):
    """The TEMPLATE uses something outside the supported subset, or fails as Go would."""


_SPACE = " \t\r\n"  # text/template's isSpace: what `{{-` and `-}}` trim


@dataclass
class Text:
    text: str


@dataclass
class Pipe:
    decl: list[str]  # variables declared (`:=`) or assigned (`=`)
    assign: bool  # True for `=`
    cmds: list[list[Any]]  # each command: a list of operands


@dataclass
class Action:
    pipe: Pipe


@dataclass
class Branch:
    kind: str  # if, range, with
    pipe: Pipe
    body: list[Any]
    orelse: list[Any] = field(default_factory=list)


@dataclass
class Call:
    name: str  # {{ template "name" pipe }}
    pipe: Pipe | None


@dataclass
class Loop:
    kind: str  # break, continue


# Operands
@dataclass
class Lit:
    value: Any


@dataclass
class Field:
    base: Any  # None for `.`, a variable name ("$x", "$"), or a parenthesised Pipe
    names: tuple[str, ...]


@dataclass
class Func:
    name: str


_TOKEN = re.compile(r"""
    (?P<space>[ \t\r\n]+)
  | (?P<str>"(?:[^"\\\n]|\\.)*")
  | (?P<raw>`[^`]*`)
  | (?P<char>'(?:[^'\\\n]|\\.)+')
  | (?P<decl>:=)
  | (?P<assign>=)
  | (?P<num>-?\d+)
  | (?P<var>\$[A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)
  | (?P<field>(?:\.[A-Za-z_][A-Za-z0-9_]*)+|\.)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<punct>[()|,])
""", re.X)


def _go_unquote(token: str) -> str:
    """A Go interpreted string literal's value (the escapes Go's strconv.Unquote accepts)."""
    out, i, body = [], 0, token[1:-1]
    simple = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v",
              "\\": "\\", '"': '"', "'": "'"}
    raw = bytearray()

    def flush() -> None:
        if raw:
            out.append(raw.decode("utf-8", "surrogateescape"))
            raw.clear()

    while i < len(body):
        ch = body[i]
        if ch != "\\":
            flush()
            out.append(ch)
            i += 1
            continue
        nxt = body[i + 1]
        if nxt in simple:
            flush()
            out.append(simple[nxt])
            i += 2
        elif nxt == "x":
            raw.append(int(body[i + 2:i + 4], 16))
            i += 4
        elif nxt in "uU":
            flush()
            n = 4 if nxt == "u" else 8
            out.append(chr(int(body[i + 2:i + 2 + n], 16)))
            i += 2 + n
        elif nxt in "01234567":
            raw.append(int(body[i + 1:i + 4], 8))
            i += 4
        else:
            raise GoTemplateError(f"unknown escape sequence \\{nxt} in {token}")
    flush()
    return "".join(out)


def _tokens(src: str) -> list[tuple[str, str]]:
    """(kind, text) tokens; a field right after `)` with no space between is kind "chain"."""
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(src):
        m = _TOKEN.match(src, pos)
        if not m:
            raise GoTemplateError(f"unexpected {src[pos:pos + 10]!r} in action {{{{{src}}}}}")
        pos = m.end()
        kind = m.lastgroup or ""
        if kind == "space":
            continue
        if kind == "field" and out and out[-1][1] == ")" and src[m.start() - 1] == ")":
            kind = "chain"
        elif (out and out[-1][0] in ("field", "var", "chain") and kind in ("field", "var")
              and src[m.start() - 1] not in _SPACE):
            raise GoTemplateError(f"unexpected {m.group()!r} in action {{{{{src}}}}}")
        out.append((kind, m.group()))
    return out


def _split(source: str) -> list[tuple[str, str]]:
    """Text and action pieces, with Go's trim markers applied to the neighbouring text."""
    pieces: list[tuple[str, str]] = []
    pos, trim_next = 0, False
    while True:
        start = source.find("{{", pos)
        text = source[pos:] if start < 0 else source[pos:start]
        if trim_next:
            text = text.lstrip(_SPACE)
        if start < 0:
            if text:
                pieces.append(("text", text))
            return pieces
        inner = start + 2
        if source.startswith("-", inner) and inner + 1 < len(source) and source[inner + 1] in _SPACE:
            text = text.rstrip(_SPACE)
            inner += 2
        if text:
            pieces.append(("text", text))
        end, i = -1, inner
        while i < len(source):  # find the closing }} outside string literals
            ch = source[i]
            if ch in "\"'`":
                close = source.find(ch, i + 1) if ch == "`" else _string_end(source, i)
                if close < 0:
                    raise GoTemplateError("unterminated string in action")
                i = close + 1
                continue
            if source.startswith("}}", i):
                end = i
                break
            i += 1
        if end < 0:
            raise GoTemplateError("unclosed action")
        body, trim_next = source[inner:end], False
        if len(body) >= 2 and body[-1] == "-" and body[-2] in _SPACE:
            body, trim_next = body[:-2], True
        pieces.append(("action", body.strip(_SPACE)))
        pos = end + 2


def _string_end(source: str, i: int) -> int:
    quote, j = source[i], i + 1
    while j < len(source):
        if source[j] == "\\":
            j += 2
            continue
        if source[j] == quote:
            return j
        if source[j] == "\n":
            return -1
        j += 1
    return -1


class _Parser:
    def __init__(self, source: str) -> None:
        self.pieces = _split(source)
        self.pos = 0
        self.defines: dict[str, list[Any]] = {}

    def parse_list(self, stop: tuple[str, ...] = ()) -> tuple[list[Any], str]:
        nodes: list[Any] = []
        while self.pos < len(self.pieces):
            kind, body = self.pieces[self.pos]
            self.pos += 1
            if kind == "text":
                nodes.append(Text(body))
                continue
            if body.startswith("/*"):
                if not body.endswith("*/"):
                    raise GoTemplateError("unclosed comment")
                continue
            word = body.split(None, 1)[0] if body else ""
            if word in stop or (word == "else" and "else" in stop):
                return nodes, body
            if word in ("if", "range", "with"):
                nodes.append(self.branch(word, body[len(word):]))
            elif word == "define":
                name = _tokens(body[len(word):])
                if len(name) != 1 or name[0][0] not in ("str", "raw"):
                    raise GoTemplateError(f"bad define: {body}")
                inner, _ = self.parse_list(("end",))
                self.defines[_literal(name[0])] = inner
            elif word == "template":
                toks = _tokens(body[len(word):])
                if not toks or toks[0][0] not in ("str", "raw"):
                    raise GoTemplateError(f"bad template call: {body}")
                nodes.append(Call(_literal(toks[0]), _pipe(toks[1:]) if len(toks) > 1 else None))
            elif body in ("break", "continue"):
                nodes.append(Loop(body))
            elif word in ("end", "else", "block"):
                raise GoTemplateError(f"unexpected {{{{{body}}}}}")
            else:
                nodes.append(Action(_pipe(_tokens(body))))
        if stop:
            raise GoTemplateError(f"missing {{{{end}}}} (expected one of {stop})")
        return nodes, ""

    def branch(self, kind: str, rest: str) -> Branch:
        pipe = _pipe(_tokens(rest))
        body, closer = self.parse_list(("end", "else"))
        node = Branch(kind, pipe, body)
        if closer.startswith("else"):
            tail = closer[4:].strip(_SPACE)
            if tail.startswith("if") and kind == "if":
                node.orelse = [self.branch("if", tail[2:])]
                return node
            if tail:
                raise GoTemplateError(f"unsupported {{{{{closer}}}}}")
            node.orelse, _ = self.parse_list(("end",))
        return node


def _literal(tok: tuple[str, str]) -> Any:
    kind, text = tok
    if kind == "str":
        return _go_unquote(text)
    if kind == "raw":
        return text[1:-1]
    if kind == "num":
        return int(text)
    raise GoTemplateError(f"not a literal: {text}")


def _pipe(toks: list[tuple[str, str]]) -> Pipe:
    decl, assign = [], False
    for i, (kind, _text) in enumerate(toks):
        if kind in ("decl", "assign"):
            names = [t for k, t in toks[:i] if k == "var"]
            if len(names) != len([t for t in toks[:i] if t[1] != ","]):
                raise GoTemplateError("bad variable declaration")
            decl, assign, toks = names, kind == "assign", toks[i + 1:]
            break
    cmds: list[list[Any]] = [[]]
    i = 0
    while i < len(toks):
        kind, text = toks[i]
        if text == "|":
            cmds.append([])
            i += 1
            continue
        if text == "(":
            depth, j = 1, i + 1
            while depth:
                if j >= len(toks):
                    raise GoTemplateError("unbalanced parenthesis")
                depth += {"(": 1, ")": -1}.get(toks[j][1], 0)
                j += 1
            inner = _pipe(toks[i + 1:j - 1])
            i = j
            names: tuple[str, ...] = ()
            if i < len(toks) and toks[i][0] == "chain" and toks[i][1] != ".":
                names = tuple(toks[i][1].split(".")[1:])
                i += 1
            cmds[-1].append(Field(inner, names) if names else inner)
            continue
        cmds[-1].append(_operand(kind, text))
        i += 1
    if any(not c for c in cmds):
        raise GoTemplateError("empty command in pipeline")
    return Pipe(decl, assign, cmds)


def _operand(kind: str, text: str) -> Any:
    if kind in ("str", "raw", "num"):
        return Lit(_literal((kind, text)))
    if kind == "field":
        return Field(None, () if text == "." else tuple(text.split(".")[1:]))
    if kind == "var":
        name, _, rest = text.partition(".")
        return Field(name, tuple(rest.split(".")) if rest else ())
    if kind == "chain":
        raise GoTemplateError(f"unexpected {text!r}")
    if kind == "ident":
        if text in ("true", "false"):
            return Lit(text == "true")
        if text == "nil":
            return Lit(None)
        return Func(text)
    raise GoTemplateError(f"unexpected {text!r}")


def parse(source: str) -> tuple[list[Any], dict[str, list[Any]]]:
    """The main template's nodes and the {{define}}d templates."""
    p = _Parser(source)
    nodes, _ = p.parse_list()
    return nodes, p.defines
