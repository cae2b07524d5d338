"""Remote sources in models.toml: ssh:// and hf:// forms parse into fetch stages; mistakes are one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.build.registry import all_stages, dependencies
from tasks.core.config.load import load_config
from tasks.core.errors import UserError

COMMIT = "0123456789abcdef0123456789abcdef01234567"
DIGEST = "ab" * 32
HUB = '"hf://Org/base"'


def write(tmp_path: Path, base: str, adapter: str, build: str = "") -> Path:
    (tmp_path / "id_key").write_text("not really a key\n")
    path = tmp_path / "models.toml"
    path.write_text(f"[build]\n{build}\n[models.alpha]\nbase = {base}\nadapter = {adapter}\nquants = []\n")
    return path


def error_of(tmp_path: Path, base: str, adapter: str, build: str = "") -> str:
    with pytest.raises(UserError) as info:
        load_config(write(tmp_path, base, adapter, build))
    message = str(info.value)
    assert "\n" not in message
    return message


def test_ssh_table_and_hub_table_become_fetch_stages(tmp_path: Path) -> None:
    config = load_config(write(
        tmp_path,
        f'{{ hub = "Org/Base-1", revision = "{COMMIT.upper()}", allow = ["*.json", "*.safetensors"] }}',
        f'{{ ssh = "ssh://train@gpu-box:2222/root/runs/r1/", key = "id_key", sha256 = {{ "adapter_config.json" = '
        f'"{DIGEST}" }}, bwlimit = 100 }}',
    ))
    alpha = config.models["alpha"]
    assert alpha.adapter.spec == "ssh://train@gpu-box:2222/root/runs/r1"
    assert alpha.adapter.remote.key == tmp_path / "id_key"
    assert alpha.adapter.remote.sha256 == (("adapter_config.json", DIGEST),)
    assert alpha.adapter.path == config.artifacts / "sources" / "alpha" / "adapter"
    assert alpha.base.spec == f"hf://Org/Base-1@{COMMIT}" and alpha.base.remote.pinned
    assert alpha.base.remote.allow == ("*.json", "*.safetensors")
    stages = {s.task: s for s in all_stages(config)}
    upstream = dependencies(list(stages.values()))
    assert {"fetch:alpha-adapter", "fetch:alpha-base"} <= set(stages)
    assert upstream["adapter:alpha"] == ["fetch:alpha-adapter"]
    assert set(upstream["merge:alpha"]) == {"adapter:alpha", "fetch:alpha-base", "fetch:alpha-adapter"}
    assert upstream["fetch:alpha-adapter"] == []


def test_string_forms_and_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, '"hf://Org/base"', '"ssh://gpu-box/data/run"'))
    alpha = config.models["alpha"]
    assert alpha.adapter.remote.port == 22 and alpha.adapter.remote.user is None
    assert alpha.adapter.remote.manifest == "SHA256SUMS" and alpha.adapter.remote.sha256 == ()
    assert alpha.base.remote.revision is None and not alpha.base.remote.pinned
    assert alpha.base.spec == "hf://Org/base@main"
    assert "*.bin" not in alpha.base.remote.allow  # pickles are never fetched by default


@pytest.mark.parametrize(
    ("base", "adapter", "expected"),
    [
        (HUB, '"ftp://host/x"', "models.alpha.adapter: unsupported source scheme ftp://"),
        (HUB, '"ssh://host"', "models.alpha.adapter: expected ssh://[user@]host[:port]/absolute/path"),
        (HUB, '"ssh://host:99999/x"', "models.alpha.adapter: expected ssh://"),
        (HUB, '"ssh://u:pw@host/x"', "models.alpha.adapter: passwords in ssh:// URLs are refused"),
        (HUB, '"ssh://host/x;rm -rf"', "models.alpha.adapter: unsafe remote path"),
        (HUB, '"ssh://host/a/../b"', "models.alpha.adapter: unsafe remote path"),
        (HUB, '{ ssh = "ssh://host/x", key = "missing_key" }', "models.alpha.adapter.key: file not found"),
        (HUB, '{ ssh = "ssh://host/x", colour = 1 }', "models.alpha.adapter.colour: unknown key"),
        (HUB, '{ ssh = "ssh://host/x", bwlimit = 0 }', "models.alpha.adapter.bwlimit: expected a positive"),
        (HUB, '{ ssh = "ssh://host/x", sha256 = { "a.json" = "xyz" } }',
         "models.alpha.adapter.sha256.'a.json': expected 64 hex digits"),
        (HUB, f'{{ ssh = "ssh://host/x", sha256 = {{ "../a.json" = "{DIGEST}" }} }}',
         "unsafe file name '../a.json'"),
        (HUB, '{ path = "x" }', "models.alpha.adapter: a source table needs"),
        ('{ hub = "not a repo" }', '"ssh://host/x"', "models.alpha.base.hub: 'not a repo' is not a Hub repo id"),
        ('{ hub = "Org/base", revision = "" }', '"ssh://host/x"', "models.alpha.base.revision"),
        ('{ hub = "Org/base", allow = [] }', '"ssh://host/x"', "models.alpha.base.allow: expected a non-empty list"),
        ('{ hub = "Org/base", ssh = "ssh://h/x" }', '"ssh://host/x"', "models.alpha.base: give either ssh or hub"),
    ],
)
def test_bad_remote_source_is_one_line_naming_the_key(tmp_path: Path, base: str, adapter: str, expected: str) -> None:
    assert expected in error_of(tmp_path, base, adapter)


def test_webhook_must_be_an_http_url(tmp_path: Path) -> None:
    message = error_of(tmp_path, '"hf://Org/base"', '"ssh://host/x"', build='webhook = "slack://nope"')
    assert "build.webhook: expected an http:// or https:// URL" in message
    ok = load_config(write(tmp_path, '"hf://Org/base"', '"ssh://host/x"', build='webhook = "https://hooks.example/T/B"'))
    assert ok.webhook == "https://hooks.example/T/B"
