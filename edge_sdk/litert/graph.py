"""A thin graph-building layer over :class:`~edge_sdk.litert.writer.LiteRTWriter`.

One :class:`GraphBuilder` per subgraph. Tensors are immutable handles that carry their
shape and dtype; every op helper (see :mod:`edge_sdk.litert.ops`) infers its output
shape, so graph code reads like NumPy::

    w = LiteRTWriter(path)
    g = GraphBuilder(w, "decode")
    x = g.input("x", [1, 1, 64], "float32")
    wq = g.quantized_weight("w", codes, scales, bits=4)
    g.output("y", g.fully_connected(x, wq))
    g.finish("decode")
    w.finish()

Array constants whose bytes are equal share one buffer (content-keyed); big weights should
be given as callables (streamed by the writer, never held); :meth:`GraphBuilder.share` lets a
second subgraph point at another subgraph's constant, so prefill and decode signatures never
duplicate weights.

Sub-byte packing and the kernel facts behind the code-range checks: see :mod:`.dtypes`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import InputError
from ..quant.formats import FORMATS, affine_format
from .dtypes import Quantization, check_code_range, dtype_name, tensor_nbytes, to_bytes
from .ops import OpsMixin
from .writer import BufferRef, LiteRTWriter


@dataclass(frozen=True)
class Tensor:
    """A tensor of one subgraph. ``buffer``/``quantization``/``block_scales`` are set for
    constants so that :meth:`GraphBuilder.share` can re-point another subgraph at them."""
    index: int
    shape: tuple[int, ...]
    dtype: str
    name: str
    subgraph: int
    buffer: BufferRef | None = field(default=None, compare=False)
    quantization: Quantization | None = field(default=None, compare=False)
    block_scales: "Tensor | None" = field(default=None, compare=False, repr=False)

    @property
    def rank(self) -> int:
        return len(self.shape)


def _produce(fn: Callable[[], Any], shape: tuple, dtype: str,
             check: Callable[[np.ndarray], None] | None, name: str | None) -> bytes:
    arr = np.asarray(fn())
    if arr.shape != shape:
        raise InputError(f"lazy constant produced shape {list(arr.shape)}, declared "
                         f"{list(shape)}", tensor=name)
    if check is not None:
        check(arr)
    return to_bytes(arr, dtype)


class GraphBuilder(OpsMixin):
    """Builds one subgraph of a writer; :meth:`finish` sets its I/O and signature."""

    def __init__(self, writer: LiteRTWriter, name: str = ""):
        self.writer = writer
        self.name = name
        self.index = writer.add_subgraph(name)
        self._inputs: dict[str, Tensor] = {}
        self._outputs: dict[str, Tensor] = {}
        self._names: set[str] = set()
        self._counter = 0
        self._shared: dict[tuple[int, int], Tensor] = {}
        self._views: dict[int, Tensor] = {}   # RESHAPE output index -> the tensor it reshapes
        self._finished = False

    # ---- tensors -------------------------------------------------------------------
    def _unique(self, name: str | None, hint: str) -> str:
        if name is None:
            self._counter += 1
            name = f"{hint}_{self._counter}"
        if name in self._names:
            raise InputError(f"tensor name {name!r} used twice in subgraph {self.name!r}")
        self._names.add(name)
        return name

    def _check(self, *tensors: Tensor) -> None:
        for t in tensors:
            if not isinstance(t, Tensor) or t.subgraph != self.index:
                raise InputError(f"{t!r} is not a tensor of subgraph {self.name!r}",
                                 fix="use share() to reuse a constant of another subgraph")

    def _tensor(self, name: str | None, shape: Sequence[int], dtype: Any, *, hint: str = "t",
                buffer: BufferRef | None = None, quantization: Quantization | None = None,
                block_scales: Tensor | None = None, is_variable: bool = False) -> Tensor:
        shape = tuple(int(d) for d in shape)
        if any(d < 0 for d in shape):
            raise InputError(f"negative dimension in shape {list(shape)}", tensor=name)
        name = self._unique(name, hint)
        dt = dtype_name(dtype)
        idx = self.writer.add_tensor(self.index, name, shape, dt, buffer=buffer,
                                     quantization=quantization, is_variable=is_variable)
        return Tensor(idx, shape, dt, name, self.index, buffer, quantization, block_scales)

    def input(self, name: str, shape: Sequence[int], dtype: Any, *,
              tensor_name: str | None = None,
              quantization: Quantization | None = None) -> Tensor:
        """A graph input, exposed under ``name`` in the signature (``quantization``: e.g. the
        per-tensor scale of an int8 state input such as a KV cache)."""
        if name in self._inputs:
            raise InputError(f"input {name!r} declared twice in {self.name!r}")
        t = self._tensor(tensor_name or name, shape, dtype, quantization=quantization)
        self._inputs[name] = t
        return t

    def output(self, name: str, tensor: Tensor) -> Tensor:
        """Expose ``tensor`` as signature output ``name``."""
        self._check(tensor)
        if name in self._outputs:
            raise InputError(f"output {name!r} declared twice in {self.name!r}")
        self._outputs[name] = tensor
        return tensor

    def const(self, name: str | None, value: np.ndarray | BufferRef | Callable[[], Any], *,
              dtype: Any = None, shape: Sequence[int] | None = None,
              quantization: Quantization | None = None, key: str | None = None,
              external: bool | None = None, block_scales: Tensor | None = None,
              check: Callable[[np.ndarray], None] | None = None) -> Tensor:
        """A constant. ``value`` is an array (bytes copied now, deduplicated by content
        unless ``key`` is given; int4/int2 ``dtype`` packs integer codes), a :class:`BufferRef`,
        or a callable returning the array when the writer streams data (lazy: nothing is held
        in memory; dedup only by ``key``; ``check`` runs on the array then). The last two
        need ``shape`` and ``dtype``."""
        if isinstance(value, BufferRef) or callable(value):
            if shape is None or dtype is None:
                raise InputError("a lazy or BufferRef constant needs shape= and dtype=",
                                 tensor=name)
            shape, dtype = tuple(shape), dtype_name(dtype)
            ref = value if isinstance(value, BufferRef) else self.writer.add_buffer(
                tensor_nbytes(shape, dtype), key=key, external=external, name=name or "",
                producer=lambda: _produce(value, shape, dtype, check, name))
        else:
            arr = np.asarray(value)
            if check is not None:
                check(arr)
            dt = dtype_name(dtype if dtype is not None else arr.dtype)
            shape = tuple(arr.shape) if shape is None else tuple(shape)
            if int(np.prod(shape, dtype=np.int64)) != arr.size:
                raise InputError(f"value has {arr.size} elements, shape {list(shape)} "
                                 f"needs {int(np.prod(shape))}", tensor=name)
            raw = to_bytes(arr, dt)
            if key is None:
                key = f"sha256:{hashlib.sha256(raw).hexdigest()}:{len(raw)}"
            ref = self.writer.add_buffer(data=raw, key=key, external=external,
                                         name=name or "")
            dtype = dt
        return self._tensor(name, shape, dtype, hint="const", buffer=ref,
                            quantization=quantization, block_scales=block_scales)

    def const_i32(self, values: Sequence[int] | int) -> Tensor:
        """A small int32 constant (shapes, axes, permutations), shared by content."""
        arr = np.asarray(values, dtype=np.int32)
        return self.const(None, arr)

    def quantized_weight(self, name: str, codes: np.ndarray | Callable[[], np.ndarray],
                         scale: np.ndarray, bits: int, *, axis: int = 0,
                         shape: Sequence[int] | None = None, key: str | None = None,
                         external: bool | None = None, allow_full_range: bool = False) -> Tensor:
        """Integer weight codes (int8 / int4 / int2, symmetric, zero point 0) with one float
        scale per slice along ``axis`` (per output channel for FULLY_CONNECTED: axis 0);
        the weight means codes * scale. ``codes`` may be a callable (streamed; give ``shape``).
        Codes must lie in the per-channel format's range (the builtin FC kernels miscompute
        -128 / -8) unless ``allow_full_range``."""
        fmt = FORMATS.get(f"int{bits}")
        if fmt is None:
            raise InputError(f"unsupported weight bit width {bits}", tensor=name)
        dt = fmt.litert
        if not callable(codes):
            codes, shape = np.asarray(codes), np.shape(codes)
        scale = np.asarray(scale, dtype=np.float32).reshape(-1)
        if shape is None or scale.size != shape[axis]:
            raise InputError(f"{scale.size} scales for shape {shape}, axis {axis}", tensor=name)
        q = Quantization(scale=tuple(scale.tolist()), zero_point=(0,) * scale.size,
                         quantized_dimension=axis)
        check = None if allow_full_range else (lambda c: check_code_range(c, bits, tensor=name))
        return self.const(name, codes, dtype=dt, shape=shape, quantization=q, key=key,
                          external=external, check=check)

    def blockwise_weight(self, name: str, codes: np.ndarray | Callable[[], np.ndarray],
                         scales: np.ndarray, block_size: int, *, bits: int = 4,
                         key: str | None = None, external: bool | None = None) -> Tensor:
        """[N, K] INT4 codes (array or callable) with FLOAT16 scales [N, K / block_size]
        (BlockwiseQuantization): weight[n, k] = codes[n, k] * scales[n, k // block_size].
        Only 4 bits: blockwise INT8 / INT2 FC is refused by XNNPACK and silently returns all
        zeros in the builtin kernels (the formats' refusal). The full int4 range [-8, 7] is fine."""
        affine_format(bits, "block").check_runnable(tensor=name)
        if np.ndim(scales) != 2:
            raise InputError("blockwise scales must be [N, K / block_size]", tensor=name)
        n, k = np.shape(scales)[0], np.shape(scales)[1] * block_size
        if not callable(codes):
            codes = np.asarray(codes)
            if codes.shape != (n, k):
                raise InputError(f"codes {list(codes.shape)} do not match scales "
                                 f"{list(np.shape(scales))} with blocks of {block_size}",
                                 tensor=name)
        st = self.const(f"{name}_scales", np.asarray(scales, dtype=np.float16))
        q = Quantization(block_scales=st.index, block_size=block_size)
        return self.const(name, codes, dtype="int4", shape=(n, k), quantization=q, key=key,
                          external=external, block_scales=st)

    def share(self, tensor: Tensor, name: str | None = None) -> Tensor:
        """This subgraph's view of another subgraph's constant: same buffer, no copy."""
        if tensor.subgraph == self.index:
            return tensor
        if tensor.buffer is None:
            raise InputError("only constants can be shared across subgraphs", tensor=tensor.name)
        cache_key = (tensor.subgraph, tensor.index)
        if cache_key in self._shared:
            return self._shared[cache_key]
        q, bs = tensor.quantization, None
        if tensor.block_scales is not None:
            bs = self.share(tensor.block_scales)
            q = Quantization(block_scales=bs.index, block_size=q.block_size,
                             block_zero_points=q.block_zero_points)
        t = self._tensor(name or tensor.name, tensor.shape, tensor.dtype, buffer=tensor.buffer,
                         quantization=q, block_scales=bs)
        self._shared[cache_key] = t
        return t

    # ---- ops -----------------------------------------------------------------------
    def _op(self, builtin: int, inputs: Sequence[Tensor | None], shape: Sequence[int],
            dtype: Any, options: Any = None, *, name: str | None = None, hint: str = "t",
            quantization: Quantization | None = None, version: int = 1) -> Tensor:
        """Emit one operator with one output; ``None`` inputs are omitted optional inputs."""
        ins = [t for t in inputs if t is not None]
        self._check(*ins)
        out = self._tensor(name, shape, dtype, hint=hint, quantization=quantization)
        self.writer.add_operator(self.index, builtin,
                                 [-1 if t is None else t.index for t in inputs],
                                 [out.index], options, version=version)
        return out

    # ---- finish --------------------------------------------------------------------
    def _drop_dead_ops(self) -> None:
        """Remove operators whose outputs nothing reads (a reshape another reshape bypassed):
        each costs a kernel dispatch per invoke. Their tensors stay, unreferenced."""
        ops = self.writer._subgraph(self.index).operators
        live = {t.index for t in self._outputs.values()}
        keep = []
        for op in reversed(ops):
            if any(int(o) in live for o in op.outputs):
                keep.append(op)
                live.update(int(i) for i in op.inputs if i >= 0)
        ops[:] = keep[::-1]

    def finish(self, signature_key: str | None = None) -> None:
        """Set subgraph inputs/outputs (declaration order) and add the signature."""
        if self._finished:
            raise InputError(f"subgraph {self.name!r} finished twice")
        if not self._outputs:
            raise InputError(f"subgraph {self.name!r} has no outputs")
        self._finished = True
        self._drop_dead_ops()
        self.writer.set_io(self.index, [t.index for t in self._inputs.values()],
                           [t.index for t in self._outputs.values()])
        if signature_key is not None:
            self.writer.add_signature(signature_key, self.index,
                                      {k: t.index for k, t in self._inputs.items()},
                                      {k: t.index for k, t in self._outputs.items()})
