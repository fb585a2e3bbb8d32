"""``memory.png``: does it fit, and what takes the room — at a glance.

Left: the model's share of RSS over time (RSS − the run's baseline) for every memory run (LiteRT-LM
and our runner, first launch and steady state), with the phases of the gated run (load, prefill or
eval, decode, ...) marked and the budget line. Right: stacked bars, the planner's components
beside the gated run's measured growth per mapping (weight cache, model files, the mapped tables,
anonymous memory, libraries), each with its total, so a gap between plan and measurement shows
where it is. Matplotlib, Agg backend.
"""

from __future__ import annotations

from pathlib import Path

from ..units import fmt_bytes

_COLORS = {"resident weights": "#4C72B0", "mapped rows touched": "#8172B2", "KV cache": "#DD8452",
           "activations": "#CCB974", "weight cache (packed weights)": "#3A5A8C",
           "mapped tables (rows touched)": "#A291D1", "anonymous (KV, arenas, heap)": "#55A868",
           "model file pages": "#64B5CD", "libraries, other": "#937860", "between samples / unattributed": "#BBBBBB",
           "model RssAnon": "#55A868", "model RssFile": "#64B5CD", "runtime: KV copies, float KV reads": "#E8A87C",
           "runtime: quant metadata, model head": "#C5B3E6", "runtime: fixed (measured)": "#C9B79C"}
_RUN_COLORS = ["#C44E52", "#55A868", "#4C72B0", "#8172B2", "#DD8452", "#64B5CD"]


def _measured_segments(run: dict) -> list[tuple[str, float]]:
    """The gated run's growth per mapping, grouped into a few readable rows."""
    groups: dict[str, float] = {}
    for name, v in (run.get("breakdown") or {}).items():
        rss = max(0, v.get("rss", 0))
        if "weight cache" in name:
            key = "weight cache (packed weights)"
        elif "embedder" in name:
            key = "mapped tables (rows touched)"
        elif "anonymous" in name:
            key = "anonymous (KV, arenas, heap)"
        elif name.endswith(".tflite") or ".litertlm" in name:
            key = "model file pages"
        else:
            key = "libraries, other"
        groups[key] = groups.get(key, 0) + rss
    total = sum(groups.values())
    gap = run["model_peak_bytes"] - total
    if gap > 0:
        groups["between samples / unattributed"] = gap
    return sorted(groups.items(), key=lambda kv: -kv[1])


def _bars(report) -> list[tuple[str, list[tuple[str, float]]]]:
    m, p = report.memory, report.planned
    bars = []
    if p and "absent" not in p:
        bars.append((f"planned, {p.get('runtime', '')}\n(context {p['context']})",
                     [("resident weights", p["resident_bytes"]), ("mapped rows touched", p["mapped_touched_bytes"]),
                      ("KV cache", p["kv_cache_bytes"]), ("activations", p["activation_bytes"]),
                      ("runtime: KV copies, float KV reads", p.get("kv_extra_copy_bytes", 0) + p.get("kv_read_bytes", 0)),
                      ("runtime: quant metadata, model head", p.get("quant_metadata_bytes", 0)
                       + p.get("model_head_bytes", 0)),
                      ("runtime: fixed (measured)", p.get("runtime_fixed_bytes", 0))]))
    runs = m.get("runs") or []
    gated = next((r for r in runs if r["label"] == m.get("gated_run")), None)
    if gated is not None and gated.get("breakdown"):
        bars.append((f"measured\n{gated['label']}", _measured_segments(gated)))
    else:
        anon = max(0, m.get("model_rss_anon_bytes") or 0)
        file_ = max(0, m.get("model_rss_file_bytes") or 0)
        bars.append(("measured\nmodel share", [("model RssAnon", anon), ("model RssFile", file_),
                                               ("between samples / unattributed",
                                                max(0, m["model_peak_bytes"] - anon - file_))]))
    return bars


def _budget_line(ax, limit: int | None, top: float, scale: float, unit: str, label: str) -> None:
    """The budget as a line when it is on the chart's scale; far above the data, as a note (a
    line at 1 GB would flatten a 30 MB model to nothing)."""
    if limit is None:
        return
    if limit <= 2.5 * top:
        ax.axhline(limit / scale, color="#C44E52", linestyle="--", linewidth=1.3, label=label)
    else:
        ax.text(0.98, 0.97, f"{label}\n(off the chart: {limit / max(top, 1):.0f}x the largest figure)",
                ha="right", va="top", fontsize=8, color="#C44E52", transform=ax.transAxes)


def _series(ax, report, scale: float, unit: str, top: float) -> None:
    m = report.memory
    runs = m.get("runs") or []
    limit = report.budget.get("limit_bytes")
    drawn = False
    for i, run in enumerate(runs):
        pts = (run.get("series") or {}).get("series") or []
        if len(pts) < 2:
            continue
        base = run["baseline_rss_bytes"]
        t = [p[0] for p in pts]
        y = [(p[1] - base) / scale for p in pts]
        ax.plot(t, y, color=_RUN_COLORS[i % len(_RUN_COLORS)], linewidth=1.4,
                label=f"{run['label']}: peak {run['model_peak_bytes'] / scale:.3g} {unit}")
        drawn = True
        if run["label"] == m.get("gated_run"):
            for ph in (run.get("series") or {}).get("phases", [])[1:]:
                ax.axvline(ph["start_s"], color="#999999", linewidth=0.6, linestyle=":")
                ax.text(ph["start_s"], 0.01, f" {ph['phase']}", rotation=90, fontsize=7, color="#666666",
                        va="bottom", transform=ax.get_xaxis_transform())
    if limit is not None:
        _budget_line(ax, limit, top, scale, unit, f"budget {fmt_bytes(limit)}")
    if not drawn:
        ax.text(0.5, 0.5, "no time series (runner gave none)", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("seconds since the runtime library was loaded")
    ax.set_ylabel(f"model share of RSS, {unit}")
    ax.set_title("Over time (phases of the gated run dotted)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")


def plot_memory(report, path: str | Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars = _bars(report)
    limit = report.budget.get("limit_bytes")
    top = max([sum(v for _, v in segs) for _, segs in bars] + [report.memory["model_peak_bytes"]])
    if limit is not None and limit <= 2.5 * top:
        top = max(top, limit)
    scale, unit = (1e9, "GB") if top >= 1e9 else (1e6, "MB")
    fig, (ax_t, ax) = plt.subplots(1, 2, figsize=(13, 5.4), dpi=110, gridspec_kw={"width_ratios": [1.35, 1]})
    _series(ax_t, report, scale, unit, top)
    seen = set()
    for x, (label, segs) in enumerate(bars):
        bottom = 0.0
        for name, val in segs:
            v = val / scale
            if v <= 0:
                continue
            color = _COLORS.get(name, "#AAAAAA")
            ax.bar(x, v, bottom=bottom, width=0.6, color=color, edgecolor="white",
                   label=None if name in seen else name)
            seen.add(name)
            if v > 0.04 * top / scale:
                ax.text(x, bottom + v / 2, f"{v:.3g}", ha="center", va="center", fontsize=8)
            bottom += v
        ax.text(x, bottom, f"{bottom:.3g} {unit}", ha="center", va="bottom", fontsize=9, fontweight="bold")
    if limit is not None:
        ok = report.budget.get("passed")
        _budget_line(ax, limit, top, scale, unit, f"budget {fmt_bytes(limit)}: {'fits' if ok else 'OVER'}")
    ax.set_xticks(range(len(bars)), [b[0] for b in bars], fontsize=8)
    ax.set_ylabel(f"{unit} ({'10^9' if unit == 'GB' else '10^6'} bytes)")
    ax.set_ylim(0, top / scale * 1.15)
    ax.set_title("What takes the room: plan vs the largest run", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"Memory: {Path(report.model_dir).name} on {report.target} — {report.verdict.upper()}"
                 + f" (model share {fmt_bytes(report.memory['model_peak_bytes'])}"
                 + (f" vs budget {fmt_bytes(limit)})" if limit else ")"), fontsize=10)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out)
    plt.close(fig)
    return out
