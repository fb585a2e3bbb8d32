#!/usr/bin/env python
"""Offline packaging check: does a .litertlm survive being shipped inside an APK, intact and
mmap-able?

    python scripts/apk_check.py BUNDLE.litertlm [--work DIR] [--align 16384] [--json]

With Debian's Android build tools (``apt-get install aapt apksigner zipalign``; ``keytool`` from
any JDK) it

1. packages the bundle (and its ``.manifest.json`` when present) as ``assets/model.litertlm``
   into a minimal APK with ``aapt2 link``, the bundle STORED (``-0 .litertlm``: no compression,
   as ``noCompress += "litertlm"`` does in android_demo's Gradle file);
2. aligns it with ``zipalign`` so every stored entry starts on an ``--align`` boundary (16 KiB
   by default: the bundle's sections are 16 KiB-aligned inside the file, so each one is then
   page-aligned inside the APK, on 4 KiB- and 16 KiB-page devices alike);
3. signs it with a throwaway key (``keytool`` + ``apksigner sign``), then checks the alignment
   (``zipalign -c -p 4``) and the signature (``apksigner verify``);
4. reads the APK's zip structure itself: the asset is STORED, its data starts at a multiple of
   ``--align``, and its bytes hash to the bundle's sha256 (and each section named in the manifest
   hashes to the manifest's sha256 at its aligned offset).

Exit codes: 0 every check passed; 1 a check failed; 2 tools missing or bad input. The test
(tests/test_bundle.py) skips, naming the missing tools, when they are absent.
"""

from __future__ import annotations

import argparse
import json
import shutil
import struct
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from edge_sdk.hashing import sha256_file

TOOLS = ("aapt2", "zipalign", "apksigner", "keytool")
ASSET = "assets/model.litertlm"
MANIFEST_ASSET = "assets/model.litertlm.manifest.json"
_MIN_MANIFEST = ('<?xml version="1.0" encoding="utf-8"?>\n'
                 '<manifest package="dev.edgesdk.apkcheck">\n  <application/>\n</manifest>\n')
_LOCAL_HEADER = 30          # fixed part of a zip local file header
_KS_PASS = "edge-sdk-throwaway"


def missing_tools() -> list[str]:
    return [t for t in TOOLS if shutil.which(t) is None]


def _run(cmd: list[str]) -> str:
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:2])} failed ({p.returncode}): {(p.stderr or p.stdout).strip()[-800:]}")
    return p.stdout + p.stderr


def entry_data_offset(apk: Path, info: zipfile.ZipInfo) -> int:
    """Where an entry's data starts: after its local header (whose extra field zipalign pads)."""
    with open(apk, "rb") as f:
        f.seek(info.header_offset)
        head = f.read(_LOCAL_HEADER)
    if head[:4] != b"PK\x03\x04":
        raise RuntimeError(f"{info.filename}: no local file header at {info.header_offset}")
    name_len, extra_len = struct.unpack("<HH", head[26:30])
    return info.header_offset + _LOCAL_HEADER + name_len + extra_len


def build_apk(bundle: Path, work: Path, align: int) -> Path:
    """Package, align, sign; returns the signed APK."""
    assets = work / "assets"
    assets.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(bundle, assets / Path(ASSET).name)
    side = bundle.with_name(bundle.name + ".manifest.json")
    if side.is_file():
        shutil.copyfile(side, assets / Path(MANIFEST_ASSET).name)
    (work / "AndroidManifest.xml").write_text(_MIN_MANIFEST, encoding="utf-8")
    raw, aligned, signed, ks = (work / n for n in ("raw.apk", "aligned.apk", "signed.apk", "throwaway.p12"))
    _run(["aapt2", "link", "--manifest", str(work / "AndroidManifest.xml"), "-A", str(assets),
          "-0", ".litertlm", "-o", str(raw)])
    _run(["zipalign", "-f", str(align), str(raw), str(aligned)])
    _run(["keytool", "-genkeypair", "-keystore", str(ks), "-storetype", "PKCS12", "-storepass", _KS_PASS,
          "-alias", "apkcheck", "-keyalg", "RSA", "-keysize", "2048", "-validity", "1",
          "-dname", "CN=edge-sdk apk_check (throwaway)", "-noprompt"])
    _run(["apksigner", "sign", "--ks", str(ks), "--ks-pass", f"pass:{_KS_PASS}", "--out", str(signed), str(aligned)])
    return signed


def check_apk(bundle: str | Path, work: str | Path | None = None, *, align: int = 16384) -> dict:
    """Build the APK and run every check; a dict with ``passed`` and one entry per check."""
    bundle = Path(bundle)
    if align <= 0 or align & (align - 1) or align % 4:
        raise ValueError(f"alignment {align} must be a power of two >= 4")
    tmp = None
    if work is None:
        tmp = tempfile.TemporaryDirectory(prefix="apk_check.")
        work = tmp.name
    work = Path(work)
    try:
        apk = build_apk(bundle, work, align)
        checks: dict[str, dict] = {}
        _run(["zipalign", "-c", "-p", "4", str(apk)])
        checks["zipalign -c -p 4"] = {"ok": True}
        out = _run(["apksigner", "verify", "--verbose", str(apk)])
        schemes = [ln.split("(")[0].replace("Verified using", "").strip() for ln in out.splitlines()
                   if ln.startswith("Verified using") and ln.rstrip().endswith("true")]
        checks["apksigner verify"] = {"ok": "Verifies" in out, "schemes": schemes}
        with zipfile.ZipFile(apk) as z:
            info = z.getinfo(ASSET)
        offset = entry_data_offset(apk, info)
        want = sha256_file(bundle)
        got = sha256_file(apk, offset, offset + info.file_size)
        checks["asset stored"] = {"ok": info.compress_type == zipfile.ZIP_STORED
                                  and info.compress_size == info.file_size == bundle.stat().st_size,
                                  "compress_type": info.compress_type}
        checks["asset aligned"] = {"ok": offset % align == 0, "offset": offset, "align": align}
        checks["asset sha256"] = {"ok": got == want, "sha256": got}
        side = bundle.with_name(bundle.name + ".manifest.json")
        if side.is_file():
            sections = json.loads(side.read_text(encoding="utf-8")).get("sections", [])
            bad = [s["index"] for s in sections
                   if sha256_file(apk, offset + s["begin"], offset + s["end"]) != s["sha256"]]
            page = [s["index"] for s in sections if (offset + s["begin"]) % 4096]
            checks["sections sha256"] = {"ok": not bad, "sections": len(sections), "mismatched": bad}
            checks["sections page-aligned"] = {"ok": not page, "unaligned": page}
        return {"apk": str(apk), "bundle": str(bundle), "passed": all(c["ok"] for c in checks.values()),
                "checks": checks}
    finally:
        if tmp is not None:
            tmp.cleanup()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bundle")
    ap.add_argument("--work", default=None, help="keep the APKs here (default: a temp dir, removed)")
    ap.add_argument("--align", type=int, default=16384, help="zipalign boundary for stored entries")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    missing = missing_tools()
    if missing:
        print(f"apk_check: missing tools: {', '.join(missing)} (apt-get install aapt apksigner zipalign; "
              "keytool comes with a JDK)", file=sys.stderr)
        return 2
    if not Path(args.bundle).is_file():
        print(f"apk_check: {args.bundle}: no such file", file=sys.stderr)
        return 2
    try:
        res = check_apk(args.bundle, args.work, align=args.align)
    except (RuntimeError, ValueError, KeyError) as e:
        print(f"apk_check: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        for name, c in res["checks"].items():
            print(f"  {'ok  ' if c['ok'] else 'FAIL'} {name}: "
                  + ", ".join(f"{k}={v}" for k, v in c.items() if k != "ok"))
        print("PASS" if res["passed"] else "FAIL")
    return 0 if res["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
