"""Looking up a run's numbers and formatting them: shared by the report, the targets and the charts."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from bench.harness import RunRecord
from bench.metrics import KIB, MIB
from bench.scenarios import PACED_DELAY_MS

GENERATOR_BOUND_PCT = 90.0
SERVER_BOUND_PCT = 90.0
PACED_RATE = 1000 / PACED_DELAY_MS
NAMES = {
    "floor": "floor",
    "parley": "Parley",
    "baseline": "baseline",
    "sqlite": "Parley, SQLite",
    "redis": "Parley + Redis",
    "cluster": "2 processes + Redis",
    "nometrics": "Parley, metrics off",
}


def value(record: RunRecord | None, *path: str) -> float:
    """A number from a record's generator result by key path; NaN when absent."""
    node: Any = record.load if record is not None else None
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return math.nan
        node = node[key]
    return float(node) if isinstance(node, int | float) and not isinstance(node, bool) else math.nan


class Results:
    def __init__(self, records: list[RunRecord], descriptions: dict[str, str] | None = None) -> None:
        self.records = records
        self.descriptions = descriptions or {}

    def find(self, scenario: str, server: str, level: int | None = None) -> RunRecord | None:
        for record in self.records:
            same = record.scenario == scenario and record.server == server
            if same and record.ok and (level is None or record.level == level):
                return record
        return None

    def of_mode(self, scenario: str, server: str, mode: str) -> RunRecord | None:
        """The first measured run of a scenario's case whose generator ran in ``mode``."""
        for record in self.records:
            same = record.scenario == scenario and record.server == server
            if same and record.ok and record.load.get("mode") == mode:
                return record
        return None

    def with_spec(self, scenario: str, server: str, **spec: Any) -> list[RunRecord]:
        """The measured runs of a scenario on a server whose generator ran with these settings."""
        return [
            r
            for r in self.records
            if r.scenario == scenario
            and r.server == server
            and r.ok
            and all((r.load.get("spec") or {}).get(k) == v for k, v in spec.items())
        ]

    def mode_levels(self, scenario: str, mode: str) -> list[int]:
        """The levels of a scenario's cases whose generator ran in ``mode``."""
        return sorted(
            {r.level for r in self.records if r.scenario == scenario and r.load.get("mode") == mode}
        )

    def runs(self, scenario: str, server: str, level: int) -> list[RunRecord]:
        """Every measured run of a case on a server, one per repeat, in order."""
        return [
            r
            for r in self.records
            if r.scenario == scenario and r.server == server and r.level == level and r.ok
        ]

    def levels(self, scenario: str) -> list[int]:
        return sorted({r.level for r in self.records if r.scenario == scenario})

    def has(self, scenario: str) -> bool:
        return any(r.scenario == scenario for r in self.records)

    def pair(self, scenario: str, level: int | None = None) -> tuple[RunRecord | None, RunRecord | None]:
        return self.find(scenario, "floor", level), self.find(scenario, "parley", level)


# -- formatting ------------------------------------------------------------------------------------


def num(x: float, digits: int = 1) -> str:
    return "–" if math.isnan(x) else f"{x:,.{digits}f}"


def ms(x: float) -> str:
    if math.isnan(x):
        return "–"
    return f"{x:.2f} ms" if abs(x) < 10 else f"{x:,.0f} ms" if abs(x) >= 100 else f"{x:.1f} ms"


def us(x: float) -> str:
    return "–" if math.isnan(x) else f"{x:,.1f} µs"


def rate(x: float) -> str:
    return "–" if math.isnan(x) else f"{x:,.0f}/s"


def size(x: float) -> str:
    if math.isnan(x):
        return "–"
    return f"{x / MIB:,.1f} MiB" if abs(x) >= MIB else f"{x / KIB:,.1f} KiB"


def pct(x: float) -> str:
    return "–" if math.isnan(x) else f"{x:.0f}%"


def ratio(a: float, b: float) -> float:
    return a / b if b and not math.isnan(a) and not math.isnan(b) else math.nan


def times(x: float) -> str:
    return "–" if math.isnan(x) else f"{x:.2f}×"


def floors(x: float) -> str:
    return "–" if math.isnan(x) else f"{x:.2f}× floor"


def table(header: list[str], rows: Iterable[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return [*lines, ""]


def errors_of(record: RunRecord | None) -> str:
    if record is None:
        return "–"
    return str(int(value(record, "error_total")))


def limit_of(record: RunRecord | None) -> str:
    """Who set the pace: the generator (client-limited), the server, or neither."""
    if record is None:
        return "–"
    gen, srv = (
        value(record, "gen_cpu_pct") >= GENERATOR_BOUND_PCT,
        value(record, "server_cpu_pct") >= SERVER_BOUND_PCT,
    )
    if gen:
        return "**both**" if srv else "**generator**"
    return "server" if srv else "neither"
