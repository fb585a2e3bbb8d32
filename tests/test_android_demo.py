"""Static checks of ``android_demo/`` (Gradle cannot run here: no Google Maven, no Android SDK),
and the contract between the SDK and the app: every manifest key the Kotlin code reads exists, with
the right type, in a manifest the SDK writes; asset names and the push directory agree."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from edge_sdk.bundle import android as sdk_android

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "android_demo"
APP = DEMO / "app"
SRC = APP / "src" / "main"
KOTLIN = sorted((SRC / "java").rglob("*.kt"))
ANDROID_NS = "{http://schemas.android.com/apk/res/android}"
LITERTLM_API = {"Backend", "Conversation", "ConversationConfig", "Engine", "EngineConfig", "SamplerConfig",
                "Message", "Contents", "Content", "LogSeverity"}


def strip_code(text: str) -> str:
    """Kotlin / Gradle Kotlin DSL source without comments and string literals (for bracket counts)."""
    text = re.sub(r'"""[\s\S]*?"""', '""', text)
    text = re.sub(r'"(?:\\.|[^"\\\n])*"', '""', text)
    text = re.sub(r"'(?:\\.|[^'\\\n])'", "''", text)
    text = re.sub(r"/\*[\s\S]*?\*/", "", text)
    return re.sub(r"//[^\n]*", "", text)


def assert_balanced(path: Path) -> None:
    stack, pairs = [], {")": "(", "]": "[", "}": "{"}
    for i, ch in enumerate(strip_code(path.read_text(encoding="utf-8"))):
        if ch in "([{":
            stack.append(ch)
        elif ch in pairs:
            assert stack and stack.pop() == pairs[ch], f"{path.name}: unbalanced '{ch}' at char {i}"
    assert not stack, f"{path.name}: unclosed {stack}"


@pytest.mark.parametrize("name", ["settings.gradle.kts", "build.gradle.kts", "app/build.gradle.kts"])
def test_gradle_files_parse(name):
    assert_balanced(DEMO / name)


def test_gradle_plugins_repositories_and_dependencies():
    settings = (DEMO / "settings.gradle.kts").read_text()
    root = (DEMO / "build.gradle.kts").read_text()
    app = (APP / "build.gradle.kts").read_text()
    assert 'include(":app")' in settings and "google()" in settings and "mavenCentral()" in settings
    for plugin in ("com.android.application", "org.jetbrains.kotlin.android"):
        assert re.search(rf'id\("{re.escape(plugin)}"\) version "\d+\.\d+\.\d+" apply false', root), plugin
        assert f'id("{plugin}")' in app
    coord = re.search(r'implementation\("com\.google\.ai\.edge\.litertlm:litertlm-android:([^"]+)"\)', app)
    assert coord and re.fullmatch(r"\d+\.\d+\.\d+", coord.group(1)), "pin an exact LiteRT-LM version"
    for dep in ("org.jetbrains.kotlinx:kotlinx-coroutines-android:", "androidx.lifecycle:lifecycle-runtime-ktx:",
                "androidx.appcompat:appcompat:"):
        assert f'implementation("{dep}' in app, dep
    assert re.search(r'noCompress \+= listOf\("litertlm"\)', app), "the bundle must be stored uncompressed"
    assert re.search(r"minSdk = (\d+)", app) and int(re.search(r"minSdk = (\d+)", app).group(1)) >= 24
    wrapper = (DEMO / "gradle" / "wrapper" / "gradle-wrapper.properties").read_text()
    assert re.search(r"gradle-\d+\.\d+(\.\d+)?-bin\.zip", wrapper)


def test_manifest_xml_declares_the_activity():
    root = ET.parse(SRC / "AndroidManifest.xml").getroot()
    activities = root.findall("application/activity")
    names = [a.get(f"{ANDROID_NS}name") for a in activities]
    assert ".MainActivity" in names
    main = activities[names.index(".MainActivity")]
    assert main.get(f"{ANDROID_NS}exported") == "true"
    actions = {e.get(f"{ANDROID_NS}name") for e in main.iter("action")}
    cats = {e.get(f"{ANDROID_NS}name") for e in main.iter("category")}
    assert "android.intent.action.MAIN" in actions and "android.intent.category.LAUNCHER" in cats
    app_id = re.search(r'applicationId = "([^"]+)"', (APP / "build.gradle.kts").read_text()).group(1)
    namespace = re.search(r'namespace = "([^"]+)"', (APP / "build.gradle.kts").read_text()).group(1)
    activity_src = (SRC / "java" / Path(*namespace.split(".")) / "MainActivity.kt").read_text()
    assert f"package {namespace}" in activity_src and "class MainActivity" in activity_src
    assert app_id == sdk_android.DEFAULT_APP_ID == sdk_android.application_id(DEMO)


def test_resources_referenced_by_kotlin_exist():
    ids, strings = set(), set()
    for layout in (SRC / "res" / "layout").glob("*.xml"):
        for el in ET.parse(layout).getroot().iter():
            v = el.get(f"{ANDROID_NS}id")
            if v:
                ids.add(v.split("/", 1)[1])
    res = ET.parse(SRC / "res" / "values" / "strings.xml").getroot()
    strings = {s.get("name") for s in res.iter("string")}
    styles = {s.get("name") for s in ET.parse(SRC / "res" / "values" / "themes.xml").getroot().iter("style")}
    code = "\n".join(p.read_text() for p in KOTLIN)
    assert set(re.findall(r"R\.id\.(\w+)", code)) <= ids
    assert set(re.findall(r"R\.string\.(\w+)", code)) <= strings
    assert set(re.findall(r"R\.layout\.(\w+)", code)) <= {p.stem for p in (SRC / "res" / "layout").glob("*.xml")}
    manifest = (SRC / "AndroidManifest.xml").read_text()
    assert set(re.findall(r"@string/(\w+)", manifest)) <= strings
    assert set(re.findall(r"@style/([\w.]+)", manifest)) <= styles


@pytest.mark.parametrize("path", KOTLIN, ids=lambda p: p.name)
def test_kotlin_sources_parse_and_use_the_litertlm_api(path):
    assert_balanced(path)
    text = path.read_text()
    pkg = re.search(r"^package ([\w.]+)$", text, re.M).group(1)
    assert path.parent == SRC / "java" / Path(*pkg.split("."))
    for name in re.findall(r"^import com\.google\.ai\.edge\.litertlm\.(\w+)$", text, re.M):
        assert name in LITERTLM_API, name


def test_app_uses_engine_memory_gate_and_stats():
    code = {p.name: p.read_text() for p in KOTLIN}
    main = code["MainActivity.kt"]
    for needle in ("EngineConfig(", "Backend.CPU()", "initialize()", "createConversation(", "sendMessageAsync(",
                   "maxNumTokens = manifest.maxNumTokens", "MemoryGate.check(", "tokens/s", "VmHWM"):
        assert needle in main, needle
    gate = code["MemoryGate.kt"]
    assert "ActivityManager.MemoryInfo()" in gate and "availMem" in gate and "avail < required" in gate
    assert '"/proc/self/status"' in gate and 'procStatusKb("VmHWM")' in gate


# MemoryGate.procStatusKb, as the Kotlin reads a /proc status line (pinned below, whitespace aside).
_PROC_STATUS_KB = ('File("/proc/self/status").useLines { lines -> lines.firstOrNull { it.startsWith("$field:") } '
                   "?.substringAfter(':')?.trim()?.removeSuffix(\"kB\")?.trim()?.toLongOrNull() }")


def app_proc_status_kb(status: str, field: str) -> int | None:
    """``MemoryGate.procStatusKb(field)`` step for step, on the text of a /proc status file."""
    line = next((ln for ln in status.splitlines() if ln.startswith(f"{field}:")), None)
    if line is None:
        return None
    value = line.split(":", 1)[1].strip().removesuffix("kB").strip()
    return int(value) if re.fullmatch(r"[+-]?\d+", value) else None     # Kotlin's toLongOrNull


@pytest.mark.parametrize("status", [
    "Name:\tapp\nVmPeak:\t 9000 kB\nVmHWM:\t  812340 kB\nVmRSS:\t  501234 kB\nRssAnon:\t 100 kB\n",
    "VmHWMx:\t1 kB\nVmRSS:\t7 kB\nVmHWM:\t2048 kB\n",          # a longer key first, the field last
    "/proc",                                                         # this host's, read in the test
])
def test_app_peak_rss_is_the_validators_figure(status, tmp_path):
    """The app shows the process's peak RSS as ``procStatusKb("VmHWM") * 1024``; the validator's
    ``peak_rss_bytes`` comes from ``memwatch.read_status``. Both must read the same line into the
    same bytes, or the app's figure and the report's would not compare."""
    from edge_sdk.validate import memwatch

    gate = (SRC / "java" / "dev" / "edgesdk" / "demo" / "MemoryGate.kt").read_text()
    assert _PROC_STATUS_KB in " ".join(gate.split()), "MemoryGate.procStatusKb changed: update the mirror"
    assert 'peakRssBytes(): Long? = procStatusKb("VmHWM")?.times(1024)' in gate
    assert 'currentRssBytes(): Long? = procStatusKb("VmRSS")?.times(1024)' in gate
    text = Path("/proc/self/status").read_text() if status == "/proc" else status
    (tmp_path / "status").write_text(text)
    sdk = memwatch.read_status(str(tmp_path / "status"))
    for field in ("VmHWM", "VmRSS"):
        assert app_proc_status_kb(text, field) * 1024 == sdk[field] > 0, field
    assert app_proc_status_kb(text, "VmSwapX") is None        # a missing field shows nothing, not 0
    assert app_proc_status_kb("VmHWM:\tn/a kB\n", "VmHWM") is None


# ---------------------------------------------------------------- SDK ↔ app contract

_ACCESSOR = re.compile(r"root\.(long|string|bool)\(ManifestKeys\.(\w+)\)(!!)?")


def kotlin_manifest_keys() -> dict[str, tuple[str, str, bool]]:
    """ManifestKeys constant → (dotted path, accessor type, required) as BundleManifest.kt reads it."""
    text = (SRC / "java" / "dev" / "edgesdk" / "demo" / "BundleManifest.kt").read_text()
    consts = dict(re.findall(r'const val (\w+) = "([^"]*)"', text))
    reads = {name: (consts[name], kind, bool(bang)) for kind, name, bang in _ACCESSOR.findall(text)}
    assert len(reads) >= 10, "BundleManifest.kt no longer reads the manifest the way this test expects"
    return reads


def test_kotlin_reads_json_only_through_manifest_keys():
    for p in KOTLIN:
        literal = re.findall(r'\.(?:opt|get)\w*\(\s*"([^"]+)"', p.read_text())
        assert not literal, f"{p.name} reads JSON keys {literal} outside ManifestKeys"


@pytest.fixture(scope="module")
def sdk_manifest(tmp_path_factory, multimodal_ckpt):
    pytest.importorskip("litert_lm_builder")
    from test_bundle import make_tokenizer

    from edge_sdk.pipeline import bundle_model, convert

    tmp = tmp_path_factory.mktemp("contract")
    convert(multimodal_ckpt, tmp / "model", recipe="mobile", text_only=True, context=64, prefill=8)
    rep = bundle_model(tmp / "model", tmp / "model.litertlm", tokenizer=make_tokenizer(tmp / "tok", 512),
                       android=_demo_copy(tmp / "demo"))
    return rep


def _demo_copy(dest: Path) -> Path:
    (dest / "app").mkdir(parents=True)
    (dest / "app" / "build.gradle.kts").write_text((APP / "build.gradle.kts").read_text())
    return dest


def test_every_key_the_app_reads_is_in_the_sdk_manifest(sdk_manifest):
    from edge_sdk.bundle import find_manifest_key

    # the app reads the side file; it is the JSON stored in the bundle, byte for byte
    manifest = json.loads(sdk_manifest.manifest_path.read_text())
    types = {"long": (int,), "string": (str,), "bool": (bool,)}
    for const, (path, kind, required) in kotlin_manifest_keys().items():
        value = find_manifest_key(manifest, path)           # KeyError: the SDK does not write it
        if value is None:
            assert not required, f"{const} ({path}) is read with !! but the SDK wrote null"
            continue
        assert isinstance(value, types[kind]) and not (kind == "long" and isinstance(value, bool)), (path, value)
    text = (SRC / "java" / "dev" / "edgesdk" / "demo" / "BundleManifest.kt").read_text()
    assert f'EXPECTED_FORMAT = "{manifest["format"]}"' in text
    assert f"SUPPORTED_VERSION = {manifest['version']}" in text
    assert manifest["memory"]["planned_peak_bytes"] > 0 and manifest["bundle"]["bytes"] == \
        sdk_manifest.path.stat().st_size                   # the app refuses a truncated copy by this


def test_asset_names_and_push_dir_agree(sdk_manifest):
    locator = (SRC / "java" / "dev" / "edgesdk" / "demo" / "ModelLocator.kt").read_text()
    assert f'const val MODEL_NAME = "{sdk_android.ASSET_NAME}"' in locator
    assert 'MANIFEST_NAME = "$MODEL_NAME.manifest.json"' in locator
    assert sdk_android.MANIFEST_NAME == sdk_android.ASSET_NAME + ".manifest.json"
    assert "getExternalFilesDir(null)" in locator        # = /sdcard/Android/data/<appId>/files
    placed = sdk_manifest.android
    assert placed["mode"] == "asset" and Path(placed["asset"]).read_bytes() == sdk_manifest.path.read_bytes()
    assert Path(placed["manifest"]).name == sdk_android.MANIFEST_NAME
    gitignore = (DEMO / ".gitignore").read_text()
    assert f"app/src/main/assets/{sdk_android.ASSET_NAME}" in gitignore   # model bytes never committed
