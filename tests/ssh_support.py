"""A real OpenSSH server on 127.0.0.1 for the remote-source tests.

Debian's openssh-server and rsync are installed when missing (CI machines start without them);
each server runs as a plain process with a temporary host key, its own authorized_keys file
and a free high port, and is stopped by its own pid. Keys:
  - `key`: authorized, a normal login (rsync on PATH);
  - `norsync_key`: authorized with `environment="PATH=<empty dir>"`, so the remote has no
    rsync (nor anything else on PATH): the scp fallback must work with the SFTP subsystem;
  - `wrong_key`: not authorized.
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

SSHD = Path("/usr/sbin/sshd")
PACKAGES = {"openssh-server": SSHD, "openssh-client": Path("/usr/bin/ssh"), "rsync": Path("/usr/bin/rsync")}


def ensure_packages() -> None:
    """apt-get install what is missing (as the machine's root; CI runs as root)."""
    missing = [pkg for pkg, exe in PACKAGES.items() if not exe.exists()]
    if not missing:
        return
    if os.geteuid() != 0:
        raise RuntimeError(f"the SSH tests need {', '.join(missing)}: apt-get install -y {' '.join(missing)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing]
    if subprocess.run(cmd, env=env, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=True, capture_output=True)
        subprocess.run(cmd, env=env, check=True, capture_output=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def keygen(path: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path)], check=True)
    return path.with_suffix(".pub").read_text().strip()


class SshServer:
    """sshd -D -e on 127.0.0.1:<free port>; see the module docstring for the keys."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.user = getpass.getuser()
        self.port = free_port()
        host_pub = keygen(root / "ssh_host_ed25519_key")
        self.key, self.norsync_key, self.wrong_key = root / "id_test", root / "id_norsync", root / "id_wrong"
        pub, norsync_pub = keygen(self.key), keygen(self.norsync_key)
        keygen(self.wrong_key)
        empty = root / "empty-path"
        empty.mkdir()
        (root / "authorized_keys").write_text(f'{pub}\nenvironment="PATH={empty}" {norsync_pub}\n')
        self.known_hosts = root / "known_hosts"
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {host_pub}\n")
        self.config = root / "sshd_config"
        self.config.write_text(f"""\
ListenAddress 127.0.0.1
HostKey {root}/ssh_host_ed25519_key
PidFile {root}/sshd.pid
AuthorizedKeysFile {root}/authorized_keys
StrictModes no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UsePAM no
PermitUserEnvironment PATH
Subsystem sftp internal-sftp
MaxStartups 50
LogLevel VERBOSE
""")
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation directory
        self.log = root / "sshd.log"
        self._log_fh = open(self.log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [str(SSHD), "-D", "-e", "-f", str(self.config), "-p", str(self.port)],
            stdout=self._log_fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        self._wait_ready()

    def ssh(self, *command: str, key: Path | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["ssh", "-p", str(self.port), "-i", str(key or self.key), "-o", "IdentitiesOnly=yes",
             "-o", "BatchMode=yes", "-o", f"UserKnownHostsFile={self.known_hosts}",
             "-o", "StrictHostKeyChecking=yes", f"{self.user}@127.0.0.1", *command],
            capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
        )

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd exited ({self.proc.returncode}): {self.log.read_text()[-2000:]}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    break
            time.sleep(0.1)
        result = self.ssh("echo", "ready")
        if result.stdout.strip() != "ready":
            raise RuntimeError(f"cannot log in to the test sshd: {result.stderr}\n{self.log.read_text()[-2000:]}")

    def url(self, path: Path | str) -> str:
        return f"ssh://{self.user}@127.0.0.1:{self.port}{path}"

    def source(self, path: Path | str, key: Path | None = None, **extra: str) -> str:
        """A models.toml inline table for a directory on this server."""
        fields = [f'ssh = "{self.url(path)}"', f'key = "{key or self.key}"', f'known_hosts = "{self.known_hosts}"']
        fields += [f"{k} = {v}" for k, v in extra.items()]
        return "{ " + ", ".join(fields) + " }"

    def server_rsync_pids(self) -> list[int]:
        """`rsync --server` processes started by this sshd (the remote end of a transfer)."""
        children: dict[int, list[int]] = {}
        for d in Path("/proc").iterdir():
            if d.name.isdigit():
                try:
                    ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
                children.setdefault(ppid, []).append(int(d.name))
        todo, found = [self.proc.pid], []
        while todo:
            pid = todo.pop()
            for child in children.get(pid, []):
                todo.append(child)
                try:
                    cmdline = (Path("/proc") / str(child) / "cmdline").read_bytes().split(b"\0")
                except OSError:
                    continue
                if cmdline and cmdline[0].endswith(b"rsync") and b"--server" in cmdline:
                    found.append(child)
        return found

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log_fh.close()


def write_sha256sums(directory: Path, names: list[str] | None = None) -> None:
    """`sha256sum` format, as a training box would write it next to its results."""
    from tasks.core.hashing import sha256_file

    names = names or sorted(p.name for p in directory.iterdir() if p.is_file() and p.name != "SHA256SUMS")
    lines = "".join(f"{sha256_file(directory / n)}  {n}\n" for n in names)
    (directory / "SHA256SUMS").write_text(lines)


def copy_adapter(src: Path, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copy2(src / name, dest / name)
    return dest
