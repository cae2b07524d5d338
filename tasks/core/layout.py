"""Where everything lives: the one owner of every path under artifacts/ (and of the repo's own inputs).

Stage definitions, builders, deploy commands and the lock ask here instead of joining path pieces
themselves, so the on-disk layout can be read (and changed) in one place:

    artifacts/
      <model>/merged/  <model>-<type>.gguf  adapter.json  check.json  Modelfile  lmstudio.json ...
      <model>/manifests/<stage>.json        one per stage (tasks/core/manifest.py owns their format)
      <model>/<model>-lora-<type>.gguf      adapter (and both) mode: the LoRA adapter as GGUF
      bases/<base id>/base-<type>.gguf      adapter mode: the base's own GGUFs, shared by every model on it
      bases/<base id>/manifests/<stage>.json
      fixtures/<name>/  fixtures/manifests/<name>.json
      sources/<model>/<role>/  sources/<model>/manifests/<role>.json
      report/<model>.{json,md,png}  report/compare.{json,md}  report/manifests/
      logs/<model>/<stage>.log      run/<model>/ (server pid, health report: runtime state, never built)
      .cache/hashes.sqlite3         derived state: safe to delete
      .cache/runs/                  local run-cache: earlier outputs by stage key (tasks/cache, LRU-bounded)
      .cache/restored/<task>.json   which stages the last build restored from a cache (for the summary)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
EVAL_SAMPLES = REPO / "eval_samples.jsonl"  # the shared prompt set of check and report
FIXTURE_DATA = REPO / "tasks" / "fixtures" / "data"
# The general text every importance matrix is calibrated on unless models.toml names other data.
DEFAULT_CALIBRATION = REPO / "tasks" / "gguf" / "data" / "calibration.txt"
DEFAULT_TEMPLATES = REPO / "templates"
COMPARE = "_compare"  # not a valid model name, so report:_compare never collides with report:<model>


@dataclass(frozen=True)
class ArtifactLayout:
    """Paths under one artifacts root (models.toml [build] artifacts)."""

    root: Path

    # ---- per model ----------------------------------------------------------------------------
    def model_dir(self, model: str) -> Path:
        return self.root / model

    def merged(self, model: str) -> Path:
        return self.root / model / "merged"

    def gguf(self, model: str, gtype: str) -> Path:
        return self.root / model / f"{model}-{gtype}.gguf"

    def lora_gguf(self, model: str, gtype: str) -> Path:
        return self.root / model / f"{model}-lora-{gtype}.gguf"

    def imatrix(self, model: str) -> Path:
        """The importance matrix computed for the model (llama.cpp's GGUF imatrix format)."""
        return self.root / model / f"{model}.imatrix.gguf"

    def model_file(self, model: str, name: str) -> Path:
        """A file directly in the model's directory (adapter.json, check.json, rendered files)."""
        return self.root / model / name

    def manifests(self, model: str) -> Path:
        return self.root / model / "manifests"

    def manifest(self, model: str, stage: str) -> Path:
        return self.manifests(model) / f"{stage}.json"

    def log(self, group: str, name: str) -> Path:
        """logs/<model or group>/<name>.log"""
        return self.root / "logs" / group / f"{name}.log"

    def run_dir(self, model: str) -> Path:
        """Runtime state of a deployed model (pid file, health report): never build output."""
        return self.root / "run" / model

    # ---- the shared base GGUFs of adapter mode ----------------------------------------------------
    def base_dir(self, base_id: str) -> Path:
        return self.root / "bases" / base_id

    def base_gguf(self, base_id: str, gtype: str) -> Path:
        return self.root / "bases" / base_id / f"base-{gtype}.gguf"

    def base_manifest(self, base_id: str, stage: str) -> Path:
        return self.root / "bases" / base_id / "manifests" / f"{stage}.json"

    # ---- fixtures, fetched sources, reports ----------------------------------------------------
    def fixture(self, name: str) -> Path:
        return self.root / "fixtures" / name

    def fixture_manifest(self, name: str) -> Path:
        return self.root / "fixtures" / "manifests" / f"{name}.json"

    def source(self, model: str, role: str) -> Path:
        """The verified snapshot of a remote base or adapter."""
        return self.root / "sources" / model / role

    def source_manifest(self, model: str, role: str) -> Path:
        return self.root / "sources" / model / "manifests" / f"{role}.json"

    def report_dir(self) -> Path:
        return self.root / "report"

    def report_manifest(self, name: str) -> Path:
        return self.root / "report" / "manifests" / f"{name}.json"

    # ---- derived state ---------------------------------------------------------------------------
    def cache_dir(self) -> Path:
        return self.root / ".cache"

    def hash_db(self) -> Path:
        return self.cache_dir() / "hashes.sqlite3"

    def run_cache(self) -> Path:
        return self.cache_dir() / "runs"

    def restored_marker(self, task: str) -> Path:
        return self.cache_dir() / "restored" / (task.replace(":", "--") + ".json")

    def incoming(self) -> Path:
        """Downloads from a cache land here (same filesystem as the artifacts) until verified."""
        return self.cache_dir() / "incoming"

    def rel(self, path: Path) -> str:
        """`path` relative to the root, as manifests record it (raises ValueError outside the root)."""
        return path.resolve().relative_to(self.root).as_posix()
