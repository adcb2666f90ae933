"""The benchmark harness (bench/) must not rot: a tiny quick run, floor then Parley, writes a report.

It checks that the harness ran and that the floor answers like Parley does; it asserts no timing.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_quick_single_stream_run_writes_a_report_with_a_ratio(tmp_path: Path) -> None:
    out = tmp_path / "results"
    command = [sys.executable, "-m", "bench.run", "--quick", "--scenario", "single", "--no-charts"]
    command += ["--out", str(out)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=50, check=False)
    assert done.returncode == 0, done.stdout + done.stderr

    report = (out / "report.md").read_text()
    assert re.search(r"\| Parley ÷ floor \|[^\n]*\| \d+\.\d+× \|", report), report
    records = {r["server"]: r for r in json.loads((out / "results.json").read_text())["records"]}
    assert set(records) == {"floor", "parley"}
    for record in records.values():
        assert record["failure"] is None, record["failure"]
        assert record["load"]["error_total"] == 0, record["load"]["error_samples"]
        assert record["load"]["statuses"].get("completed", 0) > 0
    # The floor sends what Parley sends for the same request: as many events (a few bytes may differ).
    assert records["floor"]["load"]["shape"]["events"] == records["parley"]["load"]["shape"]["events"]
    assert records["parley"]["stored"]["statuses"].get("streaming", 0) == 0
