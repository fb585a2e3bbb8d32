"""``memory.png``: planned vs measured memory per component, stacked, against the budget line.

Three bars: the planner's estimate (resident weights, mapped rows touched, KV cache, activation
arena), the measured model share (RssAnon and RssFile grown since the baseline, at the sampled
peak; any part of VmHWM the sampler did not catch is shown as "between samples"), and the whole
process (baseline + model share). The budget line gates the middle bar. Matplotlib, Agg backend.
"""

from __future__ import annotations

from pathlib import Path

_COLORS = {
    "resident weights": "#4C72B0", "mapped rows touched": "#8172B2", "KV cache": "#DD8452",
    "activations": "#CCB974", "model RssAnon": "#55A868", "model RssFile": "#64B5CD",
    "between samples": "#BBBBBB", "baseline (runtime + imports)": "#DDDDDD",
}


def _segments(report) -> list[tuple[str, list[tuple[str, float]]]]:
    m, p = report.memory, report.planned
    anon = max(0, m.get("model_rss_anon_bytes") or 0)
    file_ = max(0, (m.get("model_rss_file_bytes") or 0) + (m.get("model_rss_shmem_bytes") or 0))
    gap = max(0, m["model_peak_bytes"] - anon - file_)
    measured = [("model RssAnon", anon), ("model RssFile", file_), ("between samples", gap)]
    bars = []
    if p:
        bars.append((f"planned\n(context {p['context']})",
                     [("resident weights", p["resident_bytes"]), ("mapped rows touched", p["mapped_touched_bytes"]),
                      ("KV cache", p["kv_cache_bytes"]), ("activations", p["activation_bytes"])]))
    bars.append(("measured\nmodel share", measured))
    bars.append(("measured\nwhole process", [("baseline (runtime + imports)", m["baseline_rss_bytes"])] + measured))
    return bars


def plot_memory(report, path: str | Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars = _segments(report)
    limit = report.budget.get("limit_bytes")
    top = max([sum(v for _, v in segs) for _, segs in bars] + [limit or 0])
    scale, unit = (1e9, "GB") if top >= 1e9 else (1e6, "MB")
    fig, ax = plt.subplots(figsize=(10, 5.2), dpi=110)
    seen = set()
    for x, (label, segs) in enumerate(bars):
        bottom = 0.0
        for name, val in segs:
            v = val / scale
            if v <= 0:
                continue
            ax.bar(x, v, bottom=bottom, width=0.6, color=_COLORS[name], edgecolor="white",
                   label=None if name in seen else name)
            seen.add(name)
            if v > 0.04 * top / scale:
                ax.text(x, bottom + v / 2, f"{v:.3g}", ha="center", va="center", fontsize=8)
            bottom += v
        ax.text(x, bottom, f"{bottom:.3g} {unit}", ha="center", va="bottom", fontsize=9, fontweight="bold")
    if limit is not None:
        ok = report.budget.get("passed")
        ax.axhline(limit / scale, color="#C44E52", linestyle="--", linewidth=1.5,
                   label=f"budget {limit / scale:.3g} {unit} (gates model share): {'pass' if ok else 'FAIL'}")
    ax.set_xticks(range(len(bars)), [b[0] for b in bars])
    ax.set_ylabel(f"{unit} ({'10^9' if unit == 'GB' else '10^6'} bytes)")
    ax.set_ylim(0, top / scale * 1.12)
    ax.set_title(f"Memory: {Path(report.model_dir).name} on {report.target} ({report.backend}) — "
                 f"{report.verdict.upper()}", fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out)
    plt.close(fig)
    return out
