"""A memory budget: how many bytes, what figure it is checked against, and the one comparison.

``plan`` checks it against the planner's peak estimate; ``validate`` against the model's share of
peak RSS (VmHWM − the RSS after the runtime library loaded, before the model) of the largest memory
run (the first run, which builds the XNNPACK weight cache, or the steady state: the larger of the
two); on Android against ``benchmark_model``'s peak footprint. Every one of them calls
``Budget.check`` (or ``check`` for "maybe no budget") and prints the ``BudgetCheck`` it returns.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import InputError
from .units import fmt_bytes, parse_size

MODEL_SHARE = "model_peak_bytes"   # the figure validate checks: VmHWM − baseline RSS
LARGEST_RUN = "the larger of the first run and the steady state"


@dataclass(frozen=True)
class Budget:
    """``bytes`` (> 0) checked against ``checked`` (a report's memory key) of ``runs``."""

    bytes: int
    checked: str = MODEL_SHARE
    runs: str = LARGEST_RUN

    @classmethod
    def parse(cls, text: str | int | None) -> Budget | None:
        """``--budget`` as given ('1GB' = 10^9, '900MiB', 123456); None for no budget; InputError
        (one line with the fix) for an unreadable or non-positive size."""
        if text is None:
            return None
        if isinstance(text, Budget):
            return text
        limit = parse_size(text)
        if limit <= 0:
            raise InputError(f"--budget {text}: a budget must be more than 0 bytes", fix="e.g. --budget 1GB")
        return cls(limit)

    def check(self, measured: int | None, **how) -> BudgetCheck:
        """The verdict for ``measured`` bytes (None: not measured, no verdict); ``how`` as ``check``."""
        return check(self, measured, **how)


@dataclass(frozen=True)
class BudgetCheck:
    """One budget against one figure. ``passed`` is None when there is no budget or no figure."""

    budget: Budget | None
    measured_bytes: int | None
    run: str | None = None                       # the memory run that was checked, when there were several
    whole_process_peak_bytes: int | None = None  # printed beside the model's share
    what: str = "model share of peak RSS"        # the figure's name in the failure line
    detail: str = ""                             # how the figure was made, in the failure line

    @property
    def limit_bytes(self) -> int | None:
        return None if self.budget is None else self.budget.bytes

    @property
    def passed(self) -> bool | None:
        if self.budget is None or self.measured_bytes is None:
            return None
        return self.measured_bytes <= self.budget.bytes

    @property
    def reason(self) -> str | None:
        """The failure line for a report's ``reasons`` (None unless it failed)."""
        if self.passed is not False:
            return None
        where = f" ({self.run})" if self.run else ""
        detail = f" ({self.detail})" if self.detail else ""
        return (f"memory{where}: {self.what} {fmt_bytes(self.measured_bytes)}{detail} exceeds the budget "
                f"{fmt_bytes(self.budget.bytes)} by {fmt_bytes(self.measured_bytes - self.budget.bytes)}")

    def to_json(self) -> dict:
        """The report's ``budget`` object (``run`` only when a run was named)."""
        out = {"limit_bytes": self.limit_bytes,
               "checked": self.budget.checked if self.budget else MODEL_SHARE}
        if self.run is not None:
            out["run"] = self.run
        out.update(measured_bytes=self.measured_bytes, whole_process_peak_bytes=self.whole_process_peak_bytes,
                   passed=self.passed)
        return out


def check(budget: Budget | None, measured: int | None, *, run: str | None = None,
          whole_process: int | None = None, what: str = "model share of peak RSS",
          detail: str = "") -> BudgetCheck:
    """``budget`` (or no budget) against ``measured`` bytes."""
    return BudgetCheck(budget, measured, run=run, whole_process_peak_bytes=whole_process, what=what,
                       detail=detail)
