"""models.toml mistakes are one-line errors naming the key, and nothing is built."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from conftest import PY, REPO

from tasks.core.config.load import load_config
from tasks.core.errors import UserError

GOOD = """
[models.demo]
base = "fixture:demo-base"
adapter = "fixture:demo-adapter"
"""


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "base").mkdir(exist_ok=True)
    (tmp_path / "adapter").mkdir(exist_ok=True)
    path = tmp_path / "models.toml"
    path.write_text(text)
    return path


def error_of(tmp_path: Path, text: str) -> str:
    with pytest.raises(UserError) as info:
        load_config(write(tmp_path, text))
    message = str(info.value)
    assert "\n" not in message
    return message


def test_good_config_has_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD))
    demo = config.models["demo"]
    assert demo.outtype == "f16" and demo.quants == ("q8_0", "q4_k_m") and demo.merge == "stream"
    assert demo.base.fixture == "demo-base"
    assert config.artifacts == tmp_path / "artifacts"


def test_quant_names_are_case_insensitive(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD + 'quants = ["Q4_K_M", "q6_K"]\n'))
    assert config.models["demo"].quants == ("q4_k_m", "q6_k")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (GOOD + "colour = 'red'\n", "models.demo.colour: unknown key"),
        ("[bogus]\n" + GOOD, "bogus: unknown key"),
        (GOOD + 'quants = ["q4_k_x"]\n', "models.demo.quants[0]: unknown quantization 'q4_k_x' (valid: q4_0,"),
        (GOOD + 'quants = ["iq2_xxs"]\n', "needs an importance matrix"),
        (GOOD + 'quants = ["f16"]\n', "set it with outtype"),
        (GOOD + 'quants = ["q8_0", "Q8_0"]\n', "listed twice"),
        (GOOD + 'outtype = "f32"\n', "models.demo.outtype: 'f32' is not one of f16, bf16"),
        (GOOD + 'merge = "magic"\n', "models.demo.merge"),
        (GOOD + "quants = 'q8_0'\n", "models.demo.quants: expected list"),
        (GOOD.replace('adapter = "fixture:demo-adapter"', 'adapter = "nowhere"'),
         "models.demo.adapter: directory not found"),
        (GOOD.replace('base = "fixture:demo-base"', 'base = "fixture:nope"'),
         "models.demo.base: unknown fixture 'nope'"),
        (GOOD.replace('base = "fixture:demo-base"\n', ""), "models.demo.base: missing"),
        ("[models.'../escape']\nbase='base'\nadapter='adapter'\n", "unsafe model name '../escape'"),
        ("[models.'a/b']\nbase='base'\nadapter='adapter'\n", "unsafe model name 'a/b'"),
        ("[models.Demo]\nbase='base'\nadapter='adapter'\n", "unsafe model name 'Demo'"),
        ("[models.x-q8_0]\nbase='base'\nadapter='adapter'\n", "reserve for quant types"),
        (GOOD + "[models.de_mo]\nbase='base'\nadapter='adapter'\n[models.de-mo]\nbase='base'\nadapter='adapter'\n",
         "duplicate of models.de_mo"),
        (GOOD + "[models.demo.deploy]\nport = 80\n", "models.demo.deploy.port: 80 is outside"),
        (GOOD + "[models.demo.deploy]\nport = 5000\n[models.two]\nbase='base'\nadapter='adapter'\n"
         "[models.two.deploy]\nport = 5000\n", "models.two.deploy.port: 5000 is already used by models.demo"),
        (GOOD + "[models.demo.deploy]\nquant = 'q6_k'\n", "models.demo.deploy.quant: 'q6_k' is not built"),
        ("[build]\nthreads = 0\n" + GOOD, "build.threads: must be at least 1"),
        ("[models]\n", "no model defined"),
        ("[models.demo\n", "not valid TOML"),
        (GOOD + 'base = "other"\n', "not valid TOML"),  # a key given twice
    ],
)
def test_bad_config_is_one_line_naming_the_key(tmp_path: Path, text: str, expected: str) -> None:
    message = error_of(tmp_path, text)
    assert expected in message
    assert str(tmp_path / "models.toml") in message


def test_doit_with_bad_config_exits_2_with_one_line_and_builds_nothing(tmp_path: Path) -> None:
    config = write(tmp_path, GOOD + 'quants = ["q9_9"]\n[build]\nartifacts = "out"\n')
    proc = subprocess.run(
        [PY, "-m", "doit", "-f", str(REPO / "dodo.py")],
        env={"MODELMAKE_CONFIG": str(config), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "models.demo.quants[0]: unknown quantization 'q9_9'" in lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not (tmp_path / "out").exists()
