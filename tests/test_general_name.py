"""The user's model name never becomes the GGUF's general.name, which llama.cpp reads as the model's
identity (its vocab code special-cases names containing "phi3"/"phi-3"): the base model's name does."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from conftest import Workspace

from tasks.core.config.schema import Source
from tasks.core.hashing import sha256_file
from tasks.gguf.stages import base_name


def test_general_name_comes_from_the_base_model_spec() -> None:
    assert base_name(Source(spec="fixture:phi3-base", path=Path("x"), fixture="phi3-base")) == "phi3-base"
    assert base_name(Source(spec="bases/Phi-3-mini-4k-instruct", path=Path("/a/b"))) == "Phi-3-mini-4k-instruct"
    assert base_name(Source(spec="bases/qwen2.5-7b/", path=Path("/a/b"))) == "qwen2.5-7b"
    hub = SimpleNamespace(repo_id="microsoft/Phi-3.5-mini-instruct", kind="hub")
    assert base_name(Source(spec="hf://microsoft/Phi-3.5-mini-instruct@abc", path=Path("s"), remote=hub)) \
        == "Phi-3.5-mini-instruct"
    ssh = SimpleNamespace(path="/runs/phi3-mini/base", kind="ssh")
    assert base_name(Source(spec="ssh://box/runs/phi3-mini/base", path=Path("s"), remote=ssh)) == "base"


def test_a_phi3_like_model_name_changes_no_byte_of_the_gguf(scratch_ws: Workspace) -> None:
    """Before: `phi35` (the demo's Qwen2 base and adapter) got general.name "phi35", and llama.cpp then
    stripped spaces after special tokens: tokenizer parity 0.875. Now it is the same GGUF as alpha's."""
    from gguf import GGUFReader

    text = scratch_ws.config.read_text()
    scratch_ws.config.write_text(text + '\n[models.phi35]\nbase = "fixture:demo-base"\nadapter = "adapters/alpha"\n'
                                 'quants = []\n')
    run = scratch_ws.doit("convert:phi35")
    assert "convert:phi35" in run.executed
    ours, alpha = scratch_ws.artifacts / "phi35" / "phi35-f16.gguf", scratch_ws.artifacts / "alpha" / "alpha-f16.gguf"
    assert GGUFReader(str(ours)).fields["general.name"].contents() == "demo-base"
    assert sha256_file(ours) == sha256_file(alpha), "the model's name is in no byte of its GGUF"
