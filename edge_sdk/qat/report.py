"""``qat_report.json``, ``qat_report.md`` and ``qat_curves.png`` of a QAT run (written atomically).

The JSON holds the run's settings, every held-out evaluation (step, training loss, PPL of QAT
and float, PPL increase, KLD, top-1), the verdict of the stop rule and, when the target was missed,
the per-section sensitivity and the sections to widen. The plot (matplotlib, Agg): PPL of QAT vs
float (left), KLD and top-1 vs float (right), over the steps.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

REPORT_JSON, REPORT_MD, REPORT_PNG = "qat_report.json", "qat_report.md", "qat_curves.png"


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_report(out: Path, report: dict) -> None:
    _atomic_write(out / REPORT_JSON, (json.dumps(report, indent=2) + "\n").encode())
    _atomic_write(out / REPORT_MD, to_markdown(report).encode())
    if report["evals"]:
        plot_curves(out / REPORT_PNG, report)


def to_markdown(r: dict) -> str:
    s = r["settings"]
    lines = [f"# QAT report: {s['checkpoint']} → {s['out']}", "",
             f"recipe `{s['recipe']}`, {r['steps_done']} of {_planned(s)}; batch {s['batch']} × "
             f"{s['seq_len']} tokens, {s['world_size']} process(es); teacher "
             f"{'float checkpoint (KL distillation)' if s['teacher'] else 'none (cross-entropy)'}, seed "
             f"{s['seed']}; {r['wall_s']:.0f} s", "",
             f"Held-out: {r['heldout']['windows']} windows × {r['heldout']['seq_len']} tokens "
             f"({r['heldout']['positions']} scored positions).", "",
             "| step | train loss | PPL QAT | PPL float | PPL increase | KLD | top-1 |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for e in r["evals"]:
        loss = "-" if e.get("loss") is None else f"{e['loss']:.4f}"
        lines.append(f"| {e['step']} | {loss} | {e['ppl']:.3f} | {e['ppl_float']:.3f} | "
                     f"{e['ppl_increase']:+.2%} | {e['kld']:.4f} | {e['top1']:.1%} |")
    v = r["verdict"]
    lines += ["", f"**Target** PPL increase ≤ {_pct(v['max_ppl_increase'])}: "
              f"**{'met' if v['met'] else 'MISSED'}**" + (" (stopped early)" if v["stopped_early"] else "")]
    if v.get("widen"):
        lines += ["", "Sections to widen (held-out KLD with the section left float):", ""]
        lines += [f"- {w['section']}: {w['from']} → {w['to']} (KLD {w['kld_if_float']:.4f}, "
                  f"−{w['kld_gain']:.4f})" for w in v["widen"]]
    lines += _margin_table(r.get("top1_by_margin"))
    return "\n".join(lines) + "\n"


def _margin_table(rows) -> list[str]:
    """Top-1 agreement by the float model's margin between its two likeliest tokens."""
    if not rows:
        return []
    out = ["", "Top-1 agreement by the float model's margin (log p1 − log p2, nats): where it hesitates, "
           "any perturbation flips its argmax.", "",
           "| margin | share of positions | top-1 | KLD |", "|---|---:|---:|---:|"]
    for b in rows:
        hi = "∞" if b["hi"] is None else f"{b['hi']:g}"
        top1 = "-" if b["top1"] is None else f"{b['top1']:.1%}"
        kld = "-" if b["kld"] is None else f"{b['kld']:.4f}"
        out.append(f"| [{b['lo']:g}, {hi}) | {b['share']:.1%} | {top1} | {kld} |")
    return out


def _planned(s: dict) -> str:
    anneal = s.get("anneal_steps") or 0
    if not anneal or s["steps"] is None:
        return f"{s['steps']} steps"
    return f"{s['steps'] + anneal} steps ({s['steps']} + {anneal} annealing on the grid)"


def _pct(x) -> str:
    return "none" if x is None else f"{x:.1%}"


def plot_curves(path: Path, r: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ev = r["evals"]
    steps = [e["step"] for e in ev]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    a.plot(steps, [e["ppl"] for e in ev], "o-", label="QAT")
    a.plot(steps, [e["ppl_float"] for e in ev], "--", label="float")
    lim = r["verdict"]["max_ppl_increase"]
    if lim is not None:
        a.plot(steps, [e["ppl_float"] * (1 + lim) for e in ev], ":", color="gray",
               label=f"float +{lim:.0%} (target)")
    a.set_xlabel("step")
    a.set_ylabel("held-out perplexity")
    a.legend()
    a.grid(alpha=0.3)
    if r["settings"].get("anneal_steps") and r["settings"]["steps"] is not None:
        for ax in (a, b):   # where the weights were snapped onto the grid
            ax.axvline(r["settings"]["steps"], color="gray", lw=0.8, ls="--", label="snapped onto the grid")
    b.plot(steps, [e["kld"] for e in ev], "o-", color="#C44E52", label="KLD vs float")
    b.set_xlabel("step")
    b.set_ylabel("mean KLD (nats)")
    b.grid(alpha=0.3)
    c = b.twinx()
    c.plot(steps, [100 * e["top1"] for e in ev], "s-", color="#55A868", label="top-1 vs float")
    c.set_ylabel("top-1 agreement (%)")
    b.legend(handles=b.get_lines() + c.get_lines(), loc="center right")
    fig.suptitle(f"QAT {r['settings']['recipe']}: {Path(r['settings']['checkpoint']).name}")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100, metadata={"Software": None})
    plt.close(fig)
    os.replace(tmp, path)
