"""A loopback adb *device* for tests: the adbd side of the adb transport protocol, on 127.0.0.1.

The real ``adb`` server reaches it with ``adb connect 127.0.0.1:PORT`` exactly as it reaches a phone
that ran ``adb tcpip``. Written from the AOSP protocol documents (protocol.txt, SYNC.TXT,
shell_protocol.h); nothing here is Android's code.

What it speaks
    transport  CNXN (no AUTH: the device answers the host's CNXN at once, like ``ro.adb.secure=0``;
               an AUTH packet is answered with CNXN too), OPEN / OKAY / WRTE / CLSE streams with the
               classic one-WRTE-in-flight flow control (no ``delayed_ack``), version 0x01000000 with
               payload checksums on everything it sends, max payload 256 KiB.
    services   ``shell,v2[,raw|,pty][,TERM=..]:CMD`` (shell protocol v2: stdin 0, stdout 1,
               stderr 2, exit 3, close-stdin 4, window-size 5), ``shell:CMD`` / ``exec:CMD``
               (raw, merged output), ``sync:`` (STAT, STA2, LST2, LIST, LIS2, SEND, RECV, QUIT;
               SEND makes parent dirs).
               Anything else is refused with CLSE and recorded in ``refused_services``.
               Without ``shell_v2`` in ``features`` (``features=V1_FEATURES``: older Android, the
               adbd of embedded Linux boards) the host falls back to the v1 shell: output and
               errors merged in one stream, no exit code.

Paths
    The device path ``/data/local/tmp`` is a real directory given at construction (``root``). Sync
    requests are translated (``/data/local/tmp/x`` -> ``root/x``); other absolute paths mean this
    machine's own paths, read-only (a SEND outside ``/data/local/tmp`` fails "Permission denied").
    Shell commands run ``/bin/sh -c CMD`` on this machine with cwd = ``root``, ``TMPDIR`` and
    ``ADB_LOOPBACK_ROOT`` = ``root``, after every occurrence of ``/data/local/tmp`` in the command
    string is replaced by ``root``. The device's ``python3`` is explicit: ``python`` (default: the
    interpreter running the tests, ``sys.executable``, so the device has the same packages however
    the tests were started) is first on the commands' PATH, as a ``python3`` wrapper in a private
    directory; ``python=None`` leaves PATH as it is. That textual rewrite is why ``root`` may only contain
    ``[A-Za-z0-9_./+-]``: then it means the same quoted or unquoted. A test device, not a sandbox.

Another machine's root filesystem (``sysroot=DIR, shell_argv=[...]``)
    The device is the system in ``DIR`` (scripts/arm64_device.sh's arm64 Debian root, run by qemu-user):
    ``/data/local/tmp`` is ``DIR/data/local/tmp``, any other absolute path is ``DIR`` + path (read-only),
    and a shell command runs as ``shell_argv + [CMD]`` on this machine (``arm64_device.sh exec CMD``:
    ``/bin/sh -c CMD`` chrooted into ``DIR``, cwd ``/data/local/tmp``), unrewritten: inside the root the
    device paths are real. ``python`` is not used (the root's own ``python3`` answers).
    ``python3 tests/adb_loopback.py --sysroot DIR --shell "scripts/arm64_device.sh exec" --port 5555``
    serves one until Ctrl-C.

Faults
    ``disconnect_after_bytes=N``  drop the TCP connection once N bytes of file data have arrived by
                                  SEND (one shot; the listener stays up, so the host can reconnect).
    ``fail_space_after_bytes=N``  a SEND whose file passes N bytes fails "No space left on device".
    ``keep_failed_sends=True``    leave the half-written file of a failed or cut SEND behind (adbd
                                  removes it; this lets a test see the host clean up by itself).
    ``kill()``                    vanish: listener and connections closed, every command killed.
    ``lifetime`` seconds          after which the device kills itself, should a test forget it.
"""

from __future__ import annotations

import errno
import os
import posixpath
import re
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

A_SYNC, A_CNXN, A_OPEN, A_OKAY = 0x434E5953, 0x4E584E43, 0x4E45504F, 0x59414B4F
A_CLSE, A_WRTE, A_AUTH, A_STLS = 0x45534C43, 0x45545257, 0x48545541, 0x534C5453
A_VERSION = 0x01000000
MAX_PAYLOAD = 256 * 1024
SYNC_DATA_MAX = 64 * 1024
DEVICE_TMP = "/data/local/tmp"
# shell_v2: exit codes + separate stderr; stat_v2/ls_v2: the adb CLI then uses STA2/LST2/LIS2, which
# are implemented; fixed_push_*: SEND makes parent dirs. Left out on purpose: delayed_ack (windowed
# OKAY), sendrecv_v2* (SND2/RCV2, compression), abb/abb_exec, apex, push_sync, track_app.
DEFAULT_FEATURES = ("shell_v2", "cmd", "stat_v2", "ls_v2", "fixed_push_mkdir",
                    "fixed_push_symlink_timestamp")
V1_FEATURES = tuple(f for f in DEFAULT_FEATURES if f != "shell_v2")
_HIGH_WATER = 1 << 20  # unread inbound bytes per stream before we stop acking
_SAFE_ROOT = re.compile(r"^/[A-Za-z0-9_./+-]+$")


def _packet(cmd: int, arg0: int, arg1: int, data: bytes = b"") -> bytes:
    return struct.pack("<6I", cmd, arg0, arg1, len(data), sum(data) & 0xFFFFFFFF,
                       cmd ^ 0xFFFFFFFF) + data


class StreamClosed(Exception):
    """The stream (or the whole connection) is gone."""


class _Stream:
    def __init__(self, conn: "_Connection", local_id: int, remote_id: int):
        self.conn, self.local_id, self.remote_id = conn, local_id, remote_id
        self._cond = threading.Condition()
        self._buf = bytearray()
        self._closed = False
        self._can_send = True   # the OKAY answering OPEN is the host's first "ready"
        self._ack_owed = False
        self._write_lock = threading.Lock()

    # -- called by the connection's reader thread
    def on_write(self, data: bytes) -> None:
        with self._cond:
            self._buf += data
            if len(self._buf) < _HIGH_WATER:
                self.conn.send(A_OKAY, self.local_id, self.remote_id)
            else:
                self._ack_owed = True
            self._cond.notify_all()

    def on_okay(self) -> None:
        with self._cond:
            self._can_send = True
            self._cond.notify_all()

    def on_close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    # -- called by the service thread
    def _take(self, n: int) -> bytes:
        out = bytes(self._buf[:n])
        del self._buf[:n]
        if self._ack_owed and len(self._buf) < _HIGH_WATER:
            self._ack_owed = False
            self.conn.send(A_OKAY, self.local_id, self.remote_id)
        return out

    def read_some(self) -> bytes:
        """Whatever is buffered (waits for something); b"" once the stream is closed and drained."""
        with self._cond:
            while not self._buf and not self._closed:
                self._cond.wait(0.5)
            return self._take(len(self._buf))

    def read_exact(self, n: int) -> bytes:
        with self._cond:
            while len(self._buf) < n:
                if self._closed:
                    raise StreamClosed("stream closed")
                self._cond.wait(0.5)
            return self._take(n)

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        with self._write_lock:
            while view:
                chunk, view = view[:self.conn.max_payload], view[self.conn.max_payload:]
                with self._cond:
                    while not self._can_send and not self._closed:
                        self._cond.wait(0.5)
                    if self._closed:
                        raise StreamClosed("stream closed")
                    self._can_send = False
                self.conn.send(A_WRTE, self.local_id, self.remote_id, bytes(chunk))

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        with self._cond:
            was_closed, self._closed = self._closed, True
            self._cond.notify_all()
        self.conn.forget(self)
        if not was_closed:
            self.conn.send(A_CLSE, self.local_id, self.remote_id)


class _Connection:
    def __init__(self, device: "LoopbackAdbDevice", sock: socket.socket):
        self.device, self.sock = device, sock
        self.max_payload = MAX_PAYLOAD
        self._send_lock = threading.Lock()
        self._streams: dict[int, _Stream] = {}
        self._next_id = 1
        self.dead = False

    def send(self, cmd: int, arg0: int, arg1: int, data: bytes = b"") -> None:
        pkt = _packet(cmd, arg0, arg1, data)
        with self._send_lock:
            if self.dead:
                return
            try:
                self.sock.sendall(pkt)
                return
            except OSError:
                pass
        self.abort()  # outside the send lock: abort takes stream locks whose holders may send

    def abort(self) -> None:
        """Drop the TCP connection with no goodbye (a cable pulled)."""
        self.dead = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        for s in list(self._streams.values()):
            s.on_close()

    def forget(self, stream: _Stream) -> None:
        self._streams.pop(stream.local_id, None)

    def _recv_exact(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("peer closed")
            buf += chunk
        return bytes(buf)

    def run(self) -> None:
        try:
            while not self.dead:
                cmd, arg0, arg1, length, _check, magic = struct.unpack("<6I", self._recv_exact(24))
                if magic != cmd ^ 0xFFFFFFFF:
                    raise ConnectionError("bad packet magic")
                data = self._recv_exact(length) if length else b""
                self._dispatch(cmd, arg0, arg1, data)
        except (OSError, ConnectionError, struct.error):
            pass
        finally:
            self.abort()
            try:
                self.sock.close()
            except OSError:
                pass

    def _dispatch(self, cmd: int, arg0: int, arg1: int, data: bytes) -> None:
        if cmd in (A_CNXN, A_AUTH):
            if cmd == A_CNXN:
                self.max_payload = max(4096, min(MAX_PAYLOAD, arg1))
            self.send(A_CNXN, A_VERSION, MAX_PAYLOAD, self.device.banner.encode())
        elif cmd == A_OPEN:
            service = data.rstrip(b"\0").decode("utf-8", "surrogateescape")
            handler = self.device.service_for(service)
            if handler is None or arg1 != 0:  # arg1 != 0 asks for delayed ack: not offered
                self.send(A_CLSE, 0, arg0)
                return
            stream = _Stream(self, self._next_id, arg0)
            self._next_id += 1
            self._streams[stream.local_id] = stream
            self.send(A_OKAY, stream.local_id, arg0)
            self.device.spawn(self._serve, handler, stream)
        elif cmd in (A_OKAY, A_WRTE, A_CLSE):
            stream = self._streams.get(arg1)
            if stream is None or stream.remote_id != arg0:
                if cmd == A_WRTE:  # unknown stream: tell the host it is gone
                    self.send(A_CLSE, arg1, arg0)
                return
            if cmd == A_OKAY:
                stream.on_okay()
            elif cmd == A_WRTE:
                stream.on_write(data)
            else:
                self._streams.pop(arg1, None)
                stream.on_close()
        # A_SYNC / A_STLS / anything else: ignored

    @staticmethod
    def _serve(handler, stream: _Stream) -> None:
        try:
            handler(stream)
        except StreamClosed:
            pass
        finally:
            stream.close()


class LoopbackAdbDevice:
    """See the module docstring. Use as a context manager; ``serial`` is ``127.0.0.1:PORT``."""

    def __init__(self, root: str | os.PathLike, *, port: int = 0,
                 features: tuple[str, ...] = DEFAULT_FEATURES,
                 disconnect_after_bytes: int | None = None,
                 fail_space_after_bytes: int | None = None,
                 keep_failed_sends: bool = False,
                 lifetime: float = 600.0, stop_timeout: float = 5.0,
                 python: str | os.PathLike | None = sys.executable,
                 sysroot: str | os.PathLike | None = None, shell_argv: list[str] | None = None,
                 model: str = "Loopback"):
        self.sysroot = None if sysroot is None else os.path.realpath(os.fspath(sysroot))
        if (self.sysroot is None) != (shell_argv is None):
            raise ValueError("sysroot and shell_argv go together")
        self.shell_argv = None if shell_argv is None else [os.fspath(a) for a in shell_argv]
        if self.sysroot is not None:
            root, python = self.sysroot + DEVICE_TMP, None
        self.root = os.path.realpath(os.fspath(root))
        if not _SAFE_ROOT.match(self.root):
            raise ValueError(f"loopback root must match {_SAFE_ROOT.pattern}: {self.root}")
        os.makedirs(self.root, exist_ok=True)
        self.python = None if python is None else os.fspath(python)
        self._bin: str | None = None      # holds the device's python3 wrapper (outside root)
        self.features = tuple(features)
        self.banner = (f"device::ro.product.name=loopback;ro.product.model={model};"
                       "ro.product.device=loopback;features=" + ",".join(features))
        self.disconnect_after_bytes = disconnect_after_bytes
        self.fail_space_after_bytes = fail_space_after_bytes
        self.keep_failed_sends = keep_failed_sends
        self.lifetime, self.stop_timeout = lifetime, stop_timeout
        self.refused_services: list[str] = []
        self.commands: list[str] = []      # every shell command run (after the path rewrite)
        self._requested_port = port
        self._listener: socket.socket | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._conns: list[_Connection] = []
        self._procs: set[subprocess.Popen] = set()
        self._lock = threading.Lock()
        self._send_bytes = 0
        self.port = 0

    # ------------------------------------------------------------------ lifecycle
    @property
    def serial(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> "LoopbackAdbDevice":
        if self.python is not None and self._bin is None:
            # a wrapper, not a symlink: a venv's python finds its packages only when started by its
            # own path (a symlink elsewhere would start the base interpreter without them)
            self._bin = tempfile.mkdtemp(prefix="adb-loopback-bin.")
            wrapper = os.path.join(self._bin, "python3")
            with open(wrapper, "w") as f:
                f.write(f"#!/bin/sh\nexec {shlex.quote(self.python)} \"$@\"\n")
            os.chmod(wrapper, 0o755)
        lst = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lst.bind(("127.0.0.1", self._requested_port))
        lst.listen(8)
        lst.settimeout(0.2)
        self._listener, self.port = lst, lst.getsockname()[1]
        self.spawn(self._accept_loop)
        return self

    def __enter__(self) -> "LoopbackAdbDevice":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def spawn(self, fn, *args) -> threading.Thread:
        t = threading.Thread(target=fn, args=args, daemon=True, name="adb-loopback")
        with self._lock:
            self._threads = [x for x in self._threads if x.is_alive()]
            self._threads.append(t)
        t.start()
        return t

    def _accept_loop(self) -> None:
        lst, deadline = self._listener, time.monotonic() + self.lifetime
        while not self._stop.is_set():
            if time.monotonic() > deadline:
                self.kill()
                break
            try:
                sock, _ = lst.accept()
            except socket.timeout:
                continue
            except OSError:
                break
            sock.settimeout(None)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = _Connection(self, sock)
            with self._lock:
                self._conns.append(conn)
            self.spawn(conn.run)

    def drop_connections(self) -> None:
        """Cut every TCP connection now; keep listening (the host may reconnect)."""
        with self._lock:
            conns, self._conns = self._conns, []
        for c in conns:
            c.abort()

    def kill(self) -> None:
        """Vanish: stop listening, cut every connection, SIGKILL every running command."""
        self._stop.set()
        if self._listener is not None:
            try:
                self._listener.close()
            except OSError:
                pass
        self.drop_connections()
        with self._lock:
            procs = list(self._procs)
        for p in procs:
            _kill_group(p)

    def stop(self) -> None:
        """kill(), then wait (bounded by ``stop_timeout``) for every thread to end."""
        self.kill()
        deadline = time.monotonic() + self.stop_timeout
        for t in list(self._threads):
            if t is not threading.current_thread():
                t.join(max(0.0, deadline - time.monotonic()))
        if self._bin is not None:
            shutil.rmtree(self._bin, ignore_errors=True)
            self._bin = None

    def wait_for_command(self, needle: str, timeout: float = 10.0) -> bool:
        """True once a shell command containing ``needle`` has been started."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(needle in c for c in self.commands):
                return True
            time.sleep(0.02)
        return False

    # ------------------------------------------------------------------ paths
    def map_path(self, device_path: str) -> str:
        norm = posixpath.normpath(device_path)
        if norm == DEVICE_TMP or norm.startswith(DEVICE_TMP + "/"):
            return self.root + norm[len(DEVICE_TMP):]
        return norm if self.sysroot is None else self.sysroot + norm

    def _writable(self, real: str) -> bool:
        return real == self.root or real.startswith(self.root + "/")

    # ------------------------------------------------------------------ services
    def service_for(self, service: str):
        if service.startswith("shell") and ":" in service:
            opts, _, cmd = service.partition(":")
            v2 = "v2" in opts.split(",")[1:]
            return lambda s: self._shell(s, cmd, v2)
        if service.startswith("exec:"):
            return lambda s: self._shell(s, service[5:], False)
        if service == "sync:":
            return self._sync
        self.refused_services.append(service)
        return None

    def _shell(self, stream: _Stream, cmd: str, v2: bool) -> None:
        env = dict(os.environ, ADB_LOOPBACK_ROOT=self.root, TMPDIR=self.root)
        if self.shell_argv is not None:   # another root: its own paths, its own shell
            argv = [*self.shell_argv, cmd] if cmd else list(self.shell_argv)
        else:
            cmd = cmd.replace(DEVICE_TMP, self.root)
            argv = ["/bin/sh", "-c", cmd] if cmd else ["/bin/sh"]
        if self._bin is not None:
            env["PATH"] = self._bin + os.pathsep + env.get("PATH", os.defpath)
        proc = subprocess.Popen(argv,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE if v2 else subprocess.STDOUT,
                                cwd=self.root, env=env, start_new_session=True)
        with self._lock:
            self._procs.add(proc)
        self.commands.append(cmd)
        try:
            self._run_shell(stream, proc, v2)
        finally:
            with self._lock:
                self._procs.discard(proc)
            for pipe in (proc.stdin, proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()

    def _run_shell(self, stream: _Stream, proc: subprocess.Popen, v2: bool) -> None:
        def pump(fd: int, pid: int) -> None:
            try:
                while chunk := os.read(fd, 65536):
                    stream.write(struct.pack("<BI", pid, len(chunk)) + chunk if v2 else chunk)
            except (StreamClosed, OSError):
                _kill_group(proc)

        def feed() -> None:
            try:
                while True:
                    if v2:
                        pid, n = struct.unpack("<BI", stream.read_exact(5))
                        data = stream.read_exact(n) if n else b""
                        if pid == 4:
                            proc.stdin.close()
                        if pid != 0:
                            continue
                    else:
                        data = stream.read_some()
                        if not data:
                            break
                    proc.stdin.write(data)
                    proc.stdin.flush()
            except (OSError, ValueError):
                pass  # the command closed its stdin or ended
            except StreamClosed:
                if proc.poll() is None:  # the host hung up: end the command
                    _kill_group(proc)

        pumps = [self.spawn(pump, proc.stdout.fileno(), 1)]
        if v2:
            pumps.append(self.spawn(pump, proc.stderr.fileno(), 2))
        self.spawn(feed)
        while proc.poll() is None and not self._stop.is_set():
            time.sleep(0.02)
        if self._stop.is_set():
            _kill_group(proc)
        rc = proc.wait()
        for t in pumps:
            t.join(2.0)  # a background child may hold the pipes: do not wait for it
        if v2 and not stream.closed:
            code = rc if rc >= 0 else 128 - rc  # killed by signal N -> 128+N, as adbd reports
            stream.write(struct.pack("<BIB", 3, 1, code & 0xFF))

    # ------------------------------------------------------------------ sync
    def _sync(self, stream: _Stream) -> None:
        while True:
            rid, n = struct.unpack("<4sI", stream.read_exact(8))
            if rid == b"QUIT":
                return
            if n > 4096:
                return _fail(stream, "path too long")
            arg = stream.read_exact(n).decode("utf-8", "surrogateescape")
            if rid == b"STAT":
                stream.write(self._stat_v1(arg))
            elif rid in (b"STA2", b"LST2"):
                stream.write(self._stat_v2(rid, arg))
            elif rid in (b"LIST", b"LIS2"):
                self._list(stream, arg, v2=rid == b"LIS2")
            elif rid == b"RECV":
                if not self._recv(stream, arg):
                    return
            elif rid == b"SEND":
                if not self._send(stream, arg):
                    return
            else:
                return _fail(stream, f"unknown sync request {rid!r}")

    def _stat_v1(self, path: str) -> bytes:
        try:
            st = os.lstat(self.map_path(path))
        except OSError:
            return struct.pack("<4sIII", b"STAT", 0, 0, 0)
        return struct.pack("<4sIII", b"STAT", st.st_mode, st.st_size & 0xFFFFFFFF,
                           int(st.st_mtime) & 0xFFFFFFFF)

    def _stat_v2(self, rid: bytes, path: str) -> bytes:
        real = self.map_path(path)
        try:
            st = os.lstat(real) if rid == b"LST2" else os.stat(real)
        except OSError as e:
            return struct.pack("<4sI", rid, e.errno or errno.EIO) + bytes(64)
        return struct.pack("<4sIQQIIIIQqqq", rid, 0, *_v2_fields(st))

    def _list(self, stream: _Stream, path: str, v2: bool) -> None:
        try:
            entries = list(os.scandir(self.map_path(path)))
        except OSError:
            entries = []
        for e in entries:
            name = e.name.encode("utf-8", "surrogateescape")
            try:
                st = e.stat(follow_symlinks=False)
            except OSError:
                continue
            if v2:
                head = struct.pack("<4sIQQIIIIQqqqI", b"DNT2", 0, *_v2_fields(st), len(name))
            else:
                head = struct.pack("<4sIIII", b"DENT", st.st_mode, st.st_size & 0xFFFFFFFF,
                                   int(st.st_mtime) & 0xFFFFFFFF, len(name))
            stream.write(head + name)
        stream.write(b"DONE" + bytes(72 if v2 else 16))

    def _recv(self, stream: _Stream, path: str) -> bool:
        try:
            f = open(self.map_path(path), "rb")
        except OSError as e:
            _fail(stream, f"open failed: {os.strerror(e.errno or errno.EIO)}")
            return False
        with f:
            while chunk := f.read(SYNC_DATA_MAX):
                stream.write(b"DATA" + struct.pack("<I", len(chunk)) + chunk)
        stream.write(b"DONE" + bytes(4))
        return True

    def _send(self, stream: _Stream, spec: str) -> bool:
        path, _, mode_s = spec.rpartition(",")
        mode = int(mode_s) if mode_s.isdigit() else 0o644
        real = self.map_path(path)
        if not self._writable(real):
            return _fail_and_drain(stream, f"couldn't create file: {os.strerror(errno.EACCES)}")
        try:
            os.makedirs(os.path.dirname(real), exist_ok=True)
            f = open(real, "wb")
            os.chmod(real, mode & 0o777)
        except OSError as e:
            return _fail_and_drain(stream, f"couldn't create file: {os.strerror(e.errno or 5)}")
        written, ok = 0, False
        try:
            while True:
                rid, n = struct.unpack("<4sI", stream.read_exact(8))
                if rid == b"DONE":
                    f.close()
                    os.utime(real, (n, n))
                    ok = True
                    stream.write(b"OKAY" + bytes(4))
                    return True
                if rid != b"DATA" or n > SYNC_DATA_MAX:
                    _fail(stream, "invalid data message")
                    return False
                data = stream.read_exact(n)
                written += n
                self._count_send_bytes(stream, n)
                full = self.fail_space_after_bytes
                if full is not None and written > full:
                    return _fail_and_drain(stream, f"write failed: {os.strerror(errno.ENOSPC)}")
                f.write(data)
        finally:
            f.close()
            if not ok and not self.keep_failed_sends:  # adbd leaves no half file behind
                try:
                    os.unlink(real)
                except OSError:
                    pass

    def _count_send_bytes(self, stream: _Stream, n: int) -> None:
        with self._lock:
            self._send_bytes += n
            limit = self.disconnect_after_bytes
            fire = limit is not None and self._send_bytes > limit
            if fire:
                self.disconnect_after_bytes = None  # one shot
        if fire:
            stream.conn.abort()
            raise StreamClosed("disconnect_after_bytes reached")


def _v2_fields(st: os.stat_result) -> tuple:
    return (st.st_dev, st.st_ino, st.st_mode, st.st_nlink, st.st_uid, st.st_gid, st.st_size,
            int(st.st_atime), int(st.st_mtime), int(st.st_ctime))


def _fail(stream: _Stream, message: str) -> None:
    msg = message.encode()
    stream.write(b"FAIL" + struct.pack("<I", len(msg)) + msg)


def _fail_and_drain(stream: _Stream, message: str) -> bool:
    """Report FAIL, then swallow the rest of the SEND up to its DONE (what adbd does)."""
    _fail(stream, message)
    while True:
        rid, n = struct.unpack("<4sI", stream.read_exact(8))
        if rid != b"DATA":
            return False
        stream.read_exact(n)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    except OSError:
        if proc.poll() is None:
            proc.kill()


def main(argv: list[str] | None = None) -> int:
    """Serve one device until Ctrl-C (see the module docstring); prints its serial."""
    import argparse
    ap = argparse.ArgumentParser(description="a loopback adb device on 127.0.0.1")
    ap.add_argument("--root", help="the device's /data/local/tmp (commands run on this machine)")
    ap.add_argument("--sysroot", help="another root filesystem (with --shell)")
    ap.add_argument("--shell", help="command line that runs one shell command inside --sysroot")
    ap.add_argument("--port", type=int, default=0)
    a = ap.parse_args(argv)
    if a.sysroot:
        dev = LoopbackAdbDevice(None, sysroot=a.sysroot, shell_argv=shlex.split(a.shell or ""),
                                port=a.port, lifetime=float("inf"), model="qemu-aarch64")
    else:
        dev = LoopbackAdbDevice(a.root or tempfile.mkdtemp(prefix="adb-loopback."), port=a.port,
                                lifetime=float("inf"))
    with dev:
        print(f"serving {dev.serial} (root {dev.root}); adb connect {dev.serial}", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
