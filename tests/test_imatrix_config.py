"""models.toml `imatrix`: calibration data that is empty, not text or the evaluation set, and quant types that
need a matrix without one, are one-line errors naming the key, with exit 2 and nothing built."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from conftest import PY, REPO

from tasks.core.config.load import load_config
from tasks.core.errors import UserError
from tasks.core.layout import DEFAULT_CALIBRATION, EVAL_SAMPLES, FIXTURE_DATA

GOOD = """
[models.demo]
base = "fixture:demo-base"
adapter = "fixture:demo-adapter"
quants = ["q2_k", "q4_k_m"]
"""


def write(tmp_path: Path, text: str, files: dict[str, bytes] | None = None) -> Path:
    for name, data in (files or {}).items():
        (tmp_path / name).write_bytes(data)
    path = tmp_path / "models.toml"
    path.write_text(text)
    return path


def error_of(tmp_path: Path, text: str, files: dict[str, bytes] | None = None) -> str:
    with pytest.raises(UserError) as info:
        load_config(write(tmp_path, text, files))
    message = str(info.value)
    assert "\n" not in message
    assert str(tmp_path / "models.toml") in message
    return message


def eval_answer() -> str:
    return json.loads(EVAL_SAMPLES.read_text().splitlines()[1])["messages"][-1]["content"]


def test_imatrix_true_calibrates_on_the_shipped_text_and_every_quant_uses_it(tmp_path: Path) -> None:
    spec = load_config(write(tmp_path, GOOD + "imatrix = true\n")).models["demo"].imatrix
    assert spec is not None and spec.quants == ("q2_k", "q4_k_m") and spec.data[0] == DEFAULT_CALIBRATION
    assert spec.plain == ()  # no comparison twins unless asked for


def test_training_data_that_is_the_eval_set_is_left_out_of_the_default_with_a_note(tmp_path: Path) -> None:
    # The demo adapter was trained on the very chats eval_samples.jsonl holds.
    spec = load_config(write(tmp_path, GOOD + "imatrix = true\n")).models["demo"].imatrix
    assert spec is not None
    assert FIXTURE_DATA / "demo_chat.jsonl" not in spec.data
    assert any("demo_chat.jsonl left out" in n for n in spec.notes)


def test_compare_builds_no_matrix_twins_except_for_types_that_need_one(tmp_path: Path) -> None:
    text = GOOD.replace('["q2_k", "q4_k_m"]', '["q2_k", "iq2_xxs"]') + "imatrix = { compare = true }\n"
    m = load_config(write(tmp_path, text)).models["demo"]
    assert m.gguf_types == ("f16", "q2_k", "iq2_xxs", "q2_k-noimatrix")


def test_per_quant_use_and_explicit_data(tmp_path: Path) -> None:
    text = GOOD + 'imatrix = { data = ["calib.jsonl", "notes.txt"], quants = ["q2_k"] }\n'
    files = {"calib.jsonl": b'{"text": "some words about rivers"}\n{"messages": [{"role": "user", "content": "hi"}]}\n',
             "notes.txt": "plain text, caf\u00e9\n".encode()}
    m = load_config(write(tmp_path, text, files)).models["demo"]
    assert m.imatrix is not None and m.imatrix.data == (tmp_path / "calib.jsonl", tmp_path / "notes.txt")
    assert m.uses_imatrix("q2_k") and not m.uses_imatrix("q4_k_m")


@pytest.mark.parametrize(
    ("text", "files", "expected"),
    [
        (GOOD.replace('"q4_k_m"', '"iq2_xxs"'), {}, "models.demo.quants[1]: 'iq2_xxs' needs an importance matrix"),
        (GOOD.replace('"q4_k_m"', '"iq2_xxs"') + 'imatrix = { quants = ["q2_k"] }\n', {},
         "models.demo.quants[1]: 'iq2_xxs' needs an importance matrix"),
        (GOOD + 'imatrix = { data = ["empty.txt"] }\n', {"empty.txt": b" \n\n"},
         "models.demo.imatrix.data[0]: "),
        (GOOD + 'imatrix = { data = ["blob.bin"] }\n', {"blob.bin": b"\x00\x01\x02GGUF\x00"}, "not text (NUL bytes)"),
        (GOOD + 'imatrix = { data = ["latin1.txt"] }\n', {"latin1.txt": b"caf\xe9 au lait"}, "not UTF-8 text"),
        (GOOD + 'imatrix = { data = ["c.jsonl"] }\n', {"c.jsonl": b'{"text": "ok"}\nnot json\n'},
         "c.jsonl:2: not JSON"),
        (GOOD + 'imatrix = { data = ["c.jsonl"] }\n', {"c.jsonl": b'{"prompt": "x"}\n'}, "c.jsonl:1: expected"),
        (GOOD + 'imatrix = { data = ["missing.txt"] }\n', {}, "calibration file not found"),
        (GOOD + "imatrix = { data = [] }\n", {}, "models.demo.imatrix.data: empty list"),
        (GOOD + 'imatrix = { quants = ["q8_0"] }\n', {}, "models.demo.imatrix.quants[0]: 'q8_0' is not one of"),
        (GOOD + "imatrix = { colour = 1 }\n", {}, "models.demo.imatrix.colour: unknown key"),
        (GOOD + "imatrix = { chunk = 4 }\n", {}, "models.demo.imatrix.chunk: 4 is outside"),
        (GOOD + "imatrix = 'yes'\n", {}, "models.demo.imatrix: expected true or a table"),
        (GOOD + 'imatrix = { file = "nope.gguf" }\n', {}, "models.demo.imatrix.file: file not found"),
    ],
)
def test_bad_imatrix_config_is_one_line_naming_the_key(tmp_path: Path, text: str, files: dict[str, bytes],
                                                        expected: str) -> None:
    assert expected in error_of(tmp_path, text, files)


def test_empty_calibration_file_says_empty(tmp_path: Path) -> None:
    message = error_of(tmp_path, GOOD + 'imatrix = { data = ["empty.txt"] }\n', {"empty.txt": b""})
    assert message.endswith("empty.txt: calibration file is empty")


def test_calibration_overlapping_the_eval_set_is_refused(tmp_path: Path) -> None:
    answer = eval_answer()
    calib = f"Some general text.\nA line that leaks the answer: {answer} and more.\n".encode()
    message = error_of(tmp_path, GOOD + 'imatrix = { data = ["leak.txt"] }\n', {"leak.txt": calib})
    assert "models.demo.imatrix.data[0]: calibration data overlaps the evaluation set" in message
    assert "leak.txt contains eval_samples.jsonl:2's" in message


def test_shipped_calibration_text_does_not_overlap_the_eval_set(tmp_path: Path) -> None:
    text = GOOD + f'imatrix = {{ data = ["{DEFAULT_CALIBRATION}"] }}\n'
    assert load_config(write(tmp_path, text)).models["demo"].imatrix is not None


def test_doit_with_overlapping_calibration_exits_2_with_one_line_and_builds_nothing(tmp_path: Path) -> None:
    config = write(tmp_path, '[build]\nartifacts = "out"\n' + GOOD + 'imatrix = { data = ["leak.jsonl"] }\n',
                   {"leak.jsonl": json.dumps({"text": eval_answer()}).encode() + b"\n"})
    proc = subprocess.run([PY, "-m", "doit", "-f", str(REPO / "dodo.py")],
                          env={"MODELMAKE_CONFIG": str(config), "PATH": "/usr/bin:/bin"}, capture_output=True,
                          text=True)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "overlaps the evaluation set" in lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not (tmp_path / "out").exists()
