"""Calibration data for the importance matrix: the one reader of its files, and its rules.

A calibration file is plain UTF-8 text (any suffix but .jsonl: the whole file is one document) or
JSONL of {"text": ...} or {"messages": [{"role", "content"}, ...]} records (chats are rendered with
the model's chat template when the matrix is computed). Read at config time, so an empty file, a
binary file or one that repeats the evaluation set is a one-line error before anything builds:
a matrix fitted to the evaluation prompts would make the check's KL figures flatter the quant.
Standard library only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tasks.core.errors import UserError

MIN_OVERLAP_CHARS = 8  # eval strings shorter than this ("Hi.") are too common to call a leak


@dataclass(frozen=True)
class Record:
    """One calibration document: plain text, or a chat (messages) to render with the chat template."""

    where: str  # file:line, for messages
    text: str | None = None
    messages: tuple[tuple[str, str], ...] = ()

    def contents(self) -> list[str]:
        return [self.text] if self.text is not None else [c for _, c in self.messages]


def read_calibration(path: Path) -> list[Record]:
    """The documents of one calibration file; UserError naming the file (and line) when unusable."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path}: calibration file not found") from None
    except IsADirectoryError:
        raise UserError(f"{path}: calibration data must be a file, not a directory") from None
    if b"\0" in raw[:1 << 20]:
        raise UserError(f"{path}: not text (NUL bytes): calibration data must be UTF-8 text or JSONL")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text (byte {exc.start}): calibration data must be UTF-8 text "
                        "or JSONL") from None
    if not text.strip():
        raise UserError(f"{path}: calibration file is empty")
    if path.suffix != ".jsonl":
        return [Record(where=str(path), text=text)]
    records = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{i}"
        try:
            obj = json.loads(line)
        except ValueError:
            raise UserError(f"{where}: not JSON (expected {{\"text\": ...}} or {{\"messages\": [...]}})") from None
        records.append(_record(obj, where))
    if not any(c.strip() for r in records for c in r.contents()):
        raise UserError(f"{path}: calibration file has no text")
    return records


def _record(obj: object, where: str) -> Record:
    if isinstance(obj, dict) and isinstance(obj.get("text"), str):
        return Record(where=where, text=obj["text"])
    messages = obj.get("messages") if isinstance(obj, dict) else None
    if isinstance(messages, list) and messages and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in messages):
        return Record(where=where, messages=tuple((m["role"], m["content"]) for m in messages))
    raise UserError(f"{where}: expected {{\"text\": \"...\"}} or {{\"messages\": [{{\"role\", \"content\"}}, ...]}}")


def eval_strings(eval_samples: Path) -> list[tuple[str, str]]:
    """(where, string) for every message of the evaluation set long enough to identify it."""
    out = []
    try:
        lines = eval_samples.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    for i, line in enumerate(lines, 1):
        try:
            messages = json.loads(line).get("messages", [])
        except (ValueError, AttributeError):
            continue  # the check stage reports a malformed evaluation set
        for m in messages:
            content = m.get("content") if isinstance(m, dict) else None
            if isinstance(content, str) and m.get("role") != "system" and len(content.strip()) >= MIN_OVERLAP_CHARS:
                out.append((f"{eval_samples.name}:{i}", content.strip()))
    return out


def overlap(records: list[Record], evals: list[tuple[str, str]]) -> str | None:
    """'<file:line> contains <eval:line>'s text ...' for the first evaluation string found in the data."""
    for rec in records:
        joined = "\n".join(rec.contents())
        for where, s in evals:
            if s in joined:
                shown = s if len(s) <= 40 else s[:37] + "..."
                return f"{rec.where} contains {where}'s {shown!r}"
    return None
