"""What edge-sdk may replace: only what it wrote itself.

``convert --overwrite`` replaces an existing output directory only when it is an edge_sdk model
directory (its ``model.json`` is ours: ``format`` "edge_sdk.litert_model" and the keys the exporter
writes), it neither equals nor contains the source checkpoint, it holds no checkpoint weights, and it
is not ``/``, ``$HOME``, the working directory or a directory above any of them.

``qat`` writes into a directory only when it is missing or empty, holds its own unfinished run
(``--resume`` continues it, ``--overwrite`` starts over) or its own earlier checkpoint (replaced with
``--overwrite``): ``qat.export.check_qat_output``, on ``refuse_protected`` from here.

Every output directory is built in a staging directory beside it and renamed into place at the
end (``staged_output``): a run killed at any point leaves no half-written model.

``bundle`` replaces an existing file only with ``--overwrite`` and only when the file is a bundle we
wrote (``LITERTLM`` magic and our ``edge_sdk_manifest`` in its system metadata); the side manifest
only when it is our manifest. Everything else is one line, exit 2, naming the path and the fix.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable

from .artefacts import ModelInfo
from .errors import InputError

MODEL_FORMAT = ModelInfo.FORMAT
MODEL_KEYS = frozenset({"format", "version", "files", "signatures", "kv_cache", "context", "prefill"})
MANIFEST_FORMAT = "edge_sdk_manifest"           # edge_sdk.bundle.manifest.MANIFEST_KEY
_CHECKPOINT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")


def _real(p: str | os.PathLike) -> Path:
    return Path(os.path.realpath(os.path.abspath(os.fspath(p))))


def _within(inner: Path, outer: Path) -> bool:
    """``inner`` equals ``outer`` or lies below it (both already real paths)."""
    return inner == outer or outer in inner.parents


def read_json_object(path: Path) -> dict | None:
    """The JSON object in ``path``, or None when it is missing, unreadable, not JSON or not an object."""
    try:
        with open(path, "rb") as f:
            data = f.read(64 * 2**20 + 1)
        if len(data) > 64 * 2**20:
            return None
        obj = json.loads(data)
    except (OSError, ValueError, RecursionError):
        return None
    return obj if isinstance(obj, dict) else None


def is_nonempty_dir(path: str | os.PathLike) -> bool:
    """An existing directory with at least one entry (an unreadable one counts as non-empty)."""
    p = Path(path)
    if not p.is_dir():
        return False
    try:
        with os.scandir(p) as it:
            return next(it, None) is not None
    except OSError:
        return True


def is_model_dir(path: str | os.PathLike) -> bool:
    """``path`` holds a ``model.json`` written by ``edge-sdk convert``."""
    meta = read_json_object(Path(path) / "model.json")
    return (meta is not None and meta.get("format") == MODEL_FORMAT and MODEL_KEYS <= meta.keys()
            and isinstance(meta.get("files"), dict))


def _holds_weights(d: Path) -> str | None:
    """A checkpoint weight file in ``d`` or one level below (we never write one), or None."""
    try:
        top = list(os.scandir(d))
    except OSError:
        return None
    for e in top:
        if e.name.endswith(_CHECKPOINT_SUFFIXES) and e.is_file(follow_symlinks=False):
            return e.path
    for e in top:
        if e.is_dir(follow_symlinks=False):
            try:
                for f in os.scandir(e.path):
                    if f.name.endswith(_CHECKPOINT_SUFFIXES):
                        return f.path
            except OSError:
                continue
    return None


def refuse_protected(out: Path, sources: Iterable[str | os.PathLike], keep: str,
                     action: str = "replace it with --overwrite") -> None:
    """Refuse to replace ``/``, ``$HOME``, the working directory, a directory above any of them,
    or one that is or contains a source of this run."""
    real = _real(out)
    protected = {"/": Path("/"), "$HOME": _real(Path.home()), "the working directory": _real(Path.cwd())}
    for name, p in protected.items():
        if _within(p, real):
            what = f"is {name}" if p == real else f"contains {name}"
            raise InputError(f"refusing to {action}: it {what}", path=out, fix=keep)
    for s in sources:
        src = _real(s)
        if _within(src, real):
            what = "is" if src == real else "contains"
            raise InputError(f"refusing to {action}: it {what} the source checkpoint {s}", path=out, fix=keep)


def check_replaceable_dir(out_dir: str | os.PathLike, *, sources: Iterable[str | os.PathLike] = ()) -> None:
    """Raise ``InputError`` unless ``out_dir`` (an existing, non-empty directory) may be replaced
    by ``convert --overwrite``. ``sources``: inputs of this run that must survive it."""
    out = Path(out_dir)
    real = _real(out)
    keep = "choose a new output directory (edge-sdk replaces only a directory it wrote)"
    refuse_protected(out, sources, keep)
    if not (real / "model.json").is_file():
        raise InputError("refusing to replace it with --overwrite: not an edge-sdk output directory "
                         "(no model.json)", path=out, fix=keep)
    if not is_model_dir(real):
        raise InputError("refusing to replace it with --overwrite: its model.json was not written by "
                         "edge-sdk convert", path=out, fix=keep)
    weights = _holds_weights(real)
    if weights is not None:
        raise InputError(f"refusing to replace it with --overwrite: it holds checkpoint weights ({weights})",
                         path=out, fix=keep)


def _clean_stale_staging(parent: Path, name: str, tag: str) -> None:
    prefix = f".{name}.{tag}-"
    for d in parent.glob(f"{prefix}*.tmp"):
        try:
            pid = int(d.name[len(prefix):].split("-")[0])
        except ValueError:
            continue
        if not _pid_alive(pid):
            shutil.rmtree(d, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def staged_output(out_dir: str | os.PathLike, tag: str, *, replace: bool) -> Iterator[Path]:
    """A fresh staging directory beside ``out_dir`` (``.<name>.<tag>-<pid>-<hex>.tmp``: the same
    filesystem; those of processes that are gone are removed first). When the block ends normally
    it is renamed onto ``out_dir``: a missing or empty one, or, with ``replace`` (the caller has
    checked that it is ours), a non-empty one, renamed aside and deleted after. When the block
    raises, the staging directory is removed and ``out_dir`` is untouched."""
    out = Path(out_dir).absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    _clean_stale_staging(out.parent, out.name, tag)
    staging = out.parent / f".{out.name}.{tag}-{os.getpid()}-{secrets.token_hex(4)}.tmp"
    staging.mkdir()
    try:
        yield staging
        if out.exists() and not out.is_dir():
            raise InputError("output path exists and is not a directory", path=out)
        if is_nonempty_dir(out):
            if not replace:
                raise InputError("output directory is not empty", path=out,
                                 fix="choose a new directory, or pass --overwrite")
            old = out.parent / f".{out.name}.old-{os.getpid()}-{secrets.token_hex(4)}"
            os.rename(out, old)
            os.rename(staging, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, out)   # onto a missing or empty directory
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def is_bundle_file(path: str | os.PathLike, read_manifest: Callable[[Path], dict]) -> bool:
    """``path`` is a ``.litertlm`` we wrote: ``LITERTLM`` magic and our manifest in its metadata
    (``read_manifest``: ``edge_sdk.bundle.read_manifest``)."""
    p = Path(path)
    try:
        if not p.is_file() or p.is_symlink():
            return False
        with open(p, "rb") as f:
            if f.read(8) != b"LITERTLM":
                return False
        m = read_manifest(p)
    except Exception:   # any malformed header: not ours
        return False
    return isinstance(m, dict) and m.get("format") == MANIFEST_FORMAT


def is_manifest_file(path: str | os.PathLike) -> bool:
    p = Path(path)
    m = None if p.is_symlink() else read_json_object(p)
    return m is not None and m.get("format") == MANIFEST_FORMAT and isinstance(m.get("sections"), list)


def check_replaceable_bundle(out: str | os.PathLike, manifest: str | os.PathLike, *, overwrite: bool,
                             read_manifest: Callable[[Path], dict]) -> None:
    """Raise ``InputError`` unless writing the bundle ``out`` and its side ``manifest`` replaces
    nothing, or (``overwrite``) only a bundle and manifest edge-sdk wrote."""
    for p, ours, what in ((Path(out), lambda q: is_bundle_file(q, read_manifest), "a bundle"),
                          (Path(manifest), is_manifest_file, "a bundle manifest")):
        if not os.path.lexists(p):
            continue
        if p.is_dir() and not p.is_symlink():
            raise InputError("exists and is a directory", path=p, fix="pass a .litertlm file name")
        if not ours(p):
            raise InputError(f"exists and is not {what} edge-sdk wrote; refusing to replace it", path=p,
                             fix="choose another output file name")
        if not overwrite:
            raise InputError(f"exists ({what} edge-sdk wrote)", path=p,
                             fix="pass --overwrite to replace it, or choose another output file name")
