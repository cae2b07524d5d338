"""The llama.cpp toolchain, pinned through one registry package.

`llama-cpp-python==VERSION` gives the runtime (quantize, inference, server) once pip-installed,
and its sdist carries the same llama.cpp revision's converter, gguf-py, vocab files and chat
templates. Setup fetches that sdist from the package registry, checks its SHA256 against the
pin below and extracts only what we use into `.toolchain/`. Nothing from llama.cpp is committed.

The identity string (package, version, sdist digest) is part of every GGUF stage's key, so
changing the pin rebuilds exactly the GGUFs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from tasks.core import atomic
from tasks.core.errors import UserError
from tasks.core.hashing import sha256_file
from tasks.core.layout import REPO

PACKAGE = "llama-cpp-python"
VERSION = "0.3.36"
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
# Only these parts of vendor/llama.cpp are extracted. Adding one here re-extracts an older tree at setup
# (its `.complete` names what it holds); the identity, and so every stage key, stays the same.
WANTED = ("convert_hf_to_gguf.py", "convert_lora_to_gguf.py", "conversion/", "gguf-py/", "models/", "LICENSE")


def toolchain_root() -> Path:
    return Path(os.environ.get("MODELMAKE_TOOLCHAIN", REPO / ".toolchain")).resolve()


def llama_dir() -> Path:
    return toolchain_root() / f"llama.cpp-{VERSION}"


def text_architectures() -> dict[str, str]:
    """Architecture name (config.json "architectures"[0]) -> converter module ("family"), as the pinned
    converter registers them (its conversion/__init__.py TEXT_MODEL_MAP): read as source, so asking
    costs no torch import and the answer is exactly what that converter accepts."""
    import ast

    source = require() / "conversion" / "__init__.py"
    tree = ast.parse(source.read_text(encoding="utf-8"))
    for node in tree.body:
        target = node.target if isinstance(node, ast.AnnAssign) else (
            node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else None)
        if isinstance(target, ast.Name) and target.id == "TEXT_MODEL_MAP" and node.value is not None:
            return dict(ast.literal_eval(node.value))
    raise UserError(f"{source}: no TEXT_MODEL_MAP: the toolchain is not the pinned llama.cpp; run `make setup`")


def identity() -> str:
    """Identity of the pinned toolchain, for stage keys. Cheap: no import of llama_cpp."""
    return f"{PACKAGE}=={VERSION} sdist-sha256:{SDIST_SHA256}"


def require() -> Path:
    """The extracted llama.cpp tree, or a UserError telling how to get it."""
    root = llama_dir()
    if not (root / ".complete").is_file():
        raise UserError(f"llama.cpp toolchain not set up at {root}: run `make setup`")
    return root


def converter() -> Path:
    return require() / "convert_hf_to_gguf.py"


def lora_converter() -> Path:
    """llama.cpp's PEFT LoRA -> GGUF adapter converter (same revision and gguf-py as `converter`)."""
    path = require() / "convert_lora_to_gguf.py"
    if not path.is_file():  # a tree extracted before this converter was wanted
        raise UserError(f"llama.cpp toolchain at {path.parent} has no convert_lora_to_gguf.py: run `make setup`")
    return path


def vocab_file(name: str) -> Path:
    return require() / "models" / name


def chat_template_file(name: str) -> Path:
    return require() / "models" / "templates" / name


def converter_env() -> dict[str, str]:
    """Environment for the converter: the gguf-py shipped beside it, never PyPI's gguf."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(require() / "gguf-py")
    env.pop("NO_LOCAL_GGUF", None)
    return env


def check_runtime() -> None:
    """The pip-installed llama_cpp must be the pinned version (it quantizes and runs models)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        installed = version(PACKAGE)
    except PackageNotFoundError:
        raise UserError(f"{PACKAGE} is not installed in this environment: run `make setup`") from None
    if installed != VERSION:
        raise UserError(f"{PACKAGE} {installed} is installed but {VERSION} is pinned: run `make setup`")
    problem = build_problem()
    if problem:
        raise UserError(f"{PACKAGE} {problem}: run `make setup` (it rebuilds it without them)")


def _system_info() -> str:
    """llama_print_system_info() of the installed native library, read with ctypes (core imports no llama_cpp)."""
    import ctypes
    import importlib.util

    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"{PACKAGE} is not installed in this environment: run `make setup`")
    libs = sorted(Path(spec.submodule_search_locations[0], "lib").glob("libllama.*"))
    if not libs:
        raise UserError(f"{PACKAGE}: no libllama in {spec.submodule_search_locations[0]}/lib: run `make setup`")
    lib = ctypes.CDLL(str(libs[0]))
    lib.llama_print_system_info.restype = ctypes.c_char_p
    return lib.llama_print_system_info().decode("utf-8", "replace")


def build_problem() -> str | None:
    """Why the installed llama_cpp's native build must not run, or None.

    llama-cpp-python compiles llama.cpp with -march=native. On Xeons with AMX (Sapphire Rapids and newer)
    that turns on ggml's AMX kernels, which in this release crash decoding a Q8_0 model (SIGSEGV in
    llama_decode) and copy the weights out of the mmap into anonymous memory. `make setup` compiles with
    -mno-amx-int8 and reinstalls a build that has them.
    """
    if "AMX_INT8 = 1" in _system_info():
        return "was compiled with ggml's AMX kernels, which crash decoding Q8_0 models in this release"
    return None


def setup() -> Path:
    """Fetch, verify and extract the pinned sdist (idempotent)."""
    target = llama_dir()
    if _complete(target):
        return target
    root = toolchain_root()
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        print(f"toolchain: fetching {PACKAGE}=={VERSION} sdist from the package registry", file=sys.stderr)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-q",
             "-d", tmp, f"{PACKAGE}=={VERSION}"],
            check=True,
        )
        sdists = list(Path(tmp).glob("*.tar.gz"))
        if len(sdists) != 1:
            raise UserError(f"toolchain: expected one sdist from pip download, got {[p.name for p in sdists]}")
        digest = sha256_file(sdists[0])
        if digest != SDIST_SHA256:
            raise UserError(f"toolchain: {sdists[0].name} has sha256 {digest}, pinned {SDIST_SHA256}; refusing it")
        with atomic.atomic_dir(target) as out:
            _extract(sdists[0], out)
            (out / "toolchain.json").write_text(
                json.dumps({"package": PACKAGE, "version": VERSION, "sdist_sha256": digest}, indent=2) + "\n"
            )
            (out / ".complete").write_text(_completion_text())
    print(f"toolchain: llama.cpp from {PACKAGE}=={VERSION} ready in {target}", file=sys.stderr)
    return target


def _completion_text() -> str:
    return identity() + "\n" + "".join(f"{w}\n" for w in WANTED)


def _complete(target: Path) -> bool:
    """Extracted from the pinned sdist with every part in WANTED (a tree from an older WANTED is not)."""
    marker = target / ".complete"
    if not marker.is_file():
        return False
    lines = marker.read_text(encoding="utf-8").splitlines()
    return bool(lines) and lines[0] == identity() and set(WANTED) <= set(lines[1:]) | {
        w for w in WANTED if (target / w.rstrip("/")).exists()}


def _extract(sdist: Path, out: Path) -> None:
    with tarfile.open(sdist) as tar:
        for member in tar.getmembers():
            parts = member.name.split("/", 3)  # <pkg>/vendor/llama.cpp/<rest>
            if len(parts) < 4 or parts[1:3] != ["vendor", "llama.cpp"]:
                continue
            rest = parts[3]
            if not any(rest == w or rest.startswith(w) for w in WANTED):
                continue
            if not (member.isfile() or member.isdir()):
                continue
            member.name = rest
            tar.extract(member, out, filter="data")


def main() -> int:
    try:
        if sys.argv[1:] == ["--check-build"]:  # make setup: exit 1 when the installed build must be rebuilt
            problem = build_problem()
            if problem:
                print(f"setup: the installed {PACKAGE} {problem}", file=sys.stderr)
            return 1 if problem else 0
        setup()
    except UserError as exc:
        print(f"modelmake: error: {exc}", file=sys.stderr)
        return 2
    except subprocess.CalledProcessError as exc:
        print(f"modelmake: error: toolchain: `{' '.join(exc.cmd)}` failed (exit {exc.returncode})", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
