"""File transfer for ``device.adb.AdbSession``: push (reuse by sha256, atomic, verified), pull, remove.

The sync protocol's SEND and RECV are framed here over an adbutils transport connection
(``AdbDevice.open_transport()`` + ``sync:``) rather than through ``AdbDevice.sync.push``/``pull``,
for three things adbutils 2.12 does not give: progress callbacks, the device's FAIL text (adbutils
raises a bare "FAIL"), and bounded waits (its sync connections have no timeout). Chunks are 64 KiB,
the protocol's maximum. A push that the device refuses mid-way (a full disk) stops sending at once.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import select
import stat
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ContextManager, Literal, Protocol, Sequence

from edge_sdk.errors import DeviceError, InputError
from edge_sdk.hashing import sha256_file

SYNC_DATA_MAX = 64 * 1024
PARTIAL_SUFFIX = ".partial"
Progress = Callable[[int, int], None]


class AdbSession(Protocol):
    """What the file half needs of ``device.AdbSession`` (named here, so this module does not import
    the one that imports it)."""
    timeout: float

    def shell(self, serial: str, argv: Sequence[str], *, timeout: float | None = ...) -> Any: ...
    def run(self, serial: str, argv: Sequence[str]) -> Any: ...
    def errors(self, what: str, serial: str) -> ContextManager[None]: ...
    def adb_device(self, serial: str) -> Any: ...


@dataclass(frozen=True)
class PushResult:
    local_path: str
    remote_path: str
    size: int
    sha256: str
    status: Literal["pushed", "reused"]


def check_remote_path(remote_path: str) -> str:
    """Remote paths are absolute POSIX paths naming a file: no NUL, newline or trailing '/'."""
    p = str(remote_path)
    if not p.startswith("/") or p.endswith("/") or any(c in p for c in "\0\n\r"):
        raise InputError(f"remote path {p!r} must be an absolute file path on the device "
                         "without newlines", fix="use e.g. /data/local/tmp/model.tflite")
    return p


def remote_sha256(session: "AdbSession", serial: str, remote: str) -> str | None:
    """sha256 of a device file, or None when it does not exist."""
    if not _remote_mode(session, serial, remote):
        return None
    # via stdin: GNU sha256sum escapes names holding '\\' or a newline; "$1" stays one word
    r = session.shell(serial, ["sh", "-c", 'sha256sum < "$1"', "sh", remote])
    digest = r.stdout.split()[0].lower() if r.stdout.split() else ""
    if r.exit_code == 127:
        raise DeviceError(f"device {serial} has no sha256sum (toybox, Android 8+)",
                          fix="use a device with Android 8 or newer")
    if r.exit_code != 0 or len(digest) != 64:
        raise DeviceError(f"sha256sum {remote} on {serial} failed: "
                          f"{(r.stderr or r.stdout).strip() or f'exit code {r.exit_code}'}")
    return digest


def push(session: "AdbSession", serial: str, local_path: str | os.PathLike, remote_path: str,
         *, progress: Progress | None = None, mode: int = 0o644) -> PushResult:
    remote = check_remote_path(remote_path)
    local = Path(local_path)
    try:
        size = local.stat().st_size
        digest = sha256_file(local)
    except OSError as e:
        raise InputError(f"cannot read the file to push: {e.strerror}", path=local) from e
    partial = remote + PARTIAL_SUFFIX
    if remote_sha256(session, serial, remote) == digest:
        if _remote_mode(session, serial, partial):  # a leftover of an earlier, failed push
            _best_effort_rm(session, serial, partial)
        if progress:
            progress(size, size)
        return PushResult(str(local), remote, size, digest, "reused")
    try:
        _send_file(session, serial, local, partial, size, mode, progress)
        session.run(serial, ["mv", "-f", partial, remote])
        after = remote_sha256(session, serial, remote)
        if after != digest:
            _best_effort_rm(session, serial, remote)
            raise DeviceError(f"{remote} on {serial} has sha256 {after} after the push, "
                              f"expected {digest}: the transfer was corrupted", path=local,
                              fix="retry; check the cable and the device's storage")
    except DeviceError:
        _best_effort_rm(session, serial, partial)
        raise
    return PushResult(str(local), remote, size, digest, "pushed")


def pull(session: "AdbSession", serial: str, remote_path: str, local_path: str | os.PathLike,
         *, progress: Progress | None = None) -> int:
    remote = check_remote_path(remote_path)
    local = Path(local_path)
    mode, size = _sync_stat(session, serial, remote)  # size: 32 bits in STAT v1, progress only
    if not stat.S_ISREG(mode):
        raise DeviceError(f"{remote} is not a file on {serial}", fix="check the path")
    tmp = local.with_name(local.name + PARTIAL_SUFFIX)
    try:
        with open(tmp, "wb") as out:
            _recv_file(session, serial, remote, out, size, progress)
        os.replace(tmp, local)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return local.stat().st_size


def remove(session: "AdbSession", serial: str, remote_path: str, *,
           recursive: bool = False) -> None:
    remote = check_remote_path(remote_path)
    if posixpath.normpath(remote) in ("/", "/data", "/sdcard", "/data/local", "/data/local/tmp"):
        raise InputError(f"refusing to remove {remote} on the device")
    session.run(serial, ["rm", "-rf" if recursive else "-f", remote])


# ---------------------------------------------------------------------- sync framing
def _sync_stat(session: "AdbSession", serial: str, remote: str) -> tuple[int, int]:
    with session.errors(f"stat {remote}", serial), _sync(session, serial) as c:
        path = remote.encode()
        c.conn.sendall(b"STAT" + struct.pack("<I", len(path)) + path)
        rid, mode, size, _mtime = struct.unpack("<4sIII", c.read_exact(16))
        if rid != b"STAT":
            raise DeviceError(f"unexpected sync reply {rid!r} to STAT {remote} on {serial}")
        return mode, size


def _remote_mode(session: "AdbSession", serial: str, remote: str) -> int:
    return _sync_stat(session, serial, remote)[0]


@contextlib.contextmanager
def _sync(session: "AdbSession", serial: str):
    c = session.adb_device(serial).open_transport(timeout=session.timeout)
    try:
        c.send_command("sync:")
        c.check_okay()
        yield c
        with contextlib.suppress(OSError):
            c.conn.sendall(b"QUIT" + bytes(4))
    finally:
        c.close()


def _read_fail(c, what: str, serial: str) -> DeviceError:
    (n,) = struct.unpack("<I", c.read_exact(4))
    message = c.read_exact(min(n, 4096)).decode("utf-8", "replace")
    fix = ("free space on the device (adb shell df /data)" if "No space" in message else None)
    return DeviceError(f"device {serial} refused {what}: {message}", fix=fix)


def _send_file(session: "AdbSession", serial: str, local: Path, remote: str, size: int,
               mode: int, progress: Progress | None) -> None:
    what = f"the push of {local.name} to {remote}"
    with session.errors(f"pushing {local} to {remote}", serial), _sync(session, serial) as c:
        sock = c.conn
        spec = f"{remote},{stat.S_IFREG | (mode & 0o7777)}".encode()
        sock.sendall(b"SEND" + struct.pack("<I", len(spec)) + spec)
        done, answered = 0, False
        with open(local, "rb") as f:
            while block := f.read(SYNC_DATA_MAX):
                sock.sendall(b"DATA" + struct.pack("<I", len(block)) + block)
                done += len(block)
                if progress:
                    progress(done, size)
                if select.select([sock], [], [], 0)[0]:  # the device spoke early: a refusal
                    answered = True
                    break
        if not answered:
            sock.sendall(b"DONE" + struct.pack("<I", int(time.time()) & 0xFFFFFFFF))
        rid = c.read_exact(4)
        if rid == b"FAIL":
            raise _read_fail(c, what, serial)
        if rid != b"OKAY" or answered:
            raise DeviceError(f"unexpected sync reply {rid!r} during {what} on {serial}")
        c.read_exact(4)


def _recv_file(session: "AdbSession", serial: str, remote: str, out, size: int,
               progress: Progress | None) -> None:
    with session.errors(f"pulling {remote}", serial), _sync(session, serial) as c:
        path = remote.encode()
        c.conn.sendall(b"RECV" + struct.pack("<I", len(path)) + path)
        done = 0
        while True:
            rid = c.read_exact(4)
            if rid == b"DONE":
                c.read_exact(4)
                return
            if rid == b"FAIL":
                raise _read_fail(c, f"the pull of {remote}", serial)
            if rid != b"DATA":
                raise DeviceError(f"unexpected sync reply {rid!r} while pulling {remote}")
            (n,) = struct.unpack("<I", c.read_exact(4))
            out.write(c.read_exact(n))
            done += n
            if progress:
                progress(done, max(size, done))


def _best_effort_rm(session: "AdbSession", serial: str, remote: str) -> None:
    """Remove a leftover; quiet when the device is gone (then there is nothing we can do)."""
    with contextlib.suppress(DeviceError):
        session.shell(serial, ["rm", "-f", remote], timeout=10.0)
