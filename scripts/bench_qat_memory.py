#!/usr/bin/env python
"""Memory of a process under ``edge-sdk qat`` with DDP and with ``--fsdp``, measured stage by stage.

    python scripts/bench_qat_memory.py [--work DIR] [--hidden 1024] [--procs 2] [--steps 3] [--json out.json]

Builds (once, in ``--work``) a wider copy of the tiny model: ``models/tiny-gemma4-prose/float``'s config
with ``--hidden`` and 4 x that as the MLP width, random weights from a fixed seed (transformers'
own init), its tokenizer. Then runs ``qat()`` in ``--procs`` processes (gloo on CPU, one thread
each; the launcher's environment set by hand, as torchrun would), once as DDP and once with
``fsdp=True``, and reads each process's ``VmRSS`` / ``VmHWM`` (``/proc/self/status``) after the
models are loaded (and sharded), after the optimizer and the held-out reference exist, after each
step and after the export. Under DDP a process holds the whole student, its gradients, AdamW's two
moments and the whole teacher; under FSDP 1/P of each, the layer being gathered, and in the
backward one layer's recomputation (``sharding._recomputed``). Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TINY = ROOT / "models" / "tiny-gemma4-prose" / "float"


def build_wide(out: Path, hidden: int) -> int:
    """The tiny model's config at ``hidden`` (MLP 4 x hidden), random weights; returns its parameter count."""
    import torch
    import transformers

    if (out / "model.safetensors").is_file():
        cfg = transformers.AutoConfig.from_pretrained(str(out))
    else:
        cfg = transformers.AutoConfig.from_pretrained(str(TINY))
        cfg.text_config.hidden_size, cfg.text_config.intermediate_size = hidden, 4 * hidden
        torch.manual_seed(0)
        cls = getattr(transformers, cfg.architectures[0])
        cls(cfg).to(torch.bfloat16).save_pretrained(str(out))
        for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
            if (TINY / f).is_file():
                shutil.copy(TINY / f, out / f)
    from safetensors import safe_open
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        return sum(_prod(f.get_slice(k).get_shape()) for k in f.keys())


def _prod(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _status() -> dict:
    d = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return {k: int(d[k].split()[0]) * 1024 / 1e9 for k in ("VmRSS", "VmHWM")}


def _worker(rank: int, procs: int, port: int, model: str, data: str, out: str, steps: int, fsdp: bool,
            report: str) -> None:
    """One rank of ``qat()``; its memory after each stage into ``report``.rank."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(procs), RANK=str(rank),
                      LOCAL_RANK=str(rank), OMP_NUM_THREADS="1")
    import torch

    from edge_sdk.qat import qat
    from edge_sdk.qat import train as T
    stages = []

    def after(owner, name, label):
        real = getattr(owner, name)

        def wrapped(*a, **k):
            r = real(*a, **k)
            stages.append({"stage": label, **_status()})
            return r
        setattr(owner, name, wrapped)

    after(T, "_load_models", "models loaded" + (" and sharded" if fsdp else ""))
    after(T._Run, "__init__", "optimizer and held-out reference")
    after(T._Run, "_one_step", "a step")
    after(T, "export_qat", "export")
    qat(model, data, out, steps=steps, batch=2 * procs, seq_len=64, threads=1, eval_every=steps,
        max_ppl_increase=None, fsdp=fsdp)
    stages.append({"stage": "end", **_status()})
    Path(f"{report}.{rank}").write_text(json.dumps(stages))
    torch.distributed.destroy_process_group()


def run(model: Path, data: Path, work: Path, procs: int, steps: int, fsdp: bool) -> dict:
    import torch.multiprocessing as mp
    mode = "fsdp" if fsdp else "ddp"
    out, report = work / f"out-{mode}", work / f"stages-{mode}"
    shutil.rmtree(out, ignore_errors=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    mp.spawn(_worker, args=(procs, port, str(model), str(data), str(out), steps, fsdp, str(report)),
             nprocs=procs, join=True)
    ranks = [json.loads(Path(f"{report}.{r}").read_text()) for r in range(procs)]
    return {"mode": mode, "wall_s": time.monotonic() - t0, "ranks": ranks,
            "peak_rss_gb": max(st[-1]["VmHWM"] for st in ranks)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench_qat_memory"))
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from tiny_data import write_splits

    model = args.work / f"wide-{args.hidden}"
    n = build_wide(model, args.hidden)
    data = write_splits(args.work / "data", ROOT / "models" / "tiny-gemma4-prose" / "split.json")["train"]
    rows = [run(model, data, args.work, args.procs, args.steps, fsdp) for fsdp in (False, True)]
    fp32 = n * 4 / 1e9
    print(f"wide tiny model: hidden {args.hidden}, {n / 1e6:.1f} M parameters ({fp32:.2f} GB in float32); "
          f"{args.procs} processes, {args.steps} steps; rank 0's RSS after each stage, GB\n")
    labels = [st["stage"].replace(" and sharded", "") for st in rows[0]["ranks"][0]]
    print(f"{'stage':<34}" + "".join(f"{r['mode']:>8}" for r in rows))
    for i, label in enumerate(labels):
        print(f"{label:<34}" + "".join(f"{r['ranks'][0][i]['VmRSS']:8.2f}" for r in rows))
    print(f"{'peak (VmHWM, any rank)':<34}" + "".join(f"{r['peak_rss_gb']:8.2f}" for r in rows))
    print(f"{'wall, s':<34}" + "".join(f"{r['wall_s']:8.0f}" for r in rows))
    ratio = rows[1]["peak_rss_gb"] / rows[0]["peak_rss_gb"]
    print(f"\nfsdp / ddp peak: {ratio:.2f}; float32 model {fp32:.2f} GB")
    if args.json:
        args.json.write_text(json.dumps({"hidden": args.hidden, "params": n, "float32_gb": fp32,
                                         "procs": args.procs, "steps": args.steps, "runs": rows,
                                         "fsdp_over_ddp": ratio}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
