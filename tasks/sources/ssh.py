"""Fetch a directory from an SSH host: probe, rsync (scp when rsync is missing), verify.

The probe is one ssh round trip that needs nothing on the remote but /bin/sh builtins: it
tells whether the path exists, whether the role's required file is there (a training run still
uploading has no adapter_config.json yet), whether the remote has rsync, and returns the
checksum manifest. Only the files the manifest (or models.toml) lists are transferred, so a
run directory full of checkpoints costs nothing extra.

rsync runs with `--partial-dir`, so an interrupted file is kept in staging and the next run
sends only what is missing (delta transfer against the partial file); `-t` keeps the remote
mtimes, so unchanged files are skipped by rsync's quick check. scp has no resume: it copies
each file that is not already staged with the right digest, into a temporary name first.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from tasks.core import atomic, procs
from tasks.core.config.remote import HEX64_RE, REQUIRED_FILES, SshRemote, check_file_name
from tasks.core.errors import UserError
from tasks.core.hashing import cache_for
from tasks.sources.staging import PARTIAL_DIR, Download, Unreachable, prune, verify

CONNECT_TIMEOUT = 10  # seconds; an unreachable host fails fast instead of hanging the build
IO_TIMEOUT = 120  # rsync --timeout: no data for this long = a dead connection
PROBE_TAG = "modelmake-probe"
# ssh's own messages, in the order they are checked: the first match explains the failure.
SSH_FAILURES = (
    ("Permission denied", "authentication failed ({key}): the host refused the key"),
    ("Host key verification failed", "host key verification failed: the host's key is not the one in {known}"),
    ("REMOTE HOST IDENTIFICATION HAS CHANGED", "the host's key changed since it was recorded in {known}"),
    ("Could not resolve hostname", "host unreachable: cannot resolve {host}"),
    ("Connection refused", "host unreachable: connection refused by {host}:{port}"),
    ("Connection timed out", "host unreachable: connection to {host}:{port} timed out"),
    ("No route to host", "host unreachable: no route to {host}"),
    ("Network is unreachable", "host unreachable: network is unreachable"),
    ("Connection closed", "connection closed by {host}:{port} during login"),
    ("Identity file", "key file problem: {line}"),
    ("Load key", "cannot load key {key}: {line}"),
)


def ssh_options(remote: SshRemote) -> list[str]:
    """Options shared by ssh, rsync's -e and scp: batch mode, fast failure, the configured key."""
    opts = [
        "-o", "BatchMode=yes", "-o", f"ConnectTimeout={CONNECT_TIMEOUT}",
        "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=4", "-o", "LogLevel=ERROR",
    ]
    if remote.key is not None:
        opts += ["-i", str(remote.key), "-o", "IdentitiesOnly=yes"]
    if remote.known_hosts is not None:
        opts += ["-o", f"UserKnownHostsFile={remote.known_hosts}", "-o", "StrictHostKeyChecking=yes"]
    else:
        # Rented GPU boxes come and go: trust a new host on first use, refuse a changed key.
        opts += ["-o", "StrictHostKeyChecking=accept-new"]
    return opts


def ssh_command(remote: SshRemote) -> list[str]:
    return ["ssh", "-p", str(remote.port), *ssh_options(remote)]


def explain_ssh_failure(remote: SshRemote, stderr: str) -> str:
    """One line for what ssh printed when it could not connect or log in."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    for needle, message in SSH_FAILURES:
        for line in lines:
            if needle in line:
                return message.format(
                    key=remote.key or "default keys", known=remote.known_hosts or "~/.ssh/known_hosts",
                    host=remote.host, port=remote.port, line=line,
                )
    return f"ssh failed: {lines[-1] if lines else 'no message'}"


# ---- probe -------------------------------------------------------------------------------------
def probe_script(remote: SshRemote, role: str) -> str:
    """A /bin/sh script using builtins only (it must work on a host whose PATH lacks everything)."""
    q = shlex.quote
    lines = [
        f"cd -- {q(remote.path)} 2>/dev/null || {{ echo '{PROBE_TAG} nopath'; exit 0; }}",
        f"if command -v rsync >/dev/null 2>&1; then echo '{PROBE_TAG} rsync yes'; "
        f"else echo '{PROBE_TAG} rsync no'; fi",
    ]
    for name in REQUIRED_FILES[role]:
        lines.append(f"[ -f {q(name)} ] || echo '{PROBE_TAG} missing '{q(name)}")
    if not remote.sha256:
        lines.append(
            f"if [ -f {q(remote.manifest)} ]; then echo '{PROBE_TAG} manifest'; "
            f"while IFS= read -r l || [ -n \"$l\" ]; do printf 'M %s\\n' \"$l\"; done < {q(remote.manifest)}; fi"
        )
    lines.append(f"echo '{PROBE_TAG} end'")
    return "\n".join(lines)


def probe(remote: SshRemote, role: str) -> tuple[bool, dict[str, str] | None]:
    """(remote has rsync, manifest digests or None when pinned); UserError on any problem."""
    cmd = [*ssh_command(remote), remote.destination, "/bin/sh -c " + shlex.quote(probe_script(remote, role))]
    try:
        proc = procs.run(
            cmd, capture_output=True, text=True, timeout=CONNECT_TIMEOUT * 3, stdin=subprocess.DEVNULL
        )
    except FileNotFoundError:
        raise Unreachable("ssh client not found (install openssh-client)") from None
    except subprocess.TimeoutExpired:
        raise Unreachable(
            f"host unreachable: no answer from {remote.host}:{remote.port} in {CONNECT_TIMEOUT * 3}s"
        ) from None
    out = proc.stdout.splitlines()
    if f"{PROBE_TAG} end" not in out and f"{PROBE_TAG} nopath" not in out:
        raise Unreachable(explain_ssh_failure(remote, proc.stderr))
    if f"{PROBE_TAG} nopath" in out:
        raise UserError(f"remote path not found: {remote.path}")
    missing = [ln.split(" ", 2)[2] for ln in out if ln.startswith(f"{PROBE_TAG} missing ")]
    if missing:
        raise UserError(
            f"remote directory is incomplete: no {', '.join(missing)} in {remote.path} "
            "(still uploading, or not a finished run?)"
        )
    has_rsync = f"{PROBE_TAG} rsync yes" in out
    if remote.sha256:
        return has_rsync, None
    if f"{PROBE_TAG} manifest" not in out:
        raise UserError(
            f"no checksum manifest: {remote.manifest} is not in {remote.path} and models.toml pins no sha256 "
            "(write one with `sha256sum * > SHA256SUMS` on the remote, or pin sha256 = {...})"
        )
    return has_rsync, parse_manifest([ln[2:] for ln in out if ln.startswith("M ")], remote.manifest)


def parse_manifest(lines: list[str], name: str) -> dict[str, str]:
    """`sha256sum` output: '<64 hex>  <file>' or '<64 hex> *<file>' per line."""
    digests: dict[str, str] = {}
    for i, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        m = re.match(r"^([0-9a-fA-F]{64}) [ *](.+)$", line.rstrip("\r"))
        if not m:
            raise UserError(f"{name} line {i}: expected '<sha256>  <file>', got {line[:80]!r}")
        file = m.group(2).strip()
        file = file[2:] if file.startswith("./") else file
        check_file_name(file, name, f"line {i}")
        digests[file] = m.group(1).lower()
    if not digests:
        raise UserError(f"{name} lists no files")
    return {k: v for k, v in digests.items() if k != name}


# ---- transfer ----------------------------------------------------------------------------------
def _rsync(remote: SshRemote, staging: Path, names: list[str], log: Callable[[str], None]) -> dict[str, int]:
    listing = atomic.temp_name(staging / "files-from")
    listing.write_text("".join(n + "\n" for n in names), encoding="utf-8")
    cmd = [
        "rsync", "-t", f"--partial-dir={PARTIAL_DIR}", f"--files-from={listing}", f"--timeout={IO_TIMEOUT}",
        "--stats", "--no-motd", "-e", shlex.join(ssh_command(remote)),
    ]
    if remote.bwlimit:
        cmd.append(f"--bwlimit={remote.bwlimit}")
    cmd += [f"{remote.destination}:{remote.path}/", f"{staging}/"]
    try:
        proc = procs.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                              env={**os.environ, "LC_ALL": "C"})
    finally:
        listing.unlink(missing_ok=True)
    if proc.returncode not in (0, 23, 24):  # 23/24: some files missing/vanished, reported below
        tail = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        if any(needle in proc.stderr for needle, _ in SSH_FAILURES[:4]):
            raise UserError(explain_ssh_failure(remote, proc.stderr))
        raise UserError(
            f"transfer interrupted (rsync exit {proc.returncode}: {tail[-1] if tail else 'no message'}); "
            f"partial data kept in {staging / PARTIAL_DIR}: run the build again to resume"
        )
    stats = {}
    for key, label in (("received", "Total bytes received"), ("literal", "Literal data"),
                       ("matched", "Matched data"), ("files_transferred", "Number of regular files transferred"),
                       ("total_size", "Total file size")):
        m = re.search(rf"^{label}: ([\d,]+)", proc.stdout, re.M)
        if m:
            stats[key] = int(m.group(1).replace(",", ""))
    log(f"rsync: {stats.get('files_transferred', '?')} file(s) transferred, "
        f"{stats.get('received', '?')} bytes received, {stats.get('matched', 0)} bytes matched locally")
    return stats


def _scp(remote: SshRemote, staging: Path, expected: dict[str, str], artifacts: Path,
         log: Callable[[str], None]) -> dict[str, int]:
    """Copy each file not already staged with its expected digest; no resume (scp cannot)."""
    cache = cache_for(artifacts)
    received = copied = 0
    for name, want in sorted(expected.items()):
        dest = staging / name
        if dest.is_file() and cache.sha256(dest) == want:
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = atomic.temp_name(dest)
        base = ["scp", "-q", "-p", "-P", str(remote.port), *ssh_options(remote)]
        src = f"{remote.destination}:{remote.path}/{name}"
        proc = procs.run([*base, src, str(tmp)], capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if proc.returncode != 0 and "subsystem" in proc.stderr.lower():
            # No SFTP server on the remote: the legacy protocol needs only `scp` there.
            proc = procs.run([*base, "-O", src, str(tmp)], capture_output=True, text=True,
                                  stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            tmp.unlink(missing_ok=True)
            if "No such file" in proc.stderr:
                continue  # reported as "not fetched" by verify()
            raise UserError(f"scp of {name} failed: {explain_ssh_failure(remote, proc.stderr)}")
        os.replace(tmp, dest)
        received += dest.stat().st_size
        copied += 1
    log(f"scp: {copied} file(s) copied, {received} bytes received")
    return {"received": received, "files_transferred": copied}


def download(remote: SshRemote, staging: Path, role: str, artifacts: Path, log: Callable[[str], None]) -> Download:
    """Bring the source's listed files into `staging` and verify them (see module docstring)."""
    has_rsync, manifest = probe(remote, role)
    expected = dict(remote.sha256) if remote.sha256 else manifest or {}
    origin = "sha256 pinned in models.toml" if remote.sha256 else f"{remote.manifest} on the remote"
    for name, digest in expected.items():
        if not HEX64_RE.match(digest):
            raise UserError(f"{origin}: {name}: not a sha256 digest")
    absent = [n for n in REQUIRED_FILES[role] if n not in expected]
    if absent:
        raise UserError(f"{origin} does not list {', '.join(absent)}: nothing to fetch as the {role}")
    prune(staging, set(expected))
    if has_rsync and shutil.which("rsync"):
        method, stats = "rsync", _rsync(remote, staging, sorted(expected), log)
    else:
        where = "remote" if shutil.which("rsync") else "local machine"
        log(f"rsync is missing on the {where}: falling back to scp (no resume)")
        method, stats = "scp", _scp(remote, staging, expected, artifacts, log)
    verify(staging, expected, artifacts, origin)
    return Download(method=method, files=dict(sorted(expected.items())), verified_against=origin, transfer=stats)
