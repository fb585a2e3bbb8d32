"""Put a bundle where ``android_demo`` looks for it.

The app (``android_demo/app/src/main/java/.../ModelLocator.kt``) looks, in order, for
``model.litertlm`` + ``model.litertlm.manifest.json`` in its external files directory
(``/sdcard/Android/data/<applicationId>/files/``, writable with ``adb push``, no root), then in its
APK assets (copied to internal storage on first start, since the engine needs a file path).

- bundles up to :data:`ASSET_LIMIT` bytes are copied into ``app/src/main/assets/`` (stored
  uncompressed: ``noCompress += "litertlm"`` in ``app/build.gradle.kts``);
- larger ones would bloat the APK past store limits, so we print the ``adb push`` commands instead
  (and remove a stale asset copy, so the app cannot load an old model by mistake).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

from ..errors import InputError
from ..outputs import is_bundle_file, is_manifest_file
from .container import publish_mode
from .manifest import read_manifest

ASSET_LIMIT = 100 * 10**6            # 100 MB
ASSET_NAME = "model.litertlm"
MANIFEST_NAME = ASSET_NAME + ".manifest.json"
DEFAULT_APP_ID = "dev.edgesdk.demo"


def application_id(android_dir: Path) -> str:
    gradle = android_dir / "app" / "build.gradle.kts"
    try:
        m = re.search(r'applicationId\s*=\s*"([^"]+)"', gradle.read_text(encoding="utf-8"))
    except OSError:
        m = None
    return m.group(1) if m else DEFAULT_APP_ID


def device_dir(app_id: str) -> str:
    return f"/sdcard/Android/data/{app_id}/files"


def _copy_atomic(src: Path, dst: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        publish_mode(tmp)
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_android_dir(android_dir: Path) -> None:
    """``android_dir`` is an android_demo app whose assets hold no bundle we did not write
    (``bundle`` calls this before it writes anything)."""
    if not (android_dir / "app" / "build.gradle.kts").is_file():
        raise InputError("not an android_demo directory (no app/build.gradle.kts)", path=android_dir,
                         fix="pass the android_demo directory of this repository (or a copy of it)")
    _check_assets(android_dir / "app" / "src" / "main" / "assets")


def _check_assets(assets: Path) -> None:
    """Only a bundle and manifest edge-sdk wrote are replaced (or removed) in the app's assets."""
    for p, ours in ((assets / ASSET_NAME, lambda q: is_bundle_file(q, read_manifest)),
                    (assets / MANIFEST_NAME, is_manifest_file)):
        if os.path.lexists(p) and not ours(p):
            raise InputError("exists and is not a bundle edge-sdk wrote; refusing to replace it", path=p,
                             fix="move it out of the app's assets, then bundle again")


def place(bundle: Path, manifest: Path, android_dir: Path, *, limit: int = ASSET_LIMIT) -> dict:
    """Copy into the app's assets, or return the adb commands; a dict for the report."""
    check_android_dir(android_dir)
    assets = android_dir / "app" / "src" / "main" / "assets"
    size = bundle.stat().st_size
    app_id = application_id(android_dir)
    if size <= limit:
        assets.mkdir(parents=True, exist_ok=True)
        _copy_atomic(bundle, assets / ASSET_NAME)
        _copy_atomic(manifest, assets / MANIFEST_NAME)
        return {"mode": "asset", "asset": str(assets / ASSET_NAME), "manifest": str(assets / MANIFEST_NAME),
                "bytes": size, "message": f"copied to {assets / ASSET_NAME} (rebuild the app)"}
    for stale in (assets / ASSET_NAME, assets / MANIFEST_NAME):
        stale.unlink(missing_ok=True)
    dest = device_dir(app_id)
    cmds = [f"adb shell mkdir -p {dest}",
            f"adb push {bundle} {dest}/{ASSET_NAME}",
            f"adb push {manifest} {dest}/{MANIFEST_NAME}"]
    return {"mode": "adb", "device_dir": dest, "commands": cmds, "bytes": size,
            "message": f"{size} bytes is over the {limit}-byte asset limit; push it to the app:\n    "
                       + "\n    ".join(cmds)}
