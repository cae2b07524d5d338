"""A cache in any storage fsspec reaches: s3:// (s3fs), gs:// (gcsfs), hf:// (huggingface_hub), ...

Object stores make a single PUT visible whole, so blobs and the entry are written straight to their
names there (entry last); other filesystems get a temporary name and a rename.
"""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path
from typing import Any

from tasks.cache.backends import Backend, CacheUnavailable, blob_rel, entry_rel
from tasks.core.errors import UserError
from tasks.core.hashing import CHUNK

ATOMIC_PUT = {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "hf"}


class FsspecBackend(Backend):
    def __init__(self, url: str, options: dict[str, Any]) -> None:
        import fsspec

        self.url = url
        self.moved = 0
        try:
            self.fs, self.root = fsspec.core.url_to_fs(url, **options)
        except ImportError as exc:
            raise UserError(f"cache {url}: {str(exc).splitlines()[0]}") from None
        except (ValueError, TypeError) as exc:
            raise UserError(f"cache {url}: {exc}") from None
        protocol = self.fs.protocol
        self.atomic_put = bool(set(protocol if isinstance(protocol, (list, tuple)) else [protocol]) & ATOMIC_PUT)

    def _p(self, rel: str) -> str:
        return f"{self.root.rstrip('/')}/{rel}"

    def _fail(self, exc: Exception) -> CacheUnavailable:
        return CacheUnavailable(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".strip())

    def read_entry(self, key: str) -> bytes | None:
        try:
            return self.fs.cat_file(self._p(entry_rel(key)))
        except FileNotFoundError:
            return None
        except Exception as exc:  # noqa: BLE001 - any client error means "cache unavailable", one line
            raise self._fail(exc) from None

    def fetch(self, shas: list[str], dest: Path) -> dict[str, tuple[str, int]]:
        got = {}
        for sha in shas:
            h, size = hashlib.sha256(), 0
            try:
                with self.fs.open(self._p(blob_rel(sha)), "rb", block_size=CHUNK) as src, open(dest / sha, "wb") as out:
                    while chunk := src.read(CHUNK):
                        h.update(chunk)
                        out.write(chunk)
                        size += len(chunk)
            except FileNotFoundError:
                (dest / sha).unlink(missing_ok=True)
                continue
            except Exception as exc:  # noqa: BLE001
                raise self._fail(exc) from None
            got[sha] = (h.hexdigest(), size)
            self.moved += size
        return got

    def missing(self, shas: list[str]) -> set[str]:
        try:
            return {s for s in shas if not self.fs.exists(self._p(blob_rel(s)))}
        except Exception as exc:  # noqa: BLE001
            raise self._fail(exc) from None

    def _put(self, local: Path | None, data: bytes | None, rel: str) -> None:
        final = self._p(rel)
        target = final if self.atomic_put else self._p(f"tmp/{rel.rsplit('/', 1)[-1]}.{uuid.uuid4().hex[:8]}")
        if not self.atomic_put:
            self.fs.makedirs(final.rsplit("/", 1)[0], exist_ok=True)
            self.fs.makedirs(self._p("tmp"), exist_ok=True)
        if local is not None:
            self.fs.put_file(str(local), target)
        else:
            self.fs.pipe_file(target, data)
        if target != final:
            self.fs.mv(target, final)

    def upload(self, blobs: dict[str, Path], key: str, entry: bytes) -> None:
        try:
            for sha, path in sorted(blobs.items()):
                self._put(path, None, blob_rel(sha))
                self.moved += path.stat().st_size
            self._put(None, entry, entry_rel(key))
        except Exception as exc:  # noqa: BLE001
            raise self._fail(exc) from None
