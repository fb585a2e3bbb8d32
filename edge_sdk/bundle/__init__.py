"""Packaging: a converted model directory → a ``.litertlm`` bundle LiteRT-LM runs, its
``edge_sdk_manifest`` (inside and beside it), and placement for ``android_demo``."""

from .litertlm import BundleReport, bundle
from .manifest import MANIFEST_KEY, find_manifest_key, manifest_path_for, read_manifest

__all__ = ["BundleReport", "bundle", "read_manifest", "MANIFEST_KEY", "find_manifest_key", "manifest_path_for"]
