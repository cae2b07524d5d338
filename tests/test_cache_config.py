"""`[build] cache` and `[build] run_cache` in models.toml: forms accepted, mistakes one line naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.core.config.load import load_config
from tasks.core.errors import UserError

MODEL = """
[models.demo]
base = "fixture:demo-base"
adapter = "fixture:demo-adapter"
"""


def config_with(tmp_path: Path, build: str):
    path = tmp_path / "models.toml"
    path.write_text(f"[build]\n{build}\n{MODEL}")
    return load_config(path)


def error_of(tmp_path: Path, build: str) -> str:
    with pytest.raises(UserError) as info:
        config_with(tmp_path, build)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_bare_string_is_one_pull_only_directory_cache(tmp_path: Path) -> None:
    (spec,) = config_with(tmp_path, 'cache = "shared"').caches
    assert spec.kind == "dir" and spec.push is False and spec.path == (tmp_path / "shared").resolve()


def test_list_keeps_order_and_push_defaults_to_false(tmp_path: Path) -> None:
    specs = config_with(tmp_path, 'cache = [{ url = "/srv/a", push = true }, "s3://bucket/prefix", '
                                  '{ url = "ssh://ci@cache-box:2222/srv/mm" }]').caches
    assert [(s.kind, s.push) for s in specs] == [("dir", True), ("fsspec", False), ("ssh", False)]
    assert specs[1].url == "s3://bucket/prefix"
    assert specs[2].ssh.host == "cache-box" and specs[2].ssh.port == 2222 and specs[2].ssh.path == "/srv/mm"


def test_fsspec_options_are_kept_for_the_filesystem(tmp_path: Path) -> None:
    (spec,) = config_with(tmp_path, 'cache = [{ url = "s3://b/p", options = { endpoint_url = "http://x:9" } }]').caches
    assert dict(spec.options) == {"endpoint_url": "http://x:9"}


def test_run_cache_size_forms(tmp_path: Path) -> None:
    assert config_with(tmp_path, 'run_cache = "500MB"').run_cache == 500 * 10**6
    assert config_with(tmp_path, 'run_cache = "2GiB"').run_cache == 2 << 30
    assert config_with(tmp_path, "run_cache = 0").run_cache == 0
    assert config_with(tmp_path, "").run_cache > 0  # on by default


def test_environment_cache_is_tried_first_and_may_push(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELMAKE_CACHE", str(tmp_path / "ci-cache"))
    monkeypatch.setenv("MODELMAKE_CACHE_PUSH", "1")
    specs = config_with(tmp_path, 'cache = "/srv/team"').caches
    assert [(s.url, s.push) for s in specs] == [(str(tmp_path / "ci-cache"), True), ("/srv/team", False)]


@pytest.mark.parametrize(("build", "expected"), [
    ("cache = 3", "build.cache: expected a URL or a list"),
    ("cache = [{ push = true }]", "build.cache[0].url: missing"),
    ('cache = [{ url = "/a", push = "yes" }]', "build.cache[0].push: expected true or false"),
    ('cache = [{ url = "/a", colour = 1 }]', "build.cache[0].colour: unknown key"),
    ('cache = ["/a", "/a"]', "build.cache[1]: /a is listed twice"),
    ('cache = [{ url = "/a", key = "k" }]', "build.cache[0].key: not used by a directory cache"),
    ('cache = [{ url = "s3://b", key = "k" }]', "build.cache[0].key: only for ssh:// caches"),
    ('cache = ["ssh://host/"]', "build.cache[0]: expected ssh://[user@]host[:port]/absolute/path"),
    ('cache = [{ url = "ssh://h/p", options = { a = 1 } }]', "build.cache[0].options: not used by an ssh://"),
    ('run_cache = "lots"', "build.run_cache: expected a size"),
    ("run_cache = -1", "build.run_cache: expected a size"),
])
def test_bad_cache_config_is_one_line_naming_the_key(tmp_path: Path, build: str, expected: str) -> None:
    assert expected in error_of(tmp_path, build)
