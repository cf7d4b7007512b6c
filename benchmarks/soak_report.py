"""The soak's results: what each request got, by phase, and the tables printed from them."""

from __future__ import annotations

import dataclasses
import json
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from chain_common import ms_quantile
from soak_memory import MemoryRow
from soak_mix import Case, Verdict

PHASES = ("steady", "node killed", "Redis restarted")
GRACE_S = 3.0
"""How long after a disruption's recovery its effects are still charged to it."""


@dataclass(frozen=True)
class Result:
    """What one request got; its kind and tag, not its frames (some are a megabyte)."""

    kind: str
    tag: str
    is_valid: bool
    sent: float
    latency_s: float | None
    """None: lost (no reply within the client's timeout)."""
    verdict: Verdict

    @classmethod
    def of(cls, case: Case, sent: float, latency_s: float | None, verdict: Verdict) -> Result:
        return cls(case.kind, case.tag, case.is_valid, sent, latency_s, verdict)


@dataclass
class Window:
    """A disruption, from its start to the recovery of what it broke (monotonic seconds)."""

    phase: str
    start: float
    end: float
    what: str


@dataclass
class Summary:
    requests: int
    invalid: int
    lost: int
    wrong: int
    wall_s: float
    errors: dict[str, dict[str, int]]
    """Code → phase → count: what the disruptions caused."""
    refusals: dict[str, int]
    """Code → count: invalid requests refused as they should be."""
    latency_ms: dict[str, dict[str, str]]
    """Phase → n, p50, p95, p99 of the valid requests answered."""
    disruptions: list[str]
    memory: list[MemoryRow]
    untested: list[str] = field(default_factory=list)
    """Disruptions no request met (the run ended first: more requests, or a lower rate)."""
    wrong_examples: list[str] = field(default_factory=list)
    lost_examples: list[str] = field(default_factory=list)

    @property
    def throughput_per_s(self) -> float:
        return self.requests / self.wall_s if self.wall_s else 0.0

    @property
    def rss_flagged(self) -> list[str]:
        return [row.name for row in self.memory if row.is_flagged]

    def write_json(self, path: Path) -> None:
        data = dataclasses.asdict(self)
        data.update(throughput_per_s=self.throughput_per_s, rss_flagged=self.rss_flagged)
        path.write_text(json.dumps(data, indent=1))


def phase_of(result: Result, windows: list[Window]) -> str:
    """The disruption whose window (plus its grace) the request's flight overlaps."""
    end = result.sent + (result.latency_s or 0.0)
    for window in windows:
        if result.sent <= window.end + GRACE_S and end >= window.start:
            return window.phase
    return "steady"


def summarise(
    results: list[Result],
    strays: list[list[bytes]],
    windows: list[Window],
    wall_s: float,
    memory: list[MemoryRow],
) -> Summary:
    """``strays`` are replies that came after a client's last request: second replies."""
    lost = [r for r in results if r.verdict.outcome == "lost"]
    wrong = [r for r in results if r.verdict.outcome == "wrong"]
    errors: dict[str, Counter[str]] = {}
    for result in results:
        if result.verdict.outcome == "error":
            by_phase = errors.setdefault(str(result.verdict.code), Counter())
            by_phase[phase_of(result, windows)] += 1
    refusals = Counter(
        str(r.verdict.code) for r in results if r.verdict.outcome == "ok" and not r.is_valid
    )
    answered = [r for r in results if r.is_valid and r.latency_s is not None]
    latency = {"all valid requests": _quantiles([r.latency_s or 0.0 for r in answered])}
    for phase in PHASES:
        seconds = [r.latency_s or 0.0 for r in answered if phase_of(r, windows) == phase]
        latency[phase] = _quantiles(seconds)
    return Summary(
        requests=len(results),
        invalid=sum(not r.is_valid for r in results),
        lost=len(lost),
        wrong=len(wrong) + len(strays),
        wall_s=round(wall_s, 2),
        errors={code: dict(by_phase) for code, by_phase in sorted(errors.items())},
        refusals=dict(refusals.most_common()),
        latency_ms=latency,
        disruptions=[f"{w.what}, {w.end - w.start:.1f} s" for w in windows],
        untested=[p for p in PHASES if latency[p]["n"] == "0"],
        memory=memory,
        wrong_examples=[r.verdict.why for r in wrong[:10]]
        + [f"a second reply: {[f[:60] for f in s]}" for s in strays[:5]],
        lost_examples=[f"{r.kind} {r.tag}" for r in lost[:10]],
    )


def _quantiles(seconds: list[float]) -> dict[str, str]:
    return {
        "n": str(len(seconds)),
        **{
            name: ms_quantile(seconds, q)
            for name, q in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))
        },
    }


def print_summary(summary: Summary) -> None:
    print(
        f"\n{summary.requests} requests ({summary.invalid} malformed or unauthorised) in "
        f"{summary.wall_s:.1f} s, {summary.throughput_per_s:.1f} requests/s; "
        f"lost {summary.lost}, wrong {summary.wrong}"
    )
    print(f"disruptions: {'; '.join(summary.disruptions)}\n")
    _table(
        ["valid requests answered", "n", "p50 ms", "p95 ms", "p99 ms"],
        [[phase, *q.values()] for phase, q in summary.latency_ms.items()],
    )
    rows: list[list[str]] = [["lost (no reply in time)", "", str(summary.lost)]]
    rows.append(["wrong", "", str(summary.wrong)])
    for code, by_phase in summary.errors.items():
        rows += [[f"error {code}", phase, str(n)] for phase, n in by_phase.items()]
    rows += [[f"refused as expected: {code}", "", str(n)] for code, n in summary.refusals.items()]
    _table(["answer", "phase", "count"], rows)
    _table(
        ["process (VmRSS)", "start MiB", "80 % MiB", "end MiB", "growth", "80 %→end", "flag"],
        [
            [r.name, r.start_mib, r.mid_mib, r.end_mib, r.growth, r.late_growth, r.flag]
            for r in summary.memory
        ],
    )
    for phase in summary.untested:
        print(f"soak: no request during the '{phase}' phase (more requests or --rate)")
    for why in summary.wrong_examples:
        print(f"wrong: {why}", file=sys.stderr)
    for what in summary.lost_examples:
        print(f"lost: {what}", file=sys.stderr)


def _table(header: list[str], rows: list[list[str]]) -> None:
    """A markdown table, the first column left-aligned, the others right-aligned."""
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, ["-" * w for w in widths], *rows]:
        rest = zip(row[1:], widths[1:], strict=True)
        cells = [f"{row[0]:<{widths[0]}}", *(f"{cell:>{width}}" for cell, width in rest)]
        print(f"| {' | '.join(cells)} |")
    print()
