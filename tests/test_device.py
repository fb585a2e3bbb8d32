"""edge_sdk.device.adb against the real adb server and tests/adb_loopback.py's device.

A private adb server (its own port via ANDROID_ADB_SERVER_PORT, its own HOME, no USB / emulator
scan / mDNS) is started for this module and killed at the end; devices are reached with
``adb connect 127.0.0.1:PORT``. Nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

adbutils = pytest.importorskip("adbutils")

sys.path.insert(0, str(Path(__file__).parent))
from adb_loopback import DEFAULT_FEATURES, V1_FEATURES, LoopbackAdbDevice  # noqa: E402

from edge_sdk.errors import DeviceError  # noqa: E402
from edge_sdk.device.adb import AdbSession, _v1_command, quote_argv  # noqa: E402

TMP = "/data/local/tmp"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _server_env(home: Path) -> dict[str, str]:
    return {"ADB_USB": "0", "ADB_EMU": "0", "ADB_MDNS": "0", "HOME": str(home), "TMPDIR": str(home)}


@pytest.fixture(scope="module")
def adb(tmp_path_factory):
    home = tmp_path_factory.mktemp("adbhome")
    port = _free_port()
    with pytest.MonkeyPatch.context() as mp:
        # anything that starts a server behind our back (adbutils does) lands on this port too
        mp.setenv("ANDROID_ADB_SERVER_PORT", str(port))
        session = AdbSession(server_env=_server_env(home), timeout=20.0)
        assert session.port == port and session.server_running()
        try:
            yield session
        finally:
            session.kill_server()
            assert not session.server_running()


@pytest.fixture(scope="module", params=["shell_v2", "shell_v1"])
def device(adb, tmp_path_factory, request):
    """The loopback device, once with shell v2 and once without it (older Android, embedded Linux
    adbd): then adbutils speaks the v1 shell (merged output, no exit status stream)."""
    features = DEFAULT_FEATURES if request.param == "shell_v2" else V1_FEATURES
    with LoopbackAdbDevice(tmp_path_factory.mktemp("device"), features=features) as dev:
        adb.connect(dev.serial)
        try:
            yield dev
        finally:
            adb.disconnect(dev.serial)


class _ExtraDevice:
    """A second loopback device (with faults), connected for one test and gone after it."""

    def __init__(self, adb: AdbSession, root: Path, **faults):
        self.adb, self.dev = adb, LoopbackAdbDevice(root, **faults)

    def __enter__(self) -> LoopbackAdbDevice:
        self.dev.start()
        self.adb.connect(self.dev.serial)
        return self.dev

    def __exit__(self, *exc) -> None:
        self.dev.stop()
        self.adb.disconnect(self.dev.serial)


def _partials(root: str | Path) -> list[Path]:
    return [p for p in Path(root).rglob("*") if p.name.endswith(".partial")]


def _random_file(path: Path, size: int) -> Path:
    path.write_bytes(os.urandom(size))
    return path


# ---------------------------------------------------------------------------- session / devices
def test_server_port_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("ANDROID_ADB_SERVER_PORT", "45123")
    assert AdbSession(start=False).port == 45123
    assert AdbSession(5038, start=False).port == 5038
    monkeypatch.setenv("ANDROID_ADB_SERVER_PORT", "nope")
    with pytest.raises(DeviceError, match="ANDROID_ADB_SERVER_PORT"):
        AdbSession(start=False)


def test_list_and_pick_the_only_device(adb, device):
    assert (device.serial, "device") in [tuple(d) for d in adb.list_devices()]
    assert adb.pick_device("auto") == device.serial
    assert adb.pick_device(device.serial) == device.serial
    with pytest.raises(DeviceError, match=f"not connected.*{device.serial}") as e:
        adb.pick_device("127.0.0.1:1")
    assert e.value.exit_code == 2


def test_pick_connects_a_host_port_serial(adb, tmp_path):
    """``--device HOST:PORT`` for a device adb has not connected yet: connected as `adb connect`
    would; nothing listening there: one line that says how to fix it."""
    with LoopbackAdbDevice(tmp_path / "new") as dev:
        assert dev.serial not in [d.serial for d in adb.list_devices()]
        try:
            assert adb.pick_device(dev.serial) == dev.serial
            assert (dev.serial, "device") in [tuple(d) for d in adb.list_devices()]
            assert adb.run(dev.serial, ["echo", "hi"]).stdout == "hi\n"
        finally:
            adb.disconnect(dev.serial)
    nobody = f"127.0.0.1:{_free_port()}"
    with pytest.raises(DeviceError) as e:
        adb.pick_device(nobody)
    msg = str(e.value)
    assert "\n" not in msg and f"{nobody} is not connected" in msg and f"adb connect {nobody}" in msg, msg
    assert nobody not in [d.serial for d in adb.list_devices()]
    with pytest.raises(DeviceError, match="not connected"):
        adb.pick_device("R58M12345")          # a USB serial is never "connected" over the network


def test_pick_auto_with_two_devices_names_both(adb, device, tmp_path):
    with _ExtraDevice(adb, tmp_path / "second") as second:
        with pytest.raises(DeviceError) as e:
            adb.pick_device("auto")
        assert device.serial in str(e.value) and second.serial in str(e.value)
        assert "2 devices" in str(e.value)
    assert adb.pick_device("auto") == device.serial


def test_pick_with_no_device_explains_usb_debugging(tmp_path):
    empty = AdbSession(_free_port(), server_env=_server_env(tmp_path))
    try:
        assert empty.list_devices() == []
        with pytest.raises(DeviceError, match="no adb device is connected.*USB debugging"):
            empty.pick_device("auto")
    finally:
        empty.kill_server()


def test_probe_a_linux_device(adb, device):
    info = adb.probe(device.serial)
    assert info.serial == device.serial
    assert not info.is_android and info.sdk == 0 and info.android_version == ""
    assert info.has_python       # the device's python3 is explicit: the interpreter running the tests
    assert info.abi == {"x86_64": "x86_64", "aarch64": "arm64-v8a"}.get(os.uname().machine,
                                                                         os.uname().machine)
    meminfo = Path("/proc/meminfo").read_text()
    total_kb = int(meminfo.split("MemTotal:")[1].split()[0])
    assert info.total_ram_bytes == total_kb * 1024
    assert 0 < info.available_ram_bytes <= info.total_ram_bytes


def test_device_python_is_the_test_interpreter(adb, device):
    """However the tests were started (no venv activated, another python3 first on PATH), the
    device runs the validator with this interpreter and its packages (ai_edge_litert)."""
    code, out, err = adb.shell(device.serial, ["python3", "-c",
                                               "import sys, ai_edge_litert; print(sys.executable)"])
    assert (code, err) == (0, "") and out.strip() == sys.executable, (out, err)


# ---------------------------------------------------------------------------- files
def test_push_progress_reuse_and_pull(adb, device, tmp_path):
    src = _random_file(tmp_path / "model.bin", 5 * 1024 * 1024 + 123)
    size = src.stat().st_size
    seen: list[tuple[int, int]] = []
    r = adb.push(device.serial, src, f"{TMP}/models/model.bin",
                 progress=lambda done, total: seen.append((done, total)))
    assert r.status == "pushed" and r.size == size
    assert r.sha256 == hashlib.sha256(src.read_bytes()).hexdigest()
    assert len(seen) > 10 and seen[-1] == (size, size)
    assert all(a[0] < b[0] for a, b in zip(seen, seen[1:])) and {t for _, t in seen} == {size}
    on_device = Path(device.root, "models", "model.bin")
    assert on_device.read_bytes() == src.read_bytes()
    assert _partials(device.root) == []

    Path(device.root, "models", "model.bin.partial").write_bytes(b"left by a failed push")
    again: list[tuple[int, int]] = []
    r2 = adb.push(device.serial, src, f"{TMP}/models/model.bin",
                  progress=lambda d, t: again.append((d, t)))
    assert r2.status == "reused" and again == [(size, size)]
    assert _partials(device.root) == []  # the stale leftover went too

    back = tmp_path / "back.bin"
    assert adb.pull(device.serial, f"{TMP}/models/model.bin", back) == size
    assert back.read_bytes() == src.read_bytes()

    src.write_bytes(b"changed")  # a different file at the same path is pushed, not reused
    assert adb.push(device.serial, src, f"{TMP}/models/model.bin").status == "pushed"
    assert on_device.read_bytes() == b"changed"
    adb.remove(device.serial, f"{TMP}/models", recursive=True)
    assert not on_device.parent.exists()
    with pytest.raises(DeviceError, match="not a file"):
        adb.pull(device.serial, f"{TMP}/models/model.bin", back)


def test_paths_with_shell_metacharacters_are_never_interpreted(adb, device, tmp_path):
    token = secrets.token_hex(4)
    marker = tmp_path / f"PWNED_{token}"
    src = tmp_path / "small.bin"
    src.write_bytes(b"payload")
    remote = f"{TMP}/a b; touch {marker}"
    assert adb.push(device.serial, src, remote).status == "pushed"
    odd = f"{TMP}/odd $(touch PWNED1_{token}) `touch PWNED2_{token}` 'sq' \"dq\" \\ $HOME &.bin"
    assert adb.push(device.serial, src, odd).status == "pushed"
    assert adb.run(device.serial, ["cat", odd]).stdout == "payload"

    assert not marker.exists()
    assert list(Path(device.root).glob("PWNED*")) == [] and list(tmp_path.glob("PWNED*")) == []
    assert Path(device.root + remote[len(TMP):]).read_bytes() == b"payload"
    assert Path(device.root + odd[len(TMP):]).read_bytes() == b"payload"
    words = ["$(id)", "`id`", "a;b", "'q'", '"d"', "x y", "*", "$HOME"]
    assert adb.run(device.serial, ["printf", "%s\\n", *words]).stdout.splitlines() == words
    adb.remove(device.serial, odd)
    assert not Path(device.root + odd[len(TMP):]).exists()
    with pytest.raises(TypeError):
        quote_argv("rm -rf /")  # a string is refused: it would be split by the device shell


@pytest.mark.parametrize("keep_failed_sends", [False, True], ids=["adbd-like", "keeps-half-file"])
def test_device_disappears_mid_push(adb, tmp_path, keep_failed_sends):
    root = tmp_path / "dev"
    old = root / "model.bin"
    root.mkdir()
    old.write_bytes(b"old version")
    src = _random_file(tmp_path / "model.bin", 5 * 1024 * 1024)
    with _ExtraDevice(adb, root, disconnect_after_bytes=1_500_000,
                      keep_failed_sends=keep_failed_sends) as dev:
        with pytest.raises(DeviceError, match="went offline|is not connected") as e:
            adb.push(dev.serial, src, f"{TMP}/model.bin")
        assert e.value.exit_code == 2 and dev.serial in str(e.value)
        adb.connect(dev.serial)  # the listener is still up: reconnect (or find it reconnected)
        # a device that cleans up (adbd) has no half file; one that does not still has it, since
        # nobody can remove a file from a device that is gone: the next push replaces it
        assert len(_partials(root)) == int(keep_failed_sends)
        assert old.read_bytes() == b"old version"  # atomic: the old file was never touched
        assert adb.push(dev.serial, src, f"{TMP}/model.bin").status == "pushed"
        assert old.read_bytes() == src.read_bytes() and _partials(root) == []


def test_no_space_left_on_device(adb, tmp_path):
    src = _random_file(tmp_path / "big.bin", 5 * 1024 * 1024)
    # keep_failed_sends: the device leaves its half file; the SDK must remove it by itself
    with _ExtraDevice(adb, tmp_path / "dev", fail_space_after_bytes=1_000_000,
                      keep_failed_sends=True) as dev:
        with pytest.raises(DeviceError, match="No space left on device") as e:
            adb.push(dev.serial, src, f"{TMP}/big.bin")
        assert "free space" in str(e.value)
        assert _partials(dev.root) == [] and not Path(dev.root, "big.bin").exists()
        small = tmp_path / "small.bin"
        small.write_bytes(b"fits")
        assert adb.push(dev.serial, small, f"{TMP}/small.bin").status == "pushed"


# ---------------------------------------------------------------------------- commands
def test_shell_exit_codes_and_stderr(adb, device):
    v2 = "shell_v2" in device.features
    assert adb.features(device.serial) >= {"cmd", "stat_v2"} and ("shell_v2" in adb.features(device.serial)) is v2
    assert adb.shell(device.serial, ["sh", "-c", "exit 7"]).exit_code == 7
    code, out, err = adb.shell(device.serial, ["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert (code, out, err) == ((3, "out\n", "err\n") if v2 else (3, "out\nerr\n", ""))   # v1: merged
    assert adb.run(device.serial, ["echo", "fine"]).stdout == "fine\n"
    assert adb.shell(device.serial, ["printf", "no newline"]) == (0, "no newline", "")
    # output that imitates the v1 exit-status line does not fool it (the real one has a random nonce)
    fake = "\n" + _v1_command("x")[1].decode() + "9\n"
    assert adb.shell(device.serial, ["sh", "-c", 'printf "$1"; exit 4', "sh", fake]) == (4, fake, "")
    sha = adb.run(device.serial, ["sh", "-c", "printf abc | sha256sum"]).stdout.split()[0]
    assert sha == hashlib.sha256(b"abc").hexdigest()
    with pytest.raises(DeviceError, match="exit code 3: err") as e:
        adb.run(device.serial, ["sh", "-c", "echo err >&2; exit 3"])
    assert e.value.exit_code == 2
    with pytest.raises(DeviceError, match="timed out"):
        adb.shell(device.serial, ["sleep", "5"], timeout=0.5)  # 0.5 s without output


def test_runner_killed_by_a_signal_is_an_error(adb, device):
    assert adb.shell(device.serial, ["sh", "-c", "kill -9 $$"]).exit_code == 128 + 9
    with pytest.raises(DeviceError, match="exit code 137 \\(killed by SIGKILL"):
        adb.run(device.serial, ["sh", "-c", "kill -9 $$"])
    with pytest.raises(DeviceError, match="SIGSEGV"):
        adb.run(device.serial, ["sh", "-c", "kill -SEGV $$"])


def test_device_vanishes_mid_run(adb, tmp_path):
    outcome: list[BaseException | None] = []
    sleep = f"29.{secrets.randbelow(10**6):06d}"  # a command line no one else runs

    def runner(serial: str) -> None:
        try:
            adb.run(serial, ["sleep", sleep])
            outcome.append(None)
        except BaseException as e:  # noqa: BLE001 - handed to the test thread
            outcome.append(e)

    with _ExtraDevice(adb, tmp_path / "dev") as dev:
        t = threading.Thread(target=runner, args=(dev.serial,), daemon=True)
        t.start()
        assert dev.wait_for_command(f"sleep {sleep}", timeout=10)
        dev.kill()
        t.join(15)
        assert not t.is_alive()
    assert isinstance(outcome[0], DeviceError) and dev.serial in str(outcome[0])
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, timeout=10)
    assert f"sleep {sleep}" not in ps.stdout  # the device's command died with it


# ---------------------------------------------------------------------------- the real adb CLI
def test_real_adb_cli_against_the_loopback_device(adb, device, tmp_path):
    env = {**os.environ, **adb.server_env, "ANDROID_ADB_SERVER_PORT": str(adb.port)}

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([adb.adb_path, "-P", str(adb.port), "-s", device.serial, *args],
                              env=env, capture_output=True, text=True, timeout=20)

    r = cli("shell", "echo hi; echo oops >&2; exit 5")  # shell v2: exit status and stderr
    if "shell_v2" in device.features:
        assert (r.returncode, r.stdout, r.stderr) == (5, "hi\n", "oops\n")
    else:                                                # a v1-only daemon: adb itself falls back
        assert (r.returncode, r.stdout) == (0, "hi\noops\n")
    r = cli("shell", "-x", "echo v1; echo e1 >&2; exit 4")  # -x: the v1 raw shell, merged output
    assert (r.returncode, sorted(r.stdout.split())) == (0, ["e1", "v1"])
    src = _random_file(tmp_path / "cli.bin", 300_000)
    assert cli("push", str(src), f"{TMP}/cli/dir/cli.bin").returncode == 0  # STA2 + mkdir
    assert Path(device.root, "cli", "dir", "cli.bin").read_bytes() == src.read_bytes()
    assert "cli.bin" in cli("ls", f"{TMP}/cli/dir").stdout  # LIS2
    assert cli("pull", f"{TMP}/cli/dir/cli.bin", str(tmp_path / "back.bin")).returncode == 0
    assert (tmp_path / "back.bin").read_bytes() == src.read_bytes()
    assert device.refused_services == []  # adb opened nothing the loopback does not speak
