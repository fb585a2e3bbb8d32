"""Run a converted model directory (``edge-sdk convert`` output) in the real LiteRT runtime.

Self-contained on purpose: imports only numpy, json, ai_edge_litert and two standard-library
siblings (``paging.py``, ``edge_sdk/decoding.py``), so this file and they can be pushed beside the
validator's runner onto a device that has no edge_sdk.

    m = LiteRTModel(out_dir, backend="xnnpack", api="interpreter")
    logits = m.prefill(ids)        # [T, V]: logits of EVERY prompt position (cache carries over)
    nxt = m.decode(int(logits[-1].argmax()))   # [V]
    toks = m.greedy(ids, 16)       # reset + prefill + 16 argmax tokens
    m.reset()

How prompts run: in chunks of the model's prefill length T through the ``score_<T>``
signature, which is ``prefill_<T>`` plus the logits of every position (what perplexity and KL
divergence need; same weights, same cache update). A last chunk shorter than T is padded to T
with its last token when the padded positions still fit the cache: the padded positions write
K/V past the real ones, which the causal mask hides and later steps overwrite before they become
visible. When they would not fit, the remaining tokens run through ``decode`` one by one.
``prefill(ids, logits=False)`` uses ``prefill_<T>`` (the engine's signature; no logits).
A model converted without ``score_<T>`` runs prompts through ``decode`` per position.
``decode`` steps take ``decode_<S>`` for the smallest S > the position where the model has them
(attention over the first S cache slots; the same logits, bit for bit; ``decode_spans=False``
keeps to ``decode``).

Masks: additive float32 [1, 1, T, C], 0 where key position j <= the query's position, else
-1e30 (causal over the whole cache; sliding windows are applied inside the graph).

Backends: ``backend="xnnpack"`` (the Interpreter's default delegate, or CompiledModel with
CpuKernelMode.XNNPACK and an XNNPACK weight cache FILE named by ``file_key`` (the file's identity and
change stamps, since the cache is never invalidated when a model changes; never its bytes' hash,
which would read the whole file into the page cache at every load); it lives in
``OUT_DIR/.xnnpack_cache/``, or a temp directory when OUT_DIR is read-only) or ``"builtin"`` (the reference kernels:
``BUILTIN_WITHOUT_DEFAULT_DELEGATES`` / CpuKernelMode.BUILTIN; weights are read in place from the
mmapped file). ``backend_info`` says what was asked for and set up.

Memory: the Interpreter's XNNPACK delegate repacks the weights of every signature it runs into
anonymous memory (prefill, decode and score each: up to ~3x the weights); CompiledModel with the
weight cache holds one packed copy, file-backed. Measure memory with ``api="compiled"`` (or
builtin kernels). With CompiledModel the KV cache lives in one host buffer per cache tensor,
bound as both input and output of every signature, so the graph updates it in place (the
Interpreter API copies it in and out of each step). The lookup tables (``embedder``,
``per_layer_embedder``) get ``madvise(MADV_RANDOM)``: a looked-up row faults in its own pages.

``check_logits`` refuses non-finite or constant logits (e.g. an INT2-blockwise model, which the
builtin kernels run as all zeros, silently).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import time

import numpy as np

try:
    from edge_sdk.decoding import greedy
    from edge_sdk.litert import paging
except ImportError:  # standalone on a device: decoding.py and paging.py pushed beside this file
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import paging  # type: ignore[no-redef]
    from decoding import greedy  # type: ignore[no-redef]

MASKED = np.float32(-1e30)
TABLE_FILES = ("embedder", "per_layer_embedder")   # memory-mapped lookup tables: only looked-up rows count


class OutputCheckError(RuntimeError):
    """The model ran but its outputs cannot be right (non-finite or constant logits)."""


def check_logits(logits: np.ndarray, what: str = "logits") -> None:
    a = np.asarray(logits, np.float32)
    a = a.reshape(-1, a.shape[-1]) if a.ndim else a.reshape(1, 1)
    bad = int(a.size - np.count_nonzero(np.isfinite(a)))
    if bad:
        raise OutputCheckError(f"{what}: {bad} non-finite values")
    const = int(np.count_nonzero(a.max(axis=1) == a.min(axis=1)))
    if const:
        raise OutputCheckError(f"{what}: {const} of {a.shape[0]} rows are constant "
                               f"(all {float(a[0, 0]):g}); the kernels computed nothing useful")


def file_key(path: str) -> str:
    """What names a file's XNNPACK weight cache: a digest of its identity and every stamp a change
    moves (device, inode, size, mtime and ctime in ns; ctime cannot be set back by any user call,
    so a file patched in place, even at the same size and with its mtime restored, gets a new key).
    Reading the file to hash its bytes would pull all of it into the page cache on every load."""
    st = os.stat(path)
    ident = f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"
    return hashlib.sha256(ident.encode()).hexdigest()[:24]


class _Session:
    """One .tflite file under one API/kernel choice: ``run(signature, feeds) -> outputs``."""

    def __init__(self, path: str, backend: str, api: str, threads: int | None, cache_dir: str | None):
        self.path, self.api, self.weight_cache, self.cache_was_built = path, api, None, False
        self.timings: dict[str, list[float]] | None = None   # set to a dict to time run() (profile)
        if api == "interpreter":
            from ai_edge_litert.interpreter import Interpreter, OpResolverType
            kind = (OpResolverType.AUTO if backend == "xnnpack"
                    else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
            self._it = Interpreter(model_path=path, num_threads=threads,
                                   experimental_op_resolver_type=kind)
            self._runners: dict = {}
        elif api == "compiled":
            from ai_edge_litert.compiled_model import CompiledModel, CpuKernelMode, CpuOptions, Options
            kw = {"num_threads": int(threads or 0)}
            if backend == "xnnpack":
                kw["kernel_mode"] = CpuKernelMode.XNNPACK
                self.weight_cache = self.cache_file(path, cache_dir)
                self.cache_was_built = not os.path.isfile(self.weight_cache)
                kw["xnnpack_weight_cache_path"] = self.weight_cache
            else:
                kw["kernel_mode"] = CpuKernelMode.BUILTIN
            self._cm = CompiledModel.from_file(path, options=Options(cpu_options=CpuOptions(**kw)))
            self._bufs: dict = {}
        else:
            raise ValueError(f"api must be 'interpreter' or 'compiled', not {api!r}")

    @staticmethod
    def cache_file(path: str, cache_dir: str | None) -> str:
        d = cache_dir
        if d is None:
            d = os.path.join(os.path.dirname(os.path.abspath(path)), ".xnnpack_cache")
            try:
                os.makedirs(d, exist_ok=True)
                if not os.access(d, os.W_OK):
                    raise PermissionError(d)
            except OSError:
                d = os.path.join(tempfile.gettempdir(), "edge_sdk_xnnpack_cache")
        os.makedirs(d, exist_ok=True)
        stem = os.path.splitext(os.path.basename(path))[0]
        return os.path.join(d, f"{stem}-{file_key(path)}.xnnpack_cache")

    def close(self) -> None:
        """Release the runtime's model (its buffers, arenas and mappings)."""
        self._bufs = {}
        cm = getattr(self, "_cm", None)
        if cm is not None:
            cm.close()
            self._cm = None
        self._it = self._runners = None

    def run(self, sig: str, feeds: dict[str, np.ndarray], state: dict | None = None) -> dict[str, np.ndarray]:
        """Run ``sig``. ``state`` (CompiledModel only): {name: TensorBuffer} bound as BOTH the input
        and the output of that name, so the graph updates it in place (the KV cache: one live
        copy, never copied in or out); those names are not in the returned dict."""
        if self.timings is None:
            return self._run(sig, feeds, state)
        t0 = time.perf_counter()
        out = self._run(sig, feeds, state)
        self.timings.setdefault("run", []).append(time.perf_counter() - t0)
        return out

    def _run(self, sig: str, feeds: dict[str, np.ndarray], state: dict | None) -> dict[str, np.ndarray]:
        if self.api == "interpreter":
            r = self._runners.get(sig)
            if r is None:
                r = self._runners[sig] = self._it.get_signature_runner(sig)
            t0 = time.perf_counter()
            out = r(**feeds)
            self._timed("compute", t0)   # the signature runner writes, invokes and reads in one call
            return out
        state = state or {}
        if sig not in self._bufs:
            details = {k: d for k, d in self._cm.get_output_tensor_details(sig).items() if k not in state}
            ins = {k: self._cm.create_input_buffer_by_name(sig, k) for k in feeds}
            outs = {k: self._cm.create_output_buffer_by_name(sig, k) for k in details}
            self._bufs[sig] = (ins, outs, details)
        ins, outs, details = self._bufs[sig]
        for k, v in feeds.items():
            ins[k].write(np.ascontiguousarray(v))
        t0 = time.perf_counter()
        self._cm.run_by_name(sig, {**ins, **state}, {**outs, **state})
        self._timed("compute", t0)
        return {k: outs[k].read(int(np.prod(d["shape"])), np.dtype(d["dtype"])).reshape(d["shape"])
                for k, d in details.items()}


    def _timed(self, what: str, t0: float) -> None:
        if self.timings is not None:
            self.timings.setdefault(what, []).append(time.perf_counter() - t0)


class LiteRTModel:
    """A converted model directory in LiteRT (see the module docstring)."""

    def __init__(self, out_dir: str | os.PathLike, *, backend: str = "xnnpack",
                 api: str = "interpreter", threads: int | None = None,
                 cache_dir: str | None = None, decode_spans: bool = True):
        if backend not in ("xnnpack", "builtin"):
            raise ValueError(f"backend must be 'xnnpack' or 'builtin', not {backend!r}")
        self.out_dir = os.fspath(out_dir)
        with open(os.path.join(self.out_dir, "model.json"), encoding="utf-8") as f:
            self.meta = json.load(f)
        m = self.meta
        need = m.get("requires_xnnpack")
        if backend == "builtin" and need:   # model.json says: builtin kernels compute it wrong
            msg, where = (f"the builtin kernels compute this model wrong: {need.get('reason')}",
                          os.path.join(self.out_dir, "model.json"))
            try:
                from edge_sdk.errors import InputError
            except ImportError:   # standalone on a device
                raise ValueError(f"{where}: {msg} (fix: use --backend xnnpack)") from None
            raise InputError(msg, path=where, fix="run it with --backend xnnpack (the default)")
        self.backend, self.api, self.threads = backend, api, threads
        self.context, self.prefill_length = int(m["context"]), int(m["prefill"])
        self.vocab_size = int(m["vocab_size"])
        self.signatures = m["signatures"]
        self._spans = sorted(int(k.split("_", 1)[1]) for k in self.signatures["prefill_decode"]
                             if k.startswith("decode_")) if decode_spans else []
        self.paths = {k: os.path.join(self.out_dir, v["file"]) for k, v in m["files"].items()}
        self._s = {k: _Session(p, backend, api, threads, cache_dir) for k, p in self.paths.items()}
        # A first run packs the weights into the cache files and keeps the packing buffers (~0.2 GB
        # on E2B) for the model's lifetime; reopened, the model maps the finished cache instead.
        self.weight_cache_built = any(s.cache_was_built for s in self._s.values())
        if self.weight_cache_built:
            self.close()
            paging.malloc_trim()
            self._s = {k: _Session(p, backend, api, threads, cache_dir) for k, p in self.paths.items()}
        # the lookup tables are mapped: a row read should fault in its own pages, not 128 KiB of
        # read-around each (1000 rows would otherwise bring in ~10x the rows' bytes)
        self.advised_bytes = paging.advise([self.paths[k] for k in TABLE_FILES if k in self.paths], "random")
        # with the XNNPACK weight cache the kernels read packed weights from the cache file: the
        # model file's pages that loading touched (packing on a first run; scales and metadata
        # always) are not read again, and the heap buffers packing used are free
        self.released_bytes = 0
        if api == "compiled" and backend == "xnnpack":
            self.released_bytes = paging.advise([s.path for s in self._s.values() if s.weight_cache], "dontneed")
            paging.malloc_trim()
        self._buffers = m["kv_cache"]["buffers"]
        self.cache: dict[str, np.ndarray] = {}   # Interpreter API: the cache as arrays
        self._state: dict = {}                   # CompiledModel: one live buffer per cache tensor
        if api == "compiled":
            pd = self._s["prefill_decode"]
            sig = self.signatures["prefill_decode"]["decode"]
            self._state = {b["name"]: pd._cm.create_input_buffer_by_name(sig, b["name"]) for b in self._buffers}
        self.reset()

    def close(self) -> None:
        """Release every model file's runtime (the object cannot run afterwards)."""
        self._state = {}
        for sess in self._s.values():
            sess.close()

    @staticmethod
    def weight_cache_path(path: str, cache_dir: str | None = None) -> str:
        """The XNNPACK weight cache file the CompiledModel path uses for model file ``path``."""
        return _Session.cache_file(path, cache_dir)

    # ---- state ----------------------------------------------------------------------
    def reset(self) -> None:
        """Empty the KV cache; the next token goes to position 0."""
        self.pos = 0
        if self._state:
            for b in self._buffers:
                self._state[b["name"]].write(np.zeros(b["shape"], np.dtype(b["dtype"])))
        else:
            self.cache = {b["name"]: np.zeros(b["shape"], np.dtype(b["dtype"])) for b in self._buffers}

    @property
    def backend_info(self) -> dict:
        return {"backend": self.backend, "api": self.api, "threads": self.threads,
                "kernels": ("XNNPACK delegate" if self.backend == "xnnpack" else "builtin (reference) kernels"),
                "weight_cache": {k: s.weight_cache for k, s in self._s.items() if s.weight_cache},
                "kv_cache": "in place (one buffer per cache, bound as input and output)" if self._state
                else "copied in and out of every step",
                "tables_madv_random_bytes": self.advised_bytes,
                "released_after_load_bytes": self.released_bytes,
                "weight_cache_built": self.weight_cache_built,
                "signatures": self.signatures}

    # ---- pieces ---------------------------------------------------------------------
    def _mask(self, start: int, t: int) -> np.ndarray:
        q = np.arange(start, start + t)[:, None]
        return np.where(np.arange(self.context)[None, :] <= q, np.float32(0), MASKED).astype(
            np.float32).reshape(1, 1, t, self.context)

    def _embed(self, ids: np.ndarray, role: str) -> dict[str, np.ndarray]:
        tok = np.asarray(ids, np.int32).reshape(1, -1)
        feeds = {"embeddings": self._s["embedder"].run(
            self.signatures["embedder"][role], {"token_ids": tok})["embeddings"]}
        if "per_layer_embedder" in self._s:
            feeds["per_layer_embeddings"] = self._s["per_layer_embedder"].run(
                self.signatures["per_layer_embedder"][role], {"token_ids": tok})["embeddings"]
        return feeds

    def _step(self, ids: np.ndarray, role: str) -> np.ndarray | None:
        """Run ``ids`` (exactly the signature's length) at positions pos..; update the cache."""
        t = len(ids)
        feeds = self._embed(ids, "decode" if role.startswith("decode") else "prefill")
        feeds["input_pos"] = np.arange(self.pos, self.pos + t, dtype=np.int32)
        feeds["mask"] = self._mask(self.pos, t)
        sig = self.signatures["prefill_decode"][role]
        if self._state:
            return self._s["prefill_decode"].run(sig, feeds, self._state).get("logits")
        feeds.update(self.cache)
        out = self._s["prefill_decode"].run(sig, feeds)
        for k in self.cache:
            self.cache[k] = out[k]
        return out.get("logits")

    def _room(self, n: int) -> None:
        if self.pos + n > self.context:
            raise ValueError(f"{self.pos + n} positions exceed the model's context {self.context}; reset() first")

    # ---- API ------------------------------------------------------------------------
    def start_timing(self) -> dict[str, dict[str, list[float]]]:
        """Time every later run of each file: {role: {"run": [s], "compute": [s]}} ("compute": the
        runtime's own call; "run" adds the feeds written and the outputs read). A profile's hook."""
        out = {}
        for role, sess in self._s.items():
            sess.timings = out[role] = {}
        return out

    def decode_signature(self) -> str:
        """``decode_<S>`` for the smallest S > pos (attention over the first S cache slots; the
        converter's Geometry.decode_spans), else ``decode``."""
        for s in self._spans:
            if self.pos < s:
                return f"decode_{s}"
        return "decode"

    def decode(self, token: int) -> np.ndarray:
        """One token at the next position; logits [V]."""
        self._room(1)
        logits = self._step(np.asarray([int(token)]), self.decode_signature())
        self.pos += 1
        return np.asarray(logits, np.float32).reshape(self.vocab_size)

    def prefill(self, ids, *, logits: bool = True) -> np.ndarray | None:
        """Run ``ids`` at the next positions; logits [len(ids), V] of every position (None with
        ``logits=False``, which uses the engine's ``prefill_<T>``)."""
        ids = np.asarray(ids, np.int64).reshape(-1)
        if ids.size == 0:
            raise ValueError("prefill needs at least one token")
        if ids.min() < 0 or ids.max() >= self.vocab_size:
            raise ValueError(f"token id out of range [0, {self.vocab_size})")
        self._room(ids.size)
        T = self.prefill_length
        role = "score" if logits else "prefill"
        if role not in self.signatures["prefill_decode"]:   # converted without score_<T>
            rows = [self.decode(int(i)) for i in ids]
            return np.stack(rows) if logits else None
        rows = []
        for s in range(0, ids.size, T):
            chunk = ids[s:s + T]
            m = chunk.size
            if m < T and self.pos + T > self.context:   # padding would run past the cache
                for tok in chunk:
                    rows.append(self.decode(int(tok))[None])
                continue
            padded = np.concatenate([chunk, np.full(T - m, chunk[-1])]) if m < T else chunk
            out = self._step(padded, role)
            self.pos += m
            if logits:
                rows.append(np.asarray(out, np.float32).reshape(T, self.vocab_size)[:m])
        return np.concatenate(rows) if logits else None

    def greedy(self, ids, n: int) -> list[int]:
        """Reset, prefill ``ids`` and take ``n`` argmax tokens (EOS does not stop it)."""
        self.reset()
        return greedy(lambda: self.prefill(ids)[-1], self.decode, n)
