"""doit reporter: one line per failure, and a summary table of every artifact at the end."""

from __future__ import annotations

import json
import re
import time

from doit.reporter import ConsoleReporter

from tasks.build.stage_action import INTERRUPTED
from tasks.core.manifest import outputs_of, read_manifest
from tasks.core.stage import Stage


def human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


class SummaryReporter(ConsoleReporter):
    desc = "modelmake summary"

    def initialize(self, tasks, selected_tasks):
        self.tasks = tasks
        self.executed: set[str] = set()
        self.failed: set[str] = set()
        self.ran: set[str] = set()
        self.started = time.time()

    def execute_task(self, task):
        self.ran.add(task.name)
        super().execute_task(task)

    def skip_uptodate(self, task):
        self.ran.add(task.name)
        super().skip_uptodate(task)

    def add_success(self, task):
        if task.actions:
            self.executed.add(task.name)

    def add_failure(self, task, fail):
        self.failed.add(task.name)
        stage = (task.meta or {}).get("stage")
        msg = fail.get_msg().strip()
        killed = re.search(r"killed by (SIG[A-Z0-9]+)", msg)
        why = f": killed by {killed.group(1)}" if killed else ""
        where = f"{why} (log: {stage.log})" if isinstance(stage, Stage) else f": {msg.splitlines()[-1]}"
        self.write(f"modelmake: FAILED {task.name}{where}\n")

    def complete_run(self):
        if INTERRUPTED:  # Ctrl-C (tasks/build/stage_action.py): one line, then the table as it stands
            self.failed.update(INTERRUPTED)
            self.write(f"modelmake: interrupted during {', '.join(INTERRUPTED)}; nothing half-written was kept\n")
        if self.runtime_errors:
            self.write("modelmake: " + " ".join(e.strip() for e in self.runtime_errors) + "\n")
        rows = []
        skipped: list[str] = []
        for name in sorted(self.ran):
            stage = (self.tasks[name].meta or {}).get("stage") if name in self.tasks else None
            if not isinstance(stage, Stage):
                continue
            status = "FAILED" if name in self.failed else "built" if name in self.executed else "up to date"
            if status == "built" and stage.kind.always_runs and not _written_since(stage, self.started):
                status = "up to date"  # such tasks (fetch) always run; they count as built only when bytes changed
            manifest = read_manifest(stage.manifest)
            if status == "built" and _restored(stage, manifest, self.started):
                status = "restored"  # from a cache (tasks/cache): verified, not rebuilt
            outputs = outputs_of(manifest)
            for out in stage.outputs:
                rel = stage.rel(out)
                recs = {
                    k: v for k, v in outputs.items()
                    if (k == rel or k.startswith(rel + "/")) and not k.endswith(".sha256")
                }
                if not recs and rel + ".skipped" in outputs and status != "FAILED":
                    rows.append((stage.model or "-", rel, "-", "-", "skipped"))
                    skipped.append(_reason(stage, out))
                    continue
                size = sum(r["size"] for r in recs.values())
                digest = recs[rel]["sha256"][:12] if rel in recs else f"{len(recs)} files" if recs else "-"
                rows.append((stage.model or "-", rel + ("/" if out.suffix == "" and len(recs) > 1 else ""),
                             human_size(size) if recs else "-", digest, status))
        built = sum(1 for r in rows if r[4] == "built")
        restored = sum(1 for r in rows if r[4] == "restored")
        table: list[str] = []
        if rows:
            headers = ("model", "artifact", "size", "sha256", "status")
            widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
            fmt = "  ".join(f"{{:<{w}}}" for w in widths)
            table = [fmt.format(*r).rstrip() for r in [headers, tuple("-" * w for w in widths), *rows]]
        if self.failed or self.runtime_errors or rows:
            from tasks.build.notify import notify_run  # light; a failing webhook only warns

            notify_run(not (self.failed or self.runtime_errors), _project(), table, sorted(self.failed), built,
                       len(rows), self.write)
        if not rows:
            return
        self.write("\n" + "".join(line + "\n" for line in table))
        for reason in skipped:
            self.write(f"skipped: {reason}\n")
        if INTERRUPTED:
            self.write(f"Interrupted: {built} artifact(s) built before the interruption.\n")
        elif self.failed:
            self.write(f"{len(self.failed)} task(s) failed; see the lines above.\n")
        elif built or restored:
            got = f"{restored} restored from a cache, " if restored else ""
            self.write(f"{built} artifact(s) built, {got}{len(rows) - built - restored} up to date.\n")
        else:
            self.write(f"Nothing to rebuild: all {len(rows)} artifacts up to date.\n")


def _reason(stage: Stage, out) -> str:
    from tasks.core.stage import skipped_marker

    try:
        return skipped_marker(out).read_text(encoding="utf-8").strip()
    except OSError:
        return f"{stage.rel(out)} was not produced"


def _restored(stage: Stage, manifest: dict | None, since: float) -> bool:
    """True when this run restored `stage` from a cache (the runner leaves a marker naming the key)."""
    from tasks.core.layout import ArtifactLayout

    marker = ArtifactLayout(stage.artifacts).restored_marker(stage.task)
    try:
        if marker.stat().st_mtime < since:
            return False
        return json.loads(marker.read_text(encoding="utf-8")).get("key") == (manifest or {}).get("key")
    except (OSError, ValueError):
        return False


def _written_since(stage: Stage, since: float) -> bool:
    try:
        return stage.manifest.stat().st_mtime >= since
    except FileNotFoundError:
        return False


def _project() -> str:
    """The directory holding models.toml: what a notification names the build by."""
    from tasks.core.config.load import default_config_path

    return default_config_path().parent.name
