"""Workspaces for the source, CI-cache and webhook tests, seeded with already built demo fixtures.

Training the demo adapter takes minutes on a busy 2-core machine, and stages are content-keyed,
so a copy of fixtures that are fresh for today's code counts as built. The repo's own
artifacts/fixtures (or conftest's FIXTURE_CACHE) are used when fresh; otherwise the session's
`fixtures_ws` builds them.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from conftest import FIXTURE_CACHE, REPO, Workspace, demo_config, scale_adapter

FIXTURE_NAMES = ("demo-base", "demo-adapter")


def fresh_prebuilt_fixtures() -> Path | None:
    """Already built demo fixtures that are fresh for the current code: the repo's own build, or
    the test cache conftest keeps between sessions; None if neither is."""
    from tasks.core.config.load import load_config
    from tasks.core.stage import stale_reason
    from tasks.fixtures.stages import fixture_stages

    for fixtures in (REPO / "artifacts" / "fixtures", FIXTURE_CACHE):
        if not all((fixtures / "manifests" / f"{n}.json").is_file() for n in FIXTURE_NAMES):
            continue
        with tempfile.TemporaryDirectory() as tmp:
            config_path = Path(tmp) / "models.toml"
            config_path.write_text(f'[build]\nartifacts = "{fixtures.parent}"\n[models.demo]\n'
                                   'base = "fixture:demo-base"\nadapter = "fixture:demo-adapter"\n')
            if all(stale_reason(stage) is None for stage in fixture_stages(load_config(config_path))):
                return fixtures
    return None


def workspace_with(root: Path, fixtures: Path, models: str, extra_build: str = "") -> Workspace:
    """A workspace holding `fixtures` (copied: they count as built), adapters/alpha and adapters/beta."""
    ws = Workspace(root)
    root.mkdir(parents=True, exist_ok=True)
    shutil.copytree(REPO / "templates", root / "templates")
    shutil.copytree(fixtures, ws.artifacts / "fixtures", ignore=shutil.ignore_patterns(".*"))
    adapter = fixtures / "demo-adapter"
    shutil.copytree(adapter, root / "adapters" / "alpha")
    scale_adapter(adapter, root / "adapters" / "beta", 0.5)
    ws.config.write_text(demo_config(models, extra_build))
    return ws
