"""doit's own state file (.doit.db): never used for freshness (see tasks/build/graph.py), so it is
derived state like the digest cache and must never stop a build. One that SQLite cannot read is
removed with one warning line, and doit starts a new one."""

from __future__ import annotations

import contextlib
import sqlite3
import sys
from pathlib import Path


def usable_dep_file(path: Path) -> str:
    """`path` for DOIT_CONFIG["dep_file"], after discarding it if it is damaged."""
    if not path.exists():
        return str(path)
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            (verdict,) = db.execute("PRAGMA quick_check").fetchone()
        finally:
            db.close()
        if verdict != "ok":
            raise sqlite3.DatabaseError(verdict)
    except sqlite3.DatabaseError as exc:
        print(f"modelmake: warning: {path}: doit state unreadable ({exc}); discarded (it decides nothing)",
              file=sys.stderr)
        for suffix in ("", "-wal", "-shm", "-journal"):
            with contextlib.suppress(OSError):
                Path(f"{path}{suffix}").unlink()
    return str(path)
