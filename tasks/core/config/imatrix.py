"""models.<m>.imatrix: which calibration data the importance matrix is computed from, and which quants use it.

    imatrix = true                                   # default data, every quant uses the matrix
    imatrix = { data = ["calib/a.txt", "calib/chats.jsonl"], quants = ["q2_k", "iq2_xxs"], compare = true }
    imatrix = { file = "downloaded.imatrix.gguf" }   # a matrix computed elsewhere (llama-imatrix's GGUF format)

Default data: the small general text shipped in tasks/gguf/data/ plus the adapter's training data when it
is declared (a fixture adapter's chats); training data that repeats the evaluation set is left out (the
note says so), while explicitly listed data that does is an error. `compare = true` also builds each
matrix quant without the matrix (`<type>-noimatrix`) so the check can show what the matrix bought.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.core.config.calibration import eval_strings, overlap, read_calibration
from tasks.core.config.fixtures import FIXTURES
from tasks.core.config.values import check_keys, typed
from tasks.core.errors import UserError
from tasks.core.layout import DEFAULT_CALIBRATION, EVAL_SAMPLES, FIXTURE_DATA
from tasks.core.quant_types import NEEDS_IMATRIX, PLAIN_SUFFIX

KEYS = {"data", "file", "quants", "compare", "chunk"}
DEFAULT_CHUNK = 512  # tokens per evaluated chunk (llama-imatrix's default context)


@dataclass(frozen=True)
class ImatrixSpec:
    data: tuple[Path, ...]  # calibration files (empty when `file` is given)
    quants: tuple[str, ...]  # the model's quants built with the matrix
    compare: bool = False
    chunk: int = DEFAULT_CHUNK
    file: Path | None = None  # a precomputed matrix instead of the imatrix stage
    notes: tuple[str, ...] = ()  # default data left out, and why

    @property
    def plain(self) -> tuple[str, ...]:
        """The no-matrix twins built for comparison (types that need a matrix have none)."""
        if not self.compare:
            return ()
        return tuple(q + PLAIN_SUFFIX for q in self.quants if q not in NEEDS_IMATRIX)


def parse_imatrix(raw: Any, quants: list[str], adapter_fixture: str | None, root: Path, where: str,
                  key: str, check_paths: bool) -> ImatrixSpec | None:
    """The model's matrix settings (None: no matrix); every matrix-requiring quant must be covered."""
    if raw is None or raw is False:
        spec = None
    else:
        if raw is True:
            raw = {}
        if not isinstance(raw, dict):
            raise UserError(f"{where}: {key}: expected true or a table (data, file, quants, compare, chunk)")
        check_keys(raw, KEYS, where, key)
        spec = _spec(raw, quants, adapter_fixture, root, where, key, check_paths)
    for i, q in enumerate(quants):
        if q in NEEDS_IMATRIX and (spec is None or q not in spec.quants):
            raise UserError(f"{where}: {key.rsplit('.', 1)[0]}.quants[{i}]: {q!r} needs an importance matrix: "
                            f"configure one with {key} = true (or a table with data = [...])")
    return spec


def _spec(raw: dict[str, Any], quants: list[str], adapter_fixture: str | None, root: Path, where: str, key: str,
          check_paths: bool) -> ImatrixSpec:
    use = raw.get("quants", quants)
    use = [typed(q, str, where, f"{key}.quants[{i}]").lower() for i, q in enumerate(typed(use, list, where,
                                                                                          f"{key}.quants"))]
    for i, q in enumerate(use):
        if q not in quants:
            raise UserError(f"{where}: {key}.quants[{i}]: {q!r} is not one of this model's quants "
                            f"({', '.join(quants)})")
    compare = typed(raw.get("compare", False), bool, where, f"{key}.compare")
    chunk = typed(raw.get("chunk", DEFAULT_CHUNK), int, where, f"{key}.chunk")
    if not 16 <= chunk <= 8192:
        raise UserError(f"{where}: {key}.chunk: {chunk} is outside 16-8192 tokens")
    ordered = tuple(q for q in quants if q in use)
    if "file" in raw:
        if "data" in raw:
            raise UserError(f"{where}: {key}: give data (compute the matrix) or file (use a computed one), not both")
        path = (root / typed(raw["file"], str, where, f"{key}.file")).resolve()
        if check_paths and not path.is_file():
            raise UserError(f"{where}: {key}.file: file not found: {path}")
        return ImatrixSpec(data=(), quants=ordered, compare=compare, chunk=chunk, file=path)
    evals = eval_strings(EVAL_SAMPLES)
    notes: list[str] = []
    if "data" in raw:
        items = typed(raw["data"], list, where, f"{key}.data")
        if not items:
            raise UserError(f"{where}: {key}.data: empty list (omit it for the default calibration data)")
        data = []
        for i, item in enumerate(items):
            path = (root / typed(item, str, where, f"{key}.data[{i}]")).resolve()
            if path in data:
                raise UserError(f"{where}: {key}.data[{i}]: {path.name} is listed twice")
            if check_paths:
                _check_file(path, evals, where, f"{key}.data[{i}]")
            data.append(path)
    else:
        data = [DEFAULT_CALIBRATION]
        training = FIXTURES[adapter_fixture].data if adapter_fixture else None
        if training:
            path = FIXTURE_DATA / training
            found = overlap(read_calibration(path), evals)  # a repo file: checked even without check_paths
            if found:
                notes.append(f"adapter training data {path.name} left out: {found}")
            else:
                data.append(path)
    return ImatrixSpec(data=tuple(data), quants=ordered, compare=compare, chunk=chunk, notes=tuple(notes))


def _check_file(path: Path, evals: list[tuple[str, str]], where: str, key: str) -> None:
    try:
        records = read_calibration(path)
    except UserError as exc:
        raise UserError(f"{where}: {key}: {exc}") from None
    found = overlap(records, evals)
    if found:
        raise UserError(f"{where}: {key}: calibration data overlaps the evaluation set: {found}")
