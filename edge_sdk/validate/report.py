"""``ValidationReport``: what ``edge-sdk validate`` found, as ``report.json``, ``report.md`` and
``memory.png``.

``report.json`` (every byte figure in bytes; GB = 10^9, GiB = 2^30 in the text):

- ``verdict`` ("pass" / "fail"), ``passed``, ``reasons`` (one line per failed gate), ``warnings``;
- ``target`` ("host", or the device serial), ``backend`` (the kernels that ran), ``kernels``
  (requested vs ran, API, threads, fallbacks, the runtime's own ``backend_info``);
- ``memory``: ``peak_rss_bytes`` (VmHWM of the runner), ``baseline_rss_bytes`` (its RSS after
  imports, before loading), ``model_peak_bytes`` (= peak − baseline: the model's share, which the
  budget gates), ``rss_anon_bytes`` / ``rss_file_bytes`` (split of the sampled peak),
  ``ru_maxrss_bytes`` (getrusage cross-check), load time, sampling figures;
- ``planned``: the planner's estimate at the same context (resident weights, mapped rows touched,
  KV cache, activations, peak) from the model's own plan.json — or {"absent": reason} when its files
  cannot give them (a model converted before plan.json version 2), null when no plan was asked for;
- ``speed``: ``prefill_tokens_per_s``, ``decode_tokens_per_s``, ``time_to_first_token_s`` (medians)
  and their spread (min/max/IQR/runs);
- ``quality``: ``ppl``, ``ppl_reference``, ``kld_mean``, ``kld_p99``, ``top1_agreement`` (+ median/max
  KLD, top-1 accuracies, positions), or null with ``--no-quality``;
- ``budget``: ``limit_bytes``, ``checked`` ("model_peak_bytes"), ``measured_bytes``, ``passed``;
- ``gates``, ``evaluation`` (text, tokens, windows, context, method), ``runner`` (raw result).
"""

from __future__ import annotations

import json
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from ..budget import BudgetCheck
from ..units import fmt_bytes

REPORT_VERSION = 1


@dataclass(frozen=True)
class ValidationReport:
    model_dir: str
    target: str
    backend: str
    kernels: dict
    memory: dict
    speed: dict
    budget: dict
    gates: dict
    evaluation: dict
    passed: bool
    reasons: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    quality: dict | None = None
    planned: dict | None = None
    runner: dict = field(default_factory=dict, repr=False)
    profile: dict | None = None   # validate --profile: edge_sdk.validate.profile's result

    @classmethod
    def judged(cls, budget: BudgetCheck, reasons: list[str], warnings: list[str], **fields) -> ValidationReport:
        """The one way a validation becomes a report: ``budget``'s failure line (if any) joins
        ``reasons`` last, its figures become the report's ``budget``; no reason → pass."""
        reasons = [*reasons, *([budget.reason] if budget.reason else [])]
        return cls(budget=budget.to_json(), passed=not reasons, reasons=tuple(reasons), warnings=tuple(warnings),
                   **fields)

    @property
    def verdict(self) -> str:
        return "pass" if self.passed else "fail"

    def to_json(self) -> dict:
        return {
            "version": REPORT_VERSION,
            "model_dir": self.model_dir,
            "verdict": self.verdict,
            "passed": self.passed,
            "reasons": list(self.reasons),
            "warnings": list(self.warnings),
            "target": self.target,
            "backend": self.backend,
            "kernels": self.kernels,
            "memory": self.memory,
            "planned": self.planned,
            "speed": self.speed,
            "quality": self.quality,
            "budget": self.budget,
            "gates": self.gates,
            "evaluation": self.evaluation,
            "runner": self.runner,
            **({"decode_profile": self.profile} if self.profile is not None else {}),
        }

    def summary(self) -> str:
        """A few lines for the terminal: the verdict and the gated memory figure, one line per
        memory run, quality."""
        m, s = self.memory, self.speed
        line = (f"{self.verdict.upper()}: model share {fmt_bytes(m['model_peak_bytes'])} of peak RSS "
                f"{fmt_bytes(m['peak_rss_bytes'])}" + (f" ({m['gated_run']}, the largest run)" if m.get("gated_run") else "")
                + f"; prefill {_num(s.get('prefill_tokens_per_s'))} tok/s, "
                f"decode {_num(s.get('decode_tokens_per_s'))} tok/s")
        for run in m.get("runs") or []:
            sp = run.get("speed") or {}
            line += (f"\n  {run['label']:<28} model share {fmt_bytes(run['model_peak_bytes']):>10}  "
                     f"(anon +{fmt_bytes(run['anon_growth_bytes'])}, file +{fmt_bytes(run['file_growth_bytes'])}); "
                     f"prefill {_num(sp.get('prefill_tokens_per_s'))}, decode {_num(sp.get('decode_tokens_per_s'))} tok/s")
        if self.quality:
            q = self.quality
            line += (f"\n  quality (our runner vs float): PPL {q['ppl']:.3f} (ref {q['ppl_reference']:.3f}), "
                     f"KLD {q['kld_mean']:.4f}, top-1 {q['top1_agreement']:.1%}")
        return line + "".join(f"\n  - {r}" for r in self.reasons)

    def to_markdown(self) -> str:
        m, s, b = self.memory, self.speed, self.budget
        out = [f"# Validation: {'PASS' if self.passed else 'FAIL'}", ""]
        out += [f"- {r}" for r in self.reasons] or ["All gates passed."]
        out += [f"- warning: {w}" for w in self.warnings]
        threads = self.kernels.get("threads")
        out += ["", f"`{self.model_dir}` on **{self.target}**, backend **{self.backend}** "
                f"({self.kernels.get('api')}, " + (f"{threads} threads" if threads else THREADS_DEFAULT)
                + f"); context {self.evaluation.get('context')}.", ""]
        kl = _kernels_line(self.kernels, self.runner)
        out += [kl, ""] if kl else []
        out += _runs_markdown(m, self.evaluation, limit=b.get("limit_bytes"), planned=self.planned)
        limit = b.get("limit_bytes")
        out += ["## Memory (GB = 10^9 bytes)", "",
                f"The gated run: {m.get('gated_run', 'the only run')}.", "",
                "| figure | measured | planned |", "|---|---:|---:|",
                f"| **model share** = peak − baseline (gated) | **{fmt_bytes(m['model_peak_bytes'])}** | "
                f"{_pl(self.planned, 'peak_bytes')} |",
                f"| peak RSS (VmHWM, whole process) | {fmt_bytes(m['peak_rss_bytes'])} | |",
                f"| baseline RSS (interpreter + imports) | {fmt_bytes(m['baseline_rss_bytes'])} | |",
                f"| RssAnon at peak (model: +{fmt_bytes(m['model_rss_anon_bytes'])}) | "
                f"{fmt_bytes(m['rss_anon_bytes'])} | |",
                f"| RssFile at peak (model: +{fmt_bytes(m['model_rss_file_bytes'])}) | "
                f"{fmt_bytes(m['rss_file_bytes'])} | |",
                f"| getrusage ru_maxrss (cross-check) | {fmt_bytes(m['ru_maxrss_bytes'])} | |", ""]
        p = self.planned
        if p and "absent" in p:
            out += [f"No planned figures: {p['absent']}", ""]
        elif p:
            out += [f"Planned at context {p['context']} in {p.get('runtime', 'the runtime')}: resident weights "
                    f"{fmt_bytes(p['resident_bytes'])} + mapped rows touched {fmt_bytes(p['mapped_touched_bytes'])} "
                    f"+ KV cache {fmt_bytes(p['kv_cache_bytes'])} + activations {fmt_bytes(p['activation_bytes'])}"
                    + (f" + the runtime's own {fmt_bytes(p['runtime_bytes'])} (KV copies "
                       f"{fmt_bytes(p['kv_extra_copy_bytes'])}, float KV read copies {fmt_bytes(p['kv_read_bytes'])}, "
                       f"quantization metadata {fmt_bytes(p['quant_metadata_bytes'])}, model head pages "
                       f"{fmt_bytes(p['model_head_bytes'])}, fixed {fmt_bytes(p['runtime_fixed_bytes'])})"
                       if "runtime_bytes" in p else "")
                    + f" = {fmt_bytes(p['peak_bytes'])} (mapped sections {fmt_bytes(p['mapped_bytes'])} on disk).", ""]
        if limit is not None:
            out += [f"Budget {fmt_bytes(limit)} checked against the **model share** "
                    f"({fmt_bytes(b['measured_bytes'])}): {'passed' if b['passed'] else 'FAILED'}. "
                    f"The whole-process peak is {fmt_bytes(m['peak_rss_bytes'])}.", ""]
        else:
            out += ["No budget given.", ""]
        if "prompt_tokens" in s:
            out += ["## Speed in our runner (median of runs, [min–max])", "", "| figure | value |", "|---|---:|",
                    f"| time to first token ({s['prompt_tokens']}-token prompt) | "
                    f"{_num(s['time_to_first_token_s'], 3)} s {_rng(s['time_to_first_token_spread'], 3)} |",
                    f"| prefill | {_num(s['prefill_tokens_per_s'])} tok/s {_rng(s['prefill_spread'])} |",
                    f"| decode | {_num(s['decode_tokens_per_s'])} tok/s {_rng(s['decode_spread'])} |",
                    f"| load | {_num(s['load_s'], 3)} s |", ""]
        out += self._quality_markdown()
        if self.profile is not None:
            from .profile import render_markdown
            out += ["## Where one decode step goes (--profile)", "", render_markdown(self.profile), ""]
        return "\n".join(out)

    def _quality_markdown(self) -> list[str]:
        """report.md's quality table (llama.cpp's metrics against the float reference)."""
        q = self.quality
        if q:
            g = self.gates
            return ["## Quality vs float reference (llama.cpp conventions)", "",
                    "| metric | value | gate |", "|---|---:|---:|",
                    f"| perplexity (model) | {q['ppl']:.4f} | |",
                    f"| perplexity (reference) | {q['ppl_reference']:.4f} | |",
                    f"| KLD mean | {q['kld_mean']:.5f} | ≤ {g.get('max_kld')} |",
                    f"| KLD p99 | {q['kld_p99']:.5f} | |",
                    f"| top-1 agreement | {q['top1_agreement']:.2%} | ≥ {g.get('min_top1')} |",
                    "", f"{q['positions']} scored positions in {q['windows']} windows of ≤ "
                    f"{self.evaluation.get('context')} tokens ({self.evaluation.get('method')}); "
                    f"text: {self.evaluation.get('text')}; reference: {self.evaluation.get('reference')}.",
                    ""]
        return ["Quality not measured (--no-quality).", ""]

    def _benchmark_markdown(self) -> str:
        """report.md of an Android run: its host tables need RSS splits benchmark_model does not give."""
        return (f"# Validation: {self.verdict.upper()} on {self.target} (benchmark_model)\n\n"
                + "".join(f"- {r}\n" for r in (*self.reasons, *(f"warning: {w}" for w in self.warnings)))
                + f"\n{self.summary()}")

    def save(self, directory: str | Path) -> dict[str, Path]:
        """Write report.json, report.md and (but for an Android benchmark_model run, which has no
        RSS series) memory.png into ``directory``; return their paths."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        bench = self.kernels.get("api") == "benchmark_model"
        paths = {"json": d / "report.json", "md": d / "report.md"}
        paths["json"].write_text(json.dumps(self.to_json(), indent=2) + "\n")
        paths["md"].write_text((self._benchmark_markdown() if bench else self.to_markdown()) + "\n")
        if not bench:
            from .plot import plot_memory
            paths["png"] = plot_memory(self, d / "memory.png")
        return paths


def _runs_markdown(m: dict, ev: dict, limit: int | None, planned: dict | None = None) -> list[str]:
    """One row per memory run (which runtime, first launch or steady state, cold or warm) and the
    per-mapping growth of the gated run near its peak."""
    runs = m.get("runs") or []
    if not runs:
        return []
    out = ["## Memory runs (GB = 10^9 bytes; model share = VmHWM − RSS after the runtime library loaded)", "",
           "| run | model share | planned (error) | anon growth | file growth | peak phase | prefill tok/s | "
           "decode tok/s | budget |", "|---|---:|---:|---:|---:|---|---:|---:|---|"]
    by = (planned or {}).get("by_runtime") or {}
    for r in runs:
        sp = r.get("speed") or {}
        verdict = "" if limit is None else ("fits" if r["model_peak_bytes"] <= limit else "**over**")
        p = by.get(r["runtime"])
        pl = "–" if not p else f"{fmt_bytes(p)} ({100 * (p - r['model_peak_bytes']) / r['model_peak_bytes']:+.1f}%)"
        out.append(f"| {r['label']} | {fmt_bytes(r['model_peak_bytes'])} | {pl} | {fmt_bytes(r['anon_growth_bytes'])} | "
                   f"{fmt_bytes(r['file_growth_bytes'])} | {r.get('peak_phase') or ''} | "
                   f"{_num(sp.get('prefill_tokens_per_s'))} | {_num(sp.get('decode_tokens_per_s'))} | {verdict} |")
    out += ["", "Cold: the model's files (and its weight cache) were evicted from the page cache before each run, "
            "as on the first launch after an install." if ev.get("cold") else
            "Warm: the files were left in the page cache (--warm); a phone's first launch reads them cold.", ""]
    gated = next((r for r in runs if r["label"] == m.get("gated_run")), runs[-1])
    for r in runs:   # the mapped tables: rows looked up vs bytes that became resident
        tables = sum(max(0, v.get("rss", 0)) for k, v in (r.get("breakdown") or {}).items() if "embedder" in k
                     and "prefill_decode" not in k and "weight cache" not in k)
        if r["runtime"] == "edge_sdk" and tables and planned and planned.get("mapped_touched_bytes"):
            out += [f"Mapped tables ({r['label']}): {ev.get('distinct_tokens')} distinct tokens looked up; "
                    f"resident {fmt_bytes(tables)} vs {fmt_bytes(planned['mapped_touched_bytes'])} planned (whole "
                    "pages per row; the tables are MADV_RANDOM, so no read-around).", ""]
            break
    rows = [(k, v) for k, v in (gated.get("breakdown") or {}).items() if abs(v.get("rss", 0)) >= 1 << 20]
    if rows:
        out += [f"Where the memory of **{gated['label']}** went (growth per mapping since the baseline, "
                "from /proc/self/smaps near the peak):", "",
                "| mapping | RSS | anonymous | file-backed | mapped size |", "|---|---:|---:|---:|---:|"]
        out += [f"| {k} | {fmt_bytes(v['rss'])} | {fmt_bytes(v['anon'])} | {fmt_bytes(v['file'])} | "
                f"{fmt_bytes(v.get('size', 0))} |" for k, v in rows]
        out.append("")
    return out


# ai-edge-litert 2.3: no --threads means no worker threads in either API (tests/test_cli_ux.py checks)
THREADS_DEFAULT = "1 thread, the runtime's default"


def _kernels_line(k: dict, runner: dict | None = None) -> str:
    """What ran, from what the run shows: the Interpreter's per-op census; for CompiledModel (no
    census) the XNNPACK weight cache it filled; LiteRT-LM's engine by name. Fallbacks flagged."""
    unexpected = "".join(f" **Unexpected: {f}.**" for f in k.get("fallbacks", []))
    parts = []
    for name, c in (k.get("census") or {}).items():
        if "ops" not in c:
            continue
        glue = ", ".join(f"{op}×{n}" for op, n in c["builtin_ops"].items())
        parts.append(f"{name}: {c['delegated_ops']}/{c['ops']} ops in XNNPACK" + (f" (builtin: {glue})" if glue else ""))
    if parts:
        return "Kernels: " + "; ".join(parts) + "." + unexpected
    api, ran = k.get("api"), k.get("ran")
    if api == "litert-lm":
        return "Kernels: LiteRT-LM's CPU engine (it picks its own kernels; no per-op census)." + unexpected
    if api == "compiled" and ran == "xnnpack":
        cache = (runner or {}).get("weight_cache_files") or {}
        packed = sum(cache.values())
        if not packed:
            return ("Kernels: XNNPACK requested (CompiledModel), **but its weight cache is empty: XNNPACK packed "
                    "no weights**." + unexpected)
        return (f"Kernels: XNNPACK (CompiledModel): it packed {fmt_bytes(packed)} of weights into its cache "
                f"({len(cache)} files). CompiledModel gives no per-op census, so single ops left to the builtin "
                "kernels would not show here (`--api interpreter` counts them)." + unexpected)
    if api == "compiled":
        return "Kernels: LiteRT's builtin reference kernels (CompiledModel, CpuKernelMode.BUILTIN)." + unexpected
    return unexpected.strip()


def _num(v, digits: int = 1) -> str:
    return "n/a" if v is None else f"{v:,.{digits}f}"


def _rng(sp: dict | None, digits: int = 1) -> str:
    if not sp or sp.get("min") is None:
        return ""
    return f"[{sp['min']:,.{digits}f}–{sp['max']:,.{digits}f}]"


def _pl(planned: dict | None, key: str) -> str:
    if not planned or planned.get(key) is None:
        return "–"
    return fmt_bytes(planned[key])


@contextmanager
def scratch_dir(report: str | Path | None) -> Iterator[Path]:
    """The work directory of one validation: ``report`` when given (created, kept), else a
    temporary directory removed when the block ends, whatever happened in it."""
    if report is not None:
        work = Path(report)
        work.mkdir(parents=True, exist_ok=True)
        yield work
        return
    with tempfile.TemporaryDirectory(prefix="edge-sdk-validate-") as tmp:
        yield Path(tmp)
