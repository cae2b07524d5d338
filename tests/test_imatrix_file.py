"""The importance-matrix file is llama-imatrix's GGUF layout, read back exactly, and refused for another model."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest

from tasks.core.errors import UserError
from tasks.gguf import imatrix_file


def sample() -> imatrix_file.Imatrix:
    rng = np.random.default_rng(7)
    sums = {"blk.0.attn_q.weight": rng.random((1, 64)) * 10, "blk.0.ffn_down.weight": rng.random((1, 128)),
            "blk.1.ffn_gate_exps.weight": rng.random((4, 64))}
    counts = {"blk.0.attn_q.weight": [300], "blk.0.ffn_down.weight": [300], "blk.1.ffn_gate_exps.weight": [5, 0, 7, 1]}
    return imatrix_file.Imatrix(sums, counts, ["calibration.txt", "chats.jsonl"], 3, 128)


def test_file_has_llama_imatrix_keys_and_tensors_as_gguf_py_reads_them(tmp_path: Path) -> None:
    path = tmp_path / "m.imatrix.gguf"
    imatrix_file.write(path, sample())
    reader = gguf.GGUFReader(path)
    fields = reader.fields
    assert bytes(fields["general.type"].parts[-1]).decode() == "imatrix"
    assert [bytes(fields["imatrix.datasets"].parts[i]).decode() for i in fields["imatrix.datasets"].data] == [
        "calibration.txt", "chats.jsonl"]
    assert int(fields["imatrix.chunk_count"].parts[-1][0]) == 3
    assert int(fields["imatrix.chunk_size"].parts[-1][0]) == 128
    tensors = {t.name: t for t in reader.tensors}
    assert sorted(tensors) == sorted(f"{n}{s}" for n in sample().sums for s in (".in_sum2", ".counts"))
    exps = tensors["blk.1.ffn_gate_exps.weight.in_sum2"]
    assert list(exps.shape) == [64, 4] and exps.tensor_type == gguf.GGMLQuantizationType.F32
    assert list(tensors["blk.1.ffn_gate_exps.weight.counts"].shape) == [1, 4]
    np.testing.assert_array_equal(np.asarray(exps.data).reshape(4, 64),
                                  sample().sums["blk.1.ffn_gate_exps.weight"].astype(np.float32))


def test_read_back_gives_the_same_sums_and_means_as_llama_quantize_computes(tmp_path: Path) -> None:
    path = tmp_path / "m.imatrix.gguf"
    imatrix_file.write(path, sample())
    back = imatrix_file.read(path)
    assert back.datasets == ["calibration.txt", "chats.jsonl"] and (back.chunk_count, back.chunk_size) == (3, 128)
    means = back.means()
    s = sample().sums["blk.1.ffn_gate_exps.weight"].astype(np.float32)
    np.testing.assert_allclose(means["blk.1.ffn_gate_exps.weight"][:64], s[0] / 5, rtol=1e-6)
    assert (means["blk.1.ffn_gate_exps.weight"][64:128] == 1).all()  # an expert no token reached: 1s
    assert means["blk.0.attn_q.weight"].dtype == np.float32 and means["blk.0.attn_q.weight"].shape == (64,)


def test_same_matrix_gives_the_same_bytes(tmp_path: Path) -> None:
    imatrix_file.write(tmp_path / "a.gguf", sample())
    imatrix_file.write(tmp_path / "b.gguf", sample())
    assert (tmp_path / "a.gguf").read_bytes() == (tmp_path / "b.gguf").read_bytes()


def test_a_model_gguf_is_not_an_importance_matrix(tmp_path: Path) -> None:
    path = tmp_path / "model.gguf"
    writer = gguf.GGUFWriter(path, "qwen2")
    writer.add_tensor("blk.0.attn_q.weight", np.zeros((64, 64), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(UserError, match="not an importance matrix"):
        imatrix_file.read(path)


def model_gguf(path: Path, tensors: dict[str, tuple[int, ...]]) -> Path:
    writer = gguf.GGUFWriter(path, "qwen2")
    for name, shape in tensors.items():
        writer.add_tensor(name, np.zeros(shape, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize(
    ("tensors", "expected"),
    [
        ({"blk.0.attn_q.weight": (64, 64), "blk.0.ffn_down.weight": (64, 64)},
         "entry blk.0.ffn_down.weight has 128 values but model.gguf's tensor has 64 input columns"),
        ({"blk.0.attn_q.weight": (64, 64), "blk.0.ffn_down.weight": (64, 128)},
         "entry blk.1.ffn_gate_exps.weight is not a tensor of model.gguf"),
        ({"blk.0.attn_q.weight": (64, 64), "blk.0.ffn_down.weight": (64, 128),
          "blk.1.ffn_gate_exps.weight": (4, 64, 64), "blk.2.attn_q.weight": (64, 64)},
         "no entry for model.gguf's tensor blk.2.attn_q.weight"),
    ],
)
def test_matrix_for_another_model_is_one_line_naming_the_tensor(tmp_path: Path, tensors: dict[str, tuple[int, ...]],
                                                                expected: str) -> None:
    matrix = tmp_path / "m.imatrix.gguf"
    imatrix_file.write(matrix, sample())
    model = model_gguf(tmp_path / "model.gguf", tensors)
    with pytest.raises(UserError) as info:
        imatrix_file.check_fits(imatrix_file.read(matrix), matrix, model)
    assert expected in str(info.value) and "\n" not in str(info.value)
    assert "made for another model" in str(info.value)


def test_matrix_made_for_the_model_fits(tmp_path: Path) -> None:
    matrix = tmp_path / "m.imatrix.gguf"
    imatrix_file.write(matrix, sample())
    model = model_gguf(tmp_path / "model.gguf", {"blk.0.attn_q.weight": (64, 64), "blk.0.ffn_down.weight": (64, 128),
                                                 "blk.1.ffn_gate_exps.weight": (4, 64, 64),
                                                 "blk.0.attn_norm.weight": (64,), "token_embd.weight": (100, 64)})
    imatrix_file.check_fits(imatrix_file.read(matrix), matrix, model)
