"""Which LiteRT kernel computes differently on ARM than on x86: every op's output, one signature, both sides.

    python3 arm64_kernel_diff.py dump MODEL.tflite SIGNATURE OUT.npz [--xnnpack]   (on each machine; numpy +
                                                                          ai_edge_litert only, so it runs
                                                                          inside the arm64 device too)
    python3 arm64_kernel_diff.py compare X86.npz ARM.npz [--tol 1e-6]

``dump`` runs SIGNATURE once on LiteRT's builtin kernels (no delegate: every op is visible) with
seeded inputs (the same on both machines) and keeps every tensor (``experimental_preserve_all_tensors``),
then saves each op's output. ``compare`` walks the ops in execution order and lists those whose inputs
agree between the two files (max |Δ| relative to the tensor's scale <= tol) but whose output does not:
the kernels that differ between the architectures, with their input dtypes (e.g. FULLY_CONNECTED
float32 x int8 = the hybrid kernel that quantizes its activations).
"""

from __future__ import annotations

import json
import sys

import numpy as np


def _ops(path: str, signature: str):
    from ai_edge_litert import schema_py_generated as S
    buf = open(path, "rb").read()
    m = S.Model.GetRootAsModel(buf, 0)
    names = {v: k for k, v in vars(S.BuiltinOperator).items() if not k.startswith("_")}
    sg_index = next(m.SignatureDefs(i).SubgraphIndex() for i in range(m.SignatureDefsLength())
                    if m.SignatureDefs(i).SignatureKey().decode() == signature)
    sg = m.Subgraphs(sg_index)
    tdtype = {v: k for k, v in vars(S.TensorType).items() if not k.startswith("_")}
    ops = []
    for i in range(sg.OperatorsLength()):
        op = sg.Operators(i)
        code = m.OperatorCodes(op.OpcodeIndex())
        name = names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), str(code.BuiltinCode()))
        ins = [int(t) for t in op.InputsAsNumpy()] if op.InputsLength() else []
        outs = [int(t) for t in op.OutputsAsNumpy()] if op.OutputsLength() else []
        ops.append({"op": name, "inputs": ins, "outputs": outs,
                    "input_dtypes": [tdtype.get(sg.Tensors(t).Type(), "?") if t >= 0 else None for t in ins]})
    return sg_index, ops


def dump(model: str, signature: str, out: str, xnnpack: bool = False) -> None:
    """``xnnpack``: the XNNPACK delegate runs (its ops are opaque: only the signature's outputs are kept)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType
    kind = OpResolverType.AUTO if xnnpack else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    it = Interpreter(model_path=model, experimental_op_resolver_type=kind, experimental_preserve_all_tensors=True)
    sg, ops = _ops(model, signature)
    runner = it.get_signature_runner(signature)
    rng = np.random.default_rng(0)
    feed = {}
    for name, d in sorted(runner.get_input_details().items()):
        shape, dt = tuple(d["shape"]), np.dtype(d["dtype"])
        if name == "input_pos":
            feed[name] = (np.arange(int(np.prod(shape))) + 7).astype(dt).reshape(shape)
        elif name == "mask":
            feed[name] = np.zeros(shape, dt)
        elif dt.kind == "f":
            feed[name] = rng.standard_normal(shape).astype(dt)
        elif dt.kind == "i" and dt.itemsize == 1:
            feed[name] = rng.integers(-127, 128, size=shape).astype(dt)
        else:
            feed[name] = rng.integers(0, 64, size=shape).astype(dt)
    result = runner(**feed)
    if xnnpack:
        np.savez(out, __ops__=np.frombuffer(b"[]", np.uint8), **{f"out_{k}": v for k, v in result.items()})
        return
    arrays = {}
    for i, op in enumerate(ops):
        for t in op["outputs"]:
            try:
                arrays[f"t{t}"] = np.array(it.get_tensor(t, sg))
            except ValueError:
                pass
        for t in op["inputs"]:
            if t >= 0 and f"t{t}" not in arrays:
                try:
                    arrays[f"t{t}"] = np.array(it.get_tensor(t, sg))
                except ValueError:
                    pass
    np.savez(out, __ops__=np.frombuffer(json.dumps(ops).encode(), np.uint8), **arrays)


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    scale = max(float(np.abs(a).max()) if a.size else 0.0, 1e-30)
    return float(np.abs(a - b).max() / scale) if a.size else 0.0


def compare(x86_path: str, arm_path: str, tol: float = 1e-6) -> list[dict]:
    x, a = np.load(x86_path), np.load(arm_path)
    ops = json.loads(bytes(x["__ops__"]).decode())
    found = []
    for i, op in enumerate(ops):
        keys_in = [f"t{t}" for t in op["inputs"] if t >= 0 and f"t{t}" in x.files and f"t{t}" in a.files]
        keys_out = [f"t{t}" for t in op["outputs"] if f"t{t}" in x.files and f"t{t}" in a.files]
        if not keys_out:
            continue
        din = max([_rel(x[k], a[k]) for k in keys_in], default=0.0)
        dout = max(_rel(x[k], a[k]) for k in keys_out)
        if din <= tol < dout:
            found.append({"index": i, "op": op["op"], "input_dtypes": op["input_dtypes"],
                          "rel_diff_in": din, "rel_diff_out": dout})
    return found


def same_input_diffs(x86_path: str, arm_path: str) -> dict:
    """Per (op, input dtypes): how many ops got bit-identical inputs on both machines yet computed
    different outputs, and the largest relative difference among them (a kernel that differs)."""
    x, a = np.load(x86_path), np.load(arm_path)
    ops = json.loads(bytes(x["__ops__"]).decode())
    out: dict = {}
    for op in ops:
        ki = [f"t{t}" for t in op["inputs"] if t >= 0 and f"t{t}" in x.files and f"t{t}" in a.files]
        ko = [f"t{t}" for t in op["outputs"] if f"t{t}" in x.files and f"t{t}" in a.files]
        if ko and all(np.array_equal(x[k], a[k]) for k in ki):
            d = max(_rel(x[k], a[k]) for k in ko)
            if d > 0:
                key = f"{op['op']}({','.join(str(t) for t in op['input_dtypes'] if t)})"
                n, m = out.get(key, (0, 0.0))
                out[key] = (n + 1, max(m, d))
    return {k: {"ops": n, "max_rel_diff": m} for k, (n, m) in sorted(out.items())}


def main(argv: list[str]) -> int:
    if argv[:1] == ["dump"] and len(argv) in (4, 5):
        dump(*argv[1:4], xnnpack="--xnnpack" in argv[4:])
        return 0
    if argv[:1] == ["compare"] and len(argv) >= 3:
        tol = float(argv[argv.index("--tol") + 1]) if "--tol" in argv else 1e-6
        for f in compare(argv[1], argv[2], tol):
            print(json.dumps(f))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
