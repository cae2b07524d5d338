"""A cache directory on an SSH host, through the SSH source's own connection code (tasks.sources.ssh).

Each operation is one ssh connection that needs only /bin/sh, cat, tar and mv on the remote:
reading an entry is `cat`, fetching blobs is one `tar` stream hashed as it is unpacked, and an
upload is one `tar` stream unpacked into <root>/tmp/<unique>/, whose blobs and then entry are
renamed into place by `mv` on the remote (a rename inside one filesystem), so no reader ever
sees half an upload.
"""

from __future__ import annotations

import hashlib
import shlex
import subprocess
import tarfile
import uuid
from pathlib import Path

from tasks.cache.backends import Backend, CacheUnavailable, blob_rel, entry_rel
from tasks.core import procs
from tasks.core.config.remote import SshRemote
from tasks.core.hashing import CHUNK
from tasks.sources.ssh import CONNECT_TIMEOUT, explain_ssh_failure, ssh_command

MISSING_RC = 3  # our "not in the cache" exit status (ssh itself uses 255)


class SshBackend(Backend):
    def __init__(self, remote: SshRemote) -> None:
        self.remote = remote
        self.url = remote.url
        self.moved = 0

    def _cmd(self, script: str) -> list[str]:
        return [*ssh_command(self.remote), self.remote.destination, "/bin/sh -c " + shlex.quote(script)]

    def _run(self, script: str, data: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        try:
            proc = procs.run(self._cmd(script), input=data, capture_output=True,
                             timeout=max(CONNECT_TIMEOUT * 3, 600))
        except FileNotFoundError:
            raise CacheUnavailable("ssh client not found (install openssh-client)") from None
        except subprocess.TimeoutExpired:
            raise CacheUnavailable(f"no answer from {self.remote.host}:{self.remote.port}") from None
        if proc.returncode == 255:
            raise CacheUnavailable(explain_ssh_failure(self.remote, proc.stderr.decode(errors="replace")))
        return proc

    def _path(self, rel: str) -> str:
        return shlex.quote(f"{self.remote.path}/{rel}")

    def read_entry(self, key: str) -> bytes | None:
        path = self._path(entry_rel(key))
        proc = self._run(f"[ -f {path} ] || exit {MISSING_RC}; touch {path} 2>/dev/null; cat {path}")
        if proc.returncode == MISSING_RC:
            return None
        if proc.returncode != 0:
            raise CacheUnavailable(f"cannot read the entry: {proc.stderr.decode(errors='replace').strip()[-200:]}")
        return proc.stdout

    def fetch(self, shas: list[str], dest: Path) -> dict[str, tuple[str, int]]:
        names = " ".join(shlex.quote(blob_rel(s)) for s in shas)
        # Missing blobs are left out of the stream (the caller then refuses the entry).
        script = (f"cd {shlex.quote(self.remote.path)} || exit {MISSING_RC}; set --; "
                  f"for f in {names}; do [ -f \"$f\" ] && set -- \"$@\" \"$f\"; done; "
                  f"[ $# -gt 0 ] || exit 0; exec tar cf - \"$@\"")
        got: dict[str, tuple[str, int]] = {}
        try:
            proc = procs.spawn(self._cmd(script), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               stdin=subprocess.DEVNULL)
        except FileNotFoundError:
            raise CacheUnavailable("ssh client not found (install openssh-client)") from None
        assert proc.stdout is not None and proc.stderr is not None
        wanted = set(shas)
        try:
            with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
                for member in tar:
                    sha = member.name.rsplit("/", 1)[-1]
                    src = tar.extractfile(member) if member.isfile() else None
                    if sha not in wanted or src is None:
                        continue
                    h, size = hashlib.sha256(), 0
                    with open(dest / sha, "wb") as out:
                        while chunk := src.read(CHUNK):
                            h.update(chunk)
                            out.write(chunk)
                            size += len(chunk)
                    got[sha] = (h.hexdigest(), size)
                    self.moved += size
        except tarfile.ReadError:
            pass  # an empty stream (no blob there) or a cut connection: what arrived is checked below
        finally:
            proc.stdout.close()
            err = proc.stderr.read().decode(errors="replace")
            rc = proc.wait()
        if rc == 255:
            raise CacheUnavailable(explain_ssh_failure(self.remote, err))
        return got

    def missing(self, shas: list[str]) -> set[str]:
        if not shas:
            return set()
        names = " ".join(shlex.quote(blob_rel(s)) for s in shas)
        proc = self._run(f"cd {shlex.quote(self.remote.path)} 2>/dev/null || exit 0; "
                         f"for f in {names}; do [ -f \"$f\" ] && echo \"$f\"; done; exit 0")
        present = {ln.rsplit("/", 1)[-1] for ln in proc.stdout.decode().split()}
        return set(shas) - present

    def upload(self, blobs: dict[str, Path], key: str, entry: bytes) -> None:
        from io import BytesIO

        tmp = f"tmp/{uuid.uuid4().hex}"
        q = shlex.quote
        root = q(self.remote.path)
        moves = "".join(
            f"mkdir -p {q(blob_rel(s).rsplit('/', 1)[0])} && mv -f {q(tmp + '/' + s)} {q(blob_rel(s))} && "
            for s in sorted(blobs)
        )
        erel = entry_rel(key)
        script = (f"set -e; mkdir -p {root}/{tmp}; cd {root}; tar xf - -C {q(tmp)}; {moves}"
                  f"mkdir -p {q(erel.rsplit('/', 1)[0])}; mv -f {q(tmp + '/entry.json')} {q(erel)}; rm -rf {q(tmp)}")
        try:
            proc = procs.spawn(self._cmd(script), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
        except FileNotFoundError:
            raise CacheUnavailable("ssh client not found (install openssh-client)") from None
        assert proc.stdin is not None and proc.stderr is not None
        try:
            with tarfile.open(fileobj=proc.stdin, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                for sha, path in sorted(blobs.items()):
                    info = tar.gettarinfo(str(path), arcname=sha)
                    with open(path, "rb") as fh:
                        tar.addfile(info, fh)
                    self.moved += info.size
                info = tarfile.TarInfo("entry.json")
                info.size = len(entry)
                tar.addfile(info, BytesIO(entry))
        except BrokenPipeError:
            pass
        finally:
            proc.stdin.close()
        err = proc.stderr.read().decode(errors="replace")
        rc = proc.wait()
        if rc == 255:
            raise CacheUnavailable(explain_ssh_failure(self.remote, err))
        if rc != 0:
            raise CacheUnavailable(f"upload failed on {self.remote.host}: {err.strip()[-200:] or f'exit {rc}'}")
