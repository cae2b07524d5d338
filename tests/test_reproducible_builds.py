"""Same inputs and toolchain -> byte-identical artifacts, whatever the directory or thread count."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from conftest import REPO, Workspace, demo_config


def outputs(ws: Workspace) -> dict[str, dict[str, str]]:
    lock = json.loads((ws.root / "models.lock").read_text())
    return {task: entry["outputs"] for task, entry in lock["stages"].items()}


def test_two_directories_and_thread_counts_give_identical_artifacts(fixtures_ws: Workspace, tmp_path: Path) -> None:
    """The session's fixture workspace was built with 2 threads (its fixtures possibly by an earlier run);
    this one is built from scratch with 1 thread, in a directory with another name and depth: every
    artifact (fixtures included) must match."""
    other = Workspace(tmp_path / "a" / "deeper" / "merged")  # the converter used to name models after dirs
    other.root.mkdir(parents=True)
    shutil.copytree(REPO / "templates", other.root / "templates")
    shutil.copyfile(fixtures_ws.config, other.config)
    other.doit(MODELMAKE_THREADS="1")
    ours, theirs = outputs(other), outputs(fixtures_ws)
    assert ours.keys() == theirs.keys()
    assert len(ours) >= 8
    for task in ours:
        assert ours[task] == theirs[task], f"{task} differs between builds"


def test_config_text_is_part_of_no_artifact(fixtures_ws: Workspace) -> None:
    """Sanity for the test above: the base model's name, not the workspace path, names the GGUF."""
    from gguf import GGUFReader

    reader = GGUFReader(str(fixtures_ws.artifacts / "demo" / "demo-f16.gguf"))
    assert reader.fields["general.name"].contents() == "demo-base"
    blob = (fixtures_ws.artifacts / "demo" / "demo-q8_0.gguf").read_bytes()
    assert str(fixtures_ws.root).encode() not in blob
    assert demo_config("") not in blob.decode("latin-1")
