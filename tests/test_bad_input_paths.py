"""Bad paths around a build are one line each: artifacts/ not writable, an artifact replaced by a link to a
file elsewhere, an LM Studio home that is a regular file."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import Workspace
from fs_support import read_only
from test_interrupted_builds import stage

from tasks.core.errors import UserError
from tasks.core.hashing import sha256_file
from tasks.core.safe_fs import SafeRoot
from tasks.core.stage import stale_reason


def test_lmstudio_home_that_is_a_file_is_one_line(tmp_path: Path) -> None:
    """Before: FileExistsError from SafeRoot during `doit deploy:<m>`."""
    home = tmp_path / "lmhome"
    home.write_text("not a directory\n")
    with pytest.raises(UserError) as info:
        SafeRoot(home)
    assert str(info.value) == f"{home}: not a directory (expected a directory to install into)"
    with pytest.raises(UserError):
        SafeRoot(home / "models")  # below a file: the same one line
    assert home.read_text() == "not a directory\n"


def test_read_only_artifacts_no_op_build_passes_with_one_warning(scratch_ws: Workspace) -> None:
    """Before: sqlite3.OperationalError from the digest cache, even for a build with nothing to do."""
    check = stage(scratch_ws, "check:beta")
    with read_only(scratch_ws.artifacts):
        run = scratch_ws.doit()
        assert run.returncode == 0
        warnings = [ln for ln in run.stderr.splitlines() if ln.startswith("modelmake: warning:")]
        assert warnings and all("not writable" in w for w in warnings)
        assert warnings[0].startswith(f"modelmake: warning: {scratch_ws.artifacts / '.cache'}: not writable")
        assert "Traceback" not in run.stdout + run.stderr
    check.manifest.unlink()  # now something must be written
    with read_only(scratch_ws.artifacts):
        run = scratch_ws.doit(check=False)
        assert run.returncode != 0
        errors = [ln for ln in run.stderr.splitlines() if ln.startswith("modelmake: error:")]
        assert len(errors) == 1, run.stderr
        assert errors[0].startswith("modelmake: error: check:beta: cannot write ")
        assert errors[0].endswith(": Read-only file system")
        assert "Traceback" not in run.stdout + run.stderr


def test_artifact_replaced_by_a_link_elsewhere_is_rebuilt_and_nothing_outside_is_written(
        scratch_ws: Workspace, tmp_path: Path) -> None:
    """Before: `ValueError ... is not in the subpath` from Stage.rel."""
    st = stage(scratch_ws, "quantize:beta-q8_0")
    (out,) = st.outputs
    good = sha256_file(out)
    outside = tmp_path / "elsewhere.gguf"
    outside.write_bytes(out.read_bytes())  # even the same bytes: a link was never built by us
    out.unlink()
    out.symlink_to(outside)
    assert stale_reason(st) == "output replaced by a symbolic link: beta/beta-q8_0.gguf"
    run = scratch_ws.doit()
    assert "quantize:beta-q8_0" in run.executed
    assert not out.is_symlink() and sha256_file(out) == good
    assert sha256_file(outside) == good and outside.stat().st_nlink == 1
    assert "Traceback" not in run.stdout + run.stderr
