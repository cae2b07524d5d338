"""The pipeline and its checks on two more architectures with real SentencePiece tokenizers:
a Llama (TinyLlama's vocabulary, Zephyr template) and a Phi-3 (tokenizer.model rebuilt).

The Phi-3 fine-tune has a neutral name (`nayru`): llama.cpp's vocab handles Phi-3's special tokens by
general.name, which must come from the base model, never from the user's name for the fine-tune."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import REPO, Workspace, demo_config

from tasks.checks import parity, tokenizer_parity
from tasks.core import toolchain
from tasks.fixtures import sp_model
from tasks.formats.tokenizer_vectors import read_vectors

MODELS = """
[models.tinyllama]
base = "fixture:llama-spm-base"
adapter = "fixture:llama-spm-adapter"
quants = ["q8_0", "q4_k_m"]
[models.tinyllama.deploy]
targets = ["llamacpp"]

[models.nayru]
base = "fixture:phi3-base"
adapter = "fixture:phi3-adapter"
quants = ["q8_0", "q4_k_m"]
"""


@pytest.fixture(scope="module")
def archs_ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    ws = Workspace(tmp_path_factory.mktemp("archs"))
    shutil.copytree(REPO / "templates", ws.root / "templates")
    ws.config.write_text(demo_config(MODELS))
    ws.doit()
    return ws


@pytest.mark.parametrize(("model", "arch", "eos"), [("tinyllama", "llama", 2), ("nayru", "phi3", 32007)])
def test_checks_pass_with_full_tokenizer_parity(archs_ws: Workspace, model: str, arch: str, eos: int) -> None:
    result = json.loads((archs_ws.artifacts / model / "check.json").read_text())
    assert result["passed"], result["failures"]
    assert result["tokenizer"]["parity"] == 1.0 and result["tokenizer"]["vectors"] == 46
    for facts in result["validity"].values():
        assert facts["architecture"] == arch and facts["tensor_check"] == "names+shapes"
        assert facts["tokenizer_model"] == "llama" and facts["eos_id"] == eos and facts["chat_template"]
    assert result["logits"]["top1_agreement"] >= 0.99
    assert result["adapter"]["f16"]["retention"] > 0.99 and result["adapter"]["merged"]["retention"] > 0.99
    assert result["quality"]["q8_0"]["kl_mean"] < 0.01


def test_phi3_converted_from_the_rebuilt_tokenizer_model(archs_ws: Workspace) -> None:
    fixture = archs_ws.artifacts / "fixtures" / "phi3-base"
    assert (fixture / "tokenizer.model").is_file()
    import gguf

    reader = gguf.GGUFReader(str(archs_ws.artifacts / "nayru" / "nayru-f16.gguf"))
    name = reader.fields["general.name"]
    assert bytes(name.parts[name.data[0]]).decode() == "phi3-base"  # the base's name, not "nayru"
    assert len(reader.fields["tokenizer.ggml.tokens"].data) == 32064
    assert "tokenizer.ggml.scores" in reader.fields  # SentencePiece scores came from tokenizer.model


def test_metaspace_tokenizer_from_gguf_fails_parity_with_llama_cpp(archs_ws: Workspace) -> None:
    """transformers' own GGUF import of the Llama vocabulary (Metaspace) differs from the original on
    whitespace; the fixture fixes that, and the parity check is what notices it."""
    import transformers

    vocab = toolchain.vocab_file("ggml-vocab-llama-spm.gguf")
    hf = transformers.AutoTokenizer.from_pretrained(str(vocab.parent), gguf_file=vocab.name)
    vectors = read_vectors(Path(f"{vocab}.inp"), Path(f"{vocab}.out"))
    with parity.quiet_native(None):
        llm = parity.open_llama(archs_ws.artifacts / "tinyllama" / "tinyllama-f16.gguf", 64, vocab_only=True)
        result = tokenizer_parity.compare(hf, llm, list(tokenizer_parity.FIXED_TEXTS), vectors)
    assert result["parity"] < 1.0
    assert any("transformers" in m for m in result["mismatches"])


def test_sentencepiece_model_rebuilt_from_phi3_vocab_matches_its_vectors() -> None:
    vocab = toolchain.vocab_file("ggml-vocab-phi-3.gguf")
    model = sp_model.rebuild(vocab, 32000)
    sp_model.verify(model, read_vectors(Path(f"{vocab}.inp"), Path(f"{vocab}.out")))
    broken = sp_model.rebuild(toolchain.vocab_file("ggml-vocab-llama-spm.gguf"), 32000)
    from sentencepiece import sentencepiece_model_pb2 as pb

    proto = pb.ModelProto.FromString(broken)
    proto.normalizer_spec.add_dummy_prefix = False  # a wrong setting must be caught by the vectors
    with pytest.raises(ValueError, match="rebuilt tokenizer.model tokenizes"):
        sp_model.verify(proto.SerializeToString(), read_vectors(Path(f"{vocab}.inp"),
                                                                                  Path(f"{vocab}.out")))
