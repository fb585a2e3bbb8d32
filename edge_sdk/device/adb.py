"""The one place in edge_sdk that speaks adb (with ``device.transfer``, its file half).

Built on ``adbutils`` (a client of the adb *server*; its wheel ships Google's ``adb`` binary). An
``AdbSession`` talks to one adb server on 127.0.0.1 at a port of its own choosing: ``server_port``,
else ``$ANDROID_ADB_SERVER_PORT``, else 5037. The session starts that server when it is not running
(``adb -P PORT start-server``, with mDNS off unless ``server_env`` says otherwise) and never
falls back to another port: adbutils on its own would run a bare ``adb start-server`` (default
port) when a connection fails; the session's client does not.

Devices are named by serial (a ``str``). Commands are argv lists: every argument is quoted with
``shlex.quote`` before it reaches the device shell, so paths with spaces, ``;``, ``$(..)``,
backticks or quotes stay one argument. Exit statuses come from the shell v2 protocol where the device
offers it (feature ``shell_v2``); daemons without it (older Android, embedded Linux boards) speak
the v1 shell: one merged output stream (``stdout``, ``stderr`` empty) and no exit status, which we
recover from a marker line with a random nonce that the command line prints last. A ``HOST:PORT``
serial that the adb server does not know yet is connected first, as ``adb connect`` would. Every failure (no or
ambiguous device, device gone mid-transfer or mid-run, device full, non-zero exit in ``run``) is a
``DeviceError`` (CLI exit code 2) whose message says what happened and, where there is one, the fix.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import secrets
import shlex
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from typing import Callable, Mapping, NamedTuple, Sequence

from edge_sdk.errors import DeviceError
from edge_sdk.device import transfer as device_transfer
from edge_sdk.device.transfer import PushResult

__all__ = ["AdbSession", "DeviceInfo", "ListedDevice", "PushResult", "ShellResult",
           "DEFAULT_SERVER_PORT", "USB_DEBUGGING_HELP"]

DEFAULT_SERVER_PORT = 5037
LOOPBACK = "127.0.0.1"
DEFAULT_TIMEOUT = 300.0   # seconds of silence tolerated on one device connection
USB_DEBUGGING_HELP = ("enable USB debugging (Settings > About phone > tap 'Build number' 7 times, "
                      "then Settings > System > Developer options > USB debugging), plug the phone "
                      "in and accept the 'Allow USB debugging?' prompt; or `adb connect HOST:PORT`")
_STATE_HINTS = {
    "unauthorized": "accept the 'Allow USB debugging?' prompt on the phone",
    "offline": "the device stopped answering: unplug and replug it, or `adb reconnect offline`",
    "no permissions": "the USB device node is not accessible: add a udev rule for the phone",
    "authorizing": "wait for the device to finish authorizing",
    "connecting": "wait for the device to finish connecting",
}


class ListedDevice(NamedTuple):
    serial: str
    state: str   # "device" when usable; "unauthorized", "offline", ... otherwise


class ShellResult(NamedTuple):
    """Unpacks as ``(exit_code, stdout, stderr)``."""
    exit_code: int
    stdout: str
    stderr: str


@dataclass(frozen=True)
class DeviceInfo:
    serial: str
    abi: str                    # ro.product.cpu.abi, or the ABI matching `uname -m` off Android
    android_version: str        # ro.build.version.release; "" when not Android
    sdk: int                    # ro.build.version.sdk; 0 when not Android
    total_ram_bytes: int        # MemTotal in /proc/meminfo (bytes)
    available_ram_bytes: int    # MemAvailable in /proc/meminfo (bytes)
    is_android: bool            # getprop answered with an SDK level
    has_python: bool            # python3 is on the device's PATH


_UNAME_ABI = {"aarch64": "arm64-v8a", "arm64": "arm64-v8a", "armv7l": "armeabi-v7a",
              "armv8l": "armeabi-v7a", "x86_64": "x86_64", "i686": "x86", "i386": "x86"}
_PROBE_SCRIPT = (
    'echo "abi=$(getprop ro.product.cpu.abi 2>/dev/null)"; '
    'echo "release=$(getprop ro.build.version.release 2>/dev/null)"; '
    'echo "sdk=$(getprop ro.build.version.sdk 2>/dev/null)"; '
    'echo "machine=$(uname -m 2>/dev/null)"; '
    'if command -v python3 >/dev/null 2>&1; then echo python=1; fi; '
    'cat /proc/meminfo')


def _import_adbutils():
    try:
        import adbutils
    except ImportError as e:
        raise DeviceError(f"the adb client library is missing ({e})",
                          fix="pip install adbutils") from e
    return adbutils


@functools.lru_cache(maxsize=1)
def _client_class():
    adbutils = _import_adbutils()

    class _Connection(adbutils.AdbConnection):
        def _safe_connect(self):  # adbutils would start a default-port server here; we do not
            return self._create_socket()

    class _Client(adbutils.AdbClient):
        def make_connection(self, timeout=None):
            conn = _Connection(self.host, self.port)
            if timeout:
                conn.conn.settimeout(timeout)
            return conn

    return _Client


def quote_argv(argv: Sequence[str]) -> str:
    """One shell command line in which each element of ``argv`` is exactly one word."""
    if isinstance(argv, (str, bytes)) or not argv:
        raise TypeError("argv must be a non-empty list of strings (each one is quoted)")
    return " ".join(shlex.quote(os.fspath(a)) for a in argv)


def describe_exit(code: int) -> str:
    """'exit code 3', or 'exit code 137 (killed by SIGKILL ...)' for 128+N statuses."""
    text = f"exit code {code}"
    if 128 < code < 128 + 65:
        try:
            name = signal.Signals(code - 128).name
        except ValueError:
            return text
        why = ": out of memory? Android's low-memory killer sends it" if name == "SIGKILL" else ""
        text += f" (killed by {name}{why})"
    return text


_NETWORK_SERIAL = re.compile(r"(?:[A-Za-z0-9][A-Za-z0-9.-]*|\[[0-9A-Fa-f:.]+\]):\d{1,5}")


def is_network_serial(serial: str) -> bool:
    """``HOST:PORT`` (``adb connect``'s form), not a USB serial or ``emulator-N``."""
    return bool(_NETWORK_SERIAL.fullmatch(serial)) and 0 < int(serial.rsplit(":", 1)[1]) < 65536


def _v1_command(cmd: str) -> tuple[str, bytes]:
    """``cmd`` for a v1 shell, followed by a line that carries its exit status, and that line's
    marker. The marker holds a random nonce, so the command's own output cannot imitate it; the
    leading newline is ours (stripped again), so output without a final newline stays intact."""
    marker = f"__edge_sdk_rc_{secrets.token_hex(8)}="
    return f"{cmd}\nprintf '\\n{marker}%s\\n' \"$?\"", marker.encode()


def _parse_v1(raw: bytes, marker: bytes, cmd: str) -> tuple[int, bytes]:
    """(exit status, output) from a v1 shell's merged output (``_v1_command``)."""
    raw = raw.replace(b"\r\n", b"\n")    # v1 daemons that run commands in a PTY send CRLF
    at = raw.rfind(b"\n" + marker)
    tail = raw[at + 1 + len(marker):].strip() if at >= 0 else b""
    if at < 0 or not tail.isdigit():
        raise DeviceError(f"`{cmd}` ended without reporting its exit status (v1 adb shell; the device "
                          f"shell may have been killed): {raw[-300:].decode('utf-8', 'replace').strip()!r}",
                          fix="retry; if it persists, check the device's /bin/sh")
    return int(tail), raw[:at]


class AdbSession:
    """A connection to one adb server (see the module docstring)."""

    def __init__(self, server_port: int | None = None, *, start: bool = True,
                 server_env: Mapping[str, str] | None = None,
                 timeout: float = DEFAULT_TIMEOUT):
        if server_port is None:
            env_port = os.environ.get("ANDROID_ADB_SERVER_PORT", "").strip()
            try:
                server_port = int(env_port) if env_port else DEFAULT_SERVER_PORT
            except ValueError:
                raise DeviceError(f"ANDROID_ADB_SERVER_PORT={env_port!r} is not a port number",
                                  fix="unset it or set it to a number such as 5037") from None
        if not 0 < int(server_port) < 65536:
            raise DeviceError(f"adb server port {server_port} is out of range")
        self.port = int(server_port)
        self.timeout = timeout
        self.server_env = dict(server_env or {})
        self._client = _client_class()(host=LOOPBACK, port=self.port)
        self._devices: dict[str, object] = {}
        self._features: dict[str, frozenset[str]] = {}
        if start:
            self.start_server()

    # ------------------------------------------------------------------ server
    @property
    def adb_path(self) -> str:
        return _import_adbutils().adb_path()

    def server_running(self) -> bool:
        with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, self.port), 0.5):
            return True
        return False

    def _adb_cli(self, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess:
        env = {**os.environ, "ADB_MDNS": "0", **self.server_env,
               "ANDROID_ADB_SERVER_PORT": str(self.port)}
        try:
            return subprocess.run([self.adb_path, "-P", str(self.port), *args], env=env,
                                  stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                  timeout=timeout)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise DeviceError(f"`adb -P {self.port} {' '.join(args)}` failed: {e}") from e

    def start_server(self) -> None:
        """``adb -P PORT start-server`` unless a server already answers on that port."""
        if self.server_running():
            return
        r = self._adb_cli("start-server")
        if r.returncode != 0 or not self.server_running():
            raise DeviceError(f"could not start the adb server on port {self.port}: "
                              f"{(r.stderr or r.stdout).strip() or 'no output'}",
                              fix="check that the port is free, or set ANDROID_ADB_SERVER_PORT")

    def kill_server(self) -> None:
        """``adb -P PORT kill-server``; quiet when none is running."""
        self._devices.clear()
        if self.server_running():
            self._adb_cli("kill-server", timeout=15.0)

    def connect(self, address: str, timeout: float = 15.0) -> str:
        """``adb connect HOST:PORT``, then wait (bounded) until the device is usable; its serial."""
        with self.errors(f"connecting to {address}"):
            reply = self._client.connect(address, timeout=timeout)
        if "connected to" not in reply:  # also matches "already connected to"
            raise DeviceError(f"adb could not connect to {address}: {reply.strip()}",
                              fix="check that the device listens there (`adb tcpip PORT`)")
        self.wait_for(address, timeout=timeout)
        return address

    def disconnect(self, address: str) -> None:
        with self.errors(f"disconnecting {address}"):
            self._client.disconnect(address)
        self._devices.pop(address, None)
        self._features.pop(address, None)

    def wait_for(self, serial: str, state: str = "device", timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            states = {d.serial: d.state for d in self.list_devices()}
            if states.get(serial) == state:
                return
            if time.monotonic() > deadline:
                raise DeviceError(f"device {serial} is {states.get(serial, 'absent')}, "
                                  f"not {state}, after {timeout:g} s",
                                  fix=_STATE_HINTS.get(states.get(serial, ""), USB_DEBUGGING_HELP))
            time.sleep(0.05)

    # ------------------------------------------------------------------ devices
    def list_devices(self) -> list[ListedDevice]:
        """Every device the server knows, in any state."""
        with self.errors("listing devices"):
            return [ListedDevice(d.serial, d.state) for d in self._client.list()]

    def pick_device(self, serial_or_auto: str = "auto") -> str:
        """The serial to use: the named one, or with ``auto`` the only usable device."""
        devices = self.list_devices()
        if serial_or_auto != "auto":
            found = {d.serial: d.state for d in devices}
            if serial_or_auto not in found and is_network_serial(serial_or_auto):
                self._connect_for_pick(serial_or_auto, ", ".join(found) or "none")
                found = {d.serial: d.state for d in self.list_devices()}
            if serial_or_auto not in found:
                listed = ", ".join(found) or "none"
                raise DeviceError(f"device {serial_or_auto} is not connected "
                                  f"(connected: {listed})", fix=USB_DEBUGGING_HELP)
            state = found[serial_or_auto]
            if state != "device":
                raise DeviceError(f"device {serial_or_auto} is {state}",
                                  fix=_STATE_HINTS.get(state, "reconnect it"))
            return serial_or_auto
        ready = [d.serial for d in devices if d.state == "device"]
        if len(ready) == 1:
            return ready[0]
        if len(ready) > 1:
            raise DeviceError(f"{len(ready)} devices are connected ({', '.join(ready)}): "
                              "say which one", fix="pass --device SERIAL with one of them")
        if devices:
            detail = "; ".join(f"{d.serial} is {d.state} ({_STATE_HINTS.get(d.state, '')})"
                               for d in devices)
            raise DeviceError(f"no usable adb device: {detail}")
        raise DeviceError("no adb device is connected", fix=USB_DEBUGGING_HELP)

    def _connect_for_pick(self, address: str, listed: str) -> None:
        """``adb connect HOST:PORT`` for a serial the server does not know yet; one clear line if not."""
        try:
            self.connect(address)
        except DeviceError as e:
            raise DeviceError(f"device {address} is not connected (connected: {listed}) and connecting "
                              f"to it failed: {e.detail}",
                              fix=f"check that the device listens on {address} (on the device: "
                                  f"`adb tcpip {address.rsplit(':', 1)[1]}`), then `adb connect {address}`"
                              ) from None

    def features(self, serial: str) -> frozenset[str]:
        """The device daemon's feature list (``shell_v2``, ``stat_v2``, ...), asked once per device."""
        feats = self._features.get(serial)
        if feats is None:
            dev = self.adb_device(serial)
            with self.errors(f"asking {serial} for its features", serial):
                feats = frozenset(f.strip() for f in dev.get_features().split(",") if f.strip())
            self._features[serial] = feats
        return feats

    def adb_device(self, serial: str):
        """The adbutils ``AdbDevice`` for ``serial`` (cached: it remembers the feature list)."""
        dev = self._devices.get(serial)
        if dev is None:
            with self.errors(f"opening {serial}"):
                dev = self._devices[serial] = self._client.device(serial=serial)
        return dev

    @contextlib.contextmanager
    def errors(self, doing: str, serial: str | None = None):
        """Turn adbutils / socket failures inside the block into one clear DeviceError."""
        adbutils = _import_adbutils()
        try:
            yield
        except DeviceError:
            raise
        except adbutils.AdbTimeout as e:
            raise DeviceError(f"adb timed out while {doing}: {e}",
                              fix="check the cable/connection; raise the timeout") from e
        except (adbutils.AdbError, OSError, EOFError) as e:
            if isinstance(e, adbutils.errors.AdbConnectionError) or not self.server_running():
                raise DeviceError(f"the adb server on port {self.port} is not answering "
                                  f"while {doing}: {e}",
                                  fix=f"start it: adb -P {self.port} start-server") from e
            detail = "the connection closed" if isinstance(e, EOFError) else (
                str(e) or type(e).__name__)
            state = {d.serial: d.state for d in self._quiet_list()}.get(serial, "absent")
            if serial is None or state == "device":
                raise DeviceError(f"adb failed while {doing}: {detail}") from e
            what = "is not connected" if state == "absent" else f"went {state}"
            raise DeviceError(f"device {serial} {what} while {doing}: {detail}",
                              fix=_STATE_HINTS.get(state, "reconnect the device and retry")) from e

    def _quiet_list(self) -> list[ListedDevice]:
        try:
            return self.list_devices()
        except DeviceError:
            return []

    # ------------------------------------------------------------------ commands
    def shell(self, serial: str, argv: Sequence[str], *,
              timeout: float | None = None) -> ShellResult:
        """Run ``argv`` (each element quoted) on the device; never raises for a non-zero exit.
        Shell v2: stdout and stderr apart. v1 (no ``shell_v2`` feature): both merged in ``stdout``,
        ``stderr`` empty, the exit status from a marker line (see ``_v1_command``)."""
        cmd = quote_argv(argv)
        dev = self.adb_device(serial)
        if "shell_v2" in self.features(serial):
            with self.errors(f"running `{cmd}`", serial):
                r = dev.shell2(cmd, timeout=timeout or self.timeout, encoding=None, v2=True)
            return ShellResult(r.returncode, r.stdout.decode("utf-8", "replace"),
                               r.stderr.decode("utf-8", "replace"))
        line, marker = _v1_command(cmd)
        with self.errors(f"running `{cmd}`", serial):
            raw = dev.shell(line, timeout=timeout or self.timeout, encoding=None)
        code, out = _parse_v1(raw, marker, cmd)
        return ShellResult(code, out.decode("utf-8", "replace"), "")

    def run(self, serial: str, argv: Sequence[str], *,
            timeout: float | None = None) -> ShellResult:
        """``shell`` that raises DeviceError unless the command exits 0 (a crash is an error)."""
        r = self.shell(serial, argv, timeout=timeout)
        if r.exit_code != 0:
            tail = (r.stderr.strip() or r.stdout.strip())[-600:]
            raise DeviceError(f"`{quote_argv(argv)}` on {serial} failed with "
                              f"{describe_exit(r.exit_code)}" + (f": {tail}" if tail else ""))
        return r

    def probe(self, serial: str) -> DeviceInfo:
        """ABI, Android version, RAM, python3: one shell round trip."""
        r = self.run(serial, ["sh", "-c", _PROBE_SCRIPT])
        fields, mem = {}, {}
        for line in r.stdout.splitlines():
            key, eq, value = line.partition("=")
            if eq and key in ("abi", "release", "sdk", "machine", "python"):
                fields[key] = value.strip()
            name, colon, rest = line.partition(":")
            if colon and rest.strip().endswith("kB"):
                with contextlib.suppress(ValueError):
                    mem[name.strip()] = int(rest.split()[0]) * 1024
        sdk = fields.get("sdk", "")
        is_android = sdk.isdigit()
        machine = fields.get("machine", "")
        return DeviceInfo(
            serial=serial,
            abi=fields.get("abi") or _UNAME_ABI.get(machine, machine),
            android_version=fields.get("release", "") if is_android else "",
            sdk=int(sdk) if is_android else 0,
            total_ram_bytes=mem.get("MemTotal", 0),
            available_ram_bytes=mem.get("MemAvailable", mem.get("MemFree", 0)),
            is_android=is_android,
            has_python=fields.get("python") == "1")

    # ------------------------------------------------------------------ files
    def push(self, serial: str, local_path: str | os.PathLike, remote_path: str, *,
             progress: Callable[[int, int], None] | None = None,
             mode: int = 0o644) -> PushResult:
        """Copy a file to the device, atomically and verified; reused when the sha256 matches."""
        return device_transfer.push(self, serial, local_path, remote_path,
                                    progress=progress, mode=mode)

    def pull(self, serial: str, remote_path: str, local_path: str | os.PathLike, *,
             progress: Callable[[int, int], None] | None = None) -> int:
        """Copy a device file here (atomically); the byte count."""
        return device_transfer.pull(self, serial, remote_path, local_path, progress=progress)

    def remove(self, serial: str, remote_path: str, *, recursive: bool = False) -> None:
        """``rm -f`` (``-rf`` with ``recursive``) on the device."""
        device_transfer.remove(self, serial, remote_path, recursive=recursive)
