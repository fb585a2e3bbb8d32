"""edge_sdk.budget: the one budget comparison plan and validate (host, .litertlm, Android) print."""

from __future__ import annotations

import pytest

from edge_sdk.budget import LARGEST_RUN, MODEL_SHARE, Budget, check
from edge_sdk.errors import InputError


def test_parse_reads_the_flag_and_refuses_nonsense():
    assert Budget.parse(None) is None
    assert Budget.parse("1GB") == Budget(10**9) and Budget.parse("900MiB").bytes == 900 * 2**20
    assert Budget.parse(Budget(5)) == Budget(5)
    assert (Budget(1).checked, Budget(1).runs) == (MODEL_SHARE, LARGEST_RUN)
    for bad in ("0", "-1GB", "lots"):
        with pytest.raises(InputError):
            Budget.parse(bad)


def test_check_at_the_limit_passes_one_byte_over_fails_with_one_line():
    b = Budget(1000)
    assert b.check(1000).passed is True and b.check(1000).reason is None
    over = b.check(1001, run="our runner first run", whole_process=5000, detail="1001 bytes = VmHWM − baseline")
    assert over.passed is False
    assert over.reason == ("memory (our runner first run): model share of peak RSS 1.00 kB (1001 bytes = VmHWM − "
                           "baseline) exceeds the budget 1.00 kB by 1 B")
    assert over.to_json() == {"limit_bytes": 1000, "checked": MODEL_SHARE, "run": "our runner first run",
                              "measured_bytes": 1001, "whole_process_peak_bytes": 5000, "passed": False}


def test_no_budget_or_no_figure_gives_no_verdict():
    none = check(None, 10**9)
    assert none.passed is None and none.reason is None and none.to_json()["limit_bytes"] is None
    unmeasured = Budget(10).check(None, what="benchmark_model peak footprint")
    assert unmeasured.passed is None and "run" not in unmeasured.to_json()
    android = Budget(2**20).check(2 * 2**20, whole_process=2 * 2**20, what="benchmark_model peak footprint")
    assert android.reason.startswith("memory: benchmark_model peak footprint 2.10 MB exceeds the budget 1.05 MB")
